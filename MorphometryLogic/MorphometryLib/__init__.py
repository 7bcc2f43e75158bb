"""MorphometryLib: bone micro-structure and vessel morphometry in physical units (exact and differentiable).

Layering: imports only :mod:`VolGANCore` below it; never Slicer. This package is the single home of these
measures (no other package re-implements them). torch is imported only by :mod:`.differentiable`.

Public API
----------
- :func:`bone_morphometry`, :func:`thickness_map`, :func:`segment_bone` (:mod:`.bone`)
- :func:`batch_bone_morphometry` (:mod:`.batch`)
- :mod:`.differentiable` — torch soft BV/TV, BMD, TMD, BS/TV, plate model, structure-tensor DA
- :func:`vessel_morphometry`, :func:`cow_variants` (:mod:`.vessels`)
"""

from .batch import batch_bone_morphometry, write_rows_csv
from .bone import ALL_PARAMETERS, PRESETS, bone_morphometry, segment_bone, thickness_map
from .vessels import binary_vessel_morphometry, cow_variants, vessel_morphometry

__all__ = [
    "ALL_PARAMETERS", "PRESETS", "bone_morphometry", "segment_bone", "thickness_map",
    "batch_bone_morphometry", "write_rows_csv",
    "vessel_morphometry", "cow_variants", "binary_vessel_morphometry",
]
