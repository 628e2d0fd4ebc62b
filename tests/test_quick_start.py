"""The README's quick start, run verbatim as a new user would: in a folder of its own (here a
temporary HOME), from `activate` to a sorted picture and a readable `status` (#32)."""

from __future__ import annotations

import os
import re
import subprocess

import pytest
from helpers import REPO


def quick_start_blocks() -> list[str]:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.*?)```", section, re.S)


@pytest.mark.slow
def test_the_quick_start_works_verbatim_in_an_empty_home(tmp_path) -> None:
    install, try_it, *_ = quick_start_blocks()
    assert ".venv/bin/pip install -e '.[train,test]'" in install  # what .ci/run runs
    if not (REPO / ".venv" / "bin" / "activate").exists():
        pytest.skip("needs the quick start's .venv in the checkout (.ci/run makes it)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SORTBOX_")}
    env["HOME"] = str(tmp_path)
    result = subprocess.run(
        ["bash", "-e", "-c", try_it],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    home = tmp_path / "sortbox-demo"
    assert (home / "config.toml").is_file()
    placed = [p for p in (home / "library").rglob("*.jpg") if ".sortbox" not in p.parts]
    assert len(placed) == 260, len(placed)
    assert "model:" in result.stdout and "Traceback" not in result.stdout + result.stderr
    assert re.search(r"last hour: +\d+ sorted", result.stdout), result.stdout
