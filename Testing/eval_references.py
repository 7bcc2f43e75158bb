"""Reference implementations that the evaluation is checked against, transcribed for the tests only.

Each block restates, step by step and with the reference's own parameter names, what a published
implementation computes; the tests load one set of weights into the reference and into ours and compare the
outputs. Nothing here is used by the project's code. Sources: pytorch-fid and Sajjadi's prd_score.py
(Apache-2.0), torchvision (BSD-3-Clause), the anchor's repository (its licence).

* ``ReferenceFIDInception`` — pytorch-fid 0.3.0's ``InceptionV3`` (``use_fid_inception=True``, pool3 only):
  torchvision 0.28's ``Inception3`` (``num_classes=1008, aux_logits=False``: ``BasicConv2d``, ``InceptionA``–
  ``InceptionE``) with pytorch-fid's ``FIDInceptionA``/``C``/``E_1``/``E_2`` patches, wrapped in its four
  blocks, with its resize and normalisation; plus the anchor's path to its input (8-bit slice → PNG → PIL
  ``convert("RGB")`` → ``ToTensor``). Transcribed rather than imported because pytorch-fid needs torchvision,
  and no torchvision build for the CPU torch 2.13.0 can be installed here: the PyPI wheel of torchvision
  0.28.0 is a CUDA build and fails to import with the CPU torch (``operator torchvision::nms does not
  exist``), and download.pytorch.org (the CPU wheels) is out of reach.
* ``anchor_gan_dataset_input`` — the anchor's MedicalNet input (claim-berlin/3D_StyleGAN_Circle_of_Willis,
  MedicalNet/evaluation.py ``squeeze_and_normalize_nifti`` + MedicalNet/dataset.py ``GANDataset``), with its
  unseeded ``np.random.normal`` draw passed in as an argument.
* ``sajjadi_*`` — Sajjadi et al.'s ``prd_score.py`` as the anchor ran it (MedicalNet/evaluation.py: the
  compare_gan version, which clips precision and recall to [0, 1]) and the anchor's AUC (``np.argsort`` of
  the recall, then ``np.trapz``, renamed ``np.trapezoid`` in NumPy 2). The clustering step is passed in as
  ``fit_labels(data, k)``; the anchor's is scikit-learn's ``MiniBatchKMeans(n_clusters=k, n_init=10)``.
"""

from __future__ import annotations

import io

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

# --------------------------------------------------------------------------------------------------------
# pytorch-fid 0.3.0 InceptionV3 over torchvision 0.28 Inception3
# --------------------------------------------------------------------------------------------------------


class BasicConv2d(nn.Module):
    def __init__(self, in_channels, out_channels, **kwargs):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **kwargs)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)), inplace=True)


class FIDInceptionA(nn.Module):  # torchvision InceptionA, forward patched by pytorch-fid
    def __init__(self, in_channels, pool_features):
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(in_channels, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(in_channels, pool_features, kernel_size=1)

    def forward(self, x):
        branch1x1 = self.branch1x1(x)
        branch5x5 = self.branch5x5_2(self.branch5x5_1(x))
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        branch_pool = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False))
        return torch.cat([branch1x1, branch5x5, branch3x3dbl, branch_pool], 1)


class InceptionB(nn.Module):
    def __init__(self, in_channels):
        super().__init__()
        self.branch3x3 = BasicConv2d(in_channels, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x):
        branch3x3 = self.branch3x3(x)
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        branch_pool = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([branch3x3, branch3x3dbl, branch_pool], 1)


class FIDInceptionC(nn.Module):  # torchvision InceptionC, forward patched by pytorch-fid
    def __init__(self, in_channels, channels_7x7):
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x):
        branch1x1 = self.branch1x1(x)
        branch7x7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        branch7x7dbl = self.branch7x7dbl_1(x)
        branch7x7dbl = self.branch7x7dbl_2(branch7x7dbl)
        branch7x7dbl = self.branch7x7dbl_3(branch7x7dbl)
        branch7x7dbl = self.branch7x7dbl_4(branch7x7dbl)
        branch7x7dbl = self.branch7x7dbl_5(branch7x7dbl)
        branch_pool = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False))
        return torch.cat([branch1x1, branch7x7, branch7x7dbl, branch_pool], 1)


class InceptionD(nn.Module):
    def __init__(self, in_channels):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x):
        branch3x3 = self.branch3x3_2(self.branch3x3_1(x))
        branch7x7x3 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        branch_pool = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([branch3x3, branch7x7x3, branch_pool], 1)


