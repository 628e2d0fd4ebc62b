"""Grouping, the step between intake and the queue: a picture travels with its companions.

A camera writes `IMG_0001.CR2` next to `IMG_0001.JPG`; a phone or an editor writes sidecars,
`IMG_0001.AAE` or `IMG_0001.xmp` (or `IMG_0001.CR2.xmp`); an iPhone's Live Photo is
`IMG_0001.HEIC` with its video `IMG_0001.MOV`, which travels as a sidecar. Files of one group
share a folder and a stem (case-insensitive). The group's picture (a JPEG, HEIC, ... anything
not RAW) is classified once; its RAW file and sidecars are placed in the same class folder, and
a sidecar is named after the picture it describes so photo tools still pair them.

The daemon waits for partners only where it knows one is on its way: a picture whose RAW file
or sidecar is still being written waits for it, at most `pair_wait_s`; a RAW file or sidecar
whose picture has not come yet waits that long for it. One that comes after its picture was
placed follows it all the same (sorting/library.py remembers where recent pictures went). A RAW file
whose picture never comes is classified from its own preview; a sidecar whose picture never
comes is rejected, saying so.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from sortbox.daemon.intake.files import Arrival

# Files that describe or complete a picture and are never decoded: editors' sidecars, and the
# video of an iPhone Live Photo (IMG_1.MOV beside IMG_1.HEIC), which goes where its still goes.
RAW_SUFFIXES = (".dng", ".cr2", ".cr3", ".nef", ".arw", ".orf", ".rw2", ".raf")
SIDECAR_SUFFIXES = (".xmp", ".aae", ".mov")
COMPANION_OF = "with "  # the journal's reason for a companion: "with 2026/IMG_0001.JPG"
Role = Literal["picture", "raw", "sidecar"]


def is_raw(name: str) -> bool:
    return name.lower().endswith(RAW_SUFFIXES)


def role_of(path: Path) -> Role:
    name = path.name.lower()
    if name.endswith(SIDECAR_SUFFIXES):
        return "sidecar"
    return "raw" if is_raw(name) else "picture"


def alone_reason(path: Path) -> str:
    """Why a sidecar that came without its picture is rejected."""
    if path.name.lower().endswith(".mov"):
        return (
            "a video, and sortbox sorts pictures (a Live Photo's video goes with its still, "
            "but none came within pair_wait_s)"
        )
    return "a sidecar file whose picture did not arrive with it (within pair_wait_s)"


def group_key(path: Path) -> tuple[Path, str]:
    """(folder, stem): `IMG_1.JPG`, `IMG_1.CR2`, `IMG_1.xmp` and `img_1.cr2.XMP` share one."""
    name = path.name.lower()
    if name.endswith(SIDECAR_SUFFIXES):
        name = name.rsplit(".", 1)[0]
    stem = name.split(".", 1)[0] if "." in name else name
    return (path.parent, stem)


def sidecar_name(sidecar: str, picture_original: str, picture_in_library: str) -> str:
    """The sidecar's name in the library, pairing it with the picture's library name the way
    it paired with the original: `IMG_1.CR2.xmp` → `IMG_1.<hash>.cr2.xmp`, `IMG_1.xmp` →
    `IMG_1.<hash>.xmp`."""
    extension = sidecar.rsplit(".", 1)[1].lower()
    if sidecar.lower().startswith(picture_original.lower() + "."):
        return f"{picture_in_library}.{extension}"
    return f"{picture_in_library.rsplit('.', 1)[0]}.{extension}"


def with_companions(primary: Arrival, companions: Iterable[Arrival]) -> Arrival:
    return dataclasses.replace(primary, companions=tuple(companions))


def group_all(arrivals: list[Arrival]) -> list[Arrival]:
    """`sortbox sort`: every file is known up front, so groups form without waiting."""
    groups: dict[tuple[Path, str], list[Arrival]] = {}
    for arrival in arrivals:
        groups.setdefault(group_key(arrival.path), []).append(arrival)
    result = []
    for members in groups.values():
        result += _formed(members)
    return result


def _formed(members: list[Arrival]) -> list[Arrival]:
    """A group's members as arrivals to classify: the picture carrying its companions, or
    (no picture) each member alone."""
    pictures = [m for m in members if role_of(m.path) == "picture"]
    if not pictures:
        return members
    primary, *other_pictures = pictures  # two pictures of one stem: each is classified
    companions = [m for m in members if role_of(m.path) != "picture"]
    return [with_companions(primary, companions), *other_pictures]


@dataclass
class _Waiting:
    members: list[Arrival] = field(default_factory=list)
    deadline: float = 0.0


class Grouper:
    """The daemon's grouping step. Fed stable files (`add`) and what intake has noticed but is
    not yet stable (`noticed`); hands out arrivals to classify (`take_ready`). Intake's thread
    owns it."""

    def __init__(self, pair_wait_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.pair_wait_s = pair_wait_s
        self.clock = clock
        self._waiting: dict[tuple[Path, str], _Waiting] = {}
        # noticed, not yet stable: path -> when it was noticed
        self._on_the_way: dict[tuple[Path, str], dict[Path, float]] = {}
        self._ready: list[Arrival] = []

    def noticed(self, path: Path) -> None:
        """Intake saw this file appear or change; it is not complete yet."""
        if self.pair_wait_s > 0:
            self._on_the_way.setdefault(group_key(path), {})[path] = self.clock()

    def forget(self, path: Path) -> None:
        """The file is gone (or ignored): nobody should wait for it."""
        self._settle(group_key(path), path)

    def add(self, arrival: Arrival) -> None:
        key = group_key(arrival.path)
        self._settle(key, arrival.path)
        waiting = self._waiting.get(key)
        if waiting is None:
            if role_of(arrival.path) == "picture" and not self._on_the_way.get(key):
                self._ready.append(arrival)  # the common case: nothing to wait for
                return
            waiting = self._waiting[key] = _Waiting(deadline=self.clock() + self.pair_wait_s)
        waiting.members.append(arrival)
        has_picture = any(role_of(m.path) == "picture" for m in waiting.members)
        if has_picture and not self._on_the_way.get(key):
            self._release(key)

    def take_ready(self) -> list[Arrival]:
        now = self.clock()
        for key in [k for k, w in self._waiting.items() if w.deadline <= now]:
            self._release(key)
        # a file noticed long ago that never became stable (deleted half-way): stop expecting it
        for key, paths in list(self._on_the_way.items()):
            for path in [p for p, seen in paths.items() if now - seen > 10 * self.pair_wait_s]:
                self._settle(key, path)
        ready, self._ready = self._ready, []
        return ready

    def next_due_in(self) -> float | None:
        if not self._waiting:
            return None
        return max(0.0, min(w.deadline for w in self._waiting.values()) - self.clock())

    @property
    def holding(self) -> int:
        return sum(len(w.members) for w in self._waiting.values())

    def _settle(self, key: tuple[Path, str], path: Path) -> None:
        on_the_way = self._on_the_way.get(key)
        if on_the_way is not None:
            on_the_way.pop(path, None)
            if not on_the_way:
                del self._on_the_way[key]

    def _release(self, key: tuple[Path, str]) -> None:
        self._ready += _formed(self._waiting.pop(key).members)
