"""The tests' fixtures: a sortbox home with a published tiny model, and a daemon beside it.
The helpers they are built from are in helpers.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import Daemon, Home, make_home, publish_rgb_model


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--long",
        action="store_true",
        help="torture tests at full length (>= 200 kill -9 points); CI runs the short version",
    )


@pytest.fixture
def home(tmp_path: Path) -> Home:
    home = make_home(tmp_path)
    publish_rgb_model(home.models, "v1")
    return home


@pytest.fixture
def daemon(home: Home) -> Iterator[Daemon]:
    running = Daemon(home)
    yield running
    if running.process is not None and running.process.poll() is None:
        running.stop()
