"""Real-world precision, measured from what people do with the library.

The folder is the label, and untouched files are not "right" before anyone looked at them
(#32). What a person did is evidence of two kinds:
- spot checks (confident decisions sent to review on purpose, `audit_rate`) are a random
  sample of what would have been auto-sorted: one filed into a class folder is right if that is
  the class the model chose. Only they *measure* precision, with a 95% interval;
- an auto-sorted picture a person moved into another class folder is a known mistake. Moves
  are not a sample (a person moves only what is wrong), so they cannot measure precision; they
  cap it: of the auto-sorted pictures, at most (auto-sorted - moved) are right (`at_most`).
  Confirmations in an audit are not a sample either (the audit shows the least confident
  first): they are counted, and they are labels, but they measure nothing. A first user who
  moved one wrong picture of 167 was shown "0.0%" when these were mixed with the spot checks.
Pictures deleted, renamed beyond recognition or not yet reviewed are not counted either way.

Files are recognised by the 12-hex content hash in their library name, which moving a file
in a file manager keeps: no hashing of the library is needed.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sortbox.daemon.intake.group import COMPANION_OF
from sortbox.daemon.layout import RESERVED_FOLDERS
from sortbox.daemon.sorting.copies import LIBRARY_NAME
from sortbox.daemon.sorting.decide import SPOT_CHECK
from sortbox.daemon.sorting.journal import (
    DAEMON_STARTED,
    Event,
    ModelLoaded,
    Review,
    Reviewed,
    Sorted,
    Undone,
)
from sortbox.daemon.sorting.manifest import Manifest
from sortbox.daemon.sorting.thresholds import PROMISE_BATCH, sorts_nothing, wilson_interval

WINDOW_DAYS = 30
MIN_FOR_WARNING = 20  # spot checks before measured precision may raise a warning


def folders_by_hash(library: Path) -> dict[str, set[str]]:
    """12-hex content hash -> the library folders a file with that hash sits in now: the class
    folder at the top, however deep below it the file is (keep_subfolders, albums a person
    made). Links and hidden names are never entered."""
    where: dict[str, set[str]] = {}
    if not library.is_dir():
        return where
    for folder in library.iterdir():
        if folder.name.startswith(".") or not folder.is_dir() or folder.is_symlink():
            continue
        below = [folder]
        while below:
            with os.scandir(below.pop()) as entries:
                for entry in entries:
                    if entry.name.startswith("."):
                        continue
                    if entry.is_dir(follow_symlinks=False):
                        below.append(Path(entry.path))
                    elif match := LIBRARY_NAME.match(entry.name):
                        where.setdefault(match["hash"], set()).add(folder.name)
    return where


@dataclass
class Tally:
    auto_sorted: int = 0  # auto-sorted and still to be found in the library
    corrections: int = 0  # ... of which a person moved to another class
    confirmed: int = 0  # ... of which a person confirmed where they are
    spot_checks: int = 0  # spot checks a person filed into a class folder
    spot_checks_right: int = 0

    def add(self, other: Tally) -> None:
        self.auto_sorted += other.auto_sorted
        self.corrections += other.corrections
        self.confirmed += other.confirmed
        self.spot_checks += other.spot_checks
        self.spot_checks_right += other.spot_checks_right

    @property
    def judged(self) -> int:
        """Pictures a person looked at, of every kind (the sample is `spot_checks`)."""
        return self.corrections + self.confirmed + self.spot_checks

    @property
    def at_most(self) -> float | None:
        """The most the auto-sorted pictures can be right, the moved ones being wrong; None
        while nothing was moved (then it caps nothing)."""
        if not self.auto_sorted or not self.corrections:
            return None
        return (self.auto_sorted - self.corrections) / self.auto_sorted

    def report(self, promised: float | None) -> dict[str, Any]:
        sampled, cap = self.spot_checks, self.at_most
        precision = self.spot_checks_right / sampled if sampled else None
        low, high = wilson_interval(self.spot_checks_right, sampled)
        if precision is not None and cap is not None:  # the sample cannot outdo the count
            precision, low, high = min(precision, cap), min(low, cap), min(high, cap)
        return {
            "auto_sorted": self.auto_sorted,
            "corrections": self.corrections,
            "confirmed": self.confirmed,
            "judged": self.judged,
            "spot_checks_reviewed": sampled,
            "spot_checks_right": self.spot_checks_right,
            # measured on the random sample only, capped by the known mistakes
            "precision": precision,
            "interval": [round(low, 4), round(high, 4)] if sampled else None,
            "at_most": None if cap is None else round(cap, 4),
            "promised": promised,
        }


@dataclass
class Measured:
    overall: Tally = field(default_factory=Tally)
    per_class: dict[str, Tally] = field(default_factory=dict)


def measure(
    events: Iterable[Event], where: dict[str, set[str]], since: datetime, model: str | None = None
) -> Measured:
    """Tally the decisions made since `since` (by `model` only, if given) against where their
    files are now. Pure."""
    latest: dict[str, Sorted | Review] = {}
    confirmed: set[str] = set()  # contents a person confirmed where the daemon put them
    for event in events:
        if isinstance(event, Sorted | Review) and event.sha256 and event.dest:
            if not (event.reason or "").startswith(COMPANION_OF):  # a RAW file or sidecar
                latest[event.sha256] = event  # that went with its picture is no second vote
                confirmed.discard(event.sha256)
        elif isinstance(event, Undone) and event.sha256:
            latest.pop(event.sha256, None)
        elif isinstance(event, Reviewed) and event.sha256 and event.src == event.dest:
            confirmed.add(event.sha256)
    measured = Measured()
    for sha256, event in latest.items():
        if event.ts < since or (model is not None and event.model != model):
            continue
        classes_now = {f for f in where.get(sha256[:12], set()) if f not in RESERVED_FOLDERS}
        if not classes_now:
            continue  # deleted, renamed, or (a spot check) not reviewed yet: no evidence
        if isinstance(event, Sorted):
            put = event.dest.split("/", 1)[0]  # type: ignore[union-attr]
            moved = put not in classes_now
            outcome = Tally(
                auto_sorted=1,
                corrections=int(moved),
                confirmed=int(not moved and sha256 in confirmed),
            )
        elif event.reason == SPOT_CHECK:
            outcome = Tally(spot_checks=1, spot_checks_right=int(event.label in classes_now))
        else:
            continue  # unsure pictures reviewed are labels, not a measure of auto-sorting
        for tally in (measured.overall, measured.per_class.setdefault(event.label, Tally())):
            tally.add(outcome)
    return measured


def as_it_decides_now(events: list[Event], version: str) -> list[Event]:
    """The journal from where `version` began deciding as it decides now: after the last line
    that switched to it or changed the target its thresholds were derived for (a reload after
    a new target_precision, or a restart with one). What came before was decided otherwise,
    and neither its review rate nor its precision speaks for today's thresholds."""
    start, target = 0, None
    for n, event in enumerate(events):
        if not isinstance(event, ModelLoaded) or event.model != version:
            continue
        new_target = event.target_precision is not None and event.target_precision != target
        if event.reason != DAEMON_STARTED or new_target:
            start = n + 1
        target = event.target_precision if event.target_precision is not None else target
    return events[start:]


