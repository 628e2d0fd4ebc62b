"""From a trained candidate to a published model, or a refused one kept for its report.

calibrate (temperature, thresholds, the unknown check) → export (and check ONNX Runtime agrees
with PyTorch) → INT8 (kept when it decides as the float model does under that calibration) →
measure on the test pictures → gate against the current model (and a fine-tuned one against
the fast one) → report and manifest → publish.

Calibration uses only out-of-sample predictions (the calibration pictures', or cross-fitted
ones); the gate and every reported figure use only the test pictures.
"""

from __future__ import annotations

import dataclasses
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from sortbox.daemon.settings import Settings
from sortbox.daemon.sorting.classify import load_classifier
from sortbox.daemon.sorting.decide import softmax
from sortbox.daemon.sorting.manifest import (
    INT8_MODEL_FILE,
    Manifest,
    highest_showable_target,
    sha256_file,
)
from sortbox.daemon.sorting.preprocess import Preprocessing
from sortbox.daemon.sorting.thresholds import promise_words, sorts_nothing, wilson_interval
from sortbox.trainer.calibrate import (
    Calibration,
    calibrate,
    expected_calibration_error,
    fit_temperature,
    precision_coverage,
)
from sortbox.trainer.data import Example, TrainingSet
from sortbox.trainer.evaluate import (
    Evaluation,
    GateResult,
    Standing,
    evaluate,
    falls_short_of,
    gate,
)
from sortbox.trainer.export import LOGITS, UNKNOWN, check_parity, export_onnx
from sortbox.trainer.fast import CrossFitted
from sortbox.trainer.finetune import plain_pictures
from sortbox.trainer.judgeable import Judged
from sortbox.trainer.model import WithUnknown
from sortbox.trainer.publish import current_manifest, new_version, publish
from sortbox.trainer.quantize import (
    CALIBRATION_PICTURES,
    MAX_COVERAGE_COST,
    MIN_AGREEMENT,
    DecisionsCompared,
    Outputs,
    compare_decisions,
    ms_per_picture,
    outputs_of_each,
    quantise,
)
from sortbox.trainer.report import (
    AutoSorted,
    CalibrationFacts,
    CoveragePoint,
    DataSummary,
    Int8Facts,
    Report,
    TrainingFacts,
    UnknownCheck,
    WrongAnswer,
)

PARITY_IMAGES = 16


@dataclass(frozen=True)
class Candidate:
    kind: str  # fast, fine-tuned
    model: WithUnknown
    logits: dict[str, np.ndarray]  # PyTorch's, by role: calibration, test
    unknown: dict[str, np.ndarray]  # the unknown scores, by role
    facts: TrainingFacts
    # out-of-sample predictions to calibrate on instead of the calibration pictures' (for a
    # model that learnt from them); an INT8 version takes the same calibration
    cross_fitted: CrossFitted | None = None
    held_out_pass: float | None = None
    must_beat: Standing | None = None  # the fast model's results, for a fine-tuned one


@dataclass(frozen=True)
class Shipped:
    outcome: str  # published, rejected or paused
    version: str | None
    summary: str
    standing: Standing | None  # on the test pictures, as judged


def ship(
    settings: Settings, candidate: Candidate, data: TrainingSet, judged: Judged, force: bool
) -> Shipped:
    """Export, calibrate, measure, gate; then publish, or keep as a refused candidate."""
    version = new_version(settings.models_dir)
    settings.models_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=settings.models_dir, prefix=".scratch-") as scratch:
        calibrated = calibrate_candidate(settings, candidate, data)
        exported = export_checked(settings, candidate, data, calibrated.calibration, Path(scratch))
        current = Current.of(settings, data)
        judged_runtime = choose_runtime(
            settings, candidate, calibrated, exported, data, current, force
        )
        verdict, figures = judged_runtime.verdict, judged_runtime.figures
        publishable = verdict.passed or force
        outcome = "published" if publishable else "rejected"
        forced = " (forced past the gate)" if force and not verdict.passed else ""
        report = build_report(
            settings, version, candidate, data, judged, exported, judged_runtime, current.manifest,
            outcome + forced,
        )  # fmt: skip
        manifest = build_manifest(
            settings, version, candidate, data, judged, exported.onnx_path, judged_runtime,
            current.manifest,
        )  # fmt: skip
        publish(
            settings.models_dir,
            exported.onnx_path,
            manifest.model_dump(exclude={"int8"}),
            extra_files=report.files(data.classes),
            rejected=not publishable,
            keep=settings.train.keep_versions,
            int8=exported.int8.shipped if judged_runtime.runtime.int8 and exported.int8 else None,
        )
    summary = (
        f"{candidate.kind} model {version}: test accuracy {figures.evaluation.accuracy:.3f}, "
        f"macro-F1 {figures.evaluation.macro_f1:.3f}, "
        + auto_sorted_words(
            figures.on_test,
            judged_runtime.calibration.thresholds,
            judged_runtime.evidence,
            settings.target_precision,
            highest_showable_target(manifest, settings.target_precision),
        )
        + f"; {verdict.reason}; {candidate.facts.seconds:.0f}s"
    )
    print(f"train: {outcome}: {summary}")
    return Shipped(outcome, version, summary, figures.standing)


