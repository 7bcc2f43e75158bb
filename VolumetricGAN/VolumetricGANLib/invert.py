"""Inversion: find the latent (and noise) from which a generator reproduces a given volume.

StyleGAN-like families (``has_w``) are projected into **W+** (one w per layer, the default) or **W** (one w
for all layers), starting from the mean w of 1000 seeded samples, with the per-layer noise inputs optimised
too and held back by the noise regulariser of Karras et al. (CVPR 2020, "Analyzing and Improving the Image
Quality of StyleGAN", §5: squared autocorrelations at every scale of a noise pyramid, plus renormalisation to
zero mean / unit variance after each step). Families without a w space (the progressive spongiosa GAN) are
projected into **z**; for a hypersphere latent z is kept on the unit sphere. The loss is the mean squared
error in network units; Adam with a cosine learning-rate ramp-down.

The target must lie on the model's grid (its shape, and its spacing to 0.1 %); ``resample=True`` resamples it
onto that grid (linear interpolation, same physical centre) and says so in the result's ``info``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from VolGANCore import VolGANError, Volume
from VolGANCore.progress import Progress

from .checkpoint import to_network, to_physical

__all__ = ["InversionResult", "invert", "noise_regularisation"]


@dataclasses.dataclass
class InversionResult:
    """The reconstruction (a Volume on the target's grid, physical units), the latent, and the errors."""

    volume: Volume
    space: str                              # "w+", "w" or "z"
    latent: np.ndarray                      # (num_ws, w_dim) for w/w+, (z_dim,) for z
    noise: list                             # optimised noise inputs (numpy arrays), empty for z
    history: list                           # MSE in network units at each logged step
    info: dict                              # errors in physical units, settings, resampling note

    def latents_dict(self) -> dict[str, np.ndarray]:
        key = "z" if self.space == "z" else "w"
        return {key: self.latent[None].astype(np.float32)}


def noise_regularisation(noise: list) -> "torch.Tensor":  # noqa: F821
    """Σ over noise maps and pyramid levels of the squared mean autocorrelation at a one-voxel shift per axis."""
    import torch
    import torch.nn.functional as F

    total = torch.zeros(())
    for n in noise:
        x = n
        while True:
            spatial = range(2, x.ndim)
            for dim in spatial:
                if x.shape[dim] > 1:
                    total = total + (x * torch.roll(x, shifts=1, dims=dim)).mean() ** 2
            if min(x.shape[2:]) <= 8:  # as StyleGAN2's projector: coarser levels are too few voxels to average
                break
            x = F.avg_pool3d(x, 2) * (2 ** 1.5)  # keep unit variance of white noise after 2×2×2 averaging
    return total


def _target_on_grid(target: Volume, config: dict, resample: bool) -> tuple[Volume, str]:
    from VolGANCore.geometry import resample as resample_volume

    shape = tuple(int(s) for s in config["output_shape"])
    spacing = tuple(float(s) for s in config["spacing"])
    same_spacing = np.allclose(target.spacing, spacing, rtol=1e-3)
    if target.shape == shape and same_spacing:
        return target, ""
    if not resample:
        raise VolGANError(
            f"invert: the target is {target.shape} voxels at {tuple(round(s, 4) for s in target.spacing)} mm but the "
            f"model generates {shape} at {spacing} mm (crop/resample it to the model's grid, or pass --resample)")
    out = resample_volume(target, spacing)
    if out.shape != shape:
        from VolGANCore.geometry import crop_or_pad

        out = crop_or_pad(out, shape, (np.asarray(out.shape) - 1) / 2.0, pad_value=float(out.array.min()))
    note = (f"target resampled from {target.shape} voxels at {tuple(round(s, 4) for s in target.spacing)} mm onto "
            f"the model grid {shape} at {spacing} mm (linear interpolation, centre kept)")
    return out, note


def invert(
    checkpoint_or_model,                     # .vgan path or (model, config)
    target: Volume,                          # the volume to reproduce (physical units)
    space: str = "auto",                     # "w+", "w", "z"; auto = w+ when the model has a w space, else z
    steps: int = 300,                        # optimisation steps
    lr: float = 0.05,                        # peak learning rate (cosine ramp-down over the last 75 %)
    noise_weight: float = 1e4,               # weight of the noise regulariser (w/w+ only)
    optimise_noise: bool = True,             # optimise the per-layer noise inputs (w/w+ only)
    seed: int = 0,                           # seeds the w mean estimate, the start noise and the start z
    resample: bool = False,                  # resample a target that is not on the model grid
    device: str = "auto",
    progress=None,
    cancel=None,
) -> InversionResult:
    """Project ``target`` into the generator's latent space; returns the reconstruction and its errors.

    Example
    -------
    >>> res = invert("spongiosa.vgan", read_volume("patch.nii.gz"), steps=200)     # doctest: +SKIP
    >>> res.info["psnr_db"], res.volume.shape                                         # doctest: +SKIP
    """
    import torch

    from .generate import resolve_model

    if steps < 1:
        raise VolGANError(f"invert: --steps {steps}: need at least 1")
    loaded = resolve_model(checkpoint_or_model, None, device)
    model, config = loaded.generator, loaded.config
    dev = next(model.parameters()).device
    has_w = bool(getattr(model, "has_w", False))
    space = ("w+" if has_w else "z") if space == "auto" else space
    if space not in ("w+", "w", "z"):
        raise VolGANError(f"invert: space '{space}': choose w+, w or z")
    if space in ("w+", "w") and not has_w:
        raise VolGANError(f"invert: the '{config['family']}' model has no w space; use space z")
    grid_target, note = _target_on_grid(target, config, resample)
    y = torch.as_tensor(np.asarray(to_network(grid_target.array.astype(np.float32), config["intensity"])),
                        device=dev)[None, None]
    hypersphere = config["latent"]["distribution"] == "hypersphere"
    g = torch.Generator().manual_seed(int(seed))
    for p in model.parameters():
        p.requires_grad_(False)

    noise: list = []
    if space == "z":
        z = torch.randn(1, model.z_dim, generator=g).to(dev).requires_grad_(True)
        params = [z]

        def synth():
            zz = z / z.norm(dim=1, keepdim=True) if hypersphere else z
            return model(zz)
    else:
        with torch.no_grad():
            zs = torch.randn(1000, model.z_dim, generator=g).to(dev)
            if hypersphere:
                zs = zs / zs.norm(dim=1, keepdim=True)
            w_mean = model.mapping(zs, 1.0, None).mean(dim=0)               # (num_ws, w_dim)
            w_std = float((model.mapping(zs, 1.0, None) - w_mean).square().sum(-1).mean().sqrt())
        start = w_mean if space == "w+" else w_mean[:1]
        w = start.clone()[None].requires_grad_(True)                          # (1, num_ws or 1, w_dim)
        params = [w]
        if optimise_noise and getattr(getattr(model, "synthesis", None), "use_noise", True):
            noise = [n.detach().clone().requires_grad_(True) for n in model.make_noise(1, [g], dev)]
            params += noise

        def synth():
            ws = w if space == "w+" else w.expand(1, model.num_ws, -1)
            return model.synthesis(ws, noise_mode="random", noise=noise or None)

    opt = torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999))
    history = []
    with Progress(steps, "invert", progress, cancel) as bar:
        for step in range(steps):
            t = step / max(steps - 1, 1)
            ramp = min(1.0, (1.0 - t) / 0.75)
            opt.param_groups[0]["lr"] = lr * (0.5 - 0.5 * math.cos(ramp * math.pi)) if t > 0.25 else lr
            out = synth().float()
            mse = (out - y).square().mean()
            loss = mse + (noise_weight * noise_regularisation(noise) if noise else 0.0)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if noise:
                with torch.no_grad():
                    for n in noise:
                        n.sub_(n.mean()).div_(n.square().mean().sqrt().clamp_min(1e-8))
            if step % 10 == 0 or step == steps - 1:
                history.append(float(mse.detach()))
            bar.advance(message=f"mse {history[-1]:.4g}")
    with torch.no_grad():
        final = synth().float()[0, 0].cpu().numpy()
    recon = to_physical(final, config["intensity"]).astype(np.float32)
    truth = grid_target.array.astype(np.float32)
    err = recon - truth
    rng = float(np.ptp(truth)) or 1.0
    mse_phys = float(np.mean(err ** 2))
    ncc = float(np.corrcoef(recon.ravel(), truth.ravel())[0, 1]) if recon.std() > 0 and truth.std() > 0 else 0.0
    info: dict[str, Any] = {
        "space": space, "steps": steps, "lr": lr, "noise_weight": noise_weight if noise else 0.0, "seed": seed,
        "mse_network": float(history[-1]), "mse_network_start": float(history[0]),
        "rmse_physical": math.sqrt(mse_phys), "mae_physical": float(np.mean(np.abs(err))),
        "psnr_db": 10 * math.log10(rng ** 2 / max(mse_phys, 1e-20)), "ncc": ncc,
        "units": config["intensity"].get("units", ""), "resampled": note,
    }
    if space != "z":
        info["w_distance_from_mean"] = float((w.detach() - start[None]).square().sum(-1).mean().sqrt()) / max(w_std, 1e-8)
        latent = (w.detach()[0] if space == "w+" else w.detach()[0].expand(model.num_ws, -1)).cpu().numpy()
    else:
        zz = z.detach()[0]
        latent = (zz / zz.norm() if hypersphere else zz).cpu().numpy()
    volume = grid_target.with_array(recon, label_scheme=None, metadata={"inverted_from": "target"})
    return InversionResult(volume, space, latent, [n.detach().cpu().numpy() for n in noise], history, info)
