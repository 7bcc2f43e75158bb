"""Training a joint image + label generator: what the discriminator sees, label-aware augmentation, variant pool.

A joint StyleGAN2-3D (``label_classes`` K > 0) emits the intensity and K class logits. Its training set is a
:class:`~GANTrainerLib.data.CachedVolumeSet` built with ``keep_labels``, whose items are the intensity and the
label ids. The discriminator sees, for reals, the intensity with the one-hot labels and, for fakes, the
intensity with the softmax of the logits (:func:`VolumetricGANLib.labelmaps.discriminator_input`), so both lie
on the same simplex and the argmax of a convincing fake is a label map.

A conditional model (``c_dim`` = 8) is conditioned on the CoW variant vector: reals on their own vectors,
computed on the device from their labels (:func:`~VolumetricGANLib.labelmaps.variant_vectors`); fakes on
vectors drawn from the training set's vectors (:class:`VariantPool`), so the conditional model is trained on
the real variant frequencies, which the checkpoint records for unconditional sampling. This follows
StyleGAN2-ADA's conditional training (Karras et al., NeurIPS 2020), where fakes get labels drawn from the
dataset.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import torch

from VolGANCore.errors import VolGANError
from VolumetricGANLib.labelmaps import (
    VARIANT_NAMES,
    discriminator_input,
    labels_to_onehot,
    lr_flip_permutation,
    variant_condition,
    variant_vectors,
)

__all__ = ["JointSpec", "VariantPool", "joint_augment_kwargs"]


@dataclasses.dataclass(frozen=True)
class JointSpec:
    """What a joint generator emits: the label scheme, its K class channels, and the conditioning length."""

    label_scheme: str
    label_classes: int
    c_dim: int = 0
    decoding: str = "argmax"   # how the class logits become labels (VolumetricGANLib.labelmaps.decode_classes)

    @classmethod
    def of(cls, G: torch.nn.Module, label_scheme: Optional[str]) -> Optional["JointSpec"]:
        """The spec of generator ``G`` (None for an image-only generator); the scheme must fit its classes."""
        k = int(getattr(G, "label_classes", 0) or 0)
        c_dim = int(getattr(G, "c_dim", 0) or 0)
        if not k:
            if c_dim:
                raise VolGANError("a conditional generator needs the label branch (label_classes): the CoW variant "
                                  "of a real volume is read from its labels")
            return None
        from VolGANCore.labels import get_scheme

        if not label_scheme:
            raise VolGANError(f"the generator emits {k} label classes but the settings name no label_scheme "
                              "(e.g. topcow13)")
        n = len(get_scheme(label_scheme).ids) + 1
        if n != k:
            raise VolGANError(f"label_scheme {label_scheme} has {n} classes with background, the generator emits {k}")
        if c_dim not in (0, len(VARIANT_NAMES)):
            raise VolGANError(f"c_dim {c_dim}: the CoW variant vector has {len(VARIANT_NAMES)} entries "
                              f"({', '.join(VARIANT_NAMES)})")
        if c_dim and label_scheme != "topcow13":
            raise VolGANError("variant conditioning needs TopCoW labels (label_scheme topcow13)")
        return cls(label_scheme, k, c_dim, G.label_decoding)

    def reals(self, batch: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """A ``(N, 2, D, H, W)`` batch (intensity, label ids) → the discriminator's input and the reals' ``c``
        (their variant vectors coded ±1, :func:`~VolumetricGANLib.labelmaps.variant_condition`)."""
        if batch.ndim != 5 or batch.shape[1] != 2:
            raise VolGANError(f"joint training batches are (N, 2, D, H, W) (intensity, label ids); got "
                              f"{tuple(batch.shape)}: build the dataset with keep_labels")
        onehot = labels_to_onehot(batch[:, 1:].round(), self.label_scheme, dtype=batch.dtype, check=False)
        c = variant_condition(variant_vectors(onehot, self.label_scheme)) if self.c_dim else None
        return torch.cat([batch[:, :1], onehot], dim=1), c

    def fakes(self, x: torch.Tensor, mode: str = "softmax") -> torch.Tensor:
        """The generator's ``(N, 1 + K, ...)`` output → the discriminator's input (intensity + class probabilities,
        softmax or straight-through one-hot: :func:`~VolumetricGANLib.labelmaps.discriminator_input`)."""
        return discriminator_input(x, self.label_classes, mode, self.decoding)


class VariantPool:
    """The training set's variant vectors (0/1); draws fakes' conditioning (coded ±1) with the real frequencies,
    on the device."""

    def __init__(self, vectors: torch.Tensor) -> None:
        if vectors.ndim != 2 or vectors.shape[1] != len(VARIANT_NAMES) or vectors.shape[0] == 0:
            raise VolGANError(f"variant pool: expected (n ≥ 1, {len(VARIANT_NAMES)}) vectors, got {tuple(vectors.shape)}")
        self.vectors = vectors.float()

    @classmethod
    def from_dataset(cls, dataset, spec: JointSpec, device: Any = "cpu", chunk: int = 8) -> "VariantPool":
        """Variant vectors of every item of a ``keep_labels`` dataset (read once, in chunks)."""
        rows = []
        for start in range(0, len(dataset), chunk):
            batch = torch.stack([torch.from_numpy(dataset[i]) for i in range(start, min(len(dataset), start + chunk))])
            onehot = labels_to_onehot(batch[:, 1:].round(), spec.label_scheme, check=False)
            rows.append(variant_vectors(onehot, spec.label_scheme))
        return cls(torch.cat(rows).to(device))

    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Conditioning of ``n`` fakes: training vectors drawn uniformly (so with their frequencies), coded ±1."""
        idx = torch.randint(0, self.vectors.shape[0], (n,), device=self.vectors.device, generator=generator)
        return variant_condition(self.vectors[idx])

    def frequencies(self) -> dict[str, Any]:
        """Distinct vectors with their counts (JSON), for the checkpoint and unconditional sampling."""
        uniq, counts = torch.unique(self.vectors.cpu().to(torch.int64), dim=0, return_counts=True)
        return {"names": list(VARIANT_NAMES), "vectors": uniq.tolist(), "counts": counts.tolist()}


