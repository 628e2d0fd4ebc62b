"""The model the service classifies with, and how it changes while the service runs.

Loaded at start-up; switched when `models_dir/current` names another version (looked at once
a second, and at once on SIGHUP); its thresholds re-derived when `target_precision` changes.
A version that fails to load is refused and the model in use keeps working; it is looked at
again when its files change (fixed in place) or on SIGHUP, never refused for ever.
Only the main loop uses it.
"""

from __future__ import annotations

import dataclasses
import io
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import structlog
from PIL import Image
from sortbox.daemon.settings import Settings
from sortbox.daemon.sorting.classify import Classifier, load_classifier, load_model
from sortbox.daemon.sorting.journal import ModelLoaded
from sortbox.daemon.sorting.manifest import current_version, retarget
from sortbox.daemon.sorting.preprocess import Preprocessing, prepare

log = structlog.get_logger(__name__)

CHECK_INTERVAL_S = 1.0


def files_identity(folder: Path) -> tuple[tuple[int, int, int], ...]:
    """(inode, size, mtime) of every file in a model version's folder: a model refused and then
    fixed in place (its model.onnx copied over) is a different model to look at."""
    try:
        files = sorted(os.scandir(folder), key=lambda entry: entry.name)
        return tuple(
            (st.st_ino, st.st_size, st.st_mtime_ns) for st in (entry.stat() for entry in files)
        )
    except OSError:
        return ()


class ModelSlot:
    def __init__(self, settings: Settings, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self._clock = clock
        self._next_check = 0.0
        # the version last refused, and its files as they were: refused again only as such
        self._refused: tuple[str, tuple[tuple[int, int, int], ...]] | None = None
        self.classifier: Classifier = load_model(settings)

    @property
    def version(self) -> str:
        return self.classifier.version

    @property
    def preprocessing(self) -> Preprocessing:
        return self.classifier.manifest.preprocessing

    def warm_up(self) -> None:
        """Pay before READY what the first picture would: Pillow's plugin imports on the first
        decode (about 60 ms) and ONNX Runtime's first allocations. Only a saving: a failure
        here is met again, and handled, on the first real batch."""
        spec = self.classifier.manifest.preprocessing
        sample = io.BytesIO()
        try:
            Image.new("RGB", (spec.crop, spec.crop)).save(sample, "JPEG")
            pixels = prepare(sample.getvalue(), spec, self.settings.max_pixels, "warm-up.jpg")
            self.classifier.logits(pixels[np.newaxis])
        except Exception:
            log.warning("warm_up_failed", exc_info=True)

    def look_now(self) -> None:
        """SIGHUP: look at `current` at the next chance, and try a refused version again."""
        self._next_check = 0.0
        self._refused = None

    def look(self) -> ModelLoaded | None:
        """Switch to the version `current` names if it is new and loads; the journal line to
        write when it switched."""
        now = self._clock()
        if now < self._next_check:
            return None
        self._next_check = now + CHECK_INTERVAL_S
        version = current_version(self.settings.models_dir)
        if version is None or version == self.classifier.version:
            return None
        files = files_identity(self.settings.models_dir / version)
        if self._refused == (version, files):
            return None  # refused as it is now; fixed in place (or SIGHUP), it is looked at again
        try:
            new = load_classifier(
                self.settings.models_dir / version,
                self.settings.inference_threads,
                self.settings.inference_run_size,
                self.settings.target_precision,
            )
        except Exception as exc:
            # whatever shape the breakage takes, the model we have keeps working
            self._refused = (version, files)
            log.error("model_refused", version=version, error=f"{type(exc).__name__}: {exc}")
            return None
        return self._switch_to(new, f"switched from {self.classifier.version}")

    def retarget(self, settings: Settings) -> ModelLoaded | None:
        """New decision settings (SIGHUP): the same model, thresholds for the new target; None
        when the model cannot (hand-set thresholds, as the default model's), said plainly."""
        self.settings = settings
        if self.classifier.manifest.calibration is None:
            log.warning(
                "thresholds_fixed",
                model=self.classifier.version,
                target_precision=settings.target_precision,
                hint="this model's thresholds were set by hand (the default model's are): "
                "target_precision applies to models made by `sortbox train`, which carry the "
                "calibration it needs; until then its thresholds stay as they are",
            )
            return None
        manifest = retarget(self.classifier.manifest, settings.target_precision)
        reason = f"thresholds re-derived for target precision {settings.target_precision}"
        self.classifier = dataclasses.replace(self.classifier, manifest=manifest)
        log.info("thresholds_changed", model=self.classifier.version, reason=reason)
        return ModelLoaded(
            model=self.classifier.version,
            reason=reason,
            target_precision=settings.target_precision,
        )

    def _switch_to(self, new: Classifier, reason: str) -> ModelLoaded:
        old = self.classifier.version
        self.classifier = new
        log.info("model_switched", old=old, new=new.version, reason=reason)
        return ModelLoaded(
            model=new.version, reason=reason, target_precision=self.settings.target_precision
        )
