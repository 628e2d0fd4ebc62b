"""RAW+JPEG pairs and sidecars travel together: decided once, from the picture, into one folder."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from helpers import Daemon, dng, encode, make_home, picture, publish_rgb_model, sortbox, wait_until
from sortbox.daemon.intake.files import Arrival, Identity
from sortbox.daemon.intake.group import COMPANION_OF, Grouper, group_key, sidecar_name

pytest.importorskip("rawpy", reason="RAW support is the optional extra sortbox[raw]")


def arrival(path: str) -> Arrival:
    return Arrival(Path(path), Path("/in"), Identity(1, 1, 1))


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_group_keys_and_sidecar_names() -> None:
    keys = {group_key(Path(p)) for p in ("/in/IMG_1.JPG", "/in/img_1.cr2", "/in/IMG_1.CR2.xmp")}
    assert keys == {(Path("/in"), "img_1")}
    assert group_key(Path("/in/IMG_1.JPG")) != group_key(Path("/in/other/IMG_1.JPG"))
    assert sidecar_name("IMG_1.CR2.xmp", "IMG_1.CR2", "IMG_1.0123456789ab.cr2") == (
        "IMG_1.0123456789ab.cr2.xmp"
    )
    assert sidecar_name("IMG_1.XMP", "IMG_1.CR2", "IMG_1.0123456789ab.cr2") == (
        "IMG_1.0123456789ab.xmp"
    )


def test_grouper_waits_only_where_a_partner_is_on_its_way() -> None:
    clock = Clock()
    grouper = Grouper(pair_wait_s=3.0, clock=clock)
    # a lone picture goes at once
    grouper.add(arrival("/in/solo.jpg"))
    assert [a.path.name for a in grouper.take_ready()] == ["solo.jpg"]
    # a picture whose RAW file is still being written waits for it ...
    grouper.noticed(Path("/in/IMG_1.CR2"))
    grouper.add(arrival("/in/IMG_1.JPG"))
    assert grouper.take_ready() == []
    grouper.add(arrival("/in/IMG_1.CR2"))
    (group,) = grouper.take_ready()
    assert group.path.name == "IMG_1.JPG"
    assert [c.path.name for c in group.companions] == ["IMG_1.CR2"]
    # ... a RAW file waits for its picture, at most pair_wait_s, then goes alone
    grouper.add(arrival("/in/IMG_2.NEF"))
    clock.now += 2.9
    assert grouper.take_ready() == []
    clock.now += 0.2
    (alone,) = grouper.take_ready()
    assert alone.path.name == "IMG_2.NEF" and alone.companions == ()
    # a sidecar that comes first is picked up by its picture
    grouper.add(arrival("/in/IMG_3.AAE"))
    grouper.add(arrival("/in/IMG_3.HEIC"))
    (group,) = grouper.take_ready()
    assert [c.path.name for c in group.companions] == ["IMG_3.AAE"]
    # a partner noticed that never completes (deleted half-way) holds nobody past the wait
    grouper.noticed(Path("/in/IMG_4.DNG"))
    grouper.add(arrival("/in/IMG_4.JPG"))
    clock.now += 3.1
    assert [a.path.name for a in grouper.take_ready()] == ["IMG_4.JPG"]
    assert grouper.holding == 0


def write_camera_import(folder: Path) -> None:
    """A camera card copied in: the RAW first (large, slow), then its JPEG, then a sidecar.
    The RAW's own preview is blue while the JPEG is red: if the RAW went where its preview
    says, it would land in blue/."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "IMG_0001.DNG").write_bytes(dng(picture("blue", 1, (160, 120))))
    time.sleep(0.3)
    (folder / "IMG_0001.JPG").write_bytes(encode(picture("red", 1, (160, 120)), "JPEG"))
    (folder / "IMG_0001.xmp").write_bytes(b"<x:xmpmeta>rating 5</x:xmpmeta>")
    (folder / "IMG_0001.JPG.xmp").write_bytes(b"<x:xmpmeta>for the JPEG</x:xmpmeta>")
    (folder / "IMG_0002.HEIC").write_bytes(encode(picture("green", 2), "HEIF"))
    (folder / "IMG_0002.AAE").write_bytes(b"<plist>edits</plist>")


