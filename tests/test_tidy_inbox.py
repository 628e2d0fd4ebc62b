"""#32 finding 17, "the inbox can be kept tidy", and finding 4's `sort --force`, as a user
meets them: the real daemon and the real CLI as subprocesses, real files, no mocks.

- on_success = "move": each done original goes into inbox/.done/ under its relative path, only
  after its copy is durable and journaled, never over another file, never through a link; a
  kill -9 anywhere loses nothing and doubles nothing; `undo` moves it back.
- keep_subfolders = true: inbox/2024 Holiday/IMG_1.jpg -> library/<class>/2024 Holiday/…,
  with folder names made portable.
- `sort --force`: decides again what the journal has, never copying a content twice.
"""

from __future__ import annotations

import hashlib
import os
import random
import time
from pathlib import Path

from helpers import (
    Daemon,
    Home,
    jpeg_bytes,
    make_home,
    publish_rgb_model,
    sortbox,
    wait_until,
)
from sortbox.daemon.layout import TEMP_PREFIX
from sortbox.daemon.sorting.copies import LIBRARY_NAME
from test_torture import exfat_disk


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def moved_home(tmp_path: Path, **overrides: object) -> Home:
    home = make_home(tmp_path, on_success="move", **overrides)
    publish_rgb_model(home.models, "v1")
    return home


def inbox_files(home: Home) -> list[str]:
    """Files in the inbox outside its done folder, relative to it."""
    return sorted(
        p.relative_to(home.inbox).as_posix()
        for p in home.inbox.rglob("*")
        if p.is_file() and not p.relative_to(home.inbox).as_posix().startswith(".done/")
    )


def done_files(home: Home) -> dict[str, bytes]:
    done = home.inbox / ".done"
    return {p.relative_to(done).as_posix(): p.read_bytes() for p in done.rglob("*") if p.is_file()}


def copies_by_content(home: Home) -> dict[str, list[str]]:
    copies: dict[str, list[str]] = {}
    for file in home.library_files():
        copies.setdefault(sha(file.read_bytes()), []).append(
            file.relative_to(home.library).as_posix()
        )
    return copies


# -- on_success = "move" -------------------------------------------------------------------------


def test_move_mode_moves_each_done_original_into_the_done_folder_keeping_its_path(
    tmp_path: Path,
) -> None:
    home = moved_home(tmp_path)
    red, green = jpeg_bytes("red", 1), jpeg_bytes("green", 2)
    (home.inbox / "trip").mkdir()
    (home.inbox / "a.jpg").write_bytes(red)
    (home.inbox / "trip" / "b.jpg").write_bytes(green)
    daemon = Daemon(home).start()
    try:
        wait_until(lambda: len(done_files(home)) == 2, 20, "both originals moved")
        # a later picture of a name the done folder has already: numbered, nothing overwritten
        blue = jpeg_bytes("blue", 3)
        (home.inbox / "a.jpg").write_bytes(blue)
        wait_until(lambda: len(done_files(home)) == 3, 20, "the third original moved")
        time.sleep(0.5)  # time to (wrongly) sort what sits in the done folder
    finally:
        assert daemon.stop() == 0
    assert inbox_files(home) == []
    assert done_files(home) == {"a.jpg": red, "trip/b.jpg": green, "a (2).jpg": blue}
    events = home.file_events()
    assert len(events) == 3, events  # nothing in .done/ was sorted
    assert all(e["original_removed"] for e in events)
    assert sorted(copies_by_content(home)) == sorted(sha(d) for d in (red, green, blue))

    # a restart sorts nothing again and moves nothing more
    daemon = Daemon(home).start()
    try:
        time.sleep(1.0)
    finally:
        assert daemon.stop() == 0
    assert len(home.file_events()) == 3
    assert done_files(home) == {"a.jpg": red, "trip/b.jpg": green, "a (2).jpg": blue}

    doctor = sortbox("doctor", config=home.config)
    assert 'on_success = "move": each original is moved into' in doctor.stdout, doctor.stdout


