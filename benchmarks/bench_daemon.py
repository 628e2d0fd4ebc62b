"""How close sortbox runs to the machine's limit, on camera-like 12-megapixel JPEGs.

    python benchmarks/bench_daemon.py [--workdir .bench] [--photos 120] [--rounds 5] [--rate 5]
                                      [--drop 10000] [--further 50000] [--model DIR]
                                      [--parts throughput,latency,scale]

Makes its own pictures: 4032x3024 JPEGs at quality 90 with sensor-like noise, cut from the
photos of Debian's plasma-workspace-wallpapers package (apt-get download, dpkg -x), and small
distinct photos made from ../shared/data/clothing10 for the scale runs. Needs the trainer
extra (`sortbox init` builds the real default model) and `simplejpeg` for the decoder
comparison (pip install simplejpeg; skipped without it).

Prints, in one run, each with its ratio:
  * the two-core limit for the same pictures (#31): cores / (single-threaded CPU time to read
    and draft-decode one picture + single-threaded CPU time to infer it in batches of 16);
    and the same limit with what it leaves out and a sorter that keeps a checked, durable
    copy must do: hashing the file and writing the copy (single-threaded, on the same files);
  * throughput (images/s) of
      - the ceiling: sortbox's own decoding and model, decoders in parallel with batched
        inference, and nothing else (no hashing, copying or journaling);
      - a naive sorter (full decode, one model call per picture, plain copy);
      - `sortbox sort` from ready to done, and `sortbox run` with all photos dropped at once;
      - ceiling, `sort` and `run` in `--rounds` rounds, each ratio taken within its round;
  * Pillow's draft decoding against simplejpeg's (libjpeg-turbo) scaled decoding;
  * latency from "complete in the inbox" to "journal line durable" (p50, p99) for files
    renamed within the inbox, moved in from another folder, and written in place and closed
    by their only writer;
  * scale: `--drop` files dropped at once (all accounted for, peak RSS), RSS across
    `--further` files more, and the time to restart ready with all of them done.

Every measurement runs in its own process, so each peak RSS is its own.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from sortbox.daemon.cpus import usable_cpus
from sortbox.daemon.settings import Settings, load_settings

REPO = Path(__file__).resolve().parent.parent
CLOTHING10 = REPO.parent / "shared" / "data" / "clothing10"
WALLPAPERS = "plasma-workspace-wallpapers"
SORTBOX = [sys.executable, "-m", "sortbox.daemon.cli"]
CAMERA_SIZE = (4032, 3024)  # 12.2 megapixels, the 4:3 size of most phone cameras


# -- the pictures --------------------------------------------------------------------------------


def camera_photos(workdir: Path, count: int) -> Path:
    """Distinct 4032x3024 JPEGs, quality 90, with sensor-like noise, made once and kept."""
    from PIL import Image

    folder = workdir / f"camera-{count}"
    if folder.is_dir() and len(list(folder.glob("*.jpg"))) == count:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    sources = wallpaper_sources(workdir)
    rng = np.random.default_rng(0)
    width, height = CAMERA_SIZE
    for n in range(count):
        with Image.open(sources[n % len(sources)]) as wallpaper:
            scale = height / wallpaper.height  # 5120x2880 -> 5376x3024
            wide = wallpaper.convert("RGB").resize(
                (round(wallpaper.width * scale), height), Image.Resampling.BICUBIC
            )
        left = (n // len(sources)) * 97 % (wide.width - width + 1)
        pixels = np.asarray(wide.crop((left, 0, left + width, height)), dtype=np.float32)
        # shot noise grows with brightness, read noise does not; a little per channel
        sigma = 1.5 + 0.02 * pixels
        noisy = pixels + sigma * rng.standard_normal(pixels.shape, dtype=np.float32)
        photo = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))
        photo.save(folder / f"IMG_{n:04}.jpg", quality=90)
    return folder


def wallpaper_sources(workdir: Path) -> list[Path]:
    unpacked = workdir / "wallpapers"
    if not unpacked.is_dir():
        download = workdir / "deb"
        download.mkdir(parents=True, exist_ok=True)
        if not list(download.glob("*.deb")):
            subprocess.run(["apt-get", "download", WALLPAPERS], cwd=download, check=True)
        deb = next(download.glob("*.deb"))
        subprocess.run(["dpkg", "-x", str(deb), str(unpacked)], check=True)
    sources = sorted(unpacked.rglob("5120x2880.*"))
    if not sources:
        raise SystemExit(f"no 5120x2880 photos in {unpacked}")
    return sources


def small_photos(workdir: Path, count: int) -> Path:
    """`count` distinct 640x480 JPEGs (~40 KB) from the clothing10 photos: what a scanner
    folder or an old archive holds, and enough to stress the bookkeeping, not the decoder."""
    from PIL import Image

    folder = workdir / f"small-{count}"
    if folder.is_dir() and len(list(folder.iterdir())) == count:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    sources = sorted(p for c in sorted(CLOTHING10.iterdir()) if c.is_dir() for p in c.iterdir())
    made = 0
    for variant in range(count // len(sources) + 1):
        for source in sources:
            if made == count:
                return folder
            with Image.open(source) as image:
                small = image.convert("RGB").resize((640, 480))
            small.putpixel((variant % 640, variant // 640), (variant % 256, 0, made % 256))
            small.save(folder / f"{made:06}.jpg", quality=85)
            made += 1
    return folder


# -- throughput: one child process per measurement ------------------------------------------------


def child(mode: str, home: Path, inputs: Path) -> dict:
    settings = load_settings(home / "config.toml")
    if mode == "limit":
        return two_core_limit(settings, inputs)
    measure = {"ceiling": ceiling, "naive": naive_sort, "sort": sortbox_sort}[mode]
    count, usage = measure(settings, inputs)
    return {
        "images": count,
        "seconds": usage.wall_s,
        "per_second": count / usage.wall_s,
        "peak_rss_mb": vm_mb(os.getpid(), "VmHWM"),
        **usage.figures(count),
    }


# -- where the time goes: CPU used, and CPU the machine did not give -----------------------------

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


def machine_stolen_s() -> float:
    """CPU seconds the hypervisor gave to others while this machine wanted them ("steal" in
    /proc/stat, all CPUs): a virtual machine's two cores are not always two whole cores."""
    return int(Path("/proc/stat").read_text().split(maxsplit=9)[8]) / CLOCK_TICKS


