"""Held-out metrics, the publishing gate, and the per-version report (report.md / report.json /
confusion.png)."""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Evaluation:
    accuracy: float
    macro_f1: float
    per_class: dict[str, dict[str, float]]
    confusion: list[list[int]]  # rows: true class, columns: predicted class
    most_confused: list[tuple[str, str, int]]


def f1_scores(
    true: list[str], predicted: list[str], classes: list[str]
) -> dict[str, dict[str, float]]:
    scores = {}
    for name in classes:
        tp = sum(t == name and p == name for t, p in zip(true, predicted, strict=True))
        fp = sum(t != name and p == name for t, p in zip(true, predicted, strict=True))
        fn = sum(t == name and p != name for t, p in zip(true, predicted, strict=True))
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        scores[name] = {"precision": precision, "recall": recall, "f1": f1, "support": tp + fn}
    return scores


def evaluate(probabilities: np.ndarray, labels: np.ndarray, classes: list[str]) -> Evaluation:
    predicted = probabilities.argmax(axis=1)
    true_names = [classes[i] for i in labels]
    predicted_names = [classes[i] for i in predicted]
    per_class = f1_scores(true_names, predicted_names, classes)
    confusion = np.zeros((len(classes), len(classes)), dtype=int)
    for t, p in zip(labels, predicted, strict=True):
        confusion[t, p] += 1
    pairs = [
        (classes[t], classes[p], int(confusion[t, p]))
        for t in range(len(classes))
        for p in range(len(classes))
        if t != p and confusion[t, p]
    ]
    return Evaluation(
        accuracy=float((predicted == labels).mean()) if len(labels) else 0.0,
        macro_f1=float(np.mean([s["f1"] for s in per_class.values()])) if classes else 0.0,
        per_class=per_class,
        confusion=confusion.tolist(),
        most_confused=sorted(pairs, key=lambda x: -x[2])[:10],
    )


@dataclass(frozen=True)
class GateResult:
    passed: bool
    reason: str
    common_classes: list[str]
    candidate_macro_f1: float | None
    current_macro_f1: float | None
    broken_classes: list[str] = field(default_factory=list)


def gate(
    true: list[str],
    candidate: list[str],
    current: list[str] | None,
    current_classes: list[str],
    max_drop: float,
    max_class_recall_drop: float = 1.0,
) -> GateResult:
    """Publish only if, on the same test pictures and the classes both models know,
    - the candidate's macro-F1 is at most `max_drop` below the current model's, and
    - no class loses more than `max_class_recall_drop` of its recall beyond what chance
      explains: a better average must not hide one class the candidate broke."""
    if current is None:
        return GateResult(True, "no current model", [], None, None)
    common = sorted(set(current_classes) & set(true))
    if not common:
        return GateResult(True, "the current model knows none of these classes", [], None, None)
    keep = [i for i, t in enumerate(true) if t in common]

    def macro_f1(predicted: list[str]) -> float:
        scores = f1_scores([true[i] for i in keep], [predicted[i] for i in keep], common)
        return float(np.mean([s["f1"] for s in scores.values()]))

    new, old = macro_f1(candidate), macro_f1(current)
    broken = [
        name
        for name in common
        if recall_broken(
            [(current[i] == name, candidate[i] == name) for i in keep if true[i] == name],
            max_class_recall_drop,
        )
    ]
    passed = new >= old - max_drop and not broken
    verdict = "not worse" if passed else "worse"
    reason = (
        f"macro-F1 on {len(common)} shared classes: "
        f"candidate {new:.4f}, current {old:.4f} ({verdict})"
    )
    if broken:
        reason += f"; recall dropped beyond noise for {', '.join(broken)}"
    return GateResult(passed, reason, common, new, old, broken)


def recall_broken(pairs: list[tuple[bool, bool]], max_drop: float) -> bool:
    """`pairs`: for each test picture of one class, (current right, candidate right).

    Broken: recall falls by more than `max_drop`, and the pictures only the current model
    gets right outnumber those only the candidate gets right by more than two standard
    deviations of a fair coin (a one-sided sign test at about 2.5%)."""
    if not pairs:
        return False
    lost = sum(old and not new for old, new in pairs)
    gained = sum(new and not old for old, new in pairs)
    drop = (lost - gained) / len(pairs)
    return drop > max_drop and lost - gained > 2 * math.sqrt(lost + gained)


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


def report_files(
    report: dict[str, Any], classes: list[str], evaluation: Evaluation
) -> dict[str, bytes]:
    return {
        "report.json": json.dumps(report, indent=2, default=str).encode(),
        "report.md": report_markdown(report, classes, evaluation).encode(),
        "confusion.png": confusion_png(evaluation.confusion, classes),
    }


