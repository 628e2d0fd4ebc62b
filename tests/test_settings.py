"""Settings: paths, the shipped config, old keys, threads from the CPUs this process may use;
and the paths the journal names, atomic replacement and walking folders."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from sortbox.daemon.cpus import cgroup_cpu_quota, usable_cpus
from sortbox.daemon.intake.files import walk_files
from sortbox.daemon.settings import (
    AUTO_THREADS_AT_MOST,
    CPUS_PER_INFERENCE_THREAD,
    ConfigError,
    TrainSettings,
    load_settings,
)

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
    threads = min(cpus, AUTO_THREADS_AT_MOST)
    free = subprocess.run(python, capture_output=True, text=True)
    model_threads = max(1, threads // CPUS_PER_INFERENCE_THREAD)
    assert free.stdout.split() == [str(threads), str(model_threads), str(cpus)], free.stderr
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
    from sortbox.daemon.answers.undo import below

    assert below(Path("/srv/library"), relative) is None
    assert below(Path("/srv/library"), "cats/x.jpg") == Path("/srv/library/cats/x.jpg")


def test_replacing_leaves_the_old_file_whole_when_writing_fails(tmp_path: Path) -> None:
    from sortbox.daemon.layout import replacing

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


def test_a_reload_names_for_restart_only_what_the_daemon_wires_at_start() -> None:
    """A first user added a [train] section and was told at every SIGHUP that it needed a
    restart of the daemon, which never reads it."""
    from sortbox.daemon.running.reload import reload_settings

    running = load_settings(Path(__file__).parent.parent / "config.toml")
    fresh = running.model_copy(
        update={
            "train": TrainSettings(budget_minutes=2.0),
            "target_precision": 0.9,
            "quiet_period_s": 1.0,
        }
    )
    reload = reload_settings(running, fresh)
    assert reload.changed == ["quiet_period_s", "target_precision", "train"]
    assert reload.needs_restart == ["quiet_period_s"]
    assert reload.settings.target_precision == 0.9 and reload.settings.quiet_period_s != 1.0
