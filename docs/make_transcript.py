"""Write docs/first-hour.md: what a person sees in their first hour, from the real commands.

    .venv/bin/python docs/make_transcript.py

In a new folder it runs `sortbox init`, then `sort` on 40 real photos from the tests
(tests/data/clothing10) and a text file, `status`, `explain` and `undo --dry-run`, and writes
each command with its output as it came (stdout and stderr together). Needs the train extra
(`sortbox init` makes the default model). Run it again after changing what a command prints.
"""

from __future__ import annotations

import fcntl
import os
import pty
import shutil
import struct
import subprocess
import sys
import tempfile
import termios
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PHOTOS = REPO / "tests" / "data" / "clothing10"
SORTBOX = Path(sys.executable).parent / "sortbox"
OUT = REPO / "docs" / "first-hour.md"
SHOWN_AS = "~/photos"  # the temporary folder, as the transcript shows it


def on_a_terminal(command: list[str], cwd: Path, env: dict[str, str]) -> str:
    """What `command` shows in a terminal of 100 columns (a pseudo-terminal): its stdout and
    stderr as they came, the progress bar's redraws reduced to its last state."""
    master, child = pty.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 100, 0, 0))
    process = subprocess.Popen(command, stdin=child, stdout=child, stderr=child, cwd=cwd, env=env)
    os.close(child)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the command ended
            break
        if not chunk:
            break
        chunks.append(chunk)
    process.wait(timeout=600)
    os.close(master)
    text = b"".join(chunks).decode(errors="replace").replace("\r\n", "\n")
    return "\n".join(line.split("\r")[-1] for line in text.split("\n"))


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="sortbox-transcript-") as folder:
        root = Path(folder)
        env = {k: v for k, v in os.environ.items() if not k.startswith("SORTBOX_")}

        def run(*args: str) -> str:
            output = on_a_terminal([str(SORTBOX), *args], root, env)
            shown = output.replace(str(root), SHOWN_AS).rstrip()
            return f"$ sortbox {' '.join(args)}\n{shown}\n"

        steps = [run("init")]
        inbox = root / "inbox"
        for folder_ in sorted(p for p in PHOTOS.iterdir() if p.is_dir()):
            for photo in sorted(folder_.glob("*.jpg"))[:4]:  # 4 of each of the 10 classes
                shutil.copy(photo, inbox / f"{folder_.name}-{photo.name[:8]}.jpg")
        (inbox / "shopping-list.txt").write_text("milk, bread\n")
        steps += [run("sort", "inbox"), run("sort", "inbox"), run("status")]
        first = sorted(inbox.glob("hat-*.jpg"))[0].name
        steps += [run("explain", f"inbox/{first}"), run("undo", "--dry-run", "--last", "3")]
    text = (
        "# The first hour\n\n"
        "What sortbox prints for a new user: `sortbox init` in an empty folder, then `sort` on\n"
        "40 real photos (four of each of ten kinds of clothing, `tests/data/clothing10`) and a\n"
        "text file, `sort` again, `status`, `explain` and `undo --dry-run`. The default model\n"
        "knows everyday folders, so clothing goes to `clothing`, or to `needs_review` where it\n"
        "is not sure. Made by `docs/make_transcript.py` from the real commands (stdout and\n"
        "stderr together, in a terminal, where the progress bar ends as it was last drawn).\n\n"
        "```console\n" + "\n".join(steps) + "```\n"
    )
    OUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
