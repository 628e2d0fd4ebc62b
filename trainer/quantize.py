"""INT8 for the daemon: ONNX Runtime static quantisation, accepted only if it agrees.

EfficientNet-Lite was designed to quantise well (ReLU6, no squeeze-excite). Weights are
quantised per output channel, activations per tensor, in QDQ form, with activation ranges
measured on training pictures. On 2 CPU cores this halves the model's time per picture
(benchmarks/bench_daemon.py). The quantised model ships only if it gives the float model's
label on at least MIN_AGREEMENT of the calibration pictures; the trainer then derives the
temperature and thresholds from its outputs, because that is what the daemon runs.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
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

MIN_AGREEMENT = 0.99
CALIBRATION_PICTURES = 200  # activation ranges settle well before this


class _Pictures(CalibrationDataReader):
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
            _Pictures(calibration, "input"),
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
    session = open_session(quantised_model, threads)
    rows = [session.run(None, {"input": batch})[0] for batch in batches]
    logits = np.concatenate(rows).astype(np.float32) if rows else np.zeros_like(float_logits)
    same = logits.argmax(axis=1) == float_logits.argmax(axis=1)
    return (float(same.mean()) if len(same) else 0.0), logits
