"""The one typed settings object: loaded once from config.toml (+ SORTBOX_* env), passed down.

Relative paths resolve against the folder of the config file, so the same config works
whether `sortbox` is started from a shell, from systemd or from a test.
"""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict
from sortbox.daemon.cpus import usable_cpus

DEFAULT_IGNORE = [
    ".*",  # hidden files and folders: rsync temp files, .DS_Store, .syncthing.*, swap files
    "*.part",
    "*.crdownload",
    "*.tmp",
    "~$*",
    "Thumbs.db",
    "desktop.ini",
    "@eaDir",
]


# "auto" thread counts: one per CPU this process may use, at most this many. Past it the one
# placing thread and the one model call at a time bound throughput, and each decoder holds a
# picture in memory. Measured on 2 cores only (README, benchmarks).
AUTO_THREADS_AT_MOST = 8


# The model is about a fifth of the CPU a photo costs; decoding it is the rest (bench_daemon).
# So "auto" gives ONNX Runtime one thread per this many CPUs: on 2 cores one thread sorted as
# fast as two and used 1.2 ms less CPU a picture, the second thread's wake-ups (issue #31).
CPUS_PER_INFERENCE_THREAD = 4


def _auto_threads(value: Any) -> Any:
    return min(usable_cpus(), AUTO_THREADS_AT_MOST) if value == "auto" else value


