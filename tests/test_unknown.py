"""Pictures of no known class go to review (issue #33): the model's second output, the unknown
score, read by the daemon, `sortbox sort` and `sortbox explain` alike; and a model without it
decides as it always did. Real ONNX Runtime sessions, real pictures, real processes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import (
    RGB_CLASSES,
    Daemon,
    Home,
    make_home,
    publish_rgb_model,
    sortbox,
    wait_until,
    write_picture,
)
from onnx import TensorProto, helper, numpy_helper
from PIL import Image
from sortbox.daemon.layout import REVIEW_FOLDER
from sortbox.daemon.sorting.classify import load_classifier, load_current
from sortbox.daemon.sorting.decide import SPOT_CHECK, decide
from sortbox.daemon.sorting.manifest import MODEL_FILE, ModelError, read_manifest
from sortbox.trainer.publish import publish

THRESHOLD = 0.5  # the tiny model's unknown score: a bright colour ~0.3, a dark one ~0.7


def two_output_model(path: Path, crop: int, scale: float = 20.0) -> Path:
    """Mean colour → one logit per colour (R, G, B), and an unknown score: minus the mean of
    the normalised channels, so a dark picture is "unlike" the bright colours it was shown."""
    weights = scale * np.eye(3)
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["input"], ["mean"], axes=[2, 3], keepdims=0),
            helper.make_node("MatMul", ["mean", "W"], ["scores"]),
            helper.make_node("Add", ["scores", "b"], ["logits"]),
            helper.make_node("MatMul", ["mean", "u"], ["unknown"]),
        ],
        "tiny-with-unknown",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, crop, crop])],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3]),
            helper.make_tensor_value_info("unknown", TensorProto.FLOAT, ["N"]),
        ],
        initializer=[
            numpy_helper.from_array(weights.astype(np.float32), "W"),
            numpy_helper.from_array(np.zeros(3, np.float32), "b"),
            numpy_helper.from_array(np.full(3, -1 / 3, np.float32), "u"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def publish_unknown_model(models_dir: Path, version: str = "v1", crop: int = 32) -> Path:
    models_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = two_output_model(models_dir.parent / f"{version}.onnx.tmp", crop)
    try:
        return publish(
            models_dir,
            onnx_path,
            {
                "version": version,
                "created": "2026-01-01T00:00:00Z",
                "classes": RGB_CLASSES,
                "preprocessing": {"resize": crop + crop // 7, "crop": crop},
                "thresholds": dict.fromkeys(RGB_CLASSES, 0.6),
                "unknown_threshold": THRESHOLD,
                "unknown_review_rate": 0.05,
            },
        )
    finally:
        onnx_path.unlink()


def dark_red(path: Path, seed: int = 0) -> Path:
    """Red beyond doubt (the model is sure of it), but darker than any red it knows."""
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array([110, 0, 0]) + rng.integers(0, 13, (64, 96, 3)), 0, 255)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.astype(np.uint8), "RGB").save(path, "JPEG")
    return path


def unknown_home(tmp_path: Path) -> Home:
    home = make_home(tmp_path)
    publish_unknown_model(home.models)
    return home


def test_an_unknown_picture_goes_to_review_in_the_daemon_sort_and_explain(
    tmp_path: Path,
) -> None:
    home = unknown_home(tmp_path)
    write_picture(home.inbox / "red.jpg", "red", 1)
    dark_red(home.inbox / "dark.jpg", 1)

    daemon = Daemon(home).start()
    try:
        wait_until(lambda: len(home.file_events()) == 2, 30, "2 decisions")
    finally:
        daemon.stop()
    by_src = {e["src"]: e for e in home.file_events()}
    assert by_src["red.jpg"]["event"] == "sorted" and by_src["red.jpg"]["dest"].startswith("red/")
    dark = by_src["dark.jpg"]
    assert dark["event"] == "review" and dark["dest"].startswith(f"{REVIEW_FOLDER}/")
    assert dark["label"] == "red" and dark["confidence"] > 0.99, "sure of the class, yet unknown"

    arrived = tmp_path / "arrived"
    write_picture(arrived / "red2.jpg", "red", 2)
    dark_red(arrived / "dark2.jpg", 2)
    result = sortbox("sort", str(arrived), config=home.config)
    assert result.returncode == 0, result.stdout + result.stderr
    by_src = {e["src"]: e for e in home.file_events()}
    assert by_src["red2.jpg"]["dest"].startswith("red/")
    assert by_src["dark2.jpg"]["dest"].startswith(f"{REVIEW_FOLDER}/")

    result = sortbox(
        "explain", "--json", str(arrived / "dark2.jpg"), str(arrived / "red2.jpg"),
        config=home.config,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    dark_answer, red_answer = (json.loads(line) for line in result.stdout.splitlines())
    assert dark_answer["folder"] == REVIEW_FOLDER
    assert dark_answer["decision"].startswith("review: unlike any class (score 0.")
    assert f"> threshold {THRESHOLD:.3g})" in dark_answer["decision"]
    assert dark_answer["unknown"] > THRESHOLD == dark_answer["unknown_threshold"]
    assert red_answer["folder"] == "red" and red_answer["unknown"] < THRESHOLD
    human = sortbox("explain", str(arrived / "dark2.jpg"), config=home.config)
    assert "how unlike every class: 0." in human.stdout, human.stdout
    assert "sent to review as unlike any class above 0.5" in human.stdout


def test_the_journal_says_why_and_keeps_the_score(tmp_path: Path) -> None:
    home = unknown_home(tmp_path)
    write_picture(home.inbox / "red.jpg", "red", 1)
    dark_red(home.inbox / "dark.jpg", 1)
    result = sortbox("sort", str(home.inbox), config=home.config)
    assert result.returncode == 0, result.stdout + result.stderr
    by_src = {e["src"]: e for e in home.file_events()}
    assert by_src["dark.jpg"]["reason"].startswith("unlike any class (score 0.")
    assert by_src["dark.jpg"]["unknown"] > THRESHOLD > by_src["red.jpg"]["unknown"]


def test_unlike_any_class_wins_over_confidence_and_spot_checks(tmp_path: Path) -> None:
    """Pure: a confident row whose unknown score is above the threshold goes to review with
    the reason, never as a spot check; below it, the decision is today's."""
    publish_unknown_model(tmp_path / "models")
    manifest = read_manifest(tmp_path / "models" / "v1")
    confident = np.array([20.0, 0.0, 0.0, 0.9], dtype=np.float32)
    unlike = decide(confident, manifest, "0" * 64, audit_rate=1.0)
    assert unlike.needs_review and not unlike.spot_check and unlike.label == "red"
    assert unlike.reason == "unlike any class (score 0.9 > threshold 0.5)"
    familiar = decide(np.array([20.0, 0.0, 0.0, 0.1], np.float32), manifest, "0" * 64, 1.0)
    assert familiar.spot_check and familiar.reason == SPOT_CHECK
    assert decide(np.array([20.0, 0.0, 0.0, 0.1], np.float32), manifest).folder == "red"


