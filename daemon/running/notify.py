"""systemd's notify protocol (sd_notify(3)): one datagram per message to $NOTIFY_SOCKET.

A few lines, so no library: READY=1 once the model is loaded and the inbox watched, STATUS=
with live counters, WATCHDOG=1 pings, STOPPING=1 on shutdown. Without $NOTIFY_SOCKET every
call is a no-op, so the same code runs in a terminal.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time

from sortbox.daemon.running.state_file import StateFile


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
