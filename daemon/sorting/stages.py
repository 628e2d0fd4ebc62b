"""The batch stages after reading, as plain functions: classify (+ decide), then place + journal.

The daemon, `sortbox sort`, a Ray backfill and `explain` run exactly these, from the check
that passes over what is done to the journal line. The order of `place_batch` is what makes
"nothing is ever lost" hold: copies are durable before their journal lines are written,
journal lines are durable before any original is removed or moved (on_success = "delete" or
"move").
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import structlog
from sortbox.daemon.console import not_sure_words
from sortbox.daemon.intake.files import Arrival, inside
from sortbox.daemon.intake.group import COMPANION_OF, is_raw, role_of, sidecar_name
from sortbox.daemon.layout import REJECTED_FOLDER, REVIEW_FOLDER
from sortbox.daemon.sorting.classify import Classifier
from sortbox.daemon.sorting.copies import (
    SourceChanged,
    UnusableFolder,
    copy_into,
    library_name,
    same_content,
)
from sortbox.daemon.sorting.decide import Decision, decide
from sortbox.daemon.sorting.journal import (
    Duplicate,
    Placement,
    Rejected,
    Review,
    Sorted,
)
from sortbox.daemon.sorting.library import Library, PlacedPicture
from sortbox.daemon.sorting.manifest import Manifest
from sortbox.daemon.sorting.read import Decoded, reopen_as_read

log = structlog.get_logger(__name__)

_FULL = (errno.ENOSPC, errno.EDQUOT)


@dataclass(frozen=True)
class Classified:
    items: list[Decoded]
    decisions: list[Decision | None]  # None: bad input, or content the library already has
    model: str


@dataclass
class Placed:
    events: list[Placement] = field(default_factory=list)
    retry: list[Decoded] = field(default_factory=list)  # not handled this time; try again later
    # companions of a picture that was not classified (rejected, duplicate): each on its own
    alone: list[Decoded] = field(default_factory=list)
    failure: OSError | None = None  # the library or journal could not be written: pause
    failed_writing: str = ""  # "library" or "journal"


def passed_over(arrival: Arrival, library: Library) -> Literal["done", "outside"] | None:
    """Why a file found is not sorted, or None to sort it: "done" (the journal has it, as it
    is now, unless `sort --force` asks for it to be decided again) or "outside" (not beneath
    its folder: a link or a moved folder). The one check every driver makes before reading."""
    done = None if arrival.decide_again else library.index.source(arrival.path, arrival.identity)
    if done is not None:
        if done.original_removed and library.remove_originals:
            # journaled as placed, but we stopped before removing (or moving) the original
            library.remove_original(arrival, arrival.identity)
        return "done"
    if not inside(arrival.path, arrival.root):
        log.warning("outside_inbox_skipped", path=str(arrival.path))
        return "outside"
    return None


def usable(item: Decoded) -> bool:
    """Read and decoded, and unchanged since it was admitted: the model can look at it."""
    return item.problem is None and not item.changed


def model_outputs(
    batch: list[Decoded], classifier: Classifier, wanted: Callable[[Decoded], bool] = usable
) -> list[np.ndarray | None]:
    """The model's outputs for the `wanted` pictures, in one run over the batch; None for the
    rest (not classified)."""
    chosen = [n for n, item in enumerate(batch) if wanted(item)]
    rows: list[np.ndarray | None] = [None] * len(batch)
    if chosen:
        logits = classifier.logits(np.stack([batch[n].pixels for n in chosen]))
        for n, row in zip(chosen, logits, strict=True):
            rows[n] = row
    return rows


def classify_batch(
    batch: list[Decoded], classifier: Classifier, library: Library, audit_rate: float = 0.0
) -> Classified:
    """The compute half: no writes, so it runs while the previous batch is being placed.

    Pictures whose content the library already holds are not run through the model (unless
    `sort --force` asks for them to be decided again); `place_batch` makes the final
    duplicate check under the lock, so this is only a saving."""

    def wanted(item: Decoded) -> bool:
        return usable(item) and (item.arrival.decide_again or not library.probably_has(item.sha256))

    rows = model_outputs(batch, classifier, wanted)
    return decide_batch(batch, rows, classifier.manifest, audit_rate)


def decide_batch(
    batch: list[Decoded], rows: list[np.ndarray | None], manifest: Manifest, audit_rate: float
) -> Classified:
    """Each picture's model outputs (None: not classified) -> its decision: the one place
    every driver decides (the daemon, `sort`, a Ray backfill, `explain`)."""
    decisions = [
        decide(row, manifest, item.sha256, audit_rate, item.quality) if row is not None else None
        for item, row in zip(batch, rows, strict=True)
    ]
    return Classified(batch, decisions, manifest.version)


def place_batch(classified: Classified, library: Library) -> Placed:
    """The I/O half, strictly in order: duplicates, rejections, copies, one fsync per folder,
    then the journal (one write, one fsync), then (on_success = "delete" or "move") the
    originals.

    A write that fails (disk full, read-only library) stops the batch: the rest stays in the
    inbox for later, and `failure` tells the caller to pause."""
    placed = Placed()
    with library.exclusive():
        placed_now: dict[str, str] = {}  # sha256 -> dest, for repeats within this batch
        for item, decision in zip(classified.items, classified.decisions, strict=True):
            _place_one(item, decision, classified.model, library, placed, placed_now)
        try:
            library.sync_folders()  # the copies are durable before their journal lines
            _journal(placed.events, library)
        except OSError as exc:
            # The copies made have no journal line yet: the next attempt finds them under
            # their names and adopts them. Their inputs stay in the inbox.
            return Placed(retry=list(classified.items), failure=exc, failed_writing="journal")
    if library.remove_originals:
        _remove_originals(placed.events, classified.items, library)
    return placed


def _place_one(
    item: Decoded,
    decision: Decision | None,
    model: str,
    library: Library,
    placed: Placed,
    placed_now: dict[str, str],
) -> None:
    """One picture of the batch: journaled as a duplicate, placed with its companions,
    rejected, or left for another try (what `placed` collects)."""
    if placed.failure is not None or item.changed or library.second_look(item):
        placed.retry.append(item)
        return
    earlier = (item.sha256 and placed_now.get(item.sha256)) or library.copy_of(item.sha256)
    if earlier:
        placed.events.append(_duplicate(item, earlier, library, decision))
        return
    if item.problem is None and decision is None:
        # skipped as known content, but that copy is gone: classify it next time
        placed.retry.append(item)
        return
    picture = None
    if item.sha256 is not None and role_of(item.arrival.path) != "picture":
        picture = library.picture_of(item.arrival.path)
    try:
        if picture is not None:  # came late: follows its picture, decided or not
            placed.events += _place_companions([item], picture, library, placed_now)
            return
        if item.problem is not None:
            event: Placement = _reject(item, library)
        else:
            assert decision is not None
            event = _place(item, decision, model, library)
    except SourceChanged:
        log.info("changed_while_sorting", path=str(item.arrival.path))
        placed.retry.append(item)
        return
    except OSError as exc:
        placed.failure, placed.failed_writing = exc, "library"
        placed.retry.append(item)
        return
    placed.events.append(event)
    if event.dest and item.sha256:
        placed_now[item.sha256] = event.dest
    _place_its_companions(item, event, library, placed, placed_now)


def _place_its_companions(
    item: Decoded,
    event: Placement,
    library: Library,
    placed: Placed,
    placed_now: dict[str, str],
) -> None:
    """A placed picture's RAW files and sidecars go where it went; a rejected or duplicate
    picture's come again on their own (`alone`)."""
    if not isinstance(event, Sorted | Review):
        placed.alone += item.companions
        return
    assert event.dest is not None
    picture = PlacedPicture(
        event, {item.arrival.path.name: event.dest.rsplit("/", 1)[-1]}, time.monotonic()
    )
    # remembered even without companions now: one that comes late follows it
    library.remember_picture(item.arrival.path, picture)
    try:
        placed.events += _place_companions(item.companions, picture, library, placed_now)
    except SourceChanged:
        placed.alone += item.companions  # the picture stays placed; they come again
    except OSError as exc:
        placed.failure, placed.failed_writing = exc, "library"
        placed.alone += item.companions


