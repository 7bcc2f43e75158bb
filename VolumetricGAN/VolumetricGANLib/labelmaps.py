"""Joint image + label generation: class channels, their label ids, and the CoW variant vector.

A joint generator emits ``1 + K`` channels: the intensity, then K class logits, background first. Channel
*k* of the logits is the *k*-th id of ``(0,) + scheme.ids`` (TopCoW: 0, 1–12, 15), so a label map is the
decoded class (:func:`decode_classes`: the argmax, or foreground first, as the generator records) mapped
through :func:`class_ids`. The discriminator sees the intensity with one-hot labels for reals and the softmax of
the logits, or the straight-through one-hot of the decoded classes, for fakes (:func:`discriminator_input`), so
both live on the probability simplex.

The CoW variant vector used for conditioning is the TopCoW challenge's pair of vectors, concatenated:
anterior [L-A1, Acom, 3rd-A2, R-A1] then posterior [L-Pcom, L-P1, R-P1, R-Pcom] (1 = present), as
:func:`MorphometryLib.vessels.cow_variants` measures them on a label map (Yang et al., TopCoW 2023).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch

from VolGANCore.errors import VolGANError
from VolGANCore.labels import LabelScheme, get_scheme
from VolGANCore.names import COW_ANTERIOR, COW_POSTERIOR, COW_VARIANT_SEGMENTS, FAKE_LABEL_INPUTS, LABEL_DECODINGS

__all__ = ["VARIANT_NAMES", "ANTERIOR", "POSTERIOR", "class_ids", "labels_to_onehot", "split_output",
           "discriminator_input", "decode_classes", "hard_labels", "variant_vector", "variant_vectors", "variant_scores",
           "variant_condition", "parse_variant", "lr_flip_permutation"]

ANTERIOR, POSTERIOR, VARIANT_NAMES = COW_ANTERIOR, COW_POSTERIOR, COW_VARIANT_SEGMENTS


def class_ids(scheme: str | LabelScheme) -> np.ndarray:
    """Label id of every class channel: background (0) first, then the scheme's ids in order."""
    s = get_scheme(scheme) if isinstance(scheme, str) else scheme
    return np.asarray((0,) + tuple(s.ids), dtype=np.int64)


def labels_to_onehot(labels: torch.Tensor, scheme: str | LabelScheme, dtype=torch.float32,
                     check: bool = True) -> torch.Tensor:
    """``(N, 1, D, H, W)`` label ids → ``(N, K, D, H, W)`` one-hot over :func:`class_ids`.

    ``check`` refuses ids outside the scheme (a host sync: pass False in a training loop whose dataset was
    checked when it was read).
    """
    if labels.ndim != 5 or labels.shape[1] != 1:
        raise VolGANError(f"labels: expected (N, 1, D, H, W) label ids, got shape {tuple(labels.shape)}")
    ids = class_ids(scheme)
    lab = labels.to(torch.int64)
    if check:
        bad = sorted(set(torch.unique(lab).tolist()) - set(ids.tolist()))
        if bad:
            raise VolGANError(f"labels: unknown label id(s) {bad} (allowed: {ids.tolist()})")
    lut = torch.zeros(int(ids.max()) + 1, dtype=torch.int64, device=labels.device)
    lut[torch.as_tensor(ids, device=labels.device)] = torch.arange(len(ids), device=labels.device)
    index = lut[lab.clamp(0, int(ids.max()))]
    out = torch.zeros((lab.shape[0], len(ids), *lab.shape[2:]), dtype=dtype, device=labels.device)
    return out.scatter_(1, index, 1.0)


