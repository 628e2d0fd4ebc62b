"""Answers to a person: `explain`, `status`, `feedback` (corrections and measured precision),
`review` and `web` (the review page), `undo`, `backup`, `doctor`, `units` (systemd units)."""
