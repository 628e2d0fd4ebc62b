"""Naming and placing copies: library names, never overwriting, class names."""

from __future__ import annotations

from pathlib import Path

import pytest
from sortbox.daemon.sorting.copies import LIBRARY_NAME, copy_into, library_name
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
    import hashlib

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


@pytest.mark.parametrize("name", ["../escape", "a/b", "", ".hidden", "needs_review", "tab\there"])
def test_class_names_that_are_not_plain_folders_are_refused(name: str) -> None:
    with pytest.raises(ValueError):
        check_class_name(name)