def auto_sorted_words(
    on_test: AutoSorted,
    thresholds: dict[str, float],
    evidence: int,
    target: float,
    highest: float | None = None,
) -> str:
    """What the model will auto-sort, in words. A model whose evidence cannot show the target
    sorts nothing by itself, and "0% auto-sorted at 100.0% precision" hid that (#33); then
    `highest` is the highest target its evidence can show (None: none down to 50%)."""
    if on_test.auto_sorted:
        return (
            f"{on_test.share:.1%} auto-sorted at {on_test.precision:.1%} precision on "
            f"{on_test.pictures} test pictures"
        )
    if sorts_nothing(thresholds):
        return (
            f"NOTHING auto-sorted: its {evidence} out-of-sample predictions cannot show "
            f"{target:.0%} precision, so every picture goes to needs_review with the model's "
            "suggestion; auto-sorting starts once more pictures are labelled ("
            + (
                f"or at target_precision {highest:g}, the highest its evidence can show"
                if highest is not None
                else "no lower target_precision would do"
            )
            + "; docs/training.md)"
        )
    return f"nothing auto-sorted of its {on_test.pictures} test pictures"


@dataclass(frozen=True)
class Current:
    """The model in use when the candidate is judged, and its answers on the test pictures
    (run once, however many runtimes the gate judges)."""

    manifest: Manifest | None
    answers: list[str] | None

    @classmethod
    def of(cls, settings: Settings, data: TrainingSet) -> Current:
        manifest = current_manifest(settings)
        return cls(manifest, current_predictions(settings, manifest, data.test))


@dataclass(frozen=True)
class JudgedRuntime:
    runtime: Runtime
    calibration: Calibration
    evidence: int  # how many out-of-sample predictions the calibration stands on
    figures: TestFigures
    verdict: GateResult


def choose_runtime(
    settings: Settings,
    candidate: Candidate,
    calibrated: Calibrated,
    exported: Exported,
    data: TrainingSet,
    current: Current,
    force: bool,
) -> JudgedRuntime:
    """The INT8 model where it decides as the float model does and passes the gate; else the
    float model. Both take the float model's calibration (out-of-sample evidence) and are
    measured on their own outputs, as the daemon runs them."""
    runtimes, calibration = exported.runtimes, calibrated.calibration
    for runtime in runtimes:
        figures = measure_on_test(runtime, calibration, data)
        verdict = judge(settings, candidate, figures, data, current)
        if verdict.passed or force or runtime is runtimes[-1]:
            break
        print(f"train: the INT8 model did not pass the gate ({verdict.reason}); trying float")
    return JudgedRuntime(runtime, calibration, calibrated.evidence, figures, verdict)


# -- export, parity, INT8 ----------------------------------------------------------------------


