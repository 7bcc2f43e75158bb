"""Sampling a trained generator: volumes with geometry and physical units, reproducible latents.

Main entry points (all callable from the Slicer logic or a script)::

    model = load_generator("model.vgan")                             # LoadedModel: generator, config, path, ...
    result = generate("model.vgan", n=8, seed=0, truncation=0.9)     # or generate(model, ...)
    volumes, latents = result                                        # list[Volume], {"z": ..., "w": ...}
    write_generated(result, "samples/")                              # files + latents.npz + manifest

and the editing modes :func:`interpolate` (slerp in z, lerp in w), :func:`variation` (fixed w, new noise)
and :func:`mix` (style mixing at a layer cutoff).

Reproducibility: z of sample *i* is row *i* of ``torch.randn(n, z_dim)`` from a CPU generator seeded with
``seed`` (projected onto the unit sphere for hypersphere latents); random noise inputs of sample *i* come
from their own seed (recorded in ``latents.npz``), so a sample does not depend on the batch it ran in or on
the device. On a GPU, generation runs under autocast (bf16 where supported, else fp16); a batch that
produces NaN/Inf is re-run in fp32 and reported in ``result.info``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from VolGANCore.atomic import atomic_directory
from VolGANCore.env import amp_dtype
from VolGANCore.errors import InputFileError, VolGANError
from VolGANCore.progress import Progress
from VolGANCore.volume import Volume

from .checkpoint import LoadedModel, load_generator, to_physical

__all__ = [
    "GenerationResult", "resolve_model", "sample_z", "read_latents", "generate", "synthesize",
    "volume_geometry", "write_generated", "generated_file_names", "write_sequence", "interpolate", "variation",
    "mix", "slerp", "sample_variants",
]

NOISE_MODES = ("random", "const", "none")
FORMATS = {"nii.gz": ".nii.gz", "nii": ".nii", "nrrd": ".nrrd", "mha": ".mha"}


@dataclasses.dataclass
class GenerationResult:
    """Generated volumes with the latents that reproduce them.

    Attributes
    ----------
    volumes : list of Volume
        One per sample, in latent order, physical units, geometry from the checkpoint.
    z : ndarray (N, z_dim)
        Input latents.
    w : ndarray (N, num_ws, w_dim) or None
        Intermediate latents after truncation (StyleGAN families only).
    noise_seeds : ndarray (N,) or None
        Seed of each sample's random noise inputs (when noise mode is "random").
    config : dict
        The checkpoint config.
    info : dict
        Parameters and run report: device, AMP dtype, fp32 retries, seconds.
    checkpoint : str or None
        The checkpoint file the model came from (None for a model built in code).
    provenance : dict
        The checkpoint's provenance record.
    labels : list of Volume or None
        A joint image + label model's generated label maps (argmax of its class channels, the checkpoint's
        label scheme), one per volume; None for image-only models.
    variants : ndarray (N, 8) or None
        A conditional model's CoW variant vectors (0/1; anterior then posterior) the samples were drawn with.

    Unpacks as ``volumes, latents = result`` with ``latents = {"z": z, "w": w}``.
    """

    volumes: list[Volume]
    z: np.ndarray
    w: np.ndarray | None
    noise_seeds: np.ndarray | None
    config: dict[str, Any]
    info: dict[str, Any]
    checkpoint: str | None = None
    provenance: dict[str, Any] = dataclasses.field(default_factory=dict)
    labels: list[Volume] | None = None
    variants: np.ndarray | None = None

    @property
    def latents(self) -> dict[str, np.ndarray | None]:
        return {"z": self.z, "w": self.w}

    def __iter__(self) -> Iterator[Any]:
        yield self.volumes
        yield self.latents

    def __len__(self) -> int:
        return len(self.volumes)


# -- inputs --------------------------------------------------------------------------------------------------
def resolve_model(checkpoint_or_model, config: Mapping[str, Any] | None = None, device: str = "auto") -> LoadedModel:
    """The :class:`LoadedModel` to sample from, on ``device``.

    Accepts a checkpoint path (loaded), a :class:`LoadedModel` (moved to ``device``), a ``(model, config)``
    pair or a model plus ``config`` (a generator built in code; ``path`` None).
    """
    from VolGANCore.env import pick_device

    dev = pick_device(device)
    if isinstance(checkpoint_or_model, (str, os.PathLike)):
        return load_generator(checkpoint_or_model, device=dev)
    if isinstance(checkpoint_or_model, LoadedModel):
        checkpoint_or_model.generator.eval().to(dev)
        return checkpoint_or_model
    if isinstance(checkpoint_or_model, tuple) and len(checkpoint_or_model) == 2:
        model, config = checkpoint_or_model
    else:
        model = checkpoint_or_model
    if config is None:
        raise VolGANError("generate: a model object needs its checkpoint config (pass (model, config) or config=)")
    if not hasattr(model, "z_dim") or not hasattr(model, "output_shape"):
        raise VolGANError(f"generate: {type(model).__name__} is not a VolumetricGANLib generator")
    model.eval()
    return LoadedModel(model.to(dev), dict(config))


def sample_z(n: int, z_dim: int, seed: int, distribution: str = "normal"):
    """``n`` latents from a CPU generator seeded with ``seed`` (device-independent); float32 tensor."""
    import torch

    g = torch.Generator().manual_seed(int(seed))
    z = torch.randn(int(n), int(z_dim), generator=g)
    if distribution == "hypersphere":
        z = z / z.norm(p=2, dim=1, keepdim=True)
    return z


def read_latents(source, z_dim: int, what: str = "--latents") -> np.ndarray:
    """An ``(N, z_dim)`` float32 array from an array, a ``.npy`` file, or a ``.npz`` with key ``z``."""
    path = None
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise InputFileError(path, "latents file not found", "pass a .npy (N, z_dim) array or a latents.npz")
        try:
            data = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise InputFileError(path, f"not a NumPy .npy/.npz file ({exc})", "save latents with numpy.save") from None
        if isinstance(data, np.lib.npyio.NpzFile):
            if "z" not in data.files:
                raise InputFileError(path, f"has no array 'z' (has {data.files})", "use the latents.npz that volgan wrote")
            data = data["z"]
        arr = np.asarray(data)
    else:
        arr = np.asarray(source)
    where = path if path is not None else what
    if arr.ndim == 1 and arr.shape[0] == z_dim:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] != z_dim or arr.shape[0] < 1:
        raise InputFileError(where, f"latents of shape {arr.shape}, the checkpoint needs (N, {z_dim})",
                             f"pass an (N, {z_dim}) array")
    if not np.issubdtype(arr.dtype, np.floating) or not np.all(np.isfinite(arr)):
        raise InputFileError(where, "latents must be finite floating-point numbers", "regenerate them")
    return arr.astype(np.float32)


def _noise_seed(seed: int, index: int) -> int:
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(index), 0x6E6F6973]).generate_state(1)[0])


def volume_geometry(config: Mapping[str, Any]) -> dict[str, Any]:
    """Spacing, origin and direction of generated volumes: the config's, or the volume centred on (0,0,0)."""
    d, h, w = (int(s) for s in config["output_shape"])
    spacing = tuple(float(s) for s in config["spacing"])
    direction = np.eye(3) if config.get("direction") is None else np.asarray(config["direction"], float).reshape(3, 3)
    if config.get("origin") is not None:
        origin = tuple(float(o) for o in config["origin"])
    else:
        half = np.array([(w - 1) / 2 * spacing[0], (h - 1) / 2 * spacing[1], (d - 1) / 2 * spacing[2]])
        origin = tuple(float(v) for v in -(direction @ half))
    return {"spacing": spacing, "origin": origin, "direction": direction}


