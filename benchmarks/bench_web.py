"""Figures for the review page (`sortbox web`): a queue of 10,000 pictures, thumbnails, memory.

    python benchmarks/bench_web.py PHOTOS_FOLDER [--queue 10000] [--thumbs 200]

PHOTOS_FOLDER holds real photos (e.g. ../shared/data/clothing10 or clothing-dataset-small);
they are copied into needs_review under sortbox names, over and over to make the queue, each
copy made distinct by a few bytes of trailer so its content hash is its own. Prints:
- the time to the whole HTML of /review (first look, and again) with that queue, and of /;
- thumbnail throughput: thumbnails made per second, one request at a time, and per CPU
  second of the server (so: per core), for the photos given and for 12-megapixel JPEGs;
- the time to file one picture (POST /api/file), one after another;
- the server's peak RSS.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def make_home(root: Path, photos: list[Path], queue: int) -> Path:
    library = root / "library"
    review = library / "needs_review"
    review.mkdir(parents=True)
    (root / "inbox").mkdir()
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from conftest import publish_rgb_model  # the tests' tiny real model

    publish_rgb_model(root / "models", "v1")
    lines = []
    for n in range(queue):
        data = photos[n % len(photos)].read_bytes() + n.to_bytes(4, "big")  # after EOI: same look
        sha = hashlib.sha256(data).hexdigest()
        name = f"photo{n:05}.{sha[:12]}.jpg"
        (review / name).write_bytes(data)
        top = sorted([0.2 + (n % 7) / 20, 0.3, 0.1], reverse=True)
        lines.append(
            json.dumps(
                {
                    "v": 1,
                    "ts": "2026-12-04T10:00:00.000Z",
                    "event": "review",
                    "src": name,
                    "root": str(root / "inbox"),
                    "sha256": sha,
                    "size": len(data),
                    "dest": f"needs_review/{name}",
                    "label": "red",
                    "confidence": top[0],
                    "top3": [["red", top[0]], ["green", top[1]], ["blue", top[2]]],
                    "model": "v1",
                    "reason": f"{top[0]:.2f} < 0.60 for red",
                }
            )
        )
    (root / "journal.jsonl").write_text("\n".join(lines) + "\n")
    config = root / "config.toml"
    config.write_text(
        'inbox = "inbox"\nlibrary = "library"\njournal = "journal.jsonl"\nmodels_dir = "models"\n'
    )
    return config


def get(port: int, token: str, path: str) -> tuple[int, bytes, float]:
    started = time.perf_counter()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    connection.request(
        "GET", path, headers={"Host": f"localhost:{port}", "Authorization": f"Bearer {token}"}
    )
    response = connection.getresponse()
    body = response.read()
    connection.close()
    return response.status, body, time.perf_counter() - started


def post(port: int, token: str, csrf: str, path: str, body: dict) -> tuple[int, float]:
    started = time.perf_counter()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    connection.request(
        "POST",
        path,
        body=json.dumps(body).encode(),
        headers={
            "Host": f"localhost:{port}",
            "Authorization": f"Bearer {token}",
            "X-CSRF-Token": csrf,
            "Content-Type": "application/json",
        },
    )
    response = connection.getresponse()
    response.read()
    connection.close()
    return response.status, time.perf_counter() - started


def camera_photos(folder: Path, count: int) -> list[str]:
    """12-megapixel JPEGs (4032x3024, q90, sensor-like noise) under sortbox names: the 12-hex
    hashes of their names."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    hashes = []
    y, x = np.mgrid[0:3024, 0:4032]
    for n in range(count):
        base = np.stack([(x * (n + 1)) % 256, (y * 2) % 256, (x + y) % 256], axis=-1)
        noisy = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype("uint8")
        path = folder / "camera.tmp"
        Image.fromarray(noisy).save(path, "JPEG", quality=90)
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        path.rename(folder / f"camera{n:03}.{sha[:12]}.jpg")
        hashes.append(sha[:12])
    return hashes


