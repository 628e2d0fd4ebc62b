"""The precision promise of trained models, at several targets, on clothing-dataset-small's
official test split.

    python benchmarks/bench_promise_models.py clothing-dataset-small MODEL_DIR [MODEL_DIR ...]
                                              [--targets 0.97 0.98] [--float]

MODEL_DIR is a published model folder (e.g. one `bench_train.py` made in its workdir's
models/). Each model is run as the daemon runs it (the file its manifest names, INT8 where it
shipped) on test/, pictures it was never tuned on, and decides as the daemon decides after a
user sets `target_precision`: the thresholds derived again from the calibration predictions
the manifest carries (`retarget`), which are the out-of-sample evidence the trainer kept. So
one training serves every target. Prints, per model and target: the share of test pictures
auto-sorted and the precision of those (95% Wilson intervals), and whether the precision
reached the target. `--float` runs the float model file where INT8 shipped too, so the two
can be compared (the manifest's calibration is the same for both). Needs the trainer extra.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from sortbox.daemon.settings import Settings
from sortbox.daemon.sorting.decide import softmax
from sortbox.daemon.sorting.manifest import Manifest, read_manifest, retarget, verify_model_file
from sortbox.trainer.data import Example
from sortbox.trainer.finetune import plain_pictures
from sortbox.trainer.quantize import Outputs, outputs_of
from sortbox.trainer.ship import auto_sorted

SUFFIXES = {".jpg", ".jpeg", ".png"}


def test_pictures(dataset: Path, classes: list[str]) -> list[Example]:
    return [
        Example(path, "", label, "dataset")
        for label in classes
        for path in sorted((dataset / "test" / label).iterdir())
        if path.suffix.lower() in SUFFIXES
    ]


def on_test(
    model_dir: Path, manifest: Manifest, dataset: Path, runtime: bool = True
) -> tuple[Outputs, np.ndarray]:
    """The model file's outputs on test/ (`runtime`: the one the daemon runs), and the labels."""
    model_file = verify_model_file(model_dir, manifest, runtime)
    found = test_pictures(dataset, manifest.classes)
    batches = plain_pictures(found, manifest.preprocessing, Settings().max_pixels)
    labels = np.array([manifest.classes.index(e.label) for e in found])
    print(f"{model_dir.name} ({manifest.kind}, {model_file.name}): {len(labels)} test pictures")
    return outputs_of(model_file, batches, threads=2), labels


def at_target(manifest: Manifest, outputs: Outputs, labels: np.ndarray, target: float) -> str:
    retargeted = retarget(manifest, target)
    probabilities = softmax(outputs.logits, retargeted.temperature)
    check = retargeted.unknown_threshold
    familiar = outputs.unknown <= (np.inf if check is None else check)
    auto = auto_sorted(probabilities, labels, retargeted.thresholds, manifest.classes, familiar)
    accuracy = float((probabilities.argmax(axis=1) == labels).mean())
    low, high = auto.precision_interval
    return (
        f"accuracy {accuracy:.3f}; auto-sorted {auto.share:6.1%} ({auto.auto_sorted} of "
        f"{auto.pictures}) at precision {auto.precision:6.1%} [{low:.1%}, {high:.1%}]: "
        + ("kept" if auto.precision >= target else "BROKEN")
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("dataset", type=Path, help="clothing-dataset-small (test/)")
    parser.add_argument("models", type=Path, nargs="+", help="published model folders")
    parser.add_argument("--targets", type=float, nargs="+", default=[0.97, 0.98])
    parser.add_argument("--float", action="store_true", help="also run the float model file")
    args = parser.parse_args()
    for model_dir in args.models:
        manifest = read_manifest(model_dir)
        runtimes = [True, False] if args.float and manifest.int8 is not None else [True]
        for runtime in runtimes:
            outputs, labels = on_test(model_dir, manifest, args.dataset, runtime)
            for target in args.targets:
                print(f"  target {target:.2f}: " + at_target(manifest, outputs, labels, target))


if __name__ == "__main__":
    main()
