"""The training set: labelled folders and the library, where the folder is the label.

A library file is a human label when the journal shows the daemon put it in needs_review or in
another class (a correction), or has no record of it (the user added it). Files the daemon
auto-sorted that nobody moved are not labels unless `train.trust_auto_sorted` is on.

Every picture has one of three roles: `train` (gradient steps), `calibration` (early stopping,
temperature, thresholds) and `test` (the gate and the reported figures; nothing is tuned on
it). Roles come from the content hash, so they never change as pictures are added; a dataset
laid out as train/, validation/ and test/ folders of classes keeps its own split.

Hygiene: unreadable files are reported and skipped, exact duplicates count once, a picture
under two labels is reported and left out, near-duplicates share a role, and classes with too
few pictures are reported and left out.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image
from sortbox.daemon.console import plural
from sortbox.daemon.intake.group import RAW_SUFFIXES
from sortbox.daemon.layout import RESERVED_FOLDERS, REVIEW_FOLDER, replacing
from sortbox.daemon.settings import Settings
from sortbox.daemon.sorting.journal import Recovered, Review, Sorted, Undone, read_journal
from sortbox.daemon.sorting.manifest import check_class_name
from sortbox.daemon.sorting.preprocess import BadImage, decode_rgb

UNREADABLE = "unreadable: not a picture Pillow can decode"
IMAGE_SUFFIXES = {
    ".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".heic", ".heif", ".avif",
    *RAW_SUFFIXES,
}  # fmt: skip
Role = Literal["train", "calibration", "test"]
ROLES: tuple[Role, ...] = ("train", "calibration", "test")
# a dataset's own split: folder name -> role
SPLIT_FOLDERS: dict[str, Role] = {
    "train": "train",
    "validation": "calibration",
    "val": "calibration",
    "test": "test",
}


@dataclass(frozen=True)
class Example:
    path: Path
    sha256: str
    label: str
    origin: str  # "dataset", "user added", "reviewed", "corrected", "auto-sorted (trusted)"


@dataclass
class TrainingSet:
    train: list[Example]
    calibration: list[Example]
    test: list[Example]
    classes: list[str]
    excluded: list[tuple[str, str]] = field(default_factory=list)  # (path or class, why)
    conflicts: list[tuple[str, list[str]]] = field(default_factory=list)  # (sha256, labels)
    # files whose exact content another labelled file already brought, under the same label:
    # a reviewed picture that is also in the dataset adds nothing, and a user should hear so
    duplicates: int = 0

    def role(self, role: Role) -> list[Example]:
        return {"train": self.train, "calibration": self.calibration, "test": self.test}[role]

    @property
    def everything(self) -> list[Example]:
        return self.train + self.calibration + self.test

    @property
    def fingerprint(self) -> str:
        """Same images with the same labels and roles → same fingerprint: nothing to retrain."""
        lines = sorted(f"{e.sha256} {e.label} {role}" for role in ROLES for e in self.role(role))
        return hashlib.sha256("\n".join(lines).encode()).hexdigest()

    def counts(self) -> dict[str, tuple[int, int, int]]:
        return {
            c: tuple(sum(e.label == c for e in self.role(role)) for role in ROLES)  # type: ignore[misc]
            for c in self.classes
        }

    def labels(self) -> dict[Role, np.ndarray]:
        """Each role's labels as class indices."""
        return {
            role: np.array([self.classes.index(e.label) for e in self.role(role)], dtype=np.int64)
            for role in ROLES
        }

    def origins(self) -> dict[str, int]:
        tally: dict[str, int] = defaultdict(int)
        for example in self.everything:
            tally[example.origin] += 1
        return dict(tally)


