"""`build_model(name, num_classes)`: the one door to every architecture.

Every model takes cached features [batch, n_mels, n_frames] in [0, 1] and returns logits
[batch, num_classes]. The input adapter (resize to the architecture's input size, 1 -> 3
channels, ImageNet normalisation for torchvision backbones) lives inside the model, so it is
trained, exported to ONNX and run on Kaggle as one piece.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

# Square input sizes of the seed experiments; any (height, width) >= the minimum also works.
DEFAULT_INPUT_HW = {"simple_cnn": (128, 128), "resnet18": (224, 224), "inception_v3": (299, 299),
                    "efficientnet_b0": (224, 224)}
# Inception's auxiliary head (used in training) needs the full 299 px.
MIN_INPUT_HW = {"simple_cnn": (8, 8), "resnet18": (32, 32), "inception_v3": (299, 299), "efficientnet_b0": (32, 32)}
MODEL_NAMES = tuple(DEFAULT_INPUT_HW)
DEFAULT_MODELS = ("simple_cnn", "resnet18", "inception_v3")  # what `make train` trains
PRETRAINED_AVAILABLE = ("resnet18", "inception_v3", "efficientnet_b0")  # torchvision ImageNet weights
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class SimpleCNN(nn.Module):
    """The design notes' small CNN: conv 32/64/128, each followed by a 2x2 max-pool, fc 256,
    dropout 0.5. BatchNorm after each conv keeps it trainable at the seed's learning rates."""

    def __init__(self, num_classes: int, input_hw: tuple[int, int] = (128, 128)):
        super().__init__()
        layers, c_in = [], 1
        for c_out in (32, 64, 128):
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            c_in = c_out
        self.features = nn.Sequential(*layers)
        flat = 128 * (input_hw[0] // 8) * (input_hw[1] // 8)
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(flat, 256), nn.ReLU(inplace=True), nn.Dropout(0.5), nn.Linear(256, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, 1, H, W] -> [B, classes]
        return self.classifier(self.features(x))


class MelClassifier(nn.Module):
    """Features [B, n_mels, n_frames] -> resize to input_hw -> backbone -> logits [B, classes].

    In training mode Inception returns (logits, aux_logits); in eval mode every model returns
    logits only, which is what export sees.
    """

    def __init__(self, name: str, backbone: nn.Module, input_hw: tuple[int, int], in_chans: int):
        super().__init__()
        self.name = name
        self.backbone = backbone
        self.input_hw = tuple(input_hw)
        self.in_chans = in_chans
        mean = torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1)
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)

    def adapt(self, feats: torch.Tensor) -> torch.Tensor:
        x = feats.unsqueeze(1)  # [B, 1, n_mels, n_frames]
        if tuple(x.shape[-2:]) != self.input_hw:
            x = F.interpolate(x, size=self.input_hw, mode="bilinear", align_corners=False)
        if self.in_chans == 3:  # grey image for an ImageNet backbone
            x = (x.expand(-1, 3, -1, -1) - self.mean) / self.std
        return x

    def forward(self, feats: torch.Tensor):
        out = self.backbone(self.adapt(feats))
        if isinstance(out, tuple) and not self.training:  # torchvision's InceptionOutputs
            return out[0]
        return out


def build_model(
    name: str, num_classes: int, *, pretrained: bool = False, input_hw: tuple[int, int] | None = None
) -> MelClassifier:
    """Build an architecture by name. `pretrained` loads torchvision's ImageNet weights."""
    if name not in DEFAULT_INPUT_HW:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    input_hw = tuple(input_hw or DEFAULT_INPUT_HW[name])
    lo = MIN_INPUT_HW[name]
    if input_hw[0] < lo[0] or input_hw[1] < lo[1]:
        raise ValueError(f"{name} needs an input of at least {lo[0]}x{lo[1]} px, got {input_hw[0]}x{input_hw[1]}")
    if name == "simple_cnn":
        if pretrained:
            raise ValueError("simple_cnn has no pretrained weights; pass pretrained=False")
        return MelClassifier(name, SimpleCNN(num_classes, input_hw), input_hw, in_chans=1)
    backbone = _torchvision_backbone(name, num_classes, pretrained)
    return MelClassifier(name, backbone, input_hw, in_chans=3)


def _torchvision_backbone(name: str, num_classes: int, pretrained: bool) -> nn.Module:
    import torchvision.models as tvm

    if name == "resnet18":
        weights = imagenet_weights("resnet18") if pretrained else None
        net = _with_weights(tvm.resnet18, weights)
        net.fc = nn.Linear(net.fc.in_features, num_classes)
        return net
    if name == "efficientnet_b0":
        weights = imagenet_weights("efficientnet_b0") if pretrained else None
        net = _with_weights(tvm.efficientnet_b0, weights)
        net.classifier[-1] = nn.Linear(net.classifier[-1].in_features, num_classes)
        return net
    weights = imagenet_weights("inception_v3") if pretrained else None
    # aux_logits: the auxiliary head is trained (weight 0.4) and dropped in eval/export.
    # transform_input re-normalises ImageNet-normalised input for Google's original weights.
    net = _with_weights(tvm.inception_v3, weights, aux_logits=True, transform_input=pretrained, init_weights=not pretrained)
    net.fc = nn.Linear(net.fc.in_features, num_classes)
    net.AuxLogits.fc = nn.Linear(net.AuxLogits.fc.in_features, num_classes)
    return net


def weights_path(weights) -> Path:
    """Where torch.hub keeps (and looks first for) a torchvision weights file."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)


def _with_weights(factory, weights, **kwargs) -> nn.Module:
    if weights is None:
        return factory(weights=None, **kwargs)
    try:
        return factory(weights=weights, progress=True, **kwargs)
    except (OSError, RuntimeError) as e:  # URLError is an OSError; a torn file is a RuntimeError
        raise _weights_error(weights, e) from e


def _weights_error(weights, e: Exception) -> RuntimeError:
    return RuntimeError(
        f"could not load the ImageNet weights {weights} ({type(e).__name__}: {e}). "
        f"Download {weights.url} on a machine with internet and put it at {weights_path(weights)} "
        "(or set TORCH_HOME to a folder holding hub/checkpoints/ with it), "
        "or train from scratch with --no-pretrained (make: TRAIN_ARGS=--no-pretrained).")


def imagenet_weights(name: str):
    """torchvision's ImageNet weights enum member for a model of PRETRAINED_AVAILABLE."""
    import torchvision.models as tvm

    return {"resnet18": tvm.ResNet18_Weights, "inception_v3": tvm.Inception_V3_Weights,
            "efficientnet_b0": tvm.EfficientNet_B0_Weights}[name].IMAGENET1K_V1


def fetch_imagenet_weights(names: list[str]) -> None:
    """Download (or find in torch.hub's cache) and check each named model's ImageNet weights, so
    a machine without them says so before the first model trains, not hours later at the second."""
    for name in names:
        weights = imagenet_weights(name)
        try:
            weights.get_state_dict(progress=True, check_hash=True)  # what building the model loads
        except (OSError, RuntimeError) as e:
            raise _weights_error(weights, e) from e


def forward_logits(model: MelClassifier, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(main logits, auxiliary logits or None) whatever the mode."""
    out = model(feats)
    if isinstance(out, tuple):
        return out[0], out[1]
    return out, None
