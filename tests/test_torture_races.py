"""Torture, issue 34: races under a busy queue, and the record everything else trusts.

The real daemon runs as a subprocess. Where a race must be certain rather than likely, its only
decoder is held at a gate (a `sitecustomize` the test puts on the daemon's PYTHONPATH) while
the test changes the inbox: the change then always lands between admission and read.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from helpers import Daemon, Home, jpeg_bytes, make_home, publish_rgb_model, sortbox, wait_until
from sortbox.daemon.sorting.copies import LIBRARY_NAME
from sortbox.daemon.sorting.manifest import point_current_to
from test_torture import check_invariants, decisions_by_src

GATE = textwrap.dedent(
    """
    # Loaded by Python at start-up (sitecustomize): holds the daemon's decoder on gate.jpg
    # until the test opens the gate, and notes every file admitted to the queue.
    import os, time
    from pathlib import Path
    from sortbox.daemon.running import intakes
    from sortbox.daemon.running import decoders as service

    gate = Path(os.environ["GATE_DIR"])
    real_read, real_admit = service.read_group, intakes._Admission.admit

    def read_group(arrival, *args):
        if arrival.path.name == "gate.jpg":
            (gate / "reached").touch()
            while not (gate / "open").exists():
                time.sleep(0.01)
        return real_read(arrival, *args)

    def admit(self, arrival):
        real_admit(self, arrival)
        with open(gate / "admitted", "a") as admitted:
            admitted.write(arrival.relative + "\\n")

    service.read_group = read_group
    intakes._Admission.admit = admit
    """
)


def gated_daemon(home: Home) -> tuple[Daemon, Path]:
    gate = home.root / "gate"
    gate.mkdir()
    (gate / "sitecustomize.py").write_text(GATE)
    path = os.pathsep.join([str(gate), os.environ.get("PYTHONPATH", "")])
    return Daemon(home, extra_env={"GATE_DIR": str(gate), "PYTHONPATH": path}), gate


def admitted(gate: Path) -> set[str]:
    file = gate / "admitted"
    return set(file.read_text().split("\n")) if file.exists() else set()


def sha256(data: bytes | Path) -> str:
    return hashlib.sha256(data.read_bytes() if isinstance(data, Path) else data).hexdigest()


def test_folders_swapped_for_links_and_files_rewritten_after_admission_are_never_read(
    tmp_path: Path,
) -> None:
    """A: each `swapN/` is renamed out of the inbox and replaced by a link to a folder outside
    (a photo and a key there) after `swapN/x.jpg` was admitted, before it is read. B: each
    `editN.jpg` is rewritten in place after admission: truncated, half written, held open,
    finished later. Nothing from outside is read or journaled; no part of a half-written
    file reaches the library; every good picture is placed once, in its final form."""
    (tmp_path / "home").mkdir()
    home = make_home(tmp_path / "home", decode_workers=1, queue_size=256)
    home.library.mkdir(exist_ok=True)
    publish_rgb_model(home.models, "v1")
    daemon, gate = gated_daemon(home)
    daemon.start()
    try:
        outside = tmp_path / "outside"
        secrets = {
            "photo": jpeg_bytes("red", 900),  # a picture: read, it would be sorted
            "key": b"-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n",
        }
        gate_photo = jpeg_bytes("blue", 1)
        (home.inbox / "gate.jpg").write_bytes(gate_photo)
        wait_until(lambda: (gate / "reached").exists(), 20, "the decoder held at the gate")

        burst = [jpeg_bytes(("red", "green", "blue")[n % 3], 100 + n) for n in range(24)]
        for n, data in enumerate(burst):
            (home.inbox / f"burst{n}.jpg").write_bytes(data)
        swapped = [jpeg_bytes("green", 200 + n) for n in range(4)]
        for n, data in enumerate(swapped):
            (home.inbox / f"swap{n}").mkdir()
            (home.inbox / f"swap{n}" / "x.jpg").write_bytes(data)
        edits = {n: (jpeg_bytes("red", 300 + n), jpeg_bytes("blue", 400 + n)) for n in range(4)}
        for n, (before, _) in edits.items():
            (home.inbox / f"edit{n}.jpg").write_bytes(before)
        expected = {f"swap{n}/x.jpg" for n in range(4)} | {f"edit{n}.jpg" for n in range(4)}
        wait_until(lambda: expected <= admitted(gate), 20, "every racer admitted")

        for n in range(4):  # A: the folder goes, a link to outside takes its place
            kind = "photo" if n % 2 else "key"
            (outside / f"s{n}").mkdir(parents=True)
            (outside / f"s{n}" / "x.jpg").write_bytes(secrets[kind])
            os.rename(home.inbox / f"swap{n}", tmp_path / f"moved-away-{n}")
            os.symlink(outside / f"s{n}", home.inbox / f"swap{n}")
        writers = {}
        for n, (_, after) in edits.items():  # B: an editor rewrites it in place, held open
            writer = open(home.inbox / f"edit{n}.jpg", "wb")  # noqa: SIM115 - held open
            writer.write(after[: len(after) // 2])
            writer.flush()
            writers[n] = writer
        (gate / "open").touch()
        # every queued file is read while the editors pause: 28 pictures, one decoder
        wait_until(lambda: len(home.file_events()) >= 1 + len(burst), 60, "the burst placed")
        time.sleep(1.0)
        for n, writer in writers.items():
            writer.write(edits[n][1][len(edits[n][1]) // 2 :])
            writer.close()
        finals = [after for _, after in edits.values()]
        placed = {e["sha256"] for e in home.file_events()}
        wait_until(
            lambda: {sha256(d) for d in finals} <= {e["sha256"] for e in home.file_events()},
            30,
            "the edited pictures placed in their final form",
        )
        time.sleep(1.0)  # the swapped paths are looked at again, then dropped
        assert daemon.process.poll() is None
    finally:
        (gate / "open").touch()
        assert daemon.stop() == 0

    events = home.events()
    outside_inodes = {os.stat(p).st_ino for p in outside.rglob("x.jpg")}
    outside_contents = {sha256(data) for data in secrets.values()}
    for event in events:
        assert event.get("sha256") not in outside_contents, f"read from outside: {event}"
        assert event.get("inode") not in outside_inodes, f"journaled from outside: {event}"
        src = event.get("src", "")
        assert not (src.startswith("swap") and "/" in src), f"read through a link: {event}"
        if src.startswith("swap"):  # the link itself, met in the inbox: refused as a link
            assert event["event"] == "rejected" and "symbolic link" in event["reason"], event
            assert event["dest"] is None
    assert outside_contents.isdisjoint(sha256(p) for p in home.library_files())
    halves = {sha256(after[: len(after) // 2]) for _, after in edits.values()}
    assert halves.isdisjoint(sha256(p) for p in home.library_files()), "half a file copied"
    rejected = [e for e in events if e["event"] == "rejected" and "link" not in e["reason"]]
    assert not rejected, "nothing else here is bad input"
    assert placed  # the burst really was under way while the edits paused
    check_invariants(home, [gate_photo, *burst, *finals])
    for n in range(4):  # moved away by their owner: untouched, not read
        assert (tmp_path / f"moved-away-{n}" / "x.jpg").read_bytes() == swapped[n]


def library_explained(home: Home) -> dict[str, dict]:
    """Every library file has a journal line (a decision, or `recovered`), with the content
    its name promises; returns the lines by library path."""
    undone = {(e["dest"], e["sha256"]) for e in home.events("undone")}
    lines = {
        e["dest"]: e
        for e in home.events()
        if e["event"] in ("sorted", "review", "rejected", "recovered") and e.get("dest")
        if (e["dest"], e["sha256"]) not in undone
    }
    for file in home.library_files():
        relative = file.relative_to(home.library).as_posix()
        assert relative in lines, f"{relative} is in the library but not in the journal"
        assert lines[relative]["sha256"] == sha256(file)
        match = LIBRARY_NAME.match(file.name)
        assert match and sha256(file).startswith(match["hash"])
    return lines


@pytest.mark.parametrize("damage", ["deleted", "truncated", "deleted, then kill -9"])
def test_a_journal_lost_while_running_is_recorded_again_and_never_turns_copies_into_labels(
    tmp_path: Path, damage: str
) -> None:
    home = make_home(tmp_path, on_success="delete")
    home.library.mkdir(exist_ok=True)
    publish_rgb_model(home.models, "v1")
    photos = [jpeg_bytes(colour, n) for n in range(4) for colour in ("red", "green", "blue")]
    daemon = Daemon(home).start()
    try:
        for n, data in enumerate(photos[:10]):
            (home.inbox / f"before{n}.jpg").write_bytes(data)
        wait_until(lambda: len(home.file_events()) >= 10, 30, "ten pictures placed")
        wait_until(lambda: not list(home.inbox.iterdir()), 10, "their originals removed")
        if damage.startswith("deleted"):
            home.journal.unlink()  # a tidy-up, or logrotate without copytruncate
        else:
            os.truncate(home.journal, 0)  # `: > journal.jsonl`
        if damage.endswith("kill -9"):
            daemon.kill()  # before it could notice: the next start finds the copies
        else:
            wait_until(lambda: "journal_lost" in daemon.log_text(), 10, "the loss said at once")
            said = "emptied" if damage == "truncated" else "deleted or moved away"
            wait_until(
                lambda: f"the journal was {said} while sortbox ran"
                in sortbox("status", config=home.config).stdout,
                10,
                "`status` saying so",
            )
            for n, data in enumerate(photos[10:]):
                (home.inbox / f"after{n}.jpg").write_bytes(data)
            wait_until(lambda: len(home.file_events()) >= 2, 30, "two more placed")
            assert daemon.stop() == 0
    finally:
        if daemon.process.poll() is None:
            daemon.kill()
    Daemon(home).start().stop()  # a restart: every copy is accounted for by then

    lines = library_explained(home)
    expected = photos if not damage.endswith("kill -9") else photos[:10]
    assert sorted(sha256(p) for p in home.library_files()) == sorted(map(sha256, expected))
    recovered = [e for e in lines.values() if e["event"] == "recovered"]
    assert len(recovered) == 10, recovered
    assert all("missing from the journal" in e["reason"] for e in recovered)

    # the trainer sees the daemon's own guesses, not labels a person gave
    training = sortbox("train", "--dry-run", config=home.config)
    assert training.returncode in (0, 1, 2), training.stderr
    assert "user added" not in training.stdout, training.stdout

    # and undo can put every one back: the recovered copies into the inbox
    undone = sortbox("undo", "--since", "1h", config=home.config)
    assert undone.returncode == 0, undone.stdout + undone.stderr
    assert home.library_files() == []
    in_inbox = sorted(sha256(p) for p in home.inbox.rglob("*") if p.is_file())
    assert in_inbox == sorted(map(sha256, expected)), "nothing is lost"


def test_a_model_refused_then_fixed_in_place_is_used_within_a_second_of_sighup(
    home: Home, tmp_path: Path
) -> None:
    daemon = Daemon(home).start()
    try:
        publish_rgb_model(tmp_path / "staging", "v2")
        shutil.copytree(tmp_path / "staging" / "v2", home.models / "v2")
        model = home.models / "v2" / "model.onnx"
        fixed = model.read_bytes()
        model.write_bytes(b"not a model: a half-copied file")
        point_current_to(home.models, "v2")
        wait_until(lambda: "model_refused" in daemon.log_text(), 20, "v2 refused")
        (home.inbox / "a.jpg").write_bytes(jpeg_bytes("red", 1))
        wait_until(lambda: "a.jpg" in decisions_by_src(home), 20, "sorted with v1")
        model.write_bytes(fixed)  # the admin copies the right file over, in place
        daemon.process.send_signal(signal.SIGHUP)  # and reloads, as the README says
        asked = time.monotonic()
        wait_until(lambda: any(e["model"] == "v2" for e in home.events("model")), 5, "v2 used")
        assert time.monotonic() - asked < 1.0
        (home.inbox / "b.jpg").write_bytes(jpeg_bytes("green", 2))
        wait_until(lambda: "b.jpg" in decisions_by_src(home), 20, "sorted with v2")
    finally:
        assert daemon.stop() == 0
    models = {e["src"]: e["model"] for e in home.file_events()}
    assert models == {"a.jpg": "v1", "b.jpg": "v2"}


def test_rsync_into_the_inbox_is_sorted_once_in_its_final_form(home: Home, tmp_path: Path) -> None:
    """rsync writes `.name.XXXXXX` beside the file, then renames it into place."""
    rsync = shutil.which("rsync")
    if rsync is None:
        pytest.skip("needs Debian's rsync (.ci/run installs it)")
    source = tmp_path / "camera"
    (source / "DCIM").mkdir(parents=True)
    photos = [jpeg_bytes(("red", "green", "blue")[n % 3], 500 + n) for n in range(12)]
    for n, data in enumerate(photos):
        (source / "DCIM" / f"IMG_{n:04}.jpg").write_bytes(data)
    daemon = Daemon(home).start()
    try:
        subprocess.run([rsync, "-a", f"{source}/", f"{home.inbox}/"], check=True, timeout=60)
        wait_until(lambda: len(home.file_events()) >= len(photos), 30, "every photo placed")
        time.sleep(0.5)
    finally:
        assert daemon.stop() == 0
    check_invariants(home, photos)
    assert not [e for e in home.file_events() if e["src"].rsplit("/", 1)[-1].startswith(".")]


def test_sort_never_reads_through_a_folder_swapped_for_a_link_after_admission(
    tmp_path: Path,
) -> None:
    """A, for `sortbox sort` of a folder: the same gate holds its only decoder."""
    (tmp_path / "home").mkdir()
    home = make_home(tmp_path / "home", decode_workers=1)
    home.library.mkdir(exist_ok=True)
    publish_rgb_model(home.models, "v1")
    daemon, gate = gated_daemon(home)  # for its environment only: sort runs, not the daemon
    folder = tmp_path / "card"
    (folder / "swap").mkdir(parents=True)
    (folder / "gate.jpg").write_bytes(jpeg_bytes("blue", 1))
    (folder / "swap" / "x.jpg").write_bytes(jpeg_bytes("green", 2))
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "x.jpg").write_bytes(jpeg_bytes("red", 3))
    sorting = subprocess.Popen(
        [sys.executable, "-m", "sortbox.daemon.cli", "sort", str(folder), "--config",
         str(home.config)],
        env={**os.environ, **daemon.extra_env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        wait_until(lambda: "swap/x.jpg" in admitted(gate), 30, "swap/x.jpg admitted")
        wait_until(lambda: (gate / "reached").exists(), 30, "the decoder held")
        os.rename(folder / "swap", tmp_path / "moved-away")
        os.symlink(outside, folder / "swap")
        (gate / "open").touch()
        _, errors = sorting.communicate(timeout=60)
    finally:
        (gate / "open").touch()
        if sorting.poll() is None:
            sorting.kill()
    assert sorting.returncode == 1, errors  # it says what it left unsorted
    assert b"swap/x.jpg" in errors
    outside_content = sha256(jpeg_bytes("red", 3))
    assert all(e.get("sha256") != outside_content for e in home.events())
    assert outside_content not in {sha256(p) for p in home.library_files()}
    assert (tmp_path / "moved-away" / "x.jpg").read_bytes() == jpeg_bytes("green", 2)
