"""Put a copy of an input into the library: atomically, never overwriting, content-addressed.

A copy is written to a temporary file in the destination folder, fsynced, then hard-linked
to its final name (link fails if the name exists, so there is no exists-then-write race),
and the folder is fsynced. A half-written file is never visible under its final name.
A batch defers the folder fsync (`sync_folder`) and pays it once per folder before its
journal lines are written: a group commit.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import secrets
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from sortbox.daemon.manifest import fsync_dir

STATE_FOLDER = ".sortbox"  # sortbox's lock and state; hidden, so never taken for a class folder
TEMP_PREFIX = ".sortbox-"
TEMP_SUFFIX = ".tmp"
HASH_CHARS = 12
_MAX_STEM_BYTES = 150
_EXTENSION = re.compile(r"^[a-z0-9]{1,10}$")
# <stem>.<12 hex>.<ext>: how the library names what the daemon placed
LIBRARY_NAME = re.compile(r"^(?P<stem>.+)\.(?P<hash>[0-9a-f]{12})(?:\.[a-z0-9]{1,10})?$")
_CHUNK = 1 << 20


class SourceChanged(Exception):
    """The input changed between reading and copying it; it will be picked up again."""


def library_name(original_name: str, sha256: str, hash_chars: int = HASH_CHARS) -> str:
    """`<original stem>.<first 12 hex of sha256>.<ext>`, with a safe stem and lower-case ext."""
    stem, dot, extension = original_name.rpartition(".")
    if not dot or not stem:
        stem, extension = original_name, ""
    extension = extension.lower()
    if not _EXTENSION.match(extension):
        stem, extension = original_name, ""
    stem = _safe_stem(stem)
    name = f"{stem}.{sha256[:hash_chars]}"
    return f"{name}.{extension}" if extension else name


def _safe_stem(stem: str) -> str:
    cleaned = "".join(
        "_" if ch in "/\\" or unicodedata.category(ch).startswith("C") else ch for ch in stem
    )
    encoded = cleaned.encode("utf-8")[:_MAX_STEM_BYTES]
    cleaned = encoded.decode("utf-8", errors="ignore").strip() or "image"
    # never hidden: hidden files are ignored by file managers and by our own rescans
    return "_" + cleaned[1:] if cleaned.startswith(".") else cleaned


def open_input(path: Path) -> int:
    """Open an input for reading without following a symlink and without blocking on FIFOs."""
    return os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)


def copy_into(
    source: Path,
    folder: Path,
    original_name: str,
    expected_sha256: str,
    content: bytes | None = None,
    preferred_name: str | None = None,
    sync_folder: Callable[[Path], None] = fsync_dir,
) -> Path:
    """Copy `source` into `folder` atomically under its library name; return the final path.

    `content` is the source's bytes as already read and hashed: writing exactly those makes
    the copy the very bytes that were classified, and saves reading and hashing again.
    If the name is taken by identical content (a copy made before a crash), that file is
    the result. If it is taken by other content, a longer hash prefix makes the name unique.
    `preferred_name` (a sidecar named after its picture) is tried first. The new name is
    durable once `sync_folder(folder)` has run: at once by default.
    """
    folder.mkdir(parents=True, exist_ok=True)
    if content is not None:
        temporary = _write_temp(folder, [content])
    else:
        temporary = write_verified_temp(source, folder, expected_sha256)
    try:
        names = [library_name(original_name, expected_sha256, n) for n in (HASH_CHARS, 24, 64)]
        for name in [preferred_name, *names] if preferred_name else names:
            final = folder / name
            try:
                os.link(temporary, final)
            except FileExistsError:
                if same_content(final, expected_sha256):
                    sync_folder(folder)  # linked by a process that may have died before syncing
                    return final
                continue
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
                    raise
                # some FUSE/SMB mounts have no hard links: fall back to an exclusive create
                _exclusive_copy(temporary, final)
            sync_folder(folder)
            return final
        raise FileExistsError(f"no free name for {original_name} in {folder}")
    finally:
        temporary.unlink(missing_ok=True)


def write_verified_temp(source: Path, folder: Path, expected_sha256: str) -> Path:
    """Stream `source` into a temporary file in `folder`, checking it still has that hash."""
    digest = hashlib.sha256()
    source_fd = open_input(source)
    try:

        def chunks() -> Iterator[bytes]:
            while chunk := os.read(source_fd, _CHUNK):
                digest.update(chunk)
                yield chunk

        temporary = _write_temp(folder, chunks())
    finally:
        os.close(source_fd)
    if digest.hexdigest() != expected_sha256:
        temporary.unlink(missing_ok=True)
        raise SourceChanged(f"{source} changed while it was being sorted")
    return temporary


def _write_temp(folder: Path, chunks: Iterable[bytes]) -> Path:
    temporary = folder / f"{TEMP_PREFIX}{secrets.token_hex(8)}{TEMP_SUFFIX}"
    target_fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        for chunk in chunks:
            view = memoryview(chunk)
            while view:
                view = view[os.write(target_fd, view) :]
        os.fsync(target_fd)
    except BaseException:
        os.close(target_fd)
        temporary.unlink(missing_ok=True)
        raise
    os.close(target_fd)
    return temporary


def _exclusive_copy(temporary: Path, final: Path) -> None:
    with temporary.open("rb") as src, open(final, "xb") as dst:
        while chunk := src.read(_CHUNK):
            dst.write(chunk)
        dst.flush()
        os.fsync(dst.fileno())


def same_content(path: Path, sha256: str) -> bool:
    try:
        return sha256_of(path) == sha256
    except OSError:
        return False


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    fd = open_input(path)
    try:
        while chunk := os.read(fd, _CHUNK):
            digest.update(chunk)
    finally:
        os.close(fd)
    return digest.hexdigest()


def remove_leftover_temps(library: Path) -> int:
    """Delete temporary copies a crash left behind (our own files, never inputs)."""
    removed = 0
    if not library.is_dir():
        return 0
    for folder in [library, *(p for p in library.iterdir() if p.is_dir() and not p.is_symlink())]:
        for entry in folder.iterdir():
            if entry.name.startswith(TEMP_PREFIX) and entry.name.endswith(TEMP_SUFFIX):
                entry.unlink(missing_ok=True)
                removed += 1
    return removed
