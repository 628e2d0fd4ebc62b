"""The counters the heartbeat renders while the placer adds to them (issue 34, item 5)."""

from __future__ import annotations

import threading

from sortbox.daemon.running.metrics import Metrics
from sortbox.daemon.sorting.journal import Sorted


def sorted_into(folder: str) -> Sorted:
    return Sorted(
        src="a.jpg", root="/in", sha256="0" * 64, size=1, dest=f"{folder}/a.jpg", label=folder,
        confidence=0.9,
    )  # fmt: skip


def test_rendering_while_placers_add_new_folders_never_fails() -> None:
    """The placer adds a new (event, folder) key the first time a class folder gets a
    picture, while the heartbeat iterates the same counters: without a lock that is
    "dictionary changed size during iteration", and the daemon dies."""
    metrics = Metrics()
    errors: list[BaseException] = []
    stop = threading.Event()

    def place(worker: int) -> None:
        for n in range(4_000):
            metrics.observe_batch([sorted_into(f"class-{worker}-{n}")], 0.01)

    def render() -> None:
        try:
            while not stop.is_set():
                metrics.render()
                metrics.status_line()
        except BaseException as exc:  # the failure under test
            errors.append(exc)

    renderers = [threading.Thread(target=render) for _ in range(2)]
    placers = [threading.Thread(target=place, args=(n,)) for n in range(4)]
    for thread in (*renderers, *placers):
        thread.start()
    for thread in placers:
        thread.join()
    stop.set()
    for thread in renderers:
        thread.join()
    assert not errors, errors[0]
    assert metrics.total("sorted") == 16_000
    assert metrics.render().count('event="sorted"') == 16_000
