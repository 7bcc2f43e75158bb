"""Generation speed of an imported Aydin et al. 2024 CoW 3-D StyleGAN vs the authors' forward pass (CPU).

Groups ``CoW StyleGAN tiny 32x64x64 bs{B}`` (B ∈ {1, 4}) generate ``N`` volumes (8, or 4 with --quick)
from the same latents with the tiny checkpoint in their format (../shared/anchors/cow_stylegan_c24_tiny,
skipped if absent):

- reference peer: a straightforward re-implementation of their code's module layout (``StyleVectorizer``,
  ``Generator`` with ``Conv3DMod`` as one grouped convolution, ``nn.Upsample`` + blur, ``Linear(1, C)``
  noise on a uniform S³×1 noise image), loaded with their state dict (``strict=True``) and run in
  ``torch.no_grad`` as their generation script does;
- ``VolumetricGANLib generate``: :func:`VolumetricGANLib.generate.generate` on the imported ``.vgan``
  (random noise, ψ = 1) — includes the per-sample seeded noise, physical-unit mapping and ``Volume``
  objects with geometry;
- ``VolumetricGANLib model``: the imported generator's forward alone.

Extra figure: ``max_abs_diff_vs_peer`` on the same z and noise (their tensor layout).

    .venv/bin/python benchmarks/run.py aydin [--quick]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from harness import Case  # noqa: E402

ANCHOR = ROOT.parent / "shared" / "anchors" / "cow_stylegan_c24_tiny"


def _authors_peer(sd: dict, image_size: int, network_capacity: int, lr_mlp: float, fmap_max: int = 512):
    """Their generator as their code lays it out: the anchor re-implementation of ``bench_train`` (re-typed from
    their description; not VolumetricGANLib), loaded with their state dict (``strict=True``)."""
    from bench_train import _AnchorGenerator, _StyleVectorizer

    S, G = _StyleVectorizer(512, 8, lr_mlp), _AnchorGenerator(image_size, 32, 512, network_capacity, fmap_max)
    S.load_state_dict({k[3:]: v for k, v in sd.items() if k.startswith("SE.")}, strict=True)
    G.load_state_dict({k[3:]: v for k, v in sd.items() if k.startswith("GE.")}, strict=True)
    return S.eval(), G.eval()


def cases(quick: bool) -> list[Case]:
    import json

    import torch

    from VolumetricGANLib.checkpoint import load_generator
    from VolumetricGANLib.generate import generate, sample_z
    from VolumetricGANLib.import_aydin2024 import import_aydin2024

    if not (ANCHOR / "model_1.pt").is_file():
        print(f"bench_aydin: {ANCHOR} is absent; nothing to measure")
        return []
    tmp = Path(tempfile.mkdtemp(prefix="bench_aydin_"))
    ck = import_aydin2024(ANCHOR / "model_1.pt", tmp / "cow_tiny.vgan", truncation_mean_samples=2000)
    loaded = load_generator(ck)
    G = loaded.generator
    their_cfg = json.loads((ANCHOR / ".config.json").read_text())
    sd = torch.load(ANCHOR / "model_1.pt", map_location="cpu", weights_only=True)["GAN"]
    S, peer = _authors_peer(sd, their_cfg["image_size"], their_cfg["network_capacity"], their_cfg["lr_mlp"])
    size = their_cfg["image_size"]
    n = 4 if quick else 8
    z = sample_z(n, 512, 0)
    noise = torch.rand(n, size, size, size, 1, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = peer(S(z[:2])[:, None].expand(-1, G.num_ws, -1), noise[:2])
        G.synthesis.output_layout = "authors"
        diff = float((G(z[:2], noise=noise[:2]) - want).abs().max())
        G.synthesis.output_layout = "itk"
    out: list[Case] = []
    for bs in (1, 4):
        group = f"CoW StyleGAN tiny 32x{size}x{size} bs{bs}"

        def theirs(bs=bs):
            with torch.no_grad():
                for s in range(0, n, bs):
                    w = S(z[s:s + bs])
                    nz = torch.rand(w.shape[0], size, size, size, 1)     # their image_noise: S³ × 1 per sample
                    peer(w[:, None].expand(-1, peer.num_layers, -1), nz).clamp_(0.0, 1.0).numpy()
            return None

        def ours(bs=bs):
            generate(loaded, latents=z.numpy(), truncation=1.0, noise="random", batch=bs, device="cpu", amp="off")
            return {"max_abs_diff_vs_peer": diff}

        def model_only(bs=bs):
            with torch.no_grad():
                for s in range(0, n, bs):
                    G(z[s:s + bs], noise_mode="random").numpy()
            return None

        reps = 1 if quick else 5
        out.append(Case(group, "authors' forward (re-implemented, grouped conv)", theirs, reference=True,
                        repeats=reps, unit_count=n, unit="volumes"))
        out.append(Case(group, "VolumetricGANLib generate", ours, repeats=reps, unit_count=n, unit="volumes"))
        out.append(Case(group, "VolumetricGANLib model forward", model_only, repeats=reps, unit_count=n, unit="volumes"))
    return out
