"""Generation throughput (volumes/s): StyleGAN2-3D at 32×128×128 and the imported spongiosa PGAN at 32³.

Groups
------
- ``StyleGAN2-3D 32x128x128 bs{B}``: ``VolumetricGANLib.generate`` on a randomly initialised, moderately
  sized config (z/w 256, 8 mapping layers, constant 2×8×8, channels 128-128-64-32-16), with the grouped
  ("fused") modulated conv vs the activation-scaling path (reference).
- ``PGAN 32^3 bs{B}``: ``VolumetricGANLib.generate`` on the imported MICCAI 2020 generator vs a
  straightforward re-implementation of the authors' forward pass (their module layout: WScale → Conv3d →
  LeakyReLU → PixelNorm, nearest up-sampling, tanh, de-normalisation) as the reference peer, both in
  ``torch.no_grad`` on the same latents. Needs ../shared/anchors/spongiosa_g_net.pth (skipped if absent).

Each call generates ``N`` volumes (8, or 2 with --quick) in batches of ``B`` ∈ {1, 8}, on the CPU.

    .venv/bin/python benchmarks/run.py generate
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from harness import Case  # noqa: E402

ANCHOR = ROOT.parent / "shared" / "anchors" / "spongiosa_g_net.pth"
STYLEGAN_ARCH = dict(z_dim=256, w_dim=256, output_shape=(32, 128, 128), base_shape=(2, 8, 8), channel_base=256,
                     channel_max=128, mapping_layers=8)


def _authors_style_generator(sd):
    """The published generator as its authors wrote it (module layout of their code, re-typed here)."""
    import torch
    from torch import nn

    class WScale(nn.Module):
        def __init__(self, conv, gain):
            super().__init__()
            self.scale = (gain / conv.weight[0].numel()) ** 0.5

        def forward(self, x):
            return x * self.scale

    class PN(nn.Module):
        def forward(self, x):
            return x * torch.rsqrt(torch.mean(x ** 2, dim=1, keepdim=True) + 1e-8)

    def conv(nin, nout, k=3, p=1, gain=2, act=True, pn=True):
        c = nn.Conv3d(nin, nout, k, padding=p)
        layers = [("ws", WScale(c, gain)), ("conv", c)]
        if act:
            layers.append(("activ", nn.LeakyReLU(0.2)))
        if pn:
            layers.append(("pn", PN()))
        from collections import OrderedDict
        return nn.Sequential(OrderedDict(layers))

    class Gen(nn.Module):
        def __init__(self):
            super().__init__()
            self.toRGBs = nn.ModuleList(conv(32, 1, 1, 0, 1, False, False) for _ in range(4))
            from collections import OrderedDict
            self.blocks = nn.ModuleList([nn.Sequential(OrderedDict([("conv0", conv(32, 32, 4, 3)), ("conv1", conv(32, 32))]))])
            for _ in range(3):
                self.blocks.append(nn.Sequential(OrderedDict([("conv0", conv(32, 32)), ("conv1", conv(32, 32))])))
            self.pn = PN()

        def forward(self, z):
            y = self.blocks[0](self.pn(z))
            for i in range(1, 4):
                y = self.blocks[i](nn.functional.interpolate(y, scale_factor=2))
            return torch.tanh(self.toRGBs[3](y))

    g = Gen()
    g.load_state_dict(sd)
    return g.eval()


def cases(quick: bool) -> list[Case]:
    import torch

    from VolumetricGANLib.checkpoint import make_config
    from VolumetricGANLib.generate import generate, sample_z
    from VolumetricGANLib.importers import import_miccai2020_pgan
    from VolumetricGANLib.networks import StyleGAN2Generator

    n = 2 if quick else 8
    out: list[Case] = []
    tmp = Path(tempfile.mkdtemp(prefix="bench_generate_"))

    torch.manual_seed(0)
    G = StyleGAN2Generator(**STYLEGAN_ARCH).eval().requires_grad_(False)
    cfg = make_config("stylegan2-3d", STYLEGAN_ARCH, spacing=(0.3, 0.3, 0.6), name="bench")
    n_params = sum(p.numel() for p in G.parameters())
    for bs in (1, 8):
        if quick and bs == 8:
            continue
        for fused, name, ref in ((False, "activation scaling", True), (True, "grouped (fused)", False)):
            def run(fused=fused, bs=bs):
                for m in G.modules():
                    if hasattr(m, "fused_modconv"):
                        m.fused_modconv = fused
                generate((G, cfg), n=n, seed=0, batch=bs, device="cpu", noise="const")
                return {"params_G": n_params}
            out.append(Case(f"StyleGAN2-3D 32x128x128 bs{bs}", f"VolumetricGANLib, {name}", run, repeats=2 if not quick else 1,
                            warmup=1 if not quick else 0, reference=ref, unit_count=n, unit="volumes"))

    if ANCHOR.is_file():
        ck = import_miccai2020_pgan(ANCHOR, tmp / "spongiosa.vgan")
        from VolumetricGANLib.checkpoint import load_generator

        spongiosa = load_generator(ck)
        sd = torch.load(ANCHOR, map_location="cpu", weights_only=True)
        peer = _authors_style_generator(sd)
        n_p = 16 if quick else 64
        z = sample_z(n_p, 32, 0, "hypersphere")
        for bs in (1, 8):
            def ours(bs=bs):
                r = generate(spongiosa, latents=z.numpy(), batch=bs, device="cpu")
                return {"max_abs_diff_vs_peer": float(abs(r.volumes[0].array - ref_phys[0]).max())}

            def theirs(bs=bs):
                with torch.no_grad():
                    _ = [((peer(z[s:s + bs].reshape(-1, 32, 1, 1, 1)) + 1.0) * 1450.0 / 2.0 - 350.0).numpy()
                            for s in range(0, n_p, bs)]
                return None

            with torch.no_grad():
                ref_phys = (((peer(z[:1].reshape(1, 32, 1, 1, 1)) + 1.0) * 1450.0 / 2.0) - 350.0)[:, 0].numpy()
            out.append(Case(f"PGAN 32^3 bs{bs}", "authors' forward (re-implemented)", theirs, reference=True,
                            repeats=5, unit_count=n_p, unit="volumes"))
            out.append(Case(f"PGAN 32^3 bs{bs}", "VolumetricGANLib generate", ours, repeats=5, unit_count=n_p, unit="volumes"))
    return out
