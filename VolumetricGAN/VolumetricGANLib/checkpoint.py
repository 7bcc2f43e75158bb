"""Self-describing, safe checkpoints: one file per model that rebuilds its own network.

File layout (``torch.save`` of plain containers only, read back with ``torch.load(weights_only=True)``,
so loading never executes code from the file)::

    {
      "format": "volgan-checkpoint",
      "format_version": 1,
      "config": {...},            # JSON-serialisable: family, architecture, geometry, intensities, latent
      "tensors": {"G_ema": state_dict, "G": state_dict?, "D": state_dict?},
      "training": {...} | None,   # optimiser / scaler states, step, RNG states (for resuming)
      "provenance": {...},        # command, commit, versions, source files and their sha256
      "metrics": {...},           # figures measured on this model
    }

The config (see :func:`make_config`) holds every architecture hyper-parameter, so :func:`load_generator`
rebuilds the network from the file alone. Files are written atomically and a Markdown model card is
written next to them (``<stem>.card.md``).

Unlike NVlabs' ``persistence`` pickles (which embed network source code and run it on load), nothing here
depends on pickled classes: a file that needs arbitrary code to unpickle is refused as unsafe.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
import os
import platform
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from VolGANCore.atomic import atomic_path, atomic_write_text
from VolGANCore.errors import InputFileError, VolGANError
from VolGANCore.io import sha256_file  # noqa: F401  (re-exported: importers record sources with it)
from VolGANCore.torchfile import safe_torch_load

__all__ = [
    "FORMAT", "FORMAT_VERSION", "SUFFIX",
    "make_config", "validate_config", "to_physical", "to_network",
    "save_checkpoint", "load_checkpoint", "read_config", "generates_labels", "is_conditional", "LoadedModel", "load_generator", "load_discriminator",
    "build_from_config", "model_card", "card_path", "capture_rng_state", "restore_rng_state",
    "default_provenance", "command_line", "sha256_file",
]

FORMAT = "volgan-checkpoint"
FORMAT_VERSION = 1
SUFFIX = ".vgan"
_LATENTS = ("normal", "hypersphere")


# -- config --------------------------------------------------------------------------------------------------
def make_config(
    family: str,                                   # registered network family, e.g. "stylegan2-3d"
    architecture: Mapping[str, Any],               # generator hyper-parameters (constructor kwargs)
    spacing: Sequence[float],                      # voxel size (x, y, z) in mm of generated volumes
    intensity: Mapping[str, Any] | None = None,    # network → physical units mapping (see below)
    discriminator: Mapping[str, Any] | None = None,  # discriminator hyper-parameters, if any
    origin: Sequence[float] | None = None,         # LPS origin (mm); None = volume centred on (0, 0, 0)
    direction: Sequence[float] | None = None,      # 9 direction cosines; None = identity
    label_scheme: str | None = None,               # "topcow13" / "aydin7" when the model emits labels
    anatomy: str = "",                             # e.g. "spongiosa", "circle-of-willis"
    latent: str = "normal",                        # "normal" or "hypersphere" (z / |z|)
    defaults: Mapping[str, Any] | None = None,     # generation defaults (truncation_psi, noise_mode)
    name: str = "",                                # short model name for cards and file names
    description: str = "",                         # one-paragraph description for the model card
) -> dict[str, Any]:
    """Build and validate a checkpoint config; the generator is instantiated once to derive shapes.

    ``intensity`` maps the network's output range to physical units::

        {"network_range": [-1, 1], "physical_range": [lo, hi], "units": "HU", "clip": false}

    Returns
    -------
    dict
        JSON-serialisable config with ``z_dim`` and ``output_shape`` filled in from the network.
    """
    from .networks import build_generator

    G = build_generator(family, dict(architecture))
    cfg = {
        "family": family,
        "architecture": G.config(),
        "discriminator": None if discriminator is None else dict(discriminator),
        "z_dim": int(G.z_dim),
        "output_shape": [int(s) for s in G.output_shape],
        "img_channels": int(G.img_channels),
        "spacing": [float(s) for s in spacing],
        "origin": None if origin is None else [float(o) for o in origin],
        "direction": None if direction is None else [float(d) for d in np.asarray(direction).reshape(-1)],
        "intensity": dict(intensity or {"network_range": [-1.0, 1.0], "physical_range": [-1.0, 1.0],
                                        "units": "arbitrary", "clip": False}),
        "label_scheme": label_scheme,
        "anatomy": anatomy,
        "latent": {"distribution": latent},
        "defaults": {"truncation_psi": 1.0, "noise_mode": "const" if G.has_w else "none",
                     **dict(defaults or {})},
        "name": name,
        "description": description,
    }
    validate_config(cfg)
    return cfg


def validate_config(cfg: Mapping[str, Any], path: str | os.PathLike | None = None) -> None:
    """Raise :class:`InputFileError` (naming ``path``) if the config is incomplete or inconsistent.

    Without PyTorch (a fresh Slicer) the network families are not importable: the family name is then checked
    when the model is built, everything else here.
    """
    try:
        from .networks import FAMILIES
    except ImportError:
        FAMILIES = None

    def bad(problem, fix=None):
        raise InputFileError(path, f"checkpoint config: {problem}", fix)

    if not isinstance(cfg, Mapping):
        bad(f"expected a dict, got {type(cfg).__name__}")
    for key in ("family", "architecture", "z_dim", "output_shape", "spacing", "intensity", "latent"):
        if key not in cfg:
            bad(f"missing key '{key}'", "re-save the model with VolumetricGANLib.checkpoint.save_checkpoint")
    if FAMILIES is not None and cfg["family"] not in FAMILIES:
        bad(f"unknown model family '{cfg['family']}'",
            f"this volgan knows {', '.join(sorted(FAMILIES))}; update volgan if the file is newer")
    sp = cfg["spacing"]
    if len(sp) != 3 or not all(isinstance(s, (int, float)) and math.isfinite(s) and s > 0 for s in sp):
        bad(f"spacing must be 3 positive numbers (x, y, z) in mm, got {sp!r}")
    if len(cfg["output_shape"]) != 3:
        bad(f"output_shape must be (D, H, W), got {cfg['output_shape']!r}")
    inten = cfg["intensity"]
    for key in ("network_range", "physical_range"):
        r = inten.get(key)
        if r is None or len(r) != 2 or r[0] == r[1]:
            bad(f"intensity.{key} must be two different numbers, got {r!r}")
    if cfg["latent"].get("distribution") not in _LATENTS:
        bad(f"latent.distribution must be one of {_LATENTS}, got {cfg['latent'].get('distribution')!r}")
    try:
        json.dumps(cfg, allow_nan=False)
    except (TypeError, ValueError) as exc:
        bad(f"not JSON-serialisable ({exc})", "use plain numbers, strings, lists and dicts")


def to_physical(y, intensity: Mapping[str, Any]):
    """Map network output (array or tensor) to physical units: ``(y − a)·(hi − lo)/(b − a) + lo``.

    For the MICCAI 2020 spongiosa model (a, b = −1, 1; lo, hi = −350, 1100) this is
    ``(y + 1)·725 − 350``, identical to the authors' ``denormalize_volume``.
    """
    a, b = (float(v) for v in intensity["network_range"])
    lo, hi = (float(v) for v in intensity["physical_range"])
    x = (y - a) * ((hi - lo) / (b - a)) + lo
    if intensity.get("clip"):
        x = x.clip(min(lo, hi), max(lo, hi))
    return x


def to_network(x, intensity: Mapping[str, Any]):
    """Inverse of :func:`to_physical` (physical units → network range), e.g. for training data."""
    a, b = (float(v) for v in intensity["network_range"])
    lo, hi = (float(v) for v in intensity["physical_range"])
    return (x - lo) * ((b - a) / (hi - lo)) + a


# -- provenance and RNG states -------------------------------------------------------------------------------
def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def command_line(argv: Sequence[str] | None = None) -> str:
    """The running command as a shell line that reproduces it: quoted where needed, the program by its name
    (``volgan train …``, not the virtual environment's path)."""
    import shlex

    argv = list(sys.argv if argv is None else argv)
    if argv:
        argv[0] = Path(argv[0]).name or argv[0]
    return shlex.join(argv)


def default_provenance(**extra: Any) -> dict[str, Any]:
    """Command line, time, code commit and versions; ``extra`` (e.g. data summary, source) is merged in."""
    import torch

    from VolGANCore import __version__

    prov = {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command_line(),
        "commit": _git_commit(),
        "volgan_version": __version__,
        "torch_version": str(torch.__version__),
        "python": platform.python_version(),
    }
    prov.update(extra)
    return prov


def capture_rng_state() -> dict[str, Any]:
    """RNG states of torch (CPU and CUDA), NumPy and Python as plain containers (safe to save)."""
    import random

    import torch

    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "cuda": [s for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": [list(random.getstate()[1]), random.getstate()[0]],
    }
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    import random

    import torch

    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state["cuda"]))
    npst = state["numpy"]
    np.random.set_state((npst["kind"], npst["keys"].numpy().astype(np.uint32), npst["pos"], npst["has_gauss"],
                         npst["cached_gaussian"]))
    keys, version = state["python"]
    random.setstate((version, tuple(int(k) for k in keys), None))