def thumbnails(port: int, token: str, pid: int, hashes: list[str], what: str) -> None:
    """Ask for each picture's thumbnail, one at a time; print the rate, and per server core."""
    cpu_before, started = cpu_seconds(pid), time.perf_counter()
    for hash12 in hashes:
        status, body, _ = get(port, token, f"/thumb/needs_review/{hash12}")
        assert status == 200, body[:200]
    wall = time.perf_counter() - started
    cpu = cpu_seconds(pid) - cpu_before
    print(
        f"{what}: {len(hashes)} in {wall:.2f} s = {len(hashes) / wall:.1f}/s one at a time; "
        f"{len(hashes) / cpu:.1f} per CPU second (per core)"
    )


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("photos", type=Path)
    parser.add_argument("--queue", type=int, default=10_000)
    parser.add_argument("--thumbs", type=int, default=200)
    parser.add_argument("--camera", type=int, default=20, help="12 MP JPEGs for thumbnails")
    args = parser.parse_args()
    photos = sorted(args.photos.rglob("*.jpg"))
    if not photos:
        sys.exit(f"no .jpg under {args.photos}")
    root = Path(tempfile.mkdtemp(prefix="bench-web-"))
    try:
        made = time.perf_counter()
        config = make_home(root, photos, args.queue)
        print(f"queue of {args.queue} pictures made in {time.perf_counter() - made:.1f} s")
        port = free_port()
        log = (root / "web.log").open("wb")
        server = subprocess.Popen(
            [sys.executable, "-m", "sortbox.daemon.cli", "web", "--port", str(port),
             "--config", str(config)],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 30
            while not re.search(rb"token=(\S+)", (root / "web.log").read_bytes()):
                if time.monotonic() > deadline or server.poll() is not None:
                    sys.exit((root / "web.log").read_text())
                time.sleep(0.05)
            token = re.search(rb"token=(\S+)", (root / "web.log").read_bytes())[1].decode()
            time.sleep(0.5)
            for attempt in ("first look", "again"):
                status, body, seconds = get(port, token, "/review")
                assert status == 200, body[:200]
                cards = body.count(b'class="card"')
                print(f"/review, {args.queue} waiting ({attempt}): {seconds * 1000:.0f} ms, "
                      f"{len(body) / 1024:.0f} KiB, {cards} cards on the page")  # fmt: skip
            status, body, seconds = get(port, token, "/")
            print(f"/ (dashboard): {seconds * 1000:.0f} ms")
            names = sorted(p.name for p in (root / "library" / "needs_review").iterdir())
            wanted = [n.split(".")[1] for n in names[: args.thumbs]]
            thumbnails(port, token, server.pid, wanted, "thumbnails made")
            started = time.perf_counter()
            for hash12 in wanted:
                get(port, token, f"/thumb/needs_review/{hash12}")
            wall = time.perf_counter() - started
            print(f"thumbnails cached: {len(wanted) / wall:.0f}/s")
            _, page, _ = get(port, token, "/review")
            csrf = re.search(rb'name="csrf" content="([0-9a-f]+)"', page)[1].decode()
            times = []
            for hash12 in wanted[:100]:
                body = {"pictures": [hash12], "from": "needs_review", "to": "red"}
                status, seconds = post(port, token, csrf, "/api/file", body)
                assert status == 200, status
                times.append(seconds)
            times.sort()
            print(f"filing one picture (POST /api/file, {len(times)} one after another): "
                  f"median {1000 * times[len(times) // 2]:.0f} ms, "
                  f"95th percentile {1000 * times[int(len(times) * 0.95)]:.0f} ms")  # fmt: skip
            if args.camera:
                big = camera_photos(root / "library" / "needs_review", args.camera)
                thumbnails(port, token, server.pid, big, "thumbnails of 12 MP JPEGs")
            print(f"server peak RSS: {peak_rss_mb(server.pid):.0f} MB")
        finally:
            server.terminate()
            server.wait(timeout=20)
            log.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
