"""Can a picture be judged at all? Its sharpness, brightness and contrast, as the model sees it.

A photo taken in a pocket, shaken, or of a white wall gives the model nothing to go on, and it
will still name a class. So every picture is measured on the very crop the model is given, and
the trainer records how far its own training pictures went (`QualityLimits`, in the manifest):
a picture blurrier, darker, brighter or flatter than nearly all of them goes to review, saying
so, however confident the scores are. A model without limits (published before them) sorts
as it always did.

The measures are cheap (one 224 x 224 grey image, a few numpy passes), pure, and the same in
the daemon, `sort`, Ray, `explain` and the trainer, which is what makes the limits mean
anything.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from sortbox.daemon.sorting.preprocess import Preprocessing

# ITU-R BT.601 luma, as JPEG itself weighs the channels
_LUMA = np.asarray([0.299, 0.587, 0.114], dtype=np.float32)


@dataclass(frozen=True)
class PictureQuality:
    sharpness: float  # variance of the Laplacian of the grey crop: low is blurry
    brightness: float  # mean luma, 0 (black) to 255 (white)
    contrast: float  # standard deviation of luma: near 0 is an empty, flat picture

    def as_journal(self) -> dict[str, float]:
        return {
            "sharpness": self.sharpness,
            "brightness": self.brightness,
            "contrast": self.contrast,
        }


def measure_quality(pixels: np.ndarray, spec: Preprocessing) -> PictureQuality:
    """The model input (3 x crop x crop, normalised by `spec`) -> how judgeable it is."""
    mean = np.asarray(spec.mean, dtype=np.float32)[:, None, None]
    std = np.asarray(spec.std, dtype=np.float32)[:, None, None]
    rgb = pixels * std + mean  # back to 0-255, exactly as decoded
    luma = np.tensordot(_LUMA, rgb, axes=1)
    laplacian = (
        luma[:-2, 1:-1] + luma[2:, 1:-1] + luma[1:-1, :-2] + luma[1:-1, 2:] - 4 * luma[1:-1, 1:-1]
    )
    return PictureQuality(
        sharpness=round(float(laplacian.var()), 2),
        brightness=round(float(luma.mean()), 2),
        contrast=round(float(luma.std()), 2),
    )


class QualityLimits(BaseModel):
    """How far the model's training pictures went, from their own measures: a picture past
    a limit is one the model never learned from, so it is not judged automatically."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_sharpness: float = Field(ge=0)
    min_brightness: float = Field(ge=0, le=255)
    max_brightness: float = Field(ge=0, le=255)
    min_contrast: float = Field(ge=0)
    tail_share: float = Field(gt=0, lt=0.5)
    """The share of training pictures beyond each limit (the limits are its quantiles)."""
    pictures: int = Field(ge=1)
    """How many training pictures the limits were measured on."""


def limits_from(measured: list[PictureQuality], tail_share: float) -> QualityLimits:
    """Each limit at the `tail_share` quantile of the training pictures' own measures."""
    sharpness = np.asarray([q.sharpness for q in measured])
    brightness = np.asarray([q.brightness for q in measured])
    contrast = np.asarray([q.contrast for q in measured])
    return QualityLimits(
        min_sharpness=round(float(np.quantile(sharpness, tail_share)), 2),
        min_brightness=round(float(np.quantile(brightness, tail_share)), 2),
        max_brightness=round(float(np.quantile(brightness, 1 - tail_share)), 2),
        min_contrast=round(float(np.quantile(contrast, tail_share)), 2),
        tail_share=tail_share,
        pictures=len(measured),
    )


def quality_issue(quality: PictureQuality, limits: QualityLimits) -> str | None:
    """Why the picture is too poor to judge, in words; None when it can be judged. The limits
    are quantiles of the training pictures (`tail_share` of them lie past each), not their
    extremes, and are said as such."""
    # darkness and glare first: a dark picture is flat and blurry too, and "too dark" is
    # what a person can do something about
    if quality.brightness < limits.min_brightness:
        value, limit = _apart(quality.brightness, limits.min_brightness)
        return f"too dark to judge (brightness {value} of 255; {_limit_words(limits, limit)})"
    if quality.brightness > limits.max_brightness:
        value, limit = _apart(quality.brightness, limits.max_brightness)
        return f"too washed out to judge (brightness {value} of 255; {_limit_words(limits, limit)})"
    if quality.contrast < limits.min_contrast:
        value, limit = _apart(quality.contrast, limits.min_contrast, digits=1)
        return f"too flat to judge (contrast {value}; {_limit_words(limits, limit)})"
    if quality.sharpness < limits.min_sharpness:
        value, limit = _apart(quality.sharpness, limits.min_sharpness)
        return f"too blurry to judge (sharpness {value}; {_limit_words(limits, limit)})"
    return None


def _limit_words(limits: QualityLimits, limit: str) -> str:
    return f"the limit is {limit}, past which lie {limits.tail_share:.1%} of the training pictures"


def _apart(value: float, limit: float, digits: int = 0) -> tuple[str, str]:
    """The measure and its limit, with as many decimals as it takes to tell them apart (a
    sharpness of 20.6 against a limit of 21.0 read "21; … 21")."""
    for places in range(digits, digits + 3):
        shown = f"{value:.{places}f}", f"{limit:.{places}f}"
        if shown[0] != shown[1]:
            return shown
    return shown