def check_pairs_placed(events: list[dict], library: Path, prefix: str = "") -> None:
    by_src = {e["src"]: e for e in events}
    jpeg, raw = by_src[f"{prefix}IMG_0001.JPG"], by_src[f"{prefix}IMG_0001.DNG"]
    assert jpeg["event"] == "sorted" and jpeg["dest"].startswith("red/")
    assert raw["event"] == "sorted" and raw["dest"].startswith("red/")  # followed, not blue
    assert raw["reason"] == f"{COMPANION_OF}{prefix}IMG_0001.JPG"
    assert raw["label"] == jpeg["label"] and raw["confidence"] == jpeg["confidence"]
    raw_name = Path(raw["dest"]).name  # IMG_0001.<hash>.dng
    jpeg_name = Path(jpeg["dest"]).name
    # photo tools pair sidecars by name: IMG_0001.xmp went with the RAW, .JPG.xmp with the JPEG
    assert by_src[f"{prefix}IMG_0001.xmp"]["dest"] == f"red/{raw_name.rsplit('.', 1)[0]}.xmp"
    assert by_src[f"{prefix}IMG_0001.JPG.xmp"]["dest"] == f"red/{jpeg_name}.xmp"
    heic = by_src[f"{prefix}IMG_0002.HEIC"]
    assert heic["dest"].startswith("green/")
    assert by_src[f"{prefix}IMG_0002.AAE"]["dest"].startswith("green/IMG_0002.")
    for event in events:
        assert (library / event["dest"]).is_file()


@pytest.mark.parametrize("on_success", ["keep", "delete"])
def test_the_daemon_places_a_camera_import_together(tmp_path: Path, on_success: str) -> None:
    home = make_home(tmp_path, pair_wait_s=2.0, on_success=on_success)
    publish_rgb_model(home.models, "v1")
    daemon = Daemon(home).start()
    try:
        write_camera_import(home.inbox / "card")
        (home.inbox / "card" / "lonely.xmp").write_bytes(b"<x:xmpmeta/>")
        (home.inbox / "card" / "IMG_0009.DNG").write_bytes(dng(picture("blue", 9, (160, 120))))
        wait_until(lambda: len(home.file_events()) == 8, 30, "8 files placed")
    finally:
        daemon.stop()
    events = home.file_events()
    check_pairs_placed(events, home.library, "card/")
    by_src = {e["src"]: e for e in events}
    # no picture came for these within pair_wait_s: the RAW file is sorted from its preview,
    # the sidecar rejected, saying why
    assert by_src["card/IMG_0009.DNG"]["dest"].startswith("blue/")
    lonely = by_src["card/lonely.xmp"]
    assert lonely["event"] == "rejected" and "sidecar" in lonely["reason"]
    left = sorted(p.name for p in (home.inbox / "card").iterdir())
    assert left == ([] if on_success == "delete" else sorted(p.split("/")[1] for p in by_src))


def test_sort_groups_without_waiting(tmp_path: Path) -> None:
    home = make_home(tmp_path)
    publish_rgb_model(home.models, "v1")
    write_camera_import(tmp_path / "card")
    result = sortbox("sort", str(tmp_path / "card"), config=home.config)
    assert result.returncode == 0, result.stderr
    check_pairs_placed(home.file_events(), home.library)
    assert len(home.file_events()) == 6


def test_companions_that_come_late_follow_their_picture(tmp_path: Path) -> None:
    """An editor writes IMG_0005.xmp minutes after the import; a slow copy brings the RAW
    file after its JPEG was already placed (and, on_success = "delete", removed). Neither is
    rejected or classified on its own: they go where the picture went."""
    home = make_home(tmp_path, pair_wait_s=0.3, on_success="delete")
    publish_rgb_model(home.models, "v1")
    daemon = Daemon(home).start()
    try:
        (home.inbox / "IMG_0005.JPG").write_bytes(encode(picture("red", 5, (160, 120)), "JPEG"))
        wait_until(lambda: len(home.file_events()) == 1, 30, "the picture placed")
        time.sleep(1.0)  # well past pair_wait_s
        # the RAW's own preview is blue: were it classified alone, it would land in blue/
        (home.inbox / "IMG_0005.DNG").write_bytes(dng(picture("blue", 5, (160, 120))))
        wait_until(lambda: len(home.file_events()) == 2, 30, "the RAW file placed")
        (home.inbox / "IMG_0005.xmp").write_bytes(b"<x:xmpmeta>edited later</x:xmpmeta>")
        wait_until(lambda: len(home.file_events()) == 3, 30, "the sidecar placed")
    finally:
        daemon.stop()
    by_src = {e["src"]: e for e in home.file_events()}
    jpeg, raw, xmp = (by_src[f"IMG_0005.{ext}"] for ext in ("JPG", "DNG", "xmp"))
    assert jpeg["dest"].startswith("red/")
    for late in (raw, xmp):
        assert late["event"] == "sorted" and late["dest"].startswith("red/"), late
        assert late["reason"] == f"{COMPANION_OF}IMG_0005.JPG"
        assert late["label"] == jpeg["label"]
    # the sidecar pairs with the RAW copy, as editors write IMG_0005.xmp for the RAW file
    assert xmp["dest"] == f"red/{Path(raw['dest']).name.rsplit('.', 1)[0]}.xmp"
    assert list(home.inbox.iterdir()) == []


