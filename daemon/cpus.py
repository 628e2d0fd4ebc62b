"""How many CPUs this process may really use, for the thread counts set to "auto".

os.cpu_count() counts the machine's cores. A service is often given fewer: a CPU affinity
(`taskset`, systemd's CPUAffinity=) or a cgroup quota (systemd's CPUQuota=, a container's
`--cpus`). More busy threads than that only wait for each other: a quota's surplus threads
are throttled together, in stalls of up to a scheduling period (100 ms by default).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def usable_cpus(proc_cgroup: Path = Path("/proc/self/cgroup"), root: Path = CGROUP_ROOT) -> int:
    """The CPUs in this process's affinity, fewer if a cgroup quota allows less (rounded up)."""
    cpus = len(os.sched_getaffinity(0))
    quota = cgroup_cpu_quota(proc_cgroup, root)
    return max(1, min(cpus, math.ceil(quota))) if quota is not None else cpus


def cgroup_cpu_quota(proc_cgroup: Path, root: Path) -> float | None:
    """The tightest CPU quota (in CPUs) on this process's cgroup and its parents, cgroup v2
    or v1; None where there is none or it cannot be read."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    quotas = []
    for line in lines:
        if line.count(":") < 2:
            continue
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # v2: one hierarchy, cpu.max = "<quota> <period>" or "max ..."
            quotas += [_v2_quota(folder) for folder in _up_to(root, path)]
        elif "cpu" in controllers.split(","):  # v1: the cpu controller's own hierarchy
            mount = _v1_mount(root, controllers)
            if mount is not None:
                quotas += [_v1_quota(folder) for folder in _up_to(mount, path)]
    found = [quota for quota in quotas if quota is not None]
    return min(found) if found else None


def _up_to(mount: Path, path: str) -> list[Path]:
    """The cgroup's folder and its parents up to the mount. In a container the path from
    /proc names the host's hierarchy, which is not mounted there: then only the mount."""
    folder = mount / path.lstrip("/")
    folders = [mount]
    while folder != mount and folder.is_relative_to(mount):
        folders.append(folder)
        folder = folder.parent
    return [folder for folder in folders if folder.is_dir()]


def _v1_mount(root: Path, controllers: str) -> Path | None:
    for name in (controllers, "cpu,cpuacct", "cpu"):
        if (root / name).is_dir():
            return root / name
    return None


def _v2_quota(folder: Path) -> float | None:
    try:
        quota, period = (folder / "cpu.max").read_text().split()
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        return None


def _v1_quota(folder: Path) -> float | None:
    try:
        quota = int((folder / "cpu.cfs_quota_us").read_text())
        period = int((folder / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None