PARTS_OF_A_SORTBOX = ("decoders", "main loop", "placer", "intake", "other")


def cpu_by_thread(pid: int) -> dict[str, tuple[str, float]]:
    """Each thread of a sortbox process: its part, by the name its worker has in the kernel
    (service.py names them), and its CPU seconds so far. The parts: the decoders, the main
    loop (the model), the placer, the intake, and the rest (watchdog's threads)."""
    threads = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            on_cpu_ns = int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError):
            continue  # a thread that ended meanwhile
        if task.name == str(pid):
            part = "main loop"
        elif name.startswith("decode-"):
            part = "decoders"
        elif name in ("placer", "intake"):
            part = name
        else:
            part = "other"
        threads[task.name] = (part, on_cpu_ns / 1e9)
    return threads


class Usage:
    """A timed window: wall time, the CPU the measured process used (and each of its parts),
    the CPU stolen from the machine. Together they say where a shortfall from the limit goes
    (`figures`)."""

    def __init__(self, pid: int | None = None) -> None:
        self.pid = pid or os.getpid()
        self._wall, self._cpu = time.perf_counter(), process_cpu_s(self.pid)
        self._stolen = machine_stolen_s()
        self._threads_at_start = cpu_by_thread(self.pid)
        self._threads_latest = dict(self._threads_at_start)
        self.wall_s = self.cpu_s = self.stolen_s = 0.0
        self.parts: dict[str, float] = {}

    def look(self) -> None:
        """Note each thread's CPU now: a thread that ends before `stop` keeps its last figure."""
        self._threads_latest.update(cpu_by_thread(self.pid))

    def stop(self, wall_s: float | None = None) -> Usage:
        """Close the window; `wall_s` when the work ended before this is called."""
        self.wall_s = wall_s if wall_s is not None else time.perf_counter() - self._wall
        self.cpu_s = process_cpu_s(self.pid) - self._cpu
        self.stolen_s = machine_stolen_s() - self._stolen
        self.look()
        self.parts = {}
        for tid, (part, seconds) in self._threads_latest.items():
            before = self._threads_at_start.get(tid, (part, 0.0))[1]
            self.parts[part] = self.parts.get(part, 0.0) + seconds - before
        return self

    def figures(self, pictures: int) -> dict[str, float]:
        cores = usable_cpus()
        return {
            "cpu_ms": 1000 * self.cpu_s / pictures,
            "busy": self.cpu_s / (self.wall_s * cores),
            # the hypervisor takes from every CPU of the machine, not only those we may use
            "stolen": self.stolen_s / (self.wall_s * (os.cpu_count() or cores)),
            "parts_ms": {k: 1000 * v / pictures for k, v in self.parts.items()},
        }


