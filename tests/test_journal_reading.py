"""Reading the journal: a torn last line after a crash."""

from __future__ import annotations

from pathlib import Path

from sortbox.daemon.sorting.journal import Journal, Sorted, read_journal

# -- journal -------------------------------------------------------------------------------------


def test_torn_last_line_is_tolerated_and_terminated(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    event = Sorted(src="a.jpg", root="/in", sha256="0" * 64, size=1, label="cats", confidence=0.9)
    with Journal(path) as journal:
        journal.append([event])
    with path.open("ab") as fh:
        fh.write(b'{"v":1,"ts":"2026-11-22T10:00:00Z","event":"sor')  # power cut mid-write
    assert [e.src for e in read_journal(path)] == ["a.jpg"]
    with Journal(path) as journal:
        journal.append([event.model_copy(update={"src": "b.jpg"})])
    assert [e.src for e in read_journal(path)] == ["a.jpg", "b.jpg"]
