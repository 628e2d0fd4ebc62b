"""What a published model is: `models_dir/<version>/{model.onnx, manifest.json}`.

`models_dir/current` is a symlink to the version in use; it is switched by renaming a new
symlink over it, so readers always see either the old or the new model, never a mix.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import re
import unicodedata
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from sortbox.daemon.layout import RESERVED_FOLDERS, fsync_dir, replacing
from sortbox.daemon.sorting.preprocess import Preprocessing
from sortbox.daemon.sorting.quality import QualityLimits
from sortbox.daemon.sorting.thresholds import (
    ALWAYS_REVIEW,
    CalibrationPoints,
    derive_thresholds,
    sorts_nothing,
)

MODEL_FILE = "model.onnx"
INT8_MODEL_FILE = "model.int8.onnx"
MANIFEST_FILE = "manifest.json"
CURRENT = "current"
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class ModelError(Exception):
    """A model that must not be used; the message says why."""


def check_class_name(name: str) -> str:
    """Class names become folder names: refuse anything that is not one plain folder."""
    problems = []
    if not name or len(name) > 100:
        problems.append("must be 1 to 100 characters")
    if "/" in name or "\\" in name:
        problems.append("contains a path separator")
    if name in (".", "..") or name.startswith("."):
        problems.append("starts with a dot")
    if any(unicodedata.category(ch).startswith("C") for ch in name):
        problems.append("contains a control character")
    if name in RESERVED_FOLDERS:
        problems.append("is a reserved folder name")
    if problems:
        raise ValueError(f"class name {name!r} " + ", ".join(problems))
    return name


def check_version(version: str) -> str:
    if not _VERSION.match(version) or version == CURRENT:
        raise ValueError(f"model version {version!r} must be letters, digits, '.', '_' or '-'")
    return version


class Int8Model(BaseModel):
    """The quantised model published beside the float one. When present, it is what the
    daemon runs, and the manifest's temperature and thresholds were derived from its outputs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    file: Literal["model.int8.onnx"] = INT8_MODEL_FILE
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    # share of the calibration pictures on which it gives the float model's label
    agreement: float = Field(ge=0.0, le=1.0)


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal[1] = 1
    version: str
    created: datetime
    # default: ImageNet grouped by hand; fast: a head on frozen features; fine-tuned: the
    # last stages trained too ("trained": sortbox 0.1)
    kind: Literal["default", "trained", "fast", "fine-tuned"] = "trained"
    classes: list[str] = Field(min_length=1)
    preprocessing: Preprocessing
    input_name: str = "input"
    temperature: float = Field(1.0, gt=0.0)
    thresholds: dict[str, float]
    model_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    parent: str | None = None
    training_set_hash: str | None = None
    expected_review_rate: float | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)
    backbone: str | None = None
    # The calibration split's predictions and the precision the thresholds were derived for:
    # with them, the daemon re-derives the thresholds for the target in config.toml.
    calibration: CalibrationPoints | None = None
    target_precision: float | None = Field(None, gt=0.0, le=1.0)
    int8: Int8Model | None = None
    # The unknown check (issue #33): the model's second output scores how unlike every class a
    # picture is; above this it goes to review. None: no check (a model without the output,
    # as every model before it, decides as it always did).
    unknown_threshold: float | None = None
    unknown_review_rate: float | None = Field(None, ge=0.0, lt=1.0)  # what it was set for
    # How blurry, dark, bright or flat the training pictures went (quality.py): a picture past
    # them goes to review as too poor to judge. None: no check (models published before it).
    quality_limits: QualityLimits | None = None

    @field_validator("version")
    @classmethod
    def _version_is_a_folder_name(cls, version: str) -> str:
        return check_version(version)

    @field_validator("classes")
    @classmethod
    def _classes_are_folder_names(cls, classes: list[str]) -> list[str]:
        for name in classes:
            check_class_name(name)
        if len(set(classes)) != len(classes):
            raise ValueError("classes must be unique")
        return classes

    @model_validator(mode="after")
    def _threshold_per_class(self) -> Manifest:
        if set(self.thresholds) != set(self.classes):
            raise ValueError("thresholds must name exactly the classes")
        if any(not 0.0 <= t <= 1.0 and t != ALWAYS_REVIEW for t in self.thresholds.values()):
            raise ValueError(f"thresholds must lie between 0 and 1 (or be {ALWAYS_REVIEW})")
        return self


