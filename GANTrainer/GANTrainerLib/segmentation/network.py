"""The segmentation network of the downstream experiment: MONAI DynUNet (the nnU-Net architecture).

* :func:`plan_network` derives kernels and strides from the patch size and voxel spacing the way nnU-Net does:
  an axis is down-sampled (stride 2) while its spacing is at most twice the finest current spacing and its size
  stays ≥ 2 × the minimum feature-map size (4 voxels); its kernel is 3 where the spacing is within a factor two
  of the finest, else 1 (anisotropic data get in-plane 3×3×1 kernels until the spacings meet).
* :func:`train_network` samples random patches (a fraction centred on a random voxel of a random present class,
  nnU-Net's foreground over-sampling, which favours rare classes such as Acom), minimises Dice + cross-entropy
  (``monai.losses.DiceCELoss``, background left out of the Dice term; deep supervision in the full config),
  with AMP on CUDA (bf16 where supported, else fp16 with a ``GradScaler``) and channels-last-3D on CUDA.
* :class:`SegmentationModel` predicts a label map of a whole volume with
  ``monai.inferers.sliding_window_inference`` (Gaussian-weighted windows the size of the training patch).
* Checkpoints: one file, ``torch.save`` of ``{"format", "config_json", "state_dict"}`` written atomically and
  loaded with ``torch.load(weights_only=True)``; the JSON config rebuilds the network and names its classes.

Intensities are z-scored per volume (nnU-Net's scheme for non-CT images), so generated volumes in [0, 1] or
[-1, 1] and real TOF-MRA in scanner units meet on one scale.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from VolGANCore.atomic import atomic_path
from VolGANCore.env import amp_dtype
from VolGANCore.errors import InputFileError, VolGANError
from VolGANCore.progress import CancelToken, Progress, ProgressCallback
from VolGANCore.torchfile import safe_torch_load

__all__ = ["SegConfig", "CONFIGS", "get_config", "plan_network", "build_network", "choose_patch_size",
           "SegmentationModel", "train_network", "CHECKPOINT_FORMAT"]

CHECKPOINT_FORMAT = "volgan-segmentation-dynunet-v1"


@dataclasses.dataclass(frozen=True)
class SegConfig:
    """Recipe of one segmentation network (architecture bounds, sampling, optimisation, inference)."""

    name: str
    patch_size: tuple[int, int, int]      # largest training patch (D, H, W) voxels; clipped to the data
    filters_base: int                     # feature maps of the first stage (doubled per stage)
    filters_max: int                      # cap on feature maps (nnU-Net: 320)
    max_stages: int                       # resolution stages including the first (poolings + 1)
    batch_size: int                       # patches per step
    iters_per_epoch: int                  # steps per "epoch" (nnU-Net: 250)
    epochs: int                           # default number of epochs
    optimizer: str                        # "sgd" (nnU-Net: Nesterov 0.99, poly LR) or "adamw"
    lr: float                             # initial learning rate
    weight_decay: float                   # L2 (sgd) / decoupled (adamw) weight decay
    fg_fraction: float                    # share of patches centred on a foreground voxel
    deep_supervision: bool                # extra loss heads at lower resolutions (nnU-Net)
    sw_overlap: float                     # sliding-window overlap at inference
    sw_batch_size: int                    # windows per forward pass at inference
    intensity_augment: bool               # random intensity scale/shift per patch

    @property
    def iterations(self) -> int:
        return self.iters_per_epoch * self.epochs


CONFIGS: dict[str, SegConfig] = {
    # CPU-sized: runs the whole protocol on small phantoms in minutes; not a meaningful segmenter
    "small": SegConfig(name="small", patch_size=(16, 48, 48), filters_base=8, filters_max=64, max_stages=4,
                       batch_size=2, iters_per_epoch=10, epochs=6, optimizer="adamw", lr=1e-2, weight_decay=1e-5,
                       fg_fraction=0.66, deep_supervision=False, sw_overlap=0.25, sw_batch_size=2,
                       intensity_augment=True),
    # nnU-Net 3d_fullres-like: the paper's 32×128×128 ROI is one patch; for a GPU
    "full": SegConfig(name="full", patch_size=(32, 128, 128), filters_base=32, filters_max=320, max_stages=6,
                      batch_size=2, iters_per_epoch=250, epochs=100, optimizer="sgd", lr=1e-2, weight_decay=3e-5,
                      fg_fraction=0.33, deep_supervision=True, sw_overlap=0.5, sw_batch_size=4,
                      intensity_augment=True),
}


def get_config(name: str | SegConfig, epochs: int | None = None) -> SegConfig:
    """A named config (``small`` or ``full``), optionally with another number of epochs."""
    if isinstance(name, SegConfig):
        cfg = name
    else:
        try:
            cfg = CONFIGS[name]
        except KeyError:
            raise VolGANError(f"--config {name!r}: choose one of {sorted(CONFIGS)}") from None
    if epochs is not None:
        if not isinstance(epochs, (int, np.integer)) or isinstance(epochs, bool) or epochs < 1:
            raise VolGANError(f"--epochs: expected an integer ≥ 1, got {epochs!r}")
        cfg = dataclasses.replace(cfg, epochs=int(epochs))
    return cfg


def choose_patch_size(max_patch: Sequence[int], shapes: Sequence[Sequence[int]]) -> tuple[int, int, int]:
    """The configured patch, clipped per axis to the median data shape and rounded down to a multiple of 4 (≥ 8)."""
    med = np.median(np.asarray(shapes, float), axis=0)
    out = []
    for m, s in zip(max_patch, med):
        v = int(min(int(m), int(s)))
        v = max(8, v - v % 4)
        out.append(v)
    return tuple(out)  # type: ignore[return-value]


def plan_network(patch_size: Sequence[int], spacing: Sequence[float], filters_base: int = 32,
                 filters_max: int = 320, max_stages: int = 6, min_feature_size: int = 4) -> dict[str, Any]:
    """nnU-Net-style kernels/strides for a patch (D, H, W) with voxel spacing (D, H, W) in mm.

    Returns ``{"patch_size", "spacing", "kernel_size", "strides", "upsample_kernel_size", "filters"}``
    (lists, JSON-ready; ``kernel_size[0]``/``strides[0]`` are the input block).
    """
    size = np.asarray([int(s) for s in patch_size])
    sp = np.asarray([float(s) for s in spacing])
    if size.shape != (3,) or sp.shape != (3,) or np.any(sp <= 0) or np.any(size < 1):
        raise VolGANError(f"plan_network: expected 3 patch sizes and 3 positive spacings, got {patch_size}, {spacing}")
    kernels = [[3 if s <= 2 * sp.min() else 1 for s in sp]]
    strides = [[1, 1, 1]]
    cur_sp, cur_size = sp.copy(), size.copy()
    while len(strides) < max_stages:
        pool = [(cur_sp[i] <= 2 * cur_sp.min()) and cur_size[i] >= 2 * min_feature_size and cur_size[i] % 2 == 0
                for i in range(3)]
        if not any(pool):
            break
        st = [2 if p else 1 for p in pool]
        cur_sp = cur_sp * np.asarray(st)
        cur_size = cur_size // np.asarray(st)
        strides.append(st)
        kernels.append([3 if s <= 2 * cur_sp.min() else 1 for s in cur_sp])
    if len(strides) < 3:
        raise VolGANError(f"patch {tuple(size)} at spacing {tuple(sp)} mm allows {len(strides) - 1} down-sampling "
                          "step(s); DynUNet needs at least 2 (use volumes/patches of ≥ 16 voxels along two axes)")
    filters = [int(min(filters_base * 2 ** k, filters_max)) for k in range(len(strides))]
    return {"patch_size": [int(s) for s in size], "spacing": [float(s) for s in sp], "kernel_size": kernels,
            "strides": strides, "upsample_kernel_size": strides[1:], "filters": filters}


def build_network(plan: dict[str, Any], out_channels: int, deep_supervision: bool = False):
    """A MONAI DynUNet for one input channel and ``out_channels`` classes (background included)."""
    from monai.networks.nets import DynUNet

    n_up = len(plan["strides"]) - 1
    return DynUNet(
        spatial_dims=3,
        in_channels=1,
        out_channels=int(out_channels),
        kernel_size=plan["kernel_size"],
        strides=plan["strides"],
        upsample_kernel_size=plan["upsample_kernel_size"],
        filters=plan["filters"],
        norm_name=("INSTANCE", {"affine": True}),
        act_name=("leakyrelu", {"inplace": True, "negative_slope": 0.01}),
        deep_supervision=bool(deep_supervision) and n_up >= 2,
        deep_supr_num=max(1, min(2, n_up - 1)),
        res_block=False,
    )


def zscore(array: np.ndarray) -> np.ndarray:
    """Per-volume z-score (float32); a constant volume becomes zeros."""
    a = np.asarray(array, np.float32)
    m, s = float(a.mean()), float(a.std())
    return (a - m) / s if s > 0 else np.zeros_like(a)


class SegmentationModel:
    """A trained DynUNet with its plan and class ids; :meth:`predict` labels a whole volume."""

    def __init__(self, net, config: dict[str, Any], device: str = "cpu") -> None:
        self.net = net
        self.config = config                       # JSON-ready: plan, label ids, scheme, provenance
        self.device = str(device)
        self.label_ids = [int(i) for i in config["label_ids"]]   # channel c -> label id (channel 0 = 0)
        self.plan = config["plan"]

    SPACING_RTOL = 0.05                            # a volume may differ this much from the planned spacing

    def fits_spacing(self, spacing) -> bool:
        """Whether a (D, H, W) voxel size in mm is the one this model was trained at (within 5 %)."""
        return bool(np.allclose(np.asarray(self.plan["spacing"], float), spacing, rtol=self.SPACING_RTOL))

    # -- inference ------------------------------------------------------------------------------------------
    def predict_array(self, array: np.ndarray) -> np.ndarray:
        """Label map (int16, scheme ids) of a (D, H, W) image array."""
        import torch
        from monai.inferers import sliding_window_inference

        x = torch.from_numpy(zscore(array))[None, None].to(self.device)
        roi = tuple(self.plan["patch_size"])
        dt = amp_dtype(self.config.get("amp", "auto"), self.device).dtype
        if self.device.startswith("cuda"):
            x = x.contiguous(memory_format=torch.channels_last_3d)
        self.net.eval()
        with torch.inference_mode(), torch.autocast("cuda", dtype=dt, enabled=dt is not None):
            logits = sliding_window_inference(x, roi, int(self.config.get("sw_batch_size", 2)), self.net,
                                              overlap=float(self.config.get("sw_overlap", 0.5)), mode="gaussian")
        channel = logits.argmax(1)[0].to("cpu").numpy()
        lut = np.asarray(self.label_ids, np.int16)
        return lut[channel]

    def predict(self, image, case: str | None = None) -> np.ndarray:
        """Label map of a :class:`VolGANCore.Volume` (``case`` is ignored; it is part of the predictor protocol)."""
        return self.predict_array(image.array)

    __call__ = predict

    # -- checkpoints ------------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write ``{"format", "config_json", "state_dict"}`` atomically with ``torch.save``."""
        import torch

        state = {k: v.detach().to("cpu").contiguous() for k, v in self.net.state_dict().items()}
        payload = {"format": CHECKPOINT_FORMAT, "config_json": json.dumps(self.config), "state_dict": state}
        with atomic_path(path) as tmp:
            torch.save(payload, tmp)
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike, device: str = "cpu") -> "SegmentationModel":
        """Rebuild a model from :meth:`save`'s file (``torch.load(weights_only=True)``; no code is unpickled)."""
        import torch

        path = Path(path)
        payload = safe_torch_load(path, "segmentation checkpoint",
                                  "pass a teacher .pt written by `volgan segmentation-experiment`")
        if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
            raise InputFileError(path, "is not a volgan segmentation checkpoint",
                                 f"expected format '{CHECKPOINT_FORMAT}' written by `volgan segmentation-experiment`")
        config = json.loads(payload["config_json"])
        net = build_network(config["plan"], len(config["label_ids"]), deep_supervision=config.get("deep_supervision", False))
        missing, unexpected = net.load_state_dict(payload["state_dict"], strict=False)
        if missing or unexpected:
            raise InputFileError(path, f"weights do not fit the network its config describes (missing {list(missing)[:5]}, "
                                 f"unexpected {list(unexpected)[:5]})", "the file is damaged or from another version")
        net.to(device)
        if str(device).startswith("cuda"):
            net.to(memory_format=torch.channels_last_3d)
        return cls(net, config, device)


