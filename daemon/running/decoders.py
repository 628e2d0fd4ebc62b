"""The decoders: read, hash and decode each arrival, a few at a time, ahead of the model.

They take arrivals from the intake's queue and put decoded pictures on the batch queue, at a
lower thread priority than the main loop so that a burst of large pictures never starves the
model. Each owns nothing but what it holds in its hands; how many are busy is counted in
`Workload` (the main loop asks whether more pictures are on their way).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable

from sortbox.daemon.intake.files import Arrival
from sortbox.daemon.running.workload import Workload
from sortbox.daemon.settings import Settings
from sortbox.daemon.sorting.preprocess import Preprocessing
from sortbox.daemon.sorting.read import Decoded, lower_thread_priority, read_group

STOP = None  # end-of-work marker on the arrivals queue, one per decoder
StartThread = Callable[[Callable[[], None], str], threading.Thread]


class Decoders:
    def __init__(
        self,
        settings: Settings,
        arrivals: queue.Queue[Arrival | None],
        workload: Workload,
        spec: Preprocessing,
    ) -> None:
        self.settings = settings
        self.arrivals = arrivals
        # one batch ahead: decoded items hold their file's bytes until they are copied
        self.decoded: queue.Queue[Decoded] = queue.Queue(maxsize=settings.batch_size)
        self.workload = workload
        self.spec = spec  # the current model's; the main loop changes it on a switch
        self._threads: list[threading.Thread] = []

    def start(self, start_thread: StartThread) -> None:
        for n in range(self.settings.decode_workers):
            self._threads.append(start_thread(self.loop, f"decode-{n}"))

    def decode(self, arrival: Arrival) -> Decoded:
        s = self.settings
        return read_group(arrival, self.spec, s.max_pixels, s.max_file_bytes)

    def loop(self) -> None:
        """One decoder thread, until its end marker."""
        lower_thread_priority()
        while (arrival := self.arrivals.get()) is not STOP:
            with self.workload.decoding():
                self.decoded.put(self.decode(arrival))

    def more_coming(self) -> bool:
        """Pictures on their way to the batch: queued for decoding, or being decoded."""
        return self.workload.decoders_busy or not self.arrivals.empty()

    def more_queued(self) -> bool:
        """Pictures waiting for a decoder. What a decoder holds now is not waited for: it
        joins the next batch, decoded while the model runs this one, so the end of a burst
        costs the model's time for one or two pictures, not for a whole batch (#31)."""
        return not self.arrivals.empty()

    def stop(self) -> None:
        """Inputs not yet decoded stay where they are for the next start; each decoder
        finishes what it holds and ends."""
        drain(self.arrivals)
        for _ in self._threads:
            self.arrivals.put(STOP)

    def finish(
        self,
        classify: Callable[[list[Decoded]], None],
        deadline: float,
        forced: Callable[[], bool],
    ) -> None:
        """Shutdown: classify what the decoders still finish, until they have all ended, the
        deadline passes, or a second Ctrl-C says not to wait."""
        while not forced() and time.monotonic() < deadline:
            batch = drain(self.decoded)
            if batch:
                classify(batch)
            elif not any(t.is_alive() for t in self._threads):
                return
            else:
                time.sleep(0.002)  # a decoder ends within one picture; `sort` waits for it

    def redecoded(self, batch: list[Decoded]) -> list[Decoded]:
        """Decoded before a model switch that changed the preprocessing: decode again."""
        return [d if d.spec == self.spec else self.decode(d.arrival) for d in batch]


def drain(source: queue.Queue) -> list:
    taken = []
    while True:
        try:
            taken.append(source.get_nowait())
        except queue.Empty:
            return taken
