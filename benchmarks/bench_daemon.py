"""Benchmark the sorting pipeline against a naive baseline, on real photos.

    python benchmarks/bench_daemon.py [--workdir .bench] [--large 120] [--small 240]

Prints, for the same pictures in the same run:
  * throughput (images/s) of sortbox's pipeline (draft decoding in parallel with batched
    inference, atomic copies, fsynced journal) and of a naive baseline (one file at a time,
    full-size Pillow decode, one ONNX Runtime call per image, plain copy): 12-megapixel JPEGs
    alone, and a mix with ordinary photos;
  * latency from "file complete in the inbox" to "journal line on disk" (p50, p99) for the real
    daemon (`sortbox run`) with 12-megapixel JPEGs arriving at 5 per second;
  * peak RSS of each.

Needs the trainer extra (for `sortbox init`, the real default model). Large photos come from
Debian's plasma-workspace-wallpapers package (apt-get download, dpkg -x), cut into distinct
4240x2832 crops; ordinary ones from ../shared/data/clothing10.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CLOTHING10 = REPO.parent / "shared" / "data" / "clothing10"
WALLPAPERS = "plasma-workspace-wallpapers"
SORTBOX = [sys.executable, "-m", "sortbox.daemon.cli"]


# -- the pictures --------------------------------------------------------------------------------


def large_photos(workdir: Path, count: int) -> Path:
    from PIL import Image

    folder = workdir / f"large-{count}"
    if folder.is_dir() and len(list(folder.iterdir())) == count:
        return folder
    sources = wallpaper_sources(workdir)
    folder.mkdir(parents=True, exist_ok=True)
    # 4240 x 2832 = 12.0 megapixels (a common 3:2 camera size), cut at different places
    # from the 5120 x 2880 originals so every file is a distinct real photo
    width, height = 4240, 2832
    offsets = [(x, y) for y in (0, 24, 48) for x in (0, 220, 440, 660, 880)]
    made = 0
    for x, y in offsets:
        for source in sources:
            if made == count:
                return folder
            with Image.open(source) as image:
                crop = image.convert("RGB").crop((x, y, x + width, y + height))
                crop.save(folder / f"photo-{made:03}.jpg", quality=92)
            made += 1
    if made < count:
        raise SystemExit(f"only {made} distinct large photos available")
    return folder


def wallpaper_sources(workdir: Path) -> list[Path]:
    unpacked = workdir / "wallpapers"
    if not unpacked.is_dir():
        download = workdir / "deb"
        download.mkdir(parents=True, exist_ok=True)
        subprocess.run(["apt-get", "download", WALLPAPERS], cwd=download, check=True)
        deb = next(download.glob("*.deb"))
        subprocess.run(["dpkg", "-x", str(deb), str(unpacked)], check=True)
    return sorted(unpacked.rglob("5120x2880.*"))


def small_photos(count: int) -> list[Path]:
    per_class = count // 10
    return [
        p
        for c in sorted(CLOTHING10.iterdir())
        if c.is_dir()
        for p in sorted(c.iterdir())[:per_class]
    ]


# -- one measurement per child process, so peak RSS is its own -----------------------------------


def child(mode: str, home: Path, inputs: Path) -> dict:
    from sortbox.daemon.settings import load_settings

    settings = load_settings(home / "config.toml")
    started = time.perf_counter()
    if mode == "sortbox":
        from sortbox.daemon.intake import collect
        from sortbox.daemon.service import Service

        count = 0

        def counted(events: list, finished: int) -> None:
            nonlocal count
            count += len(events)

        Service(
            settings, inputs=collect([inputs], settings.library, settings.ignore), on_batch=counted
        ).run()
    else:
        count = naive_sort(settings, inputs)
    elapsed = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "images": count,
        "seconds": elapsed,
        "per_second": count / elapsed,
        "peak_rss_mb": peak_mb,
    }


def naive_sort(settings: object, inputs: Path) -> int:
    """What a first attempt looks like: full decode, one inference per picture, plain copy."""
    import numpy as np
    from PIL import Image, ImageOps
    from sortbox.daemon.classify import load_current
    from sortbox.daemon.decide import decide
    from sortbox.daemon.preprocess import normalise, resize_and_crop

    classifier = load_current(settings.models_dir, settings.inference_threads)  # type: ignore[attr-defined]
    spec = classifier.manifest.preprocessing
    count = 0
    for path in sorted(p for p in inputs.rglob("*") if p.is_file()):
        with Image.open(path) as image:
            rgb = ImageOps.exif_transpose(image).convert("RGB")  # full-size decode
        pixels = normalise(resize_and_crop(rgb, spec), spec)[np.newaxis]
        decision = decide(classifier.logits(pixels)[0], classifier.manifest)
        target = settings.library / decision.folder  # type: ignore[attr-defined]
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target / path.name)
        count += 1
    return count


def run_child(mode: str, home: Path, inputs: Path) -> dict:
    fresh_state(home)
    result = subprocess.run(
        [sys.executable, __file__, "--child", mode, str(home), str(inputs)],
        capture_output=True, text=True, check=True, cwd=REPO,
    )  # fmt: skip
    return json.loads(result.stdout.strip().splitlines()[-1])


def fresh_state(home: Path) -> None:
    shutil.rmtree(home / "library", ignore_errors=True)
    shutil.rmtree(home / "inbox", ignore_errors=True)
    (home / "journal.jsonl").unlink(missing_ok=True)
    (home / "inbox").mkdir()


# -- latency: the real daemon, files arriving at a steady rate -----------------------------------


def latency(home: Path, photos: list[Path], rate: float) -> dict:
    fresh_state(home)
    journal = home / "journal.jsonl"
    daemon = subprocess.Popen(
        [*SORTBOX, "run", "--config", str(home / "config.toml")],
        cwd=REPO,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not (journal.exists() and '"event":"model"' in journal.read_text()):
            if time.monotonic() > deadline or daemon.poll() is not None:
                raise SystemExit("daemon did not start")
            time.sleep(0.05)
        complete_at: dict[str, float] = {}
        seen_at: dict[str, float] = {}
        stop = threading.Event()

        def tail() -> None:
            with journal.open("rb") as fh:
                while not stop.is_set():
                    line = fh.readline()
                    if not line.endswith(b"\n"):
                        if line:
                            fh.seek(-len(line), os.SEEK_CUR)
                        time.sleep(0.005)
                        continue
                    event = json.loads(line)
                    if "src" in event:
                        seen_at.setdefault(event["src"], time.monotonic())

        reader = threading.Thread(target=tail, daemon=True)
        reader.start()
        interval = 1.0 / rate
        next_at = time.monotonic()
        for n, photo in enumerate(photos):
            time.sleep(max(0.0, next_at - time.monotonic()))
            next_at += interval
            name = f"arrival-{n:03}.jpg"
            hidden = home / "inbox" / f".{name}.tmp"  # ignored until renamed, like rsync
            shutil.copyfile(photo, hidden)
            os.rename(hidden, home / "inbox" / name)
            complete_at[name] = time.monotonic()
        deadline = time.monotonic() + 60
        while len(seen_at) < len(photos) and time.monotonic() < deadline:
            time.sleep(0.05)
        stop.set()
        peak_mb = vm_hwm_mb(daemon.pid)
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)
    waits = sorted(seen_at[k] - complete_at[k] for k in complete_at if k in seen_at)
    return {
        "files": len(photos),
        "handled": len(waits),
        "p50_s": statistics.median(waits),
        "p99_s": waits[min(len(waits) - 1, round(0.99 * (len(waits) - 1)))],
        "max_s": waits[-1],
        "daemon_peak_rss_mb": peak_mb,
    }


def vm_hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# -- main ----------------------------------------------------------------------------------------


def prepare_home(workdir: Path) -> Path:
    home = workdir / "home"
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(
        'inbox = "inbox"\nlibrary = "library"\njournal = "journal.jsonl"\nmodels_dir = "models"\n'
    )
    if not (home / "models" / "current").exists():
        subprocess.run(
            [*SORTBOX, "init", "--config", str(home / "config.toml")], cwd=REPO, check=True
        )
    return home


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workdir", type=Path, default=REPO / ".bench")
    parser.add_argument("--large", type=int, default=120, help="12-megapixel JPEGs (up to 180)")
    parser.add_argument("--small", type=int, default=240, help="clothing10 photos")
    parser.add_argument("--rate", type=float, default=5.0, help="arrivals per second for latency")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, home, inputs = args.child
        print(json.dumps(child(mode, Path(home), Path(inputs))))
        return

    workdir = args.workdir.absolute()
    home = prepare_home(workdir)
    large = large_photos(workdir, args.large)
    mixed = Path(tempfile.mkdtemp(prefix="mixed-", dir=workdir))
    for photo in sorted(large.iterdir()):
        os.link(photo, mixed / photo.name)
    for photo in small_photos(args.small):
        shutil.copy(photo, mixed / f"{photo.parent.name}-{photo.name}")
    total = len(list(mixed.iterdir()))

    print(f"machine: {os.cpu_count()} CPUs; model: default EfficientNet-Lite0 (ONNX Runtime)\n")
    print(
        f"{'workload':36} {'sortbox img/s':>14} {'naive img/s':>12} {'ratio':>7} {'sortbox RSS':>12} {'naive RSS':>10}"
    )
    for title, inputs in (
        (f"{args.large} x 12-megapixel JPEG", large),
        (f"mixed: {total} photos", mixed),
    ):
        ours = run_child("sortbox", home, inputs)
        naive = run_child("naive", home, inputs)
        print(
            f"{title:36} {ours['per_second']:14.2f} {naive['per_second']:12.2f} "
            f"{ours['per_second'] / naive['per_second']:6.1f}x {ours['peak_rss_mb']:10.0f}MB {naive['peak_rss_mb']:8.0f}MB"
        )
    result = latency(home, sorted(large.iterdir())[:60], args.rate)
    print(
        f"\nlatency, `sortbox run` with 12-megapixel JPEGs arriving at {args.rate:g}/s "
        f"({result['handled']}/{result['files']} handled): p50 {result['p50_s'] * 1000:.0f} ms, "
        f"p99 {result['p99_s'] * 1000:.0f} ms, max {result['max_s'] * 1000:.0f} ms; "
        f"daemon peak RSS {result['daemon_peak_rss_mb']:.0f} MB"
    )
    shutil.rmtree(mixed)


if __name__ == "__main__":
    main()