def test_a_late_sidecar_whose_picture_folder_became_a_link_goes_to_review(tmp_path: Path) -> None:
    """The admin moved library/red to a bigger disk and linked it back: its pictures are
    still there, but sortbox writes through no link. The late sidecar goes to review, saying
    why, and nothing pauses."""
    home = make_home(tmp_path, pair_wait_s=0.3)
    publish_rgb_model(home.models, "v1")
    daemon = Daemon(home).start()
    try:
        (home.inbox / "IMG_0007.JPG").write_bytes(encode(picture("red", 7, (160, 120)), "JPEG"))
        wait_until(lambda: len(home.file_events()) == 1, 30, "the picture placed")
        bigger_disk = tmp_path / "bigger-disk"
        bigger_disk.mkdir()
        (home.library / "red").rename(bigger_disk / "red")
        (home.library / "red").symlink_to(bigger_disk / "red")
        (home.inbox / "IMG_0007.xmp").write_bytes(b"<x:xmpmeta>edited later</x:xmpmeta>")
        wait_until(lambda: len(home.file_events()) == 2, 30, "the sidecar placed")
    finally:
        assert daemon.stop() == 0
    xmp = {e["src"]: e for e in home.file_events()}["IMG_0007.xmp"]
    assert xmp["event"] == "review" and xmp["dest"].startswith("needs_review/"), xmp
    assert xmp["reason"].startswith(f"{COMPANION_OF}IMG_0007.JPG; ") and "symlink" in xmp["reason"]
    assert [p.name for p in (bigger_disk / "red").iterdir()] == [
        Path(home.file_events()[0]["dest"]).name
    ]
    assert '"event": "paused"' not in daemon.log_text()


def quicktime_movie(size: int) -> bytes:
    """The shape of a Live Photo's video: a QuickTime `ftyp` box, then `size` bytes of media."""
    ftyp = (20).to_bytes(4, "big") + b"ftypqt  " + b"\0\0\0\0" + b"qt  "
    return ftyp + (size + 8).to_bytes(4, "big") + b"mdat" + bytes(range(256)) * (size // 256)


def test_a_live_photos_video_goes_with_its_still_and_a_lone_video_says_what_it_is(
    tmp_path: Path,
) -> None:
    """An iPhone import: IMG_0001.HEIC and its Live Photo video IMG_0001.MOV (40 MB: hashed
    and copied as a stream, never held whole). The video used to be rejected as not an
    image, into library/rejected/, away from its still."""
    home = make_home(tmp_path, pair_wait_s=1.0)
    publish_rgb_model(home.models, "v1")
    video = quicktime_movie(40 << 20)
    daemon = Daemon(home).start()
    try:
        (home.inbox / "IMG_0001.HEIC").write_bytes(encode(picture("green", 1), "HEIF"))
        (home.inbox / "IMG_0001.MOV").write_bytes(video)
        (home.inbox / "clip.mov").write_bytes(quicktime_movie(4096))
        wait_until(lambda: len(home.file_events()) == 3, 30, "three files decided")
    finally:
        daemon.stop()
    by_src = {e["src"]: e for e in home.file_events()}
    still, motion = by_src["IMG_0001.HEIC"], by_src["IMG_0001.MOV"]
    assert still["dest"].startswith("green/") and motion["event"] == "sorted"
    assert motion["dest"] == still["dest"].rsplit(".", 1)[0] + ".mov"
    assert motion["reason"] == f"{COMPANION_OF}IMG_0001.HEIC"
    assert (home.library / motion["dest"]).read_bytes() == video
    lone = by_src["clip.mov"]
    assert lone["event"] == "rejected" and lone["reason"].startswith("a video, and sortbox sorts")
