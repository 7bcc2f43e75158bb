"""Generator and discriminator families, built from a JSON config by name.

A *family* is registered with :func:`register_family` and names a generator class (and optionally a
discriminator class). Each generator class takes its architecture hyper-parameters as keyword arguments,
returns them from ``config()``, and offers the shared interface used by generation and steering:

- ``z_dim`` (int), ``has_w`` (bool: a StyleGAN-like w space exists), ``num_ws``, ``output_shape``,
  ``img_channels``;
- ``forward(z, truncation_psi=1, truncation_cutoff=None, noise_mode=..., noise=None) -> (N, C, D, H, W)``;
- if ``has_w``: ``mapping(z, psi, cutoff) -> ws (N, num_ws, w_dim)`` and
  ``synthesis(ws, noise_mode, noise)``; ``make_noise(n, generators, device)`` for reproducible noise.

Every family is registered at the end of this module (the network modules register nothing themselves):
``stylegan2-3d``, ``pgan-3d`` and ``aydin2024-stylegan3d`` from :mod:`.aydin2024`, the Circle-of-Willis 3-D
StyleGAN of Aydin et al. 2024 (a port of lucidrains/stylegan2-pytorch with its own layer wiring), imported from
the authors' checkpoints.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from torch import nn

from .aydin2024 import FAMILY as AYDIN2024_FAMILY
from .aydin2024 import AydinGenerator
from .layers import ShapeError, assert_shape
from .pgan import ProgressiveDiscriminator, ProgressiveGenerator
from .stylegan2 import StyleGAN2Discriminator, StyleGAN2Generator, derive_up_factors

__all__ = [
    "Family", "FAMILIES", "register_family", "get_family", "build_generator", "build_discriminator",
    "StyleGAN2Generator", "StyleGAN2Discriminator", "ProgressiveGenerator", "ProgressiveDiscriminator",
    "ShapeError", "assert_shape", "derive_up_factors",
]


@dataclasses.dataclass(frozen=True)
class Family:
    """A named network family: how to build its generator (and discriminator) from keyword arguments."""

    name: str
    generator: Callable[..., nn.Module]
    discriminator: Callable[..., nn.Module] | None = None
    description: str = ""


FAMILIES: dict[str, Family] = {}


def register_family(family: Family) -> None:
    """Make ``family`` available to :func:`build_generator` and to checkpoint loading."""
    FAMILIES[family.name] = family


def get_family(name: str) -> Family:
    """The registered family ``name``; ``KeyError`` with the known names otherwise."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise KeyError(f"unknown model family {name!r} (known: {', '.join(sorted(FAMILIES))})") from None


def build_generator(family: str, architecture: dict[str, Any]) -> nn.Module:
    """Instantiate the generator of ``family`` with the hyper-parameters ``architecture``."""
    return get_family(family).generator(**architecture)


def build_discriminator(family: str, architecture: dict[str, Any]) -> nn.Module:
    """Instantiate the discriminator of ``family`` with the hyper-parameters ``architecture``."""
    fam = get_family(family)
    if fam.discriminator is None:
        raise KeyError(f"model family {family!r} has no discriminator")
    return fam.discriminator(**architecture)


register_family(Family("stylegan2-3d", StyleGAN2Generator, StyleGAN2Discriminator,
                       "StyleGAN2 in 3-D: mapping + modulated synthesis (skip/resnet), residual D"))
register_family(Family("pgan-3d", ProgressiveGenerator, ProgressiveDiscriminator,
                       "progressive GAN in 3-D (WScale, PixelNorm, tanh); MICCAI 2020 spongiosa compatible"))
register_family(Family(AYDIN2024_FAMILY, AydinGenerator, None,
                       "Circle-of-Willis 3-D StyleGAN of Aydin et al. 2024 (lucidrains-style port), "
                       "imported from their checkpoints; exact forward pass"))