def test_unlike_any_class_is_said_first_where_the_picture_is_also_too_poor(
    tmp_path: Path,
) -> None:
    """A first user's landscapes, dropped into a library of clothes, went to review as "too
    blurry to judge": true by the measure of sharp clothing photos, but not the point."""
    from sortbox.daemon.sorting.quality import PictureQuality, QualityLimits

    publish_unknown_model(tmp_path / "models")
    limits = QualityLimits(
        min_sharpness=30, min_brightness=40, max_brightness=200, min_contrast=10,
        tail_share=0.01, pictures=100,
    )  # fmt: skip
    manifest = read_manifest(tmp_path / "models" / "v1").model_copy(
        update={"quality_limits": limits}
    )
    smooth = PictureQuality(sharpness=15.0, brightness=120.0, contrast=40.0)
    both = decide(np.array([20.0, 0.0, 0.0, 0.9], np.float32), manifest, quality=smooth)
    assert both.needs_review and both.reason is not None
    assert both.reason.startswith("unlike any class (score 0.9 > threshold 0.5); too blurry")
    assert both.describe().startswith("review: unlike any class (score 0.9")
    familiar = decide(np.array([20.0, 0.0, 0.0, 0.1], np.float32), manifest, quality=smooth)
    assert familiar.needs_review and familiar.reason.startswith("too blurry to judge")


def test_a_model_without_the_second_output_decides_as_before(tmp_path: Path) -> None:
    """A model published by sortbox before issue #33 (one output, no unknown threshold):
    it loads, its rows are the class logits alone, and a dark red picture is sorted as red."""
    home = make_home(tmp_path)
    publish_rgb_model(home.models, "v1")
    classifier = load_current(home.models, 1)
    assert not classifier.has_unknown and classifier.manifest.unknown_threshold is None
    dark_red(home.inbox / "dark.jpg")
    result = sortbox("sort", str(home.inbox), config=home.config)
    assert result.returncode == 0, result.stdout + result.stderr
    (event,) = home.file_events()
    assert event["dest"].startswith("red/") and event["reason"] is None
    assert event.get("unknown") is None
    answer = json.loads(
        sortbox("explain", "--json", str(home.inbox / "dark.jpg"), config=home.config).stdout
    )
    assert answer["folder"] == "red" and answer["unknown"] is None
    assert answer["decision"].startswith("sorted into red (")


