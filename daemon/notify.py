"""systemd's notify protocol (sd_notify(3)): one datagram per message to $NOTIFY_SOCKET.

A few lines, so no library: READY=1 once the model is loaded and the inbox watched, STATUS=
with live counters, WATCHDOG=1 pings, STOPPING=1 on shutdown. Without $NOTIFY_SOCKET every
call is a no-op, so the same code runs in a terminal.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import threading
import time
from pathlib import Path

from sortbox.daemon.place import STATE_FOLDER


class Notifier:
    def __init__(self, address: str | None = None, watchdog_usec: str | None = None) -> None:
        self._address = address
        self._socket: socket.socket | None = None
        if address:
            if address.startswith("@"):  # abstract namespace socket
                self._address = "\0" + address[1:]
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            # Never let a manager that stopped reading stall sorting: a full socket buffer
            # drops the message (the next ping follows within seconds) instead of blocking.
            self._socket.setblocking(False)
        # systemd wants pings at least every WatchdogSec; ping at half that
        self.watchdog_interval_s = int(watchdog_usec) / 2e6 if watchdog_usec else None

    @classmethod
    def from_environment(cls) -> Notifier:
        return cls(os.environ.get("NOTIFY_SOCKET"), os.environ.get("WATCHDOG_USEC"))

    def _send(self, message: str) -> None:
        if self._socket is None or self._address is None:
            return
        with contextlib.suppress(OSError):  # gone or not reading (EAGAIN): nothing to do
            self._socket.sendto(message.encode("utf-8"), self._address)

    def ready(self, status: str) -> None:
        self._send(f"READY=1\nSTATUS={status}")

    def status(self, status: str) -> None:
        self._send(f"STATUS={status}")

    def watchdog(self) -> None:
        self._send("WATCHDOG=1")

    def stopping(self) -> None:
        self._send("STOPPING=1")

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


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


class Reporter:
    """What the service says about itself, to systemd (STATUS=) and to `sortbox status` (the
    state file), said again only when it changes. The placer and the main loop both report."""

    def __init__(self, notifier: Notifier, state_file: StateFile | None) -> None:
        self.notifier = notifier
        self.state_file = state_file
        self._lock = threading.Lock()
        self._said: tuple[object, ...] | None = None

    def report(self, state: str, model: str, status_line: str, extra: dict[str, object]) -> None:
        key = (state, model, json.dumps(extra, sort_keys=True, default=str))
        with self._lock:
            if key == self._said:
                return
            self._said = key
            self.notifier.status(status_line)
            if self.state_file is not None:
                self.state_file.write(
                    {"state": state, "model": model, "updated": time.time(), **extra}
                )

    def close(self) -> None:
        if self.state_file is not None:
            self.state_file.close({"state": "stopped"})
        self.notifier.close()
