"""The downstream segmentation experiment (Aydin et al. 2024): does training on generated CoW volumes help?

A teacher trained on real labelled volumes labels the synthetic ones; students trained on real only, synthetic
only and real + synthetic are scored on held-out real volumes (k-fold) per artery with Dice, HD95 in mm (or the
paper's HDRFDST@0.95 in voxels), TopCoW detection, variant-vector accuracy and the TopCoW 2023 metric suite;
regimes are compared with a paired Wilcoxon test.

* :mod:`.network` — MONAI DynUNet (nnU-Net architecture), nnU-Net-style planning, training, sliding-window
  inference, safe checkpoints
* :mod:`.metrics` — per-class scores with the empty-class rules; the paper's scoring (``hdrfdst_voxels``)
* :mod:`.topcow` — the TopCoW 2023 metric suite (clDice, Betti-0, HD95, detection, variants, topology)
* :mod:`.evaluate` — that suite on files or folders (``volgan evaluate-segmentation``)
* :mod:`.experiment` — folds, teacher, students, scoring (:func:`run_segmentation_experiment`)
* :mod:`.nnunet` — export as nnU-Net v2 raw datasets with the same split
* :mod:`.report` — results.md and the box plot
* :mod:`.demo` — :func:`reduced_demo` on built-in phantoms (CPU, about a minute)

Torch and MONAI are imported only where a network trains, predicts or a distance is computed.
"""

from .experiment import (REGIMES, DynUNetTrainer, OracleTrainer, TrainRequest, make_folds, paired_wilcoxon,
                         run_segmentation_experiment)
from .metrics import (dice_per_class, hd95_per_class, hdrfdst_voxels, iou_per_class, score_case,
                      volume_diagonal_mm)
from .topcow import topcow_aggregate, topcow_case
from .evaluate import evaluate_segmentations
from .demo import reduced_demo

__all__ = [
    "REGIMES", "run_segmentation_experiment", "reduced_demo", "TrainRequest", "DynUNetTrainer", "OracleTrainer",
    "make_folds", "paired_wilcoxon", "score_case", "dice_per_class", "iou_per_class", "hd95_per_class",
    "volume_diagonal_mm", "hdrfdst_voxels", "topcow_case", "topcow_aggregate", "evaluate_segmentations",
]
