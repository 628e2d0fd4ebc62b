"""Naming and placing copies: library names, never overwriting, class names."""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from sortbox.daemon.sorting.copies import (
    LIBRARY_NAME,
    Scratch,
    _write_direct,
    copy_into,
    library_name,
)
from sortbox.daemon.sorting.manifest import check_class_name

# -- naming and placement ------------------------------------------------------------------------

SHA = "ab" * 32


@pytest.mark.parametrize(
    ("original", "expected"),
    [
        ("IMG_0001.JPG", "IMG_0001.abababababab.jpg"),
        ("holiday.photo.Jpeg", "holiday.photo.abababababab.jpeg"),
        ("no_extension", "no_extension.abababababab"),
        (".hidden.png", "_hidden.abababababab.png"),
        ("line\nbreak.png", "line_break.abababababab.png"),
        ("weird.ext-with-dash", "weird.ext-with-dash.abababababab"),
        # what exFAT, NTFS and Windows refuse: a library may live on a USB disk
        ('IMG:0001 "best?" <1|2*3>.jpg', "IMG_0001 _best__ _1_2_3_.abababababab.jpg"),
        ("CON.jpg", "_CON.abababababab.jpg"),
        ("lpt1.scan.png", "_lpt1.scan.abababababab.png"),
        ("console.jpg", "console.abababababab.jpg"),
        ("photo.jpg. ", "photo.abababababab.jpg"),
    ],
)
def test_library_names(original: str, expected: str) -> None:
    assert library_name(original, SHA) == expected
    assert LIBRARY_NAME.match(expected)


def test_long_names_are_cut_to_fit_the_filesystem() -> None:
    name = library_name("é" * 300 + ".jpg", SHA)
    assert len(name.encode()) < 255 and name.endswith(".abababababab.jpg")


def test_copy_never_overwrites_other_content(tmp_path: Path) -> None:
    source = tmp_path / "in.jpg"
    source.write_bytes(b"new content")
    sha = hashlib.sha256(b"new content").hexdigest()
    folder = tmp_path / "lib"
    folder.mkdir()
    squatter = folder / library_name("in.jpg", sha)
    squatter.write_bytes(b"someone else's file")
    final = copy_into(source, folder, "in.jpg", sha)
    assert final != squatter and final.read_bytes() == b"new content"
    assert squatter.read_bytes() == b"someone else's file"
    assert copy_into(source, folder, "in.jpg", sha) == final  # identical content: no second copy
    assert sorted(p.name for p in folder.iterdir()) == sorted([squatter.name, final.name])


# sizes around the 4096-byte blocks direct writes are made of, and past the scratch kept
@pytest.mark.parametrize("size", [1, 4095, 4096, 4097, 3 * 4096, 2_000_003, (8 << 20) + 5])
def test_copies_written_around_the_page_cache_are_the_very_bytes(tmp_path: Path, size: int) -> None:
    content = os.urandom(size)
    source = tmp_path / "in.jpg"
    source.write_bytes(content)
    sha = hashlib.sha256(content).hexdigest()
    folder = tmp_path / "lib"
    folder.mkdir()
    scratch = Scratch()
    final = copy_into(source, folder, "in.jpg", sha, content, scratch=scratch)
    if size >= 2 * 4096 and shutil.which("fincore") and not _in_memory(folder):
        # before anything reads it back: only the last part block went through the page
        # cache (fincore asks mincore(2) which pages of the file are in memory)
        shown = subprocess.run(
            ["fincore", "--bytes", "--noheadings", "--output", "RES", str(final)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        assert int(shown.stdout) <= 4096
    assert final.read_bytes() == content
    assert [p.name for p in folder.iterdir()] == [final.name]  # no temporary file left


@pytest.mark.parametrize("size", [1, (1 << 20) - 1, 1 << 20, (1 << 20) + 1, 2_000_003])
def test_copies_written_through_the_page_cache_in_pieces_are_the_very_bytes(
    tmp_path: Path, size: int
) -> None:
    content = os.urandom(size)
    source = tmp_path / "in.jpg"
    source.write_bytes(content)
    folder = tmp_path / "lib"
    folder.mkdir()
    final = copy_into(source, folder, "in.jpg", hashlib.sha256(content).hexdigest(), content)
    assert final.read_bytes() == content
    assert [p.name for p in folder.iterdir()] == [final.name]


def _in_memory(folder: Path) -> bool:
    """tmpfs: a file's pages are the page cache, however it was written."""
    kind = subprocess.run(["stat", "-f", "-c", "%T", str(folder)], capture_output=True, text=True)
    return kind.stdout.strip() in ("tmpfs", "ramfs")


def test_a_direct_write_the_kernel_refuses_goes_through_the_cache(tmp_path: Path) -> None:
    """A real EINVAL: direct writes at a file offset off the block size are refused."""
    content = os.urandom(5 * 4096 + 7)
    target = tmp_path / "copy"
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_DIRECT)
    except OSError:
        pytest.skip("this filesystem has no direct I/O")
    try:
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_DIRECT)
        os.write(fd, b"head")  # the offset is now 4: no direct write is possible from here
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_DIRECT)
        _write_direct(fd, content, Scratch())
    finally:
        os.close(fd)
    assert target.read_bytes() == b"head" + content


@pytest.mark.parametrize("name", ["../escape", "a/b", "", ".hidden", "needs_review", "tab\there"])
def test_class_names_that_are_not_plain_folders_are_refused(name: str) -> None:
    with pytest.raises(ValueError):
        check_class_name(name)
