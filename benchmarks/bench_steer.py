"""Steering the published MICCAI 2020 spongiosa generator: ours against the published recipe, per sample.

Targets are "in distribution": the exact morphometry (MorphometryLib) of other samples of the same model
(seed 100), one target sample per steered sample, all six parameters at once (BV/TV, BMD, TMD, Tb.Th, Tb.Sp,
DA by the structure tensor). Success = every **exact** parameter within 5 % of its target.

- ours: ``VolumetricGANLib.steer.steer`` on all six parameters, batched over the samples.
- reference: the published recipe (Iarussi et al. 2020, the authors' ``optimize_sample.py``), re-implemented
  here: one sample at a time, ``torch.optim.LBFGS`` (strong Wolfe line search, default inner iterations)
  stepped 30 times, z clamped to [-1, 1] before every evaluation, loss 1e-6·MSE(content) + (1 − 1e-6)·MSE of
  three parameters (BMD, soft BV/TV at 225 with width 10 as the authors' ``sp.VCNoSD``, TMD). The content target
  is the target sample's own volume (which can only help it). Its success is reported on its three
  parameters and on all six.

Both run on the CPU with one torch thread. Needs ../shared/anchors/spongiosa_g_net.pth (skipped if absent).

    .venv/bin/python benchmarks/run.py steer [--quick]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from harness import Case  # noqa: E402

ANCHOR = ROOT.parent / "shared" / "anchors" / "spongiosa_g_net.pth"
SIX = ["BV/TV", "BMD", "TMD", "Tb.Th", "Tb.Sp", "DA"]
THREE = ["BMD", "BV/TV", "TMD"]


def _setup(n: int):
    import torch

    from VolumetricGANLib.checkpoint import load_generator, to_physical
    from VolumetricGANLib.generate import sample_z
    from VolumetricGANLib.importers import import_model
    from VolumetricGANLib.steer import _exact

    torch.set_num_threads(1)
    tmp = tempfile.mkdtemp(prefix="bench_steer_")
    path = import_model("miccai2020-pgan", ANCHOR, Path(tmp) / "spongiosa.vgan")
    loaded = load_generator(path, device="cpu")
    model, config = loaded.generator, loaded.config
    with torch.no_grad():
        target_volumes = to_physical(model(sample_z(n, model.z_dim, 100, "hypersphere")), config["intensity"])
    exact = _exact(target_volumes[:, 0].numpy(), tuple(config["spacing"]), 225.0, SIX)
    return model, config, target_volumes, {k: exact[:, j] for j, k in enumerate(SIX)}


def _success(exact: np.ndarray, goal: np.ndarray) -> np.ndarray:
    return np.all(np.abs(exact - goal) <= 0.05 * np.abs(goal), axis=1)


def _published_recipe(model, config, target_volumes, targets, n):
    """The authors' optimiser, one sample at a time (see the module docstring)."""
    import torch

    from MorphometryLib.differentiable import soft_morphometry
    from VolumetricGANLib.checkpoint import to_physical
    from VolumetricGANLib.generate import sample_z
    from VolumetricGANLib.steer import _exact

    spacing = tuple(config["spacing"])
    finals = []
    for i in range(n):
        z = sample_z(1, model.z_dim, i, "hypersphere").clone().requires_grad_(True)
        goal = torch.tensor([[targets["BMD"][i], targets["BV/TV"][i], targets["TMD"][i]]], dtype=torch.float32)
        content = target_volumes[i:i + 1]
        opt = torch.optim.LBFGS([z], line_search_fn="strong_wolfe")

        def closure():
            with torch.no_grad():
                z.clamp_(-1, 1)
            opt.zero_grad()
            x = to_physical(model(z), config["intensity"])
            sm = soft_morphometry(x, 225.0, 10.0, spacing=spacing, parameters=["BMD", "BV/TV", "TMD"])
            params = torch.stack([sm["BMD"], sm["BV/TV"], sm["TMD"]], 1)
            loss = 1e-6 * torch.nn.functional.mse_loss(x, content) + (1 - 1e-6) * torch.nn.functional.mse_loss(params, goal)
            loss.backward()
            return loss

        for _ in range(30):
            opt.step(closure)
            with torch.no_grad():
                z.clamp_(-1, 1)
        with torch.no_grad():
            finals.append(to_physical(model(z), config["intensity"])[0, 0].numpy())
    exact = _exact(np.stack(finals), spacing, 225.0, SIX)
    goal6 = np.stack([targets[k][:n] for k in SIX], 1)
    idx3 = [SIX.index(k) for k in THREE]
    return {"success (6 exact params)": float(_success(exact, goal6).mean()),
            "success (its 3 params)": float(_success(exact[:, idx3], goal6[:, idx3]).mean()), "samples": n}


def cases(quick: bool) -> list[Case]:
    if not ANCHOR.exists():
        print(f"bench_steer: skipped ({ANCHOR} is absent)", file=sys.stderr)
        return []
    n_ours = 8 if quick else 32
    n_ref = 2 if quick else 6
    model, config, target_volumes, targets = _setup(n_ours)

    def ours():
        from VolumetricGANLib.steer import steer

        res = steer((model, config), targets=targets, n=n_ours, seed=0, device="cpu")
        return {"success (6 exact params)": res.info["success_rate"], "samples": n_ours,
                "steps": res.info["steps"], "restarts": res.info["restarts"],
                "exact refinements": res.info["exact_refinements"]}

    group = "steer spongiosa 32^3 to in-distribution targets"
    return [
        Case(group, "VolumetricGANLib.steer (6 params, batched)", ours, repeats=1, warmup=0,
             unit_count=n_ours, unit="samples"),
        Case(group, "published recipe (LBFGS, 3 params, per sample)",
             lambda: _published_recipe(model, config, target_volumes, targets, n_ref), repeats=1, warmup=0,
             unit_count=n_ref, unit="samples", reference=True),
    ]
