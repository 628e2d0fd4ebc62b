"""Local engine against Ray engine on the same real photos, in one run.

    python benchmarks/bench_ray.py DATASET [--limit 2000] [--workdir .bench-ray]

DATASET is a folder of photos, e.g. clothing-dataset-small (3,783 CC0 photos):
    git clone https://github.com/alexeygrigorev/clothing-dataset-small

Each engine sorts the same files into a fresh home with the real default model
(`sortbox init`, needs the trainer extra). Prints images/s for `--engine local`, and for
`--engine ray` with 1 and 2 workers on a local Ray cluster started by the run, Ray's overhead
per file against the local engine, and the workers' shares. On a 2-core machine Ray is not
expected to be faster; what matters is that its overhead is small and it scales with workers.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SORTBOX = [sys.executable, "-m", "sortbox.daemon.cli"]
RAY = str(Path(sys.executable).with_name("ray"))
IMAGES = (".jpg", ".jpeg", ".png")


def pick(dataset: Path, limit: int, folder: Path) -> int:
    files = sorted(p for p in dataset.rglob("*") if p.suffix.lower() in IMAGES)[:limit]
    for n, photo in enumerate(files):
        target = folder / f"{n // 500:03}" / f"{n:05}{photo.suffix.lower()}"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(photo, target)
    return len(files)


def make_home(root: Path, models: Path | None) -> Path:
    root.mkdir(parents=True)
    config = root / "config.toml"
    config.write_text(
        'inbox = "inbox"\nlibrary = "library"\njournal = "journal.jsonl"\nmodels_dir = "models"\n'
        "create_folders = true\n"
    )
    if models is not None:
        shutil.copytree(models, root / "models", symlinks=True)
    return config


def timed_sort(config: Path, photos: Path, env: dict[str, str], *extra: str) -> tuple[float, str]:
    started = time.monotonic()
    result = subprocess.run(
        [*SORTBOX, "sort", str(photos), "--config", str(config), *extra],
        capture_output=True, text=True, env=env, cwd=config.parent,
    )  # fmt: skip
    elapsed = time.monotonic() - started
    if result.returncode != 0:
        sys.exit(f"sort failed ({' '.join(extra)}):\n{result.stderr[-2000:]}")
    return elapsed, result.stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--limit", type=int, default=2000)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-ray-", dir=args.workdir))
    photos = work / "photos"
    count = pick(args.dataset, args.limit, photos)
    print(f"{count} photos from {args.dataset}; {os.cpu_count()} CPU cores")
    seed = make_home(work / "seed", None)
    subprocess.run([*SORTBOX, "init", "--config", str(seed)], check=True, capture_output=True)

    env = {**os.environ, "HOME": str(work), "RAY_USAGE_STATS_ENABLED": "0"}
    ray_tmp = Path(f"/tmp/sbray-bench-{os.getpid()}")
    subprocess.run(
        [RAY, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", "6399",
         "--include-dashboard", "false", "--temp-dir", str(ray_tmp), "--disable-usage-stats"],
        check=True, capture_output=True, env=env,
    )  # fmt: skip
    try:
        rows = []
        seconds, _ = timed_sort(make_home(work / "local", seed.parent / "models"), photos, env)
        rows.append(("local", seconds, ""))
        for workers in (1, 2):
            config = make_home(work / f"ray{workers}", seed.parent / "models")
            seconds, stderr = timed_sort(
                config, photos, env, "--engine", "ray", "--address", "127.0.0.1:6399",
                "--workers", str(workers),
            )  # fmt: skip
            summary = next(line for line in stderr.splitlines() if line.startswith("ray: "))
            rows.append((f"ray, {workers} worker{'s' * (workers > 1)}", seconds, summary))
    finally:
        subprocess.run([RAY, "stop", "--force"], capture_output=True, env=env)
        shutil.rmtree(ray_tmp, ignore_errors=True)

    local_seconds = rows[0][1]
    print(f"\n{'engine':16} {'wall s':>8} {'images/s':>9} {'vs local':>9} {'overhead/file':>14}")
    for name, seconds, _ in rows:
        overhead_ms = (seconds - local_seconds) / count * 1000
        print(
            f"{name:16} {seconds:8.1f} {count / seconds:9.1f} {local_seconds / seconds:8.2f}x "
            f"{overhead_ms:+11.1f} ms"
        )
    print("\n(wall time includes start-up: model load, listing, and for Ray joining the cluster)")
    for name, _, summary in rows[1:]:
        inner = re.search(r"= ([\d.]+) images/s", summary)
        print(f"{name}: {summary}  [inner rate {inner[1] if inner else '?'} images/s]")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
