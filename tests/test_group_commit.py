"""Group commit: a batch's copies are linked, each folder is fsynced once, then the batch's
journal lines are written with one write and one fsync. A process killed with -9 after the
links and before the journal line must neither lose nor double a picture."""

from __future__ import annotations

import hashlib
import signal
import subprocess
import sys
from pathlib import Path

from helpers import Home, sortbox, write_picture

# `sortbox` itself, killed with SIGKILL at the moment it is about to journal a batch with
# copies in it: every copy of that batch is linked into the library, no line says so.
KILLED_BEFORE_JOURNALING = """
import os, signal, sys
from sortbox.daemon import cli
from sortbox.daemon.sorting import journal

journal_batch = journal.Journal.append

def append(self, events):
    events = list(events)
    if any(getattr(event, "dest", None) for event in events):
        os.kill(os.getpid(), signal.SIGKILL)
    journal_batch(self, events)

journal.Journal.append = append
sys.exit(cli.main(sys.argv[1:]))
"""


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_kill_9_between_link_and_journal_neither_loses_nor_doubles(home: Home) -> None:
    backlog = home.root / "backlog"
    backlog.mkdir()
    colours = ("red", "green", "blue")
    pictures = [write_picture(backlog / f"p{n:02}.jpg", colours[n % 3], seed=n) for n in range(12)]
    contents = {sha256(p) for p in pictures}
    assert len(contents) == 12

    command = ["sort", str(backlog), "--config", str(home.config)]
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_BEFORE_JOURNALING, *command],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=home.root,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    linked = home.library_files()
    assert linked, "the killed run linked its first batch into the library"
    assert home.file_events() == []  # ... and journaled none of it
    assert not list(home.library.rglob(".sortbox-*.tmp"))  # temporaries go before the journal
    before = {p: (p.stat().st_ino, sha256(p)) for p in linked}

    finished = sortbox("sort", str(backlog), config=home.config)
    assert finished.returncode == 0, finished.stderr

    events = home.file_events()
    assert sorted(e["src"] for e in events) == sorted(p.name for p in pictures)  # each once
    assert {e["event"] for e in events} <= {"sorted", "review"}
    files = home.library_files()
    assert sorted(home.library / e["dest"] for e in events) == files  # nothing unjournaled
    assert {sha256(p) for p in files} == contents  # every picture once, byte for byte
    for path, (inode, digest) in before.items():
        # the copies made before the kill were adopted where they were, not copied again
        assert path.stat().st_ino == inode and sha256(path) == digest
    for picture in pictures:
        assert picture.is_file()  # `sort` never touches its inputs
