"""`sortbox sort --engine ray`: backfill an archive on a Ray cluster, with the same results and
the same exactly-once journal as the local pipeline.

Split of the work (chosen so that exactly-once needs nothing new):

    driver ─ load the model, open the library, pass over what is done, group pairs
      │        (load_model, open_library, stages.passed_over, group_all: the daemon's own)
      ▼
    Ray Data map_batches on an actor pool ─ read, hash, decode, run the model
      │        (read_group and stages.model_outputs; each actor loads the driver's model
      │        version once and checks its sha256)
      ▼
    driver ─ decide, place, journal: `decide_batch` and `place_batch` under the library lock,
             as the daemon does

This module is only the Ray plumbing around those stage functions: it decides, places and
skips nothing on its own.

Workers return per-file results: the file's identity and sha256 and the model's logits, or the
reason it cannot be used. Only the driver writes: placing from the workers would need the same
lock on a shared filesystem for every file, while copying is a small share of the work (reading
and decoding dominate, and they are spread). A daemon running beside a backfill, or a second
backfill, takes the same lock, so a content lands once. A run that is interrupted (Ctrl-C, the
driver killed, a node lost) leaves only whole journaled batches; running it again skips them.

The inbox or archive, the library and `models_dir` must be at the same paths on every node
(one machine, or a shared filesystem).
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import structlog
from sortbox.daemon.intake.files import Arrival
from sortbox.daemon.intake.group import group_all
from sortbox.daemon.settings import Settings
from sortbox.daemon.sorting.classify import CPU_ONLY, load_classifier, load_model
from sortbox.daemon.sorting.journal import Placement
from sortbox.daemon.sorting.library import Library, open_library
from sortbox.daemon.sorting.manifest import Manifest
from sortbox.daemon.sorting.read import Decoded, read_group
from sortbox.daemon.sorting.stages import decide_batch, model_outputs, passed_over, place_batch

log = structlog.get_logger(__name__)

CLUSTER_EXTRA_MISSING = "--engine ray needs the cluster extra: pip install -e '.[cluster]'"
OnBatch = Callable[[list[Placement], int], None]


class ClusterExtraMissing(Exception):
    pass


@dataclass
class Backfill:
    """What a run did, for the closing figures."""

    events: list[Placement] = field(default_factory=list)
    skipped_done: int = 0
    unfinished: list[Path] = field(default_factory=list)  # to sort again (changed, disk full)
    per_worker: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    workers: int = 0


class ClassifyFiles:
    """The Ray Data actor: loads the model once, then reads, decodes and classifies batches.
    Runs on the workers; uses the CPUs Ray gave it."""

    def __init__(self, version_dir: str, max_pixels: int, max_bytes: int) -> None:
        import onnxruntime
        import ray

        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
        # onnxruntime-gpu installed on a GPU node in place of onnxruntime: use its CUDA provider
        cuda = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
        providers = ("CUDAExecutionProvider", *CPU_ONLY) if cuda else CPU_ONLY
        # load_classifier checks the ONNX file's sha256 against the manifest
        self.classifier = load_classifier(
            Path(version_dir), threads=max(1, int(cpus)), providers=providers
        )
        self.max_pixels, self.max_bytes = max_pixels, max_bytes
        self.worker = f"{socket.gethostname()}:{os.getpid()}"

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list[Any]]:
        spec = self.classifier.manifest.preprocessing
        arrivals = [pickle.loads(blob) for blob in batch["arrival"]]
        items = [read_group(a, spec, self.max_pixels, self.max_bytes) for a in arrivals]
        logits = model_outputs(items, self.classifier)
        return {
            # pixels and bytes stay here: the driver copies from the file and checks its hash
            "item": [pickle.dumps(_slim(item)) for item in items],
            "logits": [pickle.dumps(row) for row in logits],
            "worker": [self.worker] * len(items),
        }


def _slim(item: Decoded) -> Decoded:
    companions = tuple(_slim(c) for c in item.companions)
    return dataclasses.replace(item, pixels=None, content=None, companions=companions)


def sort_on_ray(
    settings: Settings,
    inputs: list[Arrival],
    address: str | None,
    workers: int | None,
    dry_run: bool = False,
    on_batch: OnBatch | None = None,
) -> Backfill:
    try:
        import ray
        import ray.data
    except ImportError:
        raise ClusterExtraMissing(CLUSTER_EXTRA_MISSING) from None
    # the driver decides with the current model as the daemon loads it (checked, retargeted);
    # the workers load that same version, even if `current` moves on during the run
    manifest = load_model(settings).manifest
    # as the daemon and `sort` open it: a driver killed mid-copy leaves nothing behind
    library = open_library(settings, dry_run=dry_run)
    outcome = Backfill()
    groups = _to_sort(inputs, library, outcome, on_batch)
    ray.init(address=address, log_to_driver=False, logging_level="ERROR", include_dashboard=False)
    try:
        outcome.workers = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        started = time.monotonic()
        if groups:
            version_dir = settings.models_dir / manifest.version
            for batch in _classified_on_ray(groups, settings, version_dir, outcome.workers):
                _place(batch, manifest, settings.audit_rate, library, outcome, on_batch)
        outcome.seconds = time.monotonic() - started
    finally:
        ray.shutdown()
        if library.journal is not None:
            library.journal.close()
    return outcome


def _to_sort(
    inputs: list[Arrival], library: Library, outcome: Backfill, on_batch: OnBatch | None
) -> list[Arrival]:
    """The inputs the journal does not have, grouped with their companions."""
    todo = [arrival for arrival in inputs if passed_over(arrival, library) is None]
    outcome.skipped_done = len(inputs) - len(todo)
    if on_batch is not None and outcome.skipped_done:
        on_batch([], outcome.skipped_done)
    return group_all(todo)


def _classified_on_ray(
    groups: list[Arrival], settings: Settings, version_dir: Path, size: int
) -> Iterator[dict[str, np.ndarray]]:
    """The groups read and run through the model on an actor pool of `size`, as batches of
    results."""
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False
    rows = ray.data.from_items(
        [{"arrival": pickle.dumps(g)} for g in groups],
        override_num_blocks=max(1, min(len(groups), size * 8)),
    ).map_batches(
        ClassifyFiles,
        fn_constructor_args=(str(version_dir), settings.max_pixels, settings.max_file_bytes),
        batch_size=settings.batch_size,
        concurrency=size,
        num_cpus=1,
        # a lost node's actors are started again elsewhere and their batches redone
        max_restarts=-1,
        max_task_retries=-1,
    )
    yield from rows.iter_batches(batch_size=settings.batch_size, batch_format="numpy")


def _place(
    batch: dict[str, np.ndarray],
    manifest: Manifest,
    audit_rate: float,
    library: Library,
    outcome: Backfill,
    on_batch: OnBatch | None,
) -> None:
    """The driver's half: the local pipeline's decide and place_batch, unchanged."""
    items: list[Decoded] = [pickle.loads(blob) for blob in batch["item"]]
    logits = [pickle.loads(blob) for blob in batch["logits"]]
    placed = place_batch(decide_batch(items, logits, manifest, audit_rate), library)
    if placed.failure is not None:
        log.error("placing_failed", where=placed.failed_writing, error=str(placed.failure))
    left = [*placed.retry, *placed.alone]
    outcome.unfinished += [item.arrival.path for item in left]
    outcome.events += placed.events
    for item, worker in zip(items, batch["worker"], strict=True):
        outcome.per_worker[str(worker)] += 1 + len(item.companions)
    if on_batch is not None:
        members = sum(1 + len(i.companions) for i in items)
        on_batch(placed.events, members - sum(1 + len(i.companions) for i in left))
