"""MedicalNet 3-D ResNet-10 (Chen et al., 2019) as a volume feature extractor, written from its description.

Architecture of Tencent's MedicalNet ``resnet10`` with shortcut type B (1×1×1 convolution + BatchNorm on
the projection shortcut, no bias): 7³ stride-2 stem, 3³ stride-2 max-pool, four stages of one basic block
each (64, 128 stride 2, 256 dilation 2, 512 dilation 4). The features are layer4 globally average-pooled
(512-d), the "MedicalNet distance" (MD) features of Aydin et al. 2024. Parameter names equal those of
``resnet_10_23dataset.pth`` (``{"state_dict": ...}`` with or without the ``module.`` prefix of
``nn.DataParallel``); the file's segmentation head (``conv_seg.*``), when present, is ignored.

References
----------
Chen S., Ma K., Zheng Y., "Med3D: Transfer learning for 3D medical image analysis", arXiv:1904.00625, 2019.
Aydin O. U. et al., "Generative modeling of the Circle of Willis using 3D-StyleGAN", NeuroImage 2024.
"""

from __future__ import annotations

import os

import torch
import torch.nn as nn
import torch.nn.functional as F

from .weights import load_weights_file

__all__ = ["MedicalNetResNet10", "load_medicalnet", "MEDICALNET_WEIGHTS_NAME", "MEDICALNET_FEATURE_DIM"]

MEDICALNET_WEIGHTS_NAME = "resnet_10_23dataset.pth"
MEDICALNET_FEATURE_DIM = 512


def _conv3(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Conv3d:
    return nn.Conv3d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)


class _BasicBlock3d(nn.Module):
    """Two 3³ convolutions with BatchNorm and a residual connection (projection shortcut when shapes change)."""

    def __init__(self, cin: int, cout: int, stride: int = 1, dilation: int = 1):
        super().__init__()
        self.conv1 = _conv3(cin, cout, stride, dilation)
        self.bn1 = nn.BatchNorm3d(cout)
        self.conv2 = _conv3(cout, cout, 1, dilation)
        self.bn2 = nn.BatchNorm3d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv3d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm3d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        skip = x if self.downsample is None else self.downsample(x)
        return F.relu(out + skip, inplace=True)


class MedicalNetResNet10(nn.Module):
    """MedicalNet ResNet-10 trunk; ``forward`` maps (N, 1, D, H, W) volumes to (N, 512) pooled layer4 features.

    The input should already be intensity-normalised (MedicalNet was trained on volumes z-scored over their
    non-zero voxels). Any spatial size works (fully convolutional + global pool); each side should be ≥ 8.
    """

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv3d(1, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm3d(64)
        self.layer1 = nn.Sequential(_BasicBlock3d(64, 64))
        self.layer2 = nn.Sequential(_BasicBlock3d(64, 128, stride=2))
        self.layer3 = nn.Sequential(_BasicBlock3d(128, 256, dilation=2))
        self.layer4 = nn.Sequential(_BasicBlock3d(256, 512, dilation=4))
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5 or x.shape[1] != 1:
            raise ValueError(f"MedicalNetResNet10 input: expected (N, 1, D, H, W), got {tuple(x.shape)}")
        x = F.relu(self.bn1(self.conv1(x)), inplace=True)
        x = F.max_pool3d(x, kernel_size=3, stride=2, padding=1)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(F.adaptive_avg_pool3d(x, 1), 1)


def load_medicalnet(path: str | os.PathLike) -> tuple[MedicalNetResNet10, dict]:
    """Build :class:`MedicalNetResNet10` and load ``resnet_10_23dataset.pth`` (MedicalNet) from ``path``.

    Accepts a bare state dict or ``{"state_dict": ...}``, keys with or without ``module.``; ignores the
    ``conv_seg`` segmentation head. Raises :class:`VolGANCore.errors.InputFileError` for a wrong file.
    """
    net = MedicalNetResNet10()
    info = load_weights_file(net, path, expected=f"MedicalNet's {MEDICALNET_WEIGHTS_NAME}",
                             ignore_unexpected=(r"conv_seg\.",))
    net.eval().requires_grad_(False)
    return net, info