def synthesize(model, z, ws=None, noise_mode: str = "const", noise=None, amp_dtype=None):
    """One batch through the generator (from ``ws`` if given), optionally under autocast; float32 output."""
    import torch

    dev = z.device if z is not None else ws.device
    with torch.autocast(device_type=dev.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        if ws is not None:
            img = model.synthesis(ws, noise_mode=noise_mode, noise=noise)
        else:
            img = model(z, noise_mode=noise_mode, noise=noise)
    return img.float()


def _run_batches(loaded: LoadedModel, z, ws, noise_seeds, noise_mode, batch, amp, progress, cancel, description):
    """Generate from z (or ws) in batches with NaN detection and fp32 retry; returns (arrays, info)."""
    import torch

    from .labelmaps import hard_labels

    model, config = loaded.generator, loaded.config
    dev = next(model.parameters()).device
    dtype = amp_dtype(amp, dev).dtype
    n = int(z.shape[0]) if ws is None else int(ws.shape[0])
    out = np.empty((n, *[int(s) for s in config["output_shape"]]), np.float32)
    joint = int(getattr(model, "label_classes", 0) or 0)
    labels = np.empty((n, *[int(s) for s in config["output_shape"]]), np.int16) if joint else None
    retries: list[int] = []
    t0 = time.perf_counter()
    with torch.inference_mode(), Progress(n, description, progress, cancel) as prog:
        for start in range(0, n, batch):
            stop = min(n, start + batch)
            zb = z[start:stop].to(dev) if z is not None else None
            wb = ws[start:stop].to(dev) if ws is not None else None
            noise = None
            if noise_mode == "random" and getattr(model, "has_w", False):
                gens = [torch.Generator().manual_seed(int(s)) for s in noise_seeds[start:stop]]
                noise = model.make_noise(stop - start, gens, dev)
            img = synthesize(model, zb, wb, noise_mode, noise, dtype)
            if dtype is not None and not bool(torch.isfinite(img).all()):
                retries.append(start // batch)
                img = synthesize(model, zb, wb, noise_mode, noise, None)
            if not bool(torch.isfinite(img).all()):
                raise VolGANError(f"{loaded.path or 'generator'}: the generator produced NaN/Inf even in fp32 "
                                  f"(samples {start}..{stop - 1}); the checkpoint is damaged or diverged")
            phys = to_physical(img[:, 0], config["intensity"])
            out[start:stop] = phys.cpu().numpy()
            if joint:
                labels[start:stop] = hard_labels(img[:, 1:], config.get("label_scheme") or "topcow13",
                                                   model.label_decoding)
            prog.advance(stop - start, f"{stop}/{n}")
    info = {
        "device": str(dev),
        "amp": None if dtype is None else str(dtype).replace("torch.", ""),
        "fp32_retries": len(retries),
        "fp32_retry_batches": retries,
        "seconds": round(time.perf_counter() - t0, 4),
    }
    if retries:
        info["warning"] = (f"{len(retries)} batch(es) produced NaN/Inf under {info['amp']} autocast and were "
                           "re-run in fp32")
    return out, labels, info


def _volumes(arrays: np.ndarray, config: Mapping[str, Any], meta: Sequence[dict[str, str]],
             label_scheme: str | None = None) -> list[Volume]:
    geo = volume_geometry(config)
    return [Volume(arrays[i], spacing=geo["spacing"], origin=geo["origin"], direction=geo["direction"],
                   label_scheme=label_scheme, metadata=meta[i]) for i in range(arrays.shape[0])]


def _result(loaded: LoadedModel, arrays: np.ndarray, labels: np.ndarray | None, meta, z, ws, noise_seeds,
            info: dict, variants: np.ndarray | None = None) -> GenerationResult:
    """A :class:`GenerationResult` of :func:`_run_batches`' arrays (and a joint model's label maps)."""
    config = loaded.config
    label_volumes = None
    if labels is not None:
        label_volumes = _volumes(labels, config, meta, config.get("label_scheme") or "topcow13")
    return GenerationResult(_volumes(arrays, config, meta), np.asarray(z, np.float32),
                            None if ws is None else np.asarray(ws, np.float32), noise_seeds, config, info,
                            loaded.path, loaded.provenance, label_volumes, variants)


def sample_variants(config: Mapping[str, Any], n: int, seed: int, variant=None) -> np.ndarray:
    """The CoW variant vectors (``(n, 8)`` 0/1) a conditional model's samples are drawn with.

    ``variant`` (``"posterior=0,1,1,1"``, a list of such parts, or ``{"anterior", "posterior"}``) fixes the
    given parts for every sample; a part not given is drawn per sample from the training set's vectors that
    match the given part (their recorded frequencies, ``config["conditioning"]``), or from all of them when none
    matches. Without ``variant`` every sample draws a training vector. Sample *i*'s draw comes from its own seed,
    so it does not depend on ``n`` or the batch.
    """
    from .labelmaps import parse_variant

    cond = config.get("conditioning") or {}
    vectors = np.asarray(cond.get("vectors", []), np.int64).reshape(-1, 8)
    counts = np.asarray(cond.get("counts", []), np.float64)
    given = {}
    if variant is not None:
        given = dict(variant) if isinstance(variant, Mapping) else parse_variant(variant, partial=True)
    fixed = np.full(8, -1, np.int64)
    for part, cols in (("anterior", slice(0, 4)), ("posterior", slice(4, 8))):
        if part in given:
            fixed[cols] = [int(b) for b in given[part]]
    if (fixed >= 0).all():
        return np.tile(fixed, (n, 1))
    if len(vectors) == 0 or len(counts) != len(vectors) or counts.sum() <= 0:
        raise VolGANError("this conditional model's checkpoint records no training variant frequencies; pass "
                          "--variant anterior=a,b,c,d posterior=a,b,c,d (1 = present)")
    match = (vectors[:, fixed >= 0] == fixed[fixed >= 0]).all(axis=1)
    pool, weights = (vectors[match], counts[match]) if match.any() else (vectors, counts)
    out = np.empty((n, 8), np.int64)
    for i in range(n):
        rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, i, 0x76617269])
        out[i] = pool[rng.choice(len(pool), p=weights / weights.sum())]
    out[:, fixed >= 0] = fixed[fixed >= 0]
    return out