def vm_mb(pid: int, field: str) -> float:
    """VmRSS or VmHWM (peak) of a process. Not getrusage: its peak survives exec(), so a
    child would report the peak of the benchmark that started it."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def two_core_limit(settings: Settings, inputs: Path, batch: int = 16) -> dict:
    """The machine's limit for these pictures (#31): the single-threaded CPU time to read and
    draft-decode one picture plus the single-threaded CPU time to infer it (batches of 16),
    spread perfectly over the usable cores: cores / (decode + infer) images a second.

    Also measured, single-threaded on the same files, the two things that limit leaves out
    and that a sorter which keeps a checked, durable copy cannot: hashing the file (its
    library name, the duplicate check) and writing the copy as the placer does (around the
    page cache, fsynced; each folder fsynced once per batch, as the daemon does)."""
    from sortbox.daemon.sorting.classify import load_current
    from sortbox.daemon.sorting.copies import Scratch, copy_into
    from sortbox.daemon.sorting.preprocess import prepare

    classifier = load_current(settings.models_dir, threads=1)
    spec = classifier.manifest.preprocessing
    paths = sorted(inputs.iterdir())
    pixels, decode_s = [], 0.0
    for path in paths:
        started = time.process_time()
        pixels.append(prepare(path.read_bytes(), spec, settings.max_pixels, path.name))
        decode_s += time.process_time() - started
    classifier.logits(np.stack(pixels[:batch]))  # warmed up, as the service is before READY
    started = time.process_time()
    for first in range(0, len(pixels), batch):
        classifier.logits(np.stack(pixels[first : first + batch]))
    infer_s = time.process_time() - started
    hash_s, copy_s = 0.0, 0.0
    folder = settings.library / "limit-copies"
    folder.mkdir(parents=True)
    scratch = Scratch()
    for path in paths:
        data = path.read_bytes()
        started = time.process_time()
        sha256 = hashlib.sha256(data).hexdigest()
        hash_s += time.process_time() - started
        started = time.process_time()
        copy_into(
            path, folder, path.name, sha256, data, sync_folder=lambda _: None, scratch=scratch
        )
        copy_s += time.process_time() - started
    cores = usable_cpus()
    per_image = (decode_s + infer_s) / len(paths)
    with_copy = per_image + (hash_s + copy_s) / len(paths)
    return {
        "images": len(paths),
        "per_second": cores / per_image,
        "with_copy_per_second": cores / with_copy,
        "decode_ms": 1000 * decode_s / len(paths),
        "infer_ms": 1000 * infer_s / len(paths),
        "hash_ms": 1000 * hash_s / len(paths),
        "copy_ms": 1000 * copy_s / len(paths),
        "cores": cores,
        "peak_rss_mb": vm_mb(os.getpid(), "VmHWM"),
    }


def ceiling(settings: Settings, inputs: Path) -> tuple[int, Usage]:
    """sortbox's own decoding and model with nothing around them: decoders in parallel with
    batched inference, as the daemon runs them, but no hashing, copying or journaling."""
    from sortbox.daemon.sorting.classify import load_current
    from sortbox.daemon.sorting.preprocess import prepare

    classifier = load_current(settings.models_dir, settings.inference_threads)
    spec = classifier.manifest.preprocessing
    paths = sorted(inputs.iterdir())

    def decode(path: Path) -> np.ndarray:
        return prepare(path.read_bytes(), spec, settings.max_pixels, path.name)

    classifier.logits(decode(paths[0])[np.newaxis])  # warmed up, as the service is before READY
    usage = Usage()
    with ThreadPoolExecutor(settings.decode_workers) as pool:
        decoded = pool.map(decode, paths)
        batch: list[np.ndarray] = []
        for pixels in decoded:
            batch.append(pixels)
            if len(batch) == settings.batch_size:
                classifier.logits(np.stack(batch))
                batch = []
        if batch:
            classifier.logits(np.stack(batch))
    return len(paths), usage.stop()


def naive_sort(settings: Settings, inputs: Path) -> tuple[int, Usage]:
    """What a first attempt looks like: the float model in ONNX Runtime's default session, a
    full-size decode, the whole picture resized, one model call per picture, a plain copy."""
    import onnxruntime as ort
    from PIL import Image, ImageOps
    from sortbox.daemon.sorting.classify import load_current
    from sortbox.daemon.sorting.decide import decide
    from sortbox.daemon.sorting.manifest import MODEL_FILE, current_version

    manifest = load_current(settings.models_dir, settings.inference_threads).manifest
    version = current_version(settings.models_dir)
    session = ort.InferenceSession(str(settings.models_dir / str(version) / MODEL_FILE))
    spec = manifest.preprocessing
    usage = Usage()
    paths = sorted(inputs.iterdir())
    for path in paths:
        with Image.open(path) as image:
            rgb = ImageOps.exif_transpose(image).convert("RGB")  # full-size decode
        scale = spec.resize / min(rgb.size)
        resized = rgb.resize((round(rgb.width * scale), round(rgb.height * scale)))
        left, top = (resized.width - spec.crop) // 2, (resized.height - spec.crop) // 2
        square = resized.crop((left, top, left + spec.crop, top + spec.crop))
        pixels = (np.asarray(square, dtype=np.float32) - spec.mean) / spec.std
        batch = pixels.transpose(2, 0, 1)[np.newaxis].astype(np.float32)
        decision = decide(session.run(None, {"input": batch})[0][0], manifest)
        target = settings.library / decision.folder
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target / path.name)
    return len(paths), usage.stop()


def sortbox_sort(settings: Settings, inputs: Path) -> tuple[int, Usage]:
    """`sortbox sort`'s own Service, timed from ready (model loaded) to every file journaled."""
    from sortbox.daemon.intake.files import collect
    from sortbox.daemon.running.notify import Notifier
    from sortbox.daemon.service import Service

    usage: Usage | None = None

    class Stopwatch(Notifier):
        def ready(self, status: str) -> None:
            nonlocal usage
            usage = Usage()

    count = 0

    def counted(events: list, finished: int) -> None:
        nonlocal count
        count += len(events)
        if usage is not None:
            usage.look()  # the workers end with the service, before `stop`; the last
            # figure of a decoder that ends after this misses its last picture or two

    arrivals = collect([inputs], settings.library, settings.ignore)
    Service(settings, Stopwatch(), inputs=arrivals, on_batch=counted).run()
    assert usage is not None, "the service never said it was ready"
    return count, usage.stop()


