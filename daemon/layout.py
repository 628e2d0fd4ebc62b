"""The library's reserved folders, and the two ways sortbox makes a write survive a crash.

Every other module asks here where sortbox's own things live (`needs_review/`, `rejected/`,
the hidden `.sortbox/` state folder, the `.sortbox-*.tmp` names of copies in flight), so a
class can never be named like one of them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REVIEW_FOLDER = "needs_review"
REJECTED_FOLDER = "rejected"
RESERVED_FOLDERS = frozenset({REVIEW_FOLDER, REJECTED_FOLDER})
STATE_FOLDER = ".sortbox"  # sortbox's lock and state; hidden, so never taken for a class folder
TEMP_PREFIX = ".sortbox-"
TEMP_SUFFIX = ".tmp"


def fsync_dir(path: Path) -> None:
    """Make a folder's new or renamed entries durable (a rename is not, until this)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """Yield a temporary name beside `path` to write to; when the block succeeds, rename it
    over `path`, so readers see the old file or the new one, never half of either. If the
    block fails, the temporary file is removed and `path` is untouched."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.unlink(missing_ok=True)  # left by a crashed process that had our pid
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
