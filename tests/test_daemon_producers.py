"""The daemon as a real subprocess, with files arriving the ways real programs write them."""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
import time
from pathlib import Path

from helpers import (
    Daemon,
    Home,
    jpeg_bytes,
    make_home,
    publish_rgb_model,
    wait_until,
    write_picture,
)


def placements_for(home: Home, src: str) -> list[dict]:
    return [e for e in home.file_events() if e["src"] == src]


def wait_for_src(home: Home, src: str, timeout: float = 20) -> dict:
    found = wait_until(lambda: placements_for(home, src), timeout, f"a journal line for {src}")
    return found[0]  # type: ignore[index]


def test_every_producer_lands_exactly_once_and_complete(
    home: Home, daemon: Daemon, tmp_path: Path
) -> None:
    daemon.start()
    outside = tmp_path / "outside"
    outside.mkdir()
    expected: dict[str, bytes] = {}

    # plain cp from elsewhere
    source = write_picture(outside / "copied.jpg", "red", 1)
    shutil.copy(source, home.inbox / "copied.jpg")
    expected["copied.jpg"] = source.read_bytes()

    # write a temp name, then rename (editors, most sync tools)
    (home.inbox / "renamed.jpg.tmp").write_bytes(jpeg_bytes("green", 2))
    os.rename(home.inbox / "renamed.jpg.tmp", home.inbox / "renamed.jpg")
    expected["renamed.jpg"] = jpeg_bytes("green", 2)

    # rsync: hidden temp file in the same folder, renamed at the end
    (home.inbox / ".rsynced.jpg.Xa9b3Q").write_bytes(jpeg_bytes("blue", 3))
    os.rename(home.inbox / ".rsynced.jpg.Xa9b3Q", home.inbox / "rsynced.jpg")
    expected["rsynced.jpg"] = jpeg_bytes("blue", 3)

    # nested folders, and a whole folder moved in at once
    write_picture(home.inbox / "2026" / "11" / "deep.png", "red", 4, "PNG")
    expected["2026/11/deep.png"] = (home.inbox / "2026" / "11" / "deep.png").read_bytes()
    album = outside / "album"
    write_picture(album / "one.jpg", "green", 5)
    write_picture(album / "two.jpg", "blue", 6)
    expected["album/one.jpg"] = (album / "one.jpg").read_bytes()
    expected["album/two.jpg"] = (album / "two.jpg").read_bytes()
    shutil.move(str(album), home.inbox / "album")

    # unicode and odd names
    for n, (name, colour) in enumerate(
        [
            ("фото ü 😀.JPG", "red"),
            ("name with  spaces.jpeg", "green"),
            ("multi.dot.name.png", "blue"),
            ("-leading-dash.jpg", "red"),
            ("no_extension", "green"),
            ("tab\tand\nnewline.jpg", "blue"),
        ]
    ):
        data = jpeg_bytes(colour, 200 + n)
        (home.inbox / name).write_bytes(data)
        expected[name] = data

    for src, data in expected.items():
        event = wait_for_src(home, src)
        assert event["event"] in ("sorted", "review"), event
        copy = home.library / event["dest"]
        assert copy.read_bytes() == data, f"{src}: library copy differs from the input"
        assert event["sha256"] == hashlib.sha256(data).hexdigest()
        assert (home.inbox / src).exists(), "copy mode must keep the original"

    dests = [e["dest"] for e in home.file_events()]
    assert len(dests) == len(set(dests)) == len(expected)
    assert (
        home.library
        / "red"
        / "-leading-dash.{}.jpg".format(
            hashlib.sha256(expected["-leading-dash.jpg"]).hexdigest()[:12]
        )
        in home.library_files()
    )
    odd = next(e for e in home.file_events() if e["src"] == "tab\tand\nnewline.jpg")
    assert "\n" not in odd["dest"] and "\t" not in odd["dest"]
    upper = next(e for e in home.file_events() if e["src"] == "фото ü 😀.JPG")
    assert upper["dest"].endswith(".jpg") and "фото ü 😀." in upper["dest"]