def run_child(mode: str, home: Path, inputs: Path) -> dict:
    fresh_state(home)
    result = subprocess.run(
        [sys.executable, __file__, "--child", mode, str(home), str(inputs)],
        capture_output=True, text=True, check=True, cwd=REPO,
    )  # fmt: skip
    return json.loads(result.stdout.strip().splitlines()[-1])


def fresh_state(home: Path) -> None:
    for name in ("library", "inbox", "staging"):
        shutil.rmtree(home / name, ignore_errors=True)
    (home / "journal.jsonl").unlink(missing_ok=True)
    (home / "inbox").mkdir()
    (home / "staging").mkdir()


# -- decoders ------------------------------------------------------------------------------------


def decoder_comparison(photos: Path, spec_resize: int) -> dict[str, float] | None:
    """Decode to at least `spec_resize` on the shorter side, one thread, same files."""
    try:
        import simplejpeg
    except ImportError:
        return None
    from PIL import Image
    from sortbox.daemon.sorting.preprocess import decode_rgb

    datas = [p.read_bytes() for p in sorted(photos.iterdir())[:40]]

    def pillow(data: bytes) -> tuple[int, int]:
        return decode_rgb(data, spec_resize, 10**9).size

    def turbo(data: bytes) -> tuple[int, int]:
        pixels = simplejpeg.decode_jpeg(
            data, colorspace="RGB", min_height=spec_resize, min_width=spec_resize
        )
        return Image.fromarray(pixels).size

    rates = {}
    for name, decode in (("pillow draft", pillow), ("simplejpeg", turbo)):
        decode(datas[0])
        started = time.perf_counter()
        for data in datas:
            decode(data)
        rates[name] = len(datas) / (time.perf_counter() - started)
    return rates


# -- the real daemon: drops, latency, scale -------------------------------------------------------


