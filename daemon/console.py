"""What the commands print for a person: counts in words, sizes in MB, times in local time.

The journal and the JSON logs keep their exact values; only what a person reads goes through
here, so every command says "1 file", "3 files" and "12.5 MB" the same way (#32).
"""

from __future__ import annotations


def plural(count: int, noun: str, many: str | None = None) -> str:
    """`plural(1, "file")` is "1 file"; `plural(3, "file")` is "3 files"."""
    return f"{count} {noun if count == 1 else (many or noun + 's')}"


def megabytes(size: float) -> str:
    """A size in bytes as a person reads it: "600 MB", "1.5 GB", "12 kB"."""
    for unit, scale in (("GB", 1024**3), ("MB", 1024**2), ("kB", 1024)):
        if size >= scale:
            value = size / scale
            return (
                f"{value:.0f} {unit}"
                if value >= 10 or value == int(value)
                else f"{value:.1f} {unit}"
            )
    return plural(int(size), "byte")
