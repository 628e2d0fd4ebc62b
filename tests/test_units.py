"""The pure parts, on real bytes and real files: preprocessing, naming, decisions, stability,
journal reading, settings."""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from conftest import encode
from PIL import Image
from sortbox.daemon.batch import next_batch
from sortbox.daemon.cpus import cgroup_cpu_quota, usable_cpus
from sortbox.daemon.decide import decide
from sortbox.daemon.decode import read_and_prepare
from sortbox.daemon.intake import Arrival, Identity, is_ignored, walk_files
from sortbox.daemon.journal import Journal, Sorted, read_journal
from sortbox.daemon.manifest import Manifest, check_class_name, retarget
from sortbox.daemon.place import LIBRARY_NAME, copy_into, library_name
from sortbox.daemon.preprocess import BadImage, Preprocessing, decode_rgb, prepare
from sortbox.daemon.settings import (
    AUTO_THREADS_AT_MOST,
    ConfigError,
    TrainSettings,
    load_settings,
)
from sortbox.daemon.stability import StabilityTracker
from sortbox.daemon.thresholds import CalibrationPoints
from sortbox.daemon.watch import EnqueueHandler, PacedPollingEmitter
from watchdog.observers.api import BaseObserver

SPEC = Preprocessing(resize=64, crop=56)


# -- preprocessing -----------------------------------------------------------------------------


def _red_rgba() -> Image.Image:
    image = Image.new("RGBA", (80, 60), (255, 0, 0, 255))
    image.paste((0, 0, 0, 0), (0, 0, 40, 60))  # left half fully transparent
    return image


@pytest.mark.parametrize(
    ("name", "image", "fmt"),
    [
        ("RGBA", _red_rgba(), "PNG"),
        ("LA", _red_rgba().convert("LA"), "PNG"),
        ("P+transparency", _red_rgba().convert("P"), "PNG"),
        ("CMYK", Image.new("RGB", (80, 60), (255, 0, 0)).convert("CMYK"), "JPEG"),
        ("1-bit", Image.new("1", (80, 60), 1), "PNG"),
        ("I;16", Image.fromarray(np.full((60, 80), 65535, np.uint16)), "PNG"),
        ("L", Image.new("L", (80, 60), 200), "TIFF"),
    ],
)
def test_every_mode_becomes_sensible_rgb(name: str, image: Image.Image, fmt: str) -> None:
    rgb = decode_rgb(encode(image, fmt), 64, 10**8)
    assert rgb.mode == "RGB" and rgb.size == (80, 60)
    right = rgb.getpixel((70, 30))
    if name in ("RGBA", "P+transparency", "CMYK"):
        assert right[0] > 200 and right[1] < 60, right  # still red
    if name in ("RGBA", "LA", "P+transparency"):
        assert rgb.getpixel((5, 30)) == (255, 255, 255)  # transparency flattened onto white
    if name in ("1-bit", "I;16"):
        assert right == (255, 255, 255)  # 16-bit white stays white, not clipped junk


def test_exif_orientation_is_applied() -> None:
    image = Image.new("RGB", (120, 60), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 60, 60))  # red on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    rgb = decode_rgb(encode(image, "JPEG", exif=exif), 32, 10**8)
    assert rgb.size == (60, 120)
    top = rgb.getpixel((30, 10))
    assert top[0] > 200 and top[2] < 60, top  # red ends up on top


def test_large_jpeg_is_draft_decoded_not_at_full_size() -> None:
    big = Image.new("RGB", (4000, 3000), (10, 200, 10))
    rgb = decode_rgb(encode(big, "JPEG"), 256, 10**8)
    assert rgb.size == (500, 375)  # 1/8 scale: still >= 256 on the short side
    assert prepare(encode(big, "JPEG"), Preprocessing(), 10**8).shape == (3, 224, 224)


