"""INT8 for the daemon: ONNX Runtime static quantisation, accepted only if it agrees.

EfficientNet-Lite was designed to quantise well (ReLU6, no squeeze-excite). Weights are
quantised per output channel, activations per tensor, in QDQ form, with activation ranges
measured on training pictures. On 2 CPU cores this halves the model's time per picture
(benchmarks/bench_daemon.py). The quantised model ships only if it gives the float model's
decisions the daemon would take with it are the float model's (`compare_decisions`); the
trainer then derives the temperature and thresholds from its outputs, because that is what
the daemon runs.

Why decisions, not labels (#33): on clothing-dataset-small the INT8 model gave the float
model's label on 98.2-98.8% of the calibration pictures, under the 99% once required, and
every picture it disagreed on was one the float model was unsure of (confidence 0.37-0.85,
below every threshold): both models send it to review. Keeping the first convolution or the
classifier in float, 600 calibration pictures instead of 200, or percentile and entropy
ranges moved agreement by one or two pictures of 341, within noise
(benchmarks/bench_int8.py). What matters is that it never files a picture into another
class than the float model would, and auto-sorts nearly as many.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quant_pre_process,
    quantize_static,
)
from sortbox.daemon.sorting.classify import open_session
from sortbox.daemon.sorting.decide import softmax
from sortbox.trainer.calibrate import Calibration, calibrate

MIN_AGREEMENT = 0.97  # the float model's label on this share: quantising broke nothing wholesale
MAX_COVERAGE_COST = 0.03  # it may auto-sort at most 3 points fewer calibration pictures
CALIBRATION_PICTURES = 200  # activation ranges settle well before this


class CalibrationPictures(CalibrationDataReader):
    def __init__(self, batches: Iterator[np.ndarray], input_name: str) -> None:
        self._pictures = (picture for batch in batches for picture in batch)
        self._input_name = input_name

    def get_next(self) -> dict[str, np.ndarray] | None:
        picture = next(self._pictures, None)
        return None if picture is None else {self._input_name: picture[np.newaxis]}


# The unknown score's nodes (model.WithUnknown's `score`) stay in float: it is a distance in a
# whitened space whose range no 8-bit scale fits, and its threshold was set on float scores.
KEEP_FLOAT_PREFIX = "/score/"


def quantise(float_model: Path, calibration: Iterator[np.ndarray], target: Path) -> Path:
    """Write the INT8 (QDQ, per-channel) version of `float_model` to `target`. `calibration`:
    batches of model inputs (the daemon's preprocessing) to measure activation ranges on."""
    prepared = target.with_name(target.stem + ".prepared.onnx")
    # shape inference and graph clean-up first, as ONNX Runtime's quantiser recommends
    quiet = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)  # its progress goes to the root logger
    try:
        quant_pre_process(str(float_model), str(prepared))
        keep_float = [
            node.name
            for node in onnx.load(prepared).graph.node
            if node.name.startswith(KEEP_FLOAT_PREFIX)
        ]
        quantize_static(
            str(prepared),
            str(target),
            CalibrationPictures(calibration, "input"),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=keep_float,
        )
    finally:
        logging.getLogger().setLevel(quiet)
        prepared.unlink(missing_ok=True)
    return target


def agreement_with(
    quantised_model: Path, batches: Iterator[np.ndarray], float_logits: np.ndarray, threads: int
) -> tuple[float, np.ndarray]:
    """Run the quantised model on the pictures `float_logits` came from: the share of them
    where it gives the float model's label, and its outputs."""
    logits = outputs_of(quantised_model, batches, threads).logits
    if not len(logits):
        return 0.0, np.zeros_like(float_logits)
    return float((logits.argmax(axis=1) == float_logits.argmax(axis=1)).mean()), logits


@dataclass(frozen=True)
class Outputs:
    """A model's two outputs on a set of pictures."""

    logits: np.ndarray
    unknown: np.ndarray


