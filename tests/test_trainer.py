"""The trainer on real photos (clothing10, small budgets), real ONNX exports and a real daemon."""

from __future__ import annotations

import fcntl
import json
import shutil
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch", reason="the trainer needs the train extra")

from helpers import (  # noqa: E402
    CLOTHING10,
    Daemon,
    Home,
    encode,
    make_home,
    sortbox,
    wait_until,
)
from sortbox.daemon.settings import load_settings  # noqa: E402
from sortbox.daemon.sorting.classify import open_session  # noqa: E402
from sortbox.daemon.sorting.journal import Journal, Review, Sorted  # noqa: E402
from sortbox.daemon.sorting.manifest import current_version, read_manifest  # noqa: E402
from sortbox.daemon.sorting.preprocess import normalise, prepare, resize_and_crop  # noqa: E402
from sortbox.trainer.calibrate import (  # noqa: E402
    calibrate,
    choose_blend,
    expected_calibration_error,
    fit_temperature,
    tempered_nll,
)
from sortbox.trainer.data import ROLES, describe, gather  # noqa: E402
from sortbox.trainer.export import ExportMismatch, check_parity, export_onnx  # noqa: E402
from sortbox.trainer.imagenet_groups import imagenet_groups  # noqa: E402
from sortbox.trainer.model import BACKBONES, Blended, imagenet_network, map_weights  # noqa: E402
from sortbox.trainer.publish import prune, publish  # noqa: E402

pytestmark = pytest.mark.skipif(not CLOTHING10.is_dir(), reason=f"needs {CLOTHING10}")
SMALL = {"finetune_epochs": 2, "batch_size": 16, "threads": 2}


