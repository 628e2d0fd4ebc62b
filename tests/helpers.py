"""What the tests share: a real sortbox home in tmp_path, tiny real ONNX models, real images,
and the daemon as a real subprocess that tells us it is ready over a real NOTIFY_SOCKET.

Fixtures built on these live in conftest.py; tests import the rest from here."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image
from pillow_heif import register_heif_opener
from sortbox.trainer.publish import publish

register_heif_opener()  # the tests write HEIC with pillow-heif's own encoder

REPO = Path(__file__).resolve().parent.parent
# real CC0 photos inside the repository (tests/data/make_photos.py made them), so every test
# that needs real pictures runs from a fresh clone (#32); ../shared is for benchmarks only
CLOTHING10 = REPO / "tests" / "data" / "clothing10"
RGB_CLASSES = ["red", "green", "blue"]


def tiny_onnx_model(path: Path, weights: np.ndarray, crop: int) -> Path:
    """Mean colour → linear layer. `weights` is 3 x classes. A real graph ORT runs."""
    classes = weights.shape[1]
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["input"], ["mean"], axes=[2, 3], keepdims=0),
            helper.make_node("MatMul", ["mean", "W"], ["scores"]),
            helper.make_node("Add", ["scores", "b"], ["logits"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, crop, crop])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])],
        initializer=[
            numpy_helper.from_array(weights.astype(np.float32), "W"),
            numpy_helper.from_array(np.zeros(classes, np.float32), "b"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def publish_rgb_model(
    models_dir: Path,
    version: str,
    classes: list[str] | None = None,
    scale: float = 20.0,
    threshold: float = 0.6,
    crop: int = 32,
    **manifest: object,
) -> Path:
    """Publish a model that sorts by dominant colour: classes name the R, G, B columns."""
    classes = classes or RGB_CLASSES
    weights = scale * np.eye(3, len(classes))
    onnx_path = models_dir.parent / f"{version}.onnx.tmp"
    models_dir.mkdir(parents=True, exist_ok=True)
    tiny_onnx_model(onnx_path, weights, crop)
    try:
        return publish(
            models_dir,
            onnx_path,
            {
                "version": version,
                "created": datetime.now(UTC),
                "classes": classes,
                "preprocessing": {"resize": crop + crop // 7, "crop": crop},
                "thresholds": dict.fromkeys(classes, threshold),
                "expected_review_rate": 0.1,
                **manifest,
            },
        )
    finally:
        onnx_path.unlink()


# -- real images -------------------------------------------------------------------------------

COLOURS = {
    "red": (230, 20, 20),
    "green": (20, 220, 30),
    "blue": (25, 30, 230),
    "grey": (127, 127, 127),
}


def picture(colour: str, seed: int = 0, size: tuple[int, int] = (96, 64)) -> Image.Image:
    """A mostly-`colour` picture with seeded noise, so every seed has different bytes."""
    rng = np.random.default_rng(seed)
    base = np.array(COLOURS[colour], dtype=np.int16)
    noise = rng.integers(-12, 13, size=(size[1], size[0], 3))
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8), "RGB")


def write_picture(path: Path, colour: str, seed: int = 0, fmt: str = "JPEG") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    picture(colour, seed).save(path, format=fmt)
    return path


def jpeg_bytes(colour: str, seed: int = 0) -> bytes:
    return encode(picture(colour, seed), "JPEG")


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def dng(preview: Image.Image, orientation: int = 1) -> bytes:
    """A real DNG as cameras write it: IFD0 holds a JPEG preview, a SubIFD the sensor's CFA data.
    Written with tifffile (JPEG encoded by imagecodecs); LibRaw reads it as any camera's DNG."""
    tifffile = pytest.importorskip("tifffile", reason="writing a DNG needs tifffile")
    pytest.importorskip("imagecodecs", reason="writing a DNG's JPEG preview needs imagecodecs")
    sensor = np.random.default_rng(0).integers(0, 4095, (64, 64), dtype=np.uint16)
    identity_matrix = (1, 1, 0, 1, 0, 1, 0, 1, 1, 1, 0, 1, 0, 1, 0, 1, 1, 1)
    buffer = io.BytesIO()
    with tifffile.TiffWriter(buffer) as tif:
        tif.write(
            np.asarray(preview),
            photometric="rgb",
            compression="jpeg",
            compressionargs={"level": 92},
            subfiletype=1,  # a reduced-resolution preview
            subifds=1,
            rowsperstrip=preview.height,
            extratags=[
                (50706, "B", 4, (1, 4, 0, 0), True),  # DNGVersion
                (271, "s", 0, "sortbox", True),  # Make
                (272, "s", 0, "test camera", True),  # Model
                (50708, "s", 0, "sortbox test camera", True),  # UniqueCameraModel
                (0x0112, "H", 1, orientation, True),
            ],
        )
        tif.write(
            sensor,
            photometric=32803,  # CFA
            subfiletype=0,
            extratags=[
                (33421, "H", 2, (2, 2), True),  # CFARepeatPatternDim
                (33422, "B", 4, (0, 1, 1, 2), True),  # CFAPattern: RGGB
                (50721, "2i", 9, identity_matrix, True),  # ColorMatrix1
                (50717, "H", 1, 4095, True),  # WhiteLevel
            ],
        )
    return buffer.getvalue()


