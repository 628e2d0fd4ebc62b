"""The done-index snapshot: a clean stop leaves one, the next start reads it and replays only
the journal after it; one that does not fit the journal is ignored, never trusted."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from helpers import Daemon, Home, sortbox, wait_until, write_picture
from sortbox.daemon.intake.files import Identity, identity_of
from sortbox.daemon.sorting.index import DoneIndex, snapshot_file_of
from sortbox.daemon.sorting.journal import Imported, Sorted, Undone, read_journal

COLOURS = ("red", "green", "blue")


def pictures(folder: Path, count: int, first_seed: int) -> list[Path]:
    folder.mkdir(parents=True)
    return [
        write_picture(folder / f"p{n:02}.jpg", COLOURS[n % 3], seed=first_seed + n)
        for n in range(count)
    ]


def same(a: DoneIndex, b: DoneIndex) -> bool:
    return a.entries() == b.entries() and a._orphans == b._orphans


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
    assert len(loaded.entries()[0]) == 12 and same(loaded, from_every_line(home))

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


def test_packed_paths_and_names_come_back_exactly() -> None:
    """Paths are kept as a folder number and a name, library names without the digest's 12
    hex digits: every lookup must still give back exactly what the journal said."""
    identity = Identity(size=1, mtime_ns=2, inode=3)
    events: list[Sorted | Undone | Imported] = []
    expected: dict[str, str] = {}
    not_utf8 = os.fsdecode(b"\xff")
    for n in range(300):  # past 127 folders: numbers of more than one byte
        sha = hashlib.sha256(str(n).encode()).hexdigest()
        dest = {
            0: f"shirt/p{n}.{sha[:12]}.jpg",  # the usual library name
            1: f"shirt/p{n}.{sha[:24]}.jpg",  # a longer prefix, after a name clash
            2: f"a/b/{not_utf8}{n}.jpg",  # nested, not UTF-8, no digest in it
        }[n % 3]
        root = f"/photos/{n // 2}"
        events.append(Sorted(src=f"sub/p{n}.jpg", root=root, sha256=sha, size=1, mtime_ns=2,
                             inode=3, dest=dest, label="shirt", confidence=0.9))  # fmt: skip
        expected[sha] = dest
    events.append(Sorted(src="bare.jpg", root="", sha256="0" * 64, size=1, mtime_ns=2, inode=3,
                         dest="bare.jpg", label="shirt", confidence=0.9))  # fmt: skip
    undone = hashlib.sha256(b"7").hexdigest()
    dest = expected.pop(undone)
    events.append(Undone(src="sub/p7.jpg", root="/photos/3", sha256=undone, size=1,
                         mtime_ns=2, inode=3, dest=dest, reason="undo"))  # fmt: skip
    index = DoneIndex.from_events(events)
    for sha, dest in expected.items():
        assert index.copy_of(sha) == dest
    assert index.copy_of(undone) is None
    assert index.copy_of("0" * 64) == "bare.jpg"
    assert index.source(Path("/photos/149/sub/p299.jpg"), identity) is not None
    assert index.source(Path("bare.jpg"), identity) is not None
    assert index.source(Path("/photos/150/sub/p299.jpg"), identity) is None  # never seen

    index.record(Imported(archive="a.tar", roots={"/photos/149": "/archive/149"}))
    assert index.source(Path("/photos/149/sub/p299.jpg"), identity) is None
    assert index.source(Path("/archive/149/sub/p299.jpg"), identity) is not None
    assert index.source(Path("/photos/148/sub/p297.jpg"), identity) is not None
