"""Run the published ONNX model on a batch of preprocessed images."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from sortbox.daemon.settings import Settings
from sortbox.daemon.sorting.manifest import (
    CURRENT,
    Manifest,
    ModelError,
    current_version,
    read_manifest,
    retarget,
    verify_model_file,
)


@dataclass(frozen=True)
class Classifier:
    manifest: Manifest
    session: ort.InferenceSession
    # Images per ONNX Runtime call. A micro-batch is still sorted, placed and journaled as one;
    # but on 2 CPU cores Lite0 runs fastest one image per call (97 img/s vs 59 at 8: the
    # activations of one image stay in cache), with the smallest memory arena.
    run_size: int = 1

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def has_unknown(self) -> bool:
        """The model scores how unlike every class a picture is, and the manifest says where
        that sends it to review (issue #33)."""
        return self.manifest.unknown_threshold is not None

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """N x 3 x crop x crop float32 -> one row per picture: a logit per class, then, for a
        model with the unknown check, its unknown score (N x classes + 1). `decide` reads the
        row as it comes; so every caller (daemon, `sort`, Ray, `explain`) gets the check."""
        name = self.manifest.input_name
        wanted = 2 if self.has_unknown else 1
        outputs = []
        for start in range(0, len(batch), self.run_size):
            answer = self.session.run(None, {name: batch[start : start + self.run_size]})
            rows = answer[0] if wanted == 1 else np.column_stack([answer[0], answer[1]])
            outputs.append(rows)
        return np.concatenate(outputs).astype(np.float32, copy=False)


CPU_ONLY = ("CPUExecutionProvider",)


def open_session(
    model_path: Path, threads: int, providers: tuple[str, ...] = CPU_ONLY
) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # ORT's worker threads busy-wait between runs by default, taking the cores our decoder
    # threads need; sleeping instead raised pipeline throughput on 2 cores (benchmarks/).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(model_path), sess_options=options, providers=list(providers))


def load_classifier(
    version_dir: Path,
    threads: int,
    run_size: int = 1,
    target_precision: float | None = None,
    providers: tuple[str, ...] = CPU_ONLY,
) -> Classifier:
    """Load and check one published version; raises ModelError with the reason. With a
    `target_precision`, thresholds are re-derived for it from the calibration predictions.
    The daemon runs on the CPU only (its unit allows no devices); Ray actors may add CUDA."""
    manifest = read_manifest(version_dir)
    model_path = verify_model_file(version_dir, manifest)
    try:
        session = open_session(model_path, threads, providers)
    except Exception as exc:  # ORT raises its own exception types for malformed graphs
        raise ModelError(f"{model_path}: ONNX Runtime cannot load it: {exc}") from None
    _check_signature(session, manifest, model_path)
    if target_precision is not None:
        manifest = retarget(manifest, target_precision)
    return Classifier(manifest=manifest, session=session, run_size=run_size)


def load_current(
    models_dir: Path, threads: int, run_size: int = 1, target_precision: float | None = None
) -> Classifier:
    version = current_version(models_dir)
    if version is None:
        raise ModelError(
            f"no model at {models_dir / CURRENT}; run `sortbox init` to create the default model"
        )
    return load_classifier(models_dir / version, threads, run_size, target_precision)


def load_model(settings: Settings) -> Classifier:
    """The current model as the settings ask for it: how the daemon, `sort`, `explain`,
    `doctor` and the web page all load it."""
    return load_current(
        settings.models_dir,
        settings.inference_threads,
        settings.inference_run_size,
        settings.target_precision,
    )


def _check_signature(session: ort.InferenceSession, manifest: Manifest, path: Path) -> None:
    inputs = session.get_inputs()
    if len(inputs) != 1 or inputs[0].name != manifest.input_name:
        raise ModelError(f"{path}: expected one input named {manifest.input_name!r}")
    shape = inputs[0].shape
    crop = manifest.preprocessing.crop
    if len(shape) != 4 or list(shape[1:]) != [3, crop, crop]:
        raise ModelError(f"{path}: input shape {shape} does not match [N, 3, {crop}, {crop}]")
    outputs = session.get_outputs()
    if not outputs or len(outputs) > 2 or outputs[0].shape[-1] != len(manifest.classes):
        raise ModelError(
            f"{path}: output does not have one score per class ({len(manifest.classes)})"
        )
    if manifest.unknown_threshold is not None and (len(outputs) != 2 or len(outputs[1].shape) != 1):
        raise ModelError(
            f"{path}: the manifest has an unknown threshold but the model has no second "
            "output with one unknown score per picture"
        )
