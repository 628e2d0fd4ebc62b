"""The parts the long-running service composes, each the only owner of its state.

`intakes` (the watched inbox, or the files `sort` was given), `decoders` (read, hash and decode
ahead of the model), `placer` (the only writer of the library, its index and journal),
`model_slot` (the model in use, switched without a restart), `reload` (what SIGHUP applies),
`workload` (what is under way), `health` (the state said to systemd and `sortbox status`, and
the watchdog), `metrics`, `notify` and `state_file` (how it is said), `batch` and `heap`
(micro-batch sizing, memory).
"""
