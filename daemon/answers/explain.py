"""`sortbox explain FILE...`: what the daemon would decide for each file, and why. Touches nothing.

It is a dry run of the daemon's own stages with the current model (`load_model`): the files
are grouped as the daemon groups them (`group_all`: a RAW file or sidecar travels with its
picture), read and decoded (`read_group`), run through the model (`model_outputs`) and decided
(`decide_batch`: the thresholds for `target_precision` and the same spot-check choice), so its
answer is the daemon's answer. Only placing is left out: nothing is copied or journaled.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sortbox.daemon.intake.files import Arrival, identity_of
from sortbox.daemon.intake.group import group_all
from sortbox.daemon.settings import Settings
from sortbox.daemon.sorting.classify import Classifier, load_model
from sortbox.daemon.sorting.decide import Decision
from sortbox.daemon.sorting.index import DoneIndex
from sortbox.daemon.sorting.journal import read_journal
from sortbox.daemon.sorting.read import Decoded, read_group
from sortbox.daemon.sorting.stages import decide_batch, model_outputs

Answer = dict[str, Any]


def explain_files(paths: list[Path], settings: Settings) -> list[Answer]:
    classifier = load_model(settings)
    index = DoneIndex.from_events(read_journal(settings.journal))
    return explain_paths(paths, classifier, index, settings)


def explain_one(path: Path, classifier: Classifier, index: DoneIndex, settings: Settings) -> Answer:
    return explain_paths([path], classifier, index, settings)[0]


def explain_paths(
    paths: list[Path], classifier: Classifier, index: DoneIndex, settings: Settings
) -> list[Answer]:
    """One answer per path, in the order given. Files given together are grouped as the
    daemon groups the files of its inbox."""
    explainer = _Explainer(classifier, index, settings)
    answers: dict[Path, Answer] = {}
    arrivals = []
    for path in dict.fromkeys(path.absolute() for path in paths):
        identity = identity_of(path)
        if identity is None:
            answers[path] = explainer.common(path, decision="no such file (or a folder)")
        else:
            arrivals.append(Arrival(path, path.parent, identity))
    groups = group_all(arrivals)
    # a batch at a time, as the daemon runs the model: a folder of thousands fits in memory
    for start in range(0, len(groups), settings.batch_size):
        for path, answer in explainer.batch(groups[start : start + settings.batch_size]):
            answers[path] = answer
    return [{**answers[path.absolute()], "file": str(path)} for path in paths]


class _Explainer:
    def __init__(self, classifier: Classifier, index: DoneIndex, settings: Settings) -> None:
        self.classifier = classifier
        self.index = index
        self.settings = settings

    def batch(self, groups: list[Arrival]) -> list[tuple[Path, Answer]]:
        """The daemon's stages up to the decision, for each group and each of its members."""
        s, manifest = self.settings, self.classifier.manifest
        items = [
            read_group(g, manifest.preprocessing, s.max_pixels, s.max_file_bytes) for g in groups
        ]
        rows = model_outputs(items, self.classifier)
        classified = decide_batch(items, rows, manifest, s.audit_rate)
        answers = []
        for item, decision in zip(items, classified.decisions, strict=True):
            answers.append((item.arrival.path, self.picture(item, decision)))
            if item.problem is not None:
                # a picture not classified (rejected): its RAW file and sidecars come alone
                answers += self.batch([c.arrival for c in item.companions])
            else:  # they go where it goes (or wait with it, when it changed while read)
                answers += [
                    (c.arrival.path, self.companion(c, item, decision)) for c in item.companions
                ]
        return answers

    def picture(self, item: Decoded, decision: Decision | None) -> Answer:
        answer = self.common(item.arrival.path, item)
        if item.problem is not None:
            return {**answer, "decision": f"rejected: {item.problem}", "folder": "rejected"}
        if decision is None:  # changed while it was read: the daemon waits for it to settle
            return {**answer, "decision": "changing while read: explain it again", "folder": None}
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

    def companion(self, item: Decoded, picture: Decoded, decision: Decision | None) -> Answer:
        """A RAW file or sidecar goes where its picture goes, with its picture's decision
        (stages._place_companions)."""
        if decision is None:
            return self.picture(item, None)
        return {
            **self.common(item.arrival.path, item),
            "decision": f"with {picture.arrival.path.name}: {decision.describe()}",
            "folder": decision.folder,
            "companion_of": str(picture.arrival.path),
            "label": decision.label,
            "confidence": round(decision.confidence, 6),
        }

    def common(self, path: Path, item: Decoded | None = None, **fields: Any) -> Answer:
        """What every answer says: the file, the model, its content's hash, and whether the
        library holds that content already (the daemon would journal it as a duplicate)."""
        answer: Answer = {"file": str(path), "model": self.classifier.version, **fields}
        if item is None:
            return {**answer, "folder": None}
        answer["sha256"] = item.sha256
        copy = self.index.copy_of(item.sha256) if item.sha256 else None
        if copy is not None and (self.settings.library / copy).is_file():
            answer["library_has"] = copy
        return answer


def render(answer: Answer) -> str:
    lines = [f"{answer['file']}: {answer['decision']}"]
    if "top3" in answer:
        top = "  ".join(f"{t['class']} {t['probability']:.2f}" for t in answer["top3"])
        lines.append(f"  top 3: {top}   (model {answer['model']})")
    if answer.get("unknown") is not None:
        limit = answer.get("unknown_threshold")
        lines.append(
            f"  how unlike every class: {answer['unknown']:.3g} "
            + (
                f"(sent to review as unlike any class above {limit:.3g})"
                if limit is not None
                else "(no limit: this model's check is off)"
            )
        )
    if answer.get("quality"):
        quality = answer["quality"]
        lines.append(
            f"  sharpness {quality['sharpness']:.0f}, brightness {quality['brightness']:.0f} "
            f"of 255, contrast {quality['contrast']:.1f}"
        )
    if "library_has" in answer:
        lines.append(f"  the library already holds this file: {answer['library_has']}")
    return "\n".join(lines)
