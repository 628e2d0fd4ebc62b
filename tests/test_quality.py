"""Pictures nobody could judge (issue #33): blurry, dark, washed out or flat pictures go to review
saying so, with limits measured on the model's training pictures; a model without limits sorts
as before. Real JPEGs, the real daemon, `sortbox sort` and `sortbox explain`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from helpers import Daemon, Home, make_home, picture, publish_rgb_model, sortbox, wait_until
from PIL import Image, ImageFilter
from sortbox.daemon.layout import REVIEW_FOLDER
from sortbox.daemon.sorting.preprocess import Preprocessing, normalise, resize_and_crop
from sortbox.daemon.sorting.quality import (
    PictureQuality,
    limits_from,
    measure_quality,
    quality_issue,
)

SPEC = Preprocessing(resize=36, crop=32)


def measured(image: Image.Image, spec: Preprocessing = SPEC) -> PictureQuality:
    return measure_quality(normalise(resize_and_crop(image, spec), spec), spec)


def training_like(n: int = 60) -> list[Image.Image]:
    """Noisy pictures of the three colours, as the tiny model's 'training pictures'."""
    return [picture(("red", "green", "blue")[k % 3], seed=100 + k) for k in range(n)]


def flat_red(path: Path, shade: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (96, 64), (230 - shade, 20, 20)).save(path, quality=95)