def joint_augment_kwargs(augment: dict, spec: Optional[JointSpec]) -> dict:
    """DiffAugment3D settings for a joint model: intensity operations on channel 0 only, and a left-right mirror
    (axis W, the ROI's left-right axis) that also swaps left and right classes. Other mirrors are refused:
    they would make anatomy no real volume has."""
    if spec is None or not augment:
        return dict(augment)
    out = dict(augment)
    flips = [int(a) for a in out.get("flip_axes", (2,))]
    if any(a != 2 for a in flips):
        raise VolGANError(f"augment flip_axes {flips}: a labelled CoW volume may only be mirrored left-right "
                          "(axis 2, W)")
    out["intensity_channels"] = 1
    if flips:
        out["flip_permutations"] = {2: lr_flip_permutation(spec.label_scheme)}
    return out


class ImageView(torch.nn.Module):
    """A joint generator seen as an image generator (training montages and quick metrics): ``forward(z, **kw)``
    returns the intensity channel only; a conditional generator is conditioned on pool draws from a stream seeded
    at construction (a fresh view per evaluation repeats the same conditions for the same latents)."""

    def __init__(self, G: torch.nn.Module, pool: Optional[VariantPool] = None, seed: int = 0) -> None:
        super().__init__()
        self.G = G
        self.pool = pool if int(getattr(G, "c_dim", 0) or 0) else None
        self.z_dim = G.z_dim
        self._gen = None
        if self.pool is not None:
            self._gen = torch.Generator(device=self.pool.vectors.device)
            self._gen.manual_seed(int(seed))

    def full(self, z: torch.Tensor, **kwargs) -> torch.Tensor:
        """The joint output (intensity and class logits) under the view's conditions."""
        if self.pool is not None:
            kwargs["c"] = self.pool.sample(z.shape[0], generator=self._gen).to(z.device)
        return self.G(z, **kwargs)

    def forward(self, z: torch.Tensor, **kwargs) -> torch.Tensor:
        return self.full(z, **kwargs)[:, :1]
