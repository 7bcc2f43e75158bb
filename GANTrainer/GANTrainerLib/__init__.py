"""GANTrainerLib: training loops, augmentation, evaluation metrics and the downstream segmentation experiment.

Layering: imports :mod:`VolumetricGANLib`, :mod:`MorphometryLib` and :mod:`VolGANCore`; never Slicer.
"""
