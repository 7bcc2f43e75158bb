"""Reading PyTorch files safely: ``torch.load(weights_only=True)`` with one readable error per failure.

Every ``.pt`` / ``.pth`` / ``.vgan`` file the project reads (volgan checkpoints, published generator weights,
feature-network weights, segmentation teachers) goes through :func:`safe_torch_load`, so each failure reads
the same way whichever command met it: the file, what it should have been, why it cannot be read (missing,
a folder, empty, cut short, not a PyTorch file, or an unsafe pickle with the globals it would have imported
named) and the fix. Nothing in a refused file is executed: the safe unpickler refuses every global outside
torch's own tensor types, and :func:`pickle_globals` lists the refused globals by reading the pickle opcodes
without running them.

It lives in VolGANCore, the lowest layer (VolumetricGANLib and GANTrainerLib both import it; it imports only
:mod:`VolGANCore.errors`), and imports torch inside the function, so importing VolGANCore stays torch-free
for the Slicer panels.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .errors import InputFileError

__all__ = ["safe_torch_load", "pickle_globals"]

# Globals a weights-only file may name: torch's tensor/storage rebuild functions and plain containers.
_SAFE_GLOBAL_PREFIXES = ("torch.", "collections.OrderedDict", "builtins.set", "builtins.frozenset")
_UNSAFE_SHOWN = 4


def pickle_globals(path: str | os.PathLike) -> list[str]:
    """The non-torch globals (``module.name``) a pickle would import, found without unpickling it.

    Reads the pickle of a ``torch.save`` zip archive (``*/data.pkl``) or a bare pickle file opcode by opcode
    (:func:`pickletools.genops`); nothing is imported or called. Empty for a file that is not a pickle.
    """
    import pickletools
    import zipfile

    path = Path(path)
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                names = [n for n in zf.namelist() if n.endswith("data.pkl")]
                data = zf.read(names[0]) if names else b""
        else:
            data = path.read_bytes()
        found: list[str] = []
        strings: list[str] = []
        for op, arg, _pos in pickletools.genops(data):
            if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8"):
                strings.append(str(arg))
            elif op.name == "GLOBAL" or op.name == "INST":
                found.append(str(arg).replace(" ", "."))
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                found.append(f"{strings[-2]}.{strings[-1]}")
    except Exception:  # not a pickle (or a damaged one): nothing to report as unsafe
        return []
    return [g for g in dict.fromkeys(found) if not g.startswith(_SAFE_GLOBAL_PREFIXES)]


def _why_unreadable(path: Path, what: str, exc: Exception) -> str:
    """Why ``torch.load`` failed, in words: empty, a cut-off zip archive, or not a PyTorch file at all."""
    import pickle
    import zipfile

    with open(path, "rb") as fh:
        head = fh.read(4)
    if not head:
        return f"is empty (0 bytes), not a PyTorch {what}"
    if head[:2] == b"PK" and not zipfile.is_zipfile(path):
        return "is truncated or damaged: its zip archive is incomplete"
    if head[:2] != b"PK" and not isinstance(exc, pickle.UnpicklingError):
        return f"is not a PyTorch {what} ({type(exc).__name__})"
    if head[:2] != b"PK":
        return f"is not a PyTorch {what}: neither a zip archive nor an old-style file that a safe load reads"
    first = (str(exc).strip().splitlines() or [""])[0][:100]
    return f"is not a readable PyTorch {what} ({type(exc).__name__}: {first})"


def safe_torch_load(
    path: str | os.PathLike,          # the file to read
    what: str,                        # what it should be, e.g. "checkpoint", "weights file" (used in messages)
    fix: str,                         # what the user should pass instead, e.g. "pass a .vgan checkpoint ..."
    state_dict: bool = False,         # unwrap a {"state_dict": {...}} container (MedicalNet, Lightning style)
    map_location: str = "cpu",        # device of the loaded tensors
) -> Any:
    """``torch.load(path, weights_only=True)``; every failure is one :class:`InputFileError` line.

    The message names the file and says what is wrong with it: ``{what} not found``; ``is a folder``;
    ``is empty``; ``is truncated or damaged`` (a cut-off zip archive: the fix adds "copy it again"); ``is not a
    PyTorch {what}``; or ``unsafe file`` with the globals that unpickling would have imported and called (the
    file is refused and nothing in it runs). The fix in brackets is ``fix`` (after "check the path" for a
    missing file). With ``state_dict=True`` a container ``{"state_dict": dict}`` is unwrapped; the caller
    still checks what the returned object holds.

    Example
    -------
    >>> sd = safe_torch_load("g_net.pth", "generator state dict", "pass the published g_net.pth",
    ...                      state_dict=True)                                   # doctest: +SKIP
    """
    import torch

    path = Path(path)
    if not path.exists():
        raise InputFileError(path, f"{what} not found", f"check the path; {fix}")
    if path.is_dir():
        raise InputFileError(path, f"is a folder, not a {what}", fix)
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # refused by the safe unpickler, cut-off zip, empty or foreign file
        unsafe = pickle_globals(path)
        if unsafe:
            shown = ", ".join(unsafe[:_UNSAFE_SHOWN]) + (" …" if len(unsafe) > _UNSAFE_SHOWN else "")
            raise InputFileError(
                path, f"unsafe file: unpickling it would import and call code ({shown}); it was refused and "
                "nothing in it was executed",
                f"{fix}; re-export untrusted models from their source code, never load them unsafely") from None
        why = _why_unreadable(path, what, exc)
        if why.startswith("is truncated"):
            fix = f"{fix} (copy it again if it was cut short)"
        raise InputFileError(path, why, fix) from None
    if state_dict and isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    return obj