def gather(settings: Settings) -> TrainingSet:
    hashes = HashCache(settings.resolved_cache_dir / "hashes.json")
    excluded: list[tuple[str, str]] = []
    candidates: list[tuple[Path, str, str, Role | None]] = []  # (path, label, origin, role)
    if settings.dataset is not None:
        candidates += _dataset(settings.dataset, excluded)
    candidates += [(*c, None) for c in _library_labels(settings, hashes, excluded)]

    by_content: dict[str, list[tuple[Path, str, str, Role | None]]] = defaultdict(list)
    fingerprints: dict[str, int] = {}
    for path, label, origin, role in candidates:
        entry = hashes.get(path)
        if entry is None:
            excluded.append((str(path), UNREADABLE))
            continue
        sha256, dhash = entry
        by_content[sha256].append((path, label, origin, role))
        fingerprints[sha256] = dhash
    hashes.save()

    examples, conflicts, duplicates = [], [], 0
    given_roles: dict[str, Role] = {}
    for sha256, entries in by_content.items():
        labels = sorted({label for _, label, _, _ in entries})
        if len(labels) > 1:
            conflicts.append((sha256, labels))
            for path, *_ in entries:
                excluded.append((str(path), f"same picture labelled {', '.join(labels)}"))
            continue
        path, label, origin, _ = entries[0]  # exact duplicates count once
        duplicates += len(entries) - 1
        examples.append(Example(path, sha256, label, origin))
        roles = {role for *_, role in entries if role is not None}
        if roles:
            given_roles[sha256] = _most_held_out(roles)

    counts: dict[str, int] = defaultdict(int)
    for example in examples:
        counts[example.label] += 1
    minimum = settings.train.min_images_per_class
    too_small = {c for c, n in counts.items() if n < minimum}
    for name in sorted(too_small):
        excluded.append((name, f"class has {counts[name]} pictures, fewer than {minimum}"))
    examples = [e for e in examples if e.label not in too_small]

    cfg = settings.train
    roles = assign_roles(
        examples,
        fingerprints,
        given_roles,
        (cfg.calibration_fraction, cfg.test_fraction),
        cfg.near_duplicate_distance,
    )
    return TrainingSet(
        *([e for e in examples if roles[e.sha256] == role] for role in ROLES),
        classes=sorted({e.label for e in examples}),
        excluded=excluded,
        conflicts=conflicts,
        duplicates=duplicates,
    )


def _most_held_out(roles: set[Role]) -> Role:
    # a picture in both the test and the train folder must never be trained on
    return max(roles, key=ROLES.index)


def _dataset(
    root: Path, excluded: list[tuple[str, str]]
) -> list[tuple[Path, str, str, Role | None]]:
    """<root>/<class>/..., or <root>/{train,validation,test}/<class>/... with its own split."""
    if not root.is_dir():
        excluded.append((str(root), "dataset folder does not exist"))
        return []
    splits = {name: role for name, role in SPLIT_FOLDERS.items() if (root / name).is_dir()}
    if "train" in splits and "test" in splits.values():
        return [
            (path, label, "dataset", role)
            for name, role in splits.items()
            for path, label, _ in _labelled_folders(root / name, excluded)
        ]
    return [(*found, None) for found in _labelled_folders(root, excluded)]


def _labelled_folders(root: Path, excluded: list[tuple[str, str]]) -> list[tuple[Path, str, str]]:
    found = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if not _usable_class(folder.name, excluded):
            continue
        found += [(path, folder.name, "dataset") for path in _images_in(folder)]
    return found


def _library_labels(
    settings: Settings, hashes: HashCache, excluded: list[tuple[str, str]]
) -> list[tuple[Path, str, str]]:
    placed = _daemon_placements(settings)
    found = []
    unchecked: dict[str, int] = defaultdict(int)
    library = settings.library
    if not library.is_dir():
        return found
    # a class folder someone replaced with a symlink is not the library's (the daemon refuses
    # it too, sorting/copies.py): its pictures are not labels
    folders = (p for p in library.iterdir() if p.is_dir() and not p.is_symlink())
    for folder in sorted(p for p in folders if not p.name.startswith(".")):
        if folder.name in RESERVED_FOLDERS or not _usable_class(folder.name, excluded):
            continue
        for path in _images_in(folder):
            entry = hashes.get(path)
            if entry is None:
                excluded.append((str(path), UNREADABLE))
                continue
            record = placed.get(entry[0])
            if record is None:
                origin = "user added"
            elif record[0] == "review":
                origin = "reviewed"
            elif record[1] != folder.name:
                origin = "corrected"
            elif settings.train.trust_auto_sorted:
                origin = "auto-sorted (trusted)"
            else:
                unchecked[folder.name] += 1  # auto-sorted and untouched: not a confirmed label
                continue
            found.append((path, folder.name, origin))
    for name, count in sorted(unchecked.items()):
        excluded.append(
            (
                name,
                f"{count} auto-sorted picture{'s' if count != 1 else ''} nobody checked "
                "(not labels: move or confirm them, or set train.trust_auto_sorted = true)",
            )
        )
    return found


def _daemon_placements(settings: Settings) -> dict[str, tuple[str, str]]:
    """sha256 → (event, folder) of the daemon's latest placement of that content."""
    placed: dict[str, tuple[str, str]] = {}
    for event in read_journal(settings.journal):
        if isinstance(event, Sorted | Review) and event.sha256 and event.dest:
            placed[event.sha256] = (event.event, event.dest.split("/", 1)[0])
        elif isinstance(event, Recovered) and event.sha256 and event.dest:
            # a copy whose decision line was lost: it was placed there by the daemon, not by
            # a person, so it counts as an untouched auto-sorted (or review) picture
            folder = event.dest.split("/", 1)[0]
            placed[event.sha256] = ("review" if folder == REVIEW_FOLDER else "sorted", folder)
        elif isinstance(event, Undone) and event.sha256:
            placed.pop(event.sha256, None)
    return placed