def test_the_measures_see_blur_darkness_and_flatness() -> None:
    spec = Preprocessing()  # the real 224 crop
    rng = np.random.default_rng(0)
    texture = Image.fromarray(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8), "RGB")
    sharp = measured(texture, spec)
    blurred = measured(texture.filter(ImageFilter.GaussianBlur(4)), spec)
    dark = measured(Image.eval(texture, lambda v: v // 12), spec)
    flat = measured(Image.new("RGB", (400, 300), (90, 90, 90)), spec)
    assert blurred.sharpness < sharp.sharpness / 20
    assert dark.brightness < 15 < sharp.brightness
    assert flat.contrast < 0.5 and flat.sharpness < 0.5 and abs(flat.brightness - 90) < 1


def test_limits_are_quantiles_of_the_training_pictures_and_say_which_way_is_wrong() -> None:
    limits = limits_from([measured(image) for image in training_like()], tail_share=0.02)
    assert limits.pictures == 60
    assert quality_issue(measured(picture("red", 7)), limits) is None
    flat = measured(Image.new("RGB", (96, 64), (230, 20, 20)))
    assert quality_issue(flat, limits).startswith("too flat to judge (contrast 0.0")
    dark = measured(Image.eval(picture("green", 3), lambda v: v // 10))
    assert quality_issue(dark, limits).startswith("too dark to judge")
    white = measured(Image.new("RGB", (96, 64), (255, 255, 255)))
    assert quality_issue(white, limits) is not None


def quality_home(tmp_path: Path) -> Home:
    home = make_home(tmp_path)
    limits = limits_from([measured(image) for image in training_like()], tail_share=0.02)
    publish_rgb_model(home.models, "v1", quality_limits=limits.model_dump())
    return home


def test_a_picture_too_flat_to_judge_goes_to_review_in_the_daemon_sort_and_explain(
    tmp_path: Path,
) -> None:
    home = quality_home(tmp_path)
    picture("red", 1).save(home.inbox / "red.jpg")
    flat_red(home.inbox / "flat.jpg")
    daemon = Daemon(home).start()
    try:
        wait_until(lambda: len(home.file_events()) == 2, 30, "2 decisions")
    finally:
        daemon.stop()
    by_src = {e["src"]: e for e in home.file_events()}
    assert by_src["red.jpg"]["event"] == "sorted"
    assert set(by_src["red.jpg"]["quality"]) == {"sharpness", "brightness", "contrast"}
    flat = by_src["flat.jpg"]
    assert flat["event"] == "review" and flat["dest"].startswith(f"{REVIEW_FOLDER}/")
    assert flat["label"] == "red" and flat["confidence"] > 0.99, "sure of the class, yet flat"
    assert flat["reason"].startswith("too flat to judge (contrast 0.")
    assert flat["quality"]["contrast"] < 1

    arrived = tmp_path / "arrived"
    picture("red", 2).save((arrived.mkdir() or arrived) / "red2.jpg")
    flat_red(arrived / "flat2.jpg", shade=5)
    result = sortbox("sort", str(arrived), config=home.config)
    assert result.returncode == 0, result.stdout + result.stderr
    by_src = {e["src"]: e for e in home.file_events()}
    assert by_src["red2.jpg"]["dest"].startswith("red/")
    assert by_src["flat2.jpg"]["reason"].startswith("too flat to judge")

    result = sortbox("explain", "--json", str(arrived / "flat2.jpg"), config=home.config)
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["folder"] == REVIEW_FOLDER
    assert answer["decision"].startswith("review: too flat to judge")
    human = sortbox("explain", str(arrived / "flat2.jpg"), config=home.config)
    assert "too flat to judge" in human.stdout


def test_a_model_without_limits_sorts_a_flat_picture_as_before(tmp_path: Path) -> None:
    home = make_home(tmp_path)
    publish_rgb_model(home.models, "v1")
    flat_red(home.inbox / "flat.jpg")
    result = sortbox("sort", str(home.inbox), config=home.config)
    assert result.returncode == 0, result.stdout + result.stderr
    (event,) = home.file_events()
    assert event["event"] == "sorted" and event["dest"].startswith("red/")
    assert event["quality"]["contrast"] < 1, "measured and journaled all the same"


def test_the_trainer_flags_its_own_dark_and_blurry_pictures_and_caches_the_measures(
    tmp_path: Path,
) -> None:
    """Real photos (tests/data/clothing10) plus a darkened and a blurred copy of one: the
    limits come from the photos, and only the two copies are past them."""
    import hashlib

    from helpers import CLOTHING10
    from sortbox.trainer.data import Example
    from sortbox.trainer.judgeable import measure_examples, quality_limits, unjudgeable

    photos = sorted(CLOTHING10.glob("*/*.jpg"))[:80]
    assert len(photos) == 80
    source = Image.open(photos[0]).convert("RGB")
    dark, blurred = tmp_path / "dark.jpg", tmp_path / "blurred.jpg"
    Image.eval(source, lambda v: v // 12).save(dark, quality=92)
    source.filter(ImageFilter.GaussianBlur(12)).save(blurred, quality=92)

    def example(path: Path) -> Example:
        return Example(path, hashlib.sha256(path.read_bytes()).hexdigest(), path.parent.name, "")

    examples = [example(p) for p in [*photos, dark, blurred]]
    spec = Preprocessing()
    measures = measure_examples(examples, spec, 50_000_000, tmp_path / "cache", threads=2)
    assert len(measures) == 82
    limits = quality_limits(examples[:80], measures, share=0.02)
    assert limits is not None and limits.pictures == 80
    flagged = {u.example.path.name: u.why for u in unjudgeable(examples, measures, limits)}
    assert flagged["dark.jpg"].startswith("too dark to judge")
    assert flagged["blurred.jpg"].startswith("too blurry to judge")
    assert len(flagged) <= 2 + 4 * 2, "at most the 2% tails of 80 photos besides the copies"
    assert quality_limits(examples[:80], measures, share=0) is None, "0 turns it off"

    # the same contents under paths that no longer exist: only the cache can answer
    gone = [Example(tmp_path / "gone" / e.path.name, e.sha256, e.label, "") for e in examples]
    cached = measure_examples(gone, spec, 50_000_000, tmp_path / "cache", threads=2)
    assert cached == measures


def test_a_training_run_lists_the_pictures_too_poor_to_judge_and_ships_the_limits(
    tmp_path: Path,
) -> None:
    """`sortbox train` as a user runs it: a darkened photo among real ones is listed with its
    measure on the terminal and in the report; the model carries the limits to the daemon;
    `train.exclude_unjudgeable` leaves flagged training pictures out."""
    import dataclasses
    import shutil

    from helpers import CLOTHING10
    from sortbox.daemon.sorting.manifest import current_version, read_manifest
    from sortbox.trainer.data import Example, TrainingSet
    from sortbox.trainer.judgeable import Judged, Unjudgeable, leave_out

    home = make_home(tmp_path, dataset="dataset", cache_dir=str(tmp_path / "cache"))
    with home.config.open("a") as fh:
        fh.write("[train]\nfinetune_epochs = 0\nthreads = 2\nunjudgeable_share = 0.05\n")
    for name in ("hat", "pants", "shoes"):
        (tmp_path / "dataset" / name).mkdir(parents=True)
        for photo in sorted((CLOTHING10 / name).iterdir())[:20]:
            shutil.copy(photo, tmp_path / "dataset" / name / photo.name)
    source = Image.open(sorted((CLOTHING10 / "hat").iterdir())[30]).convert("RGB")
    Image.eval(source, lambda v: v // 12).save(tmp_path / "dataset" / "hat" / "dark.jpg")

    result = sortbox("train", config=home.config, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "pictures too poor to judge:" in result.stdout
    assert "dark.jpg: too dark to judge" in result.stdout, result.stdout
    version = home.models / str(current_version(home.models))
    limits = read_manifest(version).quality_limits
    assert limits is not None and limits.tail_share == 0.05
    report = json.loads((version / "report.json").read_text())
    listed = {Path(p["path"]).name: p for p in report["data"]["unjudgeable"]}
    assert listed["dark.jpg"]["why"].startswith("too dark to judge"), listed
    assert "dark.jpg" in (version / "report.md").read_text()

    # leaving them out drops only training pictures, and says so among the exclusions
    dark = Example(tmp_path / "dark.jpg", "d" * 64, "hat", "dataset")
    other = dataclasses.replace(dark, sha256="e" * 64)
    data = TrainingSet([dark, other], [], [], ["hat"])
    judged = Judged(limits, [Unjudgeable(dark, "too dark to judge")], left_out=True)
    kept = leave_out(data, judged)
    assert kept.train == [other] and kept.excluded == [(str(dark.path), "too poor to judge")]
    assert leave_out(data, dataclasses.replace(judged, left_out=False)) is data
