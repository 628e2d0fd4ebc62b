"""`sortbox status`: how the sorter is doing, from the journal, the models and the inbox."""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Any

from sortbox.daemon.answers.feedback import as_it_decides_now, precision_report
from sortbox.daemon.console import SPOT_CHECK, plural
from sortbox.daemon.intake.files import identity_of, walk_files
from sortbox.daemon.running.state_file import read_state, state_file_of
from sortbox.daemon.settings import Settings
from sortbox.daemon.sorting.index import DoneIndex
from sortbox.daemon.sorting.journal import (
    Duplicate,
    Event,
    ModelLoaded,
    Recovered,
    Rejected,
    Review,
    Sorted,
    TrainingRun,
    Undone,
    read_journal,
    utc_now,
)
from sortbox.daemon.sorting.manifest import (
    LOWEST_TARGET_TRIED,
    Manifest,
    ModelError,
    current_version,
    highest_showable_target,
    read_manifest,
    retarget,
)
from sortbox.daemon.sorting.thresholds import promise_words, sorts_nothing

COUNTED = {
    "sorted": Sorted,
    "review": Review,
    "rejected": Rejected,
    "duplicate": Duplicate,
    "recovered": Recovered,
    "undone": Undone,  # `sortbox undo`s in the period; the counts above are decisions made
}
MIN_FILES_FOR_DRIFT = 20


def gather_status(settings: Settings, now: datetime | None = None) -> dict[str, Any]:
    now = now or utc_now()
    events = list(read_journal(settings.journal))
    model, manifest = _model(settings, now, events)
    status: dict[str, Any] = {"model": model}
    status["daemon"] = read_state(state_file_of(settings.library))
    status["last_hour"] = _counts(events, now - timedelta(hours=1))
    status["last_day"] = _counts(events, now - timedelta(days=1))
    status["review_rate"] = _review_rate(
        _decided_by(events, status["model"].get("version"), now - timedelta(days=1)),
        status["model"].get("expected_review_rate"),
        status["model"].get("test_review_rate"),
    )
    status["precision"] = precision_report(events, settings.library, manifest, now)
    status["last_training"] = _last_training(events)
    status["inbox_waiting"] = _waiting(settings, events)
    status["review_backlog"] = _backlog(settings, events, now)
    return status


def _backlog(settings: Settings, events: list[Event], now: datetime) -> dict[str, Any]:
    """Pictures waiting in needs_review, and how long the oldest has waited."""
    from sortbox.daemon.answers.review import Decisions, backlog_age, review_queue

    waiting = review_queue(settings.library, Decisions.of(events), seed="status")
    hours = backlog_age(waiting, now)
    return {"files": len(waiting), "oldest_hours": round(hours, 1) if hours is not None else None}


def _model(
    settings: Settings, now: datetime, events: list[Event]
) -> tuple[dict[str, Any], Manifest | None]:
    """The current model in words, and its manifest as the daemon runs it, retargeted (None
    when there is no usable one)."""
    version = current_version(settings.models_dir)
    if version is None:
        return {"version": None, "problem": "no current model (run `sortbox init`)"}, None
    try:
        published = read_manifest(settings.models_dir / version)
    except ModelError as exc:
        return {"version": version, "problem": str(exc)}, None
    # as the daemon runs it: its thresholds for the target it last journaled (a config.toml
    # edited since applies at its next reload or start), or else config.toml's
    target = target_in_force(events, version) or settings.target_precision
    manifest = retarget(published, target)
    nothing = sorts_nothing(manifest.thresholds)
    highest = highest_showable_target(published, target) if nothing else None
    described = {
        "version": version,
        "kind": manifest.kind,
        "created": manifest.created.isoformat(),
        "age_days": round((now - manifest.created).total_seconds() / 86400, 2),
        "classes": manifest.classes,
        "expected_review_rate": manifest.expected_review_rate,
        "test_review_rate": _test_review_rate(published, target),
        # no threshold could be shown to keep the target: every picture goes to review
        "sorts_nothing": nothing,
        "target_precision": target,
        "configured_target_precision": settings.target_precision,
        # what lowering target_precision would do, where it would do anything
        "highest_showable_target": highest,
        "lower_target_advice": _lower_target_words(highest, target) if nothing else None,
    }
    return described, manifest


def target_in_force(events: list[Event], version: str) -> float | None:
    """The target_precision the daemon last journaled deciding by with this model; None if it
    never said (it has not run this model, or wrote its lines before it said)."""
    for event in reversed(events):
        if isinstance(event, ModelLoaded) and event.model == version:
            return event.target_precision
    return None


def _test_review_rate(published: Manifest, target: float) -> float | None:
    """The share of its test pictures the model sent to review, where it was measured for the
    target in force: `train` says this figure, while the expected rate comes from the
    calibration evidence (for a fast model, the weaker cross-fitted heads': lower)."""
    auto_share = published.metrics.get("test_auto_share")
    if auto_share is None or published.target_precision != target:
        return None
    return 1.0 - float(auto_share)


def _counts(events: list[Event], since: datetime) -> dict[str, int]:
    return {
        name: sum(isinstance(e, kind) and e.ts >= since for e in events)
        for name, kind in COUNTED.items()
    }