def _sampling_options(loaded: LoadedModel, truncation, noise, batch, mode: str = "sample") -> tuple[float, str]:
    """ψ and noise mode of every sampling mode: the caller's, else the checkpoint's defaults (ψ 1; noise
    ``const`` for StyleGAN, ``none`` otherwise); checked with the batch size."""
    model, config = loaded.generator, loaded.config
    if mode != "sample" and int(getattr(model, "c_dim", 0) or 0):
        raise VolGANError(f"--mode {mode}: not available for a model conditioned on the CoW variant yet; sample "
                          "with --mode sample and --variant")
    defaults = config.get("defaults", {})
    truncation = float(defaults.get("truncation_psi", 1.0) if truncation is None else truncation)
    noise = noise or defaults.get("noise_mode", "const" if getattr(model, "has_w", False) else "none")
    if noise not in NOISE_MODES:
        raise VolGANError(f"--noise {noise}: expected one of {', '.join(NOISE_MODES)}")
    if not isinstance(batch, int) or batch < 1:
        raise VolGANError(f"--batch {batch}: expected a positive integer")
    if not (isinstance(truncation, (int, float)) and math.isfinite(truncation)):
        raise VolGANError(f"--truncation {truncation}: expected a number (1 = off, 0.7–0.9 typical)")
    if truncation != 1 and not getattr(model, "has_w", False):
        raise VolGANError(f"--truncation {truncation}: the '{config['family']}' family has no w space to "
                          "truncate in; use --truncation 1")
    if int(config.get("img_channels", 1)) != 1:
        raise VolGANError(f"{loaded.path or 'checkpoint'}: multi-channel generators are not supported by generate")
    return truncation, noise