class Daemon:
    """`sortbox run` as a subprocess, with its journal followed line by line."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.journal = home / "journal.jsonl"
        self.seen_at: dict[str, float] = {}
        self._stop = threading.Event()
        self._offset = self.journal.stat().st_size if self.journal.exists() else 0
        notify_path = home / "notify.sock"
        notify_path.unlink(missing_ok=True)
        self._notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._notify.bind(str(notify_path))
        started = time.monotonic()
        self.process = subprocess.Popen(
            [*SORTBOX, "run", "--config", str(home / "config.toml")],
            cwd=REPO,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "NOTIFY_SOCKET": str(notify_path)},
        )
        self.ready_s = self._wait_ready(started)
        self._reader = threading.Thread(target=self._tail, daemon=True)
        self._reader.start()

    def _wait_ready(self, started: float) -> float:
        self._notify.settimeout(120)
        while True:
            message = self._notify.recv(4096).decode()
            if "READY=1" in message:
                return time.monotonic() - started

    def _tail(self) -> None:
        while not self.journal.exists():
            time.sleep(0.01)
        with self.journal.open("rb") as fh:
            fh.seek(self._offset)
            while not self._stop.is_set():
                line = fh.readline()
                if not line.endswith(b"\n"):
                    if line:
                        fh.seek(-len(line), os.SEEK_CUR)
                    time.sleep(0.002)
                    continue
                event = json.loads(line)
                if "src" in event:
                    self.seen_at.setdefault(event["src"], time.monotonic())

    def wait_for(self, count: int, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while len(self.seen_at) < count:
            if time.monotonic() > deadline or self.process.poll() is not None:
                return False
            time.sleep(0.02)
        return True

    def rss_mb(self, field: str = "VmRSS") -> float:
        return vm_mb(self.process.pid, field)

    def stop(self) -> None:
        self._stop.set()
        self.process.terminate()
        self.process.wait(timeout=60)
        self._notify.close()


def stage(photos: list[Path], home: Path, prefix: str) -> list[tuple[Path, Path]]:
    """Copies on the inbox's filesystem, ready to be renamed in: (staged, final name)."""
    moves = []
    for n, photo in enumerate(photos):
        staged = home / "staging" / f"{prefix}{n:06}{photo.suffix}"
        os.link(photo, staged) if same_fs(photo, home) else shutil.copyfile(photo, staged)
        moves.append((staged, home / "inbox" / staged.name))
    return moves


def same_fs(a: Path, b: Path) -> bool:
    return a.stat().st_dev == b.stat().st_dev


def dropped_at_once(home: Path, photos: list[Path]) -> dict:
    fresh_state(home)
    moves = stage(photos, home, "drop-")
    daemon = Daemon(home)
    try:
        started = time.monotonic()
        usage = Usage(daemon.process.pid)
        for staged, final in moves:
            os.rename(staged, final)
        handled = daemon.wait_for(len(moves), 600)
        elapsed = max(daemon.seen_at.values()) - started
        usage.stop(wall_s=elapsed)  # the CPU read a poll later: the daemon is idle by then
        peak = daemon.rss_mb("VmHWM")
    finally:
        daemon.stop()
    return {
        "handled": handled,
        "per_second": len(moves) / elapsed,
        "peak_rss_mb": peak,
        **usage.figures(len(moves)),
    }


def latency(home: Path, photos: list[Path], rate: float, how: str) -> dict:
    """Files arriving complete at a steady rate: renamed within the inbox, moved in from a
    folder outside it, or written in place by one writer that then closes them. Latency:
    complete in the inbox -> journal line durable."""
    fresh_state(home)
    daemon = Daemon(home)
    complete_at: dict[str, float] = {}
    try:
        next_at = time.monotonic()
        for n, photo in enumerate(photos):
            time.sleep(max(0.0, next_at - time.monotonic()))
            next_at += 1.0 / rate
            name = f"arrival-{n:04}.jpg"
            if how == "renamed":
                hidden = home / "inbox" / f".{name}.part"  # ignored until renamed, like a browser
                shutil.copyfile(photo, hidden)
                os.rename(hidden, home / "inbox" / name)
            elif how == "moved":  # `mv ~/Downloads/x.jpg inbox/`, a file manager's move
                outside = home / "staging" / name
                shutil.copyfile(photo, outside)
                os.rename(outside, home / "inbox" / name)
            else:
                shutil.copyfile(photo, home / "inbox" / name)  # open, write, close
            complete_at[name] = time.monotonic()
        daemon.wait_for(len(photos), 120)
    finally:
        daemon.stop()
    waits = sorted(daemon.seen_at[k] - complete_at[k] for k in complete_at if k in daemon.seen_at)
    return {
        "handled": len(waits),
        "files": len(photos),
        "p50_ms": 1000 * statistics.median(waits),
        "p99_ms": 1000 * waits[min(len(waits) - 1, round(0.99 * (len(waits) - 1)))],
    }