def outputs_of(model: Path, batches: Iterator[np.ndarray], threads: int) -> Outputs:
    return outputs_of_each([model], batches, threads)[0]


def outputs_of_each(
    models: list[Path], batches: Iterator[np.ndarray], threads: int
) -> list[Outputs]:
    """Each model's outputs on the same pictures, each batch decoded once for all of them."""
    sessions = [open_session(model, threads) for model in models]
    rows = [[session.run(None, {"input": batch}) for session in sessions] for batch in batches]
    return [_joined([row[n] for row in rows]) for n in range(len(models))]


def _joined(rows: list[list[np.ndarray]]) -> Outputs:
    if not rows:
        return Outputs(np.zeros((0, 0), np.float32), np.zeros(0, np.float32))
    return Outputs(
        np.concatenate([r[0] for r in rows]).astype(np.float32),
        np.concatenate([r[1] for r in rows]).astype(np.float32),
    )


@dataclass(frozen=True)
class DecisionsCompared:
    """The float and the INT8 model on the same pictures, each with its own calibration."""

    label_agreement: float  # the share given the same top label
    conflicting: int  # pictures both would auto-sort, into different classes
    float_auto_share: float
    int8_auto_share: float

    @property
    def coverage_cost(self) -> float:
        return self.float_auto_share - self.int8_auto_share

    @property
    def acceptable(self) -> bool:
        return (
            self.label_agreement >= MIN_AGREEMENT
            and self.conflicting == 0
            and self.coverage_cost <= MAX_COVERAGE_COST
        )


def compare_decisions(
    float_outputs: Outputs,
    int8_outputs: Outputs,
    labels: np.ndarray,
    classes: list[str],
    target: float,
    unknown_review_rate: float,
    shipped: Calibration | None = None,
) -> DecisionsCompared:
    """What the daemon would do with each picture, under the calibration that ships with both
    (`shipped`, as the trainer compares them), or each calibrated on its own outputs (None)."""

    def decisions(outputs: Outputs) -> np.ndarray:
        calibration = shipped or calibrate(
            outputs.logits, labels, classes, target, outputs.unknown, unknown_review_rate
        )
        return auto_decisions(outputs, calibration, classes)

    by_float, by_int8 = decisions(float_outputs), decisions(int8_outputs)
    same_label = float_outputs.logits.argmax(axis=1) == int8_outputs.logits.argmax(axis=1)
    both = (by_float >= 0) & (by_int8 >= 0)
    return DecisionsCompared(
        label_agreement=float(same_label.mean()) if len(same_label) else 0.0,
        conflicting=int((both & (by_float != by_int8)).sum()),
        float_auto_share=float((by_float >= 0).mean()) if len(by_float) else 0.0,
        int8_auto_share=float((by_int8 >= 0).mean()) if len(by_int8) else 0.0,
    )


def auto_decisions(outputs: Outputs, calibration: Calibration, classes: list[str]) -> np.ndarray:
    """For each picture the class index it would be auto-sorted into, or -1 (review)."""
    probabilities = softmax(outputs.logits, calibration.temperature)
    predicted = probabilities.argmax(axis=1)
    thresholds = np.array([calibration.thresholds[classes[k]] for k in predicted])
    auto = probabilities.max(axis=1) >= thresholds
    if calibration.unknown_threshold is not None:
        auto &= outputs.unknown <= calibration.unknown_threshold
    return np.where(auto, predicted, -1)


def ms_per_picture(model: Path, pictures: np.ndarray, repeats: int = 5) -> float:
    """One thread, a batch of the given pictures, after a warm-up run: for the report."""
    session = open_session(model, 1)
    session.run(None, {"input": pictures})
    started = time.perf_counter()
    for _ in range(repeats):
        session.run(None, {"input": pictures})
    return 1000 * (time.perf_counter() - started) / (repeats * max(1, len(pictures)))