@pytest.fixture(scope="session")
def feature_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Features depend only on picture content, so tests share one cache."""
    return tmp_path_factory.mktemp("feature-cache")


def copy_photos(target: Path, per_class: dict[str, int], skip: int = 0) -> None:
    for name, count in per_class.items():
        (target / name).mkdir(parents=True, exist_ok=True)
        for photo in sorted((CLOTHING10 / name).iterdir())[skip : skip + count]:
            shutil.copy(photo, target / name / photo.name)


def trainer_home(root: Path, cache: Path, **train: object) -> Home:
    home = make_home(root, dataset="dataset", cache_dir=str(cache))
    settings = {**SMALL, **train}
    with home.config.open("a") as fh:
        fh.write("[train]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in settings.items()))
    return home


# -- the backbone --------------------------------------------------------------------------------


def skimage_photo(name: str) -> Image.Image:
    data = pytest.importorskip("skimage.data", reason="scikit-image ships the test photos")
    return Image.fromarray(getattr(data, name)()).convert("RGB")


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_backbone_mapping_still_recognises_real_photos(backbone: str) -> None:
    network = imagenet_network(backbone)
    spec = network.backbone.preprocessing  # e.g. Lite0: 256 resize, 224 crop, (x - 127) / 128
    batch = np.stack(
        [normalise(resize_and_crop(skimage_photo(n), spec), spec) for n in ("chelsea", "coffee")]
    )
    with torch.no_grad():
        top = network(torch.from_numpy(batch)).argmax(dim=1).tolist()
    assert 281 <= top[0] <= 285, f"chelsea should be a cat class, got {top[0]}"
    assert top[1] == 967, f"coffee should be espresso, got {top[1]}"


def test_weight_mapping_refuses_unknown_keys() -> None:
    with pytest.raises(KeyError, match="_se_reduce"):
        map_weights({"_blocks.0._se_reduce.weight": torch.zeros(1)})


def test_imagenet_groups_cover_every_class_exactly_once() -> None:
    groups = imagenet_groups()
    indices = sorted(i for members in groups.values() for i in members)
    assert indices == list(range(1000))
    assert 281 in groups["animals"] and 967 in groups["food"] and 817 in groups["vehicles"]


def test_default_model_sorts_real_photos_into_everyday_folders(tmp_path: Path) -> None:
    home = make_home(tmp_path)
    assert sortbox("init", config=home.config).returncode == 0
    manifest = read_manifest(home.models / current_version(home.models))
    assert manifest.kind == "default" and "animals" in manifest.classes
    skimage_photo("chelsea").save(home.inbox / "cat.jpg")
    skimage_photo("coffee").save(home.inbox / "espresso.png")
    result = sortbox("sort", str(home.inbox), config=home.config)
    assert result.returncode == 0, result.stderr
    labels = {e["src"]: e["label"] for e in home.file_events()}
    assert labels == {"cat.jpg": "animals", "espresso.png": "food"}


# -- the data rules ------------------------------------------------------------------------------


def test_training_set_rules(tmp_path: Path, feature_cache: Path) -> None:
    home = trainer_home(tmp_path, feature_cache, min_images_per_class=5)
    dataset = tmp_path / "dataset"
    copy_photos(dataset, {"hat": 10, "pants": 10, "shoes": 3})
    hats = sorted((dataset / "hat").iterdir())
    pants = sorted((dataset / "pants").iterdir())
    # the same picture under two labels: reported, left out
    shutil.copy(pants[0], dataset / "hat" / "also-pants.jpg")
    # a resized re-encoded copy: a near-duplicate, must share its original's split
    original = Image.open(hats[1])
    (dataset / "hat" / "smaller-copy.jpg").write_bytes(
        encode(original.resize((200, 266)), "JPEG", quality=90)
    )
    # unreadable
    (dataset / "hat" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really")

    library = home.library
    for folder in ("hat", "pants", "needs_review"):
        (library / folder).mkdir(parents=True)
    extra = sorted((CLOTHING10 / "hat").iterdir())[20:24]
    reviewed, corrected, untouched, added = (
        library / "hat" / "r.jpg",
        library / "pants" / "c.jpg",
        library / "hat" / "u.jpg",
        library / "pants" / "a.jpg",
    )
    for src, dst in zip(extra, (reviewed, corrected, untouched, added), strict=True):
        shutil.copy(src, dst)
    # an exact duplicate of a dataset picture in the library: counted once
    shutil.copy(hats[2], library / "hat" / "dup.jpg")
    from sortbox.daemon.sorting.copies import sha256_of

    def placed(kind: type, path: Path, folder: str) -> object:
        return kind(
            src=path.name,
            root="/inbox",
            sha256=sha256_of(path),
            size=1,
            dest=f"{folder}/{path.name}",
            label="hat",
            confidence=0.5,
        )

    with Journal(home.journal) as journal:
        journal.append(
            [
                placed(Review, reviewed, "needs_review"),
                placed(Sorted, corrected, "hat"),
                placed(Sorted, untouched, "hat"),
            ]
        )

    settings = load_settings(home.config)
    data = gather(settings)
    by_path = {e.path.name: e for e in data.everything}
    assert data.classes == ["hat", "pants"]  # shoes: too few
    assert any(what == "shoes" and "fewer than 5" in why for what, why in data.excluded)
    assert by_path["r.jpg"].origin == "reviewed" and by_path["r.jpg"].label == "hat"
    assert by_path["c.jpg"].origin == "corrected" and by_path["c.jpg"].label == "pants"
    assert by_path["a.jpg"].origin == "user added"
    assert "u.jpg" not in by_path, "auto-sorted and untouched is not a label"
    assert "dup.jpg" not in by_path or hats[2].name not in by_path  # counted once
    assert data.duplicates == 1  # and the run says so (a user saw labels vanish without a word)
    assert "counted once: 1 labelled file holding the same picture" in describe(data)
    assert len(data.conflicts) == 1 and data.conflicts[0][1] == ["hat", "pants"]
    assert "also-pants.jpg" not in by_path and pants[0].name not in by_path
    assert any("broken.jpg" in what and "unreadable" in why for what, why in data.excluded)
    role_of = {e.path.name: role for role in ROLES for e in data.role(role)}
    assert role_of[hats[1].name] == role_of["smaller-copy.jpg"], "near-duplicates share a role"

    # deterministic: same roles again, and adding pictures moves none of the old ones
    def roles(found: object) -> dict[str, str]:
        return {e.sha256: role for role in ROLES for e in found.role(role)}  # type: ignore[attr-defined]

    assert roles(gather(settings)) == roles(data)
    copy_photos(dataset, {"hat": 5, "pants": 5}, skip=24)
    grown = roles(gather(settings))
    assert {sha: grown[sha] for sha in roles(data)} == roles(data)

    trusting = load_settings(home.config).model_copy(
        update={"train": settings.train.model_copy(update={"trust_auto_sorted": True})}
    )
    assert "u.jpg" in {e.path.name for e in gather(trusting).everything}

    dry = sortbox("train", "--dry-run", config=home.config)
    assert dry.returncode == 0 and "excluded shoes" in dry.stdout and "1 corrected" in dry.stdout
    assert not home.models.exists() or current_version(home.models) is None


# -- calibration ---------------------------------------------------------------------------------


def test_temperature_scaling_recovers_overconfidence_and_thresholds_hit_the_target() -> None:
    rng = np.random.default_rng(0)
    true_logits = rng.normal(0, 2.0, size=(4000, 4))
    probabilities = np.exp(true_logits) / np.exp(true_logits).sum(axis=1, keepdims=True)
    labels = np.array([rng.choice(4, p=p) for p in probabilities])
    overconfident = true_logits * 3.0
    assert fit_temperature(overconfident, labels) == pytest.approx(3.0, rel=0.1)

    classes = ["a", "b", "c", "d"]
    # 0.85: the promise is for batches of 400 (#33), which 0.9 needs 92.5% on average for
    calibration = calibrate(overconfident, labels, classes, target=0.85)
    scaled = np.exp(overconfident / calibration.temperature)
    scaled /= scaled.sum(axis=1, keepdims=True)
    assert expected_calibration_error(scaled, labels) < expected_calibration_error(
        np.exp(overconfident) / np.exp(overconfident).sum(axis=1, keepdims=True), labels
    )
    predicted, confidence = scaled.argmax(axis=1), scaled.max(axis=1)
    auto = confidence >= np.array([calibration.thresholds[classes[p]] for p in predicted])
    assert (predicted[auto] == labels[auto]).mean() >= 0.85
    assert calibration.expected_auto_share == pytest.approx(auto.mean())
    assert 0.1 < calibration.expected_auto_share < 1.0


# -- export and publishing -----------------------------------------------------------------------


def test_parity_check_fails_loudly_when_onnx_differs(tmp_path: Path) -> None:
    network = imagenet_network("lite0")
    onnx_path = export_onnx(network, 224, tmp_path / "model.onnx")
    inputs = np.random.default_rng(0).uniform(-1, 1, (2, 3, 224, 224)).astype(np.float32)
    assert check_parity(network, onnx_path, inputs, 1.0) < 1e-4
    with torch.no_grad():
        network.classifier.bias += torch.linspace(0, 3, 1000)
    with pytest.raises(ExportMismatch, match="disagree"):
        check_parity(network, onnx_path, inputs, 1.0)


def test_a_blend_exports_as_one_graph_that_computes_the_blend(tmp_path: Path) -> None:
    """The blended model ships as one ONNX graph (the daemon knows nothing of blends): its
    logits on real photos are (1 - w) * fine-tuned + w * fast, within the parity limit."""
    fast, tuned = imagenet_network("lite0"), imagenet_network("lite0")
    with torch.no_grad():  # a "fine-tuned" tail and head that differ from the fast model's
        for parameter in [*tuned.tail_parameters(), *tuned.classifier.parameters()]:
            parameter.mul_(1.1)
    blend = Blended(tuned, fast, 0.3)
    onnx_path = export_onnx(blend, 224, tmp_path / "model.onnx")
    photos = sorted(CLOTHING10.glob("*/*.jpg"))[::33]  # 8, of several classes
    spec = tuned.backbone.preprocessing
    pixels = np.stack([prepare(p.read_bytes(), spec, 10**8) for p in photos])
    assert check_parity(blend, onnx_path, pixels, 1.0) < 1e-4
    (blended,) = open_session(onnx_path, 2).run(None, {"input": pixels})
    with torch.no_grad():
        each = [network(torch.from_numpy(pixels)).numpy() for network in (tuned, fast)]
    assert not np.allclose(each[0], each[1], atol=0.1), "the two must differ for this to test"
    np.testing.assert_allclose(blended, 0.7 * each[0] + 0.3 * each[1], atol=1e-3)


def test_the_blend_is_chosen_only_when_it_calibrates_better() -> None:
    """The fast model's weight comes from the calibration pictures: chosen where the fast model
    knows what the fine-tuned one gets wrong, zero where it adds only noise."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 400)
    truth = np.eye(4)[labels] * 4.0
    tuned = truth + rng.normal(0, 2.0, truth.shape)  # right on most, wrong on some
    knowing = truth + rng.normal(0, 2.0, truth.shape)  # as good, its mistakes elsewhere
    assert choose_blend(tuned, knowing, labels) > 0
    assert tempered_nll(0.7 * tuned + 0.3 * knowing, labels) < tempered_nll(tuned, labels)
    noise = rng.normal(0, 2.0, truth.shape)
    assert choose_blend(tuned, noise, labels) == 0.0