def generate(
    checkpoint_or_model,                         # .vgan path, LoadedModel, (model, config), or a model with config=
    n: int | None = None,                        # number of samples (default: rows of `latents`, else 1)
    seed: int = 0,                               # seed of z (and of per-sample noise)
    truncation: float | None = None,             # ψ (StyleGAN only); None = the checkpoint default
    noise: str | None = None,                    # 'random', 'const' or 'none'; None = checkpoint default
    batch: int = 8,                              # samples per forward pass
    device: str = "auto",                        # 'auto', 'cpu', 'cuda', 'cuda:1', 'mps'
    progress=None,                               # ProgressCallback
    cancel=None,                                 # CancelToken
    latents=None,                                # (N, z_dim) array or .npy/.npz path instead of the seed
    truncation_cutoff: int | None = None,        # truncate only the first `cutoff` ws
    amp: str = "auto",                           # 'auto' (GPU: bf16/fp16), 'off', 'bf16', 'fp16'
    config: Mapping[str, Any] | None = None,     # config when a bare model is passed
    variant=None,                                # conditional models: "posterior=0,1,1,1" etc. (sample_variants)
) -> GenerationResult:
    """Sample ``n`` volumes from a generator, in physical units with the checkpoint's geometry.

    Parameters
    ----------
    checkpoint_or_model
        A ``.vgan`` path, the :class:`LoadedModel` that :func:`load_generator` returns, or a
        ``(model, config)`` pair built in code.
    n, seed, latents
        Either ``n`` latents drawn with ``seed`` or the given ``latents`` (one sample per row).
    truncation, truncation_cutoff
        StyleGAN truncation ψ toward the tracked mean w (1 = off).
    noise
        Noise inputs: ``"random"`` (seeded per sample), ``"const"`` (the learned constant noise), ``"none"``.
    batch, device, amp
        Batch size, compute device, mixed precision on GPU (NaN batches are re-run in fp32).
    variant
        A model conditioned on the CoW variant: the variant to draw (:func:`sample_variants`; default: the
        training frequencies).

    Returns
    -------
    GenerationResult
        ``volumes`` (list of Volume) and ``z``/``w`` latents; unpacks as ``volumes, latents``. A joint model's
        label maps are in ``labels``, a conditional model's variants in ``variants``.

    Example
    -------
    >>> volumes, latents = generate("spongiosa.vgan", n=4, seed=1)   # doctest: +SKIP
    >>> volumes[0].spacing                                           # doctest: +SKIP
    (0.164, 0.164, 0.164)
    """
    import torch

    loaded = resolve_model(checkpoint_or_model, config, device)
    model, config = loaded.generator, loaded.config
    truncation, noise = _sampling_options(loaded, truncation, noise, batch)
    dist = config["latent"]["distribution"]
    if latents is not None:
        z_np = read_latents(latents, model.z_dim)
        if n is not None and int(n) != z_np.shape[0]:
            raise VolGANError(f"--n {n}: the latents file holds {z_np.shape[0]} latents; drop --n or make them agree")
        z = torch.from_numpy(z_np)
        if dist == "hypersphere":
            norms = z.norm(dim=1)
            if bool(((norms - 1).abs() > 1e-3).any()):
                z = z / norms[:, None]
    else:
        n = 1 if n is None else int(n)
        if n < 1:
            raise VolGANError(f"--n {n}: expected at least 1 sample")
        z = sample_z(n, model.z_dim, seed, dist)
    n = int(z.shape[0])
    variants = c = None
    if int(getattr(model, "c_dim", 0) or 0):
        from .labelmaps import variant_condition

        variants = sample_variants(config, n, seed, variant)
        c = variant_condition(torch.from_numpy(variants))
    elif variant is not None:
        raise VolGANError(f"--variant: {loaded.path or 'this model'} is not conditioned on the CoW variant")
    ws = None
    if getattr(model, "has_w", False):
        dev = next(model.parameters()).device
        cond = (lambda s: {}) if c is None else (lambda s: {"c": c[s:s + batch].to(dev)})
        with torch.inference_mode():
            ws = torch.cat([model.mapping(z[s:s + batch].to(dev), truncation, truncation_cutoff, **cond(s))
                            for s in range(0, n, batch)]).cpu()
    noise_seeds = np.array([_noise_seed(seed, i) for i in range(n)], np.uint32) if noise == "random" else None
    arrays, labels, info = _run_batches(loaded, None if ws is not None else z, ws, noise_seeds, noise, batch, amp,
                                        progress, cancel, "generate")
    info.update({"mode": "sample", "n": n, "seed": int(seed), "truncation_psi": truncation,
                 "truncation_cutoff": truncation_cutoff, "noise_mode": noise, "batch": batch,
                 "latents_from": "file" if latents is not None else "seed"})
    if variants is not None:
        info["variant_requested"] = None if variant is None else str(variant)
    meta = [{"model": str(config.get("name", "")), "family": config["family"], "seed": str(seed), "index": str(i),
             "units": str(config["intensity"].get("units", ""))} for i in range(n)]
    return _result(loaded, arrays, labels, meta, z.numpy(), None if ws is None else ws.numpy(), noise_seeds, info,
                   variants)


