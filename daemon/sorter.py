"""One batch through classify → decide → place → journal; shared by the daemon and `sortbox sort`.

The order matters for "nothing is ever lost": copies are durable before their journal lines are
written, journal lines are durable before any original is removed (on_success = "delete").
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import structlog
from sortbox.daemon.classify import Classifier
from sortbox.daemon.decide import Decision, decide
from sortbox.daemon.decode import Decoded
from sortbox.daemon.index import DoneIndex
from sortbox.daemon.intake import Arrival, identity_of
from sortbox.daemon.journal import Duplicate, Journal, Placement, Rejected, Review, Sorted
from sortbox.daemon.manifest import REJECTED_FOLDER, REVIEW_FOLDER
from sortbox.daemon.place import SourceChanged, copy_into, library_name, same_content

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Classified:
    items: list[Decoded]
    decisions: list[Decision | None]  # None: bad input, or content the library already has
    model: str


@dataclass
class BatchResult:
    events: list[Placement] = field(default_factory=list)
    retry: list[Arrival] = field(default_factory=list)  # not handled this time; try again later


class Sorter:
    def __init__(
        self,
        library: Path,
        index: DoneIndex,
        journal: Journal | None,
        on_success: Literal["keep", "delete"] = "keep",
    ) -> None:
        """`journal=None` is a dry run: every decision is made, nothing is written or removed."""
        self.library = library
        self.index = index
        self.journal = journal
        self.remove_originals = on_success == "delete" and journal is not None

    @property
    def dry_run(self) -> bool:
        return self.journal is None

    def sort(self, batch: list[Decoded], classifier: Classifier) -> BatchResult:
        return self.place(self.classify(batch, classifier))

    def classify(self, batch: list[Decoded], classifier: Classifier) -> Classified:
        """The compute half: no I/O, so it can run while the previous batch is being placed.

        Pictures whose content the library already holds are not run through the model;
        `place` makes the final duplicate check in order, so this is only a saving."""
        wanted = [
            n
            for n, item in enumerate(batch)
            if item.problem is None and not (item.sha256 and self.index.copy_of(item.sha256))
        ]
        decisions: list[Decision | None] = [None] * len(batch)
        if wanted:
            logits = classifier.logits(np.stack([batch[n].pixels for n in wanted]))
            for n, row in zip(wanted, logits, strict=True):
                decisions[n] = decide(row, classifier.manifest)
        return Classified(batch, decisions, classifier.version)

    def place(self, classified: Classified) -> BatchResult:
        """The I/O half, strictly in order: duplicates, rejections, copies, then the journal,
        then (on_success = "delete") the originals."""
        result = BatchResult()
        placed_now: dict[str, str] = {}  # sha256 -> dest, for repeats within this batch
        for item, decision in zip(classified.items, classified.decisions, strict=True):
            earlier = item.sha256 and (
                self.index.copy_of(item.sha256) or placed_now.get(item.sha256)
            )
            if earlier:
                result.events.append(self._duplicate(item, earlier))
                continue
            if item.problem is not None:
                event = self._attempt(result, item, lambda i=item: self._reject(i))
            elif decision is None:
                # skipped as a duplicate, but that copy was undone since: sort it next time
                result.retry.append(item.arrival)
                continue
            else:
                event = self._attempt(
                    result, item, lambda i=item, d=decision: self._place(i, d, classified.model)
                )
            if event is not None and event.dest and item.sha256:
                placed_now[item.sha256] = event.dest

        if self.journal is not None:
            self.journal.append(result.events)
        for event in result.events:
            self.index.record(event)
        if self.remove_originals:
            self._remove_originals(result.events, classified.items)
        return result

    def _attempt(
        self, result: BatchResult, item: Decoded, place: Callable[[], Placement]
    ) -> Placement | None:
        """Run one placement; a failure leaves the input where it is, to be retried."""
        try:
            event = place()
        except SourceChanged:
            log.info("changed_while_sorting", path=str(item.arrival.path))
        except OSError as exc:
            # disk full, permissions, a vanished library folder: the input stays in the inbox
            log.error("placement_failed", path=str(item.arrival.path), error=str(exc))
        else:
            result.events.append(event)
            return event
        result.retry.append(item.arrival)
        return None

    def _fields(self, item: Decoded) -> dict[str, Any]:
        identity = item.identity or item.arrival.identity
        return {
            "src": item.arrival.relative,
            "root": str(item.arrival.root),
            "sha256": item.sha256,
            "size": identity.size,
            "mtime_ns": identity.mtime_ns,
            "inode": identity.inode,
        }

    def _copy(self, item: Decoded, folder: str) -> str:
        assert item.sha256 is not None
        if self.dry_run:
            name = library_name(item.arrival.path.name, item.sha256)
            return f"{folder}/{name}"
        final = copy_into(
            item.arrival.path,
            self.library / folder,
            item.arrival.path.name,
            item.sha256,
            item.content,
        )
        if item.identity is not None:
            # keep the capture time photo tools sort by; best effort
            with contextlib.suppress(OSError):
                os.utime(final, ns=(item.identity.mtime_ns, item.identity.mtime_ns))
        return final.relative_to(self.library).as_posix()

    def _place(self, item: Decoded, decision: Decision, model: str) -> Sorted | Review:
        assert item.sha256 is not None
        orphan = self.index.orphan_for(item.sha256)
        if orphan is not None and same_content(orphan, item.sha256):
            # copied before a crash, journal line never written: adopt it, don't copy again
            dest = orphan.relative_to(self.library).as_posix()
            needs_review = orphan.parent.name == REVIEW_FOLDER
        else:
            dest = self._copy(item, decision.folder)
            needs_review = decision.needs_review
        event_type = Review if needs_review else Sorted
        return event_type(
            **self._fields(item),
            dest=dest,
            label=decision.label,
            confidence=round(decision.confidence, 6),
            top3=decision.top3,
            model=model,
            original_removed=self.remove_originals,
        )

    def _reject(self, item: Decoded) -> Rejected:
        reason = item.problem or "unknown problem"
        dest = None
        if item.sha256 is not None:
            try:
                dest = self._copy(item, REJECTED_FOLDER)
            except FileNotFoundError:
                reason = f"{reason}; vanished before it could be copied"
        log.warning("rejected", path=str(item.arrival.path), reason=reason)
        return Rejected(
            **self._fields(item),
            dest=dest,
            reason=reason,
            original_removed=self.remove_originals and dest is not None,
        )

    def _duplicate(self, item: Decoded, earlier: str) -> Duplicate:
        removable = self.remove_originals and self._library_still_has(earlier, item.sha256)
        return Duplicate(
            **self._fields(item),
            dest=earlier,
            reason=f"same content as {earlier}",
            original_removed=removable,
        )

    def _library_still_has(self, dest: str, sha256: str | None) -> bool:
        # a duplicate's original may only go if the earlier copy is really still there
        return sha256 is not None and same_content(self.library / dest, sha256)

    def _remove_originals(self, events: list[Placement], batch: list[Decoded]) -> None:
        by_source = {(str(item.arrival.root), item.arrival.relative): item for item in batch}
        for event in events:
            if not event.original_removed:
                continue
            item = by_source[(event.root, event.src)]
            if identity_of(item.arrival.path) != (item.identity or item.arrival.identity):
                log.warning("original_changed_not_removed", path=str(item.arrival.path))
                continue
            item.arrival.path.unlink(missing_ok=True)