def test_exported_graph_runs_as_convolutions_only(tmp_path: Path) -> None:
    """ONNX Runtime must be able to fold every "same" Pad into its conv: a Pad left in the
    optimised graph costs a layout change on each side of it (a quarter of inference time)."""
    import collections

    import onnx
    import onnxruntime as ort

    onnx_path = export_onnx(imagenet_network("lite0"), 224, tmp_path / "model.onnx")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(tmp_path / "optimised.onnx")
    ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    operators = collections.Counter(
        n.op_type for n in onnx.load(tmp_path / "optimised.onnx").graph.node
    )
    assert "Pad" not in operators, operators


def test_publish_is_atomic_and_pruning_keeps_the_current(tmp_path: Path) -> None:
    from helpers import tiny_onnx_model

    models = tmp_path / "models"
    models.mkdir()
    onnx_path = tiny_onnx_model(tmp_path / "m.onnx", np.eye(3), 32)
    fields = {
        "created": datetime.now(UTC),
        "classes": ["a", "b", "c"],
        "preprocessing": {"resize": 36, "crop": 32},
        "thresholds": {"a": 0.5, "b": 0.5, "c": 0.5},
    }
    publish(models, onnx_path, {**fields, "version": "v1"})
    with pytest.raises(ValueError):
        publish(models, onnx_path, {**fields, "version": "v2", "classes": ["a", "../b", "c"]})
    assert current_version(models) == "v1"
    assert sorted(p.name for p in models.iterdir()) == ["current", "v1"], "no half-published folder"
    for n in range(2, 6):
        publish(
            models,
            onnx_path,
            {**fields, "version": f"v{n}", "created": datetime(2030, 1, n, tzinfo=UTC)},
        )
    from sortbox.daemon.sorting.manifest import point_current_to

    point_current_to(models, "v1")
    assert sorted(prune(models, keep=2)) == ["v2", "v3"]
    assert sorted(p.name for p in models.iterdir()) == ["current", "v1", "v4", "v5"]