def _decided_by(events: list[Event], version: str | None, since: datetime) -> dict[str, int]:
    """Pictures the current model decided since `since`, as it decides now: what its expected
    review rate speaks for. A spot check counts as sorted: it was confident, and went to
    review by lot, not by doubt."""
    if version is None:
        return {"sorted": 0, "review": 0}
    decided = [
        e
        for e in as_it_decides_now(events, version)
        if isinstance(e, Sorted | Review) and e.model == version and e.ts >= since
    ]
    doubted = sum(isinstance(e, Review) and e.reason != SPOT_CHECK for e in decided)
    return {"sorted": len(decided) - doubted, "review": doubted}


def _review_rate(
    counts: dict[str, int], expected: float | None, on_test: float | None = None
) -> dict[str, Any]:
    decided = counts["sorted"] + counts["review"]
    observed = counts["review"] / decided if decided else None
    drift = False
    if observed is not None and expected is not None and decided >= MIN_FILES_FOR_DRIFT:
        # clearly higher: 3 standard errors above what validation predicted, and 5 points
        spread = math.sqrt(max(expected * (1 - expected), 1e-4) / decided)
        drift = observed - expected > max(3 * spread, 0.05)
    return {
        "observed": observed,
        "expected": expected,
        "on_test": on_test,
        "files": decided,
        "drift": drift,
    }


def _last_training(events: list[Event]) -> dict[str, Any] | None:
    runs = [e for e in events if isinstance(e, TrainingRun)]
    if not runs:
        return None
    last = runs[-1]
    published = [e for e in runs if e.outcome == "published"]
    return {
        "ts": last.ts.isoformat(),
        "outcome": last.outcome,
        "model": last.model,
        "reason": last.reason,
        # a skipped or refused run says nothing of when a model last came out of training
        "last_published": (
            {"ts": published[-1].ts.isoformat(), "model": published[-1].model}
            if published and published[-1] is not last
            else None
        ),
    }


def _waiting(settings: Settings, events: list[Event]) -> int:
    if not settings.inbox.is_dir():
        return 0
    index = DoneIndex.from_events(events)
    waiting = 0
    for path in walk_files(settings.inbox, settings.ignore):
        identity = identity_of(path)
        if identity is not None and index.source(path, identity) is None:
            waiting += 1
    return waiting


def render(status: dict[str, Any]) -> str:
    """`sortbox status` for a person: one block per question, top to bottom."""
    lines = [
        *_render_model(status["model"]),
        *_render_counts(status),
        *_render_review_rate(status["review_rate"]),
        *_render_precision(status["precision"]),
        *_render_training(status["last_training"]),
        *_render_waiting(status),
        *_render_daemon(status["daemon"]),
        *_render_recovered(status["last_day"].get("recovered", 0)),
    ]
    return "\n".join(lines)


def _render_model(model: dict[str, Any]) -> list[str]:
    if model.get("problem"):
        return [f"model:          {model.get('version') or '-'}: {model['problem']}"]
    lines = [
        f"model:          {model['version']} ({model['kind']}, "
        f"{model['age_days']:.1f} days old, {plural(len(model['classes']), 'class', 'classes')})"
    ]
    if model["target_precision"] != model["configured_target_precision"]:
        lines.append(
            f"target:         the daemon decides by target_precision {model['target_precision']:g}"
            f"; config.toml now says {model['configured_target_precision']:g}, applied at its "
            "next reload (`systemctl reload sortbox`, or SIGHUP) or start"
        )
    if model["sorts_nothing"]:
        lines.append(
            f"WARNING:        this model sorts nothing by itself: its calibration cannot show "
            f"{model['target_precision']:.0%} precision, so every picture goes to needs_review "
            f"with its suggestion. Label more pictures and run `sortbox train`. "
            + model["lower_target_advice"]
        )
    return lines


def _lower_target_words(highest: float | None, target: float) -> str:
    if highest is None and target <= LOWEST_TARGET_TRIED:
        return "Its evidence shows no threshold even for this low a target"
    if highest is None:
        return (
            "A lower target_precision would not help: its evidence shows none down to "
            f"{LOWEST_TARGET_TRIED:.0%}"
        )
    return (
        f"Or lower target_precision: the highest its evidence can show is {highest:.0%} "
        "(then `systemctl reload sortbox`, or SIGHUP to a daemon run by hand)"
    )


def _render_counts(status: dict[str, Any]) -> list[str]:
    lines = []
    for key, title in (("last_hour", "last hour"), ("last_day", "last day")):
        c = status[key]
        undone = f", {c['undone']} undone" if c["undone"] else ""
        lines.append(
            f"{title + ':':15} {c['sorted']} sorted, {c['review']} to review, "
            f"{c['rejected']} rejected, {plural(c['duplicate'], 'duplicate')}{undone}"
        )
    return lines


