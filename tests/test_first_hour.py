"""The first hour (#32): every command says the truth, plainly, to a person.

Each test drives the installed `sortbox` command as a user types it, in a real sortbox home
with a real model and real pictures.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import CLOTHING10, REPO, Home, make_home, publish_rgb_model, write_picture

SORTBOX = Path(sys.executable).parent / "sortbox"  # the console script pip installed


def cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(SORTBOX), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        # the user's own SORTBOX_* variables would change what is tested
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("SORTBOX_")},
            **(env or {}),
        },
        timeout=timeout,
    )


def sorted_home(home: Home, count: int = 3) -> Home:
    """`home` after `sortbox sort` placed `count` pictures."""
    for n in range(count):
        write_picture(home.inbox / f"red{n}.jpg", "red", seed=n)
    result = cli("sort", "inbox", cwd=home.root)
    assert result.returncode == 0, result.stderr
    return home


# -- finding 19: the tests' real photos are in the repository --------------------------------


def test_real_photos_for_the_tests_ship_with_the_repository() -> None:
    assert CLOTHING10.is_relative_to(REPO), "a fresh clone must have the photos the tests use"
    classes = sorted(p.name for p in CLOTHING10.iterdir() if p.is_dir())
    assert len(classes) == 10
    for name in classes:
        assert len(list((CLOTHING10 / name).glob("*.jpg"))) >= 20, name
    total = sum(p.stat().st_size for p in CLOTHING10.rglob("*.jpg"))
    assert total < 6_000_000, f"{total} bytes: the repository must stay small"
    assert "CC0" in (CLOTHING10 / "LICENSE").read_text()


# -- finding 6: a reader that stops early -------------------------------------------------------


@pytest.mark.parametrize(
    "args", [["status"], ["explain", "inbox/red0.jpg"], ["undo", "--dry-run", "--last", "3"]]
)
def test_a_reader_that_stops_early_gets_no_traceback(home: Home, args: list[str]) -> None:
    sorted_home(home)
    write_picture(home.inbox / "red0.jpg", "red", seed=0)
    process = subprocess.Popen(
        [str(SORTBOX), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=home.root,
        text=True,
    )
    assert process.stdout is not None
    process.stdout.close()  # `| head -0`: the reader is gone before the first line
    _, stderr = process.communicate(timeout=120)
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr, stderr
    assert process.returncode == 141, (process.returncode, stderr)


# -- finding 5: undo says what it did, or would do --------------------------------------------


def test_undo_dry_run_says_would_and_changes_nothing(home: Home) -> None:
    sorted_home(home)
    before = home.library_files()
    result = cli("undo", "--dry-run", "--last", "3", cwd=home.root)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("would undo") == 3 and "would remove red/" in result.stdout
    assert "removed" not in result.stdout and "undone" not in result.stderr
    assert "would undo 3 files" in result.stderr and "nothing was changed" in result.stderr
    assert home.library_files() == before


def test_undo_of_an_unknown_model_version_is_an_error_naming_the_versions(home: Home) -> None:
    sorted_home(home)
    result = cli("undo", "--model", "nonexist", cwd=home.root)
    assert result.returncode == 2
    assert "nonexist" in result.stderr and "v1" in result.stderr, result.stderr
    assert len(home.library_files()) == 3


def test_undo_says_where_a_moved_copy_is_now_and_counts_in_words(home: Home) -> None:
    sorted_home(home)
    first, *_ = home.library_files()
    (home.library / "blue").mkdir(exist_ok=True)
    first.rename(home.library / "blue" / first.name)  # the user moved it in a file manager
    result = cli("undo", "--model", "v1", cwd=home.root)
    assert result.returncode == 0, result.stderr
    assert f"it is now blue/{first.name}" in result.stdout, result.stdout
    assert "2 undone, 1 left alone" in result.stderr
    write_picture(home.inbox / "late.jpg", "green", seed=9)
    assert cli("sort", "inbox/late.jpg", cwd=home.root).returncode == 0
    one = cli("undo", "--dry-run", cwd=home.root)
    assert "would undo 1 file," in one.stderr, one.stderr


# -- finding 18: the basics -------------------------------------------------------------------


def test_version_needs_no_config(tmp_path: Path) -> None:
    result = cli("--version", cwd=tmp_path)
    assert result.returncode == 0 and result.stdout.startswith("sortbox 0."), result


def test_rolling_back_to_an_unknown_version_lists_the_versions(home: Home) -> None:
    result = cli("models", "rollback", "nosuch", cwd=home.root)
    assert result.returncode == 2
    assert "nosuch" in result.stderr and "v1" in result.stderr, result.stderr
    assert "manifest" not in result.stderr


def test_bash_completes_commands_and_their_options(tmp_path: Path) -> None:
    script = cli("completion", "bash", cwd=tmp_path)
    assert script.returncode == 0, script.stderr
    (tmp_path / "complete.sh").write_text(script.stdout)

    def complete(*words: str) -> list[str]:
        line = " ".join(f"'{w}'" for w in words)
        shell = (
            f"source complete.sh; COMP_WORDS=({line}); COMP_CWORD={len(words) - 1}; _sortbox; "
            'printf "%s\\n" "${COMPREPLY[@]}"'
        )
        done = subprocess.run(
            ["bash", "-c", shell], capture_output=True, text=True, cwd=tmp_path, check=True
        )
        return done.stdout.split()

    assert complete("sortbox", "ex") == ["explain", "export"]
    assert complete("sortbox", "undo", "--dr") == ["--dry-run"]
    assert complete("sortbox", "models", "r") == ["rollback"]


# -- finding 7: explain takes folders, as sort does -------------------------------------------


def test_explain_a_folder_explains_each_picture_in_it(home: Home) -> None:
    sorted_home(home, count=2)
    write_picture(home.inbox / "more" / "blue.jpg", "blue", seed=4)
    (home.inbox / ".hidden.jpg").write_bytes(b"ignored, as sort ignores it")
    result = cli("explain", "inbox", cwd=home.root)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    decisions = [line.split(" (")[0] for line in lines if not line.startswith(" ")]
    assert decisions == [
        "inbox/more/blue.jpg: sorted into blue",
        "inbox/red0.jpg: sorted into red",
        "inbox/red1.jpg: sorted into red",
    ], result.stdout
    library = cli("explain", "library/red", cwd=home.root)
    assert library.returncode == 0 and library.stdout.count("sorted into red") == 2


# -- findings 15 and 16: export and install-units ---------------------------------------------


def test_export_refuses_an_archive_name_it_would_not_honour(home: Home) -> None:
    result = cli("export", "backup.zip", cwd=home.root)
    assert result.returncode == 2 and ".tar.gz" in result.stderr, result
    assert not (home.root / "backup.zip").exists()
    assert cli("export", "backup.tar.gz", cwd=home.root).returncode == 0


def test_install_units_says_every_step_to_a_running_service(home: Home) -> None:
    system = cli("install-units", "--target", "units", cwd=home.root)
    assert system.returncode == 0, system.stderr
    steps = system.stdout
    assert f"sudo cp {home.root / 'units' / 'sortbox.service'}" in steps
    assert "/etc/systemd/system/" in steps
    assert steps.index("sudo cp") < steps.index("daemon-reload") < steps.index("enable --now")
    assert "linger" not in steps

    user = cli("install-units", "--user", "--target", "user-units", cwd=home.root)
    assert (
        "loginctl enable-linger" in user.stdout and "systemctl --user enable --now" in user.stdout
    )
    assert ".config/systemd/user/" in user.stdout


def test_install_units_warns_of_folders_under_tmp(tmp_path: Path) -> None:
    inbox = Path("/var/tmp") / f"sortbox-inbox-{tmp_path.name}-{os.getpid()}"
    inbox.mkdir()
    try:
        home = make_home(tmp_path, inbox=str(inbox))
        publish_rgb_model(home.models, "v1")
        result = cli("install-units", "--target", "units", cwd=home.root)
    finally:
        inbox.rmdir()
    assert result.returncode == 0, result.stderr
    warned = [line for line in result.stdout.splitlines() if line.startswith("warning:")]
    assert any(f"inbox is {inbox}" in w and "PrivateTmp=yes" in w for w in warned), warned


# -- finding 1: no config file, no problem ------------------------------------------------------


def test_without_a_config_file_the_documented_defaults_apply_and_it_says_so(
    tmp_path: Path,
) -> None:
    status = cli("status", cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    assert status.stderr.count(f"no config file at {tmp_path / 'config.toml'}") == 1
    assert "documented defaults" in status.stderr
    (tmp_path / "config.toml").write_text("")  # an empty file: every key has its default
    empty = cli("status", cwd=tmp_path)
    assert empty.returncode == 0 and "Field required" not in empty.stderr, empty.stderr
    assert "no config file" not in empty.stderr
    named = cli("status", "--config", "elsewhere.toml", cwd=tmp_path)
    assert named.returncode == 2 and "config file not found" in named.stderr


def test_init_in_an_empty_folder_writes_a_config_and_makes_the_folders(tmp_path: Path) -> None:
    pytest.importorskip("torch", reason="sortbox init needs the train extra")
    result = cli("init", cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stderr.startswith("creating the default model"), result.stderr  # finding 18
    config = (tmp_path / "config.toml").read_text()
    assert 'inbox = "inbox"' in config and "# batch_size = 8" in config
    assert (tmp_path / "inbox").is_dir() and (tmp_path / "library").is_dir()
    status = cli("status", cwd=tmp_path)
    assert status.returncode == 0 and "no config file" not in status.stderr
    assert "default" in status.stdout or "v" in status.stdout
    # every key, [train] and [web] too (a helper's first hour: "each key commented" was not
    # so for the sections); uncommenting one under its section just works
    assert "\n[train]\n" in config and "\n[web]\n" in config and "# port = 8765" in config
    edited = config.replace("# budget_minutes = 60.0", "budget_minutes = 2.0")
    assert edited != config
    (tmp_path / "config.toml").write_text(edited)
    assert cli("status", cwd=tmp_path).returncode == 0


# -- finding 11: environment variables --------------------------------------------------------


def test_a_bad_environment_variable_is_named_as_such(home: Home) -> None:
    result = cli("status", cwd=home.root, env={"SORTBOX_BATCH_SIZE": "abc"})
    assert result.returncode == 2
    assert "environment variable SORTBOX_BATCH_SIZE=abc: must be a whole number" in result.stderr
    assert "config.toml" not in result.stderr, result.stderr


def test_a_misspelt_environment_variable_is_refused(home: Home) -> None:
    result = cli("status", cwd=home.root, env={"SORTBOX_BATCHSIZE": "4"})
    assert result.returncode == 2 and "SORTBOX_BATCHSIZE: unknown setting" in result.stderr
    assert cli("status", cwd=home.root, env={"SORTBOX_BATCH_SIZE": "4"}).returncode == 0


# -- findings 12 and 13: the inbox and the library are folders that exist ---------------------


def test_a_mistyped_inbox_stops_start_up_and_is_never_created(home: Home) -> None:
    missing = home.root / "nonexistent" / "deep" / "inbox"
    config = home.config.read_text().replace('inbox = "inbox"', f'inbox = "{missing}"')
    home.config.write_text(config)
    run = cli("run", cwd=home.root, timeout=60)
    assert run.returncode == 2 and f"inbox {missing} does not exist" in run.stderr, run.stderr
    assert "create_folders = true" in run.stderr
    assert not (home.root / "nonexistent").exists()
    doctor = cli("doctor", cwd=home.root)
    assert doctor.returncode == 1 and f"FAIL inbox {missing} does not exist" in doctor.stdout

    with home.config.open("a") as config:
        config.write("create_folders = true\n")
    allowed = cli("doctor", cwd=home.root)
    assert allowed.returncode == 0 and "WARN inbox" in allowed.stdout, allowed.stdout


def test_a_missing_library_stops_sort(home: Home) -> None:
    home.library.rmdir()
    write_picture(home.inbox / "red.jpg", "red")
    result = cli("sort", "inbox", cwd=home.root)
    assert result.returncode == 2 and f"library {home.library} does not exist" in result.stderr
    assert not home.library.exists()


def test_an_inbox_that_is_a_file_is_a_clear_error(home: Home) -> None:
    home.inbox.rmdir()
    home.inbox.write_text("not a folder")
    doctor = cli("doctor", cwd=home.root)
    assert doctor.returncode == 1
    assert f"FAIL inbox {home.inbox} is a file, not a folder" in doctor.stdout, doctor.stdout
    assert "readable" not in doctor.stdout
    run = cli("run", cwd=home.root, timeout=60)
    assert run.returncode == 2 and "is a file, not a folder" in run.stderr
    assert "Traceback" not in run.stderr


def test_a_first_run_with_an_inbox_that_is_a_file_stops_before_making_a_model(
    tmp_path: Path,
) -> None:
    home = make_home(tmp_path)
    home.inbox.rmdir()
    home.inbox.write_text("not a folder")
    run = cli("run", cwd=home.root, timeout=60)
    assert run.returncode == 2 and "is a file, not a folder" in run.stderr, run.stderr
    assert "creating the default model" not in run.stderr and not home.models.exists()


# -- finding 14: plain words --------------------------------------------------------------------


def test_configuration_problems_are_in_plain_words(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text('inbox = "photos"\nlibrary = "photos/sorted"\n')
    result = cli("status", cwd=tmp_path)
    assert result.returncode == 2
    assert "Value error" not in result.stderr and "(top level)" not in result.stderr
    assert "must not contain one another" in result.stderr
    (tmp_path / "config.toml").write_text("models_dir = 3\n")
    typed = cli("status", cwd=tmp_path)
    assert "models_dir: must be a path, in quotes" in typed.stderr, typed.stderr
    assert "class" not in typed.stderr


# -- findings 2, 3 and 4: what a person sees at a terminal ----------------------------------


class Terminal:
    """A command whose stdout and stderr are a real pseudo-terminal, as in a shell."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str] | None = None) -> None:
        import fcntl
        import pty
        import struct
        import termios

        master, child = pty.openpty()
        # 40 rows of 120 columns, as a terminal window has (a new pty has none)
        fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        self.master = master
        self.process = subprocess.Popen(
            [str(SORTBOX), *args],
            stdin=child,
            stdout=child,
            stderr=child,
            cwd=cwd,
            env={**os.environ, **(env or {})},
            close_fds=True,
        )
        os.close(child)
        self.output = ""

    def read_until(self, predicate: Callable[[str], bool], timeout: float = 60) -> str:
        import select

        deadline = time.monotonic() + timeout
        while not predicate(self.output) and time.monotonic() < deadline:
            ready, _, _ = select.select([self.master], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(self.master, 65536)
                except OSError:  # EIO: the command ended and closed the terminal
                    break
                if not chunk:
                    break
                self.output += chunk.decode(errors="replace").replace("\r\n", "\n")
        return self.output

    def finish(self, timeout: float = 60) -> str:
        self.read_until(lambda _: self.process.poll() is not None, timeout)
        self.read_until(lambda _: False, 1)  # what is left in the terminal
        self.process.wait(timeout=timeout)
        os.close(self.master)
        return self.output


def file_lines(output: str) -> list[str]:
    """The lines about one file each (the progress bar redraws with \\r, and is not one)."""
    lines = [line.split("\r")[-1] for line in output.splitlines()]
    return [line for line in lines if " → " in line]


def some_pictures(home: Home) -> None:
    for n, colour in enumerate(["red", "green", "blue", "grey"]):
        write_picture(home.inbox / f"{colour}.jpg", colour, seed=n)
    (home.inbox / "notes.txt").write_text("a shopping list, not a picture")


def test_sort_dry_run_at_a_terminal_says_would_once_per_file(home: Home) -> None:
    some_pictures(home)
    output = Terminal(["sort", "inbox", "--dry-run"], home.root).finish()
    lines = file_lines(output)
    assert sorted(line.split(" → ")[0] for line in lines) == [
        "blue.jpg",
        "green.jpg",
        "grey.jpg",
        "notes.txt",
        "red.jpg",
    ], output
    assert all("would" in line for line in lines), output
    assert "red.jpg → would be sorted into red (" in output
    assert "grey.jpg → would go to needs_review: " in output and " < 0.60 for " in output
    assert "notes.txt → would be rejected: a text file, not a picture" in output
    assert "None" not in output and '"event"' not in output and "stopped" not in output
    assert "dry run, nothing was changed: 5 files: 3 would be sorted" in output
    assert "100%" in output  # the progress bar, at the bottom


def test_sort_says_what_it_skipped_as_already_sorted(home: Home) -> None:
    some_pictures(home)
    first = cli("sort", "inbox", cwd=home.root)
    assert "5 files: 3 sorted, 1 to review, 0 duplicates, 1 rejected" in first.stderr
    again = cli("sort", "inbox", cwd=home.root)
    assert again.returncode == 0
    assert "0 files to sort: 5 files skipped, already handled (the journal" in again.stderr
    one = cli("sort", "inbox/red.jpg", cwd=home.root)
    assert "1 file skipped, already handled" in one.stderr, one.stderr
    write_picture(home.inbox / "new.jpg", "blue", seed=42)
    mixed = cli("sort", "inbox", cwd=home.root)
    assert "1 file: 1 sorted, 0 to review, 0 duplicates, 0 rejected; 5 files skipped" in (
        mixed.stderr
    )


def test_the_daemon_at_a_terminal_writes_one_readable_line_per_file(home: Home) -> None:
    from datetime import datetime
    from zoneinfo import ZoneInfo

    zone = "Asia/Kolkata"  # UTC+05:30: local time cannot pass for UTC
    terminal = Terminal(["run"], home.root, env={"TZ": zone})
    try:
        terminal.read_until(lambda out: " started: " in out)
        write_picture(home.inbox / "red.jpg", "red", seed=1)
        (home.inbox / "notes.txt").write_text("not a picture")
        now = datetime.now(ZoneInfo(zone))
        output = terminal.read_until(lambda out: "notes.txt → " in out and "red.jpg → " in out)
    finally:
        terminal.process.terminate()
    output = terminal.finish()
    lines = file_lines(output)
    assert len(lines) == 2, output  # each outcome once: the rejected file too
    assert any(line.endswith("red.jpg → red (1.00)") for line in lines), lines
    assert any(line.endswith("notes.txt → rejected: a text file, not a picture") for line in lines)
    stamp = lines[0].split(" ")[0]
    assert stamp[:2] in {f"{now:%H}", f"{(now.hour + 1) % 24:02}"}, (stamp, now)
    assert "None" not in output and "reason=" not in output and '"event"' not in output


def test_sizes_and_decoder_problems_are_in_plain_words(home: Home) -> None:
    with (home.inbox / "huge.jpg").open("wb") as sparse:
        sparse.truncate(600 * 1024 * 1024)  # 600 MB of nothing, never read
    picture = home.inbox / "cut.jpg"
    write_picture(picture, "red", seed=3)
    picture.write_bytes(picture.read_bytes()[:400])  # a copy that stopped early
    result = cli("sort", "inbox", cwd=home.root)
    lines = dict(line.split(" → ", 1) for line in result.stdout.splitlines())
    assert lines["huge.jpg"].startswith("rejected: too large: 600 MB, the limit is 512 MB"), lines
    assert "bytes" not in lines["huge.jpg"]
    assert (
        lines["cut.jpg"] == "rejected: cannot decode: the file is cut short (an incomplete copy?)"
    )


def test_status_counts_in_words(home: Home) -> None:
    write_picture(home.inbox / "waiting.jpg", "red", seed=5)
    status = cli("status", cwd=home.root)
    assert "inbox waiting:  1 file\n" in status.stdout, status.stdout
    assert "1 files" not in status.stdout


def test_every_setting_says_what_it_is_for() -> None:
    """Finding 1: the defaults and meanings a user reads are the code's: the settings reference
    is generated from the docstring under each field (tests/test_docs.py checks it is up to
    date), so each field must have one."""
    from pydantic import BaseModel
    from sortbox.daemon.settings import Settings

    undescribed = []
    for key, field in Settings.model_fields.items():
        section = field.annotation
        if isinstance(section, type) and issubclass(section, BaseModel):
            fields = section.model_fields.items()
            undescribed += [f"{key}.{sub}" for sub, inner in fields if not inner.description]
        elif not field.description:
            undescribed.append(key)
    assert undescribed == [], "settings without a docstring saying what they are for"


def test_a_new_target_precision_on_a_model_with_hand_set_thresholds_is_said_plainly(
    tmp_path: Path,
) -> None:
    """Finding 9: the reload used to say "thresholds re-derived for target precision 0.9" while
    the default model's hand-set thresholds stayed as they were."""
    import signal

    from helpers import Daemon, wait_until

    home = make_home(tmp_path)
    publish_rgb_model(home.models, "v1")  # hand-set thresholds, no calibration predictions
    daemon = Daemon(home).start()
    try:
        home.config.write_text(home.config.read_text() + "target_precision = 0.9\n")
        daemon.process.send_signal(signal.SIGHUP)
        wait_until(lambda: "thresholds_fixed" in daemon.log_text(), 20, "the plain answer")
        assert "target_precision applies to models made by `sortbox train`" in daemon.log_text()
    finally:
        assert daemon.stop() == 0
    assert not [e for e in home.events("model") if "re-derived" in e["reason"]]


def test_train_dry_run_predicts_the_real_run(tmp_path: Path) -> None:
    """Finding 10: the dry run said "1 classes" and exited 0 where the run would fail; it
    counted auto-sorted pictures silently out; it never said a class would be forgotten."""
    import shutil

    from helpers import sortbox

    home = make_home(tmp_path, **{"train.min_images_per_class": 2})
    publish_rgb_model(home.models, "v1")  # a trained model that knows red, green and blue
    photos = sorted(CLOTHING10.rglob("*.jpg"))
    for photo in photos[:3]:  # sorted by the daemon's model, untouched: not labels
        shutil.copy(photo, home.inbox / photo.name)
    assert sortbox("sort", str(home.inbox), config=home.config).returncode == 0
    (home.library / "shirts").mkdir()
    for photo in photos[:6]:
        shutil.copy(photo, home.library / "shirts" / f"s-{photo.name}")

    dry = sortbox("train", "--dry-run", config=home.config, timeout=300)
    real = sortbox("train", config=home.config, timeout=300)
    assert dry.returncode == real.returncode == 1, (dry.stdout, real.stdout)
    assert "train would stop: need at least two classes" in dry.stdout
    assert "nobody checked" in dry.stdout and "trust_auto_sorted" in dry.stdout

    (home.library / "hats").mkdir()
    for photo in photos[-6:]:
        shutil.copy(photo, home.library / "hats" / f"h-{photo.name}")
    dry = sortbox("train", "--dry-run", config=home.config, timeout=300)
    assert dry.returncode == 1, dry.stdout
    assert "would no longer know red, green, blue" in dry.stdout
    assert "--drop-classes" in dry.stdout
    dry = sortbox("train", "--dry-run", "--drop-classes", config=home.config, timeout=300)
    assert dry.returncode == 0, dry.stdout
    assert "would be dropped" in dry.stdout
    assert "train would learn from these pictures" in dry.stdout


def test_sort_without_a_terminal_says_how_far_it_got_for_the_whole_run(capsys) -> None:
    """Finding 3: with stderr not a terminal there is no bar; a line every 10 s (here: every
    update) counts the whole run so far, not the last batch."""
    from sortbox.daemon.cli import PeriodicSummary
    from sortbox.daemon.sorting.journal import Review, Sorted

    def event(kind: type, n: int):
        return kind(src=f"{n}.jpg", root="/in", sha256=None, size=1, label="a", confidence=0.9)

    summary = PeriodicSummary(total=5, enabled=True, every_s=0.0)
    summary.update(2, [event(Sorted, 1), event(Review, 2)])
    summary.update(3, [event(Sorted, 3), event(Sorted, 4), event(Sorted, 5)])
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        "sort: 2/5 files, 1 sorted, 1 to review, 0 duplicates, 0 rejected",
        "sort: 5/5 files, 4 sorted, 1 to review, 0 duplicates, 0 rejected",
    ]