def report_markdown(report: dict[str, Any], classes: list[str], evaluation: Evaluation) -> str:
    cal = report["calibration"]
    auto = report["test_auto_sorted"]
    lines = [
        f"# Model {report['version']}",
        "",
        f"A {report['kind']} model on {report['backbone']}, created {report['created']}; "
        f"parent {report.get('parent') or 'none'}; {report['data']['train']} training, "
        f"{report['data']['calibration']} calibration and {report['data']['test']} test pictures.",
        "",
        f"**Outcome: {report['outcome']}** — {report['gate']['reason']}",
        "",
        "## On the test pictures (nothing was tuned on them)",
        "",
        f"- accuracy **{evaluation.accuracy:.3f}**, macro-F1 **{evaluation.macro_f1:.3f}**",
        f"- temperature {cal['temperature']:.3f}; expected calibration error "
        f"{cal['ece_before']:.4f} before, {cal['ece_after']:.4f} after scaling",
        f"- at the calibrated thresholds (target precision {cal['target_precision']}): "
        f"**{auto['share']:.1%}** auto-sorted (95% interval {auto['share_interval'][0]:.1%}–"
        f"{auto['share_interval'][1]:.1%}) at **{auto['precision']:.1%}** precision "
        f"({auto['precision_interval'][0]:.1%}–{auto['precision_interval'][1]:.1%}, "
        f"{auto['right']} of {auto['auto_sorted']} right); the rest go to needs_review",
        f"- the promise: {report.get('promise', '?')}; shown on "
        f"{cal.get('promise_from_pictures', '?')} out-of-sample predictions, of which "
        f"{cal['expected_auto_share']:.1%} pass the thresholds, "
        f"{cal['expected_auto_precision']:.1%} of them right",
        *unknown_lines(report.get("unknown_check")),
        "",
        "| class | precision | recall | F1 | support | threshold |",
        "|---|---|---|---|---|---|",
    ]
    for name in classes:
        s = evaluation.per_class[name]
        threshold = cal["thresholds"][name]
        shown = "always review" if threshold > 1.0 else f"{threshold:.3f}"
        lines.append(
            f"| {name} | {s['precision']:.3f} | {s['recall']:.3f} | {s['f1']:.3f} | "
            f"{int(s['support'])} | {shown} |"
        )
    lines += [
        "",
        "## Confusion matrix (rows: true, columns: predicted)",
        "",
        "![confusion](confusion.png)",
        "",
    ]
    lines.append("| true \\ predicted | " + " | ".join(classes) + " |")
    lines.append("|---" * (len(classes) + 1) + "|")
    for name, row in zip(classes, evaluation.confusion, strict=True):
        lines.append(f"| {name} | " + " | ".join(str(v) for v in row) + " |")
    lines += ["", "## Most confused pairs", ""]
    lines += [f"- {t} taken for {p}: {n}" for t, p, n in evaluation.most_confused] or ["- none"]
    lines += [
        "",
        "## Precision against coverage (one global threshold)",
        "",
        "| threshold | auto-sorted | precision |",
        "|---|---|---|",
    ]
    lines += [
        f"| {r['threshold']:.2f} | {r['coverage']:.1%} | {r['precision']:.1%} |"
        for r in report["precision_coverage"]
    ]
    lines += ["", "## Test pictures it got wrong", ""]
    lines += [
        f"- `{w['path']}`: {w['true']} taken for {w['predicted']} ({w['confidence']:.2f})"
        for w in report["wrong"]
    ] or ["- none"]
    return "\n".join(lines) + "\n"


def unknown_lines(check: dict[str, Any] | None) -> list[str]:
    """The unknown check (issue #33) in report.md."""
    if not check or check.get("threshold") is None:
        return ["- no unknown check: too few calibration pictures to place it"] if check else []
    return [
        f"- unknown check (pictures unlike any class go to review above score "
        f"{check['threshold']:.3g}, set for {check['review_rate_setting']:.0%} of known "
        f"pictures): {check['test_pictures_sent_to_review']:.1%} of the test pictures go by "
        f"it; it costs {100 * check['coverage_cost']:.1f} points of auto-sorted",
        *(
            [
                f"- a class it was never shown (each left out in turn): the check lets "
                f"{check['held_out_class_pass_share']:.0%} of its pictures through"
            ]
            if check.get("held_out_class_pass_share") is not None
            else []
        ),
    ]