# -- a sortbox home ----------------------------------------------------------------------------


@dataclass
class Home:
    root: Path
    config: Path
    journal_name: str = "journal.jsonl"

    @property
    def inbox(self) -> Path:
        return self.root / "inbox"

    @property
    def library(self) -> Path:
        return self.root / "library"

    @property
    def journal(self) -> Path:
        return self.root / self.journal_name

    @property
    def models(self) -> Path:
        return self.root / "models"

    def events(self, kind: str | None = None) -> list[dict]:
        if not self.journal.exists():
            return []
        rows = []
        for line in self.journal.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if kind is None or row.get("event") == kind:
                rows.append(row)
        return rows

    def file_events(self) -> list[dict]:
        kinds = {"sorted", "review", "duplicate", "rejected"}
        return [e for e in self.events() if e["event"] in kinds]

    def library_files(self) -> list[Path]:
        if not self.library.exists():
            return []
        # pictures only: library/.sortbox holds sortbox's lock and state
        return sorted(
            p
            for p in self.library.rglob("*")
            if p.is_file() and not p.relative_to(self.library).parts[0].startswith(".")
        )


def make_home(root: Path, **overrides: object) -> Home:
    settings = {
        "inbox": "inbox",
        "library": "library",
        "journal": "journal.jsonl",
        "models_dir": "models",
        "quiet_period_s": 0.2,
        # a bad picture just written waits this long for the rest before it is rejected
        "unfinished_wait_s": 1.0,
        "rescan_interval_s": 30.0,
        "poll_interval_s": 0.3,
        "inference_threads": 1,
        # no spot checks unless a test is about them: colour tests expect their folder
        "audit_rate": 0.0,
        **overrides,
    }
    lines = [f"{key} = {json.dumps(value)}" for key, value in settings.items()]
    config = root / "config.toml"
    config.write_text("\n".join(lines) + "\n", encoding="utf-8")
    (root / "inbox").mkdir(exist_ok=True)
    # as `sortbox init` does: a missing library is an error unless create_folders (#32)
    (root / str(settings["library"])).mkdir(parents=True, exist_ok=True)
    return Home(root, config, str(settings["journal"]))


# -- the daemon as a real subprocess -----------------------------------------------------------


def sortbox(
    *args: str, config: Path, timeout: float = 120, env: dict | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sortbox.daemon.cli", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        errors="surrogateescape",  # file names in the output are bytes, as the OS has them
        timeout=timeout,
        env={**os.environ, **(env or {})},
        cwd=config.parent,
    )


class Daemon:
    """`sortbox run` in a subprocess; `start()` returns once it has sent READY=1."""

    def __init__(
        self, home: Home, extra_env: dict | None = None, as_user: list[str] | None = None
    ) -> None:
        self.home = home
        self.extra_env = extra_env or {}
        self.as_user = as_user or []  # e.g. setpriv ... to run the daemon unprivileged
        self.process: subprocess.Popen | None = None
        self.messages: list[str] = []
        self.log = home.root / "daemon.log"

    def start(self, timeout: float = 60) -> Daemon:
        address = str(self.home.root / f"notify-{time.monotonic_ns()}.sock")
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.bind(address)
        os.chmod(address, 0o777)  # the daemon may run as another user
        self._socket.settimeout(0.2)
        env = {**os.environ, "NOTIFY_SOCKET": address, "WATCHDOG_USEC": "2000000", **self.extra_env}
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    *self.as_user,
                    sys.executable,
                    "-m",
                    "sortbox.daemon.cli",
                    "run",
                    "--config",
                    str(self.home.config),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.home.root,
            )
        self.wait_message(lambda m: "READY=1" in m, timeout)
        return self

    def receive(self) -> None:
        while True:
            try:
                self.messages.append(self._socket.recv(4096).decode())
            except (TimeoutError, BlockingIOError):
                return

    def wait_message(self, predicate: Callable[[str], bool], timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.receive()
            for message in self.messages:
                if predicate(message):
                    return message
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"daemon exited {self.process.returncode}:\n{self.log_text()}")
        raise AssertionError(
            f"no matching notify message in {timeout}s; got {self.messages}\n{self.log_text()}"
        )

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        code = self.process.wait(timeout=timeout)
        self.receive()
        self._socket.close()
        return code

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()  # SIGKILL: no clean-up of any kind
        self.process.wait(timeout=10)
        self._socket.close()


def wait_until(
    predicate: Callable[[], object], timeout: float = 20, what: str = "condition"
) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