def test_prepare_is_scaled_as_the_manifest_says() -> None:
    data = encode(Image.new("RGB", (70, 90), (255, 127, 0)), "PNG")
    array = prepare(data, SPEC, 10**8)
    assert array.shape == (3, 56, 56) and array.dtype == np.float32
    assert np.allclose(array[:, 28, 28], [(255 - 127) / 128, 0.0, -127 / 128], atol=1e-6)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty file"),
        (encode(Image.new("RGB", (64, 64), "red"), "PNG")[:80], "cannot decode"),
        (b"%PDF-1.4 hello", "a PDF document: sortbox sorts pictures"),
        (b"\x00\x00\x01\x00\x01\x00\x10\x10" + bytes(64), r"an icon \(\.ico\)"),
        (b"PK\x03\x04" + bytes(60), "an archive"),
        (b"\x00\x00\x00\x18ftypmp42" + bytes(60), "a video"),
        (b"hello, a shopping list\n", "a text file"),
        (bytes(range(256)) * 4, "not a picture sortbox can read"),
    ],
)
def test_bad_bytes_raise_a_readable_reason(data: bytes, reason: str) -> None:
    with pytest.raises(BadImage, match=reason):
        prepare(data, SPEC, 10**8)


def test_decompression_bomb_limit() -> None:
    data = encode(Image.new("L", (3000, 3000)), "PNG")
    with pytest.raises(BadImage, match="too many pixels"):
        prepare(data, SPEC, 1_000_000)


def test_phone_photos_and_page_scans_beyond_40_megapixels_are_decoded_within_budget() -> None:
    """Refused before: a 108-megapixel phone JPEG (Pillow's own bomb warning), a grey A3 page
    scanned at 600 dpi (70 megapixels). A colour picture that would need more than 200 MB
    decoded is still refused, with the reason."""
    phone = encode(Image.new("RGB", (12000, 9000), (30, 90, 200)), "JPEG", quality=80)
    assert prepare(phone, SPEC, 250_000_000).shape == (3, 56, 56)
    scan = encode(Image.new("L", (7016, 9921), 200), "TIFF", compression="tiff_lzw")
    grey = prepare(scan, SPEC, 250_000_000)
    assert np.allclose(grey, (200 - 127) / 128)
    poster = encode(Image.new("RGB", (9000, 9000), (1, 2, 3)), "PNG", compress_level=1)
    with pytest.raises(BadImage, match="too large to decode: 9000x9000 PNG needs 243 MB"):
        prepare(poster, SPEC, 250_000_000)


def test_a_progressive_jpeg_built_of_endless_scans_is_refused_before_decoding() -> None:
    """Every scan of a progressive JPEG is decoded, draft mode or not: a file of a million tiny
    scans takes hours (here 300 repeats of a real scan stand in for them)."""
    progressive = encode(picture_like_a_photo(), "JPEG", quality=90, progressive=True)
    assert prepare(progressive, SPEC, 10**8).shape == (3, 56, 56)
    first_scan = progressive.index(b"\xff\xda")
    second_scan = progressive.index(b"\xff\xda", first_scan + 2)
    end = progressive.rindex(b"\xff\xd9")
    scan = progressive[first_scan:second_scan]
    endless = progressive[:end] + scan * 300 + progressive[end:]
    with pytest.raises(BadImage, match=r"a progressive JPEG of 3\d\d scans, more than the 256"):
        prepare(endless, SPEC, 10**8)


def picture_like_a_photo() -> Image.Image:
    rng = np.random.default_rng(3)
    return Image.fromarray(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8))


def test_vanished_file_is_a_reason_not_a_crash(tmp_path: Path) -> None:
    arrival = Arrival(tmp_path / "gone.jpg", tmp_path, Identity(1, 1, 1))
    decoded = read_and_prepare(arrival, SPEC, 10**8, 10**9)
    assert decoded.problem == "vanished before it could be read" and decoded.sha256 is None


# -- naming and placement ------------------------------------------------------------------------

