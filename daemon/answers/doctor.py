"""`sortbox doctor`: check a setup and say what to fix, one line each."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from sortbox.daemon.cpus import usable_cpus
from sortbox.daemon.intake.watch import filesystem_type, needs_polling
from sortbox.daemon.settings import Settings
from sortbox.daemon.sorting.classify import load_current
from sortbox.daemon.sorting.manifest import ModelError

MIN_FREE_BYTES = 1 << 30


@dataclass(frozen=True)
class Finding:
    level: Literal["ok", "warn", "fail"]
    message: str


def check(settings: Settings) -> list[Finding]:
    findings = [*_folders(settings), _originals(settings), _same_filesystem(settings)]
    findings.append(_inotify(settings))
    findings += [_network(settings), _model(settings), _disk(settings), _threads(settings)]
    return findings


def _folders(settings: Settings) -> list[Finding]:
    found = [_inbox(settings)]
    for name, path in (
        ("library", settings.library),
        ("journal folder", settings.journal.parent),
        ("models_dir", settings.models_dir),
    ):
        if name == "library" and (problem := _missing_or_file(name, path, settings)):
            found.append(problem)
        elif not path.exists():
            found.append(
                Finding("warn", f"{name} {path} does not exist yet (sortbox run creates it)")
            )
        elif not os.access(path, os.W_OK | os.X_OK):
            found.append(
                Finding(
                    "fail", f"{name} {path} is not writable by this user: fix its owner or mode"
                )
            )
        else:
            found.append(Finding("ok", f"{name} {path} exists and is writable"))
    return found


def _inbox(settings: Settings) -> Finding:
    """The daemon only reads the inbox, unless it is to delete the originals."""
    inbox = settings.inbox
    if problem := _missing_or_file("inbox", inbox, settings):
        return problem
    if not os.access(inbox, os.R_OK | os.X_OK):
        return Finding("fail", f"inbox {inbox} is not readable by this user: fix its owner or mode")
    if os.access(inbox, os.W_OK):
        return Finding("ok", f"inbox {inbox} exists and is writable")
    if settings.on_success in ("delete", "move"):
        return Finding(
            "warn",
            f'inbox {inbox} is read-only for this user, so on_success = "{settings.on_success}" '
            "keeps every original (each is still sorted once)",
        )
    return Finding("ok", f"inbox {inbox} exists and is readable (sortbox only reads it)")


def _originals(settings: Settings) -> Finding:
    """What becomes of the inbox's originals, and where copies go (#32: the inbox can be kept
    tidy)."""
    subfolders = (
        "; inbox subfolders are kept under the class folder (keep_subfolders)"
        if settings.keep_subfolders
        else ""
    )
    if settings.on_success == "keep":
        return Finding(
            "ok",
            'on_success = "keep": originals stay in the inbox; the journal knows which are done '
            f'("move" moves them into {settings.done_folder}){subfolders}',
        )
    if settings.on_success == "delete":
        return Finding(
            "ok",
            'on_success = "delete": each original is deleted once its copy is durable and '
            f"journaled; `sortbox undo` writes it back from the copy{subfolders}",
        )
    done = settings.inbox / settings.done_folder
    if done.is_symlink() or (done.exists() and not done.is_dir()):
        return Finding(
            "fail",
            f"done folder {done} is a link or a file: sortbox never moves originals through a "
            "link; remove it or set done_folder",
        )
    if (
        done.is_dir()
        and settings.inbox.is_dir()
        and os.stat(done).st_dev != os.stat(settings.inbox).st_dev
    ):
        return Finding(
            "warn",
            f"done folder {done} is another filesystem than the inbox: originals cannot be "
            "moved there and stay in the inbox",
        )
    return Finding(
        "ok",
        f'on_success = "move": each original is moved into {done} once its copy is durable and '
        "journaled, keeping its path there (never sorted again); `sortbox undo` moves it back"
        + subfolders,
    )


def _missing_or_file(name: str, path: Path, settings: Settings) -> Finding | None:
    """The inbox and the library must be folders that exist: a file there made `run` crash
    and doctor blame the file's mode; a missing one was made silently, parents and all, on a
    typo or under a share not mounted yet (#32)."""
    if path.exists() and not path.is_dir():
        return Finding("fail", f"{name} {path} is a file, not a folder: set {name} to a folder")
    if path.exists():
        return None
    if settings.create_folders:
        return Finding("warn", f"{name} {path} does not exist yet (create_folders: run creates it)")
    return Finding(
        "fail",
        f"{name} {path} does not exist: create it (mkdir {path}) or run `sortbox init`; or set "
        "create_folders = true",
    )


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _same_filesystem(settings: Settings) -> Finding:
    inbox, library = _existing(settings.inbox), _existing(settings.library)
    if os.stat(inbox).st_dev == os.stat(library).st_dev:
        message = (
            "inbox and library share a filesystem: copies are local, and "
            'on_success = "delete" frees the inbox space'
        )
    else:
        message = (
            "inbox and library are on different filesystems: every picture is copied across "
            "(still atomic: the temp file and the rename both happen inside the library)"
        )
    return Finding("ok", message)


def _inotify(settings: Settings) -> Finding:
    try:
        limit = int(Path("/proc/sys/fs/inotify/max_user_watches").read_text())
    except (OSError, ValueError):
        return Finding("warn", "cannot read the inotify watch limit")
    folders = sum(1 for _ in os.walk(settings.inbox)) if settings.inbox.is_dir() else 1
    if folders * 2 > limit:
        return Finding(
            "fail",
            f"inbox has {folders} folders but the inotify limit is {limit}: "
            'raise fs.inotify.max_user_watches, or set watch_mode = "poll"',
        )
    return Finding("ok", f"inotify: {folders} folders to watch, limit {limit}")


def _network(settings: Settings) -> Finding:
    fstype = filesystem_type(_existing(settings.inbox)) or "unknown"
    if needs_polling(_existing(settings.inbox)):
        mode = (
            "polling"
            if settings.watch_mode in ("auto", "poll")
            else "inotify (will miss remote writes!)"
        )
        level = "ok" if settings.watch_mode != "inotify" else "fail"
        return Finding(level, f"inbox is on a network/FUSE filesystem ({fstype}): using {mode}")
    return Finding(
        "ok", f"inbox is on a local filesystem ({fstype}): watch mode {settings.watch_mode}"
    )


def _model(settings: Settings) -> Finding:
    try:
        classifier = load_current(
            settings.models_dir, 1, target_precision=settings.target_precision
        )
    except ModelError as exc:
        return Finding("fail", f"model: {exc}")
    manifest = classifier.manifest
    return Finding(
        "ok",
        f"model {manifest.version} loads and matches its checksum "
        f"({len(manifest.classes)} classes)",
    )


def _disk(settings: Settings) -> Finding:
    usage = shutil.disk_usage(_existing(settings.library))
    free_gb = usage.free / 2**30
    if usage.free < MIN_FREE_BYTES or usage.free < usage.total * 0.02:
        return Finding(
            "fail",
            f"only {free_gb:.1f} GiB free for the library: sorted copies will "
            "fail (inputs stay safely in the inbox)",
        )
    return Finding("ok", f"{free_gb:.1f} GiB free for the library")


def _threads(settings: Settings) -> Finding:
    cpus = usable_cpus()
    threads = (
        f"{settings.decode_workers} decoder threads and {settings.inference_threads} model "
        f"threads for {cpus} usable CPUs (here; under systemd its unit's CPUQuota= counts)"
    )
    if max(settings.decode_workers, settings.inference_threads) > cpus:
        return Finding("warn", f'{threads}: more threads than CPUs wait for each other; try "auto"')
    return Finding("ok", threads)


def render(findings: list[Finding]) -> str:
    marks = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL"}
    return "\n".join(f"{marks[f.level]} {f.message}" for f in findings)