def test_a_second_training_run_changes_nothing(tmp_path: Path) -> None:
    home = trainer_home(tmp_path, tmp_path / "cache")
    copy_photos(tmp_path / "dataset", {"hat": 6, "pants": 6})
    lock = tmp_path / "cache" / "train.lock"
    lock.parent.mkdir()
    with lock.open("a") as running:  # as a training run in another process holds it
        fcntl.flock(running, fcntl.LOCK_EX)
        second = sortbox("train", config=home.config)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "skipped: another `sortbox train` is running" in second.stdout
    assert not home.models.exists() or current_version(home.models) is None
    assert [r["outcome"] for r in home.events("train")] == ["skipped"]


def test_train_publish_skip_gate_rollback_with_a_running_daemon(
    tmp_path: Path, feature_cache: Path
) -> None:
    home = trainer_home(tmp_path, feature_cache)
    copy_photos(tmp_path / "dataset", {"hat": 14, "pants": 14, "shoes": 14})
    assert sortbox("init", config=home.config).returncode == 0
    default = current_version(home.models)
    stale = feature_cache / "features" / "made-by-an-older-trainer"
    stale.mkdir(parents=True, exist_ok=True)
    (stale / "old.npy").write_bytes(b"")
    daemon = Daemon(home).start()
    try:
        first = sortbox("train", config=home.config, timeout=600)
        assert first.returncode == 0, first.stdout + first.stderr
        assert not stale.exists(), "features of another recipe are never read again"
        trained = current_version(home.models)
        assert trained != default
        manifest = read_manifest(home.models / trained)
        assert manifest.classes == ["hat", "pants", "shoes"]
        assert manifest.kind in ("fast", "fine-tuned")
        # each stage's result said once (a first user saw every "published:" line twice)
        said = [line for line in first.stdout.splitlines() if line.startswith("train: ")]
        assert len(said) == len(set(said)), first.stdout
        assert trained in said[-1], first.stdout
        # the fast model is published first; the fine-tuned one only if it passes the gate
        lineage = [manifest.parent, read_manifest(home.models / manifest.parent).parent]
        assert default in lineage
        assert manifest.metrics["accuracy"] >= 0.7
        report = json.loads((home.models / trained / "report.json").read_text())
        assert report["training"]["onnx_parity_max_diff"] < 1e-4
        assert {"report.md", "confusion.png", "model.onnx"} <= {
            p.name for p in (home.models / trained).iterdir()
        }
        # the running daemon switches to it without a restart
        wait_until(
            lambda: any(e.get("model") == trained for e in home.events("model")), 20, "switch"
        )
        shutil.copy(sorted((CLOTHING10 / "shoes").iterdir())[39], home.inbox / "new-shoe.jpg")
        wait_until(lambda: home.file_events(), 20, "the shoe to be sorted")
        assert home.file_events()[0]["model"] == trained

        # nothing changed: skipped, quickly
        again = sortbox("train", config=home.config)
        assert again.returncode == 0 and "skipped" in again.stdout

        # a much weaker candidate: a user's training folders with hats and pants swapped (their
        # own split, fresh calibration and test pictures): the gate keeps the current model
        swapped = tmp_path / "swapped"
        copy_photos(swapped / "validation", {"hat": 6, "pants": 6, "shoes": 6}, skip=14)
        copy_photos(swapped / "test", {"hat": 6, "pants": 6, "shoes": 6}, skip=20)
        copy_photos(swapped / "train", {"shoes": 14})
        for wrong, right in (("hat", "pants"), ("pants", "hat")):
            (swapped / "train" / wrong).mkdir()
            for photo in sorted((CLOTHING10 / right).iterdir())[:14]:
                shutil.copy(photo, swapped / "train" / wrong / photo.name)
        weak = sortbox(
            "train",
            config=home.config,
            timeout=600,
            env={
                "SORTBOX_DATASET": str(swapped),
                "SORTBOX_TRAIN__FINETUNE_EPOCHS": "0",
                "SORTBOX_TRAIN__MAX_MACRO_F1_DROP": "0",
            },
        )
        assert weak.returncode == 3, weak.stdout + weak.stderr
        assert current_version(home.models) == trained
        # the newest refusal (a first run may also have refused its fine-tuned candidate)
        rejected = max((home.models / "rejected").iterdir(), key=lambda p: p.stat().st_mtime)
        assert "(worse)" in (rejected / "report.md").read_text()

        # rollback to the parent, atomically, and the daemon follows
        back = sortbox("models", "rollback", config=home.config)
        assert back.returncode == 0 and current_version(home.models) == manifest.parent
        wait_until(lambda: home.events("model")[-1]["model"] == manifest.parent, 20, "switch back")
        listing = sortbox("models", "list", config=home.config).stdout
        assert trained in listing and f"* {manifest.parent}" in listing
        runs = home.events("train")
        assert [r["outcome"] for r in runs] == ["published", "skipped", "rejected"]
    finally:
        daemon.stop()


