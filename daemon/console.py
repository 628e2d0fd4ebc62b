"""What the commands print for a person: counts in words, sizes in MB, times in local time.

The journal and the JSON logs keep their exact values; only what a person reads goes through
here, so every command says "1 file", "3 files" and "12.5 MB" the same way (#32).
"""

from __future__ import annotations

import re
from typing import IO, Any

import structlog


def plural(count: int, noun: str, many: str | None = None) -> str:
    """`plural(1, "file")` is "1 file"; `plural(3, "file")` is "3 files"."""
    return f"{count} {noun if count == 1 else (many or noun + 's')}"


def megabytes(size: float) -> str:
    """A size in bytes as a person reads it: "600 MB", "1.5 GB", "12 kB"."""
    for unit, scale in (("GB", 1024**3), ("MB", 1024**2), ("kB", 1024)):
        if size >= scale:
            value = size / scale
            return (
                f"{value:.0f} {unit}"
                if value >= 10 or value == int(value)
                else f"{value:.1f} {unit}"
            )
    return plural(int(size), "byte")


# -- one readable line per file ------------------------------------------------------------

FILE_EVENTS = ("sorted", "review", "duplicate", "rejected")
# the service's own start and stop lines, which `sort` on a terminal says in its summary
DAEMON_ONLY = ("index_loaded", "stopped")
SPOT_CHECK = "spot check"  # decide.SPOT_CHECK, the journal's word (not imported: no numpy here)


def outcome_line(
    event: str,
    src: str,
    label: str | None = None,
    confidence: float | None = None,
    reason: str | None = None,
    threshold: float | None = None,
    dry_run: bool = False,
) -> str:
    """One file's outcome for a person: `shirt.jpg → clothing (0.83)`, `hat.jpg →
    needs_review: 0.52 < 0.60 for objects`, `notes.txt → rejected: not a picture`. A dry run
    says "would" on every line (#32)."""
    guess = f"{label} ({confidence:.2f})" if label and confidence is not None else ""
    if event == "sorted":
        where = f"would be sorted into {guess}" if dry_run else guess
        if reason:  # a RAW file or sidecar, placed with its picture
            where += f", {reason}"
    elif event == "review":
        where = (
            "would go to " if dry_run else ""
        ) + f"needs_review: {_why_review(reason, label, confidence, threshold)}"
    elif event == "duplicate":
        where = (
            "would be skipped, " if dry_run else ""
        ) + f"duplicate: {reason or 'already in the library'}"
    else:
        where = ("would be rejected" if dry_run else "rejected") + f": {plain_reason(reason)}"
    return f"{src} → {where}"


def not_sure_words(confidence: float, threshold: float, label: str) -> str:
    """`0.52 < 0.60 for shirt`, with as many decimals as it takes for the two to differ as
    printed: a first user read "0.60 < 0.60 for clothing" for a confidence of 0.5989."""
    for places in (2, 3, 4, 6):
        shown, bar = f"{confidence:.{places}f}", f"{threshold:.{places}f}"
        if shown != bar:
            break
    return f"{shown} < {bar} for {label}"


def _why_review(
    reason: str | None, label: str | None, confidence: float | None, threshold: float | None
) -> str:
    if reason == SPOT_CHECK:
        return f"spot check, {label} ({confidence:.2f}) was sure enough to sort"
    if reason and (" < " in reason or reason.startswith("too little")):
        return reason  # not sure enough: the journal says it with the numbers
    if reason:
        return f"{reason}; nearest class {label} ({confidence:.2f})"
    if confidence is None:
        return "the model was not sure"
    if threshold is not None and threshold > 1.0:
        return f"too little calibration evidence to sort {label} ({confidence:.2f})"
    if threshold is not None:
        return not_sure_words(confidence, threshold, label)
    return f"{label} {confidence:.2f} is below its threshold"


# the decoders' messages (Pillow's and ours) as a person reads them; the journal keeps the
# originals (#32)
PLAIN_PROBLEMS = (
    (
        re.compile(r"image file is truncated.*|Truncated File Read"),
        "the file is cut short (an incomplete copy?)",
    ),
    (re.compile(r"cannot identify image file.*"), "not a picture sortbox can read"),
    (
        re.compile(r"cannot decode: (?:OSError|ValueError|SyntaxError|UnidentifiedImageError): "),
        "cannot decode: ",
    ),
)


def plain_reason(reason: str | None) -> str:
    if not reason:
        return "unknown problem"
    for pattern, words in PLAIN_PROBLEMS:
        reason = pattern.sub(words, reason)
    # sizes in bytes as MB: "629145600 bytes, the limit is 536870912" (#32)
    reason = re.sub(r"\b(\d{4,}) bytes", lambda m: megabytes(int(m[1])), reason)
    return re.sub(r"(the limit is )(\d{4,})\b", lambda m: m[1] + megabytes(int(m[2])), reason)


# -- the log on a terminal ---------------------------------------------------------------------


def drop_what_the_command_prints(
    logger: object, method: str, event_dict: dict[str, Any]
) -> dict[str, Any]:
    """A structlog processor for a command that prints each file's line and its own summary
    (`sort`): their log events would say it all twice, on a terminal and in JSON alike (a
    first user's `sort >out 2>err` found every file line again in err, as JSON)."""
    event = event_dict.get("event")
    if (event in FILE_EVENTS and "src" in event_dict) or event in DAEMON_ONLY:
        raise structlog.DropEvent
    if event == "rejected" and "path" in event_dict:
        raise structlog.DropEvent
    return event_dict


class TerminalRenderer:
    """structlog's last processor for a person at a terminal: local time, one line per file
    (each outcome once), no empty fields. journald gets the JSON lines unchanged."""

    def __init__(self, dry_run: bool = False) -> None:
        self.dry_run = dry_run

    def __call__(self, logger: object, method: str, event_dict: dict[str, Any]) -> str:
        event = str(event_dict.pop("event", ""))
        when = event_dict.pop("timestamp", "")
        level = event_dict.pop("level", method)
        trace = event_dict.pop("exception", None)
        if event in FILE_EVENTS and "src" in event_dict:
            text = outcome_line(
                event,
                event_dict["src"],
                event_dict.get("label"),
                event_dict.get("confidence"),
                event_dict.get("reason"),
                dry_run=self.dry_run,
            )
        elif event == "rejected" and "path" in event_dict:
            raise structlog.DropEvent  # the same outcome is logged with its file line
        elif event == "model_switched" and event_dict.get("old") == event_dict.get("new"):
            text = f"model {event_dict.get('new')} reloaded, unchanged"
        else:
            fields = " ".join(f"{k}={v}" for k, v in event_dict.items() if v is not None)
            text = f"{event.replace('_', ' ')}{': ' if fields else ''}{fields}"
        if level in ("warning", "error", "critical"):
            text = f"{level}: {text}"
        line = f"{when} {text}" if when else text
        return f"{line}\n{trace}" if trace else line


class BarFriendlyLogger:
    """Writes log lines above a progress bar (tqdm.write), so the bar stays at the bottom of
    the terminal instead of being buried under them (#32)."""

    def __init__(self, file: IO[str]) -> None:
        self._file = file

    def msg(self, message: str) -> None:
        from tqdm import tqdm

        tqdm.write(message, file=self._file)

    log = debug = info = warn = warning = err = error = critical = exception = fatal = msg