@dataclass(frozen=True)
class Int8Outcome:
    path: Path
    calibration: DecisionsCompared  # on the calibration pictures: decides
    test: DecisionsCompared  # on the test pictures: reported
    outputs: dict[str, Outputs]  # its outputs, by role
    float_ms: float  # per picture, one thread
    int8_ms: float

    @property
    def accepted(self) -> bool:
        return self.calibration.acceptable

    @property
    def shipped(self) -> tuple[Path, float] | None:
        return (self.path, self.calibration.label_agreement) if self.accepted else None

    def facts(self, shipped: bool) -> Int8Facts:
        return Int8Facts(
            tried=True,
            accepted=self.accepted,
            shipped=shipped,
            calibration_agreement=self.calibration.label_agreement,
            test_agreement=self.test.label_agreement,
            required=MIN_AGREEMENT,
            calibration_conflicting=self.calibration.conflicting,
            test_conflicting=self.test.conflicting,
            calibration_coverage_cost=self.calibration.coverage_cost,
            test_coverage_cost=self.test.coverage_cost,
            max_coverage_cost=MAX_COVERAGE_COST,
            float_ms_per_picture=self.float_ms,
            int8_ms_per_picture=self.int8_ms,
        )

    def verdict(self) -> str:
        c = self.calibration
        # accepted is not shipped yet: the gate judges the INT8 model before the float one
        how = "agrees with the float model; the gate decides" if self.accepted else "refused"
        return (
            f"INT8 model {how} ({self.int8_ms:.1f} ms a picture on one core against "
            f"{self.float_ms:.1f}): on the calibration pictures it gives the float model's "
            f"label on {c.label_agreement:.1%} (needs {MIN_AGREEMENT:.0%}), files "
            f"{c.conflicting} where the float model would file another class (needs 0), and "
            f"auto-sorts {c.int8_auto_share:.1%} of them against the float model's "
            f"{c.float_auto_share:.1%} (at most {100 * MAX_COVERAGE_COST:.0f} points fewer)"
        )


@dataclass(frozen=True)
class Runtime:
    """A model file the daemon could run, and its outputs on the judged pictures, by role."""

    int8: bool
    logits: dict[str, np.ndarray]
    unknown: dict[str, np.ndarray]


@dataclass(frozen=True)
class Exported:
    onnx_path: Path
    parity: float  # the largest difference between PyTorch's and ONNX Runtime's outputs
    int8: Int8Outcome | None  # None: not tried (train.int8 = false)
    float_runtime: Runtime

    @property
    def runtimes(self) -> list[Runtime]:
        """What to try, in order: INT8 where it decides as the float model does, then float."""
        if self.int8 is None or not self.int8.accepted:
            return [self.float_runtime]
        outputs = self.int8.outputs
        int8 = Runtime(
            True,
            {role: o.logits for role, o in outputs.items()},
            {role: o.unknown for role, o in outputs.items()},
        )
        return [int8, self.float_runtime]


def export_checked(
    settings: Settings,
    candidate: Candidate,
    data: TrainingSet,
    calibration: Calibration,
    scratch: Path,
) -> Exported:
    spec = candidate.model.backbone.preprocessing
    onnx_path = export_onnx(
        candidate.model, spec.crop, scratch / "model.onnx", output=(LOGITS, UNKNOWN)
    )
    pictures = next(plain_pictures(data.test[:PARITY_IMAGES], spec, settings.max_pixels))
    labels = data.labels()["calibration"]
    temperature = fit_temperature(candidate.logits["calibration"], labels)
    parity = check_parity(candidate.model, onnx_path, pictures, temperature)
    int8 = (
        int8_version(settings, onnx_path, spec, data, calibration, pictures)
        if settings.train.int8
        else None
    )
    return Exported(onnx_path, parity, int8, Runtime(False, candidate.logits, candidate.unknown))


def int8_version(
    settings: Settings,
    float_model: Path,
    spec: Preprocessing,
    data: TrainingSet,
    shipped: Calibration,
    sample: np.ndarray,
) -> Int8Outcome:
    """Quantise the exported model on training pictures, and compare the decisions the daemon
    would take with it and with the float model file on the calibration and test pictures,
    both under the calibration that ships. The float file is run again rather than taking
    the candidate's logits: on the calibration pictures those are out-of-sample stand-ins (a
    blended model's fast part is cross-fitted there), not what either file computes, and
    against them INT8 agreed on 95.9% where it agreed with the float file on 98.5%."""
    max_pixels = settings.max_pixels
    rng = np.random.default_rng(settings.train.seed)
    chosen = rng.choice(len(data.train), min(CALIBRATION_PICTURES, len(data.train)), replace=False)
    ranges_from = [data.train[n] for n in sorted(chosen)]
    path = quantise(
        float_model,
        plain_pictures(ranges_from, spec, max_pixels),
        float_model.with_name(INT8_MODEL_FILE),
    )
    labels = data.labels()
    outputs, compared = {}, {}
    for role in ("calibration", "test"):
        pictures = plain_pictures(data.role(role), spec, max_pixels)
        by_float, outputs[role] = outputs_of_each(
            [float_model, path], pictures, settings.train.threads
        )
        compared[role] = compare_decisions(
            by_float,
            outputs[role],
            labels[role],
            data.classes,
            settings.target_precision,
            settings.unknown_review_rate,
            shipped,
        )
    outcome = Int8Outcome(
        path,
        compared["calibration"],
        compared["test"],
        outputs,
        ms_per_picture(float_model, sample),
        ms_per_picture(path, sample),
    )
    print(f"train: {outcome.verdict()}")
    return outcome


