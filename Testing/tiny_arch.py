"""Tiny StyleGAN2-3D architectures for tests, defined once (the networks' keyword arguments, spelled in one place).

``tiny_stylegan_g()`` / ``tiny_stylegan_d()`` give the generator / discriminator keyword arguments of
:class:`VolumetricGANLib.networks.StyleGAN2Generator` / ``StyleGAN2Discriminator``: by default an 8×32×32
output from a 2×8×8 constant, 16 channels and z = w = 16. Tests pass the grid (kept as given: tuple or list,
as their configs are compared) and width they need; ``extra`` adds any other argument.
"""

from __future__ import annotations

from typing import Any, Sequence


def tiny_stylegan_g(output_shape: Sequence[int] = (8, 32, 32), base_shape: Sequence[int] = (2, 8, 8), *,
                    width: int = 16, z_dim: int = 16, mapping_layers: int = 2, **extra: Any) -> dict[str, Any]:
    """Generator arguments: ``width`` channels at every resolution, ``w_dim == z_dim``."""
    return dict(z_dim=z_dim, w_dim=z_dim, output_shape=output_shape, base_shape=base_shape, channel_base=width,
                channel_max=width, mapping_layers=mapping_layers, **extra)


def tiny_stylegan_d(img_shape: Sequence[int] = (8, 32, 32), base_shape: Sequence[int] = (2, 8, 8), *,
                    width: int = 16, **extra: Any) -> dict[str, Any]:
    """Discriminator arguments for the same grid (``extra``: e.g. ``mbstd_group_size=2``)."""
    return dict(img_shape=img_shape, base_shape=base_shape, channel_base=width, channel_max=width, **extra)
