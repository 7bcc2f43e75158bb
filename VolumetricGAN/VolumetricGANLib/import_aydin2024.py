"""Importer for the Circle-of-Willis 3-D StyleGAN checkpoints of Aydin et al. 2024 (format ``aydin2024-stylegan``).

Their training code (claim-berlin/3D_StyleGAN_Circle_of_Willis, ``stylegan2_pytorch.py``, MIT) saves
``models/<name>/model_<k>.pt`` = ``{'GAN': StyleGAN2.state_dict()}`` and ``models/<name>/.config.json``
(image_size, network_capacity, lr_mlp, transparent, fq_layers, fq_dict_size, attn_layers, no_const). The
state dict holds the mapping net ``S``, generator ``G``, discriminator ``D`` (also as ``D_aug.D``) and their
EMA copies ``SE`` and ``GE``, which their generation script uses. This importer reads the file safely
(``weights_only=True``), keeps only ``SE.*``/``GE.*``, infers ``fmap_max`` (not in their config) from the
tensor shapes, checks every key and shape against the architecture, and writes a self-describing
``.vgan`` checkpoint of the family ``aydin2024-stylegan3d`` with geometry, intensities, provenance,
licence and a model card.

    volgan import --format aydin2024-stylegan models/Medium_v2/model_23.pt --out cow.vgan \\
        [--config models/Medium_v2/.config.json] [--fmap-max 1024] [--reference-image roi.nii.gz]

Listed in the registry :data:`VolumetricGANLib.importers.IMPORTERS` under :data:`FORMAT`.

References
----------
Aydin O.U. et al. "Generative modeling of the Circle of Willis using 3D-StyleGAN." NeuroImage 304 (2024)
120936. Code: https://github.com/claim-berlin/3D_StyleGAN_Circle_of_Willis (MIT licence).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from VolGANCore.errors import InputFileError, VolGANError
from VolGANCore.torchfile import safe_torch_load

from .checkpoint import make_config, save_checkpoint, sha256_file

__all__ = ["FORMAT", "import_aydin2024", "read_aydin_checkpoint", "read_aydin_config", "infer_fmap_max", "build_aydin2024",
           "DEFAULT_SPACING", "CITATION"]

FORMAT = "aydin2024-stylegan"
DEFAULT_SPACING = (0.297, 0.297, 0.6)
CITATION = ("Aydin O.U., Hilbert A., Koch A., Lohrke F., Rieger J., Tanioka S., Frey D. Generative modeling of "
            "the Circle of Willis using 3D-StyleGAN. NeuroImage 304 (2024) 120936.")
REPOSITORY = "claim-berlin/3D_StyleGAN_Circle_of_Willis (stylegan2_pytorch.py)"
LICENSE = ("architecture code: MIT (claim-berlin/3D_StyleGAN_Circle_of_Willis); trained weights: obtained from "
           "the authors on request, their terms of use apply (not redistributed by volgan)")
_IGNORED_PREFIXES = ("S.", "G.", "D.", "D_aug.")
_SHOW = 12


def _fmt_list(items: Sequence[str]) -> str:
    shown = ", ".join(items[:_SHOW])
    return shown + (f", … ({len(items)} in all)" if len(items) > _SHOW else "")


def read_aydin_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The ``GAN`` state dict of one of their ``model_<k>.pt`` files, read with ``weights_only=True``.

    Raises
    ------
    InputFileError
        Missing or unreadable file, an unsafe pickle (never executed), or no ``{'GAN': state_dict}``.
    """
    import torch

    path = Path(path)
    blob = safe_torch_load(path, "Circle-of-Willis 3-D StyleGAN checkpoint",
                           "pass their models/<name>/model_<k>.pt written by their Trainer.save")
    if not isinstance(blob, dict) or not isinstance(blob.get("GAN"), dict):
        keys = list(blob)[:5] if isinstance(blob, dict) else type(blob).__name__
        raise InputFileError(path, f"not a Circle-of-Willis 3-D StyleGAN checkpoint: expected {{'GAN': state_dict}}, "
                             f"found {keys}", "pass their models/<name>/model_<k>.pt, or choose another --format")
    sd = blob["GAN"]
    bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise InputFileError(path, f"'GAN' entries that are not tensors: {_fmt_list([str(k) for k in bad])}",
                             "pass the original model_<k>.pt")
    return sd