def _render_review_rate(rate: dict[str, Any]) -> list[str]:
    if rate["observed"] is None:
        return ["review rate:    this model decided no picture in the last day"]
    expected = (
        f"model expected {rate['expected']:.0%} from its calibration evidence"
        if rate["expected"] is not None
        else "this model made no estimate"
    )
    if rate.get("on_test") is not None:
        expected += f", {rate['on_test']:.0%} on its test pictures"
    lines = [
        f"review rate:    {rate['observed']:.0%} of {rate['files']} this model decided in the "
        f"last day, a spot check counting as sorted ({expected})"
    ]
    if rate["drift"]:
        lines.append(
            "WARNING:        far more pictures go to review than the model expected: they "
            "are not like those it learnt from; review them and run `sortbox train`"
        )
    return lines


def _render_training(training: dict[str, Any] | None) -> list[str]:
    if training is None:
        return ["last training:  never"]
    stages = training["reason"].split(" | ")
    when = _minute_words(training["ts"])
    if len(stages) == 1:
        lines = [f"last training:  {when}: {training['outcome']} ({stages[0]})"]
    else:  # the fast model, then the fine-tune: each stage on its own line
        lines = [f"last training:  {when}: {training['outcome']}"]
        lines += [f"                {stage}" for stage in stages]
    earlier = training.get("last_published")
    if earlier:
        lines.append(f"last published: {_minute_words(earlier['ts'])}: {earlier['model']}")
    return lines


def _minute_words(iso: str) -> str:
    """`2026-12-07 02:22 UTC` for a journal time: to the minute, as a person reads it."""
    return datetime.fromisoformat(iso).strftime("%Y-%m-%d %H:%M UTC")


def _render_waiting(status: dict[str, Any]) -> list[str]:
    backlog = status["review_backlog"]
    hours = backlog["oldest_hours"]
    age = "" if hours is None else f", the oldest for {_hours_words(hours)}"
    return [
        f"inbox waiting:  {plural(status['inbox_waiting'], 'file')}",
        f"to review:      {plural(backlog['files'], 'picture')} in needs_review{age}"
        + (" (`sortbox web` to review them)" if backlog["files"] else ""),
    ]


def _hours_words(hours: float) -> str:
    return "under an hour" if hours < 1 else f"{hours:.0f} h"


def _render_daemon(daemon: dict[str, Any] | None) -> list[str]:
    lines = [f"daemon:         {daemon['state'] if daemon else 'not running'}"]
    loss = (daemon or {}).get("journal_lost")
    if loss:
        what = {"replaced": "deleted or moved away", "truncated": "emptied"}.get(loss["what"])
        lines.append(
            f"WARNING:        the journal was {what} while sortbox ran; "
            f"{loss['recovered']} copies it knew of were recorded again as 'recovered' "
            "(not labels for training). Don't delete, move or empty the journal"
        )
    return lines


def _render_recovered(recovered: int) -> list[str]:
    if not recovered:
        return []
    return [
        f"recovered:      {recovered} library copies had no journal line in the last day "
        "and were recorded from the library (`sortbox undo` can put them back)"
    ]


def _render_precision(report: dict[str, Any]) -> list[str]:
    overall = report["overall"]
    title = (
        f"precision ({report['days']} days; measured on spot checks, the random sample "
        "audit_rate sends to review; pictures moved out of a class are known mistakes and "
        "cap it; auto: auto-sorted pictures still in the library, a deleted one counts for "
        "nothing):"
    )
    if overall["precision"] is None and overall["at_most"] is None:
        untouched = overall["auto_sorted"]
        return [
            f"{title} nothing measured yet"
            + (f" ({untouched} auto-sorted, no spot check filed, none moved)" if untouched else "")
        ]

    def row(name: str, tally: dict[str, Any]) -> str:
        measured = (
            f"{tally['precision']:.1%} [{tally['interval'][0]:.1%}, {tally['interval'][1]:.1%}]"
            if tally["precision"] is not None
            else "-"
        )
        at_most = f"{tally['at_most']:.1%}" if tally["at_most"] is not None else "-"
        promised = f"{tally['promised']:.1%}" if tally["promised"] is not None else "-"
        return (
            f"  {name:14} {tally['auto_sorted']:6} {tally['corrections']:6} {at_most:>8} "
            f"{tally['confirmed']:6} {tally['spot_checks_reviewed']:6} "
            f"{measured:>24} {promised:>9}"
        )

    lines = [
        title,
        f"  {'class':14} {'auto':>6} {'moved':>6} {'at most':>8} {'conf.':>6} {'spot':>6} "
        f"{'measured [95% CI]':>24} {'promised':>9}",
        *(row(name, tally) for name, tally in report["per_class"].items()),
        row("all models", {**overall, "promised": None}),
        row("this model", report["current_model"]),
    ]
    if overall["promised"] is not None:
        lines.append(f"  promised: {promise_words(overall['promised'])}")
    if overall["promised"] is None:
        lines.append(
            "  (this model promises no precision: its thresholds were set by hand, or its "
            "evidence can show none; `sortbox train` on enough labelled pictures makes one "
            "that does)"
        )
    if overall["below_promise"]:
        lines.append(
            "WARNING:        auto-sorted pictures are measurably less often right than the model "
            "promised: review needs_review, correct mistakes, and run `sortbox train`"
        )
    return lines
