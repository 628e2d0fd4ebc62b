"""The trainer's side of the `sortbox` command (imported only when torch is installed)."""

from __future__ import annotations

import sys

from sortbox.daemon.settings import Settings
from sortbox.trainer.default_model import create_default_model
from sortbox.trainer.train import run_training


def init(settings: Settings) -> int:
    version = create_default_model(settings)
    print(f"default model {version} published in {settings.models_dir}")
    return 0


def train(settings: Settings, force: bool, dry_run: bool, drop_classes: bool = False) -> int:
    # progress bars for people at a terminal, not for the timer's journald
    return run_training(
        settings,
        force=force,
        dry_run=dry_run,
        progress=sys.stderr.isatty(),
        drop_classes=drop_classes,
    )
