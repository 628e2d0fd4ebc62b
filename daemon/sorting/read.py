"""Read an input once: hash its bytes and turn them into a model input (or a reason it can't be)."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import os
import stat
import threading
from dataclasses import dataclass, field

import numpy as np
from sortbox.daemon.intake.files import (
    Arrival,
    Identity,
    OutsideFolder,
    SourceChanged,
    identity_of,
    open_admitted,
)
from sortbox.daemon.intake.group import alone_reason, role_of
from sortbox.daemon.sorting.preprocess import BadImage, Preprocessing, prepare
from sortbox.daemon.sorting.quality import PictureQuality, measure_quality


@dataclass(frozen=True)
class Decoded:
    arrival: Arrival
    identity: Identity | None  # as read (fstat of the open file); None if it could not be opened
    sha256: str | None
    pixels: np.ndarray | None
    problem: str | None  # why it is rejected; None for a usable picture
    spec: Preprocessing
    content: bytes | None = field(default=None, repr=False)  # the bytes hashed, if small enough
    # the file changed while it was read (a writer we could not see): not a verdict on the
    # picture; it goes back to waiting until it is complete
    changed: bool = False
    # cannot be decoded, and may still grow: it waits for the rest of it (`changed` too) for
    # its arrival's rest_wait_s, and is rejected only if it comes back the same
    awaiting_rest: bool = False
    # its RAW file and sidecars, read and hashed, not decoded: they go where the picture goes
    companions: tuple[Decoded, ...] = ()
    # sharpness, brightness, contrast of what the model sees (quality.py); None: not decoded
    quality: PictureQuality | None = None


# Inputs up to this size are kept in memory from hashing to copying (one read, one hash);
# larger ones are streamed again and re-hashed at copy time.
KEEP_BYTES = 32 * 1024 * 1024


def read_group(arrival: Arrival, spec: Preprocessing, max_pixels: int, max_bytes: int) -> Decoded:
    """The picture, decoded, with its companions read and hashed."""
    picture = read_and_prepare(arrival, spec, max_pixels, max_bytes)
    companions = tuple(
        read_and_prepare(c, spec, max_pixels, max_bytes, decode=False) for c in arrival.companions
    )
    changed = picture.changed or any(c.changed for c in companions)
    return dataclasses.replace(picture, companions=companions, changed=changed)


@dataclass(frozen=True)
class _Read:
    """An input's bytes as read, or why it could not be (then `problem` or `changed`)."""

    identity: Identity | None = None
    sha256: str | None = None
    data: bytes | None = None  # None for a large companion, hashed as a stream
    problem: str | None = None
    changed: bool = False


def read_and_prepare(
    arrival: Arrival, spec: Preprocessing, max_pixels: int, max_bytes: int, decode: bool = True
) -> Decoded:
    """Read the admitted file once: never through a link below its folder, and only while it
    is the very file that was admitted, unchanged (issue 34): a file swapped or rewritten
    since goes back to waiting (`changed`), never to rejected/."""
    read = read_admitted(arrival, max_bytes, whole=decode)
    content = read.data if read.data is not None and len(read.data) <= KEEP_BYTES else None
    result = Decoded(arrival, read.identity, read.sha256, None, read.problem, spec, content)
    if read.changed:
        return dataclasses.replace(result, content=None, changed=True)
    if read.problem is not None or not decode or read.data is None:
        return result  # a companion: its bytes are all that matter
    if role_of(arrival.path) == "sidecar":
        return dataclasses.replace(result, problem=alone_reason(arrival.path))
    try:
        pixels = prepare(read.data, spec, max_pixels, arrival.path.name)
    except Exception as exc:  # prepare() says BadImage; anything else is a decoder bug
        problem = str(exc) if isinstance(exc, BadImage) else f"cannot decode: {exc!r}"
        now = identity_of(arrival.path)
        if now is None or now != read.identity or now.ctime_ns != read.identity.ctime_ns:
            # Truncated because a writer is at it again: wait for it, don't reject half a file.
            return dataclasses.replace(result, content=None, changed=True)
        if arrival.rest_wait_s > 0:
            return dataclasses.replace(result, content=None, changed=True, awaiting_rest=True)
        return dataclasses.replace(result, problem=problem)
    return dataclasses.replace(result, pixels=pixels, quality=measure_quality(pixels, spec))


