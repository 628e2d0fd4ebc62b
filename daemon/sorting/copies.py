"""Put a copy of an input into the library: atomically, never overwriting, content-addressed.

A copy is written to a temporary file in the destination folder, fsynced, then hard-linked
to its final name (link fails if the name exists, so there is no exists-then-write race),
and the folder is fsynced. A half-written file is never visible under its final name.
Filesystems without hard links (exFAT, FAT) get a checked rename instead, and names any
filesystem a library lives on will take.
A batch defers the folder fsync (`sync_folder`) and pays it once per folder before its
journal lines are written: a group commit.

A copy written from the bytes already in memory goes around the page cache (O_DIRECT) where
the filesystem allows it. Nothing reads it again soon, and each 2 MB copy through the cache
cost the placer 3 to 9 ms of CPU (the kernel reclaiming cache to make room), direct 0.3 to
1 ms: on two cores that was a tenth of what sorting a 12-megapixel photo costs
(docs/benchmarks.md, issue #31). The fsync that follows is what makes it durable, as before.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import mmap
import os
import re
import secrets
import stat
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path, PurePosixPath

from sortbox.daemon.intake.files import SourceChanged, enter, open_input
from sortbox.daemon.layout import TEMP_PREFIX, TEMP_SUFFIX, fsync_dir

HASH_CHARS = 12
_MAX_STEM_BYTES = 150
_EXTENSION = re.compile(r"^[a-z0-9]{1,10}$")
# What Windows, exFAT and NTFS refuse in a name (a library on a USB disk, or served over SMB)
_NOT_PORTABLE = frozenset('<>:"/\\|?*')
_WINDOWS_DEVICES = frozenset(
    ["CON", "PRN", "AUX", "NUL", *(f"{port}{n}" for port in ("COM", "LPT") for n in range(1, 10))]
)
# How a filesystem says it will not take a name: exFAT and NTFS give EINVAL, exfat-fuse ENOENT
_NAME_REFUSED = (errno.EINVAL, errno.ENOENT, errno.EILSEQ, errno.ENAMETOOLONG)
# <stem>.<12 hex>.<ext>: how the library names what the daemon placed
LIBRARY_NAME = re.compile(r"^(?P<stem>.+)\.(?P<hash>[0-9a-f]{12})(?:\.[a-z0-9]{1,10})?$")
_CHUNK = 1 << 20
# O_DIRECT writes whole blocks from aligned memory; 4096 suits every logical block size
_DIRECT_BLOCK = 4096
_O_DIRECT = getattr(os, "O_DIRECT", 0)  # Linux; elsewhere every copy goes through the cache
# Scratch memory kept between direct writes: a phone photo fits; a larger file gets its own
_SCRATCH_KEPT_BYTES = 8 << 20


class UnusableFolder(OSError):
    """A folder of the library that cannot take a copy: a symlink or a file where the folder
    should be (never written through, never replaced), or a folder this user may not write."""


def library_name(
    original_name: str, sha256: str, hash_chars: int = HASH_CHARS, keep_stem: bool = True
) -> str:
    """`<original stem>.<first 12 hex of sha256>.<ext>`, with a safe stem and lower-case ext.

    The stem is portable: any filesystem a library may live on takes it. `keep_stem=False`
    gives `image.<hash>.<ext>`, for a filesystem with rules of its own.
    """
    original_name = original_name.rstrip(". ")  # "photo.jpg." is a photo.jpg
    stem, dot, extension = original_name.rpartition(".")
    if not dot or not stem:
        stem, extension = original_name, ""
    extension = extension.lower()
    if not _EXTENSION.match(extension):
        stem, extension = original_name, ""
    stem = _safe_stem(stem) if keep_stem else "image"
    name = f"{stem}.{sha256[:hash_chars]}"
    return f"{name}.{extension}" if extension else name


def _safe_stem(stem: str) -> str:
    cleaned = "".join(
        "_" if ch in _NOT_PORTABLE or unicodedata.category(ch).startswith("C") else ch
        for ch in stem
    )
    encoded = cleaned.encode("utf-8")[:_MAX_STEM_BYTES]
    cleaned = encoded.decode("utf-8", errors="ignore").strip() or "image"
    if cleaned.split(".")[0].strip().upper() in _WINDOWS_DEVICES:
        cleaned = "_" + cleaned  # "CON.1a2b.jpg" is a device, not a file, on Windows
    # never hidden: hidden files are ignored by file managers and by our own rescans
    return "_" + cleaned[1:] if cleaned.startswith(".") else cleaned


def portable_folder(relative: str) -> str:
    """An inbox subfolder's path (`2024 Holiday/day 1`) as a folder path inside a class folder
    (keep_subfolders): each name made portable as file names are, never hidden, never `..`,
    no trailing dot or space (Windows drops them). "" for none."""
    parts = []
    for part in PurePosixPath(relative).parts:
        if part in ("", ".", "/"):
            continue
        name = _safe_stem(part.rstrip(". ") or "_")
        parts.append(name.rstrip(". ") or "_")
    return "/".join(parts)


# What to copy from: a path (opened without following a link at its last step), or a function
# that opens the input and returns its descriptor (`intake.open_admitted`: never through a link)
Source = Path | Callable[[], int]


def copy_into(
    source: Source,
    folder: Path,
    original_name: str,
    expected_sha256: str,
    content: bytes | None = None,
    preferred_name: str | None = None,
    sync_folder: Callable[[Path], None] = fsync_dir,
    beneath: Path | None = None,
    scratch: Scratch | None = None,
) -> Path:
    """Copy `source` into `folder` atomically under its library name; return the final path.

    `content` is the source's bytes as already read and hashed: writing exactly those makes
    the copy the very bytes that were classified, and saves reading and hashing again.
    If the name is taken by identical content (a copy made before a crash), that file is
    the result. If it is taken by other content, a longer hash prefix makes the name unique.
    `preferred_name` (a sidecar named after its picture) is tried first. The new name is
    durable once `sync_folder(folder)` has run: at once by default.

    Every file operation is relative to the folder as opened once (`open_folder`): a folder
    swapped for a symlink meanwhile is not followed. `beneath` (the library): every folder
    from there down to `folder` is entered without following a link (keep_subfolders).
    """
    folder_fd = open_folder(folder, beneath)
    try:
        if content is not None:
            temporary = _write_temp(folder, folder_fd, [content], scratch)
        else:
            temporary = write_verified_temp(source, folder, folder_fd, expected_sha256)
        try:
            refused: OSError | None = None
            for name in _candidate_names(original_name, expected_sha256, preferred_name):
                try:
                    placed = _link_or_adopt(temporary, name, folder_fd, expected_sha256)
                except OSError as exc:
                    if exc.errno not in _NAME_REFUSED:
                        raise
                    refused = exc  # this filesystem's own naming rules: try the next name
                    continue
                if placed:
                    sync_folder(folder)  # also for an adopted copy: its maker may have died
                    return folder / name
            raise refused or FileExistsError(f"no free name for {original_name} in {folder}")
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary, dir_fd=folder_fd)
    finally:
        os.close(folder_fd)


def _candidate_names(original_name: str, sha256: str, preferred_name: str | None) -> list[str]:
    """Names to try in order: longer hash prefixes when a name is taken by other content, and
    last `image.<hash>.<ext>` in case the filesystem refuses the original's stem."""
    names = [library_name(original_name, sha256, n) for n in (HASH_CHARS, 24, 64)]
    names.append(library_name(original_name, sha256, keep_stem=False))
    return [preferred_name, *names] if preferred_name else names