def _json_number(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)


def _check_plain(obj: Any, where: str) -> None:
    """Refuse anything ``torch.load(weights_only=True)`` could not read back (NumPy arrays, objects)."""
    import torch

    if obj is None or type(obj) in (bool, int, float, str) or isinstance(obj, (torch.Tensor, torch.Size)):
        return
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            if not isinstance(k, (str, int)):
                raise VolGANError(f"save_checkpoint: key {k!r} in {where} is not a str/int")
            _check_plain(v, f"{where}.{k}")
        return
    if isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _check_plain(v, f"{where}[{i}]")
        return
    raise VolGANError(f"save_checkpoint: {where} holds a {type(obj).__name__}, which a safe (weights_only) "
                      "load cannot read back (convert arrays to tensors, objects to dicts)")


# -- save ----------------------------------------------------------------------------------------------------
def _state(module_or_state) -> dict[str, Any] | None:
    if module_or_state is None:
        return None
    sd = module_or_state.state_dict() if hasattr(module_or_state, "state_dict") else module_or_state
    return {k: v.detach().cpu().clone().contiguous() for k, v in sd.items()}


def card_path(checkpoint_path: str | os.PathLike) -> Path:
    """Where the model card of ``checkpoint_path`` lives: ``<stem>.card.md`` beside it."""
    p = Path(checkpoint_path)
    stem = p.name[: -len(SUFFIX)] if p.name.endswith(SUFFIX) else p.stem
    return p.with_name(f"{stem}.card.md")


