"""Label schemes for Circle-of-Willis artery segmentations, and lookup-table conversion between them.

TopCoW 2023 multiclass scheme (README.md, "Data conventions"): 1 BA, 2 R-PCA, 3 L-PCA, 4 R-ICA, 5 R-MCA, 6 L-ICA,
7 L-MCA, 8 R-Pcom, 9 L-Pcom, 10 Acom, 11 R-ACA, 12 L-ACA, 15 3rd-A2 (13 and 14 unused).

Aydin et al. 2024 merged these into 7 classes (1 BA, 2 PCA/P1, 3 ICA, 4 MCA/M1, 5 ACA/A1, 6 Pcom,
7 Acom). Their script mapped "13" for the 3rd-A2 and so silently dropped label 15; here the conversion
is a lookup table in which 3rd-A2 → ACA, and an id without a mapping is an error, never silently kept.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .errors import VolGANError

__all__ = ["LabelScheme", "SCHEMES", "get_scheme", "convert_labels", "TOPCOW13", "AYDIN7"]


@dataclasses.dataclass(frozen=True)
class LabelScheme:
    """Named classes with ids and display colours (RGB in 0–1)."""

    name: str
    description: str
    classes: tuple[tuple[int, str, tuple[float, float, float]], ...]

    @property
    def ids(self) -> tuple[int, ...]:
        return tuple(c[0] for c in self.classes)

    @property
    def ids_with_background(self) -> tuple[int, ...]:
        return (0,) + self.ids

    def name_of(self, label_id: int) -> str:
        for i, n, _ in self.classes:
            if i == label_id:
                return n
        raise VolGANError(f"label id {label_id} is not in scheme '{self.name}' (ids: {list(self.ids)})")

    def id_of(self, name: str) -> int:
        for i, n, _ in self.classes:
            if n.lower() == name.lower():
                return i
        raise VolGANError(f"class '{name}' is not in scheme '{self.name}' (classes: {[c[1] for c in self.classes]})")

    def colour_of(self, label_id: int) -> tuple[float, float, float]:
        for i, _, c in self.classes:
            if i == label_id:
                return c
        raise VolGANError(f"label id {label_id} is not in scheme '{self.name}'")

    def check(self, labels: np.ndarray, what: str = "label map") -> None:
        """Raise if ``labels`` holds ids outside this scheme (0 = background is always allowed)."""
        present = np.unique(labels)
        unknown = sorted(set(int(v) for v in present) - set(self.ids_with_background))
        if unknown:
            raise VolGANError(f"{what}: unknown label id(s) {unknown} for scheme '{self.name}' "
                              f"(allowed: {list(self.ids)}; convert with convert_labels or pick the right scheme)")


def _rgb(hex_colour: str) -> tuple[float, float, float]:
    h = hex_colour.lstrip("#")
    return tuple(int(h[k:k + 2], 16) / 255.0 for k in (0, 2, 4))  # type: ignore[return-value]


TOPCOW13 = LabelScheme(
    name="topcow13",
    description="TopCoW 2023 multiclass Circle-of-Willis labels (13 artery classes)",
    classes=(
        (1, "BA", _rgb("#e6194b")),
        (2, "R-PCA", _rgb("#3cb44b")),
        (3, "L-PCA", _rgb("#ffe119")),
        (4, "R-ICA", _rgb("#4363d8")),
        (5, "R-MCA", _rgb("#f58231")),
        (6, "L-ICA", _rgb("#911eb4")),
        (7, "L-MCA", _rgb("#42d4f4")),
        (8, "R-Pcom", _rgb("#f032e6")),
        (9, "L-Pcom", _rgb("#bfef45")),
        (10, "Acom", _rgb("#fabed4")),
        (11, "R-ACA", _rgb("#469990")),
        (12, "L-ACA", _rgb("#dcbeff")),
        (15, "3rd-A2", _rgb("#9a6324")),
    ),
)

AYDIN7 = LabelScheme(
    name="aydin7",
    description="7-class merge of Aydin et al. 2024 (sides merged; 3rd-A2 counted as ACA)",
    classes=(
        (1, "BA", _rgb("#e6194b")),
        (2, "PCA", _rgb("#3cb44b")),
        (3, "ICA", _rgb("#4363d8")),
        (4, "MCA", _rgb("#f58231")),
        (5, "ACA", _rgb("#469990")),
        (6, "Pcom", _rgb("#f032e6")),
        (7, "Acom", _rgb("#fabed4")),
    ),
)

SCHEMES = {s.name: s for s in (TOPCOW13, AYDIN7)}

# source scheme -> target scheme -> {source id: target id}
_LOOKUPS: dict[tuple[str, str], dict[int, int]] = {
    ("topcow13", "aydin7"): {1: 1, 2: 2, 3: 2, 4: 3, 6: 3, 5: 4, 7: 4, 11: 5, 12: 5, 15: 5, 8: 6, 9: 6, 10: 7},
}


def get_scheme(name: str) -> LabelScheme:
    try:
        return SCHEMES[name]
    except KeyError:
        raise VolGANError(f"unknown label scheme '{name}' (choose one of {sorted(SCHEMES)})") from None


def convert_labels(labels: np.ndarray, source: str, target: str) -> np.ndarray:
    """Map a label array from scheme ``source`` to ``target`` with a lookup table (one pass, no chaining).

    Ids not in the source scheme raise :class:`VolGANError`; background 0 stays 0.
    """
    if source == target:
        get_scheme(source).check(labels)
        return np.asarray(labels).copy()
    try:
        table = _LOOKUPS[(source, target)]
    except KeyError:
        raise VolGANError(f"no conversion from label scheme '{source}' to '{target}' "
                          f"(available: {[f'{a}->{b}' for a, b in _LOOKUPS]})") from None
    get_scheme(source).check(labels, f"labels in scheme '{source}'")
    lut = np.zeros(max(get_scheme(source).ids) + 1, dtype=np.int16)
    for s, t in table.items():
        lut[s] = t
    return lut[np.asarray(labels, dtype=np.int64)]
