"""Library copies whose decision line is missing from the journal, found and recorded again.

The journal is the record everything else trusts: the trainer takes a picture in a class
folder with no journal line for a label the user gave, `undo` and `status` see only what it
holds. A journal deleted, emptied or rotated away while the daemon runs (a logrotate with
`create`, a tidy-up of `state/`, `: > journal.jsonl`) would turn the daemon's own guesses into
labels (issue 34). Every copy sortbox makes carries its content's hash in its name, so the
library itself says which files are sortbox's: each one with no line gets a `recovered` line
saying what is known (its folder, its content) and that its decision was lost.

Two moments find them: at start-up, the library files with a sortbox name the journal does
not know (`DoneIndex` orphans: a lost journal, or a crash between a copy and its line), and
while running, when the journal notices it was replaced or truncated: every content the
daemon still knows that the journal at its path no longer records.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from sortbox.daemon.layout import REJECTED_FOLDER, REVIEW_FOLDER
from sortbox.daemon.sorting.copies import LIBRARY_NAME, same_content, sha256_of
from sortbox.daemon.sorting.index import DoneIndex
from sortbox.daemon.sorting.journal import Recovered, Rejected, Review, Sorted, read_journal

REASON = (
    "its decision is missing from the journal (the journal was deleted, emptied or moved "
    "away, or sortbox stopped between copying and journaling); recorded from the library: "
    "its folder and the content its name promises"
)


def recovered(library: Path, file: Path, sha256: str, inbox: Path) -> Recovered:
    """The `recovered` line of a library file. Its original is not known: `undo` puts the copy
    back into the inbox under its library name."""
    dest = file.relative_to(library).as_posix()
    folder = dest.split("/", 1)[0]
    return Recovered(
        src=file.name,
        root=str(inbox),
        sha256=sha256,
        size=None,
        dest=dest,
        label=None if folder in (REVIEW_FOLDER, REJECTED_FOLDER) else folder,
        reason=REASON,
    )


def unrecorded_at_start(index: DoneIndex, library: Path, inbox: Path) -> list[Recovered]:
    """Library files with a sortbox name the journal does not know, whose content is what
    their name promises (others are the user's files, with a name that only looks like ours)."""
    found = []
    for file in index.orphans():
        match = LIBRARY_NAME.match(file.name)
        try:
            digest = sha256_of(file)  # never through a link (open_input)
        except OSError:
            continue
        if match and digest.startswith(match["hash"]):
            found.append(recovered(library, file, digest, inbox))
    return found


def unrecorded_after_loss(
    index: DoneIndex, library: Path, journal: Path, inbox: Path
) -> list[Recovered]:
    """Contents the daemon knows it placed that the journal at its path no longer records,
    still in the library where they were placed."""
    recorded = _contents_recorded(read_journal(journal))
    found = []
    for digest, dest in index.entries()[1].items():
        sha256 = digest.hex()
        file = library / dest
        if sha256 not in recorded and same_content(file, sha256):
            found.append(recovered(library, file, sha256, inbox))
    return found


def _contents_recorded(events: Iterable[object]) -> set[str]:
    return {
        event.sha256
        for event in events
        if isinstance(event, Sorted | Review | Rejected | Recovered) and event.sha256
    }
