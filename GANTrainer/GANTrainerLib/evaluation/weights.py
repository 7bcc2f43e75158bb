"""Loading published network weights from a user-given file, with one readable error when they do not fit.

Weights are always file paths chosen by the user; nothing is ever downloaded. Files are read with
``torch.load(..., weights_only=True)`` (no pickled code runs). A file whose keys or shapes do not match the
architecture raises :class:`VolGANCore.errors.InputFileError` listing the missing, unexpected and
mis-shaped keys, so a user who passed the wrong file sees which file it is and what it holds.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Iterable

from VolGANCore.errors import InputFileError
from VolGANCore.io import sha256_file
from VolGANCore.torchfile import safe_torch_load

__all__ = ["load_weights_file", "fit_state_dict"]

# BatchNorm counters: absent from files written before PyTorch 0.4.1, harmless either way.
_OPTIONAL_SUFFIXES = ("num_batches_tracked",)


def _strip_prefix(state: dict[str, Any], prefix: str) -> dict[str, Any]:
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return state


def _listing(keys: Iterable[str], limit: int = 6) -> str:
    keys = sorted(keys)
    head = ", ".join(keys[:limit])
    return head + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def fit_state_dict(
    model,
    state: dict[str, Any],
    path: str | os.PathLike | None,
    expected: str,
    ignore_unexpected: Iterable[str] = (),
) -> dict[str, Any]:
    """Check ``state`` against ``model`` (keys and shapes) and load it; raise one readable error if it does not fit.

    Parameters
    ----------
    model : torch.nn.Module
        The architecture to fill.
    state : dict
        Tensors by name; a ``module.`` prefix on every key (``nn.DataParallel`` checkpoints) is removed.
    path : path-like or None
        The file the state came from, named in the error.
    expected : str
        What the file should be (named in the error's fix), e.g. ``"pt_inception-2015-12-05-6726825d.pth"``.
    ignore_unexpected : iterable of str
        Regular expressions of keys that may be present in the file but are not used (e.g. a segmentation head).

    Returns
    -------
    dict
        ``{"loaded": n_tensors, "ignored": [...], "prefix_stripped": bool}``.

    Raises
    ------
    InputFileError
        Missing keys, unexpected keys or shape mismatches (each listed, the first few by name).
    """
    import torch

    if not isinstance(state, dict) or not state:
        raise InputFileError(path, "holds no state dict (expected a dict of tensors)", f"pass {expected}")
    stripped = _strip_prefix(state, "module.")
    prefix_stripped = stripped is not state
    state = stripped
    non_tensor = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if non_tensor:
        raise InputFileError(path, f"entries that are not tensors: {_listing(non_tensor)}", f"pass {expected}")
    own = model.state_dict()
    patterns = [re.compile(p) for p in ignore_unexpected]
    ignored = sorted(k for k in state if k not in own and any(p.match(k) for p in patterns))
    unexpected = sorted(k for k in state if k not in own and k not in ignored)
    missing = sorted(k for k in own if k not in state and not k.endswith(_OPTIONAL_SUFFIXES))
    mismatched = sorted(
        f"{k} {tuple(state[k].shape)} (expected {tuple(own[k].shape)})"
        for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    )
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {_listing(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {_listing(unexpected)}")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatch(es): {_listing(mismatched, 3)}")
    if problems:
        raise InputFileError(path, "does not fit the architecture: " + "; ".join(problems),
                             f"pass {expected}")
    use = {k: v for k, v in state.items() if k in own}
    model.load_state_dict(use, strict=False)
    return {"loaded": len(use), "ignored": ignored, "prefix_stripped": prefix_stripped}


def load_weights_file(
    model,
    path: str | os.PathLike,
    expected: str,
    ignore_unexpected: Iterable[str] = (),
) -> dict[str, Any]:
    """Read a ``.pth`` state dict safely (``weights_only=True``) and load it into ``model``.

    A checkpoint of the form ``{"state_dict": {...}}`` (MedicalNet's format) is unwrapped. Returns the
    :func:`fit_state_dict` summary plus ``path`` and ``sha256``.
    """
    path = Path(path)
    obj = safe_torch_load(path, "weights file", f"pass {expected}", state_dict=True)
    info = fit_state_dict(model, obj, path, expected, ignore_unexpected)
    info.update(path=str(path), sha256=sha256_file(path))
    return info
