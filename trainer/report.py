"""What a training run says about each candidate it built: report.json, report.md and
confusion.png in the model's folder.

`Report` is typed and versioned (`format`), so what is written is what is checked; report.md
is rendered from it, section by section.
"""

from __future__ import annotations

import io
from datetime import datetime
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict
from sortbox.trainer.data import TrainingSet
from sortbox.trainer.evaluate import Evaluation, GateResult
from sortbox.trainer.judgeable import Unjudgeable


class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AutoSorted(_Part):
    """What the daemon would do with the test pictures: how many it auto-sorts, how
    precisely, each with its 95% Wilson interval."""

    share: float
    share_interval: tuple[float, float]
    precision: float
    precision_interval: tuple[float, float]
    auto_sorted: int
    right: int
    pictures: int


class UnknownCheck(_Part):
    method: str = "Mahalanobis distance on 64 principal components (trainer/unknown.py)"
    threshold: float | None
    review_rate_setting: float
    test_pictures_sent_to_review: float
    test_auto_share_without_check: float
    coverage_cost: float  # points of auto-sorted the check costs on the test pictures
    # each class left out in turn: the share of its calibration pictures the check lets
    # through (the class threshold may still send some to review)
    held_out_class_pass_share: float | None
    benchmark: str = "benchmarks/bench_unknown.py (docs/benchmarks.md)"


class CalibrationFacts(_Part):
    temperature: float
    thresholds: dict[str, float]
    target_precision: float
    promise_from_pictures: int
    expected_auto_share: float
    expected_auto_precision: float
    ece_before: float
    ece_after: float


class UnjudgeablePicture(_Part):
    path: str
    label: str
    role: str
    why: str


class DataSummary(_Part):
    train: int
    calibration: int
    test: int
    counts: dict[str, tuple[int, int, int]]
    origins: dict[str, int]
    excluded: list[tuple[str, str]]
    conflicts: list[tuple[str, list[str]]]
    # pictures too blurry, dark, washed out or flat to judge (trainer/judgeable.py)
    unjudgeable: list[UnjudgeablePicture] = []
    unjudgeable_left_out: bool = False

    @classmethod
    def of(cls, data: TrainingSet, unjudgeable: list[Unjudgeable], left_out: bool) -> DataSummary:
        role = {e.sha256: r for r in ("train", "calibration", "test") for e in data.role(r)}
        return cls(
            train=len(data.train),
            calibration=len(data.calibration),
            test=len(data.test),
            counts=data.counts(),
            origins=data.origins(),
            excluded=data.excluded,
            conflicts=data.conflicts,
            unjudgeable=[
                UnjudgeablePicture(
                    path=str(u.example.path),
                    label=u.example.label,
                    role=role.get(u.example.sha256, "left out"),
                    why=u.why,
                )
                for u in unjudgeable
            ],
            unjudgeable_left_out=left_out,
        )


class TrainingFacts(_Part):
    seconds: float
    onnx_parity_max_diff: float
    cross_fitted_folds: int | None = None
    device: str | None = None
    warm_start_from: str | None = None
    epochs_run: int | None = None
    planned_epochs: int | None = None
    best_epoch: int | None = None
    best_calibration_loss: float | None = None
    resumed_from_epoch: int | None = None
    finetune_seconds_all_runs: float | None = None
    stop_reason: str | None = None  # why the fine-tune stopped where it did
    calibration_losses: list[float] | None = None  # each epoch's, tempered: how it went
    blend_fast_weight: float | None = None


class Int8Facts(_Part):
    """The INT8 model against the float one, each calibrated on its own outputs."""

    tried: bool
    accepted: bool | None = None  # it decides as the float model does
    shipped: bool | None = None  # and it is what the daemon runs (it passed the gate too)
    calibration_agreement: float | None = None  # the same top label
    test_agreement: float | None = None
    required: float | None = None
    # pictures both would auto-sort, into different classes (accepted only with none)
    calibration_conflicting: int | None = None
    test_conflicting: int | None = None
    # points of auto-sorted pictures it gives up against the float model
    calibration_coverage_cost: float | None = None
    test_coverage_cost: float | None = None
    max_coverage_cost: float | None = None
    float_ms_per_picture: float | None = None  # one thread
    int8_ms_per_picture: float | None = None