def split_output(x: torch.Tensor, label_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A joint generator's ``(N, 1 + K, ...)`` output → intensity ``(N, 1, ...)`` and logits ``(N, K, ...)``."""
    if x.shape[1] != 1 + label_classes:
        raise VolGANError(f"generator output has {x.shape[1]} channels; expected 1 + {label_classes} classes")
    return x[:, :1], x[:, 1:]


def decode_classes(logits: torch.Tensor, decoding: str = "argmax") -> torch.Tensor:
    """``(N, K, ...)`` class logits → ``(N, ...)`` class channel indices (0 = background).

    ``decoding`` "argmax" takes the likeliest class. "foreground" first asks whether the voxel is a vessel at all
    (the arteries' summed probability above the background's, i.e. ``logsumexp`` of their logits above the
    background logit) and then which artery: under the argmax a vessel voxel whose probability is split between
    two arteries falls to the background, so an unsure model labels only part of the vessels it draws.
    """
    if decoding == "argmax":
        return logits.argmax(dim=1)
    if decoding != "foreground":
        raise ValueError(f"label decoding {decoding!r}: choose one of {', '.join(LABEL_DECODINGS)}")
    arteries = logits[:, 1:].float()
    vessel = torch.logsumexp(arteries, dim=1) > logits[:, 0].float()
    return torch.where(vessel, arteries.argmax(dim=1) + 1, torch.zeros_like(vessel, dtype=torch.int64))


def discriminator_input(x: torch.Tensor, label_classes: int, mode: str = "softmax",
                        decoding: str = "argmax") -> torch.Tensor:
    """Intensity + class probabilities: what the discriminator sees of a generated sample.

    ``mode`` "softmax" passes the softmax of the logits; "straight-through" passes the one-hot of the decoded
    classes (:func:`decode_classes` with ``decoding``: exactly what :func:`hard_labels` writes, and on the same
    corners of the simplex as the reals' one-hot) with the softmax's gradient (the straight-through estimator,
    Bengio et al. 2013).
    """
    if mode not in FAKE_LABEL_INPUTS:
        raise ValueError(f"fake label input {mode!r}: choose one of {', '.join(FAKE_LABEL_INPUTS)}")
    img, logits = split_output(x, label_classes)
    probs = torch.softmax(logits.float(), dim=1)
    if mode == "straight-through":
        hard = torch.zeros_like(probs).scatter_(1, decode_classes(logits, decoding).unsqueeze(1), 1.0)
        probs = hard + probs - probs.detach()
    return torch.cat([img, probs.to(img.dtype)], dim=1)


def hard_labels(logits: torch.Tensor, scheme: str | LabelScheme, decoding: str = "argmax") -> np.ndarray:
    """``(N, K, D, H, W)`` class logits → ``(N, D, H, W)`` label ids (:func:`decode_classes` with ``decoding``)."""
    ids = class_ids(scheme)
    if logits.shape[1] != len(ids):
        raise VolGANError(f"{logits.shape[1]} class channels do not match scheme {scheme!r} ({len(ids)} with background)")
    return ids[decode_classes(logits, decoding).cpu().numpy()]


def variant_vector(variants: Mapping[str, Sequence[int]]) -> np.ndarray:
    """:func:`cow_variants`' ``{"anterior": [...4], "posterior": [...4]}`` → the 8-vector (float32, 0/1)."""
    try:
        v = list(variants["anterior"]) + list(variants["posterior"])
    except KeyError as e:
        raise VolGANError(f"variant: missing {e.args[0]!r} (expected anterior and posterior vectors)") from None
    if len(v) != 8 or any(int(x) not in (0, 1) for x in v):
        raise VolGANError(f"variant: expected 4 anterior + 4 posterior values of 0 or 1, got {v}")
    return np.asarray(v, dtype=np.float32)


def parse_variant(spec: str | Sequence[str], default: Mapping[str, Sequence[int]] | None = None,
                  partial: bool = False) -> dict:
    """``"posterior=0,1,1,1"`` or ``["anterior=1,1,0,1", "posterior=0,1,1,0"]`` → ``{"anterior", "posterior"}``.

    A part not given comes from ``default``; with no default both parts must be given, unless ``partial``
    (then only the given parts are returned).
    """
    items = [spec] if isinstance(spec, str) else list(spec)
    out = {k: list(v) for k, v in (default or {}).items()}
    for item in items:
        for part in filter(None, (p.strip() for p in item.split(";"))):
            key, sep, values = part.partition("=")
            key = key.strip().lower()
            if not sep or key not in ("anterior", "posterior"):
                raise VolGANError(f"--variant {part!r}: expected anterior=a,b,c,d or posterior=a,b,c,d "
                                  f"(anterior = {', '.join(ANTERIOR)}; posterior = {', '.join(POSTERIOR)})")
            try:
                bits = [int(b) for b in values.split(",")]
            except ValueError:
                bits = []
            if len(bits) != 4 or any(b not in (0, 1) for b in bits):
                raise VolGANError(f"--variant {part!r}: give four 0/1 values for {key} "
                                  f"({', '.join(ANTERIOR if key == 'anterior' else POSTERIOR)})")
            out[key] = bits
    missing = [k for k in ("anterior", "posterior") if k not in out]
    if partial:
        if len(missing) == 2:
            raise VolGANError("--variant: give anterior=a,b,c,d and/or posterior=a,b,c,d")
        return out
    if missing:
        raise VolGANError(f"--variant: {' and '.join(missing)} not given (e.g. {missing[0]}=1,1,1,1)")
    return {"anterior": out["anterior"], "posterior": out["posterior"]}


def lr_flip_permutation(scheme: str | LabelScheme, leading_channels: int = 1) -> list[int]:
    """Channel permutation that swaps left and right classes (``L-x`` ↔ ``R-x``) after a left-right mirror.

    Covers ``leading_channels`` intensity channels (unchanged) followed by the class channels of
    :func:`class_ids`. Mirroring a labelled volume without it would put the left ICA's label on the right.
    """
    s = get_scheme(scheme) if isinstance(scheme, str) else scheme
    names = ["background"] + [s.name_of(i) for i in s.ids]
    index = {n: k for k, n in enumerate(names)}
    perm = []
    for n in names:
        partner = ("R-" + n[2:]) if n.startswith("L-") else ("L-" + n[2:]) if n.startswith("R-") else n
        perm.append(index.get(partner, index[n]))
    return list(range(leading_channels)) + [leading_channels + k for k in perm]


def _channel(scheme: LabelScheme, name: str) -> int:
    return 1 + list(scheme.ids).index(scheme.id_of(name))


def variant_scores(probs: torch.Tensor, scheme: str | LabelScheme = "topcow13") -> torch.Tensor:
    """Soft CoW variant vectors of class probabilities ``(N, K, D, H, W)`` → ``(N, 8)`` in [0, 1], differentiable.

    The rule of :func:`MorphometryLib.vessels.cow_variants` on probabilities: a segment's presence is its class's
    highest probability, a contact (A1: ACA–ICA of one side, P1: PCA–BA) the highest product of one class's
    probability and the other's over the 26 neighbours (a 3×3×3 max-pool). On one-hot maps this is exactly the 0/1
    vector; on a generator's softmax it is what the variant-consistency term of training scores
    (:class:`GANTrainerLib.losses.StyleGAN2Loss`, ``variant_weight``). No host synchronisation.
    """
    s = get_scheme(scheme) if isinstance(scheme, str) else scheme
    if probs.ndim != 5 or probs.shape[1] != len(s.ids) + 1:
        raise VolGANError(f"variant vectors: expected (N, {len(s.ids) + 1}, D, H, W) one-hot labels or class "
                          f"probabilities, got shape {tuple(probs.shape)}")
    x = probs.float()

    def ch(name: str) -> torch.Tensor:
        k = _channel(s, name)
        return x[:, k:k + 1]

    def present(name: str) -> torch.Tensor:
        return ch(name).amax(dim=(1, 2, 3, 4))

    def touch(a: str, b: str) -> torch.Tensor:
        grown = torch.nn.functional.max_pool3d(ch(a), kernel_size=3, stride=1, padding=1)
        return (grown * ch(b)).amax(dim=(1, 2, 3, 4))

    bits = [touch("L-ACA", "L-ICA"), present("Acom"), present("3rd-A2"), touch("R-ACA", "R-ICA"),
            present("L-Pcom"), touch("L-PCA", "BA"), touch("R-PCA", "BA"), present("R-Pcom")]
    return torch.stack(bits, dim=1)


def variant_vectors(onehot: torch.Tensor, scheme: str | LabelScheme = "topcow13") -> torch.Tensor:
    """CoW variant vectors of a batch of one-hot label maps ``(N, K, D, H, W)`` → ``(N, 8)`` float 0/1, on the device.

    The same rule as :func:`MorphometryLib.vessels.cow_variants` (26-adjacency = a 3×3×3 max-pool dilation):
    A1 when the ACA touches the same-side ICA, P1 when the PCA touches the BA, the others when present
    (:func:`variant_scores` > 0.5). For a generator's output, pass the one-hot of its argmax. No host
    synchronisation.
    """
    return (variant_scores(onehot, scheme) > 0.5).float()


def variant_condition(vectors: torch.Tensor) -> torch.Tensor:
    """0/1 variant vectors → the conditioning a conditional network takes: ±1 (present +1, absent −1).

    Coded as 0/1, the variant with every segment absent would embed to zero, and a zero embedding makes the
    projection discriminator's output 0 whatever the volume (no signal for it at all).
    """
    return vectors.float() * 2 - 1
