"""Real data in: turn whole scans into training datasets (``volgan prepare bone``, ``volgan prepare cow``).

:mod:`.bone` resamples HR-pQCT / micro-CT scans to 164 µm, calibrates them to the spongiosa paper's density units,
builds a spongiosa mask when none is given and cuts 32³ patches fully inside it. Outputs are the folder layout
``volgan train`` reads (``images/``, ``masks/``) with ``manifest.json`` and a QC montage.
"""

from .bone import (BONE_THRESHOLD, SCANCO_XCT2, hu_to_density, parse_calibration, prepare_bone,
                   resample_to_spacing, spongiosa_mask)

__all__ = ["BONE_THRESHOLD", "SCANCO_XCT2", "hu_to_density", "parse_calibration", "prepare_bone",
           "resample_to_spacing", "spongiosa_mask"]
