"""The start-up index: which inputs are already done and which contents the library holds.

Rebuilt from the journal at start-up (the journal is the only record), so restarts and rescans
never re-hash files that were already handled. Also finds copies a crash left without a journal
line ("orphans"), so they are adopted rather than copied a second time.
"""

from __future__ import annotations

import posixpath
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from sortbox.daemon.intake import Identity
from sortbox.daemon.journal import (
    Duplicate,
    Event,
    Imported,
    Rejected,
    Review,
    Sorted,
    Undone,
    read_journal,
)
from sortbox.daemon.place import LIBRARY_NAME


@dataclass(frozen=True, slots=True)  # one per done file: tens of thousands in a big inbox
class SourceRecord:
    identity: Identity
    original_removed: bool  # on_success = "delete": the original was due to be removed
    # journaled before an import: the file was copied here, so its inode is new
    moved: bool = False

    def matches(self, identity: Identity) -> bool:
        if self.moved:
            mine = self.identity
            return (mine.size, mine.mtime_ns) == (identity.size, identity.mtime_ns)
        return self.identity == identity


class DoneIndex:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sources: dict[str, SourceRecord] = {}
        self._content: dict[str, str] = {}  # sha256 -> dest, relative to the library
        self._orphans: dict[str, Path] = {}  # 12-hex name hash -> library file with no journal line

    @classmethod
    def load(cls, journal: Path, library: Path) -> DoneIndex:
        return cls.from_events(read_journal(journal), library)

    @classmethod
    def from_events(cls, events: Iterable[Event], library: Path | None = None) -> DoneIndex:
        """`library=None`: skip looking for orphans (read-only uses such as `status`)."""
        index = cls()
        for event in events:
            index.record(event)
        if library is not None:
            index._orphans = index._find_orphans(library)
        return index

    def record(self, event: Event) -> None:
        with self._lock:
            if isinstance(event, Sorted | Review | Duplicate | Rejected):
                self._remember_source(event)
                if event.dest and event.sha256 and not isinstance(event, Duplicate):
                    self._content[event.sha256] = event.dest
                    self._orphans.pop(event.sha256[:12], None)
            elif isinstance(event, Undone):
                if event.sha256 and self._content.get(event.sha256) == event.dest:
                    del self._content[event.sha256]
                self._remember_source(event)
            elif isinstance(event, Imported):
                self._sources = {
                    _relocated(key, event.roots): SourceRecord(
                        record.identity, record.original_removed, moved=True
                    )
                    for key, record in self._sources.items()
                }

    def _remember_source(self, event: Sorted | Review | Duplicate | Rejected | Undone) -> None:
        if event.size is None or event.mtime_ns is None or event.inode is None:
            return
        identity = Identity(size=event.size, mtime_ns=event.mtime_ns, inode=event.inode)
        key = posixpath.join(event.root, event.src)  # = str(Path(root) / src), 5x cheaper
        self._sources[key] = SourceRecord(identity, event.original_removed)

    def source(self, path: Path, identity: Identity) -> SourceRecord | None:
        """The record for this exact file (same path, size, mtime and inode), if any."""
        with self._lock:
            record = self._sources.get(str(path))
        return record if record and record.matches(identity) else None

    def copy_of(self, sha256: str) -> str | None:
        with self._lock:
            return self._content.get(sha256)

    def orphan_for(self, sha256: str) -> Path | None:
        with self._lock:
            return self._orphans.get(sha256[:12])

    @property
    def contents(self) -> int:
        return len(self._content)

    def _find_orphans(self, library: Path) -> dict[str, Path]:
        known = {sha[:12] for sha in self._content}
        orphans: dict[str, Path] = {}
        if not library.is_dir():
            return orphans
        for folder in library.iterdir():
            if not folder.is_dir() or folder.is_symlink() or folder.name.startswith("."):
                continue
            for entry in folder.iterdir():
                match = LIBRARY_NAME.match(entry.name)
                if match and match["hash"] not in known and entry.is_file():
                    orphans[match["hash"]] = entry
        return orphans


def _relocated(path: str, roots: dict[str, str]) -> str:
    """`path` under the new folder its old folder was imported as."""
    for old, new in roots.items():
        old = old.rstrip("/")
        if path == old or path.startswith(old + "/"):
            return new.rstrip("/") + path[len(old) :]
    return path
