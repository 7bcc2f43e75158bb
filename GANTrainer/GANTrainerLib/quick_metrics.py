"""Quick metrics during training: a small Fréchet distance (bone: also morphometric W1) picks the best checkpoint.

Every ``metrics_kimg`` (the presets: at every snapshot) rank 0 generates ``n = min(metrics_n, training volumes)``
volumes from fixed latents with the EMA generator (eval mode, ``torch.inference_mode``, fp32, constant noise;
a progressive generator at its current level, up-sampled nearest-neighbour to the training shape) and compares
them with a fixed, seeded subset of ``n`` training volumes:

``metrics/fd_quick``
    Fréchet distance between the two feature sets (:func:`quick_frechet`). Features: MedicalNet ResNet-10
    (``metrics_medicalnet_weights``), else Inception-v3 pool3 on 8 evenly spaced slices per volume
    (``metrics_inception_weights``), else the documented fallback (MedicalNet's architecture with seeded random
    weights, ``GANTrainerLib.evaluation.features``). Inputs as ``volgan evaluate``'s default protocol.
``metrics/spread_ratio``
    Voxel-wise SD across the generated volumes over the same for the real ones (:func:`voxel_spread`); below
    :data:`COLLAPSE_SPREAD` the checkpoint is never ranked (mode collapse).
``metrics/frame_index``
    Border artefacts (:func:`frame_index` of the two :func:`border_profile` results); logged, never ranked.
``metrics/morph_w1`` (bone presets: anatomy ``spongiosa`` with a physical intensity range)
    Mean over BV/TV, Tb.Th, Tb.Sp, BMD and TMD of the 1-Wasserstein distance between the real and generated
    values divided by the real standard deviation (:func:`morph_w1`), from the exact panel
    (:func:`MorphometryLib.batch.batch_bone_morphometry`, threshold 225 in the MICCAI 2020 units) on the first
    ``metrics_morph_n`` volumes of each set. A generated patch without bone or without marrow cannot be
    measured; it still enters BV/TV (0 or 1) and is counted in ``metrics/morph_unmeasurable``.

The real side (features and morphometry) is computed once and cached in ``RUN/metrics/real-<key>.npz``; the key
covers the training cache, the subset, the extractor and the recipe. Everything runs with the training RNG streams
saved and restored, so a run with quick metrics is bit-for-bit the run without them.

The numbers rank checkpoints of one run; they are not for reporting (a 64-sample Fréchet distance is biased
upward and the fallback features are not FID): use ``volgan evaluate`` on a chosen checkpoint for that.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import random
import time
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from VolGANCore import VolGANError

from .evaluation.border import border_profile, frame_index

__all__ = ["QUICK_METRICS", "BONE_PARAMETERS", "BONE_KEYS", "quick_frechet", "morph_w1", "bone_values",
           "voxel_spread", "QuickMetrics", "COLLAPSE_SPREAD", "collapsed"]

COLLAPSE_SPREAD = 0.5  # spread_ratio below this: the samples vary far less than the real volumes (mode collapse?)

QUICK_METRICS = ("fd_quick", "morph_w1")          # names that can pick the best checkpoint (lower is better)
BONE_PARAMETERS = ("BV/TV", "Tb.Th", "Tb.Sp", "BMD", "TMD")
BONE_KEYS = ("BV/TV", "Tb.Th [mm]", "Tb.Sp [mm]", "BMD [image units]", "TMD [image units]")
BONE_THRESHOLD = 225.0                            # MICCAI 2020 units (MorphometryLib PRESETS["miccai2020"])
SLICES_PER_VOLUME = 8                             # Inception mode: evenly spaced slices per volume
CACHE_VERSION = 1
_SUBSET_SALT = 7_919                              # the real subset and the latents: own streams from the seed
_LATENT_SALT = 104_729


def quick_frechet(real_features, fake_features) -> float:
    """Fréchet distance of Gaussians fitted to two ``(n, d)`` feature sets (exact low-rank form when n ≤ d)."""
    from .evaluation.frechet import frechet_distance_from_features

    return float(frechet_distance_from_features(real_features, fake_features))


def voxel_spread(volumes: np.ndarray) -> float:
    """Mean over voxels of the standard deviation across ``(n, ...)`` volumes: how much samples differ.

    ``spread_ratio`` = generated / real spread is about 1 for a model that varies as much as the data and drops
    towards 0 when it collapses onto a few outputs (the Fréchet distance of few samples barely notices that)."""
    v = np.asarray(volumes, np.float64)
    return float(v.std(axis=0).mean()) if len(v) >= 2 else float("nan")


def morph_w1(real: Mapping[str, Sequence[float]], generated: Mapping[str, Sequence[float]],
             keys: Sequence[str] = BONE_KEYS) -> Optional[float]:
    """Mean over ``keys`` of W1(real, generated) / SD(real).

    A key enters when it has ≥ 2 finite real values with a spread and ≥ 1 finite generated value; None when
    no key does.
    """
    from scipy.stats import wasserstein_distance

    terms = []
    for key in keys:
        r = np.asarray([v for v in real.get(key, []) if math.isfinite(v)], np.float64)
        g = np.asarray([v for v in generated.get(key, []) if math.isfinite(v)], np.float64)
        if len(r) < 2 or len(g) < 1:
            continue
        sd = float(r.std(ddof=1))
        if not sd > 0:
            continue
        terms.append(float(wasserstein_distance(r, g)) / sd)
    return float(np.mean(terms)) if terms else None


def bone_values(volumes: np.ndarray, spacing: Sequence[float]) -> tuple[dict[str, list[float]], int]:
    """Exact BV/TV, Tb.Th, Tb.Sp, BMD, TMD of ``(N, D, H, W)`` volumes in physical units; (values, unmeasurable).

    An unmeasurable volume (no bone or no marrow at the threshold) contributes its BV/TV (0 or 1) only.
    """
    from MorphometryLib.batch import batch_bone_morphometry

    values: dict[str, list[float]] = {k: [] for k in BONE_KEYS}
    if len(volumes) == 0:
        return values, 0
    rows = batch_bone_morphometry(np.asarray(volumes, np.float32), spacing=list(spacing), threshold=BONE_THRESHOLD,
                                  parameters=BONE_PARAMETERS, workers=1)
    bad = 0
    for vol, row in zip(volumes, rows):
        if row.get("error"):
            bad += 1
            values["BV/TV"].append(float(np.mean(np.asarray(vol) >= BONE_THRESHOLD)))
            continue
        for key in BONE_KEYS:
            v = float(row.get(key, math.nan))
            if math.isfinite(v):
                values[key].append(v)
    return values, bad


@contextlib.contextmanager
def _isolated_rng():
    """Run with torch (CPU), NumPy and Python RNG states restored afterwards (extractor init draws from torch)."""
    import torch

    np_state, py_state = np.random.get_state(), random.getstate()
    with torch.random.fork_rng(devices=[]):
        try:
            yield
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)


def collapsed(values: Mapping[str, float]) -> bool:
    """True when quick-metric ``values`` show mode collapse (``spread_ratio`` below :data:`COLLAPSE_SPREAD`)."""
    return float(values.get("spread_ratio", 1.0)) < COLLAPSE_SPREAD


class QuickMetrics:
    """Quick metrics of one run (rank 0): the real reference (cached), evaluations, and the best value so far."""

    @staticmethod
    def unusable(settings, dataset) -> Optional[str]:
        """Why quick metrics cannot run on this data (then training goes on without them), or None."""
        if min(len(dataset), int(settings.metrics_n)) < 2:
            return (f"quick metrics off: they need ≥ 2 training volumes and metrics_n ≥ 2 (have {len(dataset)}, "
                    f"metrics_n {settings.metrics_n})")
        volume_features = settings.metrics_medicalnet_weights or not settings.metrics_inception_weights
        if volume_features and min(dataset.shape) < 8:
            return (f"quick metrics off: volumes of shape {tuple(dataset.shape)} are too small for the 3-D feature "
                    "network (each side must be ≥ 8 voxels)")
        return None

    def __init__(self, settings, dataset, folder, device, spacing: Sequence[float]) -> None:
        self.track = str(settings.metrics_track)
        if self.track not in QUICK_METRICS:
            raise VolGANError(f"metrics_track '{self.track}': choose one of {', '.join(QUICK_METRICS)}")
        inten = settings.intensity or {}
        self.intensity = inten if ("physical_range" in inten and "network_range" in inten) else None
        self.bone = settings.anatomy == "spongiosa" and self.intensity is not None
        if self.track == "morph_w1" and not self.bone:
            raise VolGANError("metrics_track 'morph_w1' needs a bone preset (anatomy 'spongiosa' with a physical "
                              "intensity range); use 'fd_quick'")
        self.n = min(int(settings.metrics_n), len(dataset))
        if self.n < 2:
            raise VolGANError(f"quick metrics need ≥ 2 training volumes and metrics_n ≥ 2 (have {len(dataset)} "
                              f"volume(s), metrics_n {settings.metrics_n}); set metrics_kimg to 0 to switch them off")
        rng = np.random.default_rng([int(settings.seed), _SUBSET_SALT])
        self.indices = np.sort(rng.choice(len(dataset), self.n, replace=False))
        self.n_morph = min(int(settings.metrics_morph_n), self.n) if self.bone else 0
        self.dataset, self.folder, self.spacing = dataset, Path(folder), [float(s) for s in spacing]
        self.device = device
        self.seed, self.latent, self.batch = int(settings.seed), settings.latent, max(1, int(settings.batch))
        self.budget = settings.metrics_budget
        med, inc = settings.metrics_medicalnet_weights, settings.metrics_inception_weights
        with _isolated_rng():  # building a network draws from the global torch RNG
            if med or not inc:
                from .evaluation.features import make_volume_extractor

                self.mode, self.extractor = "volume", make_volume_extractor(med or None, str(device), seed=0)
            else:
                from .evaluation.features import InceptionSliceExtractor

                self.mode, self.extractor = "slices", InceptionSliceExtractor(inc, str(device))
        self.best: Optional[float] = None
        self.best_step: Optional[int] = None
        self.last: Optional[dict] = None
        self.evaluations = 0            # in this process (the budget counts from the first one)
        self.spent_s = 0.0              # evaluation time in this process, without the one-off reference
        self.reference_s = 0.0
        self._ref: Optional[dict] = None

    # -- the real side -------------------------------------------------------------------------------------------
    def _key(self) -> str:
        recipe = {"version": CACHE_VERSION, "data": Path(self.dataset.cache_dir).name, "indices": self.indices.tolist(),
                  "extractor": self.extractor.name, "mode": self.mode, "n_morph": self.n_morph,
                  "spacing": self.spacing, "intensity": self.intensity, "slices": SLICES_PER_VOLUME}
        return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def cache_path(self) -> Path:
        return self.folder / "metrics" / f"real-{self._key()}.npz"

    def reference(self) -> dict:
        """Features (and bone values) of the real subset: from the cache file, else computed and cached."""
        if self._ref is not None:
            return self._ref
        from VolGANCore.atomic import atomic_path

        t0 = time.perf_counter()
        path = self.cache_path
        spread = profile = None
        cached = path.exists()
        if cached:
            with np.load(path, allow_pickle=False) as z:
                feats = z["features"]
                morph = {k: [float(v) for v in z[f"morph_{i}"]] for i, k in enumerate(BONE_KEYS)} if self.bone else {}
                unmeasurable = int(z["unmeasurable"])
                spread = float(z["spread"]) if "spread" in z.files else None
                profile = tuple(z[f"profile_{k}"] for k in ("mean", "sd", "count")) if "profile_mean" in z.files \
                    else None
        if spread is None or profile is None:  # not cached, or cached by an older version (recomputed, cheap)
            vols = np.stack([np.asarray(self.dataset[int(i)], np.float32)[0] for i in self.indices])
            spread, profile = voxel_spread(vols), border_profile(vols)
        if not cached:
            feats = self._features(vols)
            morph, unmeasurable = {}, 0
            if self.bone:
                morph, unmeasurable = bone_values(self._physical(vols[: self.n_morph]), self.spacing)
            arrays = {"features": feats, "indices": self.indices, "unmeasurable": np.asarray(unmeasurable),
                      "spread": np.asarray(spread), "profile_mean": profile[0], "profile_sd": profile[1],
                      "profile_count": profile[2]}
            for i, k in enumerate(BONE_KEYS):
                arrays[f"morph_{i}"] = np.asarray(morph.get(k, []), np.float64)
            with atomic_path(path) as tmp:
                with open(tmp, "wb") as fh:
                    np.savez(fh, **arrays)
        from .evaluation.frechet import frechet_distance_from_features

        half = self.n // 2  # real-vs-real baseline between the two halves of the subset (for reading the values)
        fd_halves = (float(frechet_distance_from_features(feats[:half], feats[half:]))
                     if half >= 2 and self.n - half >= 2 else None)
        self._ref = {"features": feats, "morph": morph, "unmeasurable": unmeasurable, "fd_real_halves": fd_halves,
                     "spread": spread, "profile": profile}
        self.reference_s = time.perf_counter() - t0
        return self._ref

    # -- features and generation ---------------------------------------------------------------------------------
    def _physical(self, x: np.ndarray) -> np.ndarray:
        (lo_n, hi_n), (lo_p, hi_p) = self.intensity["network_range"], self.intensity["physical_range"]
        return (lo_p + (np.asarray(x, np.float64) - lo_n) * (hi_p - lo_p) / (hi_n - lo_n)).astype(np.float32)

    def _features(self, volumes: np.ndarray) -> np.ndarray:
        from .evaluation import preprocess

        if self.mode == "volume":
            return self.extractor(np.stack([preprocess.default_medicalnet_input(v) for v in volumes]))
        slices = []
        for v in volumes:
            s = preprocess.default_slices(v)
            idx = np.unique(np.linspace(0, len(s) - 1, min(SLICES_PER_VOLUME, len(s))).round().astype(int))
            slices.append(s[idx])
        return self.extractor(np.concatenate(slices))

    def latents(self, z_dim: int):
        """The fixed latents (CPU, from their own generator): the same volumes at every evaluation and run."""
        import torch

        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + _LATENT_SALT)
        z = torch.randn(self.n, int(z_dim), generator=gen)
        if self.latent == "hypersphere":
            z = z / z.norm(dim=1, keepdim=True)
        return z

    def generate(self, G, forward_kwargs: Mapping[str, Any]) -> np.ndarray:
        """``(n, D, H, W)`` float32 volumes in network units from the fixed latents (eval mode, inference mode)."""
        import torch
        import torch.nn.functional as F

        shape = tuple(int(s) for s in self.dataset.shape)
        z = self.latents(G.z_dim)
        was_training = G.training
        G.eval()
        out = []
        try:
            with torch.inference_mode():
                for s in range(0, self.n, self.batch):
                    x = G(z[s:s + self.batch].to(self.device), **dict(forward_kwargs)).float()
                    if tuple(x.shape[2:]) != shape:  # a progressive generator below its top level
                        x = F.interpolate(x, size=shape, mode="nearest")
                    out.append(x[:, 0].cpu().numpy())
        finally:
            G.train(was_training)
        return np.ascontiguousarray(np.concatenate(out), dtype=np.float32)

    # -- evaluation and state ------------------------------------------------------------------------------------
    def over_budget(self, elapsed_s: float) -> bool:
        """True when this process's evaluations already took more than ``budget`` × the elapsed training time."""
        return (self.budget is not None and self.evaluations > 0
                and self.spent_s > float(self.budget) * max(float(elapsed_s), 1e-9))

    def evaluate(self, G, forward_kwargs: Mapping[str, Any], step: int,
                 ranked: bool = True) -> tuple[dict[str, float], bool, bool]:
        """Measure the quick metrics of ``G`` at ``step``; returns (values, whether they competed for the best,
        whether the tracked one improved).

        ``ranked=False`` measures without competing for the best (a progressive generator below its top level).
        A generator whose samples vary far less than the real volumes (:func:`collapsed`) never competes either:
        a collapsed generator can score a fair Fréchet distance while producing one volume for every latent.
        """
        with _isolated_rng():
            ref = self.reference()
            t0 = time.perf_counter()
            fake = self.generate(G, forward_kwargs)
            values = {"fd_quick": quick_frechet(ref["features"], self._features(fake))}
            if ref["spread"] and ref["spread"] > 0:
                values["spread_ratio"] = voxel_spread(fake) / ref["spread"]
            frames = frame_index(ref["profile"], border_profile(fake))
            if math.isfinite(frames):
                values["frame_index"] = frames
            if self.bone and self.n_morph:
                gen, bad = bone_values(self._physical(fake[: self.n_morph]), self.spacing)
                w = morph_w1(ref["morph"], gen)
                if w is not None:
                    values["morph_w1"] = w
                values["morph_unmeasurable"] = bad / self.n_morph
            dt = time.perf_counter() - t0
        self.spent_s += dt
        self.evaluations += 1
        values["seconds"] = dt
        tracked = values.get(self.track)
        ranked = ranked and not collapsed(values)
        improved = (ranked and tracked is not None and math.isfinite(tracked)
                    and (self.best is None or tracked < self.best))
        if improved:
            self.best, self.best_step = float(tracked), int(step)
        self.last = {"step": int(step), **{k: float(v) for k, v in values.items()}}
        return values, ranked, improved

    def summary(self) -> dict[str, Any]:
        """What run.json shows under ``quick_metrics``."""
        ref = self._ref or {}
        return {"track": self.track, "best": self.best, "best_step": self.best_step, "extractor": self.extractor.name,
                "fallback_features": bool(self.extractor.fallback), "n": self.n, "n_morph": self.n_morph,
                "fd_real_halves": ref.get("fd_real_halves"), "real_unmeasurable": ref.get("unmeasurable"),
                "last": self.last, "seconds_total": self.spent_s, "reference_seconds": self.reference_s,
                "evaluations": self.evaluations, "budget": self.budget}

    def state_dict(self) -> dict[str, Any]:
        """The best so far (saved in every checkpoint's training state; plain types only)."""
        return {"track": self.track, "best": self.best, "best_step": self.best_step,
                "extractor": self.extractor.name, "n": self.n}

    def load_state_dict(self, state: Mapping[str, Any]) -> Optional[str]:
        """Restore the best so far; returns why it was dropped (another metric, extractor or n), else None."""
        same = (state.get("track") == self.track and state.get("extractor") == self.extractor.name
                and int(state.get("n", -1)) == self.n)
        if not same:
            self.best = self.best_step = None
            return (f"quick metrics: the checkpoint's best ({state.get('track')}, {state.get('extractor')}, "
                    f"n {state.get('n')}) is not comparable with this run's ({self.track}, {self.extractor.name}, "
                    f"n {self.n}); the best checkpoint is chosen afresh")
        self.best = None if state.get("best") is None else float(state["best"])
        self.best_step = None if state.get("best_step") is None else int(state["best_step"])
        return None
