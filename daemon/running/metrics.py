"""Counters for STATUS= lines and for a Prometheus node_exporter textfile (no port opened)."""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from sortbox.daemon.layout import replacing
from sortbox.daemon.sorting.journal import Placement

_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass
class Metrics:
    """Written by the placer, read by the heartbeat and the metrics file: every access to the
    counters holds `_lock` (a new class folder adds a key while another thread iterates)."""

    events: Counter[tuple[str, str]] = field(default_factory=Counter)  # (event, folder) -> n
    batch_buckets: Counter[float] = field(default_factory=Counter)
    batch_seconds_sum: float = 0.0
    batches: int = 0
    queue_depth: int = 0
    model: str = ""
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def observe_batch(self, events: list[Placement], seconds: float) -> None:
        with self._lock:
            for event in events:
                folder = event.dest.split("/", 1)[0] if event.dest else ""
                self.events[(event.event, folder)] += 1
            self.batches += 1
            self.batch_seconds_sum += seconds
            for bound in _BUCKETS:
                if seconds <= bound:
                    self.batch_buckets[bound] += 1

    def total(self, event: str) -> int:
        with self._lock:
            return sum(n for (name, _), n in self.events.items() if name == event)

    def status_line(self) -> str:
        return (
            f"model {self.model}; sorted {self.total('sorted')}, review {self.total('review')}, "
            f"duplicates {self.total('duplicate')}, rejected {self.total('rejected')}; "
            f"waiting {self.queue_depth}"
        )

    def render(self) -> str:
        with self._lock:
            events, buckets = dict(self.events), dict(self.batch_buckets)
            batches, seconds_sum = self.batches, self.batch_seconds_sum
        lines = [
            "# HELP sortbox_files_total Files handled since start, by outcome and folder.",
            "# TYPE sortbox_files_total counter",
        ]
        for (event, folder), count in sorted(events.items()):
            lines.append(
                f'sortbox_files_total{{event="{event}",folder="{_escape(folder)}"}} {count}'
            )
        lines += [
            "# HELP sortbox_batch_seconds Time to classify, place and journal one batch.",
            "# TYPE sortbox_batch_seconds histogram",
        ]
        for bound in _BUCKETS:
            lines.append(f'sortbox_batch_seconds_bucket{{le="{bound}"}} {buckets.get(bound, 0)}')
        lines += [
            f'sortbox_batch_seconds_bucket{{le="+Inf"}} {batches}',
            f"sortbox_batch_seconds_sum {seconds_sum:.6f}",
            f"sortbox_batch_seconds_count {batches}",
            "# HELP sortbox_queue_depth Inbox files seen but not yet sorted.",
            "# TYPE sortbox_queue_depth gauge",
            f"sortbox_queue_depth {self.queue_depth}",
            "# HELP sortbox_model_info The model version in use.",
            "# TYPE sortbox_model_info gauge",
            f'sortbox_model_info{{version="{_escape(self.model)}"}} 1',
        ]
        return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def write_textfile(path: Path, text: str) -> None:
    """node_exporter reads *.prom files; write-then-rename so it never sees half a file."""
    with replacing(path) as temporary:
        temporary.write_text(text, encoding="utf-8")