SHA = "ab" * 32


@pytest.mark.parametrize(
    ("original", "expected"),
    [
        ("IMG_0001.JPG", "IMG_0001.abababababab.jpg"),
        ("holiday.photo.Jpeg", "holiday.photo.abababababab.jpeg"),
        ("no_extension", "no_extension.abababababab"),
        (".hidden.png", "_hidden.abababababab.png"),
        ("line\nbreak.png", "line_break.abababababab.png"),
        ("weird.ext-with-dash", "weird.ext-with-dash.abababababab"),
        # what exFAT, NTFS and Windows refuse: a library may live on a USB disk
        ('IMG:0001 "best?" <1|2*3>.jpg', "IMG_0001 _best__ _1_2_3_.abababababab.jpg"),
        ("CON.jpg", "_CON.abababababab.jpg"),
        ("lpt1.scan.png", "_lpt1.scan.abababababab.png"),
        ("console.jpg", "console.abababababab.jpg"),
        ("photo.jpg. ", "photo.abababababab.jpg"),
    ],
)
def test_library_names(original: str, expected: str) -> None:
    assert library_name(original, SHA) == expected
    assert LIBRARY_NAME.match(expected)


def test_long_names_are_cut_to_fit_the_filesystem() -> None:
    name = library_name("é" * 300 + ".jpg", SHA)
    assert len(name.encode()) < 255 and name.endswith(".abababababab.jpg")


def test_copy_never_overwrites_other_content(tmp_path: Path) -> None:
    source = tmp_path / "in.jpg"
    source.write_bytes(b"new content")
    import hashlib

    sha = hashlib.sha256(b"new content").hexdigest()
    folder = tmp_path / "lib"
    folder.mkdir()
    squatter = folder / library_name("in.jpg", sha)
    squatter.write_bytes(b"someone else's file")
    final = copy_into(source, folder, "in.jpg", sha)
    assert final != squatter and final.read_bytes() == b"new content"
    assert squatter.read_bytes() == b"someone else's file"
    assert copy_into(source, folder, "in.jpg", sha) == final  # identical content: no second copy
    assert sorted(p.name for p in folder.iterdir()) == sorted([squatter.name, final.name])


@pytest.mark.parametrize("name", ["../escape", "a/b", "", ".hidden", "needs_review", "tab\there"])
def test_class_names_that_are_not_plain_folders_are_refused(name: str) -> None:
    with pytest.raises(ValueError):
        check_class_name(name)


# -- decisions -----------------------------------------------------------------------------------


def manifest(temperature: float = 1.0, threshold: float = 0.8) -> Manifest:
    return Manifest(
        version="t1",
        created=datetime.now(UTC),
        classes=["cats", "dogs", "cars"],
        preprocessing=Preprocessing(),
        temperature=temperature,
        thresholds={"cats": threshold, "dogs": 0.5, "cars": 0.5},
        model_sha256="0" * 64,
    )


def test_decide_uses_temperature_and_per_class_thresholds() -> None:
    logits = np.array([2.0, 0.0, 0.0], np.float32)
    confident = decide(logits, manifest(temperature=0.5))
    assert confident.folder == "cats" and confident.confidence > 0.95
    unsure = decide(logits, manifest(temperature=2.0))
    assert unsure.folder == "needs_review" and unsure.label == "cats"
    assert unsure.top3[0][0] == "cats" and len(unsure.top3) == 3


def test_a_model_published_under_an_older_threshold_rule_follows_the_current_one() -> None:
    """Thresholds come from the calibration predictions at every load, even for the target the
    model was published with: its stored ones may come from an older, bolder rule."""
    points = CalibrationPoints(predicted=[0] * 15, confidence=[0.9] * 15, correct=[True] * 15)
    published = manifest(threshold=0.6).model_copy(
        update={"calibration": points, "target_precision": 0.97}
    )
    loaded = retarget(published, 0.97)
    assert loaded.thresholds["cats"] > 1.0, "15 right answers do not show 97%"
    assert retarget(manifest(threshold=0.6), 0.97).thresholds["cats"] == 0.6  # no points: kept