# -- calibrate, measure, gate ------------------------------------------------------------------


@dataclass(frozen=True)
class Calibrated:
    calibration: Calibration
    evidence: int  # how many out-of-sample predictions it stands on


def calibrate_candidate(settings: Settings, candidate: Candidate, data: TrainingSet) -> Calibrated:
    """The calibration, and how many out-of-sample predictions it stands on: the cross-fitted
    ones where the model learnt from the calibration pictures (the fast model), else its
    PyTorch outputs on them (a fine-tuned model, its fast part cross-fitted too). An INT8
    model takes the same: its own outputs on the calibration pictures are in-sample wherever
    the fast model's head is in it, and would promise more than the pictures show."""
    shipped_check = candidate.unknown["calibration"]  # fitted on the train pictures only
    if candidate.cross_fitted is not None:
        crossed = candidate.cross_fitted
        logits, labels, unknown = crossed.logits, crossed.labels, crossed.unknown
    else:
        logits, labels, unknown = (
            candidate.logits["calibration"], data.labels()["calibration"], shipped_check
        )  # fmt: skip
    calibration = calibrate(
        logits,
        labels,
        data.classes,
        settings.target_precision,
        unknown,
        settings.unknown_review_rate,
        check_scores=shipped_check if candidate.cross_fitted is not None else None,
    )
    return Calibrated(calibration, len(labels))


@dataclass(frozen=True)
class TestFigures:
    logits: np.ndarray
    probabilities: np.ndarray
    evaluation: Evaluation
    predicted: list[str]
    familiar: np.ndarray  # the test pictures the unknown check lets through
    on_test: AutoSorted  # with the unknown check
    unchecked: AutoSorted  # without it

    @property
    def standing(self) -> Standing:
        return Standing(self.evaluation.macro_f1, self.on_test.share)


def measure_on_test(runtime: Runtime, calibration: Calibration, data: TrainingSet) -> TestFigures:
    logits, labels, classes = runtime.logits["test"], data.labels()["test"], data.classes
    probabilities = softmax(logits, calibration.temperature)
    check = calibration.unknown_threshold
    familiar = runtime.unknown["test"] <= (np.inf if check is None else check)
    return TestFigures(
        logits,
        probabilities,
        evaluate(probabilities, labels, classes),
        [classes[i] for i in probabilities.argmax(axis=1)],
        familiar,
        auto_sorted(probabilities, labels, calibration.thresholds, classes, familiar),
        auto_sorted(probabilities, labels, calibration.thresholds, classes),
    )


def judge(
    settings: Settings,
    candidate: Candidate,
    figures: TestFigures,
    data: TrainingSet,
    current: Current,
) -> GateResult:
    """The gate against the current model, on the same test pictures; a fine-tuned model
    must also improve on the fast one."""
    cfg = settings.train
    verdict = gate(
        [e.label for e in data.test],
        figures.predicted,
        current.answers,
        current.manifest.classes if current.manifest else [],
        cfg.max_macro_f1_drop,
        cfg.max_class_recall_drop,
    )
    fast = candidate.must_beat
    problems = falls_short_of(figures.standing, fast) if fast is not None else []
    if problems:  # said even where the gate refused it already: both are worth knowing
        reason = "; ".join([verdict.reason, *problems])
        return dataclasses.replace(verdict, passed=False, reason=reason)
    return verdict


def auto_sorted(
    probabilities: np.ndarray,
    labels: np.ndarray,
    thresholds: dict[str, float],
    classes: list[str],
    familiar: np.ndarray | None = None,
) -> AutoSorted:
    """What the daemon would do with the test pictures. `familiar`: the pictures the unknown
    check lets through (all where None)."""
    predicted = probabilities.argmax(axis=1)
    confidence = probabilities.max(axis=1)
    auto = confidence >= np.array([thresholds[classes[p]] for p in predicted])
    if familiar is not None:
        auto &= familiar
    count, right = int(auto.sum()), int((predicted[auto] == labels[auto]).sum())
    return AutoSorted(
        share=count / len(labels) if len(labels) else 0.0,
        share_interval=wilson_interval(count, len(labels)),
        precision=right / count if count else 1.0,
        precision_interval=wilson_interval(right, count),
        auto_sorted=count,
        right=right,
        pictures=len(labels),
    )


