"""Install run-time dependencies on first use, after asking the user once — never at import time.

One confirmation lists everything that is missing; then PyTorch comes from the SlicerPyTorch extension
(``PyTorchUtils``, which picks the build that matches the machine's CUDA driver) with a minimum version, and
the module's other packages from its ``Resources/<Module>-requirements.txt`` through ``slicer.packaging``
(Slicer 5.12 and later) or ``slicer.util.pip_install`` (Slicer 5.8–5.11). Both are checked after install.
"""

from __future__ import annotations

import importlib
import importlib.metadata as metadata
import re
from pathlib import Path

__all__ = ["TORCH_REQUIREMENT", "read_requirements", "missing_requirements", "ensure_all", "requirements_file"]

# the oldest PyTorch the library is tested with (pyproject.toml says the same)
TORCH_REQUIREMENT = "torch>=2.1"

_REQ = re.compile(r"^\s*([A-Za-z0-9_.\-]+)\s*(?:\[[^\]]*\])?\s*(.*)$")


def read_requirements(path: str | Path) -> list[str]:
    """Requirement lines of a requirements file (comments and blank lines dropped)."""
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
    importlib.invalidate_caches()
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


def _pytorch_utils():
    """SlicerPyTorch's logic, or None when the PyTorch extension is not installed."""
    try:
        import PyTorchUtils
    except ImportError:
        return None
    return PyTorchUtils.PyTorchUtilsLogic()


def _pip_install(requirements: list[str], requester: str) -> None:
    """pip-install through Slicer's own helper: ``slicer.packaging`` where this Slicer has it (5.12+: progress
    dialog, no second question), else ``slicer.util.pip_install``."""
    import slicer

    try:
        packaging = importlib.import_module("slicer.packaging")
    except ImportError:
        packaging = None
    if packaging is not None:
        packaging.pip_install(list(requirements), requester=requester)
    else:
        slicer.util.pip_install(list(requirements))


def requirements_file(module_file: str | Path) -> Path:
    """``Resources/<Module>-requirements.txt`` beside a module's ``<Module>.py`` (for its self-test)."""
    module_file = Path(module_file)
    return module_file.parent / "Resources" / f"{module_file.stem}-requirements.txt"


def ensure_all(requirements_file: str | Path, ask: bool = True, need_torch: bool = True,
               requester: str = "VolumetricGAN") -> bool:
    """Make the module's packages (and PyTorch if ``need_torch``) importable; True when they are.

    Asks once (listing what will be installed), installs, and checks the result; any failure is shown to the
    user and returns False, as does declining.
    """
    import slicer

    missing = missing_requirements(read_requirements(requirements_file))
    torch_missing = bool(need_torch and missing_requirements([TORCH_REQUIREMENT]))
    if not missing and not torch_missing:
        return True
    torch_logic = _pytorch_utils() if torch_missing else None
    if torch_missing and torch_logic is None:
        slicer.util.errorDisplay(f"{requester} needs PyTorch ({TORCH_REQUIREMENT}). Install the 'PyTorch' extension "
                                 "from the Extensions Manager, restart Slicer and try again.")
        return False
    items = ([f"{TORCH_REQUIREMENT} (from the PyTorch extension, the build that matches your GPU; this can take "
              "several minutes)"] if torch_missing else []) + missing
    if ask and not slicer.util.confirmOkCancelDisplay(
            f"{requester} needs these Python packages, which will be installed now:\n\n  " + "\n  ".join(items)):
        return False
    with slicer.util.WaitCursor():
        if torch_missing:
            torch = torch_logic.installTorch(askConfirmation=False,
                                             torchVersionRequirement=TORCH_REQUIREMENT[len("torch"):])
            if torch is None or missing_requirements([TORCH_REQUIREMENT]):
                slicer.util.errorDisplay(f"Installing PyTorch ({TORCH_REQUIREMENT}) failed. Use the PyTorch Utils "
                                         "module to install it, then try again.")
                return False
        if missing:
            try:
                _pip_install(missing, requester)
            except Exception as exc:  # pip's own error (network, build failure): shown, not raised
                slicer.util.errorDisplay(f"Installing {', '.join(missing)} failed: {exc}")
                return False
    still = missing_requirements(missing)
    if still:
        slicer.util.errorDisplay("Installing these packages failed: " + ", ".join(still) +
                                 ". See README > Troubleshooting > pip failures.")
        return False
    return True
