"""`sortbox explain FILE...`: what the daemon would decide for each file, and why. Touches nothing.

It runs the daemon's own stages on each file (read and decode, classify, decide) with the
current model, the thresholds for `target_precision` and the same spot-check choice, so its
answer is the daemon's answer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sortbox.daemon.intake.files import Arrival, identity_of
from sortbox.daemon.settings import Settings
from sortbox.daemon.sorting.classify import Classifier, load_model
from sortbox.daemon.sorting.decide import decide
from sortbox.daemon.sorting.index import DoneIndex
from sortbox.daemon.sorting.journal import read_journal
from sortbox.daemon.sorting.read import read_and_prepare


def explain_files(paths: list[Path], settings: Settings) -> list[dict[str, Any]]:
    classifier = load_model(settings)
    index = DoneIndex.from_events(read_journal(settings.journal))
    return [explain_one(path, classifier, index, settings) for path in paths]


def explain_one(
    path: Path, classifier: Classifier, index: DoneIndex, settings: Settings
) -> dict[str, Any]:
    answer: dict[str, Any] = {"file": str(path), "model": classifier.version}
    path = path.absolute()
    identity = identity_of(path)
    if identity is None:
        return {**answer, "decision": "no such file (or a folder)", "folder": None}
    item = read_and_prepare(
        Arrival(path, path.parent, identity),
        classifier.manifest.preprocessing,
        settings.max_pixels,
        settings.max_file_bytes,
    )
    answer["sha256"] = item.sha256
    copy = index.copy_of(item.sha256) if item.sha256 else None
    if copy is not None and (settings.library / copy).is_file():
        answer["library_has"] = copy  # the daemon would journal this file as a duplicate
    if item.problem is not None:
        return {**answer, "decision": f"rejected: {item.problem}", "folder": "rejected"}
    assert item.pixels is not None
    logits = classifier.logits(item.pixels[None])[0]
    decision = decide(logits, classifier.manifest, item.sha256, settings.audit_rate, item.quality)
    return {
        **answer,
        "decision": decision.describe(),
        "folder": decision.folder,
        "label": decision.label,
        "confidence": round(decision.confidence, 6),
        "threshold": decision.threshold,
        "spot_check": decision.spot_check,
        "unknown": decision.unknown,
        "unknown_threshold": decision.unknown_threshold,
        "quality": decision.quality.as_journal() if decision.quality else None,
        "top3": [{"class": name, "probability": p} for name, p in decision.top3],
    }


def render(answer: dict[str, Any]) -> str:
    lines = [f"{answer['file']}: {answer['decision']}"]
    if "top3" in answer:
        top = "  ".join(f"{t['class']} {t['probability']:.2f}" for t in answer["top3"])
        lines.append(f"  top 3: {top}   (model {answer['model']})")
    if answer.get("unknown") is not None:
        lines.append(
            f"  unlike any class: score {answer['unknown']:.3g} "
            f"(review above {answer['unknown_threshold']:.3g})"
        )
    if answer.get("quality"):
        quality = answer["quality"]
        lines.append(
            f"  sharpness {quality['sharpness']:.0f}, brightness {quality['brightness']:.0f} "
            f"of 255, contrast {quality['contrast']:.1f}"
        )
    if "library_has" in answer:
        lines.append(f"  the library already holds this picture: {answer['library_has']}")
    return "\n".join(lines)
