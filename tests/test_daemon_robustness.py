"""Bad input, crashes, model swaps, undo, dry runs, lifecycle: the daemon never loses a file."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import (
    Daemon,
    Home,
    encode,
    jpeg_bytes,
    make_home,
    picture,
    publish_rgb_model,
    sortbox,
    wait_until,
    write_picture,
)
from PIL import Image


def by_src(home: Home) -> dict[str, dict]:
    return {e["src"]: e for e in home.file_events()}


def test_every_kind_of_bad_input_is_rejected_with_a_reason(tmp_path: Path) -> None:
    home = make_home(tmp_path, max_pixels=200_000)
    publish_rgb_model(home.models, "v1")
    daemon = Daemon(home).start()
    try:
        good = jpeg_bytes("red", 1)
        inbox = home.inbox
        (inbox / "empty.jpg").write_bytes(b"")
        (inbox / "truncated.jpg").write_bytes(good[: len(good) // 2])
        (inbox / "notes.jpg").write_text("this is a text file, not a picture\n")
        (inbox / "drawing.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg"/>')
        Image.new("RGB", (1000, 1000), "red").save(inbox / "huge.png")
        os.mkfifo(inbox / "pipe.jpg")
        os.symlink("/etc/hostname", inbox / "escape.jpg")
        (inbox / "after.jpg").write_bytes(good)

        wait_until(lambda: len(home.file_events()) == 8, 20, "8 journal lines")
        events = by_src(home)
        expected_reasons = {
            "empty.jpg": "empty file",
            "truncated.jpg": "cannot decode",
            "notes.jpg": "a text file, not a picture",
            "drawing.svg": "a vector drawing (.svg)",
            "huge.png": "too many pixels",
            "pipe.jpg": "not a regular file",
            "escape.jpg": "symbolic link",
        }
        for src, reason in expected_reasons.items():
            assert events[src]["event"] == "rejected", events[src]
            assert reason in events[src]["reason"], events[src]
        # what could be read is kept in library/rejected under the usual naming scheme
        for src in ("empty.jpg", "truncated.jpg", "notes.jpg", "drawing.svg", "huge.png"):
            dest = events[src]["dest"]
            assert dest.startswith("rejected/")
            assert (home.library / dest).read_bytes() == (inbox / src).read_bytes()
        assert events["escape.jpg"]["dest"] is None  # never followed out of the inbox
        assert events["pipe.jpg"]["dest"] is None
        assert events["after.jpg"]["event"] == "sorted"  # and the daemon carried on
        assert daemon.process.poll() is None
        assert "rejected" in daemon.log_text()
    finally:
        daemon.stop()


def test_a_picture_written_in_pieces_closed_between_them_is_decided_once(tmp_path: Path) -> None:
    """A program that closes the file between its pieces (`cat part >> x.jpg`, a resumed
    upload) makes each piece look complete: the half pictures wait for the rest instead of
    being rejected, and the whole picture is decided once."""
    home = make_home(tmp_path, unfinished_wait_s=600.0)  # a hold ends only by a change
    publish_rgb_model(home.models, "v1")
    whole = encode(picture("red", 3, size=(640, 480)), "JPEG", quality=95)
    daemon = Daemon(home).start()
    try:
        target, step = home.inbox / "pieces.jpg", -(-len(whole) // 4)
        for n, start in enumerate(range(0, len(whole), step), 1):
            with open(target, "ab") as piece:
                piece.write(whole[start : start + step])
            if start + step < len(whole):  # not yet whole: wait until this very part was read
                wait_until(
                    lambda n=n: daemon.log_text().count("waiting_for_the_rest") == n,
                    20,
                    f"part {n} read and held",
                )
        wait_until(lambda: "pieces.jpg" in by_src(home), 20, "the picture decided")
        time.sleep(1.0)  # a second decision would show by now
        decisions = [e for e in home.file_events() if e["src"] == "pieces.jpg"]
        assert [e["event"] for e in decisions] == ["sorted"], decisions
        assert (home.library / decisions[0]["dest"]).read_bytes() == whole
        assert not (home.library / "rejected").exists()  # no half picture kept as a reject
        assert "waiting_for_the_rest" in daemon.log_text()
    finally:
        daemon.stop()


def test_a_broken_picture_renamed_into_place_is_rejected_without_waiting(tmp_path: Path) -> None:
    """Renamed into place, a file was finished before it appeared: no rest is coming."""
    home = make_home(tmp_path, unfinished_wait_s=600.0)
    publish_rgb_model(home.models, "v1")
    good = jpeg_bytes("red", 1)
    daemon = Daemon(home).start()
    try:
        outside = tmp_path / "cut-short.jpg"
        outside.write_bytes(good[: len(good) // 2])
        os.rename(outside, home.inbox / "cut-short.jpg")
        wait_until(lambda: "cut-short.jpg" in by_src(home), 20, "the broken picture rejected")
        assert by_src(home)["cut-short.jpg"]["event"] == "rejected"
        assert "waiting_for_the_rest" not in daemon.log_text()
    finally:
        daemon.stop()


def test_unreadable_file_is_rejected_and_the_daemon_carries_on() -> None:
    """Root reads anything, so as root the daemon runs as `nobody` for this test."""
    as_user: list[str] = []
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root and setpriv is missing: cannot make a file unreadable")
        as_user = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    root = Path(tempfile.mkdtemp(prefix="sortbox-unreadable-"))
    try:
        home = make_home(root)
        publish_rgb_model(home.models, "v1")
        for folder in (root, home.inbox, home.library, home.models):
            folder.chmod(0o777)
        daemon = Daemon(home, as_user=as_user).start()
        try:
            locked = write_picture(home.inbox / "locked.jpg", "red", 2)
            locked.chmod(0)
            write_picture(home.inbox / "fine.jpg", "blue", 3)
            wait_until(lambda: len(home.file_events()) == 2, 20, "two journal lines")
        finally:
            daemon.stop()
        events = by_src(home)
        assert events["locked.jpg"]["event"] == "rejected"
        assert "permission denied" in events["locked.jpg"]["reason"]
        assert events["locked.jpg"]["dest"] is None
        assert events["fine.jpg"]["dest"].startswith("blue/")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_kill_9_during_a_burst_then_restart_finishes_the_work(home: Home) -> None:
    count = 60
    colours = ["red", "green", "blue"]
    # a few identical contents under different names, to check no duplicate copies appear
    contents = {f"burst-{n:02}.jpg": jpeg_bytes(colours[n % 3], n % 50) for n in range(count)}
    daemon = Daemon(home).start()
    writer = threading.Thread(
        target=lambda: [(home.inbox / k).write_bytes(v) for k, v in contents.items()]
    )
    writer.start()
    wait_until(lambda: len(home.file_events()) >= 5, 20, "the burst to be under way")
    daemon.kill()
    writer.join()
    handled_before = len(home.file_events())
    assert handled_before < count, "the kill came too late to test anything"

    restarted = Daemon(home).start()
    try:
        wait_until(lambda: len({e["src"] for e in home.file_events()}) == count, 30, "all inputs")
        time.sleep(1.0)  # let a rescan or late events show any double handling
    finally:
        restarted.stop()

    events = home.file_events()
    srcs = [e["src"] for e in events]
    assert sorted(srcs) == sorted(contents), "every input exactly one journal line"
    unique_contents = {hashlib.sha256(v).hexdigest() for v in contents.values()}
    library = home.library_files()
    assert len(library) == len(unique_contents), "one copy per content, no duplicates"
    assert not [p for p in home.library.rglob(".sortbox-*")], "no temporary files left"
    journaled = {e["dest"] for e in events if e["event"] in ("sorted", "review")}
    assert {p.relative_to(home.library).as_posix() for p in library} == journaled
    for path in library:
        assert hashlib.sha256(path.read_bytes()).hexdigest() in unique_contents


def test_sigterm_stops_cleanly_within_seconds(home: Home) -> None:
    daemon = Daemon(home).start()
    for n in range(10):
        write_picture(home.inbox / f"f{n}.jpg", "green", n)
    time.sleep(0.3)
    started = time.monotonic()
    code = daemon.stop(signal.SIGTERM)
    assert code == 0
    assert time.monotonic() - started < 6
    assert any("STOPPING=1" in m for m in daemon.messages)
    # whatever was not sorted is still in the inbox and is sorted at the next start
    again = Daemon(home).start()
    try:
        wait_until(lambda: len(home.file_events()) == 10, 20, "all ten sorted")
    finally:
        again.stop()


def test_model_swap_while_running_and_a_bad_model_is_refused(home: Home, daemon: Daemon) -> None:
    daemon.start()
    write_picture(home.inbox / "before.jpg", "red", 1)
    wait_until(lambda: "before.jpg" in by_src(home), 20)
    assert by_src(home)["before.jpg"]["dest"].startswith("red/")

    publish_rgb_model(home.models, "v2", classes=["rouge", "vert", "bleu"])
    wait_until(lambda: any(e.get("model") == "v2" for e in home.events("model")), 20, "switch")
    write_picture(home.inbox / "after.jpg", "red", 2)
    wait_until(lambda: "after.jpg" in by_src(home), 20)
    assert by_src(home)["after.jpg"]["dest"].startswith("rouge/")
    assert by_src(home)["after.jpg"]["model"] == "v2"

    # a published model whose file does not match its manifest is refused; v2 stays
    publish_rgb_model(home.models, "v3", classes=["a", "b", "c"])
    with (home.models / "v3" / "model.onnx").open("ab") as fh:
        fh.write(b"tampered")
    time.sleep(2.0)
    write_picture(home.inbox / "later.jpg", "blue", 3)
    wait_until(lambda: "later.jpg" in by_src(home), 20)
    assert by_src(home)["later.jpg"]["dest"].startswith("bleu/")
    assert "checksum mismatch" in daemon.log_text()


def test_undo_removes_copies_but_never_a_file_the_user_moved(home: Home) -> None:
    for n, colour in enumerate(["red", "green", "blue"]):
        write_picture(home.inbox / f"u{n}.jpg", colour, n)
    assert sortbox("sort", str(home.inbox), config=home.config).returncode == 0
    placed = by_src(home)
    moved = home.library / placed["u0.jpg"]["dest"]
    moved.rename(home.library / "blue" / moved.name)  # the user re-files u0

    result = sortbox("undo", "--last", "3", config=home.config)
    assert result.returncode == 1, result.stdout + result.stderr  # one could not be undone
    assert "left alone" in result.stdout
    assert not (home.library / placed["u1.jpg"]["dest"]).exists()
    assert not (home.library / placed["u2.jpg"]["dest"]).exists()
    assert (home.library / "blue" / moved.name).exists()
    assert {e["src"] for e in home.events("undone")} == {"u1.jpg", "u2.jpg"}
    assert all((home.inbox / f"u{n}.jpg").exists() for n in range(3))


def test_undo_in_delete_mode_restores_the_original(tmp_path: Path) -> None:
    home = make_home(tmp_path, on_success="delete")
    publish_rgb_model(home.models, "v1")
    data = jpeg_bytes("green", 7)
    (home.inbox / "keepsake.jpg").write_bytes(data)
    daemon = Daemon(home).start()
    try:
        wait_until(lambda: not (home.inbox / "keepsake.jpg").exists(), 20, "original removed")
    finally:
        daemon.stop()
    event = by_src(home)["keepsake.jpg"]
    assert event["original_removed"] and (home.library / event["dest"]).read_bytes() == data

    result = sortbox("undo", "--since", "1h", config=home.config)
    assert result.returncode == 0, result.stderr
    assert (home.inbox / "keepsake.jpg").read_bytes() == data
    assert not (home.library / event["dest"]).exists()
    assert home.events("undone")[0]["restored"] is True

    # the daemon does not sort the restored file again
    daemon = Daemon(home).start()
    try:
        time.sleep(1.5)
    finally:
        daemon.stop()
    assert (home.inbox / "keepsake.jpg").exists()
    assert len(home.file_events()) == 1


def test_delete_mode_with_an_inbox_it_may_not_write_keeps_originals_and_carries_on() -> None:
    """A shared drop folder the daemon may read but not write (or a read-only mount), with
    on_success = "delete": each picture is sorted once, its original stays, the log says why
    once a run, and the daemon lives on (it used to lose its intake thread and exit 1)."""
    as_user: list[str] = []
    if os.geteuid() == 0:  # root writes anywhere: the daemon runs as `nobody`
        if shutil.which("setpriv") is None:
            pytest.skip("running as root and setpriv is missing: cannot deny the inbox")
        as_user = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    root = Path(tempfile.mkdtemp(prefix="sortbox-readonly-inbox-"))
    try:
        home = make_home(root, on_success="delete")
        publish_rgb_model(home.models, "v1")
        root.chmod(0o777)
        home.models.chmod(0o777)
        home.library.chmod(0o777)  # made by make_home, as `sortbox init` makes it
        for n, colour in enumerate(("red", "green", "blue")):
            write_picture(home.inbox / f"scan{n}.jpg", colour, n)
        home.inbox.chmod(0o555)
        for run in range(2):  # the second run finds them done in its first scan
            daemon = Daemon(home, as_user=as_user).start()
            try:
                wait_until(lambda: len(home.file_events()) == 3, 20, "three journal lines")
                wait_until(
                    lambda d=daemon, n=run: (
                        d.log_text().count("original_not_removed") == 3 * (n + 1)
                    ),
                    10,
                    "a warning for each original kept",
                )
                time.sleep(1)  # a rescan or a late event would warn again, or take a file
                assert daemon.process.poll() is None, daemon.log_text()[-2000:]
            finally:
                assert daemon.stop() == 0
            log = daemon.log_text()
            assert log.count("original_not_removed") == 3 * (run + 1)  # the log is one file
            assert "worker_died" not in log and "placement_failed" not in log, log[-2000:]
        assert sorted(p.name for p in home.inbox.iterdir()) == [
            "scan0.jpg",
            "scan1.jpg",
            "scan2.jpg",
        ]
        assert [e["event"] for e in home.file_events()] == ["sorted"] * 3
        assert len(home.library_files()) == 3
        doctor_command = [sys.executable, "-m", "sortbox.daemon.cli", "doctor"]
        doctor = subprocess.run(
            [*as_user, *doctor_command, "--config", str(home.config)],
            capture_output=True, text=True, cwd=root,
        )  # fmt: skip
        assert 'read-only for this user, so on_success = "delete" keeps' in doctor.stdout
    finally:
        home.inbox.chmod(0o755)
        shutil.rmtree(root, ignore_errors=True)


def test_a_journal_rotated_or_deleted_while_running_goes_on_at_its_path(
    home: Home, daemon: Daemon
) -> None:
    """logrotate, or a tidy-up: the daemon used to go on appending to the file it had open,
    renamed or deleted, so its decisions were out of sight (or gone) until a restart."""
    daemon.start()
    (home.inbox / "first.jpg").write_bytes(jpeg_bytes("red", 1))
    wait_until(lambda: "first.jpg" in by_src(home), 20, "the first decision")
    home.journal.rename(home.journal.with_name("journal.jsonl.1"))
    (home.inbox / "second.jpg").write_bytes(jpeg_bytes("green", 2))
    wait_until(lambda: home.journal.exists() and "second.jpg" in by_src(home), 20, "rotated")
    home.journal.unlink()
    (home.inbox / "third.jpg").write_bytes(jpeg_bytes("blue", 3))
    wait_until(lambda: home.journal.exists() and "third.jpg" in by_src(home), 20, "deleted")
    assert [e["src"] for e in home.file_events()] == ["third.jpg"]
    assert daemon.log_text().count("journal_replaced") == 2
    undone = sortbox("undo", config=home.config)  # the new file is the one undo reads
    assert undone.returncode == 0, undone.stderr
    assert not (home.library / by_src(home)["third.jpg"]["dest"]).exists()


def test_an_inbox_that_is_a_link_its_admin_made_is_watched_where_it_leads(
    tmp_path: Path,
) -> None:
    """`inbox -> /mnt/scans`: inotify does not look through a link, so pictures arriving after
    start-up used to wait for the 5-minute rescan."""
    scans = tmp_path / "scans"
    scans.mkdir()
    home = make_home(tmp_path, inbox="inbox-link")
    (tmp_path / "inbox-link").symlink_to(scans)
    publish_rgb_model(home.models, "v1")
    daemon = Daemon(home).start()
    try:
        (scans / "late.jpg").write_bytes(jpeg_bytes("red", 1))
        (scans / "deeper").mkdir()
        (scans / "deeper" / "later.jpg").write_bytes(jpeg_bytes("blue", 2))
        wait_until(lambda: len(home.file_events()) == 2, 10, "both sorted by their events")
    finally:
        assert daemon.stop() == 0
    assert {e["src"]: e["dest"].split("/")[0] for e in home.file_events()} == {
        "late.jpg": "red",
        "deeper/later.jpg": "blue",
    }


def test_sort_follows_the_links_it_is_given_but_never_those_inside(home: Home) -> None:
    """`sortbox sort ~/Pictures` where ~/Pictures is a link: named by the user, so followed
    (as `find -H` does). A link inside a folder is still never followed, and a link into the
    library is refused like the library itself."""
    photos = home.root / "elsewhere"
    photos.mkdir()
    (photos / "a.jpg").write_bytes(jpeg_bytes("red", 1))
    (photos / "inside-link.jpg").symlink_to(photos / "a.jpg")
    (home.root / "elsewhere-b.jpg").write_bytes(jpeg_bytes("blue", 2))
    (home.root / "pictures").symlink_to(photos)
    (home.root / "one.jpg").symlink_to(home.root / "elsewhere-b.jpg")
    result = sortbox("sort", "pictures", "one.jpg", config=home.config)
    assert result.returncode == 0, result.stderr
    decided = {e["src"]: (e["event"], e["reason"]) for e in home.file_events()}
    assert decided["a.jpg"][0] == "sorted" and decided["elsewhere-b.jpg"][0] == "sorted"
    assert decided["inside-link.jpg"] == (
        "rejected",
        "a symbolic link; sortbox never follows a link inside the folders it sorts",
    )
    home.library.mkdir(exist_ok=True)
    (home.root / "library-link").symlink_to(home.library / "red")
    refused = sortbox("sort", "library-link", config=home.config)
    assert refused.returncode == 2 and "inside the library" in refused.stderr


def test_a_second_daemon_on_the_same_library_refuses_to_start(home: Home) -> None:
    """`sortbox run` in a terminal beside the service: it used to run too, decoding every
    picture again and overwriting the state `sortbox status` shows. kill -9 frees the place."""
    first = Daemon(home).start()
    try:
        second = sortbox("run", config=home.config, timeout=60)
        assert second.returncode == 1
        assert f"another sortbox daemon (pid {first.process.pid}) is already sorting" in (
            second.stderr
        )
        (home.inbox / "still.jpg").write_bytes(jpeg_bytes("red", 1))
        wait_until(lambda: "still.jpg" in by_src(home), 20, "the first daemon sorting on")
    finally:
        first.kill()
    after = Daemon(home).start()
    assert after.stop() == 0


def test_a_file_beyond_max_file_mb_is_neither_read_nor_copied_and_stays(tmp_path: Path) -> None:
    """`truncate -s 1T huge.jpg` in the inbox: a terabyte to read, hash and copy into
    rejected/ (until the library's disk was full). Now it is rejected at once, saying why,
    and stays in the inbox, even in delete mode; the daemon goes on."""
    home = make_home(tmp_path, on_success="delete", max_file_mb=1.0)
    publish_rgb_model(home.models, "v1")
    daemon = Daemon(home).start()
    try:
        with (home.inbox / "huge.jpg").open("wb") as sparse:
            sparse.truncate(1 << 40)  # no block of it on the disk
        wait_until(lambda: "huge.jpg" in by_src(home), 10, "the huge file rejected")
        (home.inbox / "after.jpg").write_bytes(jpeg_bytes("blue", 3))
        wait_until(lambda: "after.jpg" in by_src(home), 10, "the next picture sorted")
    finally:
        assert daemon.stop() == 0
    huge = by_src(home)["huge.jpg"]
    assert huge["event"] == "rejected" and huge["dest"] is None
    assert huge["reason"].startswith(f"too large: {1 << 40} bytes, the limit is 1048576")
    assert "left in the inbox, not copied" in huge["reason"]
    assert (home.inbox / "huge.jpg").stat().st_size == 1 << 40
    assert not (home.library / "rejected").exists()


def test_sort_dry_run_touches_nothing_then_sort_does_it(home: Home, tmp_path: Path) -> None:
    folder = tmp_path / "old photos"
    write_picture(folder / "a.jpg", "red", 1)
    write_picture(folder / "deeper" / "b.jpg", "blue", 2)
    (folder / "deeper" / "broken.jpg").write_bytes(b"\xff\xd8 nope")

    dry = sortbox("sort", str(folder), "--dry-run", config=home.config)
    assert dry.returncode == 0, dry.stderr
    assert "would be sorted" in dry.stdout and "would be rejected" in dry.stdout
    assert home.library_files() == [] and not home.journal.exists()

    real = sortbox("sort", str(folder), config=home.config)
    assert real.returncode == 0, real.stderr
    events = by_src(home)
    assert events["a.jpg"]["dest"].startswith("red/")
    assert events["deeper/b.jpg"]["dest"].startswith("blue/")
    assert events["deeper/broken.jpg"]["event"] == "rejected"
    assert (folder / "a.jpg").exists()
    # already done: a second run does nothing
    again = sortbox("sort", str(folder), config=home.config)
    assert "0 files" in again.stderr


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            'inbox = "i"\nlibrary = "l"\njournal = "j"\nmodels_dir = "m"\ncolour = 3\n',
            "colour: unknown key",
        ),
        (
            'inbox = "i"\nlibrary = "l"\njournal = "j"\nmodels_dir = "m"\nbatch_size = 0\n',
            "batch_size",
        ),
        ('inbox = "i"\nlibrary = "l"\njournal = "j"\nmodels_dir = 3\n', "models_dir: must be"),
        ('inbox = "i"\nlibrary = "i/lib"\njournal = "j"\nmodels_dir = "m"\n', "must not contain"),
        ("inbox = \n", "not valid TOML"),
    ],
)
def test_config_errors_exit_2_naming_the_key(tmp_path: Path, config: str, message: str) -> None:
    path = tmp_path / "config.toml"
    path.write_text(config)
    result = sortbox("run", config=path)
    assert result.returncode == 2
    assert message in result.stderr


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    home = make_home(tmp_path)
    result = sortbox("run", config=home.config, env={"SORTBOX_BATCH_SIZE": "-1"})
    assert result.returncode == 2 and "environment variable SORTBOX_BATCH_SIZE=-1" in result.stderr


def test_unusable_model_is_refused_with_a_clear_message(home: Home) -> None:
    (home.models / "v1" / "manifest.json").write_text('{"version": "v1"}')
    result = sortbox("run", config=home.config)
    assert result.returncode == 1
    assert "malformed manifest" in result.stderr


def test_grey_pictures_go_to_review_with_their_best_guess(home: Home) -> None:
    pixels = np.full((40, 40, 3), 127, np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    (home.inbox / "grey.png").write_bytes(buffer.getvalue())
    assert sortbox("sort", str(home.inbox), config=home.config).returncode == 0
    event = by_src(home)["grey.png"]
    assert event["event"] == "review" and event["dest"].startswith("needs_review/")
    assert event["label"] in ("red", "green", "blue") and len(event["top3"]) == 3


NO_TORCH = """
import sys
class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, NoTorch())
from sortbox.daemon.cli import main
sys.exit(main(sys.argv[1:]))
"""


def without_torch(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", NO_TORCH, *args], capture_output=True, text=True, timeout=60
    )


def test_the_daemon_needs_no_torch_and_the_trainer_says_how_to_install_it(home: Home) -> None:
    write_picture(home.inbox / "a.jpg", "red", 1)
    sorted_without = without_torch("sort", str(home.inbox), "--config", str(home.config))
    assert sorted_without.returncode == 0, sorted_without.stderr
    assert by_src(home)["a.jpg"]["dest"].startswith("red/")
    for command in ("init", "train"):
        result = without_torch(command, "--config", str(home.config))
        assert result.returncode == 1
        assert "pip install -e '.[train]'" in result.stderr
