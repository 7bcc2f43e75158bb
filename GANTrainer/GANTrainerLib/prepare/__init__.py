"""Real data in: turn whole scans into training datasets (``volgan prepare bone``, ``volgan prepare cow``).

:mod:`.bone` resamples HR-pQCT / micro-CT scans to 164 µm, calibrates them to the spongiosa paper's density units,
builds a spongiosa mask when none is given and cuts 32³ patches fully inside it. :mod:`.cow` registers TOF-MRA
scans rigidly to a template (or builds one), resamples them and their labels onto its grid and crops the
Circle-of-Willis box. Outputs are the folder layout ``volgan train`` reads (``images/``, ``masks/`` or
``labels/``) with ``manifest.json`` and a QC picture.
"""

from .cow import PAPER_ROI, build_template, parse_roi, prepare_cow, register_rigid
from .bone import (BONE_THRESHOLD, SCANCO_XCT2, hu_to_density, parse_calibration, prepare_bone,
                   resample_to_spacing, spongiosa_mask)

__all__ = ["PAPER_ROI", "build_template", "parse_roi", "prepare_cow", "register_rigid", "BONE_THRESHOLD", "SCANCO_XCT2", "hu_to_density", "parse_calibration", "prepare_bone",
           "resample_to_spacing", "spongiosa_mask"]