# -- the learning issue (#8): gate per class, device, resume, untouched test split ----------------


def test_gate_refuses_a_candidate_that_breaks_one_class() -> None:
    from sortbox.trainer.evaluate import gate

    classes = ["a", "b", "c", "d", "e"]
    truth = [name for name in classes for _ in range(40)]

    def answers(right_per_class: dict[str, int]) -> list[str]:
        out = []
        for name in classes:
            wrong = classes[(classes.index(name) + 1) % len(classes)]
            out += [name] * right_per_class[name] + [wrong] * (40 - right_per_class[name])
        return out

    current = answers(dict.fromkeys(classes, 36))
    # better on four classes, but "e" falls from 36 to 20 right: the average hides it
    breaks_e = answers({"a": 40, "b": 40, "c": 40, "d": 40, "e": 20})
    verdict = gate(truth, breaks_e, current, classes, max_drop=0.2, max_class_recall_drop=0.05)
    assert not verdict.passed and verdict.broken_classes == ["e"], verdict.reason
    assert "recall dropped beyond noise for e" in verdict.reason
    # one or two pictures fewer is noise, not a broken class
    noisy = answers({"a": 37, "b": 36, "c": 36, "d": 35, "e": 34})
    assert gate(truth, noisy, current, classes, 0.02, 0.05).passed


def test_macro_f1_leaves_out_classes_with_no_test_picture_it_never_chose() -> None:
    """A user's 260 labelled pictures left two of ten classes without a test picture: each
    counted as an F1 of 0 in the report's macro-F1 (0.575 where the eight real ones gave
    0.718), which is also the fine-tuned model's bar."""
    from sortbox.trainer.evaluate import evaluate

    classes = ["a", "b", "c", "d"]
    labels = np.array([0, 0, 1, 1])  # no test picture of c or d
    right = np.eye(4)[[0, 0, 1, 1]]
    assert evaluate(right, labels, classes).macro_f1 == 1.0
    # choosing d for a picture of b is a mistake of d's too (a false positive): d counts
    wrong_d = np.eye(4)[[0, 0, 1, 3]]
    assert np.isclose(evaluate(wrong_d, labels, classes).macro_f1, (1 + 2 / 3 + 0) / 3)


def test_a_model_that_can_show_no_threshold_says_it_sorts_nothing() -> None:
    """'0% auto-sorted at 100.0% precision' read as a perfect model; it sorted nothing."""
    from sortbox.daemon.sorting.thresholds import ALWAYS_REVIEW
    from sortbox.trainer.report import AutoSorted
    from sortbox.trainer.ship import auto_sorted_words

    nothing = AutoSorted(
        share=0.0, share_interval=(0.0, 0.1), precision=1.0, precision_interval=(0.0, 1.0),
        auto_sorted=0, right=0, pictures=36,
    )  # fmt: skip
    words = auto_sorted_words(nothing, {"a": ALWAYS_REVIEW, "b": ALWAYS_REVIEW}, 224, 0.97)
    assert words.startswith("NOTHING auto-sorted: its 224 out-of-sample predictions cannot")
    assert "100.0%" not in words and "no lower target_precision would do" in words
    said = auto_sorted_words(nothing, {"a": ALWAYS_REVIEW}, 224, 0.97, highest=0.94)
    assert "or at target_precision 0.94, the highest its evidence can show" in said
    some = nothing.model_copy(update={"share": 0.004, "auto_sorted": 1, "right": 1})
    words = auto_sorted_words(some, {"a": 0.9, "b": 0.9}, 224, 0.97)
    assert words.startswith("0.4% auto-sorted at 100.0% precision on 36 test pictures")


