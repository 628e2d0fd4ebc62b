"""`sortbox sort PATH...`: the daemon's pipeline over existing files, once, with a progress bar."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import islice
from pathlib import Path
from typing import TypeVar

from sortbox.daemon.classify import load_current
from sortbox.daemon.decode import lower_thread_priority, read_and_prepare
from sortbox.daemon.index import DoneIndex
from sortbox.daemon.intake import Arrival, identity_of, walk_files
from sortbox.daemon.journal import Journal, Placement
from sortbox.daemon.settings import Settings, UsageError
from sortbox.daemon.sorter import BatchResult, Sorter
from tqdm import tqdm

T = TypeVar("T")


def collect(paths: list[Path], settings: Settings) -> list[Arrival]:
    arrivals = []
    for given in paths:
        path = given.absolute()
        if path.is_relative_to(settings.library):
            raise UsageError(f"{given} is inside the library; sortbox sorts into it, not from it")
        if path.is_dir() and not path.is_symlink():
            files: Iterator[Path] = walk_files(path, settings.ignore)
            root = path
        elif path.exists() or path.is_symlink():
            files, root = iter([path]), path.parent
        else:
            raise UsageError(f"{given}: no such file or folder")
        for file in files:
            identity = identity_of(file)
            if identity is not None:
                arrivals.append(Arrival(file, root, identity))
    return arrivals


def decode_ahead(
    pool: ThreadPoolExecutor, decode: Callable[[Arrival], T], items: Iterable[Arrival], window: int
) -> Iterator[T]:
    """Like pool.map, but only `window` results in memory at once, in input order."""
    pending: deque[Future[T]] = deque()
    for item in items:
        pending.append(pool.submit(decode, item))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def sort_paths(
    settings: Settings, paths: list[Path], dry_run: bool, progress: bool = True
) -> list[Placement]:
    classifier = load_current(
        settings.models_dir,
        settings.inference_threads,
        settings.inference_run_size,
        settings.target_precision,
    )
    index = DoneIndex.load(settings.journal, settings.library)
    arrivals = [a for a in collect(paths, settings) if index.source(a.path, a.identity) is None]
    journal = None if dry_run else Journal(settings.journal)
    # on_success = "delete" is for the inbox: files given to `sort` are the user's own, kept
    sorter = Sorter(settings.library, index, journal, on_success="keep")
    spec = classifier.manifest.preprocessing
    events: list[Placement] = []
    try:
        with (
            ThreadPoolExecutor(settings.decode_workers, initializer=lower_thread_priority) as pool,
            ThreadPoolExecutor(1) as placer,  # places batch N while batch N+1 is classified
            tqdm(total=len(arrivals), unit="img", disable=not progress) as bar,
        ):
            decoded = decode_ahead(
                pool,
                lambda a: read_and_prepare(a, spec, settings.max_pixels, settings.max_file_bytes),
                arrivals,
                window=settings.batch_size + settings.decode_workers,
            )
            placing: Future[BatchResult] | None = None
            while batch := list(islice(decoded, settings.batch_size)):
                classified = sorter.classify(batch, classifier)
                if placing is not None:
                    events += placing.result().events
                placing = placer.submit(sorter.place, classified)
                bar.update(len(batch))
            if placing is not None:
                events += placing.result().events
    finally:
        if journal is not None:
            journal.close()
    return events
