"""Names shared by the Slicer panels, the command line and the libraries, importable with nothing installed.

The panels build before PyTorch and the modules' other packages are installed, and ``volgan --help`` needs no
torch; so the lists they offer live here, in plain Python, and the libraries take them from here too (one
definition, nothing to keep in sync). This module imports nothing.
"""

__all__ = ["BONE_PARAMETERS", "PADDING_MODES", "FAKE_LABEL_INPUTS", "LABEL_DECODINGS", "LABEL_DOWNSAMPLES",
           "COW_ANTERIOR", "COW_POSTERIOR", "COW_VARIANT_SEGMENTS"]

# The bone parameters MorphometryLib.bone measures (its ALL_PARAMETERS, in this order), with what they mean.
BONE_PARAMETERS = {
    "BV/TV": "bone volume fraction", "BS": "bone surface (BS/BV, BS/TV)", "Tb.Th": "trabecular thickness",
    "Tb.Sp": "trabecular separation", "Tb.N": "trabecular number", "Conn": "Euler number, connectivity, Conn.D",
    "SMI": "structure model index", "DA": "degree of anisotropy (MIL)", "DA.ST": "degree of anisotropy (structure tensor)",
    "BMD": "bone mineral density", "TMD": "tissue mineral density", "plate": "plate-model Tb.Th/Tb.Sp/Tb.N",
}

# nn.Conv3d padding modes of the progressive generator's 3×3×3 convs (VolumetricGANLib.networks.pgan;
# ``volgan train --padding``); "zeros" is the published one.
PADDING_MODES = ("zeros", "replicate", "reflect", "circular")

# What the discriminator of a joint image + label model sees of the generated labels
# (VolumetricGANLib.labelmaps.discriminator_input; ``volgan train --fake-labels``).
FAKE_LABEL_INPUTS = ("softmax", "straight-through")
# How a joint generator's class logits become a label map (VolumetricGANLib.labelmaps.decode_classes): the plain
# argmax, or foreground first (a voxel is labelled when the arteries together outweigh the background, then
# with the likeliest artery).
LABEL_DECODINGS = ("argmax", "foreground")
# How a label map is reduced by a block factor (VolGANCore.geometry.downsample, the ``label_downsample`` of a
# training preprocess): the block's first voxel; the block's majority; or the majority keeping every class present
# (a class the majority drops keeps the block where it is densest, so a thin, short artery stays present).
LABEL_DOWNSAMPLES = ("first", "majority", "majority-present")

# The Circle-of-Willis variant vectors of the TopCoW 2023 challenge (MorphometryLib.vessels.cow_variants measures
# them; joint generation is conditioned on them; evaluation compares their frequencies), 1 = present.
COW_ANTERIOR = ("L-A1", "Acom", "3rd-A2", "R-A1")
COW_POSTERIOR = ("L-Pcom", "L-P1", "R-P1", "R-Pcom")
COW_VARIANT_SEGMENTS = COW_ANTERIOR + COW_POSTERIOR