def test_a_class_without_evidence_goes_to_review_even_at_a_confidence_of_one() -> None:
    """A temperature fitted on a few calibration pictures, all right, is tiny: the softmax is
    exactly 1.0, and a threshold of 1.0 would auto-sort every picture on no evidence."""
    points = CalibrationPoints(predicted=[0, 0, 1], confidence=[1.0] * 3, correct=[True] * 3)
    loaded = retarget(manifest().model_copy(update={"calibration": points}), 0.97)
    saturated = decide(
        np.array([40.0, 0.0, 0.0], np.float32), loaded.model_copy(update={"temperature": 0.05})
    )
    assert saturated.confidence == 1.0
    assert saturated.folder == "needs_review" and saturated.label == "cats"
    assert "too little calibration evidence" in saturated.describe()
    assert Manifest.model_validate(loaded.model_dump()).thresholds == loaded.thresholds


# -- stability, with an injected clock ----------------------------------------------------------


def test_stability_waits_for_writers_and_quiet(tmp_path: Path) -> None:
    now = [0.0]
    tracker = StabilityTracker(quiet_period_s=1.0, clock=lambda: now[0])
    path = tmp_path / "x.jpg"
    path.write_bytes(b"1")
    tracker.opened(path)
    tracker.touched(path)
    now[0] = 5.0
    assert tracker.take_stable() == []  # still open for writing
    tracker.closed(path)
    assert tracker.take_stable() == []  # quiet period not over
    now[0] = 5.5
    path.write_bytes(b"12")  # changed during the quiet period
    now[0] = 6.1
    assert tracker.take_stable() == []
    now[0] = 7.2
    taken = tracker.take_stable()
    assert [p for p, _ in taken] == [path]
    tracker.touched(path)
    now[0] = 20.0
    assert tracker.take_stable() == []  # queued until finished
    tracker.finished(path)
    assert [p for p, _ in tracker.take_stable()] == [path]


def test_a_file_created_while_watched_is_complete_when_its_last_writer_closes_it(
    tmp_path: Path,
) -> None:
    now = [0.0]
    tracker = StabilityTracker(quiet_period_s=1.0, clock=lambda: now[0])
    created, two_writers, older = (tmp_path / n for n in ("new.jpg", "two.jpg", "old.jpg"))
    for path in (created, two_writers, older):
        path.write_bytes(b"1")
    for path in (created, two_writers):
        tracker.created(path)
        tracker.opened(path)
    tracker.opened(two_writers)  # a second writer
    tracker.opened(older)  # existed before: a writer may have opened it before we looked
    for path in (created, two_writers, older):
        tracker.closed(path, wrote=True)
    assert [p for p, _ in tracker.take_stable()] == [created]  # at once: no quiet period
    tracker.closed(two_writers, wrote=False)  # a reader: not the end of the writing
    now[0] = 0.5
    assert tracker.take_stable() == []
    now[0] = 1.1
    assert sorted(p for p, _ in tracker.take_stable()) == [older, two_writers]


def test_a_close_the_kernel_dropped_does_not_keep_a_file_waiting_for_ever(tmp_path: Path) -> None:
    now = [0.0]
    tracker = StabilityTracker(quiet_period_s=1.0, clock=lambda: now[0])
    path = tmp_path / "a.jpg"
    path.write_bytes(b"1")
    tracker.created(path)
    tracker.opened(path)  # ... and its close was among the events inotify's overflow dropped
    now[0] = 60.0
    assert tracker.take_stable() == []
    tracker.events_lost()
    now[0] = 60.5
    assert tracker.take_stable() == [], "unknown writers: the quiet period is waited out"
    now[0] = 61.1
    assert [p for p, _ in tracker.take_stable()] == [path]


