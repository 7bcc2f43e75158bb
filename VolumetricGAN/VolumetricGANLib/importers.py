"""Importers that turn published generator weights into self-describing volgan checkpoints.

Each importer reads the published file safely (``weights_only=True``), checks every tensor name and shape,
builds the matching network from :mod:`VolumetricGANLib.networks`, loads the tensors with ``strict=True``
and writes a ``.vgan`` checkpoint with the geometry, intensity units, latent distribution and provenance
(source file name and sha256, licence, citation). Register new formats in :data:`IMPORTERS`.

Formats
-------
``miccai2020-pgan``
    The spongiosa generator of Iarussi, Thomsen & Delrieux, "Generative Modelling of 3D in-silico
    Spongiosa with Controllable Micro-Structural Parameters", MICCAI 2020
    (emmanueliarussi/generative3DSpongiosa, ``trained_models/g_net.pth``, CC BY 4.0): a plain state dict
    of a progressive 3-D generator (max_res 3 → 32³, nch 1, WScale + PixelNorm, tanh), z ∈ R³² on the unit
    hypersphere, output mapped linearly from [-1, 1] to [-350, 1100] (the paper's density units), voxels
    164 µm isotropic, bone threshold 225.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Callable

from VolGANCore.errors import InputFileError
from VolGANCore.torchfile import safe_torch_load

from .checkpoint import make_config, save_checkpoint, sha256_file
from .import_aydin2024 import FORMAT as AYDIN2024_FORMAT
from .import_aydin2024 import import_aydin2024

__all__ = ["IMPORTERS", "import_model", "detect_format", "import_miccai2020_pgan", "MICCAI2020_SHA256"]

MICCAI2020_SHA256 = "70a4ae9d418f52052a08d6c2f0bfbb83fd8ff055a503664dd9f9874f8765a316"
MICCAI2020_CITATION = ("Iarussi E., Thomsen F., Delrieux C. Generative Modelling of 3D in-silico Spongiosa with "
                       "Controllable Micro-Structural Parameters. MICCAI 2020.")


def _read_state_dict(path: Path, what: str) -> dict[str, Any]:
    sd = safe_torch_load(path, what, f"pass the original {what}", state_dict=True)
    if not isinstance(sd, dict) or not all(hasattr(v, "shape") for v in sd.values()):
        raise InputFileError(path, f"expected a state dict of tensors ({what}), got {type(sd).__name__}",
                             f"pass the original {what} file")
    return sd


_MICCAI_KEY = re.compile(r"^(?:blocks\.(\d+)\.conv([01])|toRGBs\.(\d+))\.conv\.(weight|bias)$")


def import_miccai2020_pgan(
    src: str | os.PathLike,          # the published g_net.pth
    out: str | os.PathLike,          # the .vgan checkpoint to write
    name: str = "spongiosa-miccai2020",  # model name for the card
) -> Path:
    """Convert the MICCAI 2020 spongiosa generator state dict into a volgan checkpoint.

    The architecture (``max_res``, ``nch``, output channels) is inferred from the tensor shapes and then
    checked key by key against the network; any difference is listed in the error.

    Returns
    -------
    Path of the written checkpoint.
    """
    import torch

    from .networks import ProgressiveGenerator

    src = Path(src)
    sd = _read_state_dict(src, "MICCAI 2020 generator (g_net.pth)")
    bad = [k for k in sd if not _MICCAI_KEY.match(k)]
    if bad:
        raise InputFileError(src, f"not the MICCAI 2020 progressive generator: unexpected keys {bad[:5]}",
                             "use --format for the right family, or the original g_net.pth")
    n_rgb = sum(1 for k in sd if k.startswith("toRGBs.") and k.endswith(".weight"))
    w0 = sd.get("blocks.0.conv0.conv.weight")
    if n_rgb < 1 or w0 is None or w0.ndim != 5:
        raise InputFileError(src, "MICCAI 2020 generator: blocks.0.conv0 / toRGBs tensors missing or not 3-D",
                             "pass the original g_net.pth")
    max_res = n_rgb - 1
    nch = int(w0.shape[0]) // 32
    img_channels = int(sd["toRGBs.0.conv.weight"].shape[0])
    G = ProgressiveGenerator(max_res=max_res, nch=max(nch, 1), img_channels=img_channels)
    own = G.state_dict()
    missing = [k for k in own if k not in sd]
    mism = [f"{k} {tuple(sd[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
            if k in sd and tuple(sd[k].shape) != tuple(v.shape)]
    if missing or mism or 32 * nch != int(w0.shape[0]):
        raise InputFileError(src, f"MICCAI 2020 generator does not match the progressive architecture "
                             f"(max_res {max_res}, nch {nch}): missing {missing[:5]}, shape mismatches {mism[:5]}",
                             "pass the original g_net.pth")
    G.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)
    digest = sha256_file(src)
    size = 4 * 2 ** max_res
    cfg = make_config(
        "pgan-3d", G.config(), spacing=(0.164, 0.164, 0.164),
        intensity={"network_range": [-1.0, 1.0], "physical_range": [-350.0, 1100.0],
                   "units": "MICCAI 2020 density units (HR-pQCT, bone threshold 225)", "clip": False},
        anatomy="spongiosa (trabecular bone)", latent="hypersphere",
        defaults={"truncation_psi": 1.0, "noise_mode": "none", "bone_threshold": 225.0},
        name=name,
        description=(f"Progressive 3-D GAN generator of {size}³ trabecular-bone (spongiosa) patches at 164 µm "
                     "isotropic, published with Iarussi, Thomsen & Delrieux (MICCAI 2020) and imported "
                     "unchanged. Intensities in the paper's density units, window [-350, 1100]; the paper's "
                     "bone threshold is 225. z is drawn from N(0, I) and projected onto the unit sphere."),
    )
    prov = {
        "source": {"format": "miccai2020-pgan", "file": src.name, "sha256": digest,
                   "sha256_matches_published": digest == MICCAI2020_SHA256,
                   "repository": "emmanueliarussi/generative3DSpongiosa (trained_models/g_net.pth)",
                   "license": "CC BY 4.0 (attribute the authors)", "citation": MICCAI2020_CITATION},
        "data_summary": "HR-pQCT spongiosa patches of the MICCAI 2020 paper (not distributed with this model)",
        "note": "published weights hold one generator; stored as G_ema",
    }
    with torch.no_grad():
        return save_checkpoint(out, cfg, G_ema=G, provenance=prov)


# The registry: every published format volgan can import (importer modules register nothing themselves).
IMPORTERS: dict[str, Callable[..., Path]] = {
    "miccai2020-pgan": import_miccai2020_pgan,
    AYDIN2024_FORMAT: import_aydin2024,
}


def detect_format(src: str | os.PathLike) -> str:
    """Which published format ``src`` is in (read safely, nothing executed); a readable error otherwise."""
    src = Path(src)
    blob = safe_torch_load(src, "published generator", "pass the original published generator file")
    if isinstance(blob, dict) and "GAN" in blob and isinstance(blob["GAN"], dict):
        return "aydin2024-stylegan"
    if isinstance(blob, dict) and blob and all(isinstance(k, str) and _MICCAI_KEY.match(k) for k in blob):
        return "miccai2020-pgan"
    raise InputFileError(src, "not a published generator format volgan can import",
                         f"known formats: {', '.join(sorted(IMPORTERS))}; volgan checkpoints (.vgan) need no import")


def import_model(fmt: str, src: str | os.PathLike, out: str | os.PathLike, **kwargs) -> Path:
    """Import ``src`` of published format ``fmt`` into the volgan checkpoint ``out``."""
    from VolGANCore.errors import VolGANError

    if fmt not in IMPORTERS:
        raise VolGANError(f"--format {fmt}: unknown format (known: {', '.join(sorted(IMPORTERS))})")
    return IMPORTERS[fmt](src, out, **kwargs)