def test_a_fine_tuned_model_must_not_buy_accuracy_with_review() -> None:
    from sortbox.trainer.evaluate import Standing, falls_short_of

    fast = Standing(macro_f1=0.90, auto_share=0.667)
    # more accurate, and it sorts about as much: it improves on the fast model
    assert falls_short_of(Standing(0.93, 0.64), fast) == []
    # more accurate, but its calibration promises nothing: everything would go to review
    (problem,) = falls_short_of(Standing(0.93, 0.0), fast)
    assert "auto-sorts 0.0% of the test pictures against the fast model's 66.7%" in problem
    # sorts as much, but no more accurate: not worth the extra model time
    (problem,) = falls_short_of(Standing(0.90, 0.70), fast)
    assert "not better than the fast model's macro-F1 0.9000" in problem


def test_the_fast_models_bar_is_measured_for_the_promise_in_force(tmp_path: Path) -> None:
    """A resumed fine-tune is compared with the current fast model's test figures only where
    they answered the same promise: its auto-sorted share under another target says nothing."""
    from datetime import UTC, datetime

    from sortbox.daemon.settings import load_settings
    from sortbox.daemon.sorting.manifest import Manifest
    from sortbox.daemon.sorting.preprocess import Preprocessing
    from sortbox.trainer.data import TrainingSet
    from sortbox.trainer.evaluate import Standing
    from sortbox.trainer.train import fast_standing

    config = tmp_path / "config.toml"
    config.write_text('inbox = "in"\nlibrary = "lib"\njournal = "j.jsonl"\nmodels_dir = "m"\n')
    settings = load_settings(config)  # target_precision 0.97, unknown_review_rate 0.05
    data = TrainingSet(train=[], calibration=[], test=[], classes=["hat", "pants"])

    def current(target: float, data_hash: str = data.fingerprint) -> Manifest:
        return Manifest(
            version="fast1", created=datetime.now(UTC), classes=data.classes, kind="fast",
            preprocessing=Preprocessing(), temperature=1.0, model_sha256="0" * 64,
            thresholds=dict.fromkeys(data.classes, 0.5),
            training_set_hash=data_hash, target_precision=target, unknown_review_rate=0.05,
            metrics={"macro_f1": 0.9, "test_auto_share": 0.6},
        )  # fmt: skip

    assert fast_standing(settings, [], current(0.97), data) == Standing(0.9, 0.6)
    assert fast_standing(settings, [], current(0.90), data) is None, "another promise"
    assert fast_standing(settings, [], current(0.97, "other"), data) is None, "other pictures"


def test_a_fine_tuned_model_that_can_promise_nothing_does_not_replace_the_fast_one(
    tmp_path: Path, feature_cache: Path
) -> None:
    """A real run in which the fine-tuned model's calibration cannot promise 90 %: it stands on
    its 12 calibration pictures, where 37 right in a row are the fewest that could show it (at
    the batch target 0.921, 5 % risk). The fast model stands on 84 cross-fitted predictions and
    auto-sorts. The gate keeps it."""
    home = trainer_home(tmp_path, feature_cache)
    dataset = tmp_path / "dataset"
    copy_photos(dataset / "train", dict.fromkeys(("hat", "pants", "shoes"), 24))
    copy_photos(dataset / "validation", dict.fromkeys(("hat", "pants", "shoes"), 4), skip=24)
    copy_photos(dataset / "test", dict.fromkeys(("hat", "pants", "shoes"), 12), skip=28)
    run = sortbox("train", config=home.config, timeout=600, env={"SORTBOX_TARGET_PRECISION": "0.9"})
    assert run.returncode == 0, run.stdout + run.stderr  # the fast model was published
    published = read_manifest(home.models / str(current_version(home.models)))
    assert published.kind == "fast" and published.metrics["test_auto_share"] > 0.05
    (refused,) = fine_tuned_reports(home)
    assert refused["outcome"] == "rejected", refused["outcome"]
    (train_run,) = home.events("train")
    assert "auto-sorts 0.0% of the test pictures against the fast model's" in train_run["reason"]