def test_a_file_some_program_keeps_open_is_named_once_not_waited_for_silently(
    tmp_path: Path,
) -> None:
    now = [0.0]
    tracker = StabilityTracker(quiet_period_s=1.0, clock=lambda: now[0])
    path = tmp_path / "a.jpg"
    path.write_bytes(b"1")
    tracker.created(path)
    tracker.opened(path)  # a copy that stalled, or a program that holds the file
    now[0] = 59.0
    assert tracker.held_open(60.0) == []
    now[0] = 61.0
    assert tracker.held_open(60.0) == [path]
    now[0] = 500.0
    assert tracker.held_open(60.0) == [] and tracker.take_stable() == []  # said once, waits
    tracker.closed(path)
    now[0] = 501.1
    assert [p for p, _ in tracker.take_stable()] == [path]


def test_polling_needs_two_unchanged_checks_and_a_rename_needs_no_quiet_period(
    tmp_path: Path,
) -> None:
    now = [0.0]
    tracker = StabilityTracker(quiet_period_s=1.0, confirmations=2, clock=lambda: now[0])
    polled, renamed = tmp_path / "polled.jpg", tmp_path / "renamed.jpg"
    polled.write_bytes(b"1")
    renamed.write_bytes(b"1")
    tracker.touched(polled)
    tracker.renamed(renamed)
    assert [p for p, _ in tracker.take_stable()] == [renamed]  # at once
    now[0] = 1.1
    assert tracker.take_stable() == []  # one unchanged check is not enough when polling
    polled.write_bytes(b"12")  # the writer was only pausing
    now[0] = 2.2
    assert tracker.take_stable() == []
    now[0] = 3.3
    assert tracker.take_stable() == []
    now[0] = 4.4
    assert [p for p, _ in tracker.take_stable()] == [polled]


def test_polling_a_slow_inbox_waits_longer_between_snapshots_and_still_sees_files(
    tmp_path: Path,
) -> None:
    """An inbox whose snapshot is slow (many files, a network share: here stat() sleeps) is
    polled less often, so that polling stays a small share of a CPU; files are still seen."""
    for n in range(5):
        (tmp_path / f"{n}.jpg").write_bytes(b"x")
    stats: list[float] = []

    def slow_stat(path: str) -> os.stat_result:
        stats.append(time.monotonic())
        time.sleep(0.02)
        return os.stat(path)

    notices: queue.SimpleQueue = queue.SimpleQueue()
    emitter = functools.partial(PacedPollingEmitter, stat=slow_stat)
    observer = BaseObserver(emitter, timeout=0.05)  # type: ignore[arg-type]
    observer.schedule(EnqueueHandler(tmp_path, notices), str(tmp_path), recursive=True)
    observer.start()
    try:
        time.sleep(0.5)  # the first snapshot and the first compared one, 0.05 s apart
        (tmp_path / "new.jpg").write_bytes(b"y")
        seen = []
        deadline = time.monotonic() + 15
        while not seen and time.monotonic() < deadline:
            with contextlib.suppress(queue.Empty):
                seen.append(notices.get(timeout=0.1))
    finally:
        observer.stop()
        observer.join()
    gaps = [later - earlier for earlier, later in itertools.pairwise(stats)]
    assert max(gaps) > 1.0, "a snapshot of 0.1 s is followed by about 1.9 s of rest, not 0.05"
    assert seen == [("created", tmp_path / "new.jpg")]


def test_a_lone_picture_does_not_wait_out_max_wait() -> None:
    source: queue.Queue[int] = queue.Queue()
    source.put(1)
    started = time.monotonic()
    batch = next_batch(source, 8, 30.0, threading.Event(), more_coming=lambda: False)
    assert batch == [1] and time.monotonic() - started < 10  # not the 30 s max_wait
    for n in range(3):
        source.put(n)
    assert next_batch(source, 2, 30.0, threading.Event()) == [0, 1]  # full: goes at once