def read_aydin_config(path: str | os.PathLike, src: Path | None = None) -> dict[str, Any]:
    """Their ``.config.json``, checked for what the importer supports (no attention, constant input, grey)."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(path, "their .config.json was not found (it sits next to model_<k>.pt in models/<name>/)",
                             "pass it with --config PATH (it holds image_size, network_capacity and lr_mlp)")
    try:
        cfg = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputFileError(path, f"not a JSON file ({exc})", "pass the .config.json written by their Trainer") from None
    if not isinstance(cfg, dict):
        raise InputFileError(path, "expected a JSON object", "pass the .config.json written by their Trainer")
    for key in ("image_size", "network_capacity"):
        v = cfg.get(key)
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise InputFileError(path, f"'{key}' must be a positive integer, got {v!r}",
                                 "pass the .config.json written by their Trainer")
    s = cfg["image_size"]
    if s < 8 or s & (s - 1):
        raise InputFileError(path, f"image_size {s} is not a power of two ≥ 8", "pass the model's own .config.json")
    lr_mlp = cfg.get("lr_mlp", 0.1)  # their load_config defaults a missing lr_mlp to 0.1
    if not isinstance(lr_mlp, (int, float)) or isinstance(lr_mlp, bool) or not math.isfinite(lr_mlp) or lr_mlp <= 0:
        raise InputFileError(path, f"lr_mlp must be a positive number, got {lr_mlp!r}", "pass the model's own .config.json")
    unsupported = []
    if cfg.get("no_const"):
        unsupported.append("no_const=true (a transposed-conv input instead of the learned constant)")
    if cfg.get("attn_layers"):
        unsupported.append(f"attn_layers={cfg['attn_layers']} (linear attention, disabled in their published code)")
    if cfg.get("transparent"):
        unsupported.append("transparent=true (RGBA output)")
    if unsupported:
        raise InputFileError(path, "this model uses options the published CoW code does not support: "
                             + "; ".join(unsupported), "only models trained with the published configuration can be imported")
    return {**cfg, "lr_mlp": float(lr_mlp)}


def infer_fmap_max(sd: Mapping[str, Any], image_size: int, network_capacity: int) -> tuple[int, str]:
    """``fmap_max`` from the tensor shapes (their config does not store it) and a sentence saying how.

    The channel list is ``min(fmap_max, nc·2^(i+1))``; the constant ``GE.initial_block`` has the largest.
    If it is below the uncapped value, fmap_max equals it; otherwise no layer is capped and any
    ``fmap_max ≥`` the largest channel count builds the same generator, so that count is used.
    """
    from .networks.aydin2024 import aydin_channels

    top = aydin_channels(image_size, network_capacity, 1 << 30)[0]
    t = sd.get("GE.initial_block")
    if t is None or t.ndim != 5:
        return top, (f"GE.initial_block missing; assumed uncapped channels (fmap_max ≥ {top}) for the key check")
    c0 = int(t.shape[1])
    if c0 < top:
        return c0, (f"inferred from tensor shapes: GE.initial_block has {c0} channels < network_capacity·2^L = {top}, "
                    f"so fmap_max = {c0}")
    return top, (f"inferred from tensor shapes: no generator layer reaches the cap (largest {c0} channels), so any "
                 f"fmap_max ≥ {top} gives this same generator; stored {top}")


def _check_spacing(spacing) -> tuple[float, float, float]:
    try:
        sp = tuple(float(v) for v in spacing)
    except (TypeError, ValueError):
        sp = ()
    if len(sp) != 3 or not all(math.isfinite(v) and v > 0 for v in sp):
        raise VolGANError(f"spacing {spacing!r}: expected three positive numbers (x, y, z) in mm, e.g. 0.297 0.297 0.6")
    return sp  # type: ignore[return-value]


def _reference_geometry(reference_image, shape: Sequence[int]) -> tuple[tuple, tuple, list, str]:
    from VolGANCore.io import read_volume
    from VolGANCore.volume import Volume

    if isinstance(reference_image, Volume):
        vol, where = reference_image, "reference volume"
    else:
        where = str(reference_image)
        vol = read_volume(reference_image)
    if tuple(int(s) for s in vol.shape) != tuple(int(s) for s in shape):
        raise InputFileError(None if isinstance(reference_image, Volume) else reference_image,
                             f"reference image has shape (D, H, W) = {tuple(vol.shape)}, the model generates {tuple(shape)}",
                             "pass a ROI crop of the model's training grid (e.g. one of its preprocessed training volumes)")
    return (tuple(float(s) for s in vol.spacing), tuple(float(o) for o in vol.origin),
            [float(d) for d in vol.direction.reshape(-1)], where)


def build_aydin2024(
    src: str | os.PathLike,                       # their models/<name>/model_<k>.pt
    config: str | os.PathLike | None = None,      # their .config.json (default: next to src)
    fmap_max: int | None = None,                  # channel cap used in training (default: inferred)
    depth: int = 32,                              # slices (32: hard-coded in their code)
    output_layout: str = "itk",                   # 'itk' (z, y, x) or 'authors' (their z, x, y)
    truncation_mean_samples: int = 10_000,        # latents averaged for the truncation mean
    truncation_mean_seed: int = 0,                # seed of those latents
):
    """Their EMA generator as an :class:`~VolumetricGANLib.networks.aydin2024.AydinGenerator` (eval mode).

    Returns
    -------
    (G, info)
        ``info`` holds the parsed config (``their``), its path, the ignored tensor counts, the fmap_max
        note and the number of EMA tensors used.
    """
    import torch

    from .networks.aydin2024 import AydinGenerator

    src = Path(src)
    sd = read_aydin_checkpoint(src)
    cfg_path = Path(config) if config is not None else src.parent / ".config.json"
    their = read_aydin_config(cfg_path)
    image_size, nc, lr_mlp = int(their["image_size"]), int(their["network_capacity"]), float(their["lr_mlp"])
    if not isinstance(depth, int) or depth < 4 or depth & (depth - 1) or depth > image_size:
        raise VolGANError(f"depth {depth}: expected a power of two between 4 and image_size {image_size}")
    if not isinstance(truncation_mean_samples, int) or truncation_mean_samples < 1:
        raise VolGANError(f"truncation_mean_samples {truncation_mean_samples!r}: expected a positive integer (theirs: 2000)")
    ema = {k: v for k, v in sd.items() if k.startswith(("SE.", "GE."))}
    ignored = {p[:-1]: sum(1 for k in sd if k.startswith(p)) for p in _IGNORED_PREFIXES}
    if not ema:
        raise InputFileError(src, "holds no EMA tensors (SE.*, GE.*): "
                             f"found prefixes {sorted({k.split('.', 1)[0] for k in sd})}",
                             "pass a checkpoint saved by their Trainer (it always contains SE and GE)")
    if fmap_max is None:
        fmap_max, fmap_note = infer_fmap_max(ema, image_size, nc)
        fmap_inferred = True
    else:
        if not isinstance(fmap_max, int) or isinstance(fmap_max, bool) or fmap_max < 1:
            raise VolGANError(f"--fmap-max {fmap_max!r}: expected a positive integer (512 or 1024 in their README)")
        fmap_note, fmap_inferred = f"given by the user ({fmap_max})", False
    latent_dim = int(ema["SE.net.0.weight"].shape[1]) if "SE.net.0.weight" in ema else 512
    style_depth = sum(1 for k in ema if k.startswith("SE.net.") and k.endswith(".weight")) or 8
    arch = dict(image_size=image_size, depth=depth, network_capacity=nc, fmap_max=int(fmap_max),
                latent_dim=latent_dim, style_depth=style_depth, lr_mlp=lr_mlp, output_layout=output_layout)
    G = AydinGenerator(**arch)
    own = G.state_dict()

    def theirs_key(k: str) -> str:
        return "SE." + k[len("mapping."):] if k.startswith("mapping.") else "GE." + k[len("synthesis."):]

    expected = {theirs_key(k): v for k, v in own.items() if k != "mapping.w_avg"}
    missing = [k for k in expected if k not in ema]
    unexpected = [k for k in ema if k not in expected]
    mism = [f"{k} {tuple(ema[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
            if k in ema and tuple(ema[k].shape) != tuple(v.shape)]
    if missing or unexpected or mism:
        parts = [f"{label}: {_fmt_list(items)}" for label, items in
                 (("missing keys", missing), ("unexpected keys", unexpected),
                  ("shape mismatches (file vs expected)", mism)) if items]
        raise InputFileError(
            src, f"does not match the CoW 3-D StyleGAN generator for image_size {image_size}, network_capacity {nc}, "
            f"fmap_max {fmap_max} ({fmap_note}), depth {depth}: " + "; ".join(parts),
            f"pass the .config.json saved with this model (--config; read {cfg_path}) and, if it was trained "
            "with another channel cap, --fmap-max; checkpoints from other code versions cannot be imported")
    state = {}
    for k in own:
        if k == "mapping.w_avg":
            state[k] = own[k]
            continue
        t = ema[theirs_key(k)]
        if not t.is_floating_point() or not bool(torch.isfinite(t).all()):
            raise InputFileError(src, f"tensor {theirs_key(k)} holds NaN/Inf or is not floating point",
                                 "the checkpoint is damaged or its training diverged; use an earlier model_<k>.pt")
        state[k] = t.detach().to(torch.float32)
    G.load_state_dict(state, strict=True)
    G.eval().requires_grad_(False)
    G.mapping.estimate_w_avg(truncation_mean_samples, truncation_mean_seed)
    info = {"their": their, "config_path": cfg_path, "ignored": {k: v for k, v in ignored.items() if v},
            "fmap_max": int(fmap_max), "fmap_note": fmap_note, "fmap_inferred": fmap_inferred, "n_ema": len(ema)}
    return G, info


def import_aydin2024(
    src: str | os.PathLike,                       # their models/<name>/model_<k>.pt
    out: str | os.PathLike,                       # the .vgan checkpoint to write
    config: str | os.PathLike | None = None,      # their .config.json (default: next to src)
    fmap_max: int | None = None,                  # channel cap used in training (default: inferred from shapes)
    spacing: Sequence[float] | None = None,       # voxel size (x, y, z) mm; default 0.297, 0.297, 0.6
    reference_image=None,                         # ROI crop (path or Volume): spacing, origin, direction from it
    name: str | None = None,                      # model name for the card (default: <folder>-model_<k>)
    depth: int = 32,                              # slices (32: hard-coded in their code)
    clamp: bool = False,                          # their quirk: clamp generated intensities to [0, 1]
    truncation_mean_samples: int = 10_000,        # latents averaged for the truncation mean (their quirk: 2000)
    truncation_mean_seed: int = 0,                # seed of those latents
    truncation_psi: float = 0.9,                  # default ψ of the checkpoint (their generation script: 0.9)
) -> Path:
    """Convert one of their checkpoints into a volgan checkpoint of family ``aydin2024-stylegan3d``.

    Parameters
    ----------
    src, config
        Their ``model_<k>.pt`` and ``.config.json`` (image_size, network_capacity, lr_mlp).
    fmap_max
        Their training option ``--fmap_max`` (Small 256, Medium_v1 512, Medium_v2/Large 1024 in their
        README); it is not stored in their config, so by default it is inferred from the tensor shapes.
    spacing, reference_image
        Geometry of generated volumes. Their generator writes 4-D NIfTIs with the template's affine and
        loses the ROI offset; give the ROI crop (same D×H×W as the model) to keep spacing, origin and
        direction, or only ``spacing``.
    clamp, truncation_mean_samples
        Their generation quirks as options: output clamped to [0, 1] (``clamp=True``), truncation mean over
        2000 latents (``truncation_mean_samples=2000``; theirs was unseeded and used the non-EMA mapping
        net, ours is seeded and uses the EMA one that generates).

    Returns
    -------
    Path of the written checkpoint (a model card ``<stem>.card.md`` is written beside it).

    Raises
    ------
    InputFileError
        Unreadable or unsafe file, missing config, unsupported options, or tensors that do not fit the
        architecture: the message lists missing and unexpected keys and shape mismatches.
    """
    import torch

    from .networks.aydin2024 import FAMILY

    src = Path(src)
    if not (isinstance(truncation_psi, (int, float)) and math.isfinite(truncation_psi)):
        raise VolGANError(f"truncation_psi {truncation_psi!r}: expected a number (1 = off)")
    if spacing is not None:
        _check_spacing(spacing)
        if reference_image is not None:
            raise VolGANError("give either --reference-image (spacing, origin and direction from it) or a spacing, not both")
    G, info = build_aydin2024(src, config, fmap_max, depth, "itk", truncation_mean_samples, truncation_mean_seed)
    their, cfg_path, ema_count = info["their"], info["config_path"], info["n_ema"]
    latent_dim = G.z_dim

    origin = direction = None
    geometry_from = "default spacing of the TopCoW/CoW ROI (0.297, 0.297, 0.6) mm; volume centred on (0, 0, 0)"
    if reference_image is not None:
        spacing, origin, direction, where = _reference_geometry(reference_image, G.output_shape)
        geometry_from = f"reference image {where}"
    elif spacing is not None:
        geometry_from = "spacing given at import; volume centred on (0, 0, 0)"
    spacing = _check_spacing(DEFAULT_SPACING if spacing is None else spacing)

    digest = sha256_file(src)
    name = name or f"{src.parent.name or 'cow'}-{src.stem}"
    d, h, w = G.output_shape
    n_params = sum(p.numel() for p in G.parameters())
    cfg = make_config(
        FAMILY, G.config(), spacing=spacing, origin=origin, direction=direction,
        intensity={"network_range": [0.0, 1.0], "physical_range": [0.0, 1.0],
                   "units": "min-max normalised TOF-MRA intensity (per volume, as in their training data)",
                   "clip": bool(clamp)},
        anatomy="circle-of-willis (TOF-MRA ROI)", latent="normal",
        defaults={"truncation_psi": float(truncation_psi), "noise_mode": "random"},
        name=name,
        description=(
            f"Circle-of-Willis 3-D StyleGAN of Aydin et al. (NeuroImage 2024), imported from their checkpoint "
            f"`{src.name}` (EMA networks SE/GE) with its forward pass reproduced exactly. Generates {d}×{h}×{w} "
            f"(D×H×W) TOF-MRA ROIs, intensities in [0, 1]{' clamped as in their code' if clamp else ''}; "
            f"z ~ N(0, I_{latent_dim}); w = their style vectors, one per block ({G.num_ws}); noise = one uniform "
            f"noise image per sample. Code MIT; weights from the authors on request (their terms apply)."),
    )
    prov = {
        "source": {"format": FORMAT, "file": src.name, "sha256": digest, "config_file": str(cfg_path.name),
                   "config": their, "repository": REPOSITORY, "license": LICENSE, "citation": CITATION},
        "tensors_used": f"SE.* and GE.* (EMA; {ema_count} tensors, {n_params:,} generator parameters)",
        "tensors_ignored": info["ignored"],
        "fmap_max": {"value": info["fmap_max"], "inferred": info["fmap_inferred"], "how": info["fmap_note"]},
        "geometry": geometry_from + "; array (D, H, W) = ITK (z, y, x): their (z, x, y) tensor transposed in-plane",
        "truncation_mean": (f"mean style of {truncation_mean_samples} N(0, I) latents (seed {truncation_mean_seed}) "
                            "through the EMA mapping net; their code averages 2000 unseeded latents through the "
                            "non-EMA mapping net S"),
        "quirks": {"clamp_0_1": bool(clamp), "truncation_mean_samples": int(truncation_mean_samples)},
        "license": LICENSE,
    }
    with torch.no_grad():
        return save_checkpoint(out, cfg, G_ema=G, provenance=prov)
