"""A bytes -> bytes map that costs little more than its keys and values, for the done-index.

The daemon remembers one source and one content per file it has ever handled, for as long as
it runs. As Python dicts of bytes the two cost about 308 bytes per file in objects and table
slots; here the bulk of the entries sits in a few numpy arrays (a sorted 8-byte hash, offsets
and lengths into two byte blobs) and costs its bytes plus 20. With the index's own packing
(index.py) that is about 133 bytes per file in all. New entries go to a small dict first and
are merged into the arrays in bulk every thousand inserts.

Lookups are exact: a hash match is confirmed against the stored key.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator

import numpy as np

MERGE_AT = 1024  # entries held in the dict before they go into the arrays
_EMPTY_BLOB = np.zeros(0, dtype=np.uint8)
_NO_OFFSETS = np.zeros(0, dtype=np.uint32)


def _hash(key: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little")


def _hashes_of(keys: list[bytes]) -> np.ndarray:
    return np.fromiter(map(_hash, keys), np.uint64, len(keys))


class CompactMap:
    def __init__(self, items: Iterable[tuple[bytes, bytes]] = (), merge_at: int = MERGE_AT) -> None:
        self._merge_at = merge_at
        # None in `_recent`: deleted, though the arrays may still hold the key
        self._recent: dict[bytes, bytes | None] = {}
        self._hashes = np.zeros(0, dtype=np.uint64)  # sorted
        # row i's key is _keys[_key_start[i]:][:_key_length[i]], and so for its value
        self._key_start, self._key_length = _NO_OFFSETS, _NO_OFFSETS
        self._value_start, self._value_length = _NO_OFFSETS, _NO_OFFSETS
        self._keys, self._values = _EMPTY_BLOB, _EMPTY_BLOB
        for key, value in items:
            self._put(key, value)

    def get(self, key: bytes) -> bytes | None:
        if key in self._recent:
            return self._recent[key]
        row = self._row(key)
        return None if row is None else self._value_of(row)

    def __setitem__(self, key: bytes, value: bytes) -> None:
        self._put(key, value)

    def pop(self, key: bytes) -> None:
        if key in self._recent or self._row(key) is not None:
            self._put(key, None)  # a deletion, merged like an insert

    def __contains__(self, key: bytes) -> bool:
        return self.get(key) is not None

    def __len__(self) -> int:
        keys = list(self._recent)
        hashes = _hashes_of(keys)
        replaced = sum(1 for row in self._rows_of(keys, hashes) if row is not None)
        added = sum(1 for value in self._recent.values() if value is not None)
        return len(self._hashes) - replaced + added

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CompactMap):
            return NotImplemented
        return dict(self.items()) == dict(other.items())

    __hash__ = None  # type: ignore[assignment]  # mutable

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        """Every entry, in no particular order."""
        for row in range(len(self._hashes)):
            key = self._key_of(row)
            if key not in self._recent:
                yield key, self._value_of(row)
        for key, value in list(self._recent.items()):
            if value is not None:
                yield key, value

    def _row(self, key: bytes) -> int | None:
        wanted = _hash(key)
        # as np.uint64: searchsorted with a Python int takes a path 100x slower
        return self._scan(int(self._hashes.searchsorted(np.uint64(wanted))), wanted, key)

    def _rows_of(self, keys: list[bytes], hashes: np.ndarray) -> list[int | None]:
        """The row of each key, or None; one binary search for all of them."""
        rows: list[int | None] = [None] * len(keys)
        first = self._hashes.searchsorted(hashes)
        candidates = np.flatnonzero(first < len(self._hashes))
        candidates = candidates[self._hashes[first[candidates]] == hashes[candidates]]
        for n in candidates.tolist():
            rows[n] = self._scan(int(first[n]), int(hashes[n]), keys[n])
        return rows

    def _scan(self, row: int, wanted: int, key: bytes) -> int | None:
        """The row of `key` among the rows from `row` on whose hash is `wanted`."""
        while row < len(self._hashes) and int(self._hashes[row]) == wanted:
            if self._key_of(row) == key:
                return row
            row += 1
        return None

    def _put(self, key: bytes, value: bytes | None) -> None:
        self._recent[key] = value
        if len(self._recent) >= self._merge_at:
            self._merge()

    def _key_of(self, row: int) -> bytes:
        start = int(self._key_start[row])
        return self._keys[start : start + int(self._key_length[row])].tobytes()

    def _value_of(self, row: int) -> bytes:
        start = int(self._value_start[row])
        return self._values[start : start + int(self._value_length[row])].tobytes()

    def _merge(self) -> None:
        """Move the dict's entries into the arrays: rows they replace or delete are dropped,
        and the rows are sorted by hash again."""
        if not self._recent:
            return
        keys = list(self._recent)
        hashes = _hashes_of(keys)
        keep = np.ones(len(self._hashes), dtype=bool)
        keep[[row for row in self._rows_of(keys, hashes) if row is not None]] = False
        live = np.fromiter((v is not None for v in self._recent.values()), bool, len(keys))
        new_keys = [key for key, value in self._recent.items() if value is not None]
        new_values = [value for value in self._recent.values() if value is not None]
        keys_blob, key_start, key_length = _appended(
            self._keys, self._key_start[keep], self._key_length[keep], new_keys
        )
        values_blob, value_start, value_length = _appended(
            self._values, self._value_start[keep], self._value_length[keep], new_values
        )
        hashes = np.concatenate([self._hashes[keep], hashes[live]])
        order = np.argsort(hashes, kind="stable")
        self._hashes = hashes[order]
        self._key_start, self._key_length = key_start[order], key_length[order]
        self._value_start, self._value_length = value_start[order], value_length[order]
        self._keys, self._values = keys_blob, values_blob
        self._recent = {}


def _appended(
    blob: np.ndarray, start: np.ndarray, length: np.ndarray, more: list[bytes]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`blob` with the bytes of `more` after it, and the rows (start, length) followed by
    those of `more`. Bytes of dropped rows stay until they are half of the blob; then the
    blob is rewritten with the live rows only."""
    length = length.astype(np.int64)
    live = int(length.sum())
    if len(blob) > 2 * live + 65536:
        view = memoryview(blob)
        blob = np.frombuffer(
            b"".join(view[s : s + n] for s, n in zip(start.tolist(), length.tolist(), strict=True)),
            dtype=np.uint8,
        )
        start = np.cumsum(length, dtype=np.int64) - length
    more_length = np.fromiter(map(len, more), np.int64, len(more))
    more_start = len(blob) + np.cumsum(more_length, dtype=np.int64) - more_length
    return (
        np.concatenate([blob, np.frombuffer(b"".join(more), dtype=np.uint8)]),
        _narrow(np.concatenate([start, more_start]), np.uint32),
        _narrow(np.concatenate([length, more_length]), np.uint16),
    )


def _narrow(numbers: np.ndarray, small: type[np.unsignedinteger]) -> np.ndarray:
    """As `small` where every number fits (4-byte offsets while a blob is under 4 GiB,
    2-byte lengths while no key or value passes 64 KiB: paths never do), else 8 bytes."""
    if len(numbers) == 0 or int(numbers.max()) <= np.iinfo(small).max:
        return numbers.astype(small)
    return numbers.astype(np.int64)