class CoveragePoint(_Part):
    threshold: float
    coverage: float
    precision: float


class WrongAnswer(_Part):
    path: str
    true: str
    predicted: str
    confidence: float


class Report(_Part):
    format: Literal[1] = 1
    version: str
    kind: str  # fast, fine-tuned
    backbone: str
    created: datetime
    parent: str | None
    outcome: str  # published, rejected, "published (forced past the gate)"
    gate: GateResult
    data: DataSummary
    metrics: Evaluation
    test_auto_sorted: AutoSorted
    promise: str
    unknown_check: UnknownCheck
    calibration: CalibrationFacts
    precision_coverage: list[CoveragePoint]
    wrong: list[WrongAnswer]
    training: TrainingFacts
    int8: Int8Facts

    def files(self, classes: list[str]) -> dict[str, bytes]:
        return {
            "report.json": self.model_dump_json(indent=2).encode(),
            "report.md": report_markdown(self, classes).encode(),
            "confusion.png": confusion_png(self.metrics.confusion, classes),
        }


# -- report.md ---------------------------------------------------------------------------------


def report_markdown(report: Report, classes: list[str]) -> str:
    sections = [
        _heading(report),
        _on_test_pictures(report),
        _per_class(report, classes),
        _confusion(report, classes),
        _coverage(report),
        _wrong(report),
        _unjudgeable(report),
    ]
    return "\n\n".join("\n".join(lines) for lines in sections) + "\n"


def _heading(report: Report) -> list[str]:
    data = report.data
    return [
        f"# Model {report.version}",
        "",
        f"A {report.kind} model on {report.backbone}, created {report.created.isoformat()}; "
        f"parent {report.parent or 'none'}; {data.train} training, "
        f"{data.calibration} calibration and {data.test} test pictures.",
        "",
        f"**Outcome: {report.outcome}** — {report.gate.reason}",
    ]


def _on_test_pictures(report: Report) -> list[str]:
    cal, auto, metrics = report.calibration, report.test_auto_sorted, report.metrics
    return [
        "## On the test pictures (nothing was tuned on them)",
        "",
        f"- accuracy **{metrics.accuracy:.3f}**, macro-F1 **{metrics.macro_f1:.3f}**",
        f"- temperature {cal.temperature:.3f}; expected calibration error "
        f"{cal.ece_before:.4f} before, {cal.ece_after:.4f} after scaling",
        f"- at the calibrated thresholds (target precision {cal.target_precision}): "
        + _auto_sorted_words(auto),
        f"- the promise: {report.promise}; shown on {cal.promise_from_pictures} "
        f"out-of-sample predictions, of which {cal.expected_auto_share:.1%} pass the "
        f"thresholds, {cal.expected_auto_precision:.1%} of them right",
        *_unknown_lines(report.unknown_check),
        _int8_line(report.int8),
    ]


def _auto_sorted_words(auto: AutoSorted) -> str:
    if not auto.auto_sorted:  # "0.0% at 100.0% precision (0 of 0 right)" said nothing true
        return (
            "**nothing auto-sorted**: every test picture goes to needs_review (the evidence "
            "showed no threshold keeping the target; more labelled pictures will)"
        )
    return (
        f"**{auto.share:.1%}** auto-sorted (95% interval {auto.share_interval[0]:.1%}–"
        f"{auto.share_interval[1]:.1%}) at **{auto.precision:.1%}** precision "
        f"({auto.precision_interval[0]:.1%}–{auto.precision_interval[1]:.1%}, "
        f"{auto.right} of {auto.auto_sorted} right); the rest go to needs_review"
    )


def _int8_line(int8: Int8Facts) -> str:
    if not int8.tried:
        return "- INT8: not tried (`train.int8 = false`)"
    runs = "the daemon runs it" if int8.shipped else "the daemon runs the float model"
    return (
        f"- INT8 ({int8.int8_ms_per_picture:.1f} ms a picture on one core against "
        f"{int8.float_ms_per_picture:.1f}): {runs}; on the test pictures it gives the float "
        f"model's label on {int8.test_agreement:.1%}, files {int8.test_conflicting} into "
        f"another class than the float model would, and "
        + _points_of_auto_sorted(int8.test_coverage_cost or 0.0)
    )


