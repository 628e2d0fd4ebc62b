"""Torture: the real daemon (and `sortbox sort`) as subprocesses against a hostile world.

Every test ends with the same invariants (`check_invariants`):
- every good input placed exactly once (one copy, one sorted/review line);
- every library file journaled, its content matching the hash in its name;
- no temporary files left;
- bad input rejected with a reason;
- the daemon alive and progressing, or exited non-zero.

`pytest --long` runs the kill -9 test at full length (>= 200 kill points across the daemon
and `sortbox sort`); CI runs a short version.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import itertools
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import (
    CLOTHING10,
    Daemon,
    Home,
    dng,
    jpeg_bytes,
    make_home,
    publish_rgb_model,
    sortbox,
    wait_until,
)
from PIL import Image
from sortbox.daemon.layout import TEMP_PREFIX
from sortbox.daemon.sorting.copies import LIBRARY_NAME, copy_into
from sortbox.daemon.sorting.manifest import ModelError
from sortbox.daemon.sorting.preprocess import MAX_ASPECT_RATIO

SORT = [sys.executable, "-m", "sortbox.daemon.cli", "sort"]


def sha256(data: bytes | Path) -> str:
    return hashlib.sha256(data.read_bytes() if isinstance(data, Path) else data).hexdigest()


def real_photos(count: int, size: int = 160) -> list[bytes]:
    """Real photos from clothing10, re-encoded small (each its own content)."""
    paths = sorted(CLOTHING10.rglob("*.jpg"))[:count]
    if len(paths) < count:
        pytest.skip(f"needs {count} photos in {CLOTHING10}")
    photos = []
    for path in paths:
        with Image.open(path) as image:
            image.thumbnail((size, size))
            buffer = io.BytesIO()
            image.convert("RGB").save(buffer, "JPEG", quality=90)
            photos.append(buffer.getvalue())
    return photos


def decisions_by_src(home: Home) -> dict[str, list[dict]]:
    found: dict[str, list[dict]] = {}
    for event in home.file_events():
        found.setdefault(event["src"], []).append(event)
    return found


def check_invariants(
    home: Home, good: list[bytes], bad: list[str] = (), decided: list[str] = ()
) -> None:
    library_files = home.library_files()
    events = home.file_events()
    undone = {(e["dest"], e["sha256"]) for e in home.events("undone")}
    # no temporary files anywhere in the library
    temps = [p for p in home.library.rglob(f"{TEMP_PREFIX}*")] if home.library.exists() else []
    assert not temps, temps
    # every library file journaled, with the content its name promises
    journaled = {
        e["dest"]: e
        for e in events
        if e["event"] in ("sorted", "review", "rejected") and e["dest"]
        if (e["dest"], e["sha256"]) not in undone
    }
    contents = {}
    for file in library_files:
        relative = file.relative_to(home.library).as_posix()
        digest = sha256(file)
        contents[relative] = digest
        assert relative in journaled, f"{relative} is in the library but not in the journal"
        assert journaled[relative]["sha256"] == digest, f"{relative} is not what was journaled"
        match = LIBRARY_NAME.match(file.name)
        assert match and digest.startswith(match["hash"]), f"{relative}: name and content differ"
    # every good input exactly once: one copy, one sorted/review line
    for content in good:
        digest = sha256(content)
        copies = [r for r, d in contents.items() if d == digest]
        assert len(copies) == 1, f"{digest[:12]} has {len(copies)} copies: {copies}"
        lines = [e for e in events if e["sha256"] == digest and e["event"] in ("sorted", "review")]
        assert len(lines) == 1, f"{digest[:12]} was placed {len(lines)} times"
    by_src = decisions_by_src(home)
    for src in bad:
        assert src in by_src, f"{src!r} was never decided"
        last = by_src[src][-1]
        assert last["event"] == "rejected" and last["reason"], (src, last)
    for src in decided:
        assert len(by_src.get(src, [])) == 1, f"{src!r}: {by_src.get(src)}"


def settled(home: Home, expected: int) -> bool:
    return len(home.file_events()) >= expected


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


# -- hostile inputs ----------------------------------------------------------------------------


def fuzzed_variants(data: bytes, rng: random.Random) -> dict[str, bytes]:
    flipped = bytearray(data)
    for _ in range(16):
        position = rng.randrange(min(len(flipped), 64), len(flipped)) if len(flipped) > 64 else 0
        flipped[position] ^= 1 << rng.randrange(8)
    head = data[: min(len(data), 48)]
    return {
        "truncated": data[: rng.randrange(1, max(2, len(data)))],
        "flipped": bytes(flipped),
        "header-then-garbage": head + rng.randbytes(2048),
    }


def every_pillow_format(photo: Image.Image) -> dict[str, bytes]:
    """The photo saved in every format Pillow can write (as the format wants it)."""
    Image.init()
    written = {}
    for name in sorted(Image.SAVE):
        for mode in ("RGB", "L", "1", "RGBA"):
            try:
                buffer = io.BytesIO()
                photo.convert(mode).save(buffer, format=name)
            except Exception:
                continue
            if buffer.getvalue():
                written[name] = buffer.getvalue()
                break
    return written


def hostile_inbox(inbox: Path, photos: list[bytes]) -> tuple[list[bytes], list[str], list[str]]:
    """Write the hostile inputs; return (good contents, must-be-rejected srcs, decided srcs)."""
    rng = random.Random(9)
    good, bad, decided = [], [], []

    def put(name: str | bytes, data: bytes, kind: str) -> None:
        path = Path(os.fsdecode(os.path.join(os.fsencode(inbox), os.fsencode(name))))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        src = path.relative_to(inbox).as_posix()
        {"good": good, "bad": bad, "any": decided}[kind].append(data if kind == "good" else src)
        if kind == "good":
            decided.append(src)

    photo = Image.open(io.BytesIO(photos[0]))
    for fmt, data in every_pillow_format(photo).items():
        put(f"formats/photo.{fmt.lower()}", data, "any")
        for variant, fuzzed in fuzzed_variants(data, rng).items():
            put(f"fuzzed/{variant}.{fmt.lower()}", fuzzed, "any")
    raw = dng(photo.convert("RGB"))  # camera RAW: LibRaw parses these, corrupt ones too
    put("formats/photo.dng", raw, "any")
    for variant, fuzzed in fuzzed_variants(raw, rng).items():
        put(f"fuzzed/{variant}.dng", fuzzed, "any")
    put("zero-length.png", b"", "bad")
    put("notes.jpg", b"this is a text file, not a picture\n", "bad")
    put("page.eps", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n", "bad")
    put("index.html.jpg", b"<!doctype html><title>x</title>", "bad")
    put("archive.png", b"\x1f\x8b\x08\x00" + rng.randbytes(500), "bad")
    # a PNG whose header declares 60000 x 60000 pixels: never decoded
    bomb = io.BytesIO()
    Image.new("L", (1, 1)).save(bomb, "PNG")
    header = bytearray(bomb.getvalue())
    header[16:24] = (60000).to_bytes(4, "big") * 2
    put("bomb.png", bytes(header), "bad")
    # a real JPEG far longer than wide (was 3.5 GB of RSS while resizing)
    wide = io.BytesIO()
    Image.new("RGB", (40 * MAX_ASPECT_RATIO * 8, 8), (200, 30, 30)).save(wide, "JPEG")
    put("extreme-panorama.jpg", wide.getvalue(), "bad")
    # names that break naive code, on good pictures
    put(b"not-utf8-\xff\xfe.jpg", photos[1], "good")
    put("line\nbreak.jpg", photos[2], "good")
    put("-rf.jpg", photos[3], "good")
    put("x" * 200 + ".jpg", photos[4], "good")
    put("deep/" * 20 + "nested.jpg", photos[5], "good")
    put("ünïcødé 写真.JPG", photos[6], "good")
    # a large picture in a format that cannot be decoded reduced
    big = io.BytesIO()
    Image.open(io.BytesIO(photos[7])).resize((6000, 6000)).save(big, "PNG", compress_level=1)
    put("scan-36mp.png", big.getvalue(), "good")
    os.mkfifo(inbox / "pipe.jpg")
    bad.append("pipe.jpg")
    os.symlink("/etc/hostname", inbox / "escape.jpg")
    bad.append("escape.jpg")
    os.symlink("loop.jpg", inbox / "loop.jpg")
    bad.append("loop.jpg")
    return good, bad, decided


def test_forty_and_more_hostile_inputs_never_stall_the_daemon(tmp_path: Path) -> None:
    """Items 1, 2 and 10: decoder exceptions of every kind, a zero-length PNG, a name that is not
    UTF-8, an extreme aspect ratio; then a good picture dropped last is still sorted."""
    home = make_home(tmp_path)
    publish_rgb_model(home.models, "v1")
    photos = real_photos(10)
    good, bad, decided = hostile_inbox(home.inbox, photos)
    assert len(bad) + len(decided) - len(good) >= 40
    daemon = Daemon(home).start()
    try:
        wait_until(lambda: settled(home, len(bad) + len(decided)), 120, "every input decided")
        (home.inbox / "after.jpg").write_bytes(photos[9])
        wait_until(lambda: "after.jpg" in decisions_by_src(home), 20, "the picture after")
        assert daemon.process.poll() is None
        threads = len(os.listdir(f"/proc/{daemon.process.pid}/task"))
        rss = peak_rss_mb(daemon.process.pid)
    finally:
        daemon.stop()
    check_invariants(home, [*good, photos[9]], bad, decided)
    print(f"{len(bad) + len(decided)} hostile inputs; daemon peak RSS {rss:.0f} MB")
    assert rss <= 300, f"peak RSS {rss:.0f} MB"
    reasons = {src: events[-1]["reason"] for src, events in decisions_by_src(home).items()}
    assert "aspect ratio" in reasons["extreme-panorama.jpg"]
    assert "empty file" in reasons["zero-length.png"]
    assert threads >= 1 + 2 + 1  # main, decoders, intake ... all still there (none died)
    assert "worker_died" not in daemon.log_text()


# -- folders that vanish, copies that vanish ---------------------------------------------------


def test_inbox_deleted_and_recreated_is_watched_again(home: Home, daemon: Daemon) -> None:
    """Item 3."""
    daemon.start()
    shutil.rmtree(home.inbox)
    home.inbox.mkdir()
    time.sleep(1.5)  # the daemon notices within a second
    (home.inbox / "after-recreate.jpg").write_bytes(jpeg_bytes("red", 1))
    wait_until(lambda: "after-recreate.jpg" in decisions_by_src(home), 20, "sorted")
    shutil.rmtree(home.inbox)  # and gone for good: the daemon makes it again
    wait_until(home.inbox.is_dir, 10, "the inbox recreated")
    time.sleep(0.5)
    (home.inbox / "after-delete.jpg").write_bytes(jpeg_bytes("green", 2))
    wait_until(lambda: "after-delete.jpg" in decisions_by_src(home), 20, "sorted")
    assert daemon.stop() == 0
    check_invariants(home, [jpeg_bytes("red", 1), jpeg_bytes("green", 2)])


def test_a_library_deleted_while_running_is_made_again(home: Home, daemon: Daemon) -> None:
    daemon.start()
    (home.inbox / "before.jpg").write_bytes(jpeg_bytes("red", 1))
    wait_until(lambda: home.library_files(), 20, "the first copy")
    shutil.rmtree(home.library)
    (home.inbox / "after.jpg").write_bytes(jpeg_bytes("green", 2))
    wait_until(lambda: "after.jpg" in decisions_by_src(home), 20, "sorted into a new library")
    assert daemon.process.poll() is None
    assert daemon.stop() == 0
    assert [sha256(p) for p in home.library_files()] == [sha256(jpeg_bytes("green", 2))]


def test_content_whose_copy_the_user_deleted_is_placed_again(home: Home, daemon: Daemon) -> None:
    """Item 4: 'already in the library' means the copy still exists with that content."""
    daemon.start()
    data = jpeg_bytes("blue", 3)
    (home.inbox / "first.jpg").write_bytes(data)
    wait_until(lambda: home.library_files(), 20, "the first copy")
    home.library_files()[0].unlink()  # the user deletes it in the file manager
    (home.inbox / "again.jpg").write_bytes(data)
    wait_until(lambda: "again.jpg" in decisions_by_src(home), 20, "the second drop")
    assert decisions_by_src(home)["again.jpg"][0]["event"] == "sorted"
    assert [sha256(p) for p in home.library_files()] == [sha256(data)]
    assert daemon.stop() == 0


def test_a_class_folder_replaced_by_a_link_or_a_file_is_never_written_through(
    home: Home, daemon: Daemon, tmp_path: Path
) -> None:
    """Whoever can write in the library can swap a class folder for a symlink to anywhere, or
    for a file: the picture goes to review saying why, nothing is written outside the
    library, and the other classes go on without a pause."""
    outside = tmp_path / "outside"
    outside.mkdir()
    home.library.mkdir(exist_ok=True)
    os.symlink(outside, home.library / "red")
    (home.library / "green").write_text("a file where the folder was")
    daemon.start()
    pictures = {"r.jpg": jpeg_bytes("red", 1), "g.jpg": jpeg_bytes("green", 2)}
    pictures["b.jpg"] = jpeg_bytes("blue", 3)
    for name, data in pictures.items():
        (home.inbox / name).write_bytes(data)
    wait_until(lambda: len(decisions_by_src(home)) == 3, 20, "three decisions")
    decided = {src: events[0] for src, events in decisions_by_src(home).items()}
    assert decided["b.jpg"]["event"] == "sorted" and decided["b.jpg"]["dest"].startswith("blue/")
    for name, why in (("r.jpg", "is a symlink"), ("g.jpg", "is not a folder")):
        event = decided[name]
        assert event["event"] == "review" and event["dest"].startswith("needs_review/"), event
        assert why in event["reason"] and "placed for review" in event["reason"], event
        assert sha256(home.library / event["dest"]) == sha256(pictures[name])
    assert list(outside.iterdir()) == []
    assert (home.library / "green").read_text() == "a file where the folder was"
    assert daemon.stop() == 0
    assert '"event": "paused"' not in daemon.log_text()
    assert daemon.log_text().count('"event": "folder_unusable"') == 2


BROKEN_PLACEMENT = """
import sys
from sortbox.daemon.sorting import stages
real = stages._place
def exploding(item, *args):
    if item.arrival.path.name == "boom.jpg":
        raise SystemError("a placement bug nobody caught")
    return real(item, *args)
