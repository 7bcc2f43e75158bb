"""Circle-of-Willis TOF-MRA phantom with TopCoW 2023 artery labels.

Anatomy
-------
A parametric centreline graph in LPS millimetres around the centre of the crop (x → patient left,
y → posterior, z → superior): ICA C6/C7 segments rising from below to the ICA terminus, M1 with two early
M2 stubs, A1, Acom, A2 stubs and an optional third (median) A2, BA, P1, P2 stubs and Pcom. Node positions,
radii, tortuosity and left/right asymmetry are drawn per subject. Default lumen diameters (mean ± sd, mm):
ICA 3.8 ± 0.35, BA 3.0 ± 0.3, M1 2.8 ± 0.25, A1 2.1 ± 0.25, P1 2.1 ± 0.25, Pcom 1.3 ± 0.25,
Acom 1.4 ± 0.25, A2 2.0 ± 0.2, P2 2.0 ± 0.2, M2 2.0 ± 0.2, 3rd-A2 1.4 ± 0.2 — the typical TOF-MRA values
of Krabbe-Hartkamp et al. 1998 and Hindenes et al. 2020 (ICA ≈ 4, BA ≈ 3, M1 ≈ 2.8, A1/P1 ≈ 2,
Pcom/Acom ≈ 1–1.5 mm). Segment lengths follow the same sources (A1 ≈ 13 mm, P1 ≈ 7 mm, Pcom ≈ 12 mm,
Acom ≈ 2.5 mm, M1 ≈ 16 mm); the layout was checked against the real TopCoW label crop in
``../shared/data`` (relative positions of ICA termini, Acom, BA tip and P1–Pcom junctions).

Variants (conditional, not independent coin flips; :class:`CowVariantConfig`)
---------------------------------------------------------------------------
1. Fetal-type PCA: 15.9 % of subjects, bilateral 2.3 % (Gaigalaite et al. 2019). A fetal side has a
   large Pcom (P1-sized) and a hypoplastic or aplastic P1.
2. Pcom "missing" (absent, or hypoplastic < 1 mm, the Tromsø criterion) on non-fetal sides, drawn
   *jointly* for both sides: both missing 0.398, one missing 0.432, given no fetal PCA; 0.60 on the other
   side of a unilateral fetal PCA. With the anterior defaults this gives the Tromsø figures: both Pcom
   missing with the rest complete ≈ 27.8 %, complete circle ≈ 11.9 % (Hindenes et al. 2020), and a
   per-side rate above the 44 % of Trandafilović et al. 2024 (autopsy sees thinner vessels than MRA).
3. A1 hypoplasia/aplasia (one side) 8 %, aplasia in 40 % of those; an aplastic A1 forces a present
   Acom (the contralateral A1 must feed both A2 through it) — another dependency.
4. Acom absent 12 % (when no A1 aplasia).
5. Third (median) A2 present 5 % (a rare class in the TopCoW 2023 data; Yang et al. 2023).

Rendering (TOF-MRA)
-------------------
Supersampled partial-volume rasterisation of tapered tubes (exact distance to each centreline
segment, 3×3×3 supersampling of edge voxels only), inflow-dependent blood brightness (signal decays with
the path length travelled inside the slab, i.e. spin saturation; slower small vessels are darker),
brain-tissue background with smooth low-frequency texture and a darker CSF cistern around the circle,
unlabelled small branches as clutter (SCA, ophthalmic, perforators, distal twigs), a multiplicative bias
field and Rician noise. Calibrated to a real TopCoW 2023 crop (docs/generation.md, "Built-in phantoms":
background ≈ 98 ± 30, median ≈ 108, vessels ≈ 5.9× the median). A small random rigid pose jitter
(rotation, translation) mimics registered-but-not-perfect data.

References
----------
Hindenes LB, et al. Variations in the Circle of Willis in a large population sample using 3D TOF
angiography: The Tromsø Study. PLoS ONE 2020;15:e0241373.
Gaigalaite V, et al. Fetal-type posterior cerebral artery. PLoS ONE 2019 (n = 923 MRA).
Trandafilović M, et al. Posterior communicating artery, an autopsy study. Folia Morphol 2024 (n = 400).
Krabbe-Hartkamp MJ, et al. Circle of Willis: morphologic variation on three-dimensional time-of-flight
MR angiograms. Radiology 1998;207:103-111.
Yang K, et al. TopCoW: benchmarking topology-aware anatomical segmentation of the Circle of Willis for
CTA and MRA. arXiv:2312.17670 (2023).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import numpy as np
from scipy import ndimage as ndi

from VolGANCore import Volume, VolGANError, convert_labels

__all__ = [
    "CowVariantConfig",
    "sample_cow_variant",
    "sample_cow_variants",
    "make_cow_phantom",
    "validate_cow_geometry",
]

SIDES = {"R": -1.0, "L": 1.0}          # LPS: x grows to the patient's left
CLASS = {  # TopCoW 2023 ids
    "BA": 1, "R-PCA": 2, "L-PCA": 3, "R-ICA": 4, "R-MCA": 5, "L-ICA": 6, "L-MCA": 7,
    "R-Pcom": 8, "L-Pcom": 9, "Acom": 10, "R-ACA": 11, "L-ACA": 12, "3rd-A2": 15,
}


@dataclasses.dataclass(frozen=True)
class CowVariantConfig:
    """Variant probabilities (conditional; see the module docstring for sources)."""

    fetal_pca: float = 0.159                   # subjects with ≥ 1 fetal-type PCA (Gaigalaite 2019)
    fetal_pca_bilateral: float = 0.023         # subjects with bilateral fetal PCA (Gaigalaite 2019)
    fetal_p1_aplastic: float = 0.30            # fetal side: P1 absent (else hypoplastic < 1 mm)
    pcom_missing_both: float = 0.398           # no fetal PCA: both Pcom missing (Hindenes 2020 calibration)
    pcom_missing_one: float = 0.432            # no fetal PCA: exactly one Pcom missing (side 50/50)
    pcom_missing_other_given_fetal: float = 0.60  # unilateral fetal PCA: the other Pcom missing
    pcom_absent_given_missing: float = 0.50    # missing Pcom: absent (else hypoplastic, < 1 mm, labelled)
    a1_variant: float = 0.08                   # one A1 hypoplastic or aplastic
    a1_aplastic_given_variant: float = 0.40    # ... of which aplastic (absent)
    acom_absent: float = 0.12                  # Acom absent (only drawn when no A1 is aplastic)
    third_a2: float = 0.05                     # third (median) A2 present

    def validate(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if not (isinstance(v, (int, float)) and 0.0 <= v <= 1.0):
                raise VolGANError(f"variant frequency {f.name}: must be a probability in [0, 1], got {v!r}")
        if self.fetal_pca_bilateral > self.fetal_pca:
            raise VolGANError("variant frequency fetal_pca_bilateral: cannot exceed fetal_pca")
        if self.pcom_missing_both + self.pcom_missing_one > 1.0:
            raise VolGANError("variant frequencies pcom_missing_both + pcom_missing_one: must not exceed 1")


def _variant_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(index), 0xC0]))


def sample_cow_variant(rng: np.random.Generator, config: CowVariantConfig = CowVariantConfig()) -> dict[str, Any]:
    """Draw one subject's Circle-of-Willis variant (cheap; no rendering).

    Returns
    -------
    dict
        ``fetal_pca`` {R, L: bool}, ``p1`` {R, L: normal|hypoplastic|aplastic}, ``pcom`` {R, L:
        present|hypoplastic|absent|fetal}, ``pcom_missing`` {R, L: bool} (absent or < 1 mm),
        ``a1`` {R, L: normal|hypoplastic|aplastic}, ``acom`` present|absent, ``third_a2`` bool,
        ``complete_circle`` bool (every segment present and ≥ 1 mm), ``classes_present`` (TopCoW ids).
    """
    c = config
    u = rng.random()
    fetal = {"R": False, "L": False}
    if u < c.fetal_pca_bilateral:
        fetal = {"R": True, "L": True}
    elif u < c.fetal_pca:
        fetal["R" if rng.random() < 0.5 else "L"] = True
    p1 = {s: ("aplastic" if rng.random() < c.fetal_p1_aplastic else "hypoplastic") if fetal[s] else "normal"
          for s in SIDES}
    missing = {"R": False, "L": False}
    n_fetal = sum(fetal.values())
    if n_fetal == 0:
        v = rng.random()
        if v < c.pcom_missing_both:
            missing = {"R": True, "L": True}
        elif v < c.pcom_missing_both + c.pcom_missing_one:
            missing["R" if rng.random() < 0.5 else "L"] = True
    elif n_fetal == 1:
        other = "L" if fetal["R"] else "R"
        missing[other] = bool(rng.random() < c.pcom_missing_other_given_fetal)
    pcom = {}
    for s in SIDES:
        if fetal[s]:
            pcom[s] = "fetal"
        elif missing[s]:
            pcom[s] = "absent" if rng.random() < c.pcom_absent_given_missing else "hypoplastic"
        else:
            pcom[s] = "present"
    a1 = {"R": "normal", "L": "normal"}
    if rng.random() < c.a1_variant:
        a1["R" if rng.random() < 0.5 else "L"] = "aplastic" if rng.random() < c.a1_aplastic_given_variant else "hypoplastic"
    if "aplastic" in a1.values():
        acom = "present"
    else:
        acom = "absent" if rng.random() < c.acom_absent else "present"
    third = bool(rng.random() < c.third_a2)
    complete = (not any(fetal.values()) and not any(missing.values()) and set(a1.values()) == {"normal"}
                and acom == "present")
    present = [CLASS["BA"], CLASS["R-PCA"], CLASS["L-PCA"], CLASS["R-ICA"], CLASS["R-MCA"], CLASS["L-ICA"],
               CLASS["L-MCA"], CLASS["R-ACA"], CLASS["L-ACA"]]
    if pcom["R"] != "absent":
        present.append(CLASS["R-Pcom"])
    if pcom["L"] != "absent":
        present.append(CLASS["L-Pcom"])
    if acom == "present":
        present.append(CLASS["Acom"])
    if third:
        present.append(CLASS["3rd-A2"])
    return {
        "fetal_pca": fetal, "p1": p1, "pcom": pcom, "pcom_missing": missing, "a1": a1, "acom": acom,
        "third_a2": third, "complete_circle": bool(complete), "classes_present": sorted(present),
    }


def sample_cow_variants(seed: int, n: int, config: CowVariantConfig = CowVariantConfig()) -> list[dict[str, Any]]:
    """The variants of subjects ``0 … n-1`` of a dataset with this seed (the same the phantoms get)."""
    if n < 1:
        raise VolGANError(f"n: need at least one subject, got {n}")
    config.validate()
    return [sample_cow_variant(_variant_rng(seed, i), config) for i in range(n)]


# --------------------------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class _Tube:
    name: str
    label: int                 # TopCoW id, 0 for unlabelled clutter
    points: np.ndarray         # (N, 3) LPS mm
    radii: np.ndarray          # (N,) mm
    inflow_mm: np.ndarray      # (N,) path length from the slab's inflow (saturation)


def _polyline(ctrl: Sequence[Sequence[float]], rng: np.random.Generator, tortuosity: float,
              step: float = 0.7) -> np.ndarray:
    """Smooth curve through control points, with sinusoidal tortuosity that vanishes at both ends."""
    ctrl = np.asarray(ctrl, dtype=np.float64)
    seg = np.linalg.norm(np.diff(ctrl, axis=0), axis=1)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    length = float(s[-1])
    n = max(3, int(math.ceil(length / step)) + 1)
    t = np.linspace(0.0, length, n)
    pts = np.stack([np.interp(t, s, ctrl[:, k]) for k in range(3)], axis=1)
    if len(ctrl) > 2:  # round the corners at the control points, ends fixed
        sm = ndi.gaussian_filter1d(pts, sigma=max(1.0, 2.0 / step), axis=0, mode="nearest")
        w = np.minimum(1.0, np.minimum(t, length - t) / 2.0)[:, None]
        pts = w * sm + (1 - w) * pts
    chord = ctrl[-1] - ctrl[0]
    chord = chord / (np.linalg.norm(chord) + 1e-9)
    u = t / max(length, 1e-9)
    for k in (1, 2, 3):
        v = rng.standard_normal(3)
        v -= v.dot(chord) * chord
        v /= np.linalg.norm(v) + 1e-9
        amp = tortuosity * length * 0.06 / k * rng.standard_normal()
        pts = pts + amp * np.sin(math.pi * k * u)[:, None] * v[None]
    return pts


def _arc(pts: np.ndarray) -> np.ndarray:
    return np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(pts, axis=0), axis=1))])


def _diam(rng, mean, sd, lo=0.4):
    return float(max(lo, mean + sd * rng.standard_normal()))


def _build_tubes(rng: np.random.Generator, variant: dict[str, Any]) -> tuple[list[_Tube], dict[str, Any]]:
    """Centreline graph (in LPS mm around the crop centre) and every sampled geometric parameter."""
    P: dict[str, Any] = {}
    scale = float(np.clip(1.0 + 0.06 * rng.standard_normal(), 0.88, 1.12))
    P["scale"] = scale
    jit = lambda sd=1.0: rng.standard_normal(3) * sd  # noqa: E731

    def node(x, y, z, sd=1.0):
        return np.array([x, y, z], dtype=np.float64) * scale + jit(sd)

    d = {  # lumen diameters (mm), per subject, with per-side asymmetry
        "ICA": _diam(rng, 3.8, 0.35), "BA": _diam(rng, 3.0, 0.3), "M1": _diam(rng, 2.8, 0.25),
        "A1": _diam(rng, 2.1, 0.25), "P1": _diam(rng, 2.1, 0.25), "Pcom": _diam(rng, 1.3, 0.25, 1.0),
        "Acom": _diam(rng, 1.4, 0.25, 1.0), "A2": _diam(rng, 2.0, 0.2), "P2": _diam(rng, 2.0, 0.2),
        "M2": _diam(rng, 2.0, 0.2), "A2_3rd": _diam(rng, 1.4, 0.2, 1.0),
    }
    asym = {s: float(np.clip(1.0 + 0.06 * rng.standard_normal(), 0.85, 1.15)) for s in SIDES}
    P["diameters_mm"] = d
    P["side_asymmetry"] = asym
    tort = {k: float(rng.uniform(0.2, 1.0)) for k in ("ICA", "BA", "M", "A", "P", "Pcom")}
    P["tortuosity"] = tort
    nodes: dict[str, np.ndarray] = {}
    for s, sx in SIDES.items():
        nodes[f"ICA_in_{s}"] = node(sx * 12.5, -1.0, -13.0, 1.2)
        nodes[f"ICA_mid_{s}"] = node(sx * 13.5, -6.5, -6.0, 1.2)
        nodes[f"ICA_T_{s}"] = node(sx * 11.0, -3.0, 0.0, 1.0)
        nodes[f"M1_mid_{s}"] = node(sx * 19.0, -3.5, 1.5, 1.0)
        nodes[f"M1_end_{s}"] = node(sx * 27.0, -1.5, 3.0, 1.5)
        nodes[f"M2s_{s}"] = node(sx * 33.0, -4.0, 8.5, 1.5)
        nodes[f"M2i_{s}"] = node(sx * 34.5, 2.5, 0.5, 1.5)
        nodes[f"AC_{s}"] = np.array([sx * 1.3 * scale, 0, 0]) + node(0.0, -11.0, 3.5, 0.8) * np.array([0, 1, 1])
        nodes[f"A1_mid_{s}"] = node(sx * 6.5, -8.0, 2.0, 0.8)
        nodes[f"A2_mid_{s}"] = node(sx * 1.6, -17.0, 7.5, 0.8)
        nodes[f"A2_end_{s}"] = node(sx * 1.8, -21.0, 13.0, 1.0)
        nodes[f"PJ_{s}"] = node(sx * 7.0, 9.5, -2.5, 0.8)
        nodes[f"P2_mid_{s}"] = node(sx * 12.5, 13.5, -1.5, 1.0)
        nodes[f"P2_end_{s}"] = node(sx * 19.0, 21.0, 0.5, 1.5)
        nodes[f"P2_far_{s}"] = node(sx * 22.0, 29.0, 2.0, 1.5)
    nodes["BA_in"] = node(0.0, 12.5, -13.0, 1.2)
    nodes["BA_mid"] = node(0.5, 11.0, -7.0, 1.2)
    nodes["BA_tip"] = node(0.0, 9.5, -3.0, 0.8)
    if variant["acom"] == "absent":  # the two A1–A2 junctions lie apart
        nodes["AC_R"][0] -= 1.2
        nodes["AC_L"][0] += 1.2
    tubes: list[_Tube] = []

    def add(name, label, ctrl, d0, d1, tortuosity, inflow0=0.0):
        pts = _polyline(ctrl, rng, tortuosity)
        arc = _arc(pts)
        r = 0.5 * (d0 + (d1 - d0) * arc / max(arc[-1], 1e-9))
        tubes.append(_Tube(name, label, pts, r, inflow0 + arc))
        return tubes[-1]

    ica = {}
    for s in SIDES:
        a = asym[s]
        ica[s] = add(f"{s}-ICA", CLASS[f"{s}-ICA"], [nodes[f"ICA_in_{s}"], nodes[f"ICA_mid_{s}"], nodes[f"ICA_T_{s}"]],
                     d["ICA"] * a, d["ICA"] * a * 0.9, tort["ICA"])
    ba = add("BA", CLASS["BA"], [nodes["BA_in"], nodes["BA_mid"], nodes["BA_tip"]], d["BA"], d["BA"] * 0.95, tort["BA"])
    for s in SIDES:
        a, ti = asym[s], ica[s].inflow_mm[-1]
        m1 = add(f"{s}-M1", CLASS[f"{s}-MCA"], [nodes[f"ICA_T_{s}"], nodes[f"M1_mid_{s}"], nodes[f"M1_end_{s}"]],
                 d["M1"] * a, d["M1"] * a * 0.9, tort["M"], ti)
        for nm in ("M2s", "M2i"):
            add(f"{s}-{nm}", CLASS[f"{s}-MCA"], [nodes[f"M1_end_{s}"], nodes[f"{nm}_{s}"]],
                d["M2"] * a, d["M2"] * a * 0.8, tort["M"], m1.inflow_mm[-1])
    for s in SIDES:
        a, ti = asym[s], ica[s].inflow_mm[-1]
        other = "L" if s == "R" else "R"
        a1d = d["A1"] * a * (1.15 if variant["a1"][other] != "normal" else 1.0)
        if variant["a1"][s] == "hypoplastic":
            a1d = float(rng.uniform(0.7, 0.95))
        inflow_a2 = ti + 13.0
        if variant["a1"][s] != "aplastic":
            a1 = add(f"{s}-A1", CLASS[f"{s}-ACA"], [nodes[f"ICA_T_{s}"], nodes[f"A1_mid_{s}"], nodes[f"AC_{s}"]],
                     a1d, a1d * 0.95, tort["A"], ti)
            inflow_a2 = a1.inflow_mm[-1]
        add(f"{s}-A2", CLASS[f"{s}-ACA"], [nodes[f"AC_{s}"], nodes[f"A2_mid_{s}"], nodes[f"A2_end_{s}"]],
            d["A2"] * a, d["A2"] * a * 0.9, tort["A"], inflow_a2)
    if variant["acom"] == "present":
        add("Acom", CLASS["Acom"], [nodes["AC_R"], nodes["AC_L"]], d["Acom"], d["Acom"], 0.1, ica["R"].inflow_mm[-1] + 14)
    if variant["third_a2"]:
        start = 0.5 * (nodes["AC_R"] + nodes["AC_L"]) if variant["acom"] == "present" else nodes["AC_R"]
        add("3rd-A2", CLASS["3rd-A2"], [start, start + np.array([0.0, -5.0, 4.5]) * scale + jit(0.5),
                                        start + np.array([0.3, -9.5, 10.0]) * scale + jit(0.8)],
            d["A2_3rd"], d["A2_3rd"] * 0.9, tort["A"], ica["R"].inflow_mm[-1] + 15)
    for s in SIDES:
        a = asym[s]
        ti = ba.inflow_mm[-1]
        pj_inflow = ti + 7.0
        if variant["p1"][s] != "aplastic":
            p1d = d["P1"] * a if variant["p1"][s] == "normal" else float(rng.uniform(0.6, 0.95))
            p1 = add(f"{s}-P1", CLASS[f"{s}-PCA"], [nodes["BA_tip"], nodes[f"PJ_{s}"]], p1d, p1d, tort["P"] * 0.5, ti)
            pj_inflow = p1.inflow_mm[-1]
        if variant["pcom"][s] != "absent":
            if variant["pcom"][s] == "fetal":
                pd = d["P1"] * a * float(rng.uniform(0.95, 1.1))
            elif variant["pcom"][s] == "hypoplastic":
                pd = float(rng.uniform(0.6, 0.95))
            else:
                pd = d["Pcom"] * a
            ip = int(0.8 * (len(ica[s].points) - 1))
            o = ica[s].points[ip]
            mid = 0.5 * (o + nodes[f"PJ_{s}"]) + np.array([SIDES[s] * 1.0, 0.0, -0.8]) + jit(0.6)
            pc = add(f"{s}-Pcom", CLASS[f"{s}-Pcom"], [o, mid, nodes[f"PJ_{s}"]], pd, pd * 0.95, tort["Pcom"],
                     ica[s].inflow_mm[ip])
            if variant["pcom"][s] == "fetal":
                pj_inflow = pc.inflow_mm[-1]
        p2d = d["P2"] * a * (1.05 if variant["pcom"][s] == "fetal" else 1.0)
        add(f"{s}-P2", CLASS[f"{s}-PCA"], [nodes[f"PJ_{s}"], nodes[f"P2_mid_{s}"], nodes[f"P2_end_{s}"], nodes[f"P2_far_{s}"]],
            p2d, p2d * 0.8, tort["P"], pj_inflow)
    # ---- clutter: unlabelled small vessels (TopCoW does not label them)
    n_clutter = 0

    def twig(start, direction, length, diam, inflow, name):
        nonlocal n_clutter
        direction = np.asarray(direction, float) / (np.linalg.norm(direction) + 1e-9)
        end = start + direction * length
        mid = 0.5 * (start + end) + jit(0.25 * length)
        add(name, 0, [start, mid, end], diam, diam * 0.7, 0.8, inflow)
        n_clutter += 1

    k_ba = max(1, int(0.85 * (len(ba.points) - 1)))
    for s, sx in SIDES.items():  # superior cerebellar arteries from the distal BA
        twig(ba.points[k_ba], [sx, 0.6, -0.1], rng.uniform(10, 16), rng.uniform(0.9, 1.3), ba.inflow_mm[k_ba], f"{s}-SCA")
        k = int(0.55 * (len(ica[s].points) - 1))  # ophthalmic artery
        twig(ica[s].points[k], [sx * 0.3, -1.0, 0.1], rng.uniform(7, 12), rng.uniform(0.7, 1.0), ica[s].inflow_mm[k], f"{s}-OphA")
    for t in list(tubes):
        if t.label in (CLASS["R-MCA"], CLASS["L-MCA"]) and t.name.endswith("M1"):
            for _ in range(int(rng.integers(2, 5))):  # lenticulostriate perforators
                k = int(rng.integers(len(t.points) // 4, len(t.points)))
                twig(t.points[k], [rng.normal(0, 0.3), rng.normal(0, 0.3), 1.0], rng.uniform(5, 10),
                     rng.uniform(0.5, 0.75), t.inflow_mm[k], f"perforator-{n_clutter}")
        if t.name.endswith(("M2s", "M2i", "P2", "A2")):  # distal twigs
            for _ in range(int(rng.integers(1, 3))):
                k = int(rng.integers(len(t.points) // 3, len(t.points)))
                twig(t.points[k], rng.standard_normal(3), rng.uniform(5, 12), rng.uniform(0.5, 0.9),
                     t.inflow_mm[k], f"twig-{n_clutter}")
    P["n_clutter_vessels"] = n_clutter
    return tubes, P


def _rotation(angles_deg: np.ndarray) -> np.ndarray:
    ax, ay, az = np.deg2rad(angles_deg)
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


# --------------------------------------------------------------------------------------------------------
# Rasterisation
# --------------------------------------------------------------------------------------------------------
def _tube_signed_distance(x: np.ndarray, pts: np.ndarray, radii: np.ndarray, values: np.ndarray):
    """Signed distance (mm) of points ``x`` (M, 3) to a tapered tube; and the value at the nearest point."""
    a, b = pts[:-1], pts[1:]
    ab = b - a
    L2 = np.maximum((ab * ab).sum(1), 1e-12)
    best_sd = np.full(len(x), np.inf, dtype=np.float32)
    best_val = np.zeros(len(x), dtype=np.float32)
    best_dist = np.full(len(x), np.inf, dtype=np.float32)
    chunk = 16
    for s0 in range(0, len(a), chunk):
        sl = slice(s0, s0 + chunk)
        ax = x[:, None, :] - a[None, sl]
        t = np.clip((ax * ab[None, sl]).sum(-1) / L2[None, sl], 0.0, 1.0)
        diff = ax - t[..., None] * ab[None, sl]
        dist = np.sqrt((diff * diff).sum(-1))
        r = radii[:-1][sl][None] + t * (radii[1:][sl] - radii[:-1][sl])[None]
        sd = dist - r
        j = np.argmin(sd, axis=1)
        rows = np.arange(len(x))
        sdj = sd[rows, j]
        upd = sdj < best_sd
        best_sd[upd] = sdj[upd]
        tv = t[rows, j]
        v = values[:-1][sl][j] + tv * (values[1:][sl][j] - values[:-1][sl][j])
        best_val[upd] = v[upd]
        dmin = dist.min(axis=1)
        best_dist = np.minimum(best_dist, dmin)
    return best_sd, best_val, best_dist


def _rasterise(tubes: list[_Tube], brightness: list[np.ndarray], shape, spacing_zyx, origin_zyx, supersample=3):
    """Partial-volume occupancy, blood brightness and labels of all tubes on the voxel grid."""
    sp = np.asarray(spacing_zyx)
    occ = np.zeros(shape, np.float32)
    bright = np.zeros(shape, np.float32)
    score = np.zeros(shape, np.float32)
    label = np.zeros(shape, np.int16)
    half_diag = 0.5 * float(np.linalg.norm(sp))
    thin = 0.72 * float(sp.max())          # a vessel thinner than a voxel still labels its centreline voxels
    sub = (np.arange(supersample) + 0.5) / supersample - 0.5
    offs = np.stack(np.meshgrid(sub, sub, sub, indexing="ij"), -1).reshape(-1, 3) * sp
    for tube, br in zip(tubes, brightness):
        pz = tube.points[:, ::-1]  # (z, y, x) mm
        rmax = float(tube.radii.max())
        lo = np.floor((pz.min(0) - rmax - half_diag - origin_zyx) / sp).astype(int)
        hi = np.ceil((pz.max(0) + rmax + half_diag - origin_zyx) / sp).astype(int) + 1
        lo = np.maximum(lo, 0)
        hi = np.minimum(hi, shape)
        if np.any(hi <= lo):
            continue
        grids = np.meshgrid(*[np.arange(l, h) for l, h in zip(lo, hi)], indexing="ij")
        idx = np.stack([g.reshape(-1) for g in grids], 1)
        x = origin_zyx + idx * sp
        sd, val, dist = _tube_signed_distance(x, pz, tube.radii, br)
        near = sd < half_diag
        if not near.any():
            continue
        idx, x, sd, val, dist = idx[near], x[near], sd[near], val[near], dist[near]
        frac = (sd < 0).astype(np.float32)
        edge = np.abs(sd) < half_diag
        if edge.any():
            xs = (x[edge][:, None, :] + offs[None]).reshape(-1, 3)
            sds, _, _ = _tube_signed_distance(xs, pz, tube.radii, br)
            frac[edge] = (sds.reshape(-1, len(offs)) < 0).mean(1)
        ti = tuple(idx.T)
        upd = frac > occ[ti]
        occ[tuple(idx[upd].T)] = frac[upd]
        bright[tuple(idx[upd].T)] = val[upd]
        if tube.label:
            sc = np.where(dist <= thin, np.maximum(frac, 0.5), frac)
            better = (sc >= 0.5) & (sc > score[ti])
            score[tuple(idx[better].T)] = sc[better]
            label[tuple(idx[better].T)] = tube.label
    return occ, bright, label


def _smooth_field(rng, shape, spacing_zyx, corr_mm: float) -> np.ndarray:
    """Zero-mean, unit-sd Gaussian random field with Gaussian correlation length ``corr_mm`` (FFT)."""
    noise = rng.standard_normal(shape).astype(np.float32)
    f = ndi.gaussian_filter(noise, [corr_mm / s for s in spacing_zyx], mode="wrap")
    return (f - f.mean()) / (f.std() + 1e-12)


def validate_cow_geometry(shape: Sequence[int], spacing_mm: Sequence[float]) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    """Check ``shape`` (D, H, W) and ``spacing_mm`` (1 or 3 values, x y z) and return them normalised."""
    try:
        shape = tuple(int(v) for v in shape)
    except (TypeError, ValueError):
        raise VolGANError(f"shape: expected three integers D H W, got {shape!r}") from None
    if len(shape) != 3 or min(shape) < 8:
        raise VolGANError(f"shape: expected three integers D H W, each ≥ 8, got {shape!r}")
    sp = np.atleast_1d(np.asarray(spacing_mm, dtype=float))
    if sp.size == 1:
        sp = np.repeat(sp, 3)
    if sp.size != 3 or not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise VolGANError(f"spacing_mm: voxel size must be 1 or 3 positive numbers (x y z, mm), got {spacing_mm!r}")
    if np.any(sp > 3.0) or np.any(sp < 0.05):
        raise VolGANError(f"spacing_mm: {tuple(sp)} mm is outside the range a TOF-MRA crop uses (0.05–3 mm)")
    return shape, tuple(float(v) for v in sp)  # type: ignore[return-value]


def make_cow_phantom(
    seed: int,
    shape: Sequence[int] = (32, 128, 128),         # (D, H, W) voxels
    spacing_mm: float | Sequence[float] = 0.6,     # isotropic, or (x, y, z) mm
    index: int = 0,                                # subject index within a dataset
    label_scheme: str = "topcow13",                # "topcow13" or "aydin7"
    config: CowVariantConfig = CowVariantConfig(),  # variant frequencies
    pose_jitter: bool = True,                      # small random rigid rotation / translation
    noise_sd: float = 10.0,                        # Rician noise sigma (image units)
) -> tuple[Volume, Volume, dict[str, Any]]:
    """One synthetic TOF-MRA Circle-of-Willis crop with its artery label map.

    Parameters
    ----------
    seed, index : int
        ``(seed, index)`` determines the subject exactly (same bytes on CPU).
    shape : 3 ints
        Output (D, H, W); the crop is centred on the circle.
    spacing_mm : float or 3 floats
        Voxel size in mm (x, y, z).
    label_scheme : str
        ``"topcow13"`` (TopCoW 2023 ids) or ``"aydin7"`` (7 merged classes, 3rd-A2 → ACA).
    config : CowVariantConfig
        Variant frequencies.

    Returns
    -------
    image : Volume
        float32 TOF-MRA-like intensities (background ≈ 100, arteries several hundred).
    label : Volume
        int16 label map in ``label_scheme``, same geometry.
    params : dict
        ``variant`` (flags and ``classes_present``), every sampled geometric and rendering parameter.

    Example
    -------
    >>> img, lab, p = make_cow_phantom(0, shape=(32, 96, 96), spacing_mm=0.8)   # doctest: +SKIP
    >>> p["variant"]["classes_present"]                                        # doctest: +SKIP
    [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]
    """
    shape, spacing = validate_cow_geometry(shape, spacing_mm)
    if label_scheme not in ("topcow13", "aydin7"):
        raise VolGANError(f"label_scheme: choose 'topcow13' or 'aydin7', got {label_scheme!r}")
    if not (np.isfinite(noise_sd) and noise_sd >= 0):
        raise VolGANError(f"noise_sd: must be ≥ 0, got {noise_sd!r}")
    config.validate()
    variant = sample_cow_variant(_variant_rng(seed, index), config)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(index), 0xC1]))
    tubes, geo = _build_tubes(rng, variant)
    pose = {"rotation_deg": [0.0, 0.0, 0.0], "translation_mm": [0.0, 0.0, 0.0]}
    if pose_jitter:
        ang = np.clip(rng.normal(0.0, 3.0, 3), -7, 7)
        tr = np.clip(rng.normal(0.0, 1.2, 3), -3, 3)
        R = _rotation(ang)
        for t in tubes:
            t.points = t.points @ R.T + tr
        pose = {"rotation_deg": ang.tolist(), "translation_mm": tr.tolist()}
    # inflow-dependent blood signal: saturation with path length, darker in slow small vessels
    b0 = float(rng.normal(880.0, 60.0))
    lam = float(rng.uniform(45.0, 80.0))
    brightness = [b0 * (0.5 + 0.5 * np.exp(-t.inflow_mm / lam)) * (0.7 + 0.3 * np.minimum(t.radii / 1.5, 1.0))
                  for t in tubes]
    spacing_zyx = np.array(spacing[::-1])
    extent = (np.array(shape) - 1) * spacing_zyx
    origin_zyx = -extent / 2.0
    occ, bright, label = _rasterise(tubes, brightness, shape, spacing_zyx, origin_zyx)
    # background: brain tissue with smooth texture, a darker CSF cistern around the circle, bias, noise
    zz, yy, xx = np.meshgrid(*[origin_zyx[k] + np.arange(shape[k]) * spacing_zyx[k] for k in range(3)], indexing="ij")
    tissue = float(rng.normal(104.0, 6.0))
    tex = 17.0 * _smooth_field(rng, shape, spacing_zyx, 3.0) + 7.0 * _smooth_field(rng, shape, spacing_zyx, 1.0)
    cc = np.array([0.0, 2.0, -2.0]) + rng.normal(0, 1.5, 3)
    ax = np.array([15.0, 13.0, 5.0]) * rng.uniform(0.85, 1.15, 3)
    rr = np.sqrt(((xx - cc[0]) / ax[0]) ** 2 + ((yy - cc[1]) / ax[1]) ** 2 + ((zz - cc[2]) / ax[2]) ** 2)
    cistern_depth = float(rng.uniform(0.25, 0.45))
    csf = 1.0 - cistern_depth / (1.0 + np.exp((rr - 1.0) / 0.12))
    base_depth = float(rng.uniform(0.5, 0.8))  # skull base / sinus: dark, anterior-inferior
    base = 1.0 - base_depth / (1.0 + np.exp(-((-(zz + 7.0) - 0.3 * (yy + 20.0)) / 1.5)))
    bg = (tissue + tex) * csf * base
    bias = np.exp(0.08 * _smooth_field(rng, shape, spacing_zyx, 20.0) + 0.05 * (zz / max(extent[0], 1.0)))
    clean = ((1.0 - occ) * bg + occ * bright) * bias
    clean = np.maximum(clean, 0.0)
    n1 = rng.standard_normal(shape).astype(np.float32) * noise_sd
    n2 = rng.standard_normal(shape).astype(np.float32) * noise_sd
    image = np.sqrt((clean + n1) ** 2 + n2 ** 2).astype(np.float32)   # Rician magnitude
    origin_xyz = tuple(float(v) for v in origin_zyx[::-1])
    img_vol = Volume(image, spacing=spacing, origin=origin_xyz)
    lab = label if label_scheme == "topcow13" else convert_labels(label, "topcow13", "aydin7").astype(np.int16)
    lab_vol = Volume(lab, spacing=spacing, origin=origin_xyz, label_scheme=label_scheme)
    present = sorted(int(v) for v in np.unique(label) if v)
    params = {
        "seed": int(seed), "index": int(index), "shape_dhw": list(shape), "spacing_xyz_mm": list(spacing),
        "variant": variant, "classes_in_label": present, "geometry": geo, "pose": pose,
        "rendering": {"blood_signal": b0, "saturation_length_mm": lam, "tissue_level": tissue,
                      "cistern_depth": cistern_depth, "skull_base_depth": base_depth, "noise_sd": float(noise_sd)},
        "vessel_fraction": float((label > 0).mean()),
        "tubes": [{"name": t.name, "label": int(t.label), "length_mm": float(_arc(t.points)[-1]),
                   "radius_mm": [float(t.radii[0]), float(t.radii[-1])]} for t in tubes],
    }
    return img_vol, lab_vol, params