def open_folder(folder: Path, beneath: Path | None = None) -> int:
    """`folder`, made if missing, opened without following a symlink at its last step, or at
    any step below `beneath`. The library itself may be a link its admin made; a folder in it
    replaced by a link or a file (by a user, or an attacker who can write there) is refused:
    UnusableFolder."""
    base = beneath if beneath is not None and folder.is_relative_to(beneath) else folder.parent
    base.mkdir(parents=True, exist_ok=True)
    parent = base
    parent_fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for name in folder.relative_to(base).parts:
            try:
                below = enter(parent_fd, name, make=True)
            except OSError as exc:
                if exc.errno not in _NOT_USABLE:
                    raise
                raise UnusableFolder(exc.errno, _what_is_wrong(parent / name, parent_fd)) from None
            os.close(parent_fd)
            parent_fd, parent = below, parent / name
        return os.dup(parent_fd)
    finally:
        os.close(parent_fd)


_NOT_USABLE = (errno.ENOTDIR, errno.ELOOP, errno.EACCES, errno.EPERM)


def _what_is_wrong(folder: Path, parent_fd: int) -> str:
    try:
        mode = os.stat(folder.name, dir_fd=parent_fd, follow_symlinks=False).st_mode
    except OSError:
        mode = 0
    if stat.S_ISLNK(mode):
        return f"{folder} is a symlink, which sortbox never follows"
    if mode and not stat.S_ISDIR(mode):
        return f"{folder} is not a folder"
    return f"{folder} is not a folder this user may write"


