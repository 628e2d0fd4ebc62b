"""Stage 1, intake: which files are in the inbox, and when each is complete and safe to read.

`files` (identity, opening beneath a root without following links), `watch` (the inotify
observer), `stability` (a file is read once it stopped changing), `group` (a picture travels
with its RAW file and sidecars).
"""
