"""``volgan segment``: label a folder of volumes with a saved segmenter (e.g. the downstream experiment's teacher).

Image-only generators have no labels of their own; their samples are labelled by a teacher trained on real
labelled volumes, as in Aydin et al. 2024. With the labels written here, the CoW morphometric and variant
fidelity (``volgan evaluate-morphometry``) scores an image-only model, such as the paper's, the same way as
a joint image + label model scores on its generated labels.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import numpy as np

from VolGANCore.errors import InputFileError
from VolGANCore.progress import CancelToken, Progress, ProgressCallback

__all__ = ["segment_folder"]


def segment_folder(
    model: str | os.PathLike,                      # a segmentation checkpoint (…/checkpoints/fold*_teacher.pt)
    images: str | os.PathLike,                     # folder of volumes to label
    out: str | os.PathLike,                        # output folder (new or empty unless overwrite)
    device: str = "auto",                          # auto, cpu, cuda, cuda:N or mps
    overwrite: bool = False,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelToken] = None,
) -> dict:
    """Write ``OUT/<case>.nii.gz`` label maps (the model's scheme) for every volume of ``images``, atomically.

    Every volume's spacing must match the one the model was trained at (within 5 %); the output folder is
    written only when all cases are labelled. Returns ``{"out", "cases", "scheme"}``.
    """
    from VolGANCore.atomic import atomic_directory
    from VolGANCore.dataset import case_id, list_volumes
    from VolGANCore.env import pick_device
    from VolGANCore.io import read_volume, write_volume

    from .network import SegmentationModel

    files = list_volumes(images)
    segmenter = SegmentationModel.load(model, pick_device(device))
    scheme = segmenter.config.get("scheme")
    want = np.asarray(segmenter.plan["spacing"], float)
    with atomic_directory(out, overwrite=overwrite) as tmp, Progress(len(files), "segment", progress, cancel) as p:
        for f in files:
            vol = read_volume(f)
            if not segmenter.fits_spacing(vol.array_spacing):
                raise InputFileError(f, f"spacing (D,H,W) {tuple(round(s, 5) for s in vol.array_spacing)} mm, but the "
                                        f"segmenter {Path(model).name} was trained at {tuple(round(float(s), 5) for s in want)} mm",
                                     "resample the volumes, or use a segmenter trained at this spacing")
            labels = segmenter.predict(vol).astype(np.int16)
            write_volume(vol.with_array(labels, label_scheme=scheme), Path(tmp) / f"{case_id(f)}.nii.gz")
            p.advance(message=f.name)
    return {"out": str(out), "cases": len(files), "scheme": scheme}