def is_disk_full(exc: OSError) -> bool:
    return exc.errno in _FULL


def _journal(events: list[Placement], library: Library) -> None:
    if library.journal is not None:
        library.journal.append(events)
    for event in events:
        library.index.record(event)


def _fields(item: Decoded) -> dict[str, Any]:
    identity = item.identity or item.arrival.identity
    return {
        "src": item.arrival.relative,
        "root": str(item.arrival.root),
        "sha256": item.sha256,
        "size": identity.size,
        "mtime_ns": identity.mtime_ns,
        "inode": identity.inode,
    }


def _copy(item: Decoded, folder: str, library: Library, preferred: str | None = None) -> str:
    assert item.sha256 is not None
    if library.dry_run:
        return f"{folder}/{preferred or library_name(item.arrival.path.name, item.sha256)}"
    final = copy_into(
        functools.partial(reopen_as_read, item),
        library.root / folder,
        item.arrival.path.name,
        item.sha256,
        item.content,
        preferred,
        sync_folder=library.sync_later,
        beneath=library.root,
        scratch=library.scratch,
    )
    if item.identity is not None:
        # keep the capture time photo tools sort by; best effort
        with contextlib.suppress(OSError):
            os.utime(final, ns=(item.identity.mtime_ns, item.identity.mtime_ns))
    return final.relative_to(library.root).as_posix()


