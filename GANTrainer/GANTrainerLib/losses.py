"""GAN objectives; each loss object owns its regularisation schedule (after StyleGAN2-ADA; docs/training.md, "The loop").

:class:`StyleGAN2Loss` — non-saturating logistic loss (or hinge, the CoW anchor's choice), lazy R1 on reals
every ``r1_interval`` D steps **multiplied by that interval** (Karras et al. 2020, "Analyzing and Improving
the Image Quality of StyleGAN", §B; the CoW anchor forgot this scaling), path-length regularisation every
``pl_interval`` G steps (also scaled), style mixing.

:class:`WGANGPLoss` — Wasserstein loss with gradient penalty λ·(‖∇D(x̂)‖ − 1)² on random interpolates
(Gulrajani et al. 2017) and the drift term ε·D(x)² of progressive GANs (Karras et al. 2018); λ = 10,
ε = 1e-3 as in the MICCAI 2020 spongiosa recipe.

Both take an optional augmentation applied identically (same family, independent draws) to reals and
fakes before D, and return ``(loss, stats)`` where ``stats`` holds detached tensors — no host sync here;
the training loop decides when to read them.

:class:`StyleGAN2Loss` also trains joint image + label generators (``joint``, a
:class:`GANTrainerLib.joint.JointSpec`): reals arrive as (intensity, label ids) and reach D as intensity +
one-hot, fakes as intensity + softmax; a conditional model's fakes draw their CoW variant from ``c_pool`` and
reals bring their own. Path-length regularisation then acts on the intensity channel only. ``variant_weight``
adds to the generator's loss a variant-consistency term: the binary cross-entropy (with ``variant_margin``, a
hinge; ``variant_segments``: on the named segments only) between the variant its own class probabilities show
(:func:`VolumetricGANLib.labelmaps.variant_scores`) and the one it was asked for, so the conditioning reaches the
generator directly, not only through the projection discriminator. ``diversity_weight`` adds a term against
mode collapse: the mean correlation between every two fakes of a batch (:func:`pairwise_similarity`; joint
models: of the foregrounds their labels draw, image-only ones: of their intensities) in excess of the same figure
among the reals (a running mean over the D steps), so the generator is asked to differ between latents as much as
the training volumes differ from each other, no more; the fakes it judges share one noise draw, so that they
differ by their latents, not by their noise inputs (a mode-seeking regulariser after Mao et al., CVPR 2019, and
Yang et al., ICLR 2019, bounded by the data's own diversity).
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F

from VolGANCore.names import COW_VARIANT_SEGMENTS, FAKE_LABEL_INPUTS

__all__ = ["StyleGAN2Loss", "WGANGPLoss", "pairwise_similarity"]


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def segment_columns(names) -> Optional[list[int]]:
    """Columns of the CoW variant vector (:data:`VolGANCore.names.COW_VARIANT_SEGMENTS`) that ``names`` pick, in
    the vector's order; ``None`` for all. A readable error for an unknown, repeated or empty choice."""
    if names is None:
        return None
    names = [str(n) for n in names]
    unknown = sorted(set(names) - set(COW_VARIANT_SEGMENTS))
    if unknown or not names or len(set(names)) != len(names):
        raise ValueError(f"variant_segments {names}: name each segment once, from {', '.join(COW_VARIANT_SEGMENTS)}")
    return [i for i, n in enumerate(COW_VARIANT_SEGMENTS) if n in names]


def pairwise_similarity(x: torch.Tensor) -> torch.Tensor:
    """Mean Pearson correlation between every two of the ``N`` volumes of ``x`` (N, C, ...), per channel, averaged
    over the channels: float32, differentiable, no host synchronisation. Two constant volumes count as alike (1),
    a constant one against another as unlike (0): fakes with no labels at all must not pass for varied. Near 1
    when a generator draws one volume whatever its latent; the phantoms' intensities 0.26, their label maps'
    foregrounds 0.14."""
    n = x.shape[0]
    if n < 2:
        raise ValueError(f"pairwise_similarity needs at least two volumes (got {n})")
    f = x.float().flatten(2).transpose(0, 1)                 # (C, N, voxels)
    f = f - f.mean(-1, keepdim=True)
    norm = f.norm(dim=-1, keepdim=True)                      # ≥ 1 for a mask of at least one voxel
    f = f / norm.clamp_min(1e-3)
    flat = (norm < 1e-3).float()                              # constant volumes
    corr = f @ f.transpose(1, 2) + flat @ flat.transpose(1, 2)  # (C, N, N)
    others = ~torch.eye(n, dtype=torch.bool, device=x.device)
    return corr[:, others].mean()


