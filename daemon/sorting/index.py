"""The start-up index: which inputs are already done and which contents the library holds.

Built from the journal at start-up (the journal is the only record), so restarts and rescans
never re-hash files that were already handled. Also finds copies a crash left without a journal
line ("orphans"), so they are adopted rather than copied a second time.

A clean stop leaves a snapshot of the index in the library's state folder, with the journal
offset it covers and a fingerprint of the bytes before that offset. The next start reads it and
replays only the journal lines after the offset: a restart with 60,000 done files does not
parse 60,000 lines. A snapshot that does not fit the journal (missing, unreadable, another
format, a journal replaced or rewritten) is ignored and the index is rebuilt from the journal.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import struct
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from sortbox.daemon.intake.files import Identity
from sortbox.daemon.layout import STATE_FOLDER, replacing
from sortbox.daemon.sorting.compact_map import CompactMap
from sortbox.daemon.sorting.copies import LIBRARY_NAME
from sortbox.daemon.sorting.journal import (
    Duplicate,
    Event,
    Imported,
    Recovered,
    Rejected,
    Review,
    Reviewed,
    Sorted,
    Undone,
    parse_lines,
)

SNAPSHOT_FORMAT = 1
FINGERPRINT_BYTES = 4096  # the journal bytes just before the offset a snapshot covers
# One entry per done file, so they are kept packed in CompactMaps: a source's record as 25
# bytes, a content as its 32-byte digest, a path as its folder's number and its name (see
# FolderTable), a library name without the 12 hex digits of the digest it already contains.
# This keeps the daemon's footprint flat over a long life (benchmarks/bench_daemon.py, scale).
_RECORD = struct.Struct("<QqQB")  # size, mtime_ns, inode, flags
_REMOVED, _MOVED = 1, 2
log = structlog.get_logger(__name__)


def snapshot_file_of(library: Path) -> Path:
    return library / STATE_FOLDER / "done-index.json"


@dataclass(frozen=True, slots=True)
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


class FolderTable:
    """Each folder's path stored once: a file's path is kept as its folder's number and its
    name. Thousands of files share a few folders, so this halves what a path costs."""

    def __init__(self) -> None:
        self._numbers: dict[bytes, int] = {}
        self._folders: list[bytes] = []

    def pack(self, path: bytes) -> bytes:
        folder, name = _split(path)
        number = self._numbers.get(folder)
        if number is None:
            number = self._numbers[folder] = len(self._folders)
            self._folders.append(folder)
        return _varint(number) + name

    def packed_if_known(self, path: bytes) -> bytes | None:
        """`pack` for a lookup: a path in a folder never seen is in no entry."""
        folder, name = _split(path)
        number = self._numbers.get(folder)
        return None if number is None else _varint(number) + name

    def unpack(self, packed: bytes) -> bytes:
        number, start = 0, 0
        while True:  # LEB128: 7 bits a byte, the high bit says "more"
            byte = packed[start]
            number |= (byte & 0x7F) << (7 * start)
            start += 1
            if byte < 0x80:
                return self._folders[number] + packed[start:]


def _split(path: bytes) -> tuple[bytes, bytes]:
    cut = path.rfind(b"/") + 1  # the folder keeps its slash; a bare name has folder b""
    return path[:cut], path[cut:]


def _varint(number: int) -> bytes:
    out = bytearray()
    while number >= 0x80:
        out.append(number & 0x7F | 0x80)
        number >>= 7
    out.append(number)
    return bytes(out)


class DoneIndex:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._folders = FolderTable()  # shared by source paths and library destinations
        self._sources = CompactMap()  # packed input path -> its packed SourceRecord
        self._content = CompactMap()  # sha256 digest -> packed dest, relative to the library
        self._orphans: dict[str, Path] = {}  # 12-hex name hash -> library file with no journal line
        # contents whose only record is a `recovered` line: no decision was ever journaled
        # for them, so an input with that content is decided and adopts the copy (sorting/stages.py)
        self._recovered: set[bytes] = set()

    @classmethod
    def load(cls, journal: Path, library: Path) -> DoneIndex:
        """The index of everything `journal` records, from the library's snapshot where it
        fits the journal, else from every journal line."""
        index = cls()
        if journal.exists():  # the daemon creates it before this; `status` may not
            with journal.open("rb") as fh:
                start = index._restore(snapshot_file_of(library), fh)
                fh.seek(start)
                for event in parse_lines(fh, str(journal)):
                    index.record(event)
                replayed = fh.tell() - start
            log.info("index_loaded", from_snapshot=start > 0, replayed_bytes=replayed)
        index._orphans = index._find_orphans(library)
        return index

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
            if isinstance(event, Sorted | Review | Duplicate | Rejected | Recovered):
                self._remember_source(event)
                digest = _digest(event.sha256)
                if event.dest and digest and not isinstance(event, Duplicate):
                    self._content[digest] = self._pack_dest(digest, event.dest)
                    self._orphans.pop(digest[:6].hex(), None)  # the 12 hex digits in names
                    if isinstance(event, Recovered):
                        self._recovered.add(digest)
                    else:
                        self._recovered.discard(digest)
            elif isinstance(event, Reviewed):
                # filed in the page: the content is now where it was filed
                digest = _digest(event.sha256)
                if digest and event.dest and self._dest_of(digest) == event.src:
                    self._content[digest] = self._pack_dest(digest, event.dest)
            elif isinstance(event, Undone):
                digest = _digest(event.sha256)
                if digest and event.dest and self._dest_of(digest) == event.dest:
                    self._content.pop(digest)
                    self._recovered.discard(digest)
                self._remember_source(event)
            elif isinstance(event, Imported):
                relocated = [
                    (_relocated(os.fsdecode(path), event.roots), _moved(record))
                    for path, record in self._source_items()
                ]
                self._sources = CompactMap(
                    (self._folders.pack(os.fsencode(path)), record) for path, record in relocated
                )

    def entries(self) -> tuple[dict[bytes, bytes], dict[bytes, str]]:
        """Every source (path -> packed record) and content (digest -> dest), unpacked: what
        the index knows, whatever order it learnt it in."""
        with self._lock:
            return dict(self._source_items()), {
                digest: self._unpack_dest(digest, packed)
                for digest, packed in self._content.items()
            }

    def _source_items(self) -> Iterator[tuple[bytes, bytes]]:
        for key, record in self._sources.items():
            yield self._folders.unpack(key), record

    def _pack_dest(self, digest: bytes, dest: str) -> bytes:
        # NUL is in no file name: it stands for the digest's 12 hex digits the name holds
        return self._folders.pack(os.fsencode(dest).replace(digest[:6].hex().encode(), b"\0", 1))

    def _unpack_dest(self, digest: bytes, packed: bytes) -> str:
        return os.fsdecode(self._folders.unpack(packed).replace(b"\0", digest[:6].hex().encode()))

    def _dest_of(self, digest: bytes) -> str | None:
        packed = self._content.get(digest)
        return None if packed is None else self._unpack_dest(digest, packed)

    def save_snapshot(self, library: Path, journal: Path, offset: int) -> None:
        """Write the index as it stands, as covering `journal` up to `offset`: the caller
        guarantees every event before the offset has been recorded, and none after it."""
        with self._lock:
            sources = [_snapshot_row(path, packed) for path, packed in self._source_items()]
            content = {
                digest.hex(): self._unpack_dest(digest, packed)
                for digest, packed in self._content.items()
            }
            recovered = set(self._recovered)
        with journal.open("rb") as fh:
            covers = {
                "inode": os.fstat(fh.fileno()).st_ino,
                "offset": offset,
                "fingerprint": _fingerprint(fh, offset),
            }
        path = snapshot_file_of(library)
        path.parent.mkdir(parents=True, exist_ok=True)
        snapshot = {
            "format": SNAPSHOT_FORMAT,
            "journal": covers,
            "sources": sources,
            "content": content,
            "recovered": sorted(digest.hex() for digest in recovered),
        }
        with replacing(path) as temporary:
            temporary.write_text(json.dumps(snapshot, separators=(",", ":")), encoding="utf-8")

    def _restore(self, path: Path, journal: Any) -> int:
        """Fill the index from the snapshot at `path` if it covers this open journal; return
        the offset from which the journal must still be read (0: the whole of it)."""
        try:
            snapshot = json.loads(path.read_bytes())
            covers = snapshot["journal"]
            offset = int(covers["offset"])
            fits = (
                snapshot["format"] == SNAPSHOT_FORMAT
                and covers["inode"] == os.fstat(journal.fileno()).st_ino
                and offset <= os.fstat(journal.fileno()).st_size
                and covers["fingerprint"] == _fingerprint(journal, offset)
            )
            if not fits:
                log.info("index_snapshot_stale", snapshot=str(path))
                return 0
            self._sources = CompactMap(
                (
                    self._folders.pack(os.fsencode(key)),
                    _pack(Identity(size, mtime_ns, inode), removed, moved),
                )
                for key, size, mtime_ns, inode, removed, moved in snapshot["sources"]
            )
            self._content = CompactMap()
            for hex_digest, dest in snapshot["content"].items():
                digest = bytes.fromhex(hex_digest)
                self._content[digest] = self._pack_dest(digest, dest)
            self._recovered = {bytes.fromhex(d) for d in snapshot.get("recovered", [])}
        except FileNotFoundError:
            return 0
        except (OSError, ValueError, KeyError, TypeError, struct.error) as exc:
            log.warning("index_snapshot_unreadable", snapshot=str(path), error=str(exc))
            self._sources, self._content = CompactMap(), CompactMap()
            self._recovered = set()
            return 0
        return offset

    def _remember_source(
        self, event: Sorted | Review | Duplicate | Rejected | Recovered | Undone
    ) -> None:
        if event.size is None or event.mtime_ns is None or event.inode is None:
            return
        identity = Identity(size=event.size, mtime_ns=event.mtime_ns, inode=event.inode)
        # = bytes(Path(root) / src)
        key = self._folders.pack(os.fsencode(posixpath.join(event.root, event.src)))
        try:
            self._sources[key] = _pack(identity, event.original_removed)
        except struct.error:  # a time or size out of any real range: hashed again next time
            self._sources.pop(key)

    def source(self, path: Path, identity: Identity) -> SourceRecord | None:
        """The record for this exact file (same path, size, mtime and inode), if any."""
        with self._lock:
            key = self._folders.packed_if_known(os.fsencode(path))
            packed = self._sources.get(key) if key is not None else None
        record = _unpack(packed) if packed is not None else None
        return record if record and record.matches(identity) else None

    def copy_of(self, sha256: str) -> str | None:
        digest = _digest(sha256)
        with self._lock:
            return self._dest_of(digest) if digest else None

    def orphan_for(self, sha256: str) -> Path | None:
        with self._lock:
            return self._orphans.get(sha256[:12])

    def is_recovered(self, sha256: str | None) -> bool:
        """The library holds this content with no decision journaled for it (a `recovered`
        line only)."""
        digest = _digest(sha256)
        with self._lock:
            return digest is not None and digest in self._recovered

    def orphans(self) -> list[Path]:
        """Library files with a sortbox name and no journal line, as found at load."""
        with self._lock:
            return list(self._orphans.values())

    @property
    def contents(self) -> int:
        return len(self._content)

    def _find_orphans(self, library: Path) -> dict[str, Path]:
        known = {digest[:6].hex() for digest, _ in self._content.items()}
        orphans: dict[str, Path] = {}
        if not library.is_dir():
            return orphans
        for folder in library.iterdir():
            if not folder.is_dir() or folder.is_symlink() or folder.name.startswith("."):
                continue
            # with keep_subfolders a class folder has folders of its own: every level, no links
            for below, subfolders, files in os.walk(folder):
                subfolders[:] = [name for name in subfolders if not name.startswith(".")]
                for name in files:
                    match = LIBRARY_NAME.match(name)
                    entry = Path(below) / name
                    if match and match["hash"] not in known and entry.is_file():
                        orphans[match["hash"]] = entry
        return orphans


def _pack(identity: Identity, original_removed: bool, moved: bool = False) -> bytes:
    flags = (_REMOVED if original_removed else 0) | (_MOVED if moved else 0)
    return _RECORD.pack(identity.size, identity.mtime_ns, identity.inode, flags)


def _unpack(packed: bytes) -> SourceRecord:
    size, mtime_ns, inode, flags = _RECORD.unpack(packed)
    return SourceRecord(
        Identity(size, mtime_ns, inode), bool(flags & _REMOVED), bool(flags & _MOVED)
    )


def _snapshot_row(key: bytes, packed: bytes) -> list[Any]:
    """[path, size, mtime_ns, inode, original_removed, moved]: what `_restore` reads."""
    record = _unpack(packed)
    identity = record.identity
    removed, moved = record.original_removed, record.moved
    return [os.fsdecode(key), identity.size, identity.mtime_ns, identity.inode, removed, moved]


def _moved(packed: bytes) -> bytes:
    """The record of a file journaled before an import: matched by size and mtime only."""
    return packed[:-1] + bytes([packed[-1] | _MOVED])


def _digest(sha256: str | None) -> bytes | None:
    """The 32 bytes of a hex sha256; None for none (or a hand-edited line's garbage)."""
    try:
        return bytes.fromhex(sha256) if sha256 and len(sha256) == 64 else None
    except ValueError:
        return None


def _fingerprint(journal: Any, offset: int) -> str:
    """sha256 of the journal's bytes just before `offset`: a journal rewritten or truncated
    and grown again does not match the snapshot made of the old one."""
    start = max(0, offset - FINGERPRINT_BYTES)
    journal.seek(start)
    return hashlib.sha256(journal.read(offset - start)).hexdigest()


def _relocated(path: str, roots: dict[str, str]) -> str:
    """`path` under the new folder its old folder was imported as."""
    for old, new in roots.items():
        old = old.rstrip("/")
        if path == old or path.startswith(old + "/"):
            return new.rstrip("/") + path[len(old) :]
    return path
