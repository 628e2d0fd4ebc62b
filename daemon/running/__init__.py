"""The parts the long-running service composes, each the only owner of its state.

`intakes` (the watched inbox, or the files `sort` was given), `placer` (the only writer of the
library, its index and journal), `model_slot` (the model in use, switched without a restart),
`workload` (what is under way), `metrics`, `notify` and `state_file` (what the service says to
systemd and to `sortbox status`), `batch` and `heap` (micro-batch sizing, memory).
"""