def _link_or_adopt(temporary: str, name: str, folder_fd: int, expected_sha256: str) -> bool:
    """Give the temporary copy its final name; True if it has it now, or that name already
    holds the same content (a copy made before a crash). False: taken by other content."""
    try:
        give_name(temporary, name, folder_fd)
    except FileExistsError:
        return same_content(name, expected_sha256, folder_fd)
    return True


def give_name(temporary: str, name: str, folder_fd: int) -> None:
    """Give a finished temporary file in the open folder its final name, never replacing a
    file of that name (FileExistsError).

    A hard link does it in one step. Where there are none (exFAT, FAT, some FUSE and SMB
    mounts) the name is checked, then the file renamed: as atomic, so a crash never leaves
    part of a file under the final name, though a file given that name in between would be
    replaced. Only another sortbox uses these names, with the same bytes under the same one.
    """
    try:
        os.link(temporary, name, src_dir_fd=folder_fd, dst_dir_fd=folder_fd)
        return
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
    try:
        os.stat(name, dir_fd=folder_fd, follow_symlinks=False)
    except FileNotFoundError:
        os.rename(temporary, name, src_dir_fd=folder_fd, dst_dir_fd=folder_fd)
        return
    raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), name)


def write_verified_temp(source: Source, folder: Path, folder_fd: int, expected_sha256: str) -> str:
    """Stream `source` into a temporary file in `folder`, checking it still has that hash."""
    digest = hashlib.sha256()
    source_fd = open_input(source) if isinstance(source, Path) else source()
    try:

        def chunks() -> Iterator[bytes]:
            while chunk := os.read(source_fd, _CHUNK):
                digest.update(chunk)
                yield chunk

        temporary = _write_temp(folder, folder_fd, chunks())
    finally:
        os.close(source_fd)
    if digest.hexdigest() != expected_sha256:
        os.unlink(temporary, dir_fd=folder_fd)
        raise SourceChanged("the input changed while it was being copied")
    return temporary


class Scratch:
    """Page-aligned memory for writing copies around the page cache, kept between copies by
    its one owner (the library): a fresh mapping for each 2 MB photo cost 1.5 ms of page
    faults here, as much as the write it saves."""

    def __init__(self) -> None:
        self._kept: mmap.mmap | None = None

    @contextlib.contextmanager
    def aligned(self, size: int) -> Iterator[memoryview]:
        if size > _SCRATCH_KEPT_BYTES:
            memory = mmap.mmap(-1, size)  # anonymous mappings are page-aligned
        else:
            if self._kept is None:
                self._kept = mmap.mmap(-1, _SCRATCH_KEPT_BYTES)  # pages only as they are used
            memory = self._kept
        view = memoryview(memory)[:size]
        try:
            yield view
        finally:
            view.release()
            if memory is not self._kept:
                memory.close()


