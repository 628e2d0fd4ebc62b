"""`sortbox install-units`: write the systemd units with this install's real paths.

It never starts anything: it prints the systemctl commands for the user to run.
"""

from __future__ import annotations

import os
import shutil
import sys
from importlib import resources
from pathlib import Path

from sortbox.daemon.layout import replacing
from sortbox.daemon.settings import Settings
from sortbox.daemon.sorting.manifest import current_version

TEMPLATES = resources.files("sortbox.systemd")
UNITS = (
    "sortbox.service",
    "sortbox-train.service",
    "sortbox-train.timer",
    "sortbox-web.service",
)


def sortbox_executable() -> Path:
    found = Path(sys.executable).parent / "sortbox"
    if found.exists():
        return found
    which = shutil.which("sortbox")
    return Path(which) if which else found


def render_units(
    settings: Settings, config: Path, user_mode: bool, executable: Path
) -> dict[str, str]:
    # the journal file itself, not its folder (by default the folder holding config.toml);
    # "-": not an error if it does not exist yet
    journal = f"-{_quote(settings.journal)}"
    cache = settings.resolved_cache_dir
    daemon_paths = owned_folders(settings)
    if settings.metrics_textfile is not None:
        daemon_paths = _unique([*daemon_paths, settings.metrics_textfile.parent])
    train_paths = _unique([settings.models_dir, cache])
    watched = [*daemon_paths, settings.journal, config.parent, executable.parent]
    under_home = any(str(p).startswith(("/home/", "/root/")) for p in watched)
    values = {
        "@DOCUMENTATION@": _documentation(),
        "@SORTBOX@": str(executable),
        "@CONFIG@": str(config),
        "@INBOX@": str(settings.inbox),
        "@MOUNTS@": " ".join(_quote(p) for p in daemon_paths),
        "@READ_WRITE@": " ".join([*(_quote(p) for p in daemon_paths), journal]),
        "@TRAIN_READ_WRITE@": " ".join([*(_quote(p) for p in train_paths), journal]),
        "@WEB_READ_WRITE@": " ".join(
            [*(_quote(p) for p in _unique([settings.library, *train_paths])), journal]
        ),
        "@PORT@": str(settings.web.port),
        # paths under /home must stay visible; read-only except the ReadWritePaths above
        "@PROTECT_HOME@": "read-only" if under_home else "yes",
        "@IDENTITY@": "" if user_mode else "User=sortbox\nGroup=sortbox",
        "@WANTED_BY@": "default.target" if user_mode else "multi-user.target",
    }
    units = {}
    for name in UNITS:
        template = TEMPLATES / f"{name}.in"
        if not template.is_file():  # the timer has nothing to fill in
            template = TEMPLATES / name
        text = template.read_text(encoding="utf-8")
        for key, value in values.items():
            text = text.replace(key, value)
        units[name] = text
    return units


def _documentation() -> str:
    # an editable install has the README beside the package; a wheel install has none
    readme = Path(__file__).resolve().parent.parent / "README.md"
    return f"Documentation=file://{readme}" if readme.is_file() else ""


def owned_folders(settings: Settings) -> list[Path]:
    return _unique([settings.inbox, settings.library, settings.models_dir])


def _unique(paths: list[Path]) -> list[Path]:
    return list(dict.fromkeys(paths))


def _quote(path: Path) -> str:
    text = str(path)
    # systemd unit syntax: spaces need quoting, specifiers need doubling
    text = text.replace("%", "%%")
    return f'"{text}"' if " " in text else text


def unit_folder(user_mode: bool) -> Path:
    if user_mode:
        base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
        return Path(base) / "systemd" / "user"
    return Path("/etc/systemd/system")


def install_units(
    settings: Settings, config: Path, user_mode: bool, target: Path | None = None
) -> list[str]:
    """Write the units; return the commands the user should run next."""
    folder = target or unit_folder(user_mode)
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in render_units(settings, config, user_mode, sortbox_executable()).items():
        with replacing(folder / name) as temporary:
            temporary.write_text(text, encoding="utf-8")
    ctl = "systemctl --user" if user_mode else "sudo systemctl"
    commands = []
    if target is not None and target.absolute() != unit_folder(user_mode):
        # written elsewhere to be looked at first: systemd reads them only from its folder
        systemd_folder = _quote(unit_folder(user_mode))
        names = " ".join(_quote(target.absolute() / name) for name in UNITS)
        copy = f"mkdir -p {systemd_folder} && cp" if user_mode else "sudo cp"
        commands.append(f"{copy} {names} {systemd_folder}/")
    if current_version(settings.models_dir) is None:
        # the service cannot build it: PyTorch needs writable+executable memory, the unit denies it
        commands.append(f"{_quote(sortbox_executable())} init --config {_quote(config)}")
    if not user_mode:
        folders = " ".join(_quote(p) for p in owned_folders(settings))
        journal = _quote(settings.journal)
        commands += [
            "sudo useradd --system --no-create-home --shell /usr/sbin/nologin sortbox",
            f"sudo mkdir -p {folders} && sudo touch {journal}",
            f"sudo chown -R sortbox:sortbox {folders} && sudo chown sortbox:sortbox {journal}",
        ]
    if user_mode:
        # without it, systemd stops a user's services when they log out (#32)
        commands.append('loginctl enable-linger "$USER"')
    commands += [
        f"{ctl} daemon-reload",
        f"{ctl} enable --now sortbox.service sortbox-train.timer",
        f"{ctl} status sortbox.service",
    ]
    return commands


def private_tmp_warnings(settings: Settings, config: Path) -> list[str]:
    """The units run with PrivateTmp=yes: the service sees a /tmp and /var/tmp of its own,
    empty, so a folder the config keeps there is not the one the user fills (#32)."""
    paths = {
        "inbox": settings.inbox,
        "library": settings.library,
        "journal": settings.journal,
        "models_dir": settings.models_dir,
        "cache_dir": settings.resolved_cache_dir,
        "dataset": settings.dataset,
        "the config file": config,
    }
    return [
        f"{key} is {path}, under {tmp}: the units have PrivateTmp=yes, so the service would "
        f"see an empty {tmp} of its own there; move it to a folder outside {tmp}"
        for key, path in paths.items()
        if path is not None
        for tmp in ("/tmp", "/var/tmp")
        if path.absolute().is_relative_to(tmp)
    ]