def _usable_class(name: str, excluded: list[tuple[str, str]]) -> bool:
    try:
        check_class_name(name)
    except ValueError as exc:
        excluded.append((name, str(exc)))
        return False
    return True


def _images_in(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES
        and p.is_file()
        and not p.is_symlink()
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


# -- hashing, cached by (path, size, mtime) -----------------------------------------------------


class HashCache:
    """sha256 and perceptual hash per file; re-read only when size or mtime change."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._entries: dict[str, list] = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            self._entries = {}

    def get(self, file: Path) -> tuple[str, int] | None:
        try:
            st = file.stat()
        except OSError:
            return None
        key = str(file)
        cached = self._entries.get(key)
        if cached and cached[0] == st.st_size and cached[1] == st.st_mtime_ns:
            return (cached[2], cached[3]) if cached[2] else None
        try:
            data = file.read_bytes()
            entry = (hashlib.sha256(data).hexdigest(), difference_hash(data, file.name))
        except (OSError, BadImage):
            entry = None
        self._entries[key] = [st.st_size, st.st_mtime_ns, *(entry or (None, None))]
        return entry

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with replacing(self.path) as temporary:
            temporary.write_text(json.dumps(self._entries))


def difference_hash(data: bytes, name: str = "") -> int:
    """64-bit dHash: robust to resizing and re-compression, cheap to compare."""
    image = decode_rgb(data, 64, 10**9, name).convert("L").resize((9, 8), Image.Resampling.BILINEAR)
    pixels = np.asarray(image, dtype=np.int16)
    bits = (pixels[:, 1:] > pixels[:, :-1]).flatten()
    return int("".join("1" if b else "0" for b in bits), 2)


# -- splits --------------------------------------------------------------------------------------


def assign_roles(
    examples: list[Example],
    dhashes: dict[str, int],
    given: dict[str, Role],
    fractions: tuple[float, float],
    max_distance: int,
) -> dict[str, Role]:
    """sha256 → role. A picture given a role (a dataset's own split) keeps it. The others take
    their near-duplicate group's: the most held-out role given to a member, so a library
    picture that nearly duplicates a test picture is never trained on, else one drawn from
    the group's content hash."""
    shas = sorted({e.sha256 for e in examples})
    parent = {s: s for s in shas}

    def root(s: str) -> str:
        while parent[s] != s:
            parent[s] = parent[parent[s]]
            s = parent[s]
        return s

    codes = np.array([dhashes[s] for s in shas], dtype=np.uint64)
    for i in range(len(shas)):
        distances = _popcount(codes[i + 1 :] ^ codes[i])
        for j in np.nonzero(distances <= max_distance)[0]:
            a, b = root(shas[i]), root(shas[i + 1 + int(j)])
            if a != b:
                parent[max(a, b)] = min(a, b)
    members: dict[str, list[str]] = defaultdict(list)
    for s in shas:
        members[root(s)].append(s)
    roles: dict[str, Role] = {}
    for key, group in members.items():
        held = {given[s] for s in group if s in given}
        role = _most_held_out(held) if held else _hashed_role(key, fractions)
        # a dataset's own split is kept as it is; the group only places the rest
        roles.update({s: given.get(s, role) for s in group})
    return roles


def _hashed_role(group_key: str, fractions: tuple[float, float]) -> Role:
    calibration, test = fractions
    bucket = int(hashlib.sha256(f"split:{group_key}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    if bucket < test:
        return "test"
    return "calibration" if bucket < test + calibration else "train"


def _popcount(values: np.ndarray) -> np.ndarray:
    return np.unpackbits(values.view(np.uint8).reshape(-1, 8), axis=1).sum(axis=1)


def describe(data: TrainingSet) -> str:
    lines = [
        f"training set: {len(data.train)} train + {len(data.calibration)} calibration + "
        f"{len(data.test)} test pictures, {len(data.classes)} classes"
    ]
    lines += [
        f"  {name:24} {t:5} train {c:5} calibration {s:5} test"
        for name, (t, c, s) in data.counts().items()
    ]
    lines.append(
        "  labels from: "
        + (", ".join(f"{n} {o}" for o, n in sorted(data.origins().items())) or "nothing")
    )
    if data.duplicates:
        lines.append(
            f"  counted once: {plural(data.duplicates, 'labelled file')} holding the same "
            "picture under the same label as another (a reviewed picture also in the dataset)"
        )
    for what, why in data.excluded:
        lines.append(f"  excluded {what}: {why}")
    return "\n".join(lines)