class FIDInceptionE(nn.Module):  # torchvision InceptionE; pytorch-fid's E_1 (avg, no pad) / E_2 (max) pools
    def __init__(self, in_channels, max_pool: bool):
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(in_channels, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(in_channels, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x):
        branch1x1 = self.branch1x1(x)
        branch3x3 = self.branch3x3_1(x)
        branch3x3 = torch.cat([self.branch3x3_2a(branch3x3), self.branch3x3_2b(branch3x3)], 1)
        branch3x3dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        branch3x3dbl = torch.cat([self.branch3x3dbl_3a(branch3x3dbl), self.branch3x3dbl_3b(branch3x3dbl)], 1)
        if self.max_pool:
            pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        else:
            pooled = F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)
        return torch.cat([branch1x1, branch3x3, branch3x3dbl, self.branch_pool(pooled)], 1)


class FIDInception3(nn.Module):
    """torchvision's Inception3(num_classes=1008, aux_logits=False) after ``fid_inception_v3``'s patches;
    its state dict is the layout of ``pt_inception-2015-12-05-6726825d.pth``."""

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.maxpool1 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.maxpool2 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.Mixed_5b = FIDInceptionA(192, pool_features=32)
        self.Mixed_5c = FIDInceptionA(256, pool_features=64)
        self.Mixed_5d = FIDInceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = FIDInceptionC(768, channels_7x7=128)
        self.Mixed_6c = FIDInceptionC(768, channels_7x7=160)
        self.Mixed_6d = FIDInceptionC(768, channels_7x7=160)
        self.Mixed_6e = FIDInceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = FIDInceptionE(1280, max_pool=False)
        self.Mixed_7c = FIDInceptionE(2048, max_pool=True)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(p=0.5)
        self.fc = nn.Linear(2048, 1008)


class ReferenceFIDInception(nn.Module):
    """pytorch-fid's ``InceptionV3(output_blocks=[3])``: four blocks over ``FIDInception3``; returns pool3 (N, 2048)."""

    def __init__(self, inception: FIDInception3):
        super().__init__()
        i = inception
        self.blocks = nn.ModuleList([
            nn.Sequential(i.Conv2d_1a_3x3, i.Conv2d_2a_3x3, i.Conv2d_2b_3x3, nn.MaxPool2d(kernel_size=3, stride=2)),
            nn.Sequential(i.Conv2d_3b_1x1, i.Conv2d_4a_3x3, nn.MaxPool2d(kernel_size=3, stride=2)),
            nn.Sequential(i.Mixed_5b, i.Mixed_5c, i.Mixed_5d, i.Mixed_6a, i.Mixed_6b, i.Mixed_6c, i.Mixed_6d,
                          i.Mixed_6e),
            nn.Sequential(i.Mixed_7a, i.Mixed_7b, i.Mixed_7c, nn.AdaptiveAvgPool2d(output_size=(1, 1))),
        ])
        self.eval()

    def forward(self, inp):
        x = F.interpolate(inp, size=(299, 299), mode="bilinear", align_corners=False)  # resize_input=True
        x = 2 * x - 1  # normalize_input=True: (0, 1) -> (-1, 1)
        for block in self.blocks:
            x = block(x)
        return x.squeeze(3).squeeze(2)  # fid_score.get_activations: pool3 is already 1×1


def anchor_png_to_tensor(slice_uint8: np.ndarray) -> torch.Tensor:
    """The anchor's slice → PNG file (PIL mode "L") → pytorch-fid's ImagePathDataset: convert("RGB"), ToTensor."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(slice_uint8, mode="L").save(buf, format="PNG")
    buf.seek(0)
    rgb = np.array(Image.open(buf).convert("RGB"), copy=True)
    return torch.from_numpy(rgb).permute(2, 0, 1).contiguous().to(torch.float32).div(255)


def random_state_dict(module: nn.Module, seed: int) -> dict:
    """Random but well-scaled parameters and BatchNorm statistics (activations stay O(1) through the network)."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name, t in module.state_dict().items():
        if name.endswith("num_batches_tracked"):
            sd[name] = t.clone()
        elif t.ndim >= 2:  # conv / linear weights: He-normal over the fan-in
            fan_in = t[0].numel()
            sd[name] = torch.randn(t.shape, generator=g) * (2.0 / fan_in) ** 0.5
        elif name.endswith("running_var"):
            sd[name] = 0.5 + 1.5 * torch.rand(t.shape, generator=g)
        elif name.endswith("weight"):
            sd[name] = 0.5 + torch.rand(t.shape, generator=g)
        else:  # biases, running means
            sd[name] = 0.1 * torch.randn(t.shape, generator=g)
    return sd