class StyleGAN2Loss:
    def __init__(
        self,
        G: torch.nn.Module,                    # generator with .mapping / .synthesis (has_w)
        D: torch.nn.Module,                    # discriminator: (N, C, D, H, W) -> (N, 1)
        augment: Optional[Callable] = None,    # applied to every D input (reals and fakes)
        loss: str = "logistic",                # 'logistic' (non-saturating) or 'hinge'
        r1_gamma: float = 1.0,                 # R1 weight γ; penalty = γ/2 · ‖∇D(x)‖²
        r1_interval: int = 16,                 # lazy R1: every k-th D step, scaled by k
        pl_weight: float = 2.0,                # path-length regularisation weight (0 disables)
        pl_interval: int = 4,                  # lazy PL: every k-th G step, scaled by k
        pl_decay: float = 0.01,                # decay of the running path-length mean
        pl_batch_shrink: int = 2,              # PL on a smaller batch
        pl_start_step: int = 0,                # no PL before this G step (the anchor waited 5k steps)
        style_mixing_prob: float = 0.9,        # probability of mixing two latents at a random layer
        noise_mode: str = "random",            # synthesis noise during training
        joint=None,                            # JointSpec of a joint image + label generator (None: image only)
        c_pool=None,                           # VariantPool drawing fakes' conditioning (conditional joint models)
        fake_labels: str = "softmax",          # joint models: D sees fakes' softmax or straight-through one-hot
        variant_weight: float = 0.0,           # conditional joint models: weight of the variant-consistency term
        variant_margin: float = 0.0,           # 0: cross-entropy; m > 0: hinge, no push beyond 0.5 ± m
        variant_segments=None,                 # the segments the term scores (names; None: all 8)
        diversity_weight: float = 0.0,         # weight of the term against fakes more alike than reals (0: off)
        similarity_decay: float = 0.01,        # decay of the running mean of the reals' pairwise similarity
        diversity_start_kimg: float = 0.0,     # no diversity term before this many thousand images (``nimg``)
        similarity_pool: int = 1,              # the diversity term compares blocks of this many voxels per axis
    ) -> None:
        if loss not in ("logistic", "hinge"):
            raise ValueError(f"loss '{loss}': choose 'logistic' or 'hinge'")
        if joint is not None and joint.c_dim and c_pool is None:
            raise ValueError("a conditional generator needs c_pool (the training set's variant vectors)")
        if fake_labels not in FAKE_LABEL_INPUTS:
            raise ValueError(f"fake_labels {fake_labels!r}: choose one of {', '.join(FAKE_LABEL_INPUTS)}")
        if variant_weight and not (joint is not None and joint.c_dim):
            raise ValueError("variant_weight needs a generator conditioned on the CoW variant (c_dim 8)")
        if not float(variant_weight) >= 0:
            raise ValueError(f"variant_weight must be ≥ 0 (got {variant_weight})")
        if not 0 <= float(variant_margin) < 0.5:
            raise ValueError(f"variant_margin must be in [0, 0.5) (got {variant_margin})")
        self.variant_columns = segment_columns(variant_segments)
        if not float(diversity_weight) >= 0:
            raise ValueError(f"diversity_weight must be ≥ 0 (got {diversity_weight})")
        self.diversity_weight, self.similarity_decay = float(diversity_weight), float(similarity_decay)
        if not float(diversity_start_kimg) >= 0:
            raise ValueError(f"diversity_start_kimg must be ≥ 0 (got {diversity_start_kimg})")
        self.diversity_start_nimg = float(diversity_start_kimg) * 1000
        if not int(similarity_pool) >= 1:
            raise ValueError(f"similarity_pool must be ≥ 1 (got {similarity_pool})")
        self.similarity_pool = int(similarity_pool)
        self.real_similarity: Optional[torch.Tensor] = None  # running mean over D steps (set by the first)
        self.nimg = 0                                        # images shown so far: the training loop sets it
        self.joint, self.c_pool, self.fake_labels = joint, c_pool, fake_labels
        self.variant_weight, self.variant_margin = float(variant_weight), float(variant_margin)
        self.G, self.D = G, D
        self.augment = augment or _identity
        self.loss = loss
        self.r1_gamma, self.r1_interval = float(r1_gamma), max(1, int(r1_interval))
        self.pl_weight, self.pl_interval = float(pl_weight), max(1, int(pl_interval))
        self.pl_decay, self.pl_batch_shrink, self.pl_start_step = float(pl_decay), int(pl_batch_shrink), int(pl_start_step)
        self.style_mixing_prob = float(style_mixing_prob)
        self.noise_mode = noise_mode
        self.pl_mean = torch.zeros([])

    # -- generator forward with style mixing -------------------------------------------------------------
    def _mapping(self, z: torch.Tensor, c: Optional[torch.Tensor]) -> torch.Tensor:
        return self.G.mapping(z, 1.0, None) if c is None else self.G.mapping(z, 1.0, None, c=c)

    def _ws(self, z: torch.Tensor, c: Optional[torch.Tensor] = None) -> torch.Tensor:
        ws = self._mapping(z, c)
        if self.style_mixing_prob > 0 and ws.shape[1] > 1:
            n = ws.shape[0]
            cutoff = torch.randint(1, ws.shape[1], (n, 1), device=ws.device)
            use = torch.rand(n, 1, device=ws.device) < self.style_mixing_prob
            cutoff = torch.where(use, cutoff, torch.full_like(cutoff, ws.shape[1]))
            ws2 = self._mapping(torch.randn_like(z), c)
            layer = torch.arange(ws.shape[1], device=ws.device).view(1, -1)
            ws = torch.where((layer < cutoff).unsqueeze(-1), ws, ws2)
        return ws

    def sample_c(self, n: int) -> Optional[torch.Tensor]:
        """Conditioning for ``n`` fakes: drawn from the training set's variants (None when unconditional)."""
        return self.c_pool.sample(n) if self.joint is not None and self.joint.c_dim else None

    def generate(self, z: torch.Tensor, c: Optional[torch.Tensor] = None,
                 shared_noise: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Fakes and their ws; ``shared_noise`` (with random noise): one noise draw for the whole batch, so the
        fakes differ by their latents alone."""
        ws = self._ws(z, c)
        if shared_noise and self.noise_mode == "random" and hasattr(self.G.synthesis, "noise_shapes"):
            noise = [torch.randn(1, 1, *shape, device=ws.device) for shape in self.G.synthesis.noise_shapes()]
            return self.G.synthesis(ws, noise=noise), ws
        return self.G.synthesis(ws, noise_mode=self.noise_mode), ws

    def _d(self, x: torch.Tensor, c: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.D(self.augment(x)) if c is None else self.D(self.augment(x), c)

    def _d_fake(self, fake: torch.Tensor, c: Optional[torch.Tensor]) -> torch.Tensor:
        return self._d(fake if self.joint is None else self.joint.fakes(fake, self.fake_labels), c)

    # -- losses ----------------------------------------------------------------------------------------------
    def generator_loss(self, z: torch.Tensor, step: int) -> tuple[torch.Tensor, dict]:
        c = self.sample_c(z.shape[0])
        diverse = (self.diversity_weight > 0 and z.shape[0] > 1 and self.real_similarity is not None
                   and self.nimg >= self.diversity_start_nimg)
        fake, _ = self.generate(z, c, shared_noise=diverse)
        logits = self._d_fake(fake, c).float()
        main = F.softplus(-logits).mean() if self.loss == "logistic" else (-logits).mean()
        stats = {"loss/G": main.detach(), "scores/fake": logits.detach().mean()}
        total = main
        if self.variant_weight > 0:
            vc, match = self.variant_consistency(fake, c)
            total = total + vc * self.variant_weight
            stats["reg/variant"], stats["reg/variant_match"] = vc.detach(), match
        if diverse:
            excess, similar = self.diversity_excess(fake)
            total = total + excess * self.diversity_weight
            stats["reg/similarity"], stats["reg/similarity_real"] = similar, self.real_similarity
        if self.pl_weight > 0 and step >= self.pl_start_step and step % self.pl_interval == 0:
            pl = self.path_length_penalty(z[: max(1, z.shape[0] // self.pl_batch_shrink)])
            total = total + pl * (self.pl_weight * self.pl_interval)
            stats["reg/pl_penalty"] = pl.detach()
            stats["reg/pl_mean"] = self.pl_mean.detach()
        return total, stats

    def variant_consistency(self, fake: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """How far the soft variant vectors of the fakes' class probabilities are from their conditioning ``c``
        (±1), float32, mean over fakes and the 8 segments (``variant_segments``: those named): the binary
        cross-entropy, or with ``variant_margin`` m a hinge that is zero once a requested segment scores
        ≥ 0.5 + m (an unwanted one ≤ 0.5 − m), so a present segment is not pushed to ever higher confidence (and
        size); and the share of fakes whose soft vector on those segments, thresholded at 0.5, is the requested
        one (detached)."""
        from VolumetricGANLib.labelmaps import variant_scores

        probs = torch.softmax(fake[:, 1:].float(), dim=1)
        scores = variant_scores(probs, self.joint.label_scheme).clamp(1e-6, 1 - 1e-6)
        want = (c > 0).float()
        if self.variant_columns is not None:
            scores, want = scores[:, self.variant_columns], want[:, self.variant_columns]
        match = ((scores > 0.5) == (want > 0.5)).all(dim=1).float().mean()
        if self.variant_margin > 0:
            sign = want * 2 - 1                          # +1: wanted present, −1: wanted absent
            return F.relu(self.variant_margin - sign * (scores - 0.5)).mean(), match
        bce = -(want * scores.log() + (1 - want) * (1 - scores).log()).mean()
        return bce, match

    def diversity_excess(self, fake: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """How much more the generator outputs ``fake`` (N ≥ 2) resemble each other than the reals do (≥ 0, the
        diversity term before its weight), and their pairwise similarity (detached)."""
        similar = pairwise_similarity(self._diversity_features(fake, generated=True))
        return F.relu(similar - self.real_similarity), similar.detach()

    def _diversity_features(self, x: torch.Tensor, generated: bool) -> torch.Tensor:
        """What :func:`pairwise_similarity` compares: for joint models the foreground the labels draw (1 −
        background: where the vessels lie, not the background's shading), of a generator output (``generated``:
        its labels decoded as D sees them, hard forward with the softmax's gradient, so faint probabilities that
        no label shows cannot make fakes differ) or of the reals' D input (one-hot); for image-only models the
        intensity. With ``similarity_pool`` k > 1, averaged over blocks of k voxels per axis (at most the axis)."""
        if self.joint is None:
            x = x[:, :1]
        else:
            x = 1 - (self.joint.fakes(x, "straight-through") if generated else x)[:, 1:2]
        kernel = [min(self.similarity_pool, n) for n in x.shape[2:]]
        return F.avg_pool3d(x.float(), kernel) if max(kernel) > 1 else x

    def path_length_penalty(self, z: torch.Tensor) -> torch.Tensor:
        fake, ws = self.generate(z, self.sample_c(z.shape[0]))
        if self.joint is not None:
            fake = fake[:, :1]  # the intensity: class logits have no natural scale to keep the path length of
        n_vox = fake[0].numel()
        noise = torch.randn_like(fake) / (n_vox ** 0.5)
        (grad,) = torch.autograd.grad((fake * noise).sum(), ws, create_graph=True)
        lengths = grad.float().square().sum(2).mean(1).sqrt()
        self.pl_mean = self.pl_mean.to(lengths.device)
        mean = self.pl_mean.lerp(lengths.mean().detach(), self.pl_decay)
        self.pl_mean = mean.detach()
        return (lengths - mean).square().mean()

    def discriminator_loss(self, reals: torch.Tensor, z: torch.Tensor, step: int) -> tuple[torch.Tensor, dict]:
        c_fake = self.sample_c(z.shape[0])
        with torch.no_grad():
            fake, _ = self.generate(z, c_fake)
        fake_logits = self._d_fake(fake, c_fake).float()
        do_r1 = self.r1_gamma > 0 and step % self.r1_interval == 0
        c_real = None
        if self.joint is not None:
            reals, c_real = self.joint.reals(reals)
        if self.diversity_weight > 0 and reals.shape[0] > 1:
            with torch.no_grad():
                similar = pairwise_similarity(self._diversity_features(reals, generated=False))
            self.real_similarity = (similar if self.real_similarity is None
                                    else self.real_similarity.to(similar.device).lerp(similar, self.similarity_decay))
        reals = reals.detach().requires_grad_(do_r1)
        real_logits = self._d(reals, c_real).float()
        if self.loss == "logistic":
            main = F.softplus(fake_logits).mean() + F.softplus(-real_logits).mean()
        else:
            main = F.relu(1 + fake_logits).mean() + F.relu(1 - real_logits).mean()
        stats = {"loss/D": main.detach(), "scores/real": real_logits.detach().mean(),
                 "scores/fake_D": fake_logits.detach().mean(), "real_logits": real_logits.detach()}
        total = main
        if do_r1:
            (grad,) = torch.autograd.grad(real_logits.sum(), reals, create_graph=True)
            r1 = grad.float().square().flatten(1).sum(1).mean()
            total = total + r1 * (self.r1_gamma / 2 * self.r1_interval)
            stats["reg/r1"] = r1.detach()
        return total, stats


class WGANGPLoss:
    def __init__(
        self,
        G: torch.nn.Module,                    # progressive generator: G(z, progress)
        D: torch.nn.Module,                    # progressive critic: D(x, progress)
        augment: Optional[Callable] = None,    # applied to every D input
        gp_lambda: float = 10.0,               # gradient-penalty weight λ
        drift: float = 1e-3,                   # drift weight ε on D(real)²
    ) -> None:
        self.G, self.D = G, D
        self.augment = augment or _identity
        self.gp_lambda, self.drift = float(gp_lambda), float(drift)

    def generate(self, z: torch.Tensor, progress: float | None = None) -> torch.Tensor:
        return self.G(z, progress=progress)

    def generator_loss(self, z: torch.Tensor, step: int, progress: float | None = None) -> tuple[torch.Tensor, dict]:
        scores = self.D(self.augment(self.generate(z, progress)), progress=progress).float()
        loss = -scores.mean()
        return loss, {"loss/G": loss.detach(), "scores/fake": scores.detach().mean()}

    def discriminator_loss(self, reals: torch.Tensor, z: torch.Tensor, step: int,
                           progress: float | None = None) -> tuple[torch.Tensor, dict]:
        with torch.no_grad():
            fake = self.generate(z, progress)
        reals_a, fake_a = self.augment(reals), self.augment(fake)
        real_s = self.D(reals_a, progress=progress).float()
        fake_s = self.D(fake_a, progress=progress).float()
        wdist = real_s.mean() - fake_s.mean()
        eps = torch.rand(reals.shape[0], 1, 1, 1, 1, device=reals.device, dtype=reals_a.dtype)
        mix = (eps * reals_a.detach() + (1 - eps) * fake_a.detach()).requires_grad_(True)
        mix_s = self.D(mix, progress=progress).float()
        (grad,) = torch.autograd.grad(mix_s.sum(), mix, create_graph=True)
        gp = (grad.float().flatten(1).norm(2, dim=1) - 1).square().mean()
        loss = -wdist + self.gp_lambda * gp + self.drift * real_s.square().mean()
        stats = {"loss/D": loss.detach(), "wdist": wdist.detach(), "reg/gp": gp.detach(),
                 "scores/real": real_s.detach().mean(), "real_logits": real_s.detach()}
        return loss, stats