def promised_precision(manifest: Manifest) -> tuple[float | None, dict[str, float]]:
    """What the model promises auto-sorted pictures reach, `manifest` as the daemon runs it
    (`retarget`: thresholds derived for the target in config.toml): that target, which the
    trainer's evidence proved for these thresholds (Learn-then-Test, thresholds.py: at least
    the target over a batch of pictures, with 90 % confidence), overall; nothing per class. A
    model without calibration predictions (the default model's hand-set thresholds) promised
    nothing, and nothing is shown as its promise (#32); nor does one whose evidence sorts
    nothing automatically."""
    if manifest.calibration is None or sorts_nothing(manifest.thresholds):
        return None, {}
    return manifest.target_precision, {}


def precision_report(
    events: list[Event], library: Path, manifest: Manifest | None, now: datetime
) -> dict[str, Any]:
    """`manifest`: the current model's, retargeted as the daemon runs it."""
    where, since = folders_by_hash(library), now - timedelta(days=WINDOW_DAYS)
    measured = measure(events, where, since)
    overall_promise, class_promise = (
        promised_precision(manifest) if manifest is not None else (None, {})
    )
    overall = measured.overall.report(overall_promise)
    # the promise is the current model's: only its own decisions can break it (an older
    # model's mistakes would keep the warning up for 30 days after training fixed them)
    own = (
        measure(as_it_decides_now(events, manifest.version), where, since, manifest.version)
        if manifest is not None
        else Measured()
    ).overall
    overall["below_promise"] = below_promise(own, overall_promise)
    return {
        "days": WINDOW_DAYS,
        "overall": overall,
        # the model in use alone, as it decides now, beside its promise: the rows above mix
        # every model of the window, and an earlier model's spot checks (or this one's under
        # another target) next to today's promise read as broken
        "current_model": own.report(overall_promise),
        "per_class": {
            name: tally.report(class_promise.get(name))
            for name, tally in sorted(measured.per_class.items())
        },
    }


def below_promise(tally: Tally, promised: float | None) -> bool:
    """The promise is measurably broken: the spot checks' whole 95% interval lies below it, or
    people moved so many of PROMISE_BATCH or more auto-sorted pictures that fewer than the
    promised share can be right (what the promise says, counted)."""
    if promised is None:
        return False
    sampled = tally.spot_checks
    measured_below = (
        sampled >= MIN_FOR_WARNING
        and wilson_interval(tally.spot_checks_right, sampled)[1] < promised
    )
    at_most = tally.at_most
    counted_below = (
        at_most is not None and tally.auto_sorted >= PROMISE_BATCH and at_most < promised
    )
    return measured_below or counted_below