@pytest.mark.parametrize(
    ("path", "ignored"),
    [
        ("a.jpg", False),
        ("x.jpg.part", True),
        ("dl.crdownload", True),
        (".DS_Store", True),
        ("@eaDir/a.jpg", True),
        ("sub/.syncthing.a.jpg.tmp", True),
        ("~$report.docx", True),
        ("Thumbs.db", True),
    ],
)
def test_ignore_patterns(path: str, ignored: bool) -> None:
    from sortbox.daemon.settings import DEFAULT_IGNORE

    assert is_ignored(path, DEFAULT_IGNORE) is ignored


# -- journal -------------------------------------------------------------------------------------


def test_torn_last_line_is_tolerated_and_terminated(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    event = Sorted(src="a.jpg", root="/in", sha256="0" * 64, size=1, label="cats", confidence=0.9)
    with Journal(path) as journal:
        journal.append([event])
    with path.open("ab") as fh:
        fh.write(b'{"v":1,"ts":"2026-11-22T10:00:00Z","event":"sor')  # power cut mid-write
    assert [e.src for e in read_journal(path)] == ["a.jpg"]
    with Journal(path) as journal:
        journal.append([event.model_copy(update={"src": "b.jpg"})])
    assert [e.src for e in read_journal(path)] == ["a.jpg", "b.jpg"]


# -- settings ------------------------------------------------------------------------------------


def test_relative_paths_resolve_against_the_config_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "etc" / "sortbox.toml"
    config.parent.mkdir()
    config.write_text('inbox = "in"\nlibrary = "/srv/lib"\njournal = "j.jsonl"\nmodels_dir = "m"\n')
    monkeypatch.chdir("/")
    monkeypatch.setenv("SORTBOX_TARGET_PRECISION", "0.9")
    settings = load_settings(config)
    assert settings.inbox == tmp_path / "etc" / "in"
    assert settings.library == Path("/srv/lib")
    assert settings.target_precision == 0.9
    with pytest.raises(ConfigError, match="config file not found"):
        load_settings(tmp_path / "missing.toml")


def test_the_shipped_config_is_valid() -> None:
    settings = load_settings(Path(__file__).parent.parent / "config.toml")
    assert settings.on_success == "keep" and settings.target_precision == 0.97
    assert os.path.isabs(settings.inbox)
    assert settings.train == TrainSettings(), "config.toml documents the defaults"


def test_sortbox_0_1_target_precision_is_still_read(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        'inbox = "i"\nlibrary = "l"\njournal = "j"\nmodels_dir = "m"\n'
        "[train]\ntarget_precision = 0.9\n"
    )
    assert load_settings(config).target_precision == 0.9


def test_auto_threads_follow_the_cpus_this_process_may_use(tmp_path: Path) -> None:
    """A real process pinned to one CPU gets one thread of each kind; a number given wins."""
    if shutil.which("taskset") is None:
        pytest.skip("taskset (util-linux) is not installed")
    config = tmp_path / "config.toml"
    config.write_text(
        'inbox = "i"\nlibrary = "l"\njournal = "j"\nmodels_dir = "m"\ndecode_workers = "auto"\n'
    )
    show = (
        "import sys; from pathlib import Path; from sortbox.daemon.settings import load_settings;"
        "s = load_settings(Path(sys.argv[1])); print(s.decode_workers, s.inference_threads,"
        "s.train.threads)"
    )
    python = [sys.executable, "-c", show, str(config)]
    pinned = subprocess.run(["taskset", "-c", "0", *python], capture_output=True, text=True)
    assert pinned.stdout.split() == ["1", "1", "1"], pinned.stderr
    cpus = usable_cpus()
    threads = str(min(cpus, AUTO_THREADS_AT_MOST))
    free = subprocess.run(python, capture_output=True, text=True)
    assert free.stdout.split() == [threads, threads, str(cpus)], free.stderr
    given = subprocess.run(
        ["taskset", "-c", "0", *python],
        capture_output=True,
        text=True,
        env={**os.environ, "SORTBOX_DECODE_WORKERS": "3"},
    )
    assert given.stdout.split() == ["3", "1", "1"], given.stderr


def test_a_cgroup_cpu_quota_lowers_the_usable_cpus(tmp_path: Path) -> None:
    """systemd's CPUQuota= (cgroup v2), a container's --cpus (v1, set on a parent), and a
    container that sees only its own cgroup at the mount."""
    affinity = len(os.sched_getaffinity(0))
    of_self = tmp_path / "proc-self-cgroup"
    v2 = tmp_path / "v2"
    service = v2 / "system.slice" / "sortbox.service"
    service.mkdir(parents=True)
    (v2 / "system.slice" / "cpu.max").write_text("max 100000\n")
    (service / "cpu.max").write_text("150000 100000\n")
    of_self.write_text("0::/system.slice/sortbox.service\n")
    assert cgroup_cpu_quota(of_self, v2) == 1.5
    assert usable_cpus(of_self, v2) == min(affinity, 2)

    v1 = tmp_path / "v1"
    container = v1 / "cpu,cpuacct" / "docker" / "abc"
    container.mkdir(parents=True)
    for folder, quota in ((container, -1), (container.parent, 50000)):
        (folder / "cpu.cfs_quota_us").write_text(f"{quota}\n")
        (folder / "cpu.cfs_period_us").write_text("100000\n")
    of_self.write_text("12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n")
    assert cgroup_cpu_quota(of_self, v1) == 0.5
    assert usable_cpus(of_self, v1) == 1

    namespaced = tmp_path / "namespaced"
    namespaced.mkdir()
    (namespaced / "cpu.max").write_text("100000 100000\n")
    of_self.write_text("0::/kubepods/pod1/container\n")
    assert usable_cpus(of_self, namespaced) == 1
    (namespaced / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_quota(of_self, namespaced) is None
    assert usable_cpus(of_self, namespaced) == affinity


@pytest.mark.parametrize("relative", ["../outside.jpg", "/etc/passwd", "a/../../b", ""])
def test_undo_refuses_paths_from_the_journal_that_leave_their_folder(relative: str) -> None:
    from sortbox.daemon.undo import below

    assert below(Path("/srv/library"), relative) is None
    assert below(Path("/srv/library"), "cats/x.jpg") == Path("/srv/library/cats/x.jpg")


def test_replacing_leaves_the_old_file_whole_when_writing_fails(tmp_path: Path) -> None:
    from sortbox.daemon.atomic import replacing

    target = tmp_path / "state.json"
    target.write_text("old")
    with pytest.raises(OSError), replacing(target) as temporary:
        temporary.write_text("half")
        raise OSError("disk full")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["state.json"]
    with replacing(target) as temporary:
        temporary.write_text("new")
    assert target.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_walk_files_lists_files_and_links_never_entering_linked_folders(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    (inbox / "card" / "DCIM").mkdir(parents=True)
    (inbox / "card" / "DCIM" / "IMG_1.JPG").write_bytes(b"x")
    (inbox / "a.jpg").write_bytes(b"x")
    (inbox / "a.jpg.part").write_bytes(b"x")  # ignored
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "secret.jpg").write_bytes(b"x")
    os.symlink(tmp_path / "elsewhere", inbox / "linked-folder")  # not entered, not a file
    os.symlink("loop.jpg", inbox / "loop.jpg")  # a link to itself: listed, decode refuses it
    os.symlink(tmp_path / "elsewhere" / "secret.jpg", inbox / "escape.jpg")
    found = {p.relative_to(inbox).as_posix() for p in walk_files(inbox, ["*.part"])}
    assert found == {"card/DCIM/IMG_1.JPG", "a.jpg", "loop.jpg", "escape.jpg"}
