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

import math
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from harness import Case  # noqa: E402

ANCHOR = ROOT.parent / "shared" / "anchors" / "cow_stylegan_c24_tiny"


def _authors_peer(sd: dict, image_size: int, network_capacity: int, lr_mlp: float, fmap_max: int = 512):
    """Their generator as their code lays it out (re-typed from its description; not VolumetricGANLib)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    class EqualLinear(nn.Module):
        def __init__(self, d, lr_mul):
            super().__init__()
            self.weight = nn.Parameter(torch.randn(d, d))
            self.bias = nn.Parameter(torch.zeros(d))
            self.lr_mul = lr_mul

        def forward(self, x):
            return F.linear(x, self.weight * self.lr_mul, bias=self.bias * self.lr_mul)

    class StyleVectorizer(nn.Module):
        def __init__(self, d, depth, lr_mul):
            super().__init__()
            layers = []
            for _ in range(depth):
                layers += [EqualLinear(d, lr_mul), nn.LeakyReLU(0.2, inplace=True)]
            self.net = nn.Sequential(*layers)

        def forward(self, x):
            return self.net(F.normalize(x, dim=1))

    class Blur(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("f", torch.tensor([1.0, 2.0, 1.0]))

        def forward(self, x):
            f = self.f
            k = f[:, None, None] * f[None, :, None] * f[None, None, :]
            k = (k / k.sum()).expand(x.shape[1], 1, 3, 3, 3)
            return F.conv3d(F.pad(x, (1, 1, 1, 1, 1, 1), mode="replicate"), k, groups=x.shape[1])

    class Conv3DMod(nn.Module):
        def __init__(self, cin, cout, k, demod=True):
            super().__init__()
            self.filters, self.demod = cout, demod
            self.weight = nn.Parameter(torch.randn(cout, cin, k, k, k))

        def forward(self, x, y):
            b, c, d, h, w = x.shape
            weights = self.weight[None] * (y[:, None, :, None, None, None] + 1)
            if self.demod:
                weights = weights * torch.rsqrt((weights ** 2).sum(dim=(2, 3, 4, 5), keepdim=True) + 1e-8)
            x = x.reshape(1, -1, d, h, w)
            weights = weights.reshape(b * self.filters, *weights.shape[2:])
            x = F.conv3d(x, weights, padding=self.weight.shape[-1] // 2, groups=b)
            return x.reshape(-1, self.filters, d, h, w)

    class GrayscaleBlock(nn.Module):
        def __init__(self, latent, cin, upsample, xy):
            super().__init__()
            self.to_style = nn.Linear(latent, cin)
            self.conv = Conv3DMod(cin, 1, 1, demod=False)
            self.upsample = nn.Sequential(nn.Upsample(scale_factor=(1, 2, 2) if xy else 2, mode="trilinear",
                                                      align_corners=False), Blur()) if upsample else None

        def forward(self, x, prev, istyle):
            x = self.conv(x, self.to_style(istyle))
            if prev is not None:
                x = x + prev
            return self.upsample(x) if self.upsample is not None else x

    class GeneratorBlock(nn.Module):
        def __init__(self, latent, cin, cout, upsample, upsample_rgb, xy, xy_rgb):
            super().__init__()
            self.upsample = nn.Upsample(scale_factor=2, mode="trilinear", align_corners=False) \
                if upsample and not xy else None
            self.xy_upsample = nn.Upsample(scale_factor=(1, 2, 2), mode="trilinear", align_corners=False) if xy else None
            self.to_style1, self.to_noise1 = nn.Linear(latent, cin), nn.Linear(1, cout)
            self.conv1 = Conv3DMod(cin, cout, 3)
            self.to_style2, self.to_noise2 = nn.Linear(latent, cout), nn.Linear(1, cout)
            self.conv2 = Conv3DMod(cout, cout, 3)
            self.act = nn.LeakyReLU(0.2, inplace=True)
            self.to_grayscale = GrayscaleBlock(latent, cout, upsample_rgb, xy_rgb)

        def forward(self, x, prev_rgb, istyle, inoise):
            if self.upsample is not None:
                x = self.upsample(x)
            elif self.xy_upsample is not None:
                x = self.xy_upsample(x)
            inoise = inoise[:, :x.shape[2], :x.shape[3], :x.shape[4], :]
            n1 = self.to_noise1(inoise).permute((0, 4, 1, 2, 3))
            n2 = self.to_noise2(inoise).permute((0, 4, 1, 2, 3))
            x = self.act(self.conv1(x, self.to_style1(istyle)) + n1)
            x = self.act(self.conv2(x, self.to_style2(istyle)) + n2)
            return x, self.to_grayscale(x, prev_rgb, istyle)

    class Generator(nn.Module):
        def __init__(self, latent=512):
            super().__init__()
            self.num_layers = int(math.log2(image_size) - 1)
            n_z = int(math.log2(32) - 2)
            filters = [min(fmap_max, network_capacity * 2 ** (i + 1)) for i in range(self.num_layers)][::-1]
            filters = [filters[0], *filters]
            self.initial_block = nn.Parameter(torch.randn(1, filters[0], 4, 4, 4))
            self.initial_conv = nn.Conv3d(filters[0], filters[0], 3, padding=1)
            self.blocks = nn.ModuleList(
                GeneratorBlock(latent, ci, co, ind != 0, ind != self.num_layers - 1, ind > n_z, ind >= n_z)
                for ind, (ci, co) in enumerate(zip(filters[:-1], filters[1:])))

        def forward(self, styles, noise):
            x = self.initial_conv(self.initial_block.expand(styles.shape[0], -1, -1, -1, -1))
            rgb = None
            for style, block in zip(styles.transpose(0, 1), self.blocks):
                x, rgb = block(x, rgb, style, noise)
            return rgb

    S, G = StyleVectorizer(512, 8, lr_mlp), Generator()
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
    G, cfg = load_generator(ck)
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
            generate((G, cfg), latents=z.numpy(), truncation=1.0, noise="random", batch=bs, device="cpu", amp="off")
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