# -- writing -------------------------------------------------------------------------------------------------
def write_generated(
    result: GenerationResult,          # from generate / interpolate / variation / mix
    out_dir: str | os.PathLike,        # output folder (created atomically)
    fmt: str = "nii.gz",               # 'nii.gz', 'nii', 'nrrd' or 'mha'
    prefix: str = "sample",            # file name prefix: sample_0000.nii.gz, ...
    overwrite: bool = False,           # replace a non-empty folder
    sequence: bool = False,            # also write all volumes as one 4-D file (sequence.<fmt>)
) -> Path:
    """Write one file per volume (numbered in latent order), ``latents.npz`` and ``manifest.json``.

    The folder appears only when everything is written (a failed or cancelled run leaves nothing).
    """
    from VolGANCore.dataset import write_manifest
    from VolGANCore.io import write_volume

    names = generated_file_names(len(result.volumes), fmt, prefix)
    suffix = FORMATS[fmt]
    out_dir = Path(out_dir)
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        entries = []
        for i, (name, vol) in enumerate(zip(names, result.volumes)):
            write_volume(vol, tmp / name)
            entries.append({"file": name, "index": i, "shape": list(vol.shape), "spacing": list(vol.spacing),
                            "origin": list(vol.origin), "min": float(vol.array.min()), "max": float(vol.array.max())})
            if result.labels is not None:  # a joint model's labels: sample_0000_labels.nii.gz beside the volume
                label_name = name[: -len(suffix)] + "_labels" + suffix
                write_volume(result.labels[i], tmp / label_name)
                entries[-1].update(labels=label_name, label_scheme=result.labels[i].label_scheme)
            if result.variants is not None:
                entries[-1]["variant"] = {"anterior": [int(b) for b in result.variants[i][:4]],
                                          "posterior": [int(b) for b in result.variants[i][4:]]}
        arrays = {"z": result.z, "index": np.arange(len(result.volumes))}
        if result.variants is not None:
            arrays["variant"] = result.variants.astype(np.int8)
        if result.w is not None:
            arrays["w"] = result.w
        if result.noise_seeds is not None:
            arrays["noise_seed"] = result.noise_seeds
        np.savez(tmp / "latents.npz", **arrays)
        if sequence:
            write_sequence(result.volumes, tmp / f"sequence{suffix}")
        cfg = result.config
        params = {k: v for k, v in result.info.items()}
        params["checkpoint"] = result.checkpoint
        params["format"] = fmt
        write_manifest(tmp, entries, kind="generated", parameters=params,
                       extra={"model": {"name": cfg.get("name"), "family": cfg["family"],
                                        "units": cfg["intensity"].get("units"),
                                        "intensity": cfg["intensity"], "spacing": cfg["spacing"],
                                        "provenance": result.provenance}})
    return out_dir


