"""Decide when a file in the inbox is complete. Kept apart from the watch loop.

A file is complete when no writer has it open (inotify open/close events, where we get them)
and its size and mtime have not changed for a quiet period. Polling mode (network
filesystems) has no open/close events, so there a file must look the same at two checks
a quiet period apart (`confirmations=2`).

The quiet period is only paid where it protects against a writer we cannot see. A file
renamed into the inbox was finished before the rename; a file created in the inbox while we
watch has had every open seen, so when the last writer closes it after writing, it is
complete then. A file we first met some other way (found by a rescan, written before we
started) waits out the quiet period.

A file can also look complete and not be: a program that closes it between pieces (`cat part
>> x.jpg`, a resumed upload). A picture that cannot be decoded is therefore held once for the
rest (`touched(path, hold_s)`), and comes back either changed (held again if still broken) or
as it was, when it is as it will be (`Stable.may_be_unfinished` False), and so is a file renamed
into place. No clock but ours is involved: a network share's ctimes play no part.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from sortbox.daemon.intake.files import Identity, identity_of


@dataclass
class _Candidate:
    identity: Identity | None
    changed_at: float
    writers: int = 0
    confirmed: int = 0  # checks in a row, a quiet period apart, that found it unchanged
    # created while we watched: every writer's open was seen, so the last close is the end
    writers_known: bool = False
    open_since: float | None = None  # when its writers went from none to some
    said_held_open: bool = False
    # as it will be if it is still as this: renamed into place (its writer finished before
    # it appeared), or handed back so by intake (a second look at a file known complete; a
    # picture held for the rest of it, which comes back unchanged or not at all)
    complete_as: Identity | None = None
    # held for the rest of it until then, unless it changes from `complete_as` before
    held_until: float | None = None


class Stable(NamedTuple):
    path: Path
    identity: Identity
    # it may still grow (a writer that closes between pieces): not renamed into place, nor
    # back unchanged from a hold. A picture that cannot be decoded is held, not rejected.
    may_be_unfinished: bool


class StabilityTracker:
    def __init__(
        self,
        quiet_period_s: float,
        confirmations: int = 1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.quiet_period_s = quiet_period_s
        self.confirmations = confirmations
        self._clock = clock
        self._lock = threading.Lock()
        self._candidates: dict[Path, _Candidate] = {}
        self._queued: set[Path] = set()

    def touched(
        self, path: Path, hold_s: float = 0.0, complete_as: Identity | None = None
    ) -> None:
        """Created, written or found by a rescan: (re)start its quiet period. `complete_as`:
        if it is still this, it comes back as complete; `hold_s` (a picture that cannot be
        decoded yet, as `complete_as` or as it is now): not before that long, unless it
        changes."""
        with self._lock:
            candidate = self._candidates.get(path)
            if candidate is None:
                candidate = self._candidates[path] = _Candidate(identity_of(path), self._clock())
            else:
                self._restart_if_changed(path, candidate)
            if hold_s > 0:
                candidate.held_until = self._clock() + hold_s
                complete_as = complete_as or candidate.identity
            candidate.complete_as = complete_as or candidate.complete_as

    def _restart_if_changed(self, path: Path, candidate: _Candidate) -> None:
        identity = identity_of(path)
        if identity != candidate.identity:
            candidate.identity = identity
            candidate.changed_at = self._clock()
            candidate.confirmed = 0

    def created(self, path: Path) -> None:
        """Created in the inbox while we watch: from here on every writer's open is seen."""
        with self._lock:
            candidate = self._candidates.get(path)
            if candidate is None:
                self._candidates[path] = _Candidate(
                    identity_of(path), self._clock(), writers_known=True
                )
            else:  # the open came first (events of one create can be read in either order)
                candidate.writers_known = True
                self._restart_if_changed(path, candidate)

    def renamed(self, path: Path) -> None:
        """Renamed into place (a browser's .part, rsync's temp file, `mv`): the writer finished
        before the rename, so no quiet period is needed; one check of its identity is."""
        with self._lock:
            candidate = self._candidates.get(path)
            if candidate is not None and candidate.writers > 0:
                self._restart_if_changed(path, candidate)  # still open somewhere: wait as usual
                return
            identity = identity_of(path)
            candidate = _Candidate(identity, self._clock(), complete_as=identity)
            self._complete_now(candidate)
            self._candidates[path] = candidate

    def _complete_now(self, candidate: _Candidate) -> None:
        """No quiet period, no further checks: take it at the next look, if unchanged."""
        candidate.changed_at = self._clock() - self.quiet_period_s
        candidate.confirmed = self.confirmations - 1

    def opened(self, path: Path) -> None:
        with self._lock:
            candidate = self._candidates.setdefault(path, _Candidate(None, self._clock()))
            if candidate.writers == 0:
                candidate.open_since = self._clock()
            candidate.writers += 1

    def closed(self, path: Path, wrote: bool = False) -> None:
        """Closed after writing (`wrote`) or reading. When the last writer of a file whose
        writers we all saw closes it after writing, it is complete now; otherwise its quiet
        period starts now. A writer we never saw open (it opened before we started) is
        clamped at zero."""
        with self._lock:
            candidate = self._candidates.get(path)
            if candidate is None:
                return
            candidate.writers = max(0, candidate.writers - 1)
            if candidate.writers == 0:
                candidate.open_since, candidate.said_held_open = None, False
            candidate.identity = identity_of(path)
            candidate.confirmed = 0
            candidate.changed_at = self._clock()
            if wrote and candidate.writers_known and candidate.writers == 0:
                self._complete_now(candidate)

    def held_open(self, longer_than_s: float) -> list[Path]:
        """Files some program has had open longer than this, each named once: inotify cannot
        tell a reader from a writer, so a program that keeps a file open (a stalled copy, a
        media server) makes it wait, and the wait must not be silent."""
        now = self._clock()
        with self._lock:
            held = [
                (path, candidate)
                for path, candidate in self._candidates.items()
                if candidate.writers > 0
                and not candidate.said_held_open
                and candidate.open_since is not None
                and now - candidate.open_since >= longer_than_s
            ]
            for _, candidate in held:
                candidate.said_held_open = True
        return [path for path, _ in held]

    def events_lost(self) -> None:
        """The kernel dropped events (inotify's queue overflowed): a close we never got would
        keep a file "open" for ever. Every file waiting is treated as one met by a rescan: its
        writers unknown, its quiet period started again."""
        with self._lock:
            now = self._clock()
            for candidate in self._candidates.values():
                candidate.writers, candidate.writers_known = 0, False
                candidate.changed_at, candidate.confirmed = now, 0

    def take_stable(self) -> list[Stable]:
        """Candidates that are complete now; they stay `queued` until `finished`."""
        now = self._clock()
        stable = []
        with self._lock:
            for path, candidate in list(self._candidates.items()):
                if path in self._queued or candidate.writers > 0:
                    continue
                if now - candidate.changed_at < self.quiet_period_s:
                    continue
                identity = identity_of(path)
                unchanged = identity is not None and identity == candidate.complete_as
                if identity is None:
                    del self._candidates[path]  # gone (renamed away, deleted)
                elif identity != candidate.identity:
                    candidate.identity, candidate.changed_at = identity, now
                    candidate.confirmed = 0
                elif unchanged and now < (candidate.held_until or 0.0):
                    continue  # still waiting for the rest of it
                elif candidate.confirmed + 1 < self.confirmations:
                    candidate.confirmed += 1
                    candidate.changed_at = now  # look again one quiet period from now
                else:
                    del self._candidates[path]
                    self._queued.add(path)
                    stable.append(Stable(path, identity, may_be_unfinished=not unchanged))
        return stable

    def next_due_in(self) -> float | None:
        """Seconds until the earliest candidate could be stable; None when there is none."""
        with self._lock:
            due = [
                max(c.changed_at + self.quiet_period_s, _held_until(c))
                for p, c in self._candidates.items()
                if c.writers == 0 and p not in self._queued
            ]
        if not due:
            return None
        return max(0.0, min(due) - self._clock())

    def finished(self, path: Path) -> None:
        with self._lock:
            self._queued.discard(path)

    def is_tracked(self, path: Path) -> bool:
        with self._lock:
            return path in self._candidates or path in self._queued

    @property
    def waiting(self) -> int:
        with self._lock:
            return len(self._candidates) + len(self._queued)


def _held_until(candidate: _Candidate) -> float:
    """When its hold ends, as far as the events tell: at once if it changed since."""
    held = candidate.held_until is not None and candidate.identity == candidate.complete_as
    return candidate.held_until if held else 0.0  # type: ignore[return-value]
