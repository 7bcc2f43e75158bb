"""VolumetricGANLib: generator/discriminator networks, safe checkpoints, importers, generation and steering.

Layering: imports :mod:`MorphometryLib` and :mod:`VolGANCore`; never Slicer.
"""
