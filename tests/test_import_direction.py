"""The daemon's modules in the order a picture meets them; imports only point back up this list.

A module may import only modules listed before it, so one picture's trip (inbox -> read ->
classify -> decide -> place -> journal) never climbs back, and a newcomer can read the package
top to bottom. A new module must be given its place here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

DAEMON = Path(__file__).resolve().parent.parent / "daemon"

STAGE_ORDER = [
    # what every stage stands on: the one settings object and where things live on disk
    "cpus", "settings", "layout", "console",
    # stage 1, intake: which files are there, and when one is ready to read
    "intake.files", "intake.watch", "intake.stability", "intake.group",
    # stage 2, sorting: read, classify, decide, copy, journal
    "sorting.preprocess", "sorting.quality", "sorting.read", "sorting.thresholds",
    "sorting.manifest",
    "sorting.classify", "sorting.decide", "sorting.copies", "sorting.journal",
    "sorting.compact_map", "sorting.index", "sorting.recovery", "sorting.library",
    "sorting.stages",
    # the parts the long-running service composes, each the owner of its state
    "running.heap", "running.batch", "running.workload", "running.decoders",
    "running.metrics", "running.state_file", "running.notify", "running.model_slot",
    "running.reload", "running.health", "running.intakes", "running.placer",
    # the drivers: the daemon's lifecycle and a Ray backfill
    "service", "ray_engine",
    # answers to a person: explain, status, review, undo, ...
    "answers.explain", "answers.feedback", "answers.review", "answers.status", "answers.undo",
    "answers.backup", "answers.doctor", "answers.units", "answers.web",
    # the command line, on top of everything
    "cli",
]  # fmt: skip


def daemon_modules() -> dict[str, Path]:
    return {
        path.relative_to(DAEMON).with_suffix("").as_posix().replace("/", "."): path
        for path in DAEMON.rglob("*.py")
        if path.name != "__init__.py"
    }


def imported_daemon_modules(path: Path) -> set[str]:
    """Every sortbox.daemon module `path` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        for name in names:
            if name.startswith("sortbox.daemon."):
                found.add(name.removeprefix("sortbox.daemon."))
    modules = daemon_modules()
    return {name for name in found if name in modules}


def test_every_daemon_module_has_its_place_in_the_stage_order() -> None:
    assert sorted(daemon_modules()) == sorted(STAGE_ORDER)


@pytest.mark.parametrize("module", STAGE_ORDER)
def test_imports_point_only_up_the_stage_order(module: str) -> None:
    position = {name: n for n, name in enumerate(STAGE_ORDER)}
    climbs = sorted(
        other
        for other in imported_daemon_modules(daemon_modules()[module])
        if position[other] >= position[module]
    )
    assert not climbs, f"{module} imports {climbs}, which come after it in the stage order"


def test_the_daemon_never_imports_the_trainer_except_from_the_command_line() -> None:
    for module, path in daemon_modules().items():
        if module == "cli":
            continue
        assert "sortbox.trainer" not in path.read_text(), module