def test_a_second_output_without_a_threshold_is_ignored_and_a_threshold_needs_it(
    tmp_path: Path,
) -> None:
    models = tmp_path / "models"
    version_dir = publish_unknown_model(models)
    manifest_path = version_dir / "manifest.json"
    raw = json.loads(manifest_path.read_text())

    # the graph has the output, the manifest no threshold: decides on the class scores alone
    manifest_path.write_text(json.dumps({**raw, "unknown_threshold": None}))
    classifier = load_classifier(version_dir, 1)
    pixels = np.full((1, 3, 32, 32), -0.2, np.float32)
    pixels[0, 0] = 0.9
    (row,) = classifier.logits(pixels)
    assert len(row) == 3 and decide(row, classifier.manifest).folder == "red"

    # a threshold for an output the graph lacks: refused, not silently ignored
    single = publish_rgb_model(tmp_path / "other", "v2")
    (single / MODEL_FILE).replace(version_dir / MODEL_FILE)
    from sortbox.daemon.sorting.manifest import sha256_file

    raw["model_sha256"] = sha256_file(version_dir / MODEL_FILE)
    manifest_path.write_text(json.dumps(raw))
    with pytest.raises(ModelError, match="no second output"):
        load_classifier(version_dir, 1)


def test_a_trained_model_ships_its_unknown_check_and_a_cat_is_unlike_any_clothes(
    tmp_path: Path,
) -> None:
    """`sortbox train` on real photos (three clothing classes, the fast model): the model has
    the second output, the manifest its threshold, the report the check and the promise; a
    cat photo goes to review as unlike any class, in `explain` and in `sort`."""
    pytest.importorskip("torch", reason="the trainer needs the train extra")
    from helpers import CLOTHING10
    from skimage import data as skimage_data

    if not CLOTHING10.is_dir():
        pytest.skip(f"needs {CLOTHING10}")
    home = make_home(tmp_path, dataset="dataset", cache_dir="cache")
    with home.config.open("a") as fh:
        fh.write("[train]\nfinetune_epochs = 0\nthreads = 2\n")
    for name in ("hat", "pants", "shoes"):
        photos = sorted((CLOTHING10 / name).iterdir())
        (tmp_path / "dataset" / name).mkdir(parents=True)
        for photo in photos[:-3]:
            (tmp_path / "dataset" / name / photo.name).write_bytes(photo.read_bytes())
        for photo in photos[-3:]:
            (tmp_path / "arrived" / name).mkdir(parents=True, exist_ok=True)
            (tmp_path / "arrived" / name / photo.name).write_bytes(photo.read_bytes())
    trained = sortbox("train", config=home.config, timeout=600)
    assert trained.returncode == 0, trained.stdout + trained.stderr

    classifier = load_current(home.models, 1)
    manifest = classifier.manifest
    assert classifier.has_unknown and manifest.unknown_threshold is not None
    assert [o.name for o in classifier.session.get_outputs()] == ["logits", "unknown"]
    assert manifest.calibration is not None and manifest.calibration.unknown is not None
    report = json.loads((home.models / manifest.version / "report.json").read_text())
    assert report["promise"].startswith("at least 97% right, measured on 400 or more ")
    check = report["unknown_check"]
    assert check["threshold"] == manifest.unknown_threshold
    assert 0.0 <= check["test_pictures_sent_to_review"] <= 0.5
    assert 0.0 <= check["held_out_class_pass_share"] <= 1.0  # hats left out, and so on
    assert "unknown check" in (home.models / manifest.version / "report.md").read_text()

    known = sorted((tmp_path / "arrived").rglob("*.jpg"))  # hats, pants, shoes not trained on
    cat = tmp_path / "cat.jpg"
    Image.fromarray(skimage_data.chelsea()).convert("RGB").save(cat)
    result = sortbox("explain", "--json", str(cat), *map(str, known), config=home.config)
    cat_answer, *answers = (json.loads(line) for line in result.stdout.splitlines())
    assert cat_answer["folder"] == REVIEW_FOLDER, cat_answer
    assert cat_answer["decision"].startswith("review: unlike any class (score "), cat_answer
    # the check lets known classes through: at most 5% of them go by it, 2 of 9 allowed here
    assert sum(a["unknown"] > a["unknown_threshold"] for a in answers) <= 2, answers

    result = sortbox("sort", str(cat), config=home.config)
    assert result.returncode == 0, result.stdout + result.stderr
    (event,) = home.file_events()
    assert event["event"] == "review" and event["dest"].startswith(f"{REVIEW_FOLDER}/")