stages._place = exploding
from sortbox.daemon.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_sort_names_what_an_unexpected_error_left_unsorted_and_exits_1(home: Home) -> None:
    backlog = home.root / "backlog"
    backlog.mkdir()
    for n, name in enumerate(("a.jpg", "boom.jpg", "c.jpg")):
        (backlog / name).write_bytes(jpeg_bytes("red", n))
    process = subprocess.run(
        [
            sys.executable,
            "-c",
            BROKEN_PLACEMENT,
            "sort",
            str(backlog),
            "--config",
            str(home.config),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert process.returncode == 1, process.stderr
    assert f"not sorted (an error, logged above; run again): {backlog / 'boom.jpg'}" in (
        process.stderr
    )
    assert sorted(decisions_by_src(home)) == ["a.jpg", "c.jpg"]
    assert sortbox("sort", str(backlog), config=home.config).returncode == 0  # the fix: again
    assert sorted(decisions_by_src(home)) == ["a.jpg", "boom.jpg", "c.jpg"]


MAX_QUEUED_EVENTS = Path("/proc/sys/fs/inotify/max_queued_events")


def test_events_the_kernel_dropped_are_found_by_a_rescan_at_once(tmp_path: Path) -> None:
    """A flood faster than inotify's queue holds: the kernel drops events and says so only
    once. The daemon rescans the inbox then, not at its next periodic rescan (here 10 min)."""
    if not os.access(MAX_QUEUED_EVENTS, os.W_OK):
        pytest.skip("shrinking the inotify queue needs root")
    home = make_home(tmp_path, rescan_interval_s=600.0)
    publish_rgb_model(home.models, "v1")
    limit = MAX_QUEUED_EVENTS.read_text()
    MAX_QUEUED_EVENTS.write_text("16\n")  # each inotify instance takes it when it is made
    try:
        daemon = Daemon(home).start()
    finally:
        MAX_QUEUED_EVENTS.write_text(limit)
    try:
        flood = tmp_path / "flood"
        flood.mkdir()
        photos = [jpeg_bytes(colour, n) for n in range(60) for colour in ("red", "green")]
        for n, data in enumerate(photos):
            (flood / f"f{n:03}.jpg").write_bytes(data)
        # Into a folder the daemon already watches, while it is stopped and cannot read:
        # the 16 places overflow for certain. (`cp -r` of a new folder raced the daemon's new
        # watch: on a busy machine the copy was done before it, and nothing overflowed.)
        (home.inbox / "flood").mkdir()
        time.sleep(1.0)
        os.kill(daemon.process.pid, signal.SIGSTOP)
        try:
            files = sorted(str(f) for f in flood.iterdir())
            subprocess.run(["cp", *files, str(home.inbox / "flood")], check=True)
        finally:
            os.kill(daemon.process.pid, signal.SIGCONT)
        wait_until(lambda: len(home.file_events()) == len(photos), 30, "every file of the flood")
    finally:
        assert daemon.stop() == 0
    assert '"event": "events_lost"' in daemon.log_text()
    check_invariants(home, photos)


# -- two processes, one library ----------------------------------------------------------------


def test_sort_beside_the_running_daemon_places_each_content_once(home: Home) -> None:
    """Item 5: the daemon and `sortbox sort` on the same library at the same time."""
    photos = [jpeg_bytes(c, seed) for seed in range(40) for c in ("red", "green")]
    backlog = home.root / "backlog"
    backlog.mkdir()
    for n, data in enumerate(photos):
        (backlog / f"b{n}.jpg").write_bytes(data)
    daemon = Daemon(home).start()
    try:
        sorter = subprocess.Popen(
            [*SORT, str(backlog), "--config", str(home.config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for n, data in enumerate(photos):  # the same contents, into the inbox
            (home.inbox / f"i{n}.jpg").write_bytes(data)
        assert sorter.wait(timeout=120) == 0, sorter.stderr.read()
        wait_until(lambda: settled(home, 2 * len(photos)), 60, "both sides decided")
    finally:
        assert daemon.stop() == 0
    check_invariants(home, photos)
    assert len(home.library_files()) == len(photos)


# -- writers we cannot see ---------------------------------------------------------------------


def test_polling_never_takes_a_file_still_being_written(tmp_path: Path) -> None:
    """Item 6: a writer that takes ~3 s, in polling mode (no open/close events)."""
    home = make_home(tmp_path, watch_mode="poll", poll_interval_s=0.3, quiet_period_s=0.2)
    publish_rgb_model(home.models, "v1")
    daemon = Daemon(home).start()
    data = real_photos(1, size=600)[0]
    try:
        with (home.inbox / "slow.jpg").open("wb") as out:
            chunk = len(data) // 12 + 1
            for start in range(0, len(data), chunk):
                out.write(data[start : start + chunk])
                out.flush()
                time.sleep(0.25)
        wait_until(lambda: "slow.jpg" in decisions_by_src(home), 20, "the slow file")
        time.sleep(1.0)
    finally:
        assert daemon.stop() == 0
    assert [e["event"] for e in decisions_by_src(home)["slow.jpg"]] in (["sorted"], ["review"])
    assert not (home.library / "rejected").exists()
    check_invariants(home, [data])


# -- full disks --------------------------------------------------------------------------------


@contextlib.contextmanager
def small_tmpfs(where: Path, size: str) -> Iterator[Path]:
    where.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill_up(path: Path, byte: bytes = b"\0") -> None:
    """Append to `path` until its (small) filesystem is full."""
    with contextlib.suppress(OSError), path.open("ab", buffering=0) as out:
        for _ in range(4096):  # at most 4 MiB: these filesystems are far smaller
            out.write(byte * 1024)
    assert os.statvfs(path.parent).f_bavail == 0, f"{path.parent} is not full"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_full_library_disk_pauses_then_resumes_by_itself(tmp_path: Path) -> None:
    """Item 7: no hot loop, one log line per state change, status says so, resumes alone."""
    home = make_home(tmp_path)
    publish_rgb_model(home.models, "v1")
    # 24 photos of 320 px (tests/data/clothing10) are about 470 kB: more than the disk holds
    with small_tmpfs(home.library, "360k"):
        daemon = Daemon(home).start()
        try:
            photos = real_photos(24, size=400)
            for n, data in enumerate(photos):
                (home.inbox / f"p{n}.jpg").write_bytes(data)
            daemon.wait_message(lambda m: "paused: library disk full" in m, 30)
            status = sortbox("status", config=home.config)
            assert "daemon:         paused: library disk full" in status.stdout, status.stdout
            before = cpu_seconds(daemon.process.pid)
            time.sleep(4)
            burned = cpu_seconds(daemon.process.pid) - before
            assert burned < 1.0, f"{burned:.2f} CPU seconds in 4 s while paused"
            assert daemon.process.poll() is None
            subprocess.run(["mount", "-o", "remount,size=50m", str(home.library)], check=True)
            wait_until(lambda: settled(home, len(photos)), 90, "every picture after resuming")
        finally:
            assert daemon.stop() == 0
        # One line per change of state: a retry while still full says nothing. A smaller
        # picture that still fits is a real resume, so paused/resumed may come more than once,
        # but always in turn, starting paused and ending resumed.
        changes = [
            json.loads(line)["event"]
            for line in daemon.log_text().splitlines()
            if '"event": "paused"' in line or '"event": "resumed"' in line
        ]
        assert changes[0] == "paused" and changes[-1] == "resumed", changes
        assert all(a != b for a, b in itertools.pairwise(changes)), changes
        assert len(changes) <= 6, changes
        check_invariants(home, photos)


def test_full_journal_disk_and_a_model_switch_do_not_kill_the_daemon(tmp_path: Path) -> None:
    """Item 7, second half."""
    home = make_home(tmp_path, journal="jdisk/journal.jsonl")
    publish_rgb_model(home.models, "v1")
    journal_disk = tmp_path / "jdisk"
    with small_tmpfs(journal_disk, "64k"):
        daemon = Daemon(home).start()
        try:
            filler = journal_disk / "filler"
            fill_up(filler)
            fill_up(journal_disk / "journal.jsonl", b"\n")  # its last page: blank lines
            publish_rgb_model(home.models, "v2")
            wait_until(lambda: "model_switched" in daemon.log_text(), 20, "the switch")
            (home.inbox / "during.jpg").write_bytes(jpeg_bytes("red", 7))
            daemon.wait_message(lambda m: "paused: journal disk full" in m, 30)
            assert daemon.process.poll() is None
            filler.unlink()
            wait_until(lambda: "during.jpg" in decisions_by_src(home), 60, "sorted after space")
        finally:
            assert daemon.stop() == 0
        models = [e["model"] for e in home.events("model")]
        assert models[-1] == "v2"
        check_invariants(home, [jpeg_bytes("red", 7)])


# -- a library on an exFAT disk: no hard links, no Unix names -----------------------------------

EXFAT_TOOLS = Path(tempfile.gettempdir()) / "sortbox-test-exfat"  # Debian's packages, unpacked
EXFAT_PACKAGES = ("exfat-fuse", "exfatprogs", "libfuse2")


def exfat_tools() -> tuple[dict[str, str], dict[str, str]]:
    """(paths of mkfs.exfat and mount.exfat-fuse, their environment): installed ones, or
    Debian's packages fetched with `apt-get download` and unpacked once; skip if neither."""
    found = {tool: shutil.which(tool) for tool in ("mkfs.exfat", "mount.exfat-fuse")}
    if all(found.values()):
        return found, dict(os.environ)  # type: ignore[return-value]
    unpacked = EXFAT_TOOLS / "root"
    if not (unpacked / "sbin" / "mount.exfat-fuse").exists():
        EXFAT_TOOLS.mkdir(exist_ok=True)
        try:
            fetched = subprocess.run(
                ["apt-get", "download", *EXFAT_PACKAGES],
                cwd=EXFAT_TOOLS, capture_output=True, text=True, timeout=120,
            )  # fmt: skip
        except (OSError, subprocess.TimeoutExpired) as exc:
            pytest.skip(f"exFAT tools not installed and apt-get could not fetch them: {exc}")
        if fetched.returncode != 0:
            pytest.skip(f"exFAT tools not installed; apt-get download: {fetched.stderr[-300:]}")
        for package in EXFAT_TOOLS.glob("*.deb"):
            subprocess.run(["dpkg", "-x", str(package), str(unpacked)], check=True)
    libraries = [
        str(p) for p in (*unpacked.glob("lib/*-linux-*"), *unpacked.glob("usr/lib/*-linux-*"))
    ]
    environment = {**os.environ, "LD_LIBRARY_PATH": ":".join(libraries)}
    tools = {
        "mkfs.exfat": str(unpacked / "usr/sbin/mkfs.exfat"),
        "mount.exfat-fuse": str(unpacked / "sbin/mount.exfat-fuse"),
    }
    return tools, environment


@contextlib.contextmanager
def exfat_disk(where: Path, size_mb: int = 64) -> Iterator[Path]:
    """A real exFAT filesystem at `where`, mounted through FUSE as a desktop mounts a USB disk:
    no hard links, and names with : ? * " < > | refused."""
    if os.geteuid() != 0 or not Path("/dev/fuse").exists() or not shutil.which("losetup"):
        pytest.skip("an exFAT disk needs root, /dev/fuse and losetup")
    tools, environment = exfat_tools()
    image = where.parent / f"{where.name}.exfat"
    with image.open("wb") as disk:
        disk.truncate(size_mb << 20)
    subprocess.run(
        [tools["mkfs.exfat"], str(image)], env=environment, check=True, capture_output=True
    )
    attached = subprocess.run(
        ["losetup", "-f", "--show", str(image)], capture_output=True, text=True
    )
    if attached.returncode != 0:
        pytest.skip(f"no loop device for the exFAT disk: {attached.stderr.strip()}")
    device = attached.stdout.strip()
    where.mkdir(parents=True, exist_ok=True)
    try:
        mounted = subprocess.run(
            [tools["mount.exfat-fuse"], device, str(where)],
            env=environment, capture_output=True, text=True,
        )  # fmt: skip
        if mounted.returncode != 0:
            pytest.skip(f"cannot mount exFAT through FUSE here: {mounted.stderr.strip()}")
        try:
            yield where
        finally:
            subprocess.run(["umount", str(where)], check=False)
    finally:
        subprocess.run(["losetup", "-d", device], check=False)


def test_a_library_on_an_exfat_disk_gets_every_picture_whole_even_killed_mid_copy(
    tmp_path: Path,
) -> None:
    """A family archive on a USB disk. exFAT has no hard links (a copy is renamed into place)
    and refuses : ? * " < > | in names, which cameras, phones and people do use: every
    picture is placed under a name the disk takes, and a daemon killed while copying leaves
    no part of a copy under a final name."""
    home = make_home(tmp_path)
    publish_rgb_model(home.models, "v1")
    with exfat_disk(home.library):
        awkward = ['IMG:0001.jpg', 'what?.jpg', 'a "quote".jpg', 'star*.jpg', 'pipe|.jpg',
                   '<tag>.jpg', 'back\\slash.jpg', 'CON.jpg', 'photo.jpg.']  # fmt: skip
        photos = real_photos(len(awkward) + 30, size=900)
        for name, data in zip(awkward, photos, strict=False):
            (home.inbox / name).write_bytes(data)
        rng = random.Random(7)
        for round_, first in enumerate(range(len(awkward), len(photos), 10)):
            daemon = Daemon(home).start()
            for n, data in enumerate(photos[first : first + 10]):
                (home.inbox / f"r{round_}-{n}.jpg").write_bytes(data)
            time.sleep(rng.uniform(0.1, 0.5))
            daemon.kill()
        daemon = Daemon(home).start()
        try:
            wait_until(lambda: settled(home, len(photos)), 90, "every picture placed")
        finally:
            assert daemon.stop() == 0
        placed = {e["src"]: e["dest"] for e in home.file_events()}
        check_invariants(home, photos)  # each whole, once, its content the hash in its name
        # a name the disk refuses (a sidecar named after a picture placed elsewhere before)
        # is passed over for the next one, not retried for ever
        sidecar = b"<x:xmpmeta/>"
        source = tmp_path / "IMG_1.xmp"
        source.write_bytes(sidecar)
        digest = sha256(sidecar)
        given = copy_into(
            source, home.library / "red", "IMG_1.xmp", digest, sidecar, preferred_name="IMG:1.xmp"
        )
        assert given.name == f"IMG_1.{digest[:12]}.xmp" and given.read_bytes() == sidecar
    refused = set('<>:"\\|?*')
    for name in awkward:
        placed_name = placed[name].split("/")[1]
        assert not refused & set(placed_name), placed_name
        assert not placed_name.upper().startswith("CON."), placed_name
    assert placed["photo.jpg."].endswith(".jpg"), placed["photo.jpg."]


def test_a_camera_card_as_the_inbox_in_delete_mode_is_emptied_and_undo_puts_it_back(
    tmp_path: Path,
) -> None:
    """The inbox on an exFAT card (polled: FUSE), on_success = "delete": each original is
    removed once its copy is durable, and `sortbox undo` puts them back on the card, which
    has no hard links to make that exclusive with."""
    home = make_home(tmp_path, on_success="delete", inbox="card")
    publish_rgb_model(home.models, "v1")
    photos = real_photos(3)
    with exfat_disk(tmp_path / "card") as card:
        (card / "DCIM").mkdir()
        for n, data in enumerate(photos):
            (card / "DCIM" / f"IMG_{n:04}.JPG").write_bytes(data)
        daemon = Daemon(home).start()
        try:
            wait_until(lambda: not list((card / "DCIM").iterdir()), 30, "the card emptied")
        finally:
            assert daemon.stop() == 0
        assert '"watch_mode": "poll"' in daemon.log_text()
        undone = sortbox("undo", "--since", "1h", config=home.config)
        assert undone.returncode == 0, undone.stderr
        back = sorted((card / "DCIM").iterdir())
        assert [p.read_bytes() for p in back] == photos
        assert home.library_files() == []


def test_models_on_a_disk_without_symbolic_links_are_refused_saying_where_to_keep_them(
    tmp_path: Path,
) -> None:
    """`current` is a symbolic link, which exFAT cannot hold: publishing there used to end in
    "Function not implemented"."""
    with exfat_disk(tmp_path / "usb") as usb, pytest.raises(ModelError) as refused:
        publish_rgb_model(usb / "models", "v1")
    assert "without symbolic links (FAT, exFAT)" in str(refused.value)
    assert "keep models_dir on a Linux filesystem" in str(refused.value)


# -- broken models, early signals, dead workers ------------------------------------------------


def test_a_malformed_current_model_is_refused_and_the_old_one_kept(home: Home) -> None:
    """Item 8: `current` a real folder; then a version whose manifest.json is a folder."""
    daemon = Daemon(home).start()
    try:
        current = home.models / "current"
        current.unlink()
        current.mkdir()
        (home.inbox / "a.jpg").write_bytes(jpeg_bytes("red", 1))
        wait_until(lambda: "a.jpg" in decisions_by_src(home), 20, "sorted with v1")
        current.rmdir()
        broken = home.models / "v9"
        (broken / "manifest.json").mkdir(parents=True)
        os.symlink("v9", current)
        wait_until(lambda: "model_refused" in daemon.log_text(), 20, "the refusal")
        (home.inbox / "b.jpg").write_bytes(jpeg_bytes("green", 2))
        wait_until(lambda: "b.jpg" in decisions_by_src(home), 20, "sorted with v1")
        assert daemon.process.poll() is None
    finally:
        assert daemon.stop() == 0
    assert {e["model"] for e in home.file_events()} == {"v1"}
    check_invariants(home, [jpeg_bytes("red", 1), jpeg_bytes("green", 2)])


def claims_sighup(pid: int) -> bool:
    """SIGHUP is ignored or caught (not the default action, which kills)."""
    masks = dict(line.split(":\t") for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    bit = 1 << (signal.SIGHUP - 1)
    return bool((int(masks["SigIgn"], 16) | int(masks["SigCgt"], 16)) & bit)


def test_sighup_during_start_up_does_not_kill_the_daemon(home: Home) -> None:
    """Item 9: reloads asked for from the very first moment."""
    daemon = Daemon(home)
    stop = threading.Event()

    sent_before_ready = [0]

    def keep_asking_for_reloads() -> None:
        # From the moment the process has claimed SIGHUP (the first thing `sortbox run`
        # does, before loading anything) until well after READY=1.
        while not stop.is_set():
            if daemon.process is not None and daemon.process.poll() is None:
                with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                    if claims_sighup(daemon.process.pid):
                        daemon.process.send_signal(signal.SIGHUP)
                        sent_before_ready[0] += not any("READY=1" in m for m in daemon.messages)
            time.sleep(0.01)

    sender = threading.Thread(target=keep_asking_for_reloads)
    sender.start()
    try:
        daemon.start()
        time.sleep(0.5)
    finally:
        stop.set()
        sender.join()
    assert sent_before_ready[0] > 0, "no SIGHUP arrived before READY=1"
    (home.inbox / "a.jpg").write_bytes(jpeg_bytes("red", 1))
    wait_until(lambda: "a.jpg" in decisions_by_src(home), 20, "sorted")
    assert daemon.stop() == 0


INJECTED = """
import sys
from sortbox.daemon.running import decoders as service
real = service.read_group
def exploding(arrival, *args):
    if arrival.path.name == "boom.jpg":
        raise SystemError("a decoder bug nobody caught")
    return real(arrival, *args)
service.read_group = exploding
from sortbox.daemon.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_worker_thread_that_dies_takes_the_service_down_with_exit_1(home: Home) -> None:
    """No zombie that still pings the watchdog: systemd restarts a service that exits 1."""
    (home.inbox / "boom.jpg").write_bytes(jpeg_bytes("red", 1))
    process = subprocess.run(
        [sys.executable, "-c", INJECTED, "run", "--config", str(home.config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert process.returncode == 1
    assert "worker_died" in process.stderr and "a decoder bug" in process.stderr
    assert (home.inbox / "boom.jpg").exists()  # nothing lost: it waits for the fixed daemon


# -- kill -9 at random points, daemon and sort -------------------------------------------------


def test_kill_9_at_random_points_never_loses_or_doubles(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    rounds = 200 if request.config.getoption("--long") else 8
    home = make_home(tmp_path)
    publish_rgb_model(home.models, "v1")
    rng = random.Random(4)
    good: list[bytes] = []
    backlogs: list[Path] = []
    colours = ("red", "green", "blue")
    for round_ in range(rounds):
        batch = [jpeg_bytes(colours[(round_ + n) % 3], 1000 * round_ + n) for n in range(6)]
        good += batch
        if round_ % 3 == 2:  # a `sortbox sort` of a folder, killed mid-way
            backlog = home.root / f"backlog{round_}"
            backlog.mkdir()
            for n, data in enumerate(batch + good[:2]):  # with two repeats
                (backlog / f"{n}.jpg").write_bytes(data)
            backlogs.append(backlog)
            process = subprocess.Popen(
                [*SORT, str(backlog), "--config", str(home.config)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(rng.uniform(0.3, 1.5))
            process.kill()
            process.wait()
        else:
            daemon = Daemon(home).start()
            for n, data in enumerate(batch):
                (home.inbox / f"r{round_}-{n}.jpg").write_bytes(data)
            time.sleep(rng.uniform(0.0, 0.6))
            daemon.kill()
    # everything settles after a clean start and a clean re-run of each backlog
    for backlog in backlogs:
        finished = sortbox("sort", str(backlog), config=home.config)
        assert finished.returncode == 0, finished.stderr
    daemon = Daemon(home).start()
    inbox_files = len(list(home.inbox.iterdir()))
    try:
        wait_until(
            lambda: (
                len({e["src"] for e in home.file_events() if e["root"] == str(home.inbox)})
                >= inbox_files
            ),
            120,
            "the inbox settled",
        )
    finally:
        assert daemon.stop() == 0
    check_invariants(home, good)
