"""Why INT8 disagrees with the float model, and whether any quantisation choice fixes it.

    python benchmarks/bench_int8.py clothing-dataset-small [--workdir /tmp/bench-int8]
                                    [--model MODEL_DIR --config CONFIG]

Trains the fast model on the dataset's train/ (`sortbox train`, no fine-tune, no INT8), then
quantises its float ONNX file several ways and compares each with it on validation/ (the
calibration pictures) and test/: the share given the same label, the float model's
confidence on the pictures where they differ, and the decisions the daemon would take with
each (each calibrated on its own outputs, as the trainer ships it): pictures filed into
another class, and auto-sorted shares. Also the time per picture on one core. `--model`
quantises a trained model's float file instead (e.g. a fine-tuned one `bench_train.py` made),
with the config it was trained with.
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quant_pre_process,
    quantize_static,
)
from sortbox.daemon.settings import load_settings
from sortbox.daemon.sorting.decide import softmax
from sortbox.daemon.sorting.manifest import MODEL_FILE, current_version
from sortbox.trainer.calibrate import fit_temperature
from sortbox.trainer.data import TrainingSet, gather
from sortbox.trainer.finetune import plain_pictures
from sortbox.trainer.model import BACKBONES
from sortbox.trainer.quantize import (
    KEEP_FLOAT_PREFIX,
    CalibrationPictures,
    Outputs,
    compare_decisions,
    ms_per_picture,
    outputs_of,
)

REPO = Path(__file__).resolve().parent.parent


def train_fast_model(dataset: Path, workdir: Path) -> tuple[Path, Path]:
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "config.toml"
    config.write_text(
        'inbox = "inbox"\nlibrary = "library"\njournal = "journal.jsonl"\n'
        f'models_dir = "models"\ncache_dir = "cache"\ndataset = "{dataset}"\n'
        "create_folders = true\n[train]\nfinetune_epochs = 0\nint8 = false\n"
    )
    subprocess.run(
        [sys.executable, "-m", "sortbox.daemon.cli", "--config", str(config), "train", "--force"],
        cwd=REPO, check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    models = workdir / "models"
    return config, models / str(current_version(models)) / MODEL_FILE


def variants(convs: list[str], head: list[str]) -> dict[str, tuple[int, dict]]:
    """name -> (calibration pictures, quantize_static's options)."""
    return {
        "as shipped (200 pictures, min-max)": (200, {}),
        "600 calibration pictures": (600, {}),
        "first conv and classifier in float": (200, {"exclude": [convs[0], *head]}),
        "percentile ranges (99.99)": (
            200,
            {
                "calibrate_method": CalibrationMethod.Percentile,
                "extra_options": {"CalibPercentile": 99.99},
            },
        ),
        "entropy ranges": (200, {"calibrate_method": CalibrationMethod.Entropy}),
    }


def quantise(prepared: Path, target: Path, pictures: np.ndarray, options: dict) -> Path:
    graph = onnx.load(prepared).graph.node
    exclude = [n.name for n in graph if n.name.startswith(KEEP_FLOAT_PREFIX)]
    exclude += options.pop("exclude", [])
    quantize_static(
        str(prepared), str(target), CalibrationPictures(iter([pictures]), "input"),
        quant_format=QuantFormat.QDQ, per_channel=True,
        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
        nodes_to_exclude=exclude, **options,
    )  # fmt: skip
    return target


def report(
    name: str,
    model: Path,
    pictures: dict[str, np.ndarray],
    reference: dict[str, Outputs],
    data: TrainingSet,
    ms: Callable[[Path], float],
) -> None:
    labels = data.labels()
    temperature = fit_temperature(reference["calibration"].logits, labels["calibration"])
    print(f"{name}: {ms(model):.1f} ms a picture on one core")
    for role in ("calibration", "test"):
        ours = outputs_of(model, iter([pictures[role]]), 2)
        compared = compare_decisions(reference[role], ours, labels[role], data.classes, 0.97, 0.05)
        float_p = softmax(reference[role].logits, temperature)
        differ = float_p.argmax(axis=1) != ours.logits.argmax(axis=1)
        print(
            f"  {role:11}: same label {compared.label_agreement:6.1%}; float confidence where "
            f"they differ {sorted(np.round(float_p.max(axis=1)[differ], 2).tolist())}; "
            f"filed into another class {compared.conflicting}; auto-sorted "
            f"{compared.int8_auto_share:.1%} (float {compared.float_auto_share:.1%})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench-int8"))
    parser.add_argument(
        "--model", type=Path, help="a trained model folder to quantise instead (e.g. a "
        "fine-tuned one bench_train.py made); needs --config, the config.toml it was trained with",
    )  # fmt: skip
    parser.add_argument("--config", type=Path)
    args = parser.parse_args()
    logging.getLogger().setLevel(logging.ERROR)  # the quantiser's progress
    if args.model is not None:
        if args.config is None:
            parser.error("--model needs --config")
        args.workdir.mkdir(parents=True, exist_ok=True)
        config, float_model = args.config, args.model / MODEL_FILE
    else:
        config, float_model = train_fast_model(args.dataset.resolve(), args.workdir)
    settings = load_settings(config)
    data = gather(settings)
    preprocessing = BACKBONES[settings.train.backbone].preprocessing
    chosen = np.random.default_rng(0).choice(len(data.train), 600, replace=False)
    pictures = {
        role: np.concatenate(list(plain_pictures(examples, preprocessing, settings.max_pixels)))
        for role, examples in (
            ("train", [data.train[i] for i in sorted(chosen)]),
            ("calibration", data.calibration),
            ("test", data.test),
        )
    }
    reference = {
        r: outputs_of(float_model, iter([pictures[r]]), 2) for r in ("calibration", "test")
    }
    sample = pictures["test"][:16]

    def ms(model: Path) -> float:
        return ms_per_picture(model, sample)

    print(f"float model: {ms(float_model):.1f} ms a picture on one core")
    prepared = args.workdir / "prepared.onnx"
    quant_pre_process(str(float_model), str(prepared))
    graph = onnx.load(prepared).graph.node
    convs = [n.name for n in graph if n.op_type == "Conv"]
    head = [n.name for n in graph if n.op_type == "Gemm"]
    for n, (name, (count, options)) in enumerate(variants(convs, head).items()):
        target = args.workdir / f"variant-{n}.onnx"
        quantise(prepared, target, pictures["train"][:count], dict(options))
        report(name, target, pictures, reference, data, ms)


if __name__ == "__main__":
    main()
