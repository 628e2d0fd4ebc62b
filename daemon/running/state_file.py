"""The daemon's state file: what `sortbox status` reads, and the lock that keeps one daemon
per library."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from pathlib import Path

from sortbox.daemon.layout import STATE_FOLDER

STATE_FILE_BYTES = 1024


def state_file_of(library: Path) -> Path:
    """Where a daemon sorting into `library` tells what it is doing."""
    return library / STATE_FOLDER / "daemon.json"


class AnotherDaemon(Exception):
    """A daemon is already sorting into this library."""


class StateFile:
    """The daemon's state for `sortbox status` ("sorting", "paused: library disk full"),
    in a small file rewritten in place.

    Its blocks are allocated once at start-up and then only overwritten, so the state can
    still be told when the disk it lives on is full, which is exactly when it matters.

    It is also what makes a daemon the only one on its library: a second `sortbox run` (a
    terminal beside the service) would decode everything again and overwrite this state.
    The daemon holds an flock on the file for its life; kill -9 releases it.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = -1
        with contextlib.suppress(OSError):
            path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        if self._fd >= 0:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(self._fd)
                self._fd = -1
                other = (read_state(path) or {}).get("pid", "unknown")
                raise AnotherDaemon(
                    f"another sortbox daemon (pid {other}) is already sorting into "
                    f"{path.parent.parent}; stop it first (systemctl stop sortbox)"
                ) from None
            except OSError:
                pass  # a filesystem without locks: the state is still worth writing
            with contextlib.suppress(OSError):
                os.pwrite(self._fd, b" " * STATE_FILE_BYTES, 0)

    def write(self, state: dict[str, object]) -> None:
        if self._fd < 0:
            return
        data = json.dumps({"pid": os.getpid(), **state}, default=str).encode()
        data = data[: STATE_FILE_BYTES - 1].ljust(STATE_FILE_BYTES - 1) + b"\n"
        with contextlib.suppress(OSError):
            os.pwrite(self._fd, data, 0)

    def close(self, state: dict[str, object]) -> None:
        self.write(state)
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def read_state(path: Path) -> dict[str, object] | None:
    """The state a running daemon wrote; None when there is none or its process is gone."""
    try:
        state = json.loads(path.read_bytes())
        pid = int(state["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, run by another user (the sortbox system user)
    return dict(state)