def _place(item: Decoded, decision: Decision, model: str, library: Library) -> Sorted | Review:
    assert item.sha256 is not None
    orphan = library.adoptable(item.sha256)
    if orphan is not None and same_content(orphan, item.sha256):
        # copied before a crash, journal line never written: adopt it, don't copy again
        dest = orphan.relative_to(library.root).as_posix()
        needs_review = dest.split("/", 1)[0] == REVIEW_FOLDER
        reason = None
    else:
        dest, needs_review, reason = _copy_as_decided(item, decision, library)
    event_type = Review if needs_review else Sorted
    return event_type(
        **_fields(item),
        dest=dest,
        label=decision.label,
        confidence=round(decision.confidence, 6),
        top3=decision.top3,
        model=model,
        reason=reason,
        original_removed=library.remove_originals,
        unknown=decision.unknown,
        quality=decision.quality.as_journal() if decision.quality else None,
    )


def _copy_as_decided(
    item: Decoded, decision: Decision, library: Library
) -> tuple[str, bool, str | None]:
    """(dest, needs review, reason)."""
    dest, problem = _copy_or_review(
        item, library.folder_for(decision.folder, item.arrival), library
    )
    if problem:
        return dest, True, f"{problem}; placed for review"
    return dest, decision.needs_review, review_reason(decision)


def review_reason(decision: Decision) -> str | None:
    """Why a picture goes to review, in the journal's words: unlike any class, a spot check,
    or not sure enough (`0.52 < 0.60 for shirt`); None for a sorted one."""
    if decision.reason is not None or not decision.needs_review:
        return decision.reason
    if decision.threshold > 1.0:
        return f"too little calibration evidence to sort {decision.label} automatically"
    return not_sure_words(decision.confidence, decision.threshold, decision.label)


def _copy_or_review(
    item: Decoded, folder: str, library: Library, preferred: str | None = None
) -> tuple[str, str | None]:
    """(dest, why not `folder`). A class folder that cannot take the copy (a symlink or a
    file put in its place, or one not writable) sends it to review instead; the rest of the
    library goes on. If needs_review cannot take it either, the error stops the batch like a
    read-only library does."""
    try:
        return _copy(item, folder, library, preferred), None
    except UnusableFolder as exc:
        if folder == REVIEW_FOLDER:
            raise
        log.warning("folder_unusable", folder=folder, problem=exc.strerror)
        return _copy(item, REVIEW_FOLDER, library, preferred), exc.strerror