def generated_file_names(n: int, fmt: str = "nii.gz", prefix: str = "sample") -> list[str]:
    """The file names :func:`write_generated` gives ``n`` volumes: ``sample_0000.nii.gz``, … in latent order."""
    if fmt not in FORMATS:
        raise VolGANError(f"--format {fmt}: expected one of {', '.join(FORMATS)}")
    digits = max(4, len(str(n - 1)))
    return [f"{prefix}_{i:0{digits}d}{FORMATS[fmt]}" for i in range(n)]


def write_sequence(volumes: Sequence[Volume], path: str | os.PathLike) -> Path:
    """Write volumes of equal geometry as one 4-D image (time last), e.g. for Slicer's Sequences module."""
    import SimpleITK as sitk

    from VolGANCore.atomic import atomic_path

    if not volumes:
        raise VolGANError("write_sequence: no volumes")
    first = volumes[0]
    images = []
    for v in volumes:
        if not v.same_geometry(first):
            raise VolGANError("write_sequence: volumes differ in geometry")
        im = sitk.GetImageFromArray(np.ascontiguousarray(v.array.astype(np.float32)))
        im.SetSpacing(first.spacing)
        im.SetOrigin(first.origin)
        im.SetDirection(tuple(first.direction.reshape(-1)))
        images.append(im)
    seq = sitk.JoinSeries(images)
    with atomic_path(path) as tmp:
        sitk.WriteImage(seq, str(tmp), useCompression=True)
    return Path(path)