def test_undo_in_move_mode_moves_the_very_original_back(tmp_path: Path) -> None:
    home = moved_home(tmp_path)
    data = jpeg_bytes("green", 7)
    (home.inbox / "album").mkdir()
    (home.inbox / "album" / "keepsake.jpg").write_bytes(data)
    daemon = Daemon(home).start()
    try:
        wait_until(lambda: "album/keepsake.jpg" in done_files(home), 20, "original moved")
    finally:
        assert daemon.stop() == 0
    inode = (home.inbox / ".done" / "album" / "keepsake.jpg").stat().st_ino
    (event,) = home.file_events()

    dry = sortbox("undo", "--dry-run", config=home.config)
    assert dry.returncode == 0, dry.stderr
    assert "would restore" in dry.stdout
    assert "album/keepsake.jpg" in done_files(home)  # a dry run moves nothing

    result = sortbox("undo", config=home.config)
    assert result.returncode == 0, result.stdout + result.stderr
    original = home.inbox / "album" / "keepsake.jpg"
    assert original.read_bytes() == data
    assert original.stat().st_ino == inode  # the original itself, not a copy written back
    assert done_files(home) == {}
    assert not (home.library / event["dest"]).exists()
    assert home.events("undone")[0]["restored"] is True

    # the daemon leaves the restored original alone
    daemon = Daemon(home).start()
    try:
        time.sleep(1.5)
    finally:
        assert daemon.stop() == 0
    assert original.exists() and len(home.file_events()) == 1


def test_a_done_folder_with_a_plain_name_is_never_sorted(tmp_path: Path) -> None:
    """done_folder need not be hidden: `Done/originals` is still never sorted, at a rescan
    or a restart, though the ignore patterns do not cover it."""
    home = moved_home(tmp_path, done_folder="Done/originals", rescan_interval_s=0.5)
    (home.inbox / "p.jpg").write_bytes(jpeg_bytes("red", 140))
    done = home.inbox / "Done" / "originals" / "p.jpg"
    daemon = Daemon(home).start()
    try:
        wait_until(done.exists, 20, "moved")
        time.sleep(1.5)  # rescans
    finally:
        assert daemon.stop() == 0
    daemon = Daemon(home).start()
    try:
        time.sleep(1.0)
    finally:
        assert daemon.stop() == 0
    assert len(home.file_events()) == 1
    assert len(home.library_files()) == 1
    assert done.exists() and not (home.inbox / "p.jpg").exists()