def scale(home: Path, photos: list[Path], drop: int, further: int, say: Callable) -> dict:
    """`drop` files at once, then `further` more in drops of the same size; RSS after each;
    then a restart with every one of them done."""
    fresh_state(home)
    result: dict = {}
    daemon = Daemon(home)
    try:
        rss_after = []
        total = 0
        for n, start in enumerate(range(0, drop + further, drop)):
            chunk = photos[start : start + drop]
            moves = stage(chunk, home, f"s{n:02}-")
            began = time.monotonic()
            for staged, final in moves:
                os.rename(staged, final)
            total += len(moves)
            if not daemon.wait_for(total, 3600):
                raise SystemExit(f"only {len(daemon.seen_at)} of {total} files were journaled")
            seconds = time.monotonic() - began
            time.sleep(2)  # RSS of the daemon idle again, as `top` shows it between imports
            rss_after.append(daemon.rss_mb())
            if n == 0:
                result["drop_peak_rss_mb"] = daemon.rss_mb("VmHWM")
                result["drop_per_second"] = len(moves) / seconds
            say(
                f"  {total} files journaled; RSS {rss_after[-1]:.0f} MB ({len(moves) / seconds:.0f}/s)"
            )
        result["rss_after_mb"] = rss_after
        result["peak_rss_mb"] = daemon.rss_mb("VmHWM")
    finally:
        daemon.stop()
    result["done_files"] = total
    restarted = Daemon(home)
    result["restart_ready_s"] = restarted.ready_s
    restarted.stop()
    return result


# -- main ----------------------------------------------------------------------------------------


def prepare_home(workdir: Path, model: Path | None) -> Path:
    """A sortbox home with the default model, or with a copy of the published model `model`
    (a version folder from some models_dir) as its only one."""
    home = workdir / ("home" if model is None else f"home-{model.name}")
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(
        'inbox = "inbox"\nlibrary = "library"\njournal = "journal.jsonl"\nmodels_dir = "models"\n'
        "audit_rate = 0.0\ncreate_folders = true\n"
    )
    if model is not None and not (home / "models" / model.name).exists():
        shutil.copytree(model, home / "models" / model.name)
        (home / "models" / "current").symlink_to(model.name)
    if not (home / "models" / "current").exists():
        subprocess.run(
            [*SORTBOX, "init", "--config", str(home / "config.toml")], cwd=REPO, check=True
        )
    return home


def describe_model(home: Path) -> str:
    from sortbox.daemon.sorting.manifest import current_version, read_manifest

    version = current_version(home / "models")
    manifest = read_manifest(home / "models" / str(version))
    runs = "INT8" if manifest.int8 else "float"
    return f"{version} ({manifest.kind}, {manifest.backbone}, {runs} in the daemon; naive: float)"


PARTS = ("throughput", "latency", "scale")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workdir", type=Path, default=REPO / ".bench")
    parser.add_argument("--photos", type=int, default=120, help="12-megapixel JPEGs")
    parser.add_argument(
        "--rounds", type=int, default=5, help="throughput rounds (ceiling, sort, run each)"
    )
    parser.add_argument("--rate", type=float, default=5.0, help="arrivals per second (latency)")
    parser.add_argument("--drop", type=int, default=10_000, help="files dropped at once (scale)")
    parser.add_argument("--further", type=int, default=50_000, help="files after that (scale)")
    parser.add_argument(
        "--model",
        type=Path,
        help="a published model folder (models_dir/<version>) to use instead of the default one",
    )
    parser.add_argument(
        "--parts",
        default=",".join(PARTS),
        help=f"which measurements to run, comma-separated (default: all of {','.join(PARTS)})",
    )
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    if not parts <= set(PARTS):
        parser.error(f"--parts: choose from {', '.join(PARTS)}")
    if args.child:
        mode, home, inputs = args.child
        print(json.dumps(child(mode, Path(home), Path(inputs))))
        return

    def say(line: str = "") -> None:
        print(line, flush=True)

    workdir = args.workdir.absolute()
    home = prepare_home(workdir, args.model.absolute() if args.model else None)
    photos = camera_photos(workdir, args.photos)
    settings = load_settings(home / "config.toml")
    say(
        f"machine: {os.cpu_count()} CPUs, {usable_cpus()} usable; {settings.decode_workers} "
        f"decoder and {settings.inference_threads} model threads; model: {describe_model(home)}"
    )
    say(f"pictures: {args.photos} JPEGs, 4032x3024, quality 90, sensor-like noise\n")

    if "throughput" in parts:
        print_throughput(home, photos, args.rounds, say)
    if "latency" in parts:
        print_latency(home, sorted(photos.iterdir())[:60], args.rate, say)
    if "scale" in parts and args.drop:
        print_scale(workdir, home, args.drop, args.further, say)
    fresh_state(home)


