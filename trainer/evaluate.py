"""Held-out metrics and the publishing gate (the report they go into: trainer/report.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Evaluation:
    accuracy: float
    macro_f1: float
    per_class: dict[str, dict[str, float]]
    confusion: list[list[int]]  # rows: true class, columns: predicted class
    most_confused: list[tuple[str, str, int]]


@dataclass(frozen=True)
class Standing:
    """A model's results on the test pictures, which a fine-tuned model must improve on."""

    macro_f1: float
    auto_share: float  # the test pictures it auto-sorts under its own promise


# A fine-tuned model may auto-sort at most this many points fewer test pictures than the fast
# model it would replace: a better macro-F1 that the user only meets in needs_review is not
# worth more review. A fine-tuned run on clothing-dataset-small whose calibration could promise
# nothing (threshold above 1) replaced a fast model that auto-sorted 66.7 % (#33).
MAX_AUTO_SORT_LOSS = 0.05


def falls_short_of(
    candidate: Standing, fast: Standing, max_auto_sort_loss: float = MAX_AUTO_SORT_LOSS
) -> list[str]:
    """Why `candidate` does not improve on the fast model (empty: it does). It must be more
    accurate, and must not send much more to review to be so."""
    problems = []
    if candidate.macro_f1 <= fast.macro_f1:
        problems.append(f"not better than the fast model's macro-F1 {fast.macro_f1:.4f}")
    if candidate.auto_share < fast.auto_share - max_auto_sort_loss:
        problems.append(
            f"auto-sorts {candidate.auto_share:.1%} of the test pictures against the fast "
            f"model's {fast.auto_share:.1%} (at most {100 * max_auto_sort_loss:.0f} points fewer)"
        )
    return problems


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
        scores[name] = {
            "precision": precision,
            "recall": recall,
            "f1": f1,
            "support": tp + fn,
            "predicted": tp + fp,
        }
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
        macro_f1=macro_average(per_class),
        per_class=per_class,
        confusion=confusion.tolist(),
        most_confused=sorted(pairs, key=lambda x: -x[2])[:10],
    )


def macro_average(per_class: dict[str, dict[str, float]]) -> float:
    """The mean F1 over the classes the test pictures hold or the model chose for them: a
    class with no test picture that the model never chose has no F1 (it is not a 0 that
    drags the mean down; a user's small set left two classes without test pictures)."""
    scores = [s["f1"] for s in per_class.values() if s["support"] or s["predicted"]]
    return float(np.mean(scores)) if scores else 0.0


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