def retarget(manifest: Manifest, target_precision: float) -> Manifest:
    """The manifest with thresholds for a target precision, where it carries the calibration
    predictions to derive them from; unchanged otherwise (the default model). Derived even for
    the target it was published with, so a model published under an older rule follows the
    current one."""
    if manifest.calibration is None:
        return manifest
    derived = derive_thresholds(
        manifest.calibration, manifest.classes, target_precision, manifest.unknown_threshold
    )
    return manifest.model_copy(
        update={
            "thresholds": derived.per_class,
            "target_precision": target_precision,
            "expected_review_rate": 1.0 - derived.auto_share,
        }
    )


LOWEST_TARGET_TRIED = 0.5  # below it, "precision" means a coin toss would do as well


def highest_showable_target(manifest: Manifest, below: float) -> float | None:
    """The highest target precision under `below`, in whole percents down to
    LOWEST_TARGET_TRIED, for which the manifest's calibration evidence shows a threshold (so
    the model would auto-sort some pictures); None if none does. Only a model that carries its
    calibration predictions can be asked (hand-set thresholds have none to derive from)."""
    if manifest.calibration is None:
        return None
    lowest = round(LOWEST_TARGET_TRIED * 100)
    for percent in range(math.ceil(below * 100) - 1, lowest - 1, -1):
        target = percent / 100
        if not sorts_nothing(retarget(manifest, target).thresholds):
            return target
    return None


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_manifest(version_dir: Path) -> Manifest:
    try:
        raw = json.loads((version_dir / MANIFEST_FILE).read_text(encoding="utf-8"))
        return Manifest.model_validate(raw)
    except FileNotFoundError:
        raise ModelError(f"{version_dir}: no {MANIFEST_FILE}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f"{version_dir / MANIFEST_FILE}: not valid JSON ({exc})") from None
    except ValidationError as exc:
        raise ModelError(f"{version_dir / MANIFEST_FILE}: malformed manifest: {exc}") from None


def verify_model_file(version_dir: Path, manifest: Manifest, runtime: bool = True) -> Path:
    """The model file the daemon runs (`runtime`: the INT8 one where published, else the
    float one), checked against the manifest's sha256."""
    if runtime and manifest.int8 is not None:
        model_path, expected = version_dir / manifest.int8.file, manifest.int8.sha256
    else:
        model_path, expected = version_dir / MODEL_FILE, manifest.model_sha256
    if not model_path.is_file():
        raise ModelError(f"{version_dir}: no {model_path.name}")
    actual = sha256_file(model_path)
    if actual != expected:
        raise ModelError(
            f"{model_path}: checksum mismatch (manifest says {expected[:12]}…, "
            f"file is {actual[:12]}…); refusing a model that is not the one published"
        )
    return model_path


def current_version(models_dir: Path) -> str | None:
    try:
        return check_version(os.readlink(models_dir / CURRENT))
    except (OSError, ValueError):  # missing, or not a symlink (someone made it a folder)
        return None


def point_current_to(models_dir: Path, version: str) -> None:
    """Atomically make `current` name `version` (a relative symlink, renamed into place)."""
    check_version(version)
    if not (models_dir / version / MANIFEST_FILE).is_file():
        raise ModelError(f"no published model {version!r} in {models_dir}")
    with replacing(models_dir / CURRENT) as temporary:
        try:
            os.symlink(version, temporary)
        except OSError as exc:
            if exc.errno not in (errno.ENOSYS, errno.EPERM, errno.EOPNOTSUPP):
                raise
            raise ModelError(
                f"{models_dir} is on a filesystem without symbolic links (FAT, exFAT), which "
                "`current` is: keep models_dir on a Linux filesystem; only the library needs "
                "the big disk"
            ) from None
    fsync_dir(models_dir)


def published_versions(models_dir: Path) -> list[tuple[str, Manifest]]:
    """Every readable published version, oldest first."""
    found = []
    if models_dir.is_dir():
        for entry in models_dir.iterdir():
            if entry.name.startswith(".") or entry.name == CURRENT or not entry.is_dir():
                continue
            try:
                found.append((entry.name, read_manifest(entry)))
            except ModelError:
                continue
    return sorted(found, key=lambda item: item[1].created)