# -- editing modes -------------------------------------------------------------------------------------------
def slerp(a, b, t):
    """Spherical interpolation between latent rows ``a`` and ``b`` (tensors (..., d)) at fractions ``t`` (T,)."""
    import torch

    a_n = a / a.norm(dim=-1, keepdim=True)
    b_n = b / b.norm(dim=-1, keepdim=True)
    omega = torch.acos((a_n * b_n).sum(-1).clamp(-1 + 1e-7, 1 - 1e-7))
    t = t.reshape(-1, 1)
    so = torch.sin(omega)
    if float(so) < 1e-6:
        return a + (b - a) * t
    return (torch.sin((1 - t) * omega) / so) * a + (torch.sin(t * omega) / so) * b


def _latent_pair(model, config, seeds, latents):
    import torch

    dist = config["latent"]["distribution"]
    if latents is not None:
        z = torch.from_numpy(read_latents(latents, model.z_dim))
        if z.shape[0] != 2:
            raise VolGANError(f"interpolate: the latents hold {z.shape[0]} rows; give exactly two (start, end)")
        return z
    if seeds is None or len(seeds) != 2:
        raise VolGANError("interpolate: give two seeds (--seeds A B) or two latents")
    return torch.cat([sample_z(1, model.z_dim, int(s), dist) for s in seeds])


