"""Publish a model version atomically, switch `current`, keep the last N. No torch needed.

A version is assembled in a hidden staging folder and renamed into place, so the daemon
never sees a version without its manifest or with half a model file.
"""

from __future__ import annotations

import os
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sortbox.daemon.layout import fsync_dir
from sortbox.daemon.settings import Settings
from sortbox.daemon.sorting.manifest import (
    INT8_MODEL_FILE,
    MANIFEST_FILE,
    MODEL_FILE,
    Manifest,
    current_version,
    point_current_to,
    published_versions,
    read_manifest,
    sha256_file,
)

REJECTED_DIR = "rejected"


def new_version(models_dir: Path, suffix: str = "") -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    base = f"{stamp}{'-' + suffix if suffix else ''}"
    version, n = base, 1
    while (models_dir / version).exists() or (models_dir / REJECTED_DIR / version).exists():
        n += 1
        version = f"{base}-{n}"
    return version


def publish(
    models_dir: Path,
    model_file: Path,
    manifest_fields: dict[str, Any],
    extra_files: dict[str, bytes] | None = None,
    make_current: bool = True,
    keep: int = 5,
    rejected: bool = False,
    int8: tuple[Path, float] | None = None,
) -> Path:
    """Write `models_dir/<version>/`, or `models_dir/rejected/<version>/` for a candidate the
    gate refused (kept for its report, never made current). `int8`: the quantised model and
    its agreement with the float one, published beside it."""
    version = manifest_fields["version"]
    parent_dir = models_dir / REJECTED_DIR if rejected else models_dir
    parent_dir.mkdir(parents=True, exist_ok=True)
    staging = parent_dir / f".staging-{version}-{os.getpid()}"
    staging.mkdir()
    try:
        shutil.copyfile(model_file, staging / MODEL_FILE)
        fields = {**manifest_fields, "model_sha256": sha256_file(staging / MODEL_FILE)}
        if int8 is not None:
            quantised, agreement = int8
            shutil.copyfile(quantised, staging / INT8_MODEL_FILE)
            sha256 = sha256_file(staging / INT8_MODEL_FILE)
            fields["int8"] = {"sha256": sha256, "agreement": agreement}
        manifest = Manifest.model_validate(fields)
        files = {MANIFEST_FILE: manifest.model_dump_json(indent=2).encode(), **(extra_files or {})}
        for name, content in files.items():
            (staging / name).write_bytes(content)
        for entry in staging.iterdir():
            _fsync_file(entry)
        fsync_dir(staging)
        final = parent_dir / version
        os.rename(staging, final)  # fails if a non-empty folder of that name exists
        fsync_dir(parent_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if make_current and not rejected:
        point_current_to(models_dir, version)
    if not rejected:
        prune(models_dir, keep)
    return final


def prune(models_dir: Path, keep: int) -> list[str]:
    """Remove all but the newest `keep` versions; never the current one."""
    current = current_version(models_dir)
    versions = [v for v, _ in published_versions(models_dir)]
    doomed = [v for v in versions[:-keep] if v != current] if keep > 0 else []
    for version in doomed:
        shutil.rmtree(models_dir / version)
    return doomed


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def current_manifest(settings: Settings) -> Manifest | None:
    version = current_version(settings.models_dir)
    return read_manifest(settings.models_dir / version) if version else None