def test_device_choice_uses_cuda_only_when_torch_sees_it(tmp_path: Path) -> None:
    from sortbox.trainer.finetune import NoCuda, choose_device

    assert choose_device("cpu").type == "cpu"
    assert choose_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if torch.cuda.is_available():
        assert choose_device("cuda").type == "cuda"
        return
    with pytest.raises(NoCuda):
        choose_device("cuda")
    home = trainer_home(tmp_path, tmp_path / "cache", device="cuda")
    copy_photos(tmp_path / "dataset", {"hat": 6, "pants": 6})
    result = sortbox("train", config=home.config)
    assert result.returncode == 1 and "sees no CUDA GPU" in result.stdout
    assert [r["outcome"] for r in home.events("train")] == ["failed"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")
def test_fine_tune_runs_on_cuda(tmp_path: Path) -> None:
    home = trainer_home(tmp_path, tmp_path / "cache", device="cuda", finetune_epochs=2)
    copy_photos(tmp_path / "dataset", {"hat": 14, "pants": 14, "shoes": 14})
    result = sortbox("train", config=home.config, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    (report,) = fine_tuned_reports(home)
    assert report["training"]["device"] == "cuda"


def fine_tuned_reports(home: Home) -> list[dict]:
    return [
        report
        for path in sorted(home.models.glob("**/report.json"))
        if (report := json.loads(path.read_text()))["kind"] == "fine-tuned"
    ]


def test_fine_tune_paused_by_its_budget_resumes_on_the_next_run(tmp_path: Path) -> None:
    home = trainer_home(tmp_path, tmp_path / "cache", finetune_epochs=3, batch_size=8)
    copy_photos(tmp_path / "dataset", {"hat": 14, "pants": 14, "shoes": 14})
    checkpoint = tmp_path / "cache" / "finetune.pt"
    paused = sortbox("train", config=home.config, env={"SORTBOX_TRAIN__BUDGET_MINUTES": "0.001"})
    assert paused.returncode == 0, paused.stdout + paused.stderr
    # one journal line for the run: the fast model was published, the fine-tune paused
    assert [r["outcome"] for r in home.events("train")] == ["published"]
    assert "fine-tune paused at epoch 1/2" in home.events("train")[0]["reason"]
    assert current_version(home.models) is not None, "the fast model is published meanwhile"
    assert checkpoint.exists() and not fine_tuned_reports(home)

    resumed = sortbox("train", config=home.config, timeout=600)
    assert resumed.returncode in (0, 3), resumed.stdout + resumed.stderr  # 3: gate said no
    (report,) = fine_tuned_reports(home)
    assert report["training"]["resumed_from_epoch"] == 1
    # it ran its plan to the end: the 2 epochs the budget fitted, or more if still improving
    training = report["training"]
    assert training["epochs_run"] == training["planned_epochs"] >= 2, training
    assert training["stop_reason"].startswith(
        ("the planned", "plateau", "still improving", "cooled down")
    )
    # every epoch's calibration loss, the paused run's included, and the best is the lowest
    losses = training["calibration_losses"]
    assert len(losses) == training["epochs_run"], training
    best = losses[training["best_epoch"] - 1]
    assert best == pytest.approx(training["best_calibration_loss"], abs=1e-5)
    assert best <= min(losses) + 1e-4  # a gain under 1e-4 is not counted as one
    assert not checkpoint.exists(), "a finished fine-tune leaves nothing to resume"


def test_fine_tune_killed_mid_run_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys
    import time

    home = trainer_home(tmp_path, tmp_path / "cache", finetune_epochs=3, batch_size=8)
    copy_photos(tmp_path / "dataset", {"hat": 14, "pants": 14, "shoes": 14})
    checkpoint = tmp_path / "cache" / "finetune.pt"
    first = subprocess.Popen(
        [sys.executable, "-m", "sortbox.daemon.cli", "train", "--config", str(home.config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    while not checkpoint.exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)  # no clean-up of any kind
    first.wait(timeout=30)
    assert checkpoint.exists() and first.returncode == -signal.SIGKILL
    done_before = torch.load(checkpoint, weights_only=True)["epoch"]
    assert 1 <= done_before < 3

    second = sortbox("train", config=home.config, timeout=600)
    assert second.returncode in (0, 3), second.stdout + second.stderr  # 3: gate said no
    (report,) = fine_tuned_reports(home)
    assert report["training"]["resumed_from_epoch"] == done_before
    assert report["training"]["epochs_run"] == 3


def test_test_labels_never_tune_anything(tmp_path: Path, feature_cache: Path) -> None:
    """A dataset with its own train/validation/test split keeps it; shuffling the test labels
    changes the measured accuracy but not the temperature or a single threshold."""
    home = trainer_home(tmp_path, feature_cache, finetune_epochs=0)
    dataset = tmp_path / "dataset"
    for split, skip, count in (("train", 0, 14), ("validation", 14, 12), ("test", 26, 12)):
        copy_photos(dataset / split, {"hat": count, "pants": count, "shoes": count}, skip=skip)
    assert sortbox("train", config=home.config, timeout=600).returncode == 0
    data = gather(load_settings(home.config))
    assert (len(data.train), len(data.calibration), len(data.test)) == (42, 36, 36)
    before = read_manifest(home.models / current_version(home.models))

    test = dataset / "test"  # every test label becomes wrong: hat -> pants -> shoes -> hat
    test.joinpath("hat").rename(test / "tmp")
    test.joinpath("shoes").rename(test / "hat")
    test.joinpath("pants").rename(test / "shoes")
    test.joinpath("tmp").rename(test / "pants")
    shuffled = sortbox("train", "--force", config=home.config, timeout=600)
    assert shuffled.returncode == 0, shuffled.stdout + shuffled.stderr
    after = read_manifest(home.models / current_version(home.models))
    assert after.version != before.version
    assert after.metrics["accuracy"] < 0.5 < before.metrics["accuracy"]
    assert after.temperature == pytest.approx(before.temperature, abs=1e-6)
    assert after.thresholds == pytest.approx(before.thresholds, abs=1e-6)
    assert after.calibration is not None and before.calibration is not None
    assert after.calibration.predicted == before.calibration.predicted


# -- INT8 (#10): shipped beside the float model only when it agrees ---------------------------


def test_int8_model_ships_only_when_it_agrees_and_is_what_the_daemon_runs(
    tmp_path: Path, feature_cache: Path
) -> None:
    import onnx
    from onnx import numpy_helper
    from sortbox.daemon.sorting.classify import load_classifier, open_session
    from sortbox.daemon.sorting.manifest import INT8_MODEL_FILE, MODEL_FILE, sha256_file
    from sortbox.trainer.finetune import plain_pictures
    from sortbox.trainer.quantize import MIN_AGREEMENT, agreement_with

    home = trainer_home(tmp_path, feature_cache, finetune_epochs=0)
    copy_photos(tmp_path / "dataset", {"hat": 20, "pants": 20, "shoes": 20})
    trained = sortbox("train", config=home.config, timeout=600)
    assert trained.returncode == 0, trained.stdout + trained.stderr
    version_dir = home.models / str(current_version(home.models))
    manifest = read_manifest(version_dir)
    int8 = json.loads((version_dir / "report.json").read_text())["int8"]
    # accepted when it would decide as the float model does (trainer/quantize.py)
    assert int8["tried"] and int8["accepted"] == (
        int8["calibration_agreement"] >= MIN_AGREEMENT
        and int8["calibration_conflicting"] == 0
        and int8["calibration_coverage_cost"] <= int8["max_coverage_cost"]
    )
    assert int8["int8_ms_per_picture"] > 0 and int8["float_ms_per_picture"] > 0
    assert "INT8 model" in trained.stdout  # the user is told either way

    settings = load_settings(home.config)
    data = gather(settings)
    examples = [e for role in ROLES for e in data.role(role)]
    batches = list(plain_pictures(examples, manifest.preprocessing, settings.max_pixels))
    pictures = np.concatenate(batches)
    float_model = version_dir / MODEL_FILE
    if int8["accepted"]:
        assert manifest.int8 is not None
        assert manifest.int8.sha256 == sha256_file(version_dir / INT8_MODEL_FILE)
        quantised = version_dir / INT8_MODEL_FILE
        # the daemon runs the INT8 file, not the float one
        ours = load_classifier(version_dir, 1).logits(pictures)
        expected = open_session(quantised, 1).run(None, {"input": pictures})
        # its rows: the class logits, then the unknown score (issue #33)
        np.testing.assert_allclose(ours, np.column_stack(expected), atol=1e-6)
        # the agreement reported is the two files' on the calibration pictures, not the
        # agreement with the trainer's out-of-sample stand-ins for the float model's outputs
        calibration = list(
            plain_pictures(data.role("calibration"), manifest.preprocessing, settings.max_pixels)
        )
        by_float = open_session(float_model, 1).run(None, {"input": np.concatenate(calibration)})
        same, _ = agreement_with(quantised, iter(calibration), by_float[0], 1)
        assert int8["calibration_agreement"] == pytest.approx(same)
    else:
        assert manifest.int8 is None and not (version_dir / INT8_MODEL_FILE).exists()
        from sortbox.trainer.quantize import quantise

        quantised = quantise(float_model, iter(batches), tmp_path / INT8_MODEL_FILE)

    # the agreement is what it says: the share of pictures given the float model's label
    reference = open_session(float_model, 1).run(None, {"input": pictures})[0]
    agreement, logits = agreement_with(quantised, iter(batches), reference, 1)
    assert agreement == pytest.approx(float((logits.argmax(1) == reference.argmax(1)).mean()))
    assert agreement >= 0.9  # EfficientNet-Lite quantises well

    # a quantised model that answers differently is caught: the float model's head rolled
    graph = onnx.load(float_model)
    gemm = next(n for n in graph.graph.node if n.op_type == "Gemm")
    for initializer in graph.graph.initializer:
        if initializer.name in gemm.input[1:]:
            rolled = np.roll(numpy_helper.to_array(initializer), 1, axis=0)
            initializer.CopyFrom(numpy_helper.from_array(rolled, initializer.name))
    other = tmp_path / "other.onnx"
    onnx.save(graph, other)
    other_logits = open_session(other, 1).run(None, {"input": pictures})[0]
    wrong, _ = agreement_with(quantised, iter(batches), other_logits, 1)
    assert wrong < MIN_AGREEMENT
