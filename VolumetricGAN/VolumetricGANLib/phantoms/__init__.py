"""Built-in ground-truth phantoms: Circle-of-Willis TOF-MRA with TopCoW labels, trabecular bone.

Public API (numpy/scipy only, no torch):

- :func:`make_cow_phantom` / :func:`write_cow_dataset` — TOF-MRA crops with TopCoW 2023 labels and
  literature-based, conditional variant frequencies (:class:`CowVariantConfig`, :func:`sample_cow_variants`).
- :func:`make_bone_phantom` / :func:`write_bone_dataset` — HR-pQCT-like spongiosa patches with masks,
  controllable BV/TV, Tb.Th and anisotropy.
"""

from .bone import BoneRendering, extract_patches, local_thickness, make_bone_phantom, mean_intercept_da
from .cow import CowVariantConfig, make_cow_phantom, sample_cow_variant, sample_cow_variants
from .dataset import write_bone_dataset, write_cow_dataset

__all__ = [
    "make_cow_phantom", "make_bone_phantom", "write_cow_dataset", "write_bone_dataset",
    "CowVariantConfig", "sample_cow_variant", "sample_cow_variants",
    "BoneRendering", "extract_patches", "local_thickness", "mean_intercept_da",
]