def interpolate(
    checkpoint_or_model,              # .vgan path or (model, config)
    steps: int = 8,                   # number of volumes along the path, ends included
    seeds: Sequence[int] | None = None,  # two seeds for the end points
    latents=None,                     # or two latents (2, z_dim)
    space: str = "auto",              # 'z' (slerp), 'w' (lerp; StyleGAN), 'auto' = w if available
    truncation: float | None = None,  # ψ for the w end points
    noise: str | None = None,         # noise mode ('random' uses one fixed noise for all steps)
    batch: int = 8, device: str = "auto", amp: str = "auto", progress=None, cancel=None,
) -> GenerationResult:
    """Volumes along a path between two latents: slerp in z, or lerp in w (StyleGAN)."""
    import torch

    loaded = resolve_model(checkpoint_or_model, None, device)
    model, config = loaded.generator, loaded.config
    truncation, noise = _sampling_options(loaded, truncation, noise, batch, "interpolate")
    if steps < 2:
        raise VolGANError(f"--steps {steps}: need at least 2")
    space = ("w" if model.has_w else "z") if space == "auto" else space
    if space == "w" and not model.has_w:
        raise VolGANError(f"--space w: the '{config['family']}' family has no w space; use --space z")
    if space not in ("z", "w"):
        raise VolGANError(f"--space {space}: expected z, w or auto")
    ends = _latent_pair(model, config, seeds, latents)
    t = torch.linspace(0, 1, steps)
    dev = next(model.parameters()).device
    ws = None
    if space == "z":
        z = slerp(ends[0:1], ends[1:2], t)
        if model.has_w:
            with torch.inference_mode():
                ws = model.mapping(z.to(dev), truncation).cpu()
    else:
        z = ends[[0] * (steps // 2) + [1] * (steps - steps // 2)]  # nominal z: nearest end
        with torch.inference_mode():
            w_ends = model.mapping(ends.to(dev), truncation).cpu()
        ws = w_ends[0:1] + (w_ends[1:2] - w_ends[0:1]) * t.reshape(-1, 1, 1)
    seed0 = int(seeds[0]) if seeds else 0
    noise_seeds = np.full(steps, _noise_seed(seed0, 0), np.uint32) if noise == "random" else None
    arrays, labels, info = _run_batches(loaded, z if ws is None else None, ws, noise_seeds, noise, batch, amp,
                                        progress, cancel, "interpolate")
    info.update({"mode": "interpolate", "space": space, "steps": steps, "seeds": list(seeds) if seeds else None,
                 "truncation_psi": truncation, "noise_mode": noise, "t": t.tolist()})
    meta = [{"model": str(config.get("name", "")), "mode": "interpolate", "t": f"{float(t[i]):.6g}"} for i in range(steps)]
    return _result(loaded, arrays, labels, meta, z.numpy(), None if ws is None else ws.numpy(), noise_seeds, info)


def variation(
    checkpoint_or_model, k: int = 8, seed: int = 0, truncation: float | None = None, batch: int = 8,
    device: str = "auto", amp: str = "auto", progress=None, cancel=None,
) -> GenerationResult:
    """Stochastic variation: one w (from ``seed``), ``k`` independent random-noise draws (StyleGAN only)."""
    import torch

    loaded = resolve_model(checkpoint_or_model, None, device)
    model, config = loaded.generator, loaded.config
    if not model.has_w or not getattr(model.synthesis, "use_noise", False):
        raise VolGANError(f"variation: the '{config['family']}' model has no noise inputs to vary")
    truncation, _ = _sampling_options(loaded, truncation, "random", batch, "variation")
    if k < 1:
        raise VolGANError(f"--k {k}: need at least 1 draw")
    z = sample_z(1, model.z_dim, seed, config["latent"]["distribution"]).repeat(k, 1)
    with torch.inference_mode():
        ws = model.mapping(z[:1].to(next(model.parameters()).device), truncation).cpu().repeat(k, 1, 1)
    noise_seeds = np.array([_noise_seed(seed, 1_000_000 + i) for i in range(k)], np.uint32)
    arrays, labels, info = _run_batches(loaded, None, ws, noise_seeds, "random", batch, amp, progress, cancel,
                                        "variation")
    info.update({"mode": "variation", "k": k, "seed": seed, "truncation_psi": truncation, "noise_mode": "random"})
    meta = [{"model": str(config.get("name", "")), "mode": "variation", "draw": str(i)} for i in range(k)]
    return _result(loaded, arrays, labels, meta, z.numpy(), ws.numpy(), noise_seeds, info)


def mix(
    checkpoint_or_model, seed_a: int, seeds_b: Sequence[int], cutoff: int, truncation: float | None = None,
    noise: str | None = None, batch: int = 8, device: str = "auto", amp: str = "auto", progress=None, cancel=None,
) -> GenerationResult:
    """Style mixing: ws of ``seed_a`` for layers ``< cutoff`` and of each ``seeds_b`` for the rest."""
    import torch

    loaded = resolve_model(checkpoint_or_model, None, device)
    model, config = loaded.generator, loaded.config
    if not model.has_w:
        raise VolGANError(f"mix: the '{config['family']}' family has no w space to mix")
    if not 0 <= int(cutoff) <= model.num_ws:
        raise VolGANError(f"--cutoff {cutoff}: expected a layer index in 0..{model.num_ws}")
    truncation, noise = _sampling_options(loaded, truncation, noise, batch, "mix")
    dist = config["latent"]["distribution"]
    seeds_b = [int(s) for s in seeds_b]
    if not seeds_b:
        raise VolGANError("mix: give at least one seed for the fine styles")
    za = sample_z(1, model.z_dim, seed_a, dist)
    zb = torch.cat([sample_z(1, model.z_dim, s, dist) for s in seeds_b])
    dev = next(model.parameters()).device
    with torch.inference_mode():
        wa = model.mapping(za.to(dev), truncation).cpu()
        wb = model.mapping(zb.to(dev), truncation).cpu()
    ws = wb.clone()
    ws[:, :cutoff] = wa[:, :cutoff]
    noise_seeds = np.array([_noise_seed(seed_a, 0)] * len(seeds_b), np.uint32) if noise == "random" else None
    arrays, labels, info = _run_batches(loaded, None, ws, noise_seeds, noise, batch, amp, progress, cancel, "mix")
    info.update({"mode": "mix", "seed_a": seed_a, "seeds_b": seeds_b, "cutoff": int(cutoff),
                 "truncation_psi": truncation, "noise_mode": noise})
    meta = [{"model": str(config.get("name", "")), "mode": "mix", "seed_a": str(seed_a), "seed_b": str(s)}
            for s in seeds_b]
    return _result(loaded, arrays, labels, meta, zb.numpy(), ws.numpy(), noise_seeds, info)