# --------------------------------------------------------------------------------------------------------
# The anchor's MedicalNet input
# --------------------------------------------------------------------------------------------------------


def anchor_gan_dataset_input(data_ijk: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """``squeeze_and_normalize_nifti`` (min-max, written back to the file) then ``GANDataset`` (z-score over
    voxels > 0, ``out[volume == 0] = np.random.normal(0, 1, size)[volume == 0]``), then ``FloatTensor``.
    ``noise`` stands for the unseeded draw."""
    img_data = (data_ijk - np.min(data_ijk)) / (np.max(data_ijk) - np.min(data_ijk))
    volume = img_data
    pixels = volume[volume > 0]
    mean = pixels.mean()
    std = pixels.std()
    out = (volume - mean) / std
    out_random = noise
    out[volume == 0] = out_random[volume == 0]
    return torch.FloatTensor(out).numpy()


# --------------------------------------------------------------------------------------------------------
# Sajjadi et al.'s prd_score (the anchor's copy) and the anchor's AUC
# --------------------------------------------------------------------------------------------------------


def sajjadi_compute_prd(eval_dist, ref_dist, num_angles=1001, epsilon=1e-10):
    if not (epsilon > 0 and epsilon < 0.1):
        raise ValueError("epsilon must be in (0, 0.1] but is %s." % str(epsilon))
    if not (num_angles >= 3 and num_angles <= 1e6):
        raise ValueError("num_angles must be in [3, 1e6] but is %d." % num_angles)
    angles = np.linspace(epsilon, np.pi / 2 - epsilon, num=num_angles)
    slopes = np.tan(angles)
    slopes_2d = np.expand_dims(slopes, 1)
    ref_dist_2d = np.expand_dims(ref_dist, 0)
    eval_dist_2d = np.expand_dims(eval_dist, 0)
    precision = np.minimum(ref_dist_2d * slopes_2d, eval_dist_2d).sum(axis=1)
    recall = precision / slopes
    max_val = max(np.max(precision), np.max(recall))
    if max_val > 1.001:
        raise ValueError("Detected value > 1.001, this should not happen.")
    return np.clip(precision, 0, 1), np.clip(recall, 0, 1)


def sajjadi_cluster_into_bins(eval_data, ref_data, num_clusters, fit_labels):
    cluster_data = np.vstack([eval_data, ref_data])
    labels = fit_labels(cluster_data, num_clusters)
    eval_labels = labels[:len(eval_data)]
    ref_labels = labels[len(eval_data):]
    eval_bins = np.histogram(eval_labels, bins=num_clusters, range=[0, num_clusters], density=True)[0]
    ref_bins = np.histogram(ref_labels, bins=num_clusters, range=[0, num_clusters], density=True)[0]
    return eval_bins, ref_bins


def sajjadi_compute_prd_from_embedding(eval_data, ref_data, fit_labels, num_clusters=10, num_angles=1001,
                                       num_runs=10, enforce_balance=True):
    """``fit_labels(data, k, run)`` clusters one run (the anchor: a fresh unseeded MiniBatchKMeans per run)."""
    if enforce_balance and len(eval_data) != len(ref_data):
        raise ValueError(
            "The number of points in eval_data %d is not equal to the number of points in ref_data %d. To disable "
            "this exception, set enforce_balance to False (not recommended)." % (len(eval_data), len(ref_data)))
    eval_data = np.array(eval_data, dtype=np.float64)
    ref_data = np.array(ref_data, dtype=np.float64)
    precisions = []
    recalls = []
    for run in range(num_runs):
        eval_dist, ref_dist = sajjadi_cluster_into_bins(eval_data, ref_data, num_clusters,
                                                        lambda data, k: fit_labels(data, k, run))
        precision, recall = sajjadi_compute_prd(eval_dist, ref_dist, num_angles)
        precisions.append(precision)
        recalls.append(recall)
    return np.mean(precisions, axis=0), np.mean(recalls, axis=0)


def anchor_auc_prd(precision, recall, sort_kind=None):
    """The anchor's ``np.trapz(precision[argsort(recall)], recall[argsort(recall)])``; ``sort_kind`` None is
    ``np.argsort``'s default (quicksort: tied recalls in an unspecified order)."""
    sorted_indices = np.argsort(recall) if sort_kind is None else np.argsort(recall, kind=sort_kind)
    return np.trapezoid(precision[sorted_indices], recall[sorted_indices])
