"""The done-index's compact map behaves as a dict would, across merges, deletions and the
compaction of its blobs."""

from __future__ import annotations

import random

import pytest
from sortbox.daemon.sorting import compact_map
from sortbox.daemon.sorting.compact_map import CompactMap


def test_a_random_history_reads_back_as_a_dict_would() -> None:
    rng = random.Random(7)
    compact, expected = CompactMap(merge_at=64), {}
    # few distinct keys, so most operations replace or delete a key already in the arrays
    keys = [f"/inbox/scan{n:04}.jpg".encode() for n in range(300)]
    for step in range(20_000):
        key = rng.choice(keys)
        if rng.random() < 0.2:
            compact.pop(key)
            expected.pop(key, None)
        else:
            value = rng.randbytes(rng.randrange(0, 40))
            compact[key] = value
            expected[key] = value
        if step % 997 == 0:
            assert len(compact) == len(expected)
    assert dict(compact.items()) == expected
    assert len(compact) == len(expected)
    for key in keys:
        assert compact.get(key) == expected.get(key)
        assert (key in compact) == (key in expected)
    # replaced and deleted rows' bytes do not pile up in the blobs
    live = sum(len(k) + len(v) for k, v in expected.items())
    assert compact._keys.nbytes + compact._values.nbytes <= 2 * live + 2 * 65536


def test_keys_whose_hashes_collide_stay_apart(monkeypatch: pytest.MonkeyPatch) -> None:
    # 8-byte hash collisions cannot be found on purpose: make every key fall in 3 buckets
    monkeypatch.setattr(compact_map, "_hash", lambda key: len(key) % 3)
    compact = compact_map.CompactMap(merge_at=16)
    for n in range(500):
        compact[str(n).encode()] = f"value {n}".encode()
    compact.pop(b"250")
    assert all(
        compact.get(str(n).encode()) == (None if n == 250 else f"value {n}".encode())
        for n in range(500)
    )
    assert compact.get(b"absent") is None
    assert len(compact) == 499


def test_an_empty_value_is_a_value() -> None:
    compact = CompactMap([(b"a", b"")], merge_at=1)
    assert compact.get(b"a") == b""
    assert b"a" in compact
    compact.pop(b"a")
    assert compact.get(b"a") is None
    assert len(compact) == 0


def test_a_value_longer_than_two_byte_lengths_allow_reads_back_whole() -> None:
    long = bytes(range(256)) * 300  # 76,800 bytes: lengths are kept in 2 bytes until this
    compact = CompactMap([(b"short", b"x"), (b"long", long)], merge_at=1)
    compact[b"later"] = b"y"
    assert compact.get(b"long") == long
    assert compact.get(b"short") == b"x" and compact.get(b"later") == b"y"