def _write_temp(
    folder: Path, folder_fd: int, chunks: Iterable[bytes], scratch: Scratch | None = None
) -> str:
    """A new temporary file in the open folder, written and fsynced; its name. With
    `scratch`, written around the page cache where the filesystem allows it."""
    temporary = f"{TEMP_PREFIX}{secrets.token_hex(8)}{TEMP_SUFFIX}"
    target_fd = _create(folder, folder_fd, temporary, direct=scratch is not None)
    try:
        for chunk in chunks:
            if scratch is not None and _is_direct(target_fd):
                _write_direct(target_fd, chunk, scratch)
            else:
                _write_all(target_fd, memoryview(chunk))
        os.fsync(target_fd)
    except BaseException:
        os.close(target_fd)
        os.unlink(temporary, dir_fd=folder_fd)
        raise
    os.close(target_fd)
    return temporary


def _create(folder: Path, folder_fd: int, name: str, direct: bool) -> int:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        if direct and _O_DIRECT:
            try:
                return os.open(name, flags | _O_DIRECT, 0o644, dir_fd=folder_fd)
            except OSError as exc:
                if exc.errno != errno.EINVAL:  # a filesystem without direct I/O says EINVAL
                    raise
        return os.open(name, flags, 0o644, dir_fd=folder_fd)
    except PermissionError as exc:
        raise UnusableFolder(exc.errno, f"{folder} is not a folder this user may write") from None


def _is_direct(fd: int) -> bool:
    return bool(_O_DIRECT and fcntl.fcntl(fd, fcntl.F_GETFL) & _O_DIRECT)


def _through_cache(fd: int) -> None:
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~_O_DIRECT)


def _write_direct(fd: int, data: bytes, scratch: Scratch) -> None:
    """Write `data` at the file's offset: its whole blocks around the cache from aligned
    memory, the last part block through it. A filesystem that takes the open but refuses
    the writes (EINVAL) gets it all through the cache."""
    whole = len(data) - len(data) % _DIRECT_BLOCK
    written = 0
    if whole:
        with scratch.aligned(whole) as aligned:
            aligned[:] = memoryview(data)[:whole]
            try:
                while written < whole:
                    count = os.write(fd, aligned[written:])
                    written += count
                    if count % _DIRECT_BLOCK:  # a short write off a block edge: finish cached
                        break
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
    _through_cache(fd)
    _write_all(fd, memoryview(data)[written:])


def _write_all(fd: int, view: memoryview) -> None:
    # in pieces of _CHUNK: one write(2) of 2 MB or more through the page cache cost 2.5 ms of
    # CPU here (Linux 6.18, ext4), the same bytes in 1 MB pieces 0.8 ms
    while view:
        view = view[os.write(fd, view[:_CHUNK]) :]


def same_content(path: Path | str, sha256: str, dir_fd: int | None = None) -> bool:
    try:
        return sha256_of(path, dir_fd) == sha256
    except OSError:
        return False


def sha256_of(path: Path | str, dir_fd: int | None = None) -> str:
    digest = hashlib.sha256()
    fd = open_input(path, dir_fd)
    try:
        while chunk := os.read(fd, _CHUNK):
            digest.update(chunk)
    finally:
        os.close(fd)
    return digest.hexdigest()


def remove_leftover_temps(library: Path) -> int:
    """Delete temporary copies a crash left behind (our own files, never inputs), in every
    folder of the library (class folders have subfolders with keep_subfolders); links to
    folders are not followed."""
    removed = 0
    if not library.is_dir():
        return 0
    for folder, _, files in os.walk(library):
        for name in files:
            if name.startswith(TEMP_PREFIX) and name.endswith(TEMP_SUFFIX):
                (Path(folder) / name).unlink(missing_ok=True)
                removed += 1
    return removed
