"""The manual: its reference pages are what the code says, and the site builds without a warning."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
from helpers import REPO


def test_the_reference_pages_match_the_code() -> None:
    """docs/reference/ is generated from Settings and the journal's event models; a setting or
    event changed without regenerating them fails here."""
    result = subprocess.run(
        [sys.executable, str(REPO / "docs" / "gen_reference.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_manual_builds_strictly(tmp_path) -> None:
    mkdocs = shutil.which("mkdocs") or str(REPO / ".venv" / "bin" / "mkdocs")
    if not shutil.which(mkdocs):
        pytest.skip("needs mkdocs (the test extra installs it)")
    result = subprocess.run(
        [mkdocs, "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "site" / "reference" / "settings" / "index.html").is_file()


def test_the_readme_is_for_a_newcomer() -> None:
    """The README is the quick start and a map; the manual is in docs/ (#29)."""
    lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 200, len(lines)