def _auto_inference_threads(value: Any) -> Any:
    if value != "auto":
        return value
    return max(1, min(usable_cpus(), AUTO_THREADS_AT_MOST) // CPUS_PER_INFERENCE_THREAD)


AutoThreads = Annotated[int, BeforeValidator(_auto_threads)]
AutoInferenceThreads = Annotated[int, BeforeValidator(_auto_inference_threads)]


class WebSettings(BaseModel):
    """`sortbox web`, the review page: a separate process; the daemon keeps no network."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    # loopback only by default; any other address needs `password` (and, beyond a home LAN,
    # TLS from a reverse proxy in front)
    listen: str = "127.0.0.1"
    """The address `sortbox web` listens on; any other than loopback needs `web.password`."""
    port: int = Field(8765, ge=1, le=65535)
    """Its port."""
    # asked on the login page when the page is opened from another machine
    password: str | None = None
    """Asked on the login page when the page is opened from another machine."""
    # names this page may be reached under besides localhost (a reverse proxy's name); any
    # other Host header is refused (DNS rebinding)
    allowed_hosts: list[str] = Field(default_factory=list)
    """Names the page may be reached under besides localhost (a reverse proxy's); any other Host
    header is refused."""


class TrainSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    backbone: Literal["lite0", "lite2"] = "lite0"
    """`"lite2"`: +1.1 points fine-tuned (clothing benchmark), 2× the inference time."""
    min_images_per_class: int = Field(5, ge=2)
    """Smaller classes are left out and reported."""
    # the three roles of the labelled pictures, by content hash (stable across runs): train,
    # calibration (early stopping, temperature, thresholds) and test (the gate and the
    # reported figures; nothing is tuned on it). A dataset with train/, validation/ and
    # test/ folders keeps its own split.
    calibration_fraction: float = Field(0.15, gt=0.0, lt=0.5)
    """Share in the calibration role, by content hash."""
    test_fraction: float = Field(0.15, gt=0.0, lt=0.5)
    """Share in the test role, by content hash (never tuned on)"""
    # auto-sorted files nobody touched are not labels unless this is on (no self-confirmation)
    trust_auto_sorted: bool = False
    """Count untouched auto-sorted files as labels."""
    # the fast model (a linear head on frozen features, its L2 strength chosen on the
    # calibration pictures) is published first; then the deep model: the last stages
    # fine-tuned on augmented pictures, published if better
    finetune_epochs: int = Field(30, ge=0)
    """Fine-tune epochs at most (fitted to the budget; `0`: fast model only)"""
    trainable_stages: int = Field(3, ge=1, le=7)
    """Network stages fine-tuned (plus the head conv); 3 beat 2 with each of three seeds on the
    clothing benchmark (+1.0 points on average), for about 45% more time per epoch; `2` trains
    faster."""
    # blend the fine-tuned model with the fast one when that calibrates better (a third
    # more model time)
    blend: bool = True
    """Blend the fine-tuned model with the fast one when that calibrates better: +0.7 points on
    average on the clothing benchmark (six models, 0 to +1.1), about a third more model time."""
    budget_minutes: float = Field(60.0, gt=0.0)
    """Wall-clock budget of one run's fine-tune; the rest resumes next run."""
    batch_size: int = Field(64, ge=2)
    """Training batch size."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """`"cuda"` when PyTorch sees a GPU, else `"cpu"`; or name one."""
    seed: int = 0
    """Seed for everything random."""
    keep_versions: int = Field(5, ge=1)
    """Published versions kept."""
    # publish an INT8 model beside the float one when it decides as the float one does
    int8: bool = True
    """Also publish an INT8 model, when it decides as the float one does on the calibration
    pictures (the same label on ≥ 97%, no picture filed into another class, at most 3 points
    less auto-sorted) and passes the gate; the daemon then runs it."""
    # the gate: a candidate may lose at most this much macro-F1 on the test pictures ...
    max_macro_f1_drop: float = Field(0.005, ge=0.0, le=1.0)
    """The gate: macro-F1 a candidate may lose."""
    # ... and no class may lose more recall than this, beyond what chance explains
    max_class_recall_drop: float = Field(0.05, ge=0.0, le=1.0)
    """The gate: recall one class may lose, beyond chance."""
    # perceptual-hash Hamming distance at or below which two pictures count as near-duplicates
    near_duplicate_distance: int = Field(4, ge=0, le=64)
    """DHash distance for near-duplicates."""
    unjudgeable_share: float = Field(0.005, ge=0.0, lt=0.25)
    """Pictures blurrier, darker, brighter or flatter than all but this share of the training
    pictures go to review as too poor to judge; 0 turns the check off."""
    exclude_unjudgeable: bool = False
    """Leave the training pictures past those limits out of training (the data report lists
    them either way)."""
    # CPU threads for training; default: every CPU this process may use (cpus.py)
    threads: int = Field(default_factory=usable_cpus, ge=1)
    """PyTorch / ONNX Runtime threads when training."""

    @model_validator(mode="after")
    def _some_pictures_left_to_train_on(self) -> TrainSettings:
        if self.calibration_fraction + self.test_fraction >= 0.8:
            raise ValueError("calibration_fraction + test_fraction must leave pictures to train on")
        return self


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="SORTBOX_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
        # the docstring under each field is its line in docs/reference/settings.md
        use_attribute_docstrings=True,
    )

    # Defaults, as config.toml and the README list them: sortbox runs without a config file
    # (#32), relative to the folder it was started in.
    inbox: Path = Path("inbox")
    """Folder watched, recursively."""
    library: Path = Path("library")
    """Where copies go; must not contain or be inside the inbox."""
    journal: Path = Path("journal.jsonl")
    """The JSONL journal."""
    models_dir: Path = Path("models")
    """Published models and the `current` symlink."""
    # A missing inbox or library stops start-up unless this is on (`sortbox init` makes them
    # too): a mistyped path, or a network share not mounted yet, must not become an empty
    # local folder that sortbox watches for ever (#32).
    create_folders: bool = False
    """A missing inbox or library stops `run` and `sort` with exit code 2 (a typo, or a share not
    mounted yet, must not become an empty local folder); `true` lets sortbox create them;
    `sortbox init` makes them either way."""
    dataset: Path | None = None
    """Optional seed dataset, `<dataset>/<class>/*`."""
    cache_dir: Path | None = None
    """Trainer feature and hash cache; none means `<models_dir>/.cache`."""

    # what becomes of an inbox original once its copy is durable and journaled: kept, deleted,
    # or moved into `done_folder`, a folder inside the inbox that sortbox never sorts (#32)
    on_success: Literal["keep", "delete", "move"] = "keep"
    """`"delete"` removes the inbox original once its copy is durable and journaled; where the inbox
    will not let it go (a read-only mount, a shared folder the daemon may only read) the original
    stays, done, and the log says `original_not_removed` once per file and run. `"move"` moves
    it, with the same guarantees, into `done_folder` under its path in the inbox (`inbox/a/x.jpg`
    → `inbox/.done/a/x.jpg`; a name taken there becomes `x (2).jpg`, nothing is overwritten),
    never through a link (else the log says `original_not_moved` and it stays); a restart
    finishes moves a crash cut short, and `undo` moves the original itself back."""
    # where on_success = "move" puts done originals, under their path in the inbox
    done_folder: str = ".done"
    """Where `on_success = "move"` puts done originals: a folder inside the inbox, never sorted
    whatever its name."""
    # keep an inbox subfolder's path under the class: inbox/2024 Holiday/IMG_1.jpg ->
    # library/clothing/2024 Holiday/IMG_1.<hash>.jpg (#32)
    keep_subfolders: bool = False
    """`true` keeps an inbox subfolder's path under the class folder: `inbox/2024 Holiday/IMG_1.jpg`
    → `library/<class>/2024 Holiday/IMG_1.<hash>.jpg` (for `sort`, the path below the folder
    given). Folder names are made portable as file names are (no hidden names, no `..`, no `: ? *
    " < > | \\`, no trailing dot or space, no Windows device names). `needs_review/` and
    `rejected/` stay flat. The trainer reads every level of a class folder as that class;
    `status`'s measured precision reads every level too; the audit page lists one level."""
    watch_mode: Literal["auto", "inotify", "poll"] = "auto"
    """`"inotify"`, `"poll"`, or auto-detect network/FUSE mounts."""
    ignore: list[str] = Field(default_factory=lambda: list(DEFAULT_IGNORE))
    """Shell patterns matched against every path component."""
    quiet_period_s: float = Field(0.25, ge=0.0)
    """Size and mtime must stay unchanged this long."""
    poll_interval_s: float = Field(2.0, gt=0.0)
    """Polling observer interval; longer when one look at the inbox takes long, so polling stays
    under 5 % of one CPU (an inbox of 60,000 kept files: 25.6 % of a core at 2 s, 4.7 % paced)"""
    rescan_interval_s: float = Field(300.0, gt=0.0)
    """Full inbox rescan interval."""
    # A RAW file or sidecar waits this long for the picture it belongs to (and a picture for
    # a RAW file or sidecar of its name still being written); see daemon/group.py.
    pair_wait_s: float = Field(3.0, ge=0.0)
    """How long a RAW file or sidecar waits for its picture (and a picture for a partner still being
    written)"""
    unfinished_wait_s: float = Field(10.0, ge=0.0)
    """How long a picture in the inbox that cannot be decoded waits for the rest of it before it is
    rejected (once; not a file renamed into place). Some programs close a file between its pieces
    (`cat part >> x.jpg`, a resumed upload), and each close makes it look complete. 0 rejects it
    at once."""

    batch_size: int = Field(8, ge=1, le=256)
    """Images per micro-batch (one journal fsync per batch)"""
    max_wait_ms: int = Field(100, ge=0)
    """A partial batch is sorted after this long."""
    queue_size: int = Field(64, ge=1)
    """Files waiting to be decoded; when full, intake waits."""
    # "auto": one per CPU this process may use (affinity, cgroup quota), at most 8
    decode_workers: AutoThreads = Field("auto", ge=1, le=32, validate_default=True)
    """Decoder threads, running while the model runs; `"auto"`: one per CPU the process may use (its
    affinity and cgroup quota, such as the unit's `CPUQuota=`), at most 8."""
    inference_threads: AutoInferenceThreads = Field("auto", ge=1, le=64, validate_default=True)
    """ONNX Runtime threads; `"auto"`: one per 4 CPUs the process may use, at least one (the
    model is a fifth of the work; decoding is the rest)."""
    inference_run_size: int = Field(1, ge=1, le=256)
    """Images per ONNX Runtime call (1 measured fastest on 2 cores)"""

    max_pixels: int = Field(250_000_000, ge=1)
    """Decompression-bomb limit on the pixels a file declares (a 200-megapixel phone JPEG passes;
    what is decoded is budgeted separately, above)"""
    max_file_mb: float = Field(512.0, gt=0.0)
    """Larger files are rejected without being read, and left in the inbox."""

    metrics_textfile: Path | None = None
    """Node_exporter textfile to write (off when unset)"""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    """`debug`, `info`, `warning`, `error`."""

    # Auto-sorted pictures should be right this often; the rest go to needs_review. Thresholds
    # are re-derived from the model's calibration predictions whenever a model is loaded and
    # on SIGHUP (`systemctl reload sortbox`): no retraining needed.
    target_precision: float = Field(0.97, gt=0.0, le=1.0)
    """Auto-sorted pictures should be right this often; applied at model load and on SIGHUP, no
    retraining (sortbox 0.1's `train.target_precision` is still read)"""
    # This share of the confident decisions goes to needs_review anyway ("spot checks"), so the
    # real precision stays measured even where nobody looks at the sorted folders. Filing a spot
    # check into a class folder labels it for the trainer and counts in `sortbox status`.
    audit_rate: float = Field(0.02, ge=0.0, le=1.0)
    """Share of confident decisions sent to review as spot checks, so precision stays measured;
    applied on SIGHUP."""
    # At most this share of pictures of the known classes may be sent to needs_review as
    # "unlike any class" (issue #33): the trainer sets the unknown threshold there, on the
    # calibration pictures. Takes effect at the next `sortbox train`.
    unknown_review_rate: float = Field(0.05, ge=0.0, lt=1.0)
    """At most this share of pictures of the known classes may go to review as "unlike any class";
    the trainer sets the unknown threshold there (next `sortbox train`)"""

    train: TrainSettings = Field(default_factory=TrainSettings)
    web: WebSettings = Field(default_factory=WebSettings)

    @model_validator(mode="before")
    @classmethod
    def _lift_old_target_precision(cls, values: Any) -> Any:
        # sortbox 0.1 had [train] target_precision; the daemon uses it now, so it is top-level
        train = values.get("train") if isinstance(values, dict) else None
        if isinstance(train, dict) and "target_precision" in train:
            train = dict(train)
            values = {**values, "train": train}
            values.setdefault("target_precision", train.pop("target_precision"))
        return values

    @model_validator(mode="after")
    def _folders_do_not_nest(self) -> Settings:
        inbox, library = self.inbox.absolute(), self.library.absolute()
        if inbox == library or inbox.is_relative_to(library) or library.is_relative_to(inbox):
            raise ValueError(
                f"the inbox ({self.inbox}) and the library ({self.library}) must not contain "
                "one another: sortbox would sort its own copies again"
            )
        return self

    @field_validator("done_folder")
    @classmethod
    def _done_folder_inside_the_inbox(cls, value: str) -> str:
        parts = PurePosixPath(value).parts
        if not parts or PurePosixPath(value).is_absolute() or ".." in parts:
            raise ValueError(f'{value!r} must be a folder inside the inbox, such as ".done"')
        return PurePosixPath(value).as_posix()

    @property
    def max_file_bytes(self) -> int:
        return int(self.max_file_mb * 1024 * 1024)

    @property
    def resolved_cache_dir(self) -> Path:
        return self.cache_dir or self.models_dir / ".cache"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The file's values arrive as init kwargs; the environment must win over them.
        return (env_settings, init_settings)


PATH_KEYS = (
    "inbox",
    "library",
    "journal",
    "models_dir",
    "dataset",
    "cache_dir",
    "metrics_textfile",
)


class ConfigError(Exception):
    """A config file that cannot be used; the message names the key and the problem."""


class UsageError(Exception):
    """A command asked for something that cannot be done as asked (exit code 2)."""


ENV_PREFIX = "SORTBOX_"
CONFIG_VARIABLE = "SORTBOX_CONFIG"


def default_config_path() -> Path:
    return Path(os.environ.get(CONFIG_VARIABLE, "config.toml"))


def config_is_implicit(config_path: Path | None) -> bool:
    """True when nobody named a config file (no --config, no $SORTBOX_CONFIG) and there is
    none in the current folder: then the defaults apply (#32). A named file that is missing
    is a mistake, and stays an error."""
    return (
        config_path is None
        and CONFIG_VARIABLE not in os.environ
        and not Path("config.toml").exists()
    )


def load_settings(config_path: Path | None = None) -> Settings:
    path = (config_path or default_config_path()).absolute()
    values: dict[str, Any] = {}
    try:
        with path.open("rb") as fh:
            values = tomllib.load(fh)
    except FileNotFoundError:
        if not config_is_implicit(config_path):
            raise ConfigError(f"{path}: config file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    _refuse_unknown_variables()
    try:
        settings = Settings(**values)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, path)) from None
    return _resolve_paths(settings, path.parent)


def known_variables() -> set[str]:
    names = {CONFIG_VARIABLE}
    names |= {f"{ENV_PREFIX}{key}".upper() for key in Settings.model_fields}
    for section, model in (("TRAIN", TrainSettings), ("WEB", WebSettings)):  # [train], [web]
        names |= {f"{ENV_PREFIX}{section}__{key}".upper() for key in model.model_fields}
    return names


def _refuse_unknown_variables() -> None:
    """A misspelt SORTBOX_BATCHSIZE=4 was silently ignored (#32): refused, as unknown keys
    in the file are."""
    unknown = sorted(
        name
        for name in os.environ
        if name.upper().startswith(ENV_PREFIX) and name.upper() not in known_variables()
    )
    if unknown:
        raise ConfigError(
            f"environment variable {', '.join(unknown)}: unknown setting (the variables are "
            "SORTBOX_<KEY> for a key of config.toml, SORTBOX_TRAIN__<KEY> for one of [train], "
            "SORTBOX_WEB__<KEY> for one of [web])"
        )


# pydantic's wording where it names Python types, in a reader's words
PLAIN_MESSAGES = {
    "path_type": "must be a path, in quotes",
    "int_parsing": "must be a whole number",
    "int_type": "must be a whole number",
    "float_parsing": "must be a number",
    "float_type": "must be a number",
    "bool_parsing": "must be true or false",
    "bool_type": "must be true or false",
    "string_type": "must be text, in quotes",
    "list_type": "must be a list, in [ ]",
}


def default_config_text() -> str:
    """A config file for `sortbox init` to write where there is none: the folders set, every
    other key commented out with its default, from the code, so the two never differ."""
    lines = [
        "# sortbox configuration, written by `sortbox init`. Relative paths are relative to",
        "# this file's folder. A key commented out has the default shown. What each key does",
        "# is in docs/reference/settings.md.",
    ]
    sections = []
    for key, field in Settings.model_fields.items():
        value = field.get_default(call_default_factory=True)
        if isinstance(value, BaseModel):  # a [section] such as [train]: after the plain keys
            sections += ["", f"[{key}]"]
            fields = type(value).model_fields
            sections += [_commented(name, getattr(value, name)) for name in fields]
        elif key in ("inbox", "library", "journal", "models_dir", "create_folders"):
            lines.append(f"{key} = {_toml_value(value)}")
        else:
            lines.append(_commented(key, value))
    return "\n".join(lines + sections) + "\n"


def _commented(key: str, value: Any) -> str:
    return f"# {key} = {_toml_value(value)}" if value is not None else f"# {key} = (not set)"


def _toml_value(value: Any) -> str:
    return json.dumps(str(value) if isinstance(value, Path) else value)


def _variable_for(location: tuple[Any, ...]) -> str | None:
    """The environment variable that set the value at `location`, if one did."""
    wanted = ENV_PREFIX + "__".join(str(part) for part in location).upper()
    return next((name for name in os.environ if name.upper() == wanted), None)


def _describe(exc: ValidationError, path: Path) -> str:
    """One clause per problem, naming where the value came from: the file and its key, or the
    environment variable (#32); pydantic's "Value error, " prefix is jargon to a reader."""
    problems = []
    for error in exc.errors():
        location = tuple(error["loc"])
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        elif error["type"] in PLAIN_MESSAGES:
            message = PLAIN_MESSAGES[error["type"]]
        elif error["type"] == "value_error":
            message = str(error.get("ctx", {}).get("error", error["msg"]))
        else:
            message = error["msg"]
        variable = _variable_for(location) if location else None
        if variable is not None:
            problems.append(f"environment variable {variable}={os.environ[variable]}: {message}")
        elif location:
            problems.append(f"{path}: {'.'.join(str(p) for p in location)}: {message}")
        else:
            problems.append(f"{path}: {message}")
    return "; ".join(problems)


def _resolve_paths(settings: Settings, base: Path) -> Settings:
    update = {}
    for key in PATH_KEYS:
        value = getattr(settings, key)
        if value is not None:
            update[key] = Path(os.path.normpath(base / value.expanduser()))
    return settings.model_copy(update=update)