def save_checkpoint(
    path: str | os.PathLike,                        # output file (``.vgan`` suggested)
    config: Mapping[str, Any],                      # from make_config
    G_ema=None,                                     # generator (module or state dict) used for sampling
    G=None,                                         # training generator (optional)
    D=None,                                         # discriminator (optional, for resuming)
    training: Mapping[str, Any] | None = None,      # optimiser/scaler states, step, RNG states
    provenance: Mapping[str, Any] | None = None,    # merged into default_provenance()
    metrics: Mapping[str, Any] | None = None,       # measured figures
    write_card: bool = True,                        # write the Markdown model card beside the file
    card_extra: str = "",                           # Markdown appended to the card (e.g. the training run)
) -> Path:
    """Write a checkpoint atomically (and its model card); returns the checkpoint path.

    At least one of ``G_ema`` / ``G`` is required; the state dicts must match the config's network.
    """
    import torch

    path = Path(path)
    validate_config(config, path)
    if G_ema is None and G is None:
        raise VolGANError(f"{path}: save_checkpoint needs a generator (G_ema or G)")
    tensors = {k: v for k, v in (("G_ema", _state(G_ema)), ("G", _state(G)), ("D", _state(D))) if v is not None}
    model = build_from_config(config, path)
    for key in ("G_ema", "G"):
        if key in tensors:
            _load_state(model, tensors[key], path, key)
    blob = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": json.loads(json.dumps(dict(config))),
        "tensors": tensors,
        "training": None if training is None else dict(training),
        "provenance": json.loads(json.dumps(default_provenance(**dict(provenance or {})), default=str)),
        "metrics": json.loads(json.dumps(dict(metrics or {}), default=_json_number)),
    }
    _check_plain(blob, "checkpoint")
    with atomic_path(path) as tmp:
        torch.save(blob, tmp)
    if write_card:
        atomic_write_text(card_path(path), model_card(blob, path, n_params=sum(p.numel() for p in model.parameters()),
                                                      extra=card_extra))
    return path


# -- load ----------------------------------------------------------------------------------------------------
_PGAN_KEY = re.compile(r"^(blocks\.\d+\.conv\d|toRGBs\.\d+)\.conv\.(weight|bias)$")


class _Stub:
    """What a torch tensor or storage becomes when only the header of a checkpoint is read."""

    def __init__(self, *args, **kwargs) -> None:
        pass


