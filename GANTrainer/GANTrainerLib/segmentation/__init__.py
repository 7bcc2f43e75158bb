"""The downstream segmentation experiment (Aydin et al. 2024): does training on generated CoW volumes help?

A teacher trained on real labelled volumes labels the synthetic ones; students trained on real only, synthetic
only and real + synthetic are scored on held-out real volumes (k-fold) per artery with Dice, HD95 in mm, TopCoW
detection and variant-vector accuracy; regimes are compared with a paired Wilcoxon test.

* :mod:`.network` — MONAI DynUNet (nnU-Net architecture), nnU-Net-style planning, training, sliding-window
  inference, safe checkpoints
* :mod:`.metrics` — per-class scores with the empty-class rules
* :mod:`.experiment` — folds, teacher, students, scoring (:func:`run_segmentation_experiment`)
* :mod:`.nnunet` — export as nnU-Net v2 raw datasets with the same split
* :mod:`.report` — results.md and the box plot
* :mod:`.demo` — :func:`reduced_demo` on built-in phantoms (CPU, about a minute)

Torch and MONAI are imported only where a network trains, predicts or a distance is computed.
"""

from .experiment import (REGIMES, DynUNetTrainer, OracleTrainer, TrainRequest, make_folds, paired_wilcoxon,
                         run_segmentation_experiment)
from .metrics import dice_per_class, hd95_per_class, iou_per_class, score_case, volume_diagonal_mm
from .demo import reduced_demo

__all__ = [
    "REGIMES", "run_segmentation_experiment", "reduced_demo", "TrainRequest", "DynUNetTrainer", "OracleTrainer",
    "make_folds", "paired_wilcoxon", "score_case", "dice_per_class", "iou_per_class", "hd95_per_class",
    "volume_diagonal_mm",
]