def current_predictions(
    settings: Settings, current: Manifest | None, examples: list[Example]
) -> list[str] | None:
    """The current model's answers on the test pictures, run as the daemon runs it."""
    if current is None:
        return None
    classifier = load_classifier(settings.models_dir / current.version, settings.train.threads)
    answers: list[str] = []
    for batch in plain_pictures(examples, classifier.manifest.preprocessing, settings.max_pixels):
        class_logits = classifier.logits(batch)[:, : len(current.classes)]
        answers += [current.classes[i] for i in class_logits.argmax(axis=1)]
    return answers


# -- report and manifest -----------------------------------------------------------------------


def build_report(
    settings: Settings,
    version: str,
    candidate: Candidate,
    data: TrainingSet,
    judged: Judged,
    exported: Exported,
    chosen: JudgedRuntime,
    current: Manifest | None,
    outcome: str,
) -> Report:
    test_labels = data.labels()["test"]
    calibration, figures, verdict = chosen.calibration, chosen.figures, chosen.verdict
    int8 = (
        exported.int8.facts(shipped=chosen.runtime.int8 and outcome.startswith("published"))
        if exported.int8 is not None
        else Int8Facts(tried=False)
    )
    return Report(
        version=version,
        kind=candidate.kind,
        backbone=settings.train.backbone,
        created=datetime.now(UTC),
        parent=current.version if current else None,
        outcome=outcome,
        gate=verdict,
        data=DataSummary.of(data, judged.unjudgeable, judged.left_out),
        metrics=figures.evaluation,
        test_auto_sorted=figures.on_test,
        promise=promise_words(settings.target_precision),
        unknown_check=UnknownCheck(
            threshold=calibration.unknown_threshold,
            review_rate_setting=settings.unknown_review_rate,
            test_pictures_sent_to_review=float(1 - figures.familiar.mean()),
            test_auto_share_without_check=figures.unchecked.share,
            coverage_cost=figures.unchecked.share - figures.on_test.share,
            held_out_class_pass_share=candidate.held_out_pass,
        ),
        calibration=CalibrationFacts(
            temperature=calibration.temperature,
            thresholds=calibration.thresholds,
            target_precision=settings.target_precision,
            promise_from_pictures=chosen.evidence,
            expected_auto_share=calibration.expected_auto_share,
            expected_auto_precision=calibration.expected_auto_precision,
            ece_before=expected_calibration_error(softmax(figures.logits, 1.0), test_labels),
            ece_after=expected_calibration_error(figures.probabilities, test_labels),
        ),
        precision_coverage=[
            CoveragePoint(**row) for row in precision_coverage(figures.probabilities, test_labels)
        ],
        wrong=[
            WrongAnswer(path=str(e.path), true=e.label, predicted=p, confidence=float(row.max()))
            for e, p, row in zip(data.test, figures.predicted, figures.probabilities, strict=True)
            if p != e.label
        ],
        training=candidate.facts.model_copy(update={"onnx_parity_max_diff": exported.parity}),
        int8=int8,
    )


def build_manifest(
    settings: Settings,
    version: str,
    candidate: Candidate,
    data: TrainingSet,
    judged: Judged,
    onnx_path: Path,
    chosen: JudgedRuntime,
    current: Manifest | None,
) -> Manifest:
    """The daemon's own type: what it reads is what was checked here."""
    calibration, figures = chosen.calibration, chosen.figures
    check = calibration.unknown_threshold
    return Manifest(
        version=version,
        created=datetime.now(UTC),
        kind=candidate.kind,  # type: ignore[arg-type]
        backbone=settings.train.backbone,
        classes=data.classes,
        preprocessing=candidate.model.backbone.preprocessing,
        temperature=calibration.temperature,
        thresholds=calibration.thresholds,
        calibration=calibration.points,
        target_precision=settings.target_precision,
        unknown_threshold=check,
        unknown_review_rate=settings.unknown_review_rate if check is not None else None,
        quality_limits=judged.limits,
        parent=current.version if current else None,
        training_set_hash=data.fingerprint,
        expected_review_rate=1.0 - calibration.expected_auto_share,
        model_sha256=sha256_file(onnx_path),
        metrics={
            "accuracy": figures.evaluation.accuracy,
            "macro_f1": figures.evaluation.macro_f1,
            "test_images": len(data.test),
            "test_auto_share": figures.on_test.share,
            "test_auto_precision": figures.on_test.precision,
            "expected_auto_share": calibration.expected_auto_share,
            "expected_auto_precision": calibration.expected_auto_precision,
        },
    )
