"""Write the manual's reference pages from the code, so they cannot drift from it:

- docs/reference/settings.md from `Settings` (every key of config.toml, its type, default,
  bounds, and the comment the code gives it);
- docs/reference/journal-events.md from the journal's event models (every event, every field).

    python docs/gen_reference.py          # write them
    python docs/gen_reference.py --check  # exit 1 if they differ from what the code says

tests/test_docs.py runs the check.
"""

from __future__ import annotations

import inspect
import re
import sys
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from sortbox.daemon.settings import Settings
from sortbox.daemon.sorting import journal

HERE = Path(__file__).resolve().parent
PAGES = {
    "settings.md": lambda: settings_page(),
    "journal-events.md": lambda: journal_page(),
}


def field_comments(cls: type) -> dict[str, str]:
    """The comment the source gives each field: the `#` lines just above it, or at its end."""
    comments: dict[str, str] = {}
    above: list[str] = []
    for line in inspect.getsource(cls).splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            above.append(stripped.lstrip("#").strip())
            continue
        match = re.match(r"^    (\w+): [^=]+?(?:=.*?)?(?:#\s*(.*))?$", line)
        if match and not stripped.startswith(("def ", "@", "return")):
            text = " ".join([*above, match[2] or ""]).strip()
            if text:
                comments[match[1]] = text
        above = []
    return comments


def describe_type(annotation: Any) -> str:
    text = repr(annotation) if not isinstance(annotation, type) else annotation.__name__
    text = re.sub(r"typing\.|pathlib\.|collections\.abc\.|sortbox\.daemon\.\w+\.", "", text)
    text = text.replace("NoneType", "None").replace("PosixPath", "Path")
    text = re.sub(r"Annotated\[(\w+), .*\]", r"\1", text)
    return text.replace("|", "\\|")  # inside a table cell


def describe_default(info: FieldInfo) -> str:
    if info.default_factory is not None:
        return "computed" if info.default_factory.__name__ != "<lambda>" else "see config.toml"
    if info.is_required():
        return "required"
    default = info.default
    if isinstance(default, str | Path):
        return f'`"{default}"`'
    if isinstance(default, bool):
        return f"`{str(default).lower()}`"
    if default is None:
        return "none"
    return f"`{default}`"


def bounds(info: FieldInfo) -> str:
    parts = []
    for rule in info.metadata:
        for name, sign in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")):
            value = getattr(rule, name, None)
            if value is not None:
                parts.append(f"{sign} {value}")
    return ", ".join(parts)


def settings_page() -> str:
    lines = [
        "# Settings reference",
        "",
        "Generated from `daemon/settings.py` by `docs/gen_reference.py`: every key of",
        "`config.toml`, as the code defines it. What each is for, with examples, is in",
        "[Configuration](../configuration.md). A key in a section, such as `train.seed`, is",
        "written under `[train]` in config.toml and set by `SORTBOX_TRAIN__SEED` in the",
        "environment; a top-level key `batch_size` by `SORTBOX_BATCH_SIZE`.",
        "",
    ]
    sections: list[tuple[str, type[BaseModel]]] = [("", Settings)]
    for name, info in Settings.model_fields.items():
        if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
            sections.append((name, info.annotation))
    for prefix, model in sections:
        lines += [
            f"## {'[' + prefix + ']' if prefix else 'Top level'}",
            "",
            "| key | type | default | bounds | what the code says |",
            "|---|---|---|---|---|",
        ]
        comments = field_comments(model)
        for name, info in model.model_fields.items():
            if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
                continue
            key = f"{prefix}.{name}" if prefix else name
            comment = (info.description or comments.get(name, "")).replace("|", "\\|")
            comment = re.sub(r"\s+", " ", comment)
            lines.append(
                f"| `{key}` | `{describe_type(info.annotation)}` | {describe_default(info)} "
                f"| {bounds(info)} | {comment} |"
            )
        lines.append("")
    return "\n".join(lines)


def journal_page() -> str:
    lines = [
        "# Journal events",
        "",
        "Generated from `daemon/sorting/journal.py` by `docs/gen_reference.py`: every event the",
        "journal holds, one JSON object a line, with every field. What the journal is for, and",
        "why not to rotate it, is in [The journal](../journal.md).",
        "",
    ]
    events = typing.get_args(typing.get_args(journal.Event)[0])
    for event in events:
        name = event.model_fields["event"].default
        doc = inspect.getdoc(event) if event.__doc__ else None
        lines += [f"## `{name}`", ""]
        if doc:
            lines += [doc.split("\n\n")[0].replace("\n", " "), ""]
        comments: dict[str, str] = {}
        for cls in reversed(event.__mro__):
            if isinstance(cls, type) and issubclass(cls, BaseModel) and cls is not BaseModel:
                comments.update(field_comments(cls))
        lines += ["| field | type | when absent | meaning |", "|---|---|---|---|"]
        for field, info in event.model_fields.items():
            meaning = (info.description or comments.get(field, "")).replace("\n", " ")
            meaning = re.sub(r"\s+", " ", meaning).replace("|", "\\|")
            lines.append(
                f"| `{field}` | `{describe_type(info.annotation)}` | {describe_default(info)} "
                f"| {meaning} |"
            )
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale = []
    for name, make in PAGES.items():
        path = HERE / "reference" / name
        text = make() + "\n"
        if check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(str(path))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    if stale:
        print("out of date (run python docs/gen_reference.py): " + ", ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