def print_latency(home: Path, photos: list[Path], rate: float, say: Callable) -> None:
    say(f"\nlatency, complete in the inbox -> journal line durable, {rate:g} arrivals/s:")
    titles = {
        "renamed": "renamed within the inbox",
        "moved": "moved in from another folder",
        "closed": "written in place, closed",
    }
    for how, title in titles.items():
        figures = latency(home, photos, rate, how)
        say(
            f"  {title:30} "
            f"p50 {figures['p50_ms']:4.0f} ms   p99 {figures['p99_ms']:4.0f} ms   "
            f"({figures['handled']}/{figures['files']} handled)"
        )


def print_scale(workdir: Path, home: Path, drop: int, further: int, say: Callable) -> None:
    say(f"\nscale: {drop} small photos at once, then {further} more")
    small = small_photos(workdir, drop + further)
    figures = scale(home, sorted(small.iterdir()), drop, further, say)
    rss = figures["rss_after_mb"]
    growth = (max(rss[1:]) - rss[0]) / rss[0] if len(rss) > 1 else 0.0
    say(
        f"  {drop} dropped at once: all journaled at {figures['drop_per_second']:.0f}/s, "
        f"peak RSS {figures['drop_peak_rss_mb']:.0f} MB"
    )
    say(f"  RSS across {further} more: {rss[0]:.0f} -> {max(rss):.0f} MB ({growth:+.1%})")
    say(
        f"  restart with {figures['done_files']} done files: ready in "
        f"{figures['restart_ready_s']:.2f} s"
    )


def print_throughput(home: Path, photos: Path, rounds: int, say: Callable) -> None:
    """Each round runs the ceiling, `sort` and `run` back to back, and the ratios are taken
    within a round: on a shared machine the CPU's speed drifts by ±30 % from one minute to
    the next, so figures from different minutes must not be divided by each other."""
    for photo in photos.iterdir():  # from the page cache for everyone, the first one too
        photo.read_bytes()
    naive = run_child("naive", home, photos)  # 25 s a run, and never near the others
    measured: dict[str, list[dict]] = {"limit": [], "ceiling": [], "sort": [], "run": []}
    for _ in range(rounds):
        measured["limit"].append(run_child("limit", home, photos))
        measured["ceiling"].append(run_child("ceiling", home, photos))
        measured["sort"].append(run_child("sort", home, photos))
        measured["run"].append(dropped_at_once(home, sorted(photos.iterdir())))
    limits = measured["limit"]
    say(f"throughput: {rounds} rounds; img/s as the median and the range of the rounds,")
    say("'of limit' and 'of ceiling' as the medians of the ratios within each round")
    say(
        f"two-core limit: {statistics.median(x['cores'] for x in limits)} cores / (decode "
        f"{statistics.median(x['decode_ms'] for x in limits):.1f} ms + infer "
        f"{statistics.median(x['infer_ms'] for x in limits):.1f} ms), single-threaded CPU "
        "time per picture, batches of 16"
    )
    say(
        "left out of it, and done by any sorter that keeps a checked, durable copy: hashing "
        f"{statistics.median(x['hash_ms'] for x in limits):.1f} ms and the copy "
        f"{statistics.median(x['copy_ms'] for x in limits):.1f} ms (around the page cache, "
        "fsynced); the limit with them is the last column\n"
    )
    say(
        f"{'':34} {'img/s':>7} {'range':>12} {'of limit':>9} {'of ceiling':>11} "
        f"{'vs naive':>9} {'peak RSS':>9} {'of limit with copy':>19}"
    )
    say(
        f"{'naive (a beginner reference)':34} {naive['per_second']:7.1f} {'':12} {'':9} "
        f"{'':11} {1:8.1f}x {naive['peak_rss_mb']:7.0f}MB"
    )
    for title, mode in (
        ("two-core limit", "limit"),
        ("ceiling: decode + infer only", "ceiling"),
        ("sortbox sort (ready to done)", "sort"),
        ("sortbox run, all dropped at once", "run"),
    ):
        rates = [figures["per_second"] for figures in measured[mode]]
        of_ceiling = statistics.median(
            figures["per_second"] / top["per_second"]
            for figures, top in zip(measured[mode], measured["ceiling"], strict=True)
        )
        of_limit = statistics.median(
            figures["per_second"] / top["per_second"]
            for figures, top in zip(measured[mode], limits, strict=True)
        )
        rate = statistics.median(rates)
        spread = f"{min(rates):.1f}-{max(rates):.1f}"
        peak = max(figures["peak_rss_mb"] for figures in measured[mode])
        of_full_limit = statistics.median(
            figures["per_second"] / top["with_copy_per_second"]
            for figures, top in zip(measured[mode], limits, strict=True)
        )
        say(
            f"{title:34} {rate:7.1f} {spread:>12} {of_limit:8.0%} {of_ceiling:10.0%} "
            f"{rate / naive['per_second']:8.1f}x {peak:7.0f}MB {of_full_limit:18.0%}"
        )

    print_time_spent(measured, say)

    rates = decoder_comparison(photos, 256)
    if rates is None:
        say("\ndecoders: pip install simplejpeg to compare it with Pillow's draft mode")
    else:
        pillow, turbo = rates["pillow draft"], rates["simplejpeg"]
        say(
            f"\ndecoding to >= 256 px, 1 thread: Pillow draft {pillow:.1f}/s, "
            f"simplejpeg {turbo:.1f}/s ({turbo / pillow:.2f}x)"
        )