def test_a_model_that_can_promise_nothing_says_so_and_undone_counts_are_said(
    tmp_path: Path,
) -> None:
    """A first user's `sortbox train` on 260 labelled pictures published a model whose
    calibration could show no threshold keeping 97%: every picture went to review, and
    `status` raised no alarm. And after `undo`, the counts still read as if nothing was undone."""
    home = make_home(tmp_path)
    ten_right = {"predicted": [0] * 10, "confidence": [0.99] * 10, "correct": [True] * 10}
    publish_rgb_model(home.models, "v1", calibration=ten_right, target_precision=0.97)
    for n in range(4):
        write_picture(home.inbox / f"{n}.jpg", ("red", "green")[n % 2], n)
    sorted_now = cli("sort", "inbox", cwd=home.root)
    assert sorted_now.returncode == 0, sorted_now.stderr
    assert sorted_now.stdout.count("needs_review") == 4, sorted_now.stdout
    status = cli("status", cwd=home.root).stdout
    assert "this model sorts nothing by itself" in status, status
    assert "(model expected 100% from its calibration evidence)" in status
    # the advice names a target that works, and following it works (a helper's first hour:
    # "or lower target_precision" came back unchanged at 0.93 and at 0.8)
    advice = re.search(r"the highest its evidence can show is (\d+)%", status)
    assert advice is not None, status
    config = home.config.read_text(encoding="utf-8")
    home.config.write_text(config + f"target_precision = {int(advice[1]) / 100}\n")
    assert "sorts nothing" not in cli("status", cwd=home.root).stdout
    home.config.write_text(config)
    assert cli("undo", "--last", "2", cwd=home.root).returncode == 0
    status = cli("status", cwd=home.root).stdout
    assert "4 to review, 0 rejected, 0 duplicates, 2 undone" in status, status


def test_sort_piped_says_each_file_once(home: Home) -> None:
    """`sortbox sort inbox >out 2>err` put every file's line in out and again, as JSON, in
    err: a script reading both saw each file twice."""
    some_pictures(home)
    piped = cli("sort", "inbox", cwd=home.root)  # stdout and stderr are pipes, not a terminal
    assert piped.stdout.count(" → ") == 5, piped.stdout
    assert '"src"' not in piped.stderr and " → " not in piped.stderr, piped.stderr
    assert "5 files: 3 sorted, 1 to review, 0 duplicates, 1 rejected" in piped.stderr