def _place_companions(
    companions: Iterable[Decoded],
    picture: PlacedPicture,
    library: Library,
    placed_now: dict[str, str],
) -> list[Placement]:
    """A picture's RAW files and sidecars, into the folder the picture went to, journaled
    with its decision. A sidecar is named after the picture it describes (group.py)."""
    placed = picture.event
    assert placed.dest is not None
    folder = placed.dest.rsplit("/", 1)[0]  # with keep_subfolders, the picture's subfolder
    names_in_library = picture.names_in_library  # grows: a late sidecar finds the RAW's name
    events: list[Placement] = []
    # RAW files first: a sidecar then pairs with the RAW copy it was written for
    ordered = sorted(companions, key=lambda c: role_of(c.arrival.path) == "sidecar")
    for companion in ordered:
        assert companion.sha256 is not None
        earlier = placed_now.get(companion.sha256) or library.copy_of(companion.sha256)
        if earlier:
            events.append(_duplicate(companion, earlier, library))
            continue
        name = companion.arrival.path.name
        preferred = None
        if role_of(companion.arrival.path) == "sidecar":
            original, in_library = _described_by(name, names_in_library)
            preferred = sidecar_name(name, original, in_library)
        # a late companion's picture folder may have gone bad since the picture was placed
        dest, problem = _copy_or_review(companion, folder, library, preferred)
        event_type: type[Sorted | Review] = Review if problem else type(placed)
        reason = f"{COMPANION_OF}{placed.src}" + (
            f"; {problem}; placed for review" if problem else ""
        )
        names_in_library[name] = dest.rsplit("/", 1)[-1]
        placed_now[companion.sha256] = dest
        fields = placed.model_dump(include={"label", "confidence", "top3", "model"})
        events.append(
            event_type(
                **_fields(companion),
                **fields,
                dest=dest,
                reason=reason,
                original_removed=library.remove_originals,
            )
        )
    return events


def _described_by(sidecar: str, names_in_library: dict[str, str]) -> tuple[str, str]:
    """The picture a sidecar belongs to: the one its name extends (`IMG_1.CR2.xmp`), else a
    RAW file (what editors write `IMG_1.xmp` for), else the group's picture."""
    for original, in_library in names_in_library.items():
        if sidecar.lower().startswith(original.lower() + "."):
            return original, in_library
    raws = [(o, n) for o, n in names_in_library.items() if is_raw(o)]
    return raws[0] if raws else next(iter(names_in_library.items()))


def _reject(item: Decoded, library: Library) -> Rejected:
    reason = item.problem or "unknown problem"
    dest = None
    if item.sha256 is not None:
        try:
            dest = _copy(item, REJECTED_FOLDER, library)
        except FileNotFoundError:
            reason = f"{reason}; vanished before it could be copied"
    log.warning("rejected", path=str(item.arrival.path), reason=reason)
    return Rejected(
        **_fields(item),
        dest=dest,
        reason=reason,
        original_removed=library.remove_originals and dest is not None,
    )


def _duplicate(
    item: Decoded, earlier: str, library: Library, decision: Decision | None = None
) -> Duplicate:
    """Content the library holds already: journaled, not copied. A picture `sort --force`
    decided again says what the model says of it now."""
    reason = f"same content as {earlier}"
    decided: dict[str, Any] = {}
    if decision is not None and item.arrival.decide_again:
        reason += f"; decided again: {decision.folder} ({decision.confidence:.2f})"
        decided = {
            "label": decision.label,
            "confidence": round(decision.confidence, 6),
            "top3": decision.top3,
        }
    return Duplicate(
        **_fields(item),
        **decided,
        dest=earlier,
        reason=reason,
        # the earlier copy was just checked to be there, byte for byte
        original_removed=library.remove_originals,
    )


def _remove_originals(events: list[Placement], batch: list[Decoded], library: Library) -> None:
    by_source = {
        (str(member.arrival.root), member.arrival.relative): member
        for item in batch
        for member in (item, *item.companions)
    }
    for event in events:
        if not event.original_removed:
            continue
        item = by_source[(event.root, event.src)]
        library.remove_original(item.arrival, item.identity or item.arrival.identity)