def print_time_spent(measured: dict[str, list[dict]], say: Callable) -> None:
    """Each mode's share of the limit, taken apart within each round: the limit's CPU per
    picture over the CPU the mode used per picture (work beyond decoding and inference), times
    the share of the cores it kept busy (waits, and time the hypervisor gave to other
    machines: "stolen"). Each column is the median of its rounds; "of limit" is the same
    figure as in the table above."""
    limits = measured["limit"]
    limit_ms = [x["decode_ms"] + x["infer_ms"] for x in limits]
    copy_ms = statistics.median(x["hash_ms"] + x["copy_ms"] for x in limits)
    say("\nwhere the time goes: of limit = limit's CPU a picture / CPU used a picture x cores busy")
    say(
        f"{'':34} {'CPU/picture':>12} {'beyond limit':>13} {'limit/CPU':>10} {'cores busy':>11} "
        f"{'of limit':>9} {'stolen':>7}"
    )
    say(
        f"{'two-core limit':34} {statistics.median(limit_ms):9.1f} ms   "
        f"(hashing and the copy: {copy_ms:.1f} ms)"
    )
    for title, mode in (
        ("ceiling: decode + infer only", "ceiling"),
        ("sortbox sort (ready to done)", "sort"),
        ("sortbox run, all dropped at once", "run"),
    ):
        rounds = [
            {
                "cpu_ms": x["cpu_ms"],
                "beyond": x["cpu_ms"] - limit,
                "limit_share": limit / x["cpu_ms"],
                "busy": x["busy"],
                "of_limit": limit / x["cpu_ms"] * x["busy"],
                "stolen": x["stolen"],
                **{part: x["parts_ms"].get(part, 0.0) for part in PARTS_OF_A_SORTBOX},
            }
            for x, limit in zip(measured[mode], limit_ms, strict=True)
        ]
        m = {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
        say(
            f"{title:34} {m['cpu_ms']:9.1f} ms {m['beyond']:+10.1f} ms {m['limit_share']:10.0%} "
            f"{m['busy']:10.0%} {m['of_limit']:8.0%} {m['stolen']:6.1%}"
        )
        if mode != "ceiling":  # its threads are a pool's, without names
            parts = ", ".join(f"{part} {m[part]:.1f}" for part in PARTS_OF_A_SORTBOX)
            say(f"{'':36}by part, ms a picture: {parts}")
    say(
        f"{'':36}(decoders: read, hash, decode; main loop: the model; placer: copy, journal;\n"
        f"{'':37}other: watchdog's threads, and ONNX Runtime's when it has more than one)"
    )


if __name__ == "__main__":
    main()
