"""Volume I/O: VolGANCore.read_volume / write_volume next to raw SimpleITK and nibabel on the same files.

Shows the price of the safety checks (truncation check for NIfTI, NaN scan, geometry extraction) on a
32×128×128 float32 CoW-sized volume and a 256³ bone block.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from harness import Case


def _quiet(fn, *args):
    """A timed call whose result is discarded (the harness treats a returned dict as extra figures)."""
    return lambda: (fn(*args), None)[1]


def cases(quick: bool) -> list[Case]:
    import nibabel as nib
    import SimpleITK as sitk

    from VolGANCore import Volume, read_volume, write_volume

    tmp = Path(tempfile.mkdtemp(prefix="volgan-bench-io-"))
    rng = np.random.default_rng(0)
    out: list[Case] = []
    for shape in [(32, 128, 128), (128, 128, 128) if quick else (256, 256, 256)]:
        label = "x".join(str(s) for s in shape)
        vol = Volume(rng.normal(size=shape).astype(np.float32), spacing=(0.3, 0.3, 0.6))
        for suffix in (".nii.gz", ".nrrd"):
            path = write_volume(vol, tmp / f"v_{label}{suffix}")
            group = f"read {label} {suffix}"
            out.append(Case(group, "SimpleITK ReadImage+GetArray", _quiet(lambda p: sitk.GetArrayFromImage(sitk.ReadImage(str(p))), path),
                            reference=True, repeats=5))
            if suffix == ".nii.gz":
                out.append(Case(group, "nibabel load+get_fdata(float32)",
                                _quiet(lambda p: nib.load(str(p)).get_fdata(dtype=np.float32), path), repeats=5))
            out.append(Case(group, "VolGANCore.read_volume", _quiet(read_volume, path), repeats=5))
        group = f"write {label} .nii.gz"
        img = sitk.GetImageFromArray(vol.array)
        out.append(Case(group, "SimpleITK WriteImage", _quiet(sitk.WriteImage, img, str(tmp / f"w_{label}.nii.gz"), True),
                        reference=True, repeats=3))
        out.append(Case(group, "VolGANCore.write_volume (atomic)", _quiet(write_volume, vol, tmp / f"a_{label}.nii.gz"),
                        repeats=3))
    return out
