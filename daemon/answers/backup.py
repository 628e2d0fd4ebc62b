"""`sortbox export ARCHIVE` and `sortbox import ARCHIVE`: the journal, the models and the config,
to back up or to move sortbox to another folder or machine.

The library's pictures are not in the archive: they are the user's files, backed up and moved
like any others (rsync, a backup tool). The journal is what must not be lost with them: without
it, every auto-sorted picture would look like a user's label, the trainer would learn from the
model's own guesses, and the daemon would sort the inbox again.

An archive is a tar (gzip-compressed when its name ends in .gz or .tgz):

    sortbox-export.json   what it holds, and the folders it was made from
    config.toml           the config file as it was
    journal.jsonl         the whole journal, read under its lock (no half-written line)
    models/<version>/...  every published model; models/current names the current one

Import refuses to overwrite anything: the journal must not exist yet, and model versions
already present are kept as they are. It then journals an `imported` line mapping the old
inbox to the new one, so files copied over with the inbox count as done.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import shutil
import tarfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import IO, Any

from sortbox.daemon.layout import fsync_dir
from sortbox.daemon.settings import Settings, UsageError, load_settings
from sortbox.daemon.sorting.journal import Imported, Journal
from sortbox.daemon.sorting.manifest import (
    CURRENT,
    check_version,
    current_version,
    point_current_to,
    published_versions,
    read_manifest,
    verify_model_file,
)

FORMAT = 1
DESCRIPTION = "sortbox-export.json"
CONFIG = "config.toml"
JOURNAL = "journal.jsonl"
MODELS = "models"
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz")


def export_archive(settings: Settings, config: Path, archive: Path) -> dict[str, Any]:
    """Write the archive (never over an existing file); return its description."""
    if not archive.name.endswith(ARCHIVE_SUFFIXES):
        # `export b.zip` once wrote an uncompressed tar under that name (#32)
        raise UsageError(
            f"{archive}: sortbox writes a tar archive; name it .tar, or .tar.gz to compress"
        )
    if archive.exists():
        raise UsageError(f"{archive} already exists; sortbox never overwrites a file")
    versions = [version for version, _ in published_versions(settings.models_dir)]
    description = {
        "format": FORMAT,
        "created": datetime.now(UTC).isoformat(),
        "folders": {
            key: str(getattr(settings, key).absolute())
            for key in ("inbox", "library", "journal", "models_dir")
        },
        "models": versions,
        "current": current_version(settings.models_dir),
    }
    temporary = archive.with_name(f".{archive.name}.part")
    try:
        with tarfile.open(temporary, _mode(archive, "w")) as tar:
            _add_bytes(tar, DESCRIPTION, json.dumps(description, indent=2).encode())
            _add_bytes(tar, CONFIG, config.read_bytes())
            with _journal_read_lock(settings.journal) as journal:
                _add_bytes(tar, JOURNAL, journal.read() if journal else b"")
            for version in versions:
                folder = settings.models_dir / version
                for file in sorted(folder.iterdir()):
                    if file.is_file() and not file.is_symlink():
                        tar.add(file, f"{MODELS}/{version}/{file.name}", recursive=False)
            if description["current"]:
                link = tarfile.TarInfo(f"{MODELS}/{CURRENT}")
                link.type, link.linkname = tarfile.SYMTYPE, str(description["current"])
                tar.addfile(link)
        with open(temporary, "rb+") as fh:
            os.fsync(fh.fileno())
        os.link(temporary, archive)  # fails if the name appeared meanwhile: never overwrite
        fsync_dir(archive.parent)
    finally:
        temporary.unlink(missing_ok=True)
    return description


def import_archive(archive: Path, config: Path) -> tuple[Settings, dict[str, Any]]:
    """Restore the archive for the config at `config` (written from the archive if missing)."""
    with tarfile.open(archive, _mode(archive, "r")) as tar:
        members = _checked_members(tar)
        description = json.loads(_read(tar, members, DESCRIPTION))
        if description.get("format") != FORMAT:
            raise UsageError(f"{archive}: not a sortbox export this version can read")
        if not config.exists():
            config.parent.mkdir(parents=True, exist_ok=True)
            _write_new(config, _read(tar, members, CONFIG))
        settings = load_settings(config)
        journal_bytes = _read(tar, members, JOURNAL)
        if settings.journal.exists() and settings.journal.stat().st_size > 0:
            raise UsageError(
                f"{settings.journal} already holds a journal; import into a fresh sortbox home"
            )
        settings.journal.parent.mkdir(parents=True, exist_ok=True)
        settings.journal.unlink(missing_ok=True)  # an empty one
        _write_new(settings.journal, journal_bytes)
        restored = _restore_models(tar, members, settings.models_dir, description.get("current"))
    old_inbox = description["folders"]["inbox"]
    new_inbox = str(settings.inbox.absolute())
    with Journal(settings.journal) as journal:
        journal.append([Imported(archive=str(archive), roots={old_inbox: new_inbox})])
    return settings, {**description, "restored_models": restored}


# -- the archive ------------------------------------------------------------------------------


def _mode(archive: Path, rw: str) -> Any:
    compressed = archive.name.endswith((".gz", ".tgz"))
    return f"{rw}:gz" if compressed else rw


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), int(datetime.now(UTC).timestamp()), 0o640
    tar.addfile(info, io.BytesIO(data))


@contextlib.contextmanager
def _journal_read_lock(path: Path) -> Iterator[IO[bytes] | None]:
    """The journal, with appends held off while it is read (they take the same flock)."""
    try:
        fh = path.open("rb")
    except FileNotFoundError:
        yield None
        return
    with fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_SH)
        yield fh


def _checked_members(tar: tarfile.TarFile) -> dict[str, tarfile.TarInfo]:
    """The archive's entries, refusing any that could write outside what we extract: archive
    names are data, never trusted paths."""
    members = {}
    for member in tar.getmembers():
        parts = PurePosixPath(member.name).parts
        top_level = len(parts) == 1 and member.name in (DESCRIPTION, CONFIG, JOURNAL)
        model_file = len(parts) == 3 and parts[0] == MODELS and member.isfile()
        current = member.name == f"{MODELS}/{CURRENT}" and member.issym()
        if not ((top_level and member.isfile()) or model_file or current):
            raise UsageError(f"not a sortbox export: unexpected entry {member.name!r}")
        if model_file:
            check_version(parts[1])
            if parts[2].startswith(".") or "/" in parts[2]:
                raise UsageError(f"not a sortbox export: unexpected entry {member.name!r}")
        members[member.name] = member
    return members


def _read(tar: tarfile.TarFile, members: dict[str, tarfile.TarInfo], name: str) -> bytes:
    if name not in members:
        raise UsageError(f"not a sortbox export: {name} is missing")
    extracted = tar.extractfile(members[name])
    assert extracted is not None
    return extracted.read()


def _write_new(path: Path, data: bytes) -> None:
    """Write a file that must not exist yet, durably."""
    with open(path, "xb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    fsync_dir(path.parent)


def _restore_models(
    tar: tarfile.TarFile,
    members: dict[str, tarfile.TarInfo],
    models_dir: Path,
    current: str | None,
) -> list[str]:
    models_dir.mkdir(parents=True, exist_ok=True)
    versions = sorted({PurePosixPath(n).parts[1] for n in members if n.count("/") == 2})
    restored = []
    for version in versions:
        final = models_dir / version
        if final.exists():
            continue  # already here: kept as it is
        staging = models_dir / f".import-{version}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        for name in members:
            if name.count("/") == 2 and PurePosixPath(name).parts[1] == version:
                _write_new(staging / PurePosixPath(name).name, _read(tar, members, name))
        try:
            manifest = read_manifest(staging)  # a damaged model is refused
            verify_model_file(staging, manifest, runtime=False)
            verify_model_file(staging, manifest)
        except Exception:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        os.rename(staging, final)
        restored.append(version)
    fsync_dir(models_dir)
    if current and current_version(models_dir) is None and (models_dir / current).is_dir():
        point_current_to(models_dir, current)
    return restored