def read_admitted(arrival: Arrival, max_bytes: int, whole: bool = True) -> _Read:
    """Open the admitted file beneath its folder, check it is unchanged, read and hash it."""
    try:
        fd = open_admitted(arrival)
    except FileNotFoundError:
        return _Read(problem="vanished before it could be read")
    except PermissionError:
        return _Read(problem="unreadable: permission denied")
    except OutsideFolder:
        # its folder was renamed away or swapped for a link after the file was admitted:
        # whatever is there now is not what was admitted. If the file still is somewhere in
        # the inbox, it comes again under its new path.
        return _Read(changed=True)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return _Read(
                problem="a symbolic link; sortbox never follows a link inside the folders it sorts"
            )
        return _Read(problem=f"unreadable: {exc.strerror}")
    try:
        return _read_open(fd, arrival, max_bytes, whole)
    except OSError as exc:
        return _Read(problem=f"unreadable: {exc.strerror}")
    finally:
        os.close(fd)


def _read_open(fd: int, arrival: Arrival, max_bytes: int, whole: bool) -> _Read:
    st = os.fstat(fd)
    identity = Identity.of(st)
    if not stat.S_ISREG(st.st_mode):
        return _Read(identity, problem="not a regular file")
    if not arrival.identity.unchanged_in(st):
        return _Read(changed=True)  # rewritten, or another file, since it was admitted
    if st.st_size > max_bytes:
        # never read, hashed or copied: `truncate -s 1T x.jpg` is a file of this size, and
        # reading it would take hours and copying it fill the library's disk. It stays in
        # the inbox, whatever on_success says, and is not looked at again unless it changes.
        return _Read(
            identity,
            problem=f"too large: {st.st_size} bytes, the limit is {max_bytes} (max_file_mb); "
            "left in the inbox, not copied",
        )
    if not whole and st.st_size > KEEP_BYTES:
        # a large companion (a RAW file, a Live Photo's video): only its hash is needed,
        # and the copy streams it again, so it is never held in memory whole
        data, sha256 = None, _hash_stream(fd)
    else:
        data = _read_all(fd, st.st_size)
        sha256 = hashlib.sha256(data).hexdigest()
    if not arrival.identity.unchanged_in(os.fstat(fd)):
        return _Read(changed=True)  # a writer was at it while we read: not what was admitted
    return _Read(identity, sha256, data)


def reopen_as_read(item: Decoded) -> int:
    """Open an input again to copy it (one too large to keep in memory): beneath its folder,
    and only if it is still the file that was read; else SourceChanged, and it waits."""
    try:
        fd = open_admitted(item.arrival)
    except (OutsideFolder, FileNotFoundError) as exc:
        raise SourceChanged(f"{item.arrival.path} is not where it was read") from exc
    if item.identity is None or not item.identity.unchanged_in(os.fstat(fd)):
        os.close(fd)
        raise SourceChanged(f"{item.arrival.path} changed since it was read")
    return fd


DECODER_NICENESS = 10


def lower_thread_priority() -> None:
    """Run the calling decoder thread at a lower priority than the model's threads.

    Inference is the bottleneck on 2 cores; when both compete, decoding should fill the gaps
    rather than preempt it (+5% images/s on 12-megapixel JPEGs, benchmarks/bench_daemon.py).
    Linux applies niceness per thread; raising it needs no privilege.
    """
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), DECODER_NICENESS)


def _read_all(fd: int, expected_size: int) -> bytes:
    # one read of the whole file, so the bytes are not copied again to join chunks; a file
    # that grew since fstat (a writer still at it) is read to its end all the same
    chunks = [os.read(fd, expected_size + 1)]
    while chunks[-1] and (chunk := os.read(fd, 1 << 20)):
        chunks.append(chunk)
    return b"".join(chunks)


def _hash_stream(fd: int) -> str:
    digest = hashlib.sha256()
    while chunk := os.read(fd, 1 << 20):
        digest.update(chunk)
    return digest.hexdigest()