def test_move_mode_never_moves_through_a_link_and_says_so(tmp_path: Path) -> None:
    home = moved_home(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (home.inbox / ".done").symlink_to(elsewhere)
    data = jpeg_bytes("red", 4)
    (home.inbox / "x.jpg").write_bytes(data)
    daemon = Daemon(home).start()
    try:
        wait_until(lambda: home.file_events(), 20, "sorted")
        wait_until(lambda: "original_not_moved" in daemon.log_text(), 10, "said")
    finally:
        assert daemon.stop() == 0
    assert list(elsewhere.iterdir()) == []
    assert (home.inbox / "x.jpg").read_bytes() == data  # stays, done
    assert len(home.library_files()) == 1
    doctor = sortbox("doctor", config=home.config)
    assert "is a link or a file" in doctor.stdout, doctor.stdout


def test_a_move_cut_short_by_a_crash_is_finished_at_the_next_start(tmp_path: Path) -> None:
    """kill -9 between the two steps of a move (the original linked into .done/, its inbox
    name not yet removed) leaves one file under two names; and a kill after the journal line
    but before the move leaves the original in the inbox. The next start finishes both: no
    second copy, no `x (2).jpg`, nothing sorted again."""
    home = moved_home(tmp_path)
    first, second = jpeg_bytes("red", 11), jpeg_bytes("blue", 12)
    (home.inbox / "first.jpg").write_bytes(first)
    (home.inbox / "second.jpg").write_bytes(second)
    daemon = Daemon(home).start()
    try:
        wait_until(lambda: len(done_files(home)) == 2, 20, "moved")
    finally:
        assert daemon.stop() == 0
    # as the crash left them: first.jpg in both places (one file), second.jpg not yet moved
    os.link(home.inbox / ".done" / "first.jpg", home.inbox / "first.jpg")
    os.rename(home.inbox / ".done" / "second.jpg", home.inbox / "second.jpg")
    daemon = Daemon(home).start()
    try:
        wait_until(lambda: inbox_files(home) == [], 20, "both moves finished")
    finally:
        assert daemon.stop() == 0
    assert done_files(home) == {"first.jpg": first, "second.jpg": second}
    assert len(home.file_events()) == 2
    assert len(home.library_files()) == 2


def test_kill_9_at_random_points_in_move_mode_never_loses_or_doubles(tmp_path: Path) -> None:
    home = moved_home(tmp_path)
    rng = random.Random(17)
    colours = ("red", "green", "blue")
    good: dict[str, bytes] = {}
    for round_ in range(6):
        daemon = Daemon(home).start()
        folder = home.inbox / f"card{round_ % 2}"
        folder.mkdir(exist_ok=True)
        for n in range(5):
            data = jpeg_bytes(colours[(round_ + n) % 3], 100 * round_ + n)
            name = f"card{round_ % 2}/IMG_{n}.jpg"  # the same names again: numbered in .done
            good[f"{round_}/{name}"] = data
            (folder / f"IMG_{n}.jpg").write_bytes(data)
            time.sleep(rng.uniform(0.0, 0.08))
        time.sleep(rng.uniform(0.0, 0.5))
        daemon.kill()
        # files of this round the daemon did not get to stay for the next rounds' start
    daemon = Daemon(home).start()
    try:
        wait_until(lambda: inbox_files(home) == [], 60, "every original moved")
    finally:
        assert daemon.stop() == 0
    # nothing lost: every content is in the library once and in the done folder once
    copies = copies_by_content(home)
    moved = list(done_files(home).values())
    for data in good.values():
        assert len(copies.get(sha(data), [])) == 1, copies.get(sha(data))
        assert moved.count(data) == 1
    assert len(moved) == len(good)
    decided = [e for e in home.file_events() if e["event"] in ("sorted", "review")]
    assert sorted(e["sha256"] for e in decided) == sorted(sha(d) for d in good.values())
    assert not list(home.library.rglob(f"{TEMP_PREFIX}*"))


def test_a_camera_card_as_the_inbox_in_move_mode_without_hard_links(tmp_path: Path) -> None:
    """An exFAT card (no hard links: the name is checked, then the file renamed) as the inbox:
    each import is moved into .done/, the second card's same names numbered; undo puts them
    back."""
    home = moved_home(tmp_path, inbox="card")
    photos = [jpeg_bytes(colour, 130 + n) for n, colour in enumerate(("red", "green", "blue"))]
    with exfat_disk(tmp_path / "card") as card:
        for batch in (photos[:2], photos[2:]):
            (card / "DCIM").mkdir(exist_ok=True)
            for n, data in enumerate(batch):
                (card / "DCIM" / f"IMG_{n:04}.JPG").write_bytes(data)
            daemon = Daemon(home).start()
            try:
                wait_until(lambda: not list((card / "DCIM").iterdir()), 30, "the card emptied")
            finally:
                assert daemon.stop() == 0
        done = card / ".done" / "DCIM"
        assert {p.name: p.read_bytes() for p in done.iterdir()} == {
            "IMG_0000.JPG": photos[0],
            "IMG_0001.JPG": photos[1],
            "IMG_0000 (2).JPG": photos[2],
        }
        assert len(home.library_files()) == 3
        undone = sortbox("undo", "--last", "1", config=home.config)
        assert undone.returncode == 0, undone.stdout + undone.stderr
        assert (card / "DCIM" / "IMG_0000.JPG").read_bytes() == photos[2]
        assert sorted(p.name for p in done.iterdir()) == ["IMG_0000.JPG", "IMG_0001.JPG"]


# -- keep_subfolders -------------------------------------------------------------------------


def test_keep_subfolders_keeps_the_album_under_the_class_with_portable_names(
    tmp_path: Path,
) -> None:
    home = make_home(tmp_path, keep_subfolders=True)
    publish_rgb_model(home.models, "v1")
    inputs = {
        "2024 Holiday/IMG_1.jpg": ("red", "red/2024 Holiday"),
        "2024 Holiday/day 2/IMG_2.jpg": ("green", "green/2024 Holiday/day 2"),
        "a:b?/IMG_3.jpg": ("blue", "blue/a_b_"),
        "CON/IMG_4.jpg": ("red", "red/_CON"),
        "trip. /IMG_5.jpg": ("green", "green/trip"),
        "top.jpg": ("blue", "blue"),
    }
    for n, (relative, (colour, _)) in enumerate(inputs.items()):
        (home.inbox / relative).parent.mkdir(parents=True, exist_ok=True)
        (home.inbox / relative).write_bytes(jpeg_bytes(colour, 50 + n))
    daemon = Daemon(home).start()
    try:
        wait_until(lambda: len(home.file_events()) == len(inputs), 20, "all sorted")
    finally:
        assert daemon.stop() == 0
    by_src = {e["src"]: e["dest"] for e in home.file_events()}
    for relative, (_, folder) in inputs.items():
        dest = by_src[relative]
        assert dest.rsplit("/", 1)[0] == folder, (relative, dest)
        name = dest.rsplit("/", 1)[1]
        assert LIBRARY_NAME.match(name) and (home.library / dest).is_file()

    # a crash's leftovers deep in a class folder are cleaned at start; undo finds nested copies
    leftover = home.library / "red" / "2024 Holiday" / f"{TEMP_PREFIX}dead.tmp"
    leftover.write_bytes(b"half a copy")
    daemon = Daemon(home).start()
    try:
        time.sleep(0.5)
    finally:
        assert daemon.stop() == 0
    assert not leftover.exists()
    assert len(home.file_events()) == len(inputs)  # nothing sorted twice

    undone = sortbox("undo", "--last", str(len(inputs)), config=home.config)
    assert undone.returncode == 0, undone.stdout + undone.stderr
    assert home.library_files() == []


def test_the_trainer_reads_every_level_of_a_class_folder_as_that_class(tmp_path: Path) -> None:
    """With keep_subfolders the library has class/album/… folders: a picture moved from
    red/Holiday/ to green/Holiday/ is a correction to green, pictures a person put into
    blue/Album/deep/ are user-added blue ones (`train --dry-run` shows the training set)."""
    home = make_home(tmp_path, keep_subfolders=True)
    publish_rgb_model(home.models, "v1")
    (home.inbox / "Holiday").mkdir()
    for n in range(6):
        (home.inbox / "Holiday" / f"r{n}.jpg").write_bytes(jpeg_bytes("red", 90 + n))
    assert sortbox("sort", str(home.inbox), config=home.config).returncode == 0
    (home.library / "green" / "Holiday").mkdir(parents=True)
    for placed in sorted((home.library / "red" / "Holiday").iterdir())[:5]:
        placed.rename(home.library / "green" / "Holiday" / placed.name)  # the user corrects
    (home.library / "blue" / "Album" / "deep").mkdir(parents=True)
    for n in range(5):
        (home.library / "blue" / "Album" / "deep" / f"b{n}.jpg").write_bytes(
            jpeg_bytes("blue", 120 + n)
        )
    # red, which the current model knows, has no labels left: let it go (#32, finding 10)
    dry = sortbox("train", "--dry-run", "--drop-classes", config=home.config)
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert "5 user added" in dry.stdout and "5 corrected" in dry.stdout, dry.stdout
    classes = {line.split()[0] for line in dry.stdout.splitlines() if line.startswith("  ")}
    assert {"blue", "green"} <= classes and "red" not in classes, dry.stdout


def test_keep_subfolders_never_writes_through_a_subfolder_made_a_link(tmp_path: Path) -> None:
    home = make_home(tmp_path, keep_subfolders=True)
    publish_rgb_model(home.models, "v1")
    outside = tmp_path / "outside"
    outside.mkdir()
    (home.library / "red").mkdir()
    (home.library / "red" / "Holiday").symlink_to(outside)
    (home.inbox / "Holiday").mkdir()
    (home.inbox / "Holiday" / "IMG_1.jpg").write_bytes(jpeg_bytes("red", 61))
    result = sortbox("sort", str(home.inbox), config=home.config)
    assert result.returncode == 0, result.stderr
    assert list(outside.iterdir()) == []
    (event,) = home.file_events()
    assert event["event"] == "review" and event["dest"].startswith("needs_review/")
    assert "symlink" in event["reason"]


def test_sort_keeps_subfolders_below_the_folder_it_was_given(tmp_path: Path) -> None:
    home = make_home(tmp_path, keep_subfolders=True)
    publish_rgb_model(home.models, "v1")
    archive = tmp_path / "Pictures"
    (archive / "2019" / "Rome").mkdir(parents=True)
    (archive / "2019" / "Rome" / "IMG_9.jpg").write_bytes(jpeg_bytes("blue", 71))
    result = sortbox("sort", str(archive), config=home.config)
    assert result.returncode == 0, result.stderr
    (event,) = home.file_events()
    assert event["dest"].startswith("blue/2019/Rome/IMG_9.")
    assert (archive / "2019" / "Rome" / "IMG_9.jpg").exists()  # sort keeps what it is given


# -- sort --force (#32, finding 4) -------------------------------------------------------------


def test_sort_force_decides_again_without_copying_twice(tmp_path: Path) -> None:
    home = make_home(tmp_path)
    publish_rgb_model(home.models, "v1")
    backlog = tmp_path / "backlog"
    backlog.mkdir()
    for n, colour in enumerate(("red", "green", "blue")):
        (backlog / f"{colour}.jpg").write_bytes(jpeg_bytes(colour, 80 + n))
    first = sortbox("sort", str(backlog), config=home.config)
    assert first.returncode == 0, first.stderr
    placed = home.library_files()
    assert len(placed) == 3

    again = sortbox("sort", str(backlog), config=home.config)
    assert "3 files skipped, already handled (the journal has them" in again.stderr

    forced = sortbox("sort", "--force", str(backlog), config=home.config)
    assert forced.returncode == 0, forced.stderr
    assert "already handled" not in forced.stderr
    assert "3 duplicates" in forced.stderr, forced.stderr
    assert forced.stdout.count("decided again: ") == 3, forced.stdout
    assert "red.jpg → duplicate: same content as red/red." in forced.stdout
    assert home.library_files() == placed  # not one more copy
    duplicates = home.events("duplicate")
    assert {d["label"] for d in duplicates} == {"red", "green", "blue"}

    # a copy the user deleted is placed again by --force (plain `sort` would skip it)
    placed[0].unlink()
    assert "already handled" in sortbox("sort", str(backlog), config=home.config).stderr
    assert len(home.library_files()) == 2
    forced = sortbox("sort", "--force", str(backlog), config=home.config)
    assert forced.returncode == 0, forced.stderr
    assert "1 sorted" in forced.stderr and "2 duplicates" in forced.stderr, forced.stderr
    assert sorted(home.library_files()) == sorted(placed)