def _points_of_auto_sorted(cost: float) -> str:
    """A coverage cost in words: a negative cost is a gain."""
    if cost < 0:
        return f"auto-sorts {100 * -cost:.1f} points more"
    return f"costs {100 * cost:.1f} points of auto-sorted"


def _unknown_lines(check: UnknownCheck) -> list[str]:
    """The unknown check (issue #33)."""
    if check.threshold is None:
        return ["- no unknown check: too few calibration pictures to place it"]
    lines = [
        f"- unknown check (pictures unlike any class go to review above score "
        f"{check.threshold:.3g}, set for {check.review_rate_setting:.0%} of known "
        f"pictures): {check.test_pictures_sent_to_review:.1%} of the test pictures go by "
        f"it; it {_points_of_auto_sorted(check.coverage_cost)}"
    ]
    if check.held_out_class_pass_share is not None:
        lines.append(
            f"- a class it was never shown (each left out in turn): the check lets "
            f"{check.held_out_class_pass_share:.0%} of its pictures through"
        )
    return lines


def _per_class(report: Report, classes: list[str]) -> list[str]:
    lines = [
        "| class | precision | recall | F1 | support | threshold |",
        "|---|---|---|---|---|---|",
    ]
    for name in classes:
        s = report.metrics.per_class[name]
        threshold = report.calibration.thresholds[name]
        shown = "always review" if threshold > 1.0 else f"{threshold:.3f}"
        scores = (
            f"{s['precision']:.3f} | {s['recall']:.3f} | {s['f1']:.3f}"
            if s["support"] or s.get("predicted", 1)
            else "- | - | - (no test pictures)"
        )
        lines.append(f"| {name} | {scores} | {int(s['support'])} | {shown} |")
    return lines


def _confusion(report: Report, classes: list[str]) -> list[str]:
    lines = [
        "## Confusion matrix (rows: true, columns: predicted)",
        "",
        "![confusion](confusion.png)",
        "",
        "| true \\ predicted | " + " | ".join(classes) + " |",
        "|---" * (len(classes) + 1) + "|",
    ]
    for name, row in zip(classes, report.metrics.confusion, strict=True):
        lines.append(f"| {name} | " + " | ".join(str(v) for v in row) + " |")
    lines += ["", "## Most confused pairs", ""]
    pairs = report.metrics.most_confused
    return lines + ([f"- {t} taken for {p}: {n}" for t, p, n in pairs] or ["- none"])


def _coverage(report: Report) -> list[str]:
    return [
        "## Precision against coverage (one global threshold)",
        "",
        "| threshold | auto-sorted | precision |",
        "|---|---|---|",
        *(
            f"| {r.threshold:.2f} | {r.coverage:.1%} | {r.precision:.1%} |"
            for r in report.precision_coverage
        ),
    ]


def _wrong(report: Report) -> list[str]:
    wrong = [
        f"- `{w.path}`: {w.true} taken for {w.predicted} ({w.confidence:.2f})" for w in report.wrong
    ]
    return ["## Test pictures it got wrong", "", *(wrong or ["- none"])]


def _unjudgeable(report: Report) -> list[str]:
    pictures = report.data.unjudgeable
    what = (
        "left out of training (train.exclude_unjudgeable)"
        if report.data.unjudgeable_left_out
        else "kept (train.exclude_unjudgeable = false)"
    )
    listed = [f"- `{p.path}` ({p.label}, {p.role}): {p.why}" for p in pictures]
    return [
        f"## Pictures too poor to judge: {len(pictures)}, {what}",
        "",
        *(listed or ["- none"]),
    ]


def confusion_png(confusion: list[list[int]], classes: list[str]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")  # no display on a server
    import matplotlib.pyplot as plt

    matrix = np.array(confusion)
    size = max(4.0, 0.6 * len(classes) + 2)
    figure, axes = plt.subplots(figsize=(size, size))
    axes.imshow(matrix, cmap="Blues")
    axes.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    axes.set_yticks(range(len(classes)), classes)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    for (row, column), value in np.ndenumerate(matrix):
        colour = "white" if value > matrix.max() / 2 else "black"
        axes.text(column, row, str(value), ha="center", va="center", color=colour)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    return buffer.getvalue()
