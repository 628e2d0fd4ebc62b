"""SIGHUP: config.toml and `models_dir/current` looked at again.

Only the decision settings change at once (`LIVE_SETTINGS`); everything else (folders,
threads, watching) is wired at start-up and needs a restart, which the log names. A
config.toml that does not validate is refused and the daemon carries on as it was.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import structlog
from sortbox.daemon.running.model_slot import ModelSlot
from sortbox.daemon.settings import ConfigError, Settings
from sortbox.daemon.sorting.journal import Event

log = structlog.get_logger(__name__)

LIVE_SETTINGS = frozenset({"target_precision", "audit_rate"})  # applied without a restart
# read by other processes (`sortbox train`, `sortbox web`), each as it starts: not the daemon's
NOT_THE_DAEMONS = frozenset({"train", "web"})


@dataclass(frozen=True)
class Reload:
    settings: Settings  # the running settings with the live changes applied
    changed: list[str]  # every key that differs in config.toml
    needs_restart: list[str]  # those a reload cannot apply (the log names them)


def reload_settings(running: Settings, fresh: Settings) -> Reload:
    """What a reload changes: a pure decision."""
    changed = sorted(
        key for key in Settings.model_fields if getattr(fresh, key) != getattr(running, key)
    )
    live = {key: getattr(fresh, key) for key in changed if key in LIVE_SETTINGS}
    return Reload(
        running.model_copy(update=live),
        changed,
        [key for key in changed if key not in LIVE_SETTINGS | NOT_THE_DAEMONS],
    )


def reload_now(
    running: Settings,
    load: Callable[[], Settings] | None,
    slot: ModelSlot,
    journal: Callable[[Event], None],
) -> Settings:
    """Look at the model at once (a refused one too) and apply config.toml's live settings;
    the settings to run with from now on."""
    slot.look_now()
    if load is None:
        return running
    try:
        reload = reload_settings(running, load())
    except ConfigError as exc:
        log.error("reload_refused", error=str(exc))  # keep running as configured
        return running
    if reload.needs_restart:
        log.warning("reload_needs_restart", keys=reload.needs_restart)
    if "audit_rate" in reload.changed:
        log.info("audit_rate_changed", audit_rate=reload.settings.audit_rate)
    if "target_precision" in reload.changed:
        retargeted = slot.retarget(reload.settings)
        if retargeted is not None:
            journal(retargeted)
    return reload.settings
