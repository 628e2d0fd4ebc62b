"""The done-index snapshot: a clean stop leaves one, the next start reads it and replays only
the journal after it; one that does not fit the journal is ignored, never trusted."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from conftest import Daemon, Home, sortbox, wait_until, write_picture
from sortbox.daemon.index import DoneIndex, snapshot_file_of
from sortbox.daemon.intake import identity_of
from sortbox.daemon.journal import read_journal

COLOURS = ("red", "green", "blue")


def pictures(folder: Path, count: int, first_seed: int) -> list[Path]:
    folder.mkdir(parents=True)
    return [
        write_picture(folder / f"p{n:02}.jpg", COLOURS[n % 3], seed=first_seed + n)
        for n in range(count)
    ]


def same(a: DoneIndex, b: DoneIndex) -> bool:
    return a._sources == b._sources and a._content == b._content and a._orphans == b._orphans


def from_every_line(home: Home) -> DoneIndex:
    return DoneIndex.from_events(read_journal(home.journal), home.library)


def test_a_snapshot_covers_the_journal_and_the_lines_after_it_are_replayed(home: Home) -> None:
    pictures(home.root / "first", 6, first_seed=0)
    assert sortbox("sort", str(home.root / "first"), config=home.config).returncode == 0
    snapshot = snapshot_file_of(home.library)
    covers = json.loads(snapshot.read_text())["journal"]
    assert covers["offset"] == home.journal.stat().st_size  # a clean stop covers everything
    assert same(DoneIndex.load(home.journal, home.library), from_every_line(home))

    # another process journals more while the snapshot stays the one of the first run
    older = home.root / "older-snapshot.json"
    shutil.copy(snapshot, older)
    pictures(home.root / "second", 6, first_seed=100)
    assert sortbox("sort", str(home.root / "second"), config=home.config).returncode == 0
    shutil.copy(older, snapshot)
    loaded = DoneIndex.load(home.journal, home.library)
    assert len(loaded._sources) == 12 and same(loaded, from_every_line(home))

    # the journal rewritten in place (same inode, same length): the snapshot no longer fits
    text = home.journal.read_bytes()
    first = json.loads(text.splitlines()[0])
    first_dest = first["dest"]
    assert first_dest
    with home.journal.open("r+b") as fh:
        fh.write(text.replace(first_dest.encode(), first_dest.upper().encode(), 1))
    loaded = DoneIndex.load(home.journal, home.library)
    assert loaded.copy_of(first["sha256"]) == first_dest.upper()
    assert same(loaded, from_every_line(home))

    # a torn or foreign snapshot: the journal is read from its first line
    for broken in (b'{"format": 1, "journal": {"offs', b"[]", b"\xff\xfe"):
        snapshot.write_bytes(broken)
        assert same(DoneIndex.load(home.journal, home.library), from_every_line(home))

    # a journal replaced by another file (an import, a restore): a new inode
    replaced = home.root / "journal.new"
    shutil.copy(home.journal, replaced)
    replaced.replace(home.journal)
    shutil.copy(older, snapshot)
    json.loads(snapshot.read_text())  # a valid snapshot, of the old file
    assert same(DoneIndex.load(home.journal, home.library), from_every_line(home))


def test_a_restarted_daemon_resumes_from_its_snapshot_and_sorts_nothing_twice(home: Home) -> None:
    first = Daemon(home).start()
    try:
        for n in range(6):
            write_picture(home.inbox / f"a{n}.jpg", COLOURS[n % 3], seed=n)
        wait_until(lambda: len(home.file_events()) == 6, 30, "six sorted")
    finally:
        first.stop()
    daemons_snapshot = home.root / "daemons-snapshot.json"
    shutil.copy(snapshot_file_of(home.library), daemons_snapshot)
    # while it is down, `sortbox sort` journals more (after the snapshot's offset)
    pictures(home.root / "backlog", 3, first_seed=50)
    assert sortbox("sort", str(home.root / "backlog"), config=home.config).returncode == 0
    shutil.copy(daemons_snapshot, snapshot_file_of(home.library))  # as if `sort` was killed

    second = Daemon(home).start()
    try:
        write_picture(home.inbox / "b.jpg", "green", seed=99)
        shutil.copy(home.root / "backlog" / "p00.jpg", home.inbox / "same-as-backlog.jpg")
        wait_until(lambda: len(home.file_events()) == 11, 30, "the two new files")
    finally:
        second.stop()
    loads = [json.loads(line) for line in second.log_text().splitlines() if "index_loaded" in line]
    assert loads[-1]["from_snapshot"] and loads[-1]["replayed_bytes"] > 0, loads
    events = home.file_events()
    inbox_events = [e for e in events if e["root"] == str(home.inbox)]
    # the six from before the restart were not handled again; the copy of a backlog picture
    # is known by content (from the replayed lines), so it is a duplicate
    assert sorted(e["src"] for e in inbox_events) == sorted(
        [f"a{n}.jpg" for n in range(6)] + ["b.jpg", "same-as-backlog.jpg"]
    )
    duplicate = next(e for e in events if e["src"] == "same-as-backlog.jpg")
    assert duplicate["event"] == "duplicate"
    assert len(home.library_files()) == 10  # 6 + 3 + 1: every content once


def test_a_name_that_is_not_utf8_survives_the_snapshot(home: Home) -> None:
    folder = home.root / "camera"
    name = os.fsdecode(b"IMG-\xff\xfe.jpg")  # a name from an old camera or another locale
    write_picture(folder / name, "red", seed=3)
    assert sortbox("sort", str(folder), config=home.config).returncode == 0
    loaded = DoneIndex.load(home.journal, home.library)
    assert same(loaded, from_every_line(home))
    assert loaded.source(folder / name, identity_of(folder / name)) is not None
    event = home.file_events()[0]
    assert loaded.copy_of(event["sha256"]) == event["dest"]
    assert (home.library / event["dest"]).is_file()