class PatchSampler:
    """Random training patches from in-memory volumes, with nnU-Net-style foreground over-sampling.

    With probability ``fg_fraction`` a patch is centred (± a quarter patch) on a random voxel of a random class
    present in the chosen volume; otherwise its corner is uniform. Volumes smaller than the patch are padded
    (image with its minimum, labels with background).
    """

    def __init__(self, images: Sequence[np.ndarray], labels: Sequence[np.ndarray], patch: Sequence[int],
                 fg_fraction: float, rng: np.random.Generator, max_points: int = 20000) -> None:
        self.patch = np.asarray(patch, int)
        self.fg = float(fg_fraction)
        self.rng = rng
        self.images, self.labels, self.points = [], [], []
        for img, lab in zip(images, labels):
            pad = [(0, max(0, int(p) - s)) for p, s in zip(self.patch, img.shape)]
            if any(p[1] for p in pad):
                img = np.pad(img, pad, constant_values=float(img.min()))
                lab = np.pad(lab, pad, constant_values=0)
            self.images.append(np.ascontiguousarray(img, np.float32))
            self.labels.append(np.ascontiguousarray(lab, np.uint8))  # channel indices (< 256 classes)
            pts = {}
            flat = lab.ravel()
            for c in np.unique(flat):
                if c == 0:
                    continue
                idx = np.flatnonzero(flat == c)
                if idx.size > max_points:
                    idx = rng.choice(idx, max_points, replace=False)
                pts[int(c)] = idx
            self.points.append(pts)

    def sample(self, batch: int) -> tuple[np.ndarray, np.ndarray]:
        p = self.patch
        xs = np.empty((batch, 1, *p), np.float32)
        ys = np.empty((batch, 1, *p), np.int64)
        for b in range(batch):
            i = int(self.rng.integers(len(self.images)))
            img, lab, pts = self.images[i], self.labels[i], self.points[i]
            shape = np.asarray(img.shape)
            hi = shape - p
            if pts and self.rng.random() < self.fg:
                cls = list(pts)[int(self.rng.integers(len(pts)))]
                flat = int(pts[cls][int(self.rng.integers(len(pts[cls])))])
                centre = np.asarray(np.unravel_index(flat, img.shape))
                jitter = self.rng.integers(-(p // 4), p // 4 + 1)
                start = np.clip(centre - p // 2 + jitter, 0, hi)
            else:
                start = np.asarray([int(self.rng.integers(h + 1)) for h in hi])
            sl = tuple(slice(int(s), int(s) + int(n)) for s, n in zip(start, p))
            xs[b, 0] = img[sl]
            ys[b, 0] = lab[sl]
        return xs, ys


def train_network(
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    label_ids: Sequence[int],
    spacing: Sequence[float],
    config: SegConfig,
    device: str = "cpu",
    seed: int = 0,
    description: str = "train",
    provenance: dict[str, Any] | None = None,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelToken] = None,
    amp: str = "auto",
) -> SegmentationModel:
    """Train a DynUNet on (image, label map) pairs and return it.

    Parameters
    ----------
    images : arrays (D, H, W)
        Grey-value volumes (any units; z-scored per volume here).
    labels : int arrays (D, H, W)
        Label maps in scheme ids; every id must be in ``label_ids``.
    label_ids : ids of the classes, background (0) first: channel ``c`` predicts ``label_ids[c]``.
    spacing : voxel size (D, H, W) in mm, shared by all volumes (plans kernels and strides).
    config : :class:`SegConfig`
    device : torch device string (AMP and channels-last-3D on CUDA).
    seed : seeds torch and the patch sampler (CPU runs are repeatable).
    description : name of the progress task.
    provenance : extra JSON-ready facts stored in the checkpoint config (role, fold, training cases, ...).
    """
    import torch
    from monai.losses import DiceCELoss

    if len(images) == 0 or len(images) != len(labels):
        raise VolGANError(f"{description}: needs ≥ 1 image with a label map each (got {len(images)} images, "
                          f"{len(labels)} label maps)")
    label_ids = [int(i) for i in label_ids]
    if label_ids[0] != 0:
        raise VolGANError("label_ids: the first channel must be background (0)")
    lut = np.full(max(label_ids) + 1, -1, np.int64)
    lut[label_ids] = np.arange(len(label_ids))
    chan_labels = []
    for k, lab in enumerate(labels):
        lab = np.asarray(lab, np.int64)
        if lab.min() < 0 or lab.max() >= lut.size or np.any(lut[lab] < 0):
            bad = sorted(set(np.unique(lab).tolist()) - set(label_ids))
            raise VolGANError(f"{description}: label map {k} holds ids {bad} outside the classes {label_ids[1:]}")
        chan_labels.append(lut[lab].astype(np.uint8))
    torch.manual_seed(int(seed))
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x5E6]))
    patch = choose_patch_size(config.patch_size, [np.shape(i) for i in images])
    plan = plan_network(patch, spacing, config.filters_base, config.filters_max, config.max_stages)
    net = build_network(plan, len(label_ids), config.deep_supervision).to(device)
    channels_last = str(device).startswith("cuda")
    if channels_last:
        net = net.to(memory_format=torch.channels_last_3d)
    dt, use_scaler = amp_dtype(amp, device, training=True)
    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
    if config.optimizer == "sgd":
        opt = torch.optim.SGD(net.parameters(), lr=config.lr, momentum=0.99, nesterov=True,
                              weight_decay=config.weight_decay)
    else:
        opt = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    total = config.iterations
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda it: (1 - min(it, total - 1) / total) ** 0.9)
    loss_fn = DiceCELoss(include_background=False, to_onehot_y=True, softmax=True, batch=True)
    sampler = PatchSampler([zscore(i) for i in images], chan_labels, plan["patch_size"], config.fg_fraction, rng)
    losses: list[float] = []
    net.train()
    with Progress(total, description, progress, cancel, min_interval_s=0.5) as prog:
        for it in range(total):
            xs, ys = sampler.sample(config.batch_size)
            if config.intensity_augment:
                scale = rng.uniform(0.9, 1.1, (len(xs), 1, 1, 1, 1)).astype(np.float32)
                shift = rng.uniform(-0.1, 0.1, (len(xs), 1, 1, 1, 1)).astype(np.float32)
                xs = xs * scale + shift
            x = torch.from_numpy(xs).to(device, non_blocking=True)
            y = torch.from_numpy(ys).to(device, non_blocking=True)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last_3d)
            opt.zero_grad(set_to_none=True)
            with torch.autocast("cuda", dtype=dt, enabled=dt is not None):
                out = net(x)
            out = out.float()
            if out.dim() == 6:  # deep supervision: (B, heads, C, D, H, W), nnU-Net weights 1/2^k normalised
                w = np.asarray([0.5 ** k for k in range(out.shape[1])])
                w = w / w.sum()
                loss = sum(float(w[k]) * loss_fn(out[:, k], y) for k in range(out.shape[1]))
            else:
                loss = loss_fn(out, y)
            if not torch.isfinite(loss):
                raise VolGANError(f"{description}: the loss became {float(loss)} at step {it} "
                                  "(lower the learning rate or check the input intensities)")
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(net.parameters(), 12.0)
            scaler.step(opt)
            scaler.update()
            sched.step()
            losses.append(float(loss.detach()))
            prog.advance(1, f"loss {np.mean(losses[-10:]):.3f}")
    cfg = {
        "plan": plan, "label_ids": label_ids, "deep_supervision": bool(config.deep_supervision),
        "normalisation": "z-score per volume", "recipe": dataclasses.asdict(config), "amp": amp,
        "sw_overlap": config.sw_overlap, "sw_batch_size": config.sw_batch_size, "seed": int(seed),
        "iterations": total, "loss_first10": _mean(losses[:10]), "loss_last10": _mean(losses[-10:]),
        "trained_on_device": str(device), **(provenance or {}),
    }
    return SegmentationModel(net, cfg, device)


def _mean(x: Sequence[float]) -> float | None:
    return float(np.mean(x)) if len(x) else None
