"""`sortbox sort --engine ray` on a real local Ray cluster: a head on 127.0.0.1 plus a second
node joined with `ray start --address`, standing in for a second machine."""

from __future__ import annotations

import math
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import (
    CLOTHING10,
    Daemon,
    Home,
    make_home,
    publish_rgb_model,
    sortbox,
    wait_until,
)

pytest.importorskip("ray", reason="the cluster extra is not installed: pip install -e '.[cluster]'")
RAY = Path(sys.executable).with_name("ray")


@dataclass
class Cluster:
    address: str
    env: dict[str, str]
    worker_port: int

    def kill_second_node(self) -> None:
        """What a machine that loses power looks like: its raylet and workers die at once."""
        found = subprocess.run(
            ["pgrep", "-f", f"node_manager_port={self.worker_port}"],
            capture_output=True,
            text=True,
        ).stdout.split()
        assert found, "the second node's raylet is not running"
        for pid in found:
            subprocess.run(["pkill", "-9", "-P", pid])
            os.kill(int(pid), signal.SIGKILL)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    home = tmp_path_factory.mktemp("ray-home")
    # Ray's session folder holds unix sockets: keep its path short
    temp_dir = Path(f"/tmp/sbray-{os.getpid()}")
    env = {
        **os.environ,
        "HOME": str(home),  # Ray keeps an auth token in ~/.ray: one per test cluster
        "RAY_USAGE_STATS_ENABLED": "0",
        # notice a lost node within seconds rather than the default half minute
        "RAY_health_check_period_ms": "500",
        "RAY_health_check_failure_threshold": "4",
        "RAY_health_check_initial_delay_ms": "500",
    }
    port, worker_port = free_port(), free_port()
    common = [
        "--temp-dir", str(temp_dir), "--disable-usage-stats", "--node-ip-address", "127.0.0.1",
    ]  # fmt: skip
    subprocess.run(
        [RAY, "start", "--head", "--port", str(port), "--num-cpus", "1",
         "--include-dashboard", "false", *common],
        env=env, check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    subprocess.run(
        [RAY, "start", "--address", f"127.0.0.1:{port}", "--num-cpus", "1",
         "--node-manager-port", str(worker_port), *common],
        env=env, check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    try:
        yield Cluster(f"127.0.0.1:{port}", env, worker_port)
    finally:
        subprocess.run([RAY, "stop", "--force"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(temp_dir, ignore_errors=True)


def photos(count: int) -> list[Path]:
    files = sorted(CLOTHING10.glob("*/*.jpg"))
    if len(files) < count:
        pytest.skip(f"real photos missing: {CLOTHING10}")
    return files[:: len(files) // count][:count]


def archive(tmp_path: Path, count: int) -> Path:
    folder = tmp_path / "archive"
    for n, photo in enumerate(photos(count)):
        target = folder / f"{n % 4}" / photo.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(photo, target)
    return folder


def ray_home(tmp_path: Path, name: str) -> Home:
    (tmp_path / name).mkdir()
    home = make_home(tmp_path / name, audit_rate=0.05)
    publish_rgb_model(home.models, "v1")
    return home


def ray_sort(home: Home, folder: Path, cluster: Cluster, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "sortbox.daemon.cli", "sort", str(folder),
         "--engine", "ray", "--address", cluster.address, "--config", str(home.config), *extra],
        env=cluster.env, cwd=home.root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def finish(process: subprocess.Popen, timeout: float = 240) -> tuple[int, str]:
    _, stderr = process.communicate(timeout=timeout)
    return process.returncode, stderr


def decisions(home: Home) -> dict[str, tuple[str, str | None, float | None, str]]:
    return {
        e["src"]: (e["event"], e.get("label"), e.get("confidence"), e["dest"].split("/")[0])
        for e in home.file_events()
    }


def assert_exactly_once(home: Home, expected_files: int) -> None:
    events = home.file_events()
    assert len({e["src"] for e in events}) == expected_files
    placed = [e for e in events if e["event"] in ("sorted", "review", "rejected")]
    assert len(placed) == len({e["sha256"] for e in placed}), "a content was placed twice"
    assert len(home.library_files()) == len(placed)


def test_same_decisions_as_the_local_engine_and_exactly_once(
    tmp_path: Path, cluster: Cluster
) -> None:
    folder = archive(tmp_path, 60)
    local, distributed = ray_home(tmp_path, "local"), ray_home(tmp_path, "ray")
    assert sortbox("sort", str(folder), config=local.config).returncode == 0

    code, stderr = finish(ray_sort(distributed, folder, cluster, "--workers", "2"))
    assert code == 0, stderr
    assert "images/s on 2 workers" in stderr
    ours, theirs = decisions(distributed), decisions(local)
    assert ours.keys() == theirs.keys() and len(ours) == 60
    for src, (event, label, confidence, where) in ours.items():
        local_event, local_label, local_confidence, local_where = theirs[src]
        assert (event, label, where) == (local_event, local_label, local_where), src
        assert confidence is None or math.isclose(confidence, local_confidence, abs_tol=1e-5)
    assert_exactly_once(distributed, 60)

    # again: everything is done, nothing is placed twice
    code, stderr = finish(ray_sort(distributed, folder, cluster))
    assert code == 0 and "60 done before" in stderr, stderr
    assert len(distributed.file_events()) == 60


def test_a_killed_driver_resumes_from_the_journal(tmp_path: Path, cluster: Cluster) -> None:
    folder = archive(tmp_path, 120)
    home = ray_home(tmp_path, "ray")
    process = ray_sort(home, folder, cluster, "--workers", "2")
    wait_until(lambda: len(home.file_events()) >= 8, 120, "the first batches placed")
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert len(home.file_events()) < 120, "finished before it could be killed"

    code, stderr = finish(ray_sort(home, folder, cluster, "--workers", "2"))
    assert code == 0, stderr
    assert_exactly_once(home, 120)


def test_a_lost_worker_node_does_not_stop_the_backfill(tmp_path: Path, cluster: Cluster) -> None:
    folder = archive(tmp_path, 160)
    home = ray_home(tmp_path, "ray")
    # batch_size 2: many small tasks, so the node dies with work in flight
    with home.config.open("a") as config:
        config.write("batch_size = 2\n")
    process = ray_sort(home, folder, cluster, "--workers", "2")
    wait_until(lambda: len(home.file_events()) >= 6, 120, "the first batches placed")
    cluster.kill_second_node()
    placed_when_killed = len(home.file_events())
    code, stderr = finish(process)
    assert code == 0, stderr
    print(f"node killed after {placed_when_killed} of 160 files; {stderr.splitlines()[-1]}")
    assert placed_when_killed < 160
    assert_exactly_once(home, 160)


def test_a_daemon_beside_the_backfill_never_doubles_a_picture(
    tmp_path: Path, cluster: Cluster
) -> None:
    home = ray_home(tmp_path, "ray")
    shutil.rmtree(home.inbox)
    shutil.copytree(archive(tmp_path, 80), home.inbox)
    daemon = Daemon(home).start()  # its start-up rescan takes the same 80 files
    try:
        code, stderr = finish(ray_sort(home, home.inbox, cluster, "--workers", "2"))
        assert code == 0, stderr
        wait_until(lambda: len({e["src"] for e in home.file_events()}) == 80, 60, "all 80")
    finally:
        daemon.stop()
    placed = [e for e in home.file_events() if e["event"] in ("sorted", "review")]
    assert len(placed) == len({e["sha256"] for e in placed}) == 80, "a content placed twice"
    assert len(home.library_files()) == 80
