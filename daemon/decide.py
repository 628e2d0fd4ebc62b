"""Turn a model's scores into a decision. Pure: no I/O, no state."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sortbox.daemon.manifest import REVIEW_FOLDER, Manifest


@dataclass(frozen=True)
class Decision:
    label: str  # the model's best guess, also when the picture goes to review
    confidence: float
    top3: list[tuple[str, float]]
    folder: str  # the label, or needs_review when the confidence is under the label's threshold

    @property
    def needs_review(self) -> bool:
        return self.folder == REVIEW_FOLDER


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    scaled = logits.astype(np.float64) / temperature
    scaled -= scaled.max(axis=-1, keepdims=True)
    exp = np.exp(scaled)
    return exp / exp.sum(axis=-1, keepdims=True)


def decide(logits: np.ndarray, manifest: Manifest) -> Decision:
    """One image's logits -> where it goes, with the calibrated temperature and thresholds."""
    probabilities = softmax(logits, manifest.temperature)
    order = np.argsort(-probabilities)
    best = int(order[0])
    label = manifest.classes[best]
    confidence = float(probabilities[best])
    top3 = [(manifest.classes[int(i)], round(float(probabilities[i]), 6)) for i in order[:3]]
    folder = label if confidence >= manifest.thresholds[label] else REVIEW_FOLDER
    return Decision(label=label, confidence=confidence, top3=top3, folder=folder)
