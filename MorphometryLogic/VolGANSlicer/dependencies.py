"""Install run-time dependencies on first use, after asking the user — never at import time.

PyTorch comes from the SlicerPyTorch extension (``PyTorchUtils``), which picks the build that matches the
machine's CUDA driver; the remaining packages come from the module's ``requirements.txt`` through
``slicer.packaging.pip_ensure`` where this Slicer has it, else ``slicer.util.pip_install``.
"""

from __future__ import annotations

import importlib.metadata as metadata
import re
from pathlib import Path

__all__ = ["read_requirements", "missing_requirements", "ensure_torch", "ensure_requirements", "ensure_all"]

_REQ = re.compile(r"^\s*([A-Za-z0-9_.\-]+)\s*(?:\[[^\]]*\])?\s*(.*)$")


def read_requirements(path: str | Path) -> list[str]:
    """Requirement lines of a requirements.txt (comments and blank lines dropped)."""
    lines = []
    for raw in Path(path).read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            lines.append(line)
    return lines


def missing_requirements(requirements: list[str]) -> list[str]:
    """The requirement strings that are not installed or whose installed version does not satisfy them."""
    try:
        from packaging.requirements import Requirement
    except ImportError:  # pragma: no cover - packaging ships with pip and Slicer
        Requirement = None
    missing = []
    for req in requirements:
        m = _REQ.match(req)
        name = m.group(1) if m else req
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            missing.append(req)
            continue
        if Requirement is not None and not Requirement(req).specifier.contains(installed, prereleases=True):
            missing.append(req)
    return missing


def ensure_torch(ask: bool = True) -> bool:
    """Make torch importable via SlicerPyTorch; returns False if the user declined or it is unavailable."""
    import slicer

    try:
        import torch  # noqa: F401

        return True
    except ImportError:
        pass
    try:
        torch_logic = slicer.util.getModuleLogic("PyTorchUtils")
    except Exception:
        torch_logic = None
    if torch_logic is None:
        slicer.util.errorDisplay("This module needs PyTorch. Install the 'PyTorch' extension from the "
                                 "Extensions Manager, restart Slicer and try again.")
        return False
    if ask and not slicer.util.confirmOkCancelDisplay(
            "This module needs PyTorch, which is not installed yet. Install it now? "
            "(SlicerPyTorch picks the build for your GPU; this can take several minutes.)"):
        return False
    torch = torch_logic.installTorch(askConfirmation=False)
    return torch is not None


def ensure_requirements(requirements_file: str | Path, ask: bool = True) -> bool:
    """pip-install the missing lines of ``requirements_file`` after asking; False if the user declined."""
    import slicer

    missing = missing_requirements(read_requirements(requirements_file))
    if not missing:
        return True
    if ask and not slicer.util.confirmOkCancelDisplay(
            "The following Python packages are needed and will be installed now:\n\n  " + "\n  ".join(missing)):
        return False
    packaging = getattr(slicer, "packaging", None)
    with slicer.util.WaitCursor():
        if packaging is not None and hasattr(packaging, "pip_ensure"):
            packaging.pip_ensure(missing)
        else:
            slicer.util.pip_install(missing)
    still = missing_requirements(missing)
    if still:
        slicer.util.errorDisplay("Installing these packages failed: " + ", ".join(still) +
                                 ". See README > Troubleshooting > pip failures.")
        return False
    return True


def ensure_all(requirements_file: str | Path, ask: bool = True, need_torch: bool = True) -> bool:
    """torch (if needed) and the module's requirements; True when everything is importable."""
    if need_torch and not ensure_torch(ask):
        return False
    return ensure_requirements(requirements_file, ask)