class _HeaderUnpickler:
    """Reads the plain containers of a ``torch.save`` archive without PyTorch and without running its code:
    only ``collections.OrderedDict`` and torch's own tensor/storage rebuild names are resolved, and those to
    :class:`_Stub`; any other global is refused (as ``torch.load(weights_only=True)`` refuses it)."""

    @staticmethod
    def load(data: bytes):
        import collections
        import io
        import pickle

        class Unpickler(pickle.Unpickler):
            def find_class(self, module, name):
                if (module, name) == ("collections", "OrderedDict"):
                    return collections.OrderedDict
                if module == "torch" or module.startswith("torch."):
                    return _Stub
                raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed in a checkpoint header")

            def persistent_load(self, pid):
                return None  # tensor storages are not read

        return Unpickler(io.BytesIO(data)).load()


def generates_labels(config: Mapping[str, Any]) -> bool:
    """Whether a model config describes a joint image + label generator (its architecture has a label branch)."""
    return bool((config.get("architecture") or {}).get("label_classes"))


def is_conditional(config: Mapping[str, Any]) -> bool:
    """Whether a model config describes a generator conditioned on the CoW variant (``c_dim`` > 0)."""
    return bool((config.get("architecture") or {}).get("c_dim"))


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """The validated ``config`` of a ``.vgan`` file, read without PyTorch and without loading any tensor.

    For listing models (the VolumetricGAN panel builds before PyTorch is installed). A file that is not a
    readable volgan checkpoint raises :class:`InputFileError`; with PyTorch installed, :func:`load_checkpoint`
    is asked for the precise reason (unsafe pickle, foreign format, newer version).
    """
    import zipfile

    path = Path(path)
    if not path.is_file():
        raise InputFileError(path, "checkpoint file not found", "check the path")
    blob = None
    try:
        with zipfile.ZipFile(path) as zf:
            names = [n for n in zf.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
            if names:
                blob = _HeaderUnpickler.load(zf.read(names[0]))
    except Exception:  # not a zip archive, a foreign or unsafe pickle, a damaged file: the full loader says which
        blob = None
    version = blob.get("format_version") if isinstance(blob, dict) else None
    if not (isinstance(blob, dict) and blob.get("format") == FORMAT and isinstance(version, int)
            and 1 <= version <= FORMAT_VERSION and isinstance(blob.get("config"), dict)):
        try:
            import torch  # noqa: F401
        except ImportError:
            raise InputFileError(path, "not a readable volgan checkpoint (.vgan)",
                                 "choose a .vgan file written by volgan; install PyTorch for a detailed reason"
                                 ) from None
        blob = load_checkpoint(path)
    validate_config(blob["config"], path)
    return blob["config"]


def load_checkpoint(
    path: str | os.PathLike,                  # checkpoint file
    map_location: str = "cpu",                # device for the tensors
    expect_family: str | None = None,         # refuse another family
    expect_output_shape: Sequence[int] | None = None,  # refuse another output shape
) -> dict[str, Any]:
    """Read and validate a checkpoint safely (``weights_only=True``); returns the container dict.

    Raises
    ------
    InputFileError
        Missing file, not a PyTorch file, an unsafe pickle (never executed), not a volgan checkpoint
        (with a hint to ``volgan import`` for known published formats), a newer format version, or a
        family / output shape other than the expected one.
    """
    path = Path(path)
    blob = safe_torch_load(path, "checkpoint", "pass a .vgan checkpoint written by volgan", map_location=map_location)

    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        hint = "write checkpoints with VolumetricGANLib.checkpoint.save_checkpoint"
        if isinstance(blob, dict) and blob and all(isinstance(k, str) and _PGAN_KEY.match(k) for k in blob):
            hint = ("it looks like the MICCAI 2020 spongiosa generator: convert it with "
                    f"`volgan import --format miccai2020-pgan {path} --out model.vgan`")
        elif isinstance(blob, dict) and "GAN" in blob:
            hint = "it looks like a 3-D StyleGAN (Circle-of-Willis code) checkpoint; import it first"
        raise InputFileError(path, "not a volgan checkpoint (no 'format': 'volgan-checkpoint' header)", hint)
    version = blob.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION or version < 1:
        raise InputFileError(path, f"checkpoint format version {version!r} is not supported by this volgan "
                             f"(reads versions 1..{FORMAT_VERSION})",
                             "update volgan (pip install -U slicer-volumetric-gan) to read newer files")
    for key in ("config", "tensors"):
        if not isinstance(blob.get(key), dict):
            raise InputFileError(path, f"checkpoint lacks its '{key}' section", "the file is damaged; re-save it")
    validate_config(blob["config"], path)
    cfg = blob["config"]
    if expect_family is not None and cfg["family"] != expect_family:
        raise InputFileError(path, f"checkpoint is a '{cfg['family']}' model, expected '{expect_family}'",
                             f"choose a {expect_family} checkpoint")
    if expect_output_shape is not None and list(cfg["output_shape"]) != [int(s) for s in expect_output_shape]:
        raise InputFileError(path, f"checkpoint generates volumes of shape {tuple(cfg['output_shape'])}, "
                             f"expected {tuple(int(s) for s in expect_output_shape)}",
                             "choose a checkpoint trained for that shape")
    return blob


def build_from_config(config: Mapping[str, Any], path: str | os.PathLike | None = None):
    """Instantiate the (untrained) generator described by ``config``; errors name ``path``."""
    from .networks import build_generator

    try:
        G = build_generator(config["family"], dict(config["architecture"]))
    except (TypeError, ValueError, KeyError) as exc:
        raise InputFileError(path, f"checkpoint config cannot build a '{config.get('family')}' network: {exc}",
                             "the file was written by an incompatible volgan version; re-save or re-import it") from None
    if [int(s) for s in G.output_shape] != [int(s) for s in config["output_shape"]]:
        raise InputFileError(path, f"config output_shape {tuple(config['output_shape'])} disagrees with its "
                             f"architecture ({tuple(G.output_shape)})", "the file is inconsistent; re-save it")
    if int(G.z_dim) != int(config["z_dim"]):
        raise InputFileError(path, f"config z_dim {config['z_dim']} disagrees with its architecture ({G.z_dim})",
                             "the file is inconsistent; re-save it")
    return G


def _load_state(model, state: Mapping[str, Any], path, which: str) -> None:
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
                  if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or mismatched:
        parts = []
        for label, items in (("missing keys", missing), ("unexpected keys", unexpected),
                             ("shape mismatches (file vs network)", mismatched)):
            if items:
                shown = ", ".join(items[:8]) + (f", … ({len(items)} in all)" if len(items) > 8 else "")
                parts.append(f"{label}: {shown}")
        raise InputFileError(path, f"tensors '{which}' do not fit the network described by its config; "
                             + "; ".join(parts),
                             "the tensors and config come from different models; re-save from the training run")
    model.load_state_dict(state, strict=True)


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    """A generator rebuilt from a checkpoint, with what the file says about it (a value: nothing is injected
    into ``config``).

    ``generate``, ``interpolate``, ``variation``, ``mix``, ``steer`` and ``invert`` take it wherever they take
    a checkpoint path; :func:`VolumetricGANLib.generate.resolve_model` also wraps a ``(model, config)`` pair
    built in code into one (``path`` None).
    """

    generator: Any                                   # the network, eval mode, requires_grad off
    config: dict[str, Any]                           # the checkpoint's validated config (as stored)
    path: str | None = None                          # the .vgan file it came from; None when built in code
    provenance: dict[str, Any] = dataclasses.field(default_factory=dict)   # the file's provenance record
    metrics: dict[str, Any] = dataclasses.field(default_factory=dict)      # the file's metrics record
    tensors: str = "G_ema"                           # which tensors were loaded ("G_ema" or "G")

    @property
    def device(self):
        """The torch.device the generator's parameters are on."""
        return next(self.generator.parameters()).device


def load_generator(
    path: str | os.PathLike,                  # checkpoint file
    device: str = "cpu",                      # device to put the generator on ("auto" allowed)
    which: str = "G_ema",                     # "G_ema" (falls back to "G") or "G"
    expect_family: str | None = None,         # refuse another family
    expect_output_shape: Sequence[int] | None = None,  # refuse another output shape
) -> LoadedModel:
    """Rebuild the generator from the checkpoint's config and load its tensors.

    Returns
    -------
    LoadedModel
        ``generator`` in eval mode with ``requires_grad`` off; ``config`` the checkpoint's config dict;
        ``path``, ``provenance`` and ``metrics`` from the file.

    Example
    -------
    >>> loaded = load_generator("spongiosa.vgan")                               # doctest: +SKIP
    >>> loaded.config["spacing"], loaded.config["intensity"]["units"]           # doctest: +SKIP
    ([0.164, 0.164, 0.164], 'MICCAI 2020 density units')
    """
    from VolGANCore.env import pick_device

    blob = load_checkpoint(path, "cpu", expect_family, expect_output_shape)
    cfg = blob["config"]
    tensors = blob["tensors"]
    key = which if which in tensors else ("G" if which == "G_ema" and "G" in tensors else None)
    if key is None:
        raise InputFileError(path, f"checkpoint holds no '{which}' tensors (has: {', '.join(tensors) or 'none'})",
                             "choose which='G' or a complete checkpoint")
    G = build_from_config(cfg, path)
    _load_state(G, tensors[key], path, key)
    G.eval().requires_grad_(False)
    G.to(pick_device(device))
    return LoadedModel(G, dict(cfg), str(path), dict(blob.get("provenance") or {}), dict(blob.get("metrics") or {}),
                       key)


def load_discriminator(path: str | os.PathLike, device: str = "cpu"):
    """Rebuild and load the discriminator of a (training) checkpoint; returns ``(D, config)``."""
    from .networks import build_discriminator

    blob = load_checkpoint(path)
    cfg = blob["config"]
    if "D" not in blob["tensors"] or not cfg.get("discriminator"):
        raise InputFileError(path, "checkpoint holds no discriminator", "use a training checkpoint")
    try:
        D = build_discriminator(cfg["family"], dict(cfg["discriminator"]))
    except (TypeError, ValueError, KeyError) as exc:
        raise InputFileError(path, f"checkpoint discriminator config is unusable: {exc}") from None
    _load_state(D, blob["tensors"]["D"], path, "D")
    return D.to(device), cfg


# -- model card ----------------------------------------------------------------------------------------------
def model_card(blob: Mapping[str, Any], path: str | os.PathLike, n_params: int | None = None,
               extra: str = "") -> str:
    """Markdown model card for a checkpoint container (written next to the file by save_checkpoint);
    ``extra`` Markdown is appended."""
    cfg = blob["config"]
    prov = blob.get("provenance") or {}
    metrics = blob.get("metrics") or {}
    inten = cfg["intensity"]
    title = cfg.get("name") or Path(path).stem
    lines = [f"# Model card: {title}", ""]
    if cfg.get("description"):
        lines += [cfg["description"], ""]
    lines += [
        "| | |", "|---|---|",
        f"| File | `{Path(path).name}` (volgan checkpoint format {blob['format_version']}) |",
        f"| Family | `{cfg['family']}` |",
        f"| Anatomy | {cfg.get('anatomy') or '-'} |",
        f"| Output shape (D×H×W) | {' × '.join(str(s) for s in cfg['output_shape'])} |",
        f"| Voxel spacing (x, y, z) | {', '.join(f'{s:g}' for s in cfg['spacing'])} mm |",
        f"| Intensities | network {inten['network_range']} → {inten['physical_range']} {inten.get('units', '')} |",
        f"| Latent | z ∈ R^{cfg['z_dim']}, {cfg['latent']['distribution']} |",
        f"| Label scheme | {cfg.get('label_scheme') or '-'} |",
        f"| Generator parameters | {n_params:,} |" if n_params is not None else "| Generator parameters | - |",
        f"| Tensors | {', '.join(blob['tensors'])} |",
        f"| Generation defaults | {json.dumps(cfg.get('defaults', {}))} |",
        "", "## Architecture", "", "```json", json.dumps(cfg["architecture"], indent=2), "```", "",
        "## Provenance", "",
    ]
    for k, v in prov.items():
        lines.append(f"- **{k}**: {v if not isinstance(v, (dict, list)) else json.dumps(v)}")
    lines += ["", "## Metrics", ""]
    if metrics:
        for k, v in metrics.items():
            lines.append(f"- **{k}**: {v if not isinstance(v, (dict, list)) else json.dumps(v)}")
    else:
        lines.append("None measured on this checkpoint yet.")
    lines += ["", "## Use", "", "```bash",
              f"volgan generate --checkpoint {Path(path).name} --n 8 --seed 0 --out samples/", "```",
              "", "```python", "from VolumetricGANLib.generate import generate",
              f"result = generate('{Path(path).name}', n=8, seed=0)", "```", ""]
    if extra:
        lines += [extra.rstrip("\n"), ""]
    return "\n".join(lines)