def test_browser_download_part_file_is_ignored_until_renamed(home: Home, daemon: Daemon) -> None:
    daemon.start()
    data = jpeg_bytes("blue", 10)
    partial = home.inbox / "download.jpg.part"
    with partial.open("wb") as fh:
        for start in range(0, len(data), 200):
            fh.write(data[start : start + 200])
            fh.flush()
            time.sleep(0.05)
    time.sleep(0.6)
    assert home.file_events() == []
    os.rename(partial, home.inbox / "download.jpg")
    event = wait_for_src(home, "download.jpg")
    assert (home.library / event["dest"]).read_bytes() == data
    assert all(not e["src"].endswith(".part") for e in home.file_events())


def test_a_file_moved_in_from_outside_waits_no_quiet_period(tmp_path: Path) -> None:
    """`mv ~/Downloads/x.jpg inbox/` is a rename: complete the moment it appears. inotify
    reports it without its source folder; it must not be taken for a file just created
    (those wait for their writer to close, or out the quiet period when none is seen)."""
    (tmp_path / "home").mkdir()
    home = make_home(tmp_path / "home", quiet_period_s=60.0)
    publish_rgb_model(home.models, "v1")
    daemon = Daemon(home)
    daemon.start()
    try:
        outside = write_picture(tmp_path / "downloads" / "moved.jpg", "green", 12)
        data = outside.read_bytes()
        os.rename(outside, home.inbox / "moved.jpg")
        event = wait_for_src(home, "moved.jpg", timeout=30)  # half the quiet period
        assert (home.library / event["dest"]).read_bytes() == data
    finally:
        daemon.stop()


def test_a_file_written_slowly_is_taken_only_when_complete(home: Home, daemon: Daemon) -> None:
    """Pauses far longer than the quiet period: the open writer is what holds it back."""
    daemon.start()
    data = jpeg_bytes("red", 11)
    target = home.inbox / "scanner.jpg"
    with target.open("wb") as fh:
        for start in range(0, len(data), len(data) // 4 + 1):
            fh.write(data[start : start + len(data) // 4 + 1])
            fh.flush()
            time.sleep(1.0)  # five times the quiet period
    event = wait_for_src(home, "scanner.jpg")
    assert event["sha256"] == hashlib.sha256(data).hexdigest()
    time.sleep(0.5)
    assert len(placements_for(home, "scanner.jpg")) == 1
    assert (home.library / event["dest"]).read_bytes() == data


def test_duplicates_under_new_names_and_same_name_with_new_content(
    home: Home, daemon: Daemon
) -> None:
    daemon.start()
    first = jpeg_bytes("green", 20)
    (home.inbox / "original.jpg").write_bytes(first)
    wait_for_src(home, "original.jpg")

    (home.inbox / "copy of original.jpg").write_bytes(first)
    (home.inbox / "sub").mkdir()
    (home.inbox / "sub" / "IMG_0001.JPG").write_bytes(first)
    duplicate = wait_for_src(home, "copy of original.jpg")
    assert duplicate["event"] == "duplicate"
    assert wait_for_src(home, "sub/IMG_0001.JPG")["event"] == "duplicate"
    assert len(home.library_files()) == 1

    # same name, new content: a new copy, the old one untouched
    second = jpeg_bytes("blue", 21)
    (home.inbox / "original.jpg").write_bytes(second)
    wait_until(lambda: len(placements_for(home, "original.jpg")) == 2, 20, "second placement")
    events = placements_for(home, "original.jpg")
    assert [e["sha256"] for e in events] == [
        hashlib.sha256(first).hexdigest(),
        hashlib.sha256(second).hexdigest(),
    ]
    contents = sorted(p.read_bytes() for p in home.library_files())
    assert contents == sorted([first, second])


def test_burst_of_files_arriving_together(home: Home, daemon: Daemon) -> None:
    daemon.start()
    colours = ["red", "green", "blue"]

    def produce() -> None:
        for n in range(40):
            write_picture(home.inbox / f"burst-{n:02}.jpg", colours[n % 3], 100 + n)

    writer = threading.Thread(target=produce)
    writer.start()
    writer.join()
    wait_until(lambda: len(home.file_events()) == 40, 30, "40 journal lines")
    for event in home.file_events():
        n = int(event["src"][6:8])
        assert event["label"] == colours[n % 3]
        assert event["dest"].startswith(colours[n % 3] + "/")
