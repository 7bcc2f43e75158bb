"""Bad input across every command, as a new user would give it: exit 2, one to three lines naming the file and the
fix, and no partial output. Interrupts (Ctrl-C) exit 130 and leave nothing behind either."""

from __future__ import annotations

import dataclasses
import errno
import re
import shutil
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pytest

from VolGANCore import Volume, write_volume
from VolGANCore.cli import main

pytestmark = pytest.mark.slow  # every test here shares a module fixture that takes tens of seconds

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "VolumetricGAN" / "Resources" / "Models"


@dataclasses.dataclass
class Bad:
    name: str
    argv: Callable[[Path, Path], list]          # (workspace, case folder) -> command line
    expect: str                                 # regex the stderr must match (problem and fix)
    names: Callable[[Path, Path], str] = None   # the file or folder the message must name (default: none extra)
    outputs: tuple = ("out",)                   # paths under the case folder that must not exist afterwards
    rc: int = 2
    patch: Optional[Callable] = None            # (monkeypatch) -> None: a simulated fault


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """Small inputs shared by the cases (module scope: the run folder trains once)."""
    from GANTrainerLib.train import settings_from_preset, train
    from VolumetricGANLib.phantoms.dataset import write_bone_dataset, write_cow_dataset

    w = tmp_path_factory.mktemp("bad")
    rng = np.random.default_rng(0)
    grey = rng.normal(300, 200, (32, 32, 32)).astype(np.float32)
    write_volume(Volume(grey, spacing=(0.164,) * 3), w / "bone.nii.gz")
    nan = grey.copy()
    nan[4, 5, 6] = np.nan
    write_volume(Volume(nan, spacing=(0.164,) * 3), w / "nan.nii.gz")
    data = (w / "bone.nii.gz").read_bytes()
    (w / "trunc.nii.gz").write_bytes(data[: len(data) // 2])
    (w / "notes.txt").write_text("not an image")
    import SimpleITK as sitk

    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((8, 8), np.float32)), str(w / "flat2d.nrrd"))
    write_volume(Volume((grey[:16, :16, :16] > 300).astype(np.uint8), spacing=(0.164,) * 3), w / "mask16.nii.gz")
    labels = np.zeros((8, 16, 16), np.int16)
    labels[2:4, 2:6, 2:6] = 1
    write_volume(Volume(labels, spacing=(0.5,) * 3), w / "labels_ok.nii.gz")
    write_volume(Volume(labels[:, :8, :8].copy(), spacing=(0.5,) * 3), w / "labels_small.nii.gz")
    labels[5, 5, 5] = 99
    write_volume(Volume(labels, spacing=(0.5,) * 3), w / "labels_99.nii.gz")
    (w / "empty").mkdir()
    write_bone_dataset(w / "bonephantoms", 6, seed=1)                 # images/ and masks/
    write_cow_dataset(w / "cowphantoms", 2, seed=1)
    (w / "nanfolder").mkdir()
    shutil.copy(w / "nan.nii.gz", w / "nanfolder" / "a.nii.gz")
    shutil.copy(w / "bone.nii.gz", w / "nanfolder" / "b.nii.gz")
    cow = (MODELS / "tiny-cow.vgan").read_bytes()
    (w / "trunc.vgan").write_bytes(cow[: len(cow) // 2])
    (w / "junk.vgan").write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    (w / "junk.pth").write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    train(w / "cowphantoms" / "images", w / "cowrun", settings_from_preset("tiny-cow"), max_steps=1,
          device="cpu", log=lambda m: None)
    (w / "norun").mkdir()
    return w


def _disk_full(monkeypatch):
    """os.replace (the atomic rename that publishes every output) fails as on a full disk."""
    import os

    def full(src, dst, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(dst))

    monkeypatch.setattr(os, "replace", full)


def _read_only(monkeypatch):
    """Creating the output folder fails as in a read-only folder (the tests run as root, which writes anywhere)."""
    import os

    real = os.mkdir

    def refuse(path, *a, **k):
        if "case" in str(path):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real(path, *a, **k)

    monkeypatch.setattr(os, "mkdir", refuse)


def _interrupt_generation(monkeypatch):
    from VolumetricGANLib import generate

    def ctrl_c(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(generate, "synthesize", ctrl_c)


def _interrupt_features(monkeypatch):
    from GANTrainerLib.evaluation import features

    def ctrl_c(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(features.StatsSliceExtractor, "__call__", ctrl_c)


S = str
CASES = [
    # -- morphometry ---------------------------------------------------------------------------------------------
    Bad("morphometry: missing file", lambda w, c: ["morphometry", "bone", S(w / "absent.nii.gz"), "--threshold", "300"],
        r"absent\.nii\.gz: file not found \(check the path\)", outputs=()),
    Bad("morphometry: NaN voxels", lambda w, c: ["morphometry", "bone", S(w / "nan.nii.gz"), "--threshold", "300"],
        r"nan\.nii\.gz: contains 1 NaN/Inf voxel\(s\), the first at \(D,H,W\)=\(4, 5, 6\) .*--nan-policy", outputs=()),
    Bad("morphometry: truncated NIfTI", lambda w, c: ["morphometry", "bone", S(w / "trunc.nii.gz"), "--threshold", "300"],
        r"trunc\.nii\.gz: is truncated.*copy it again", outputs=()),
    Bad("morphometry: not an image", lambda w, c: ["morphometry", "bone", S(w / "notes.txt"), "--threshold", "300"],
        r"notes\.txt: unsupported file type '\.txt' \(use \.nii", outputs=()),
    Bad("morphometry: 2-D image", lambda w, c: ["morphometry", "bone", S(w / "flat2d.nrrd"), "--threshold", "300"],
        r"flat2d\.nrrd: is 2-D .*a 3-D volume is needed", outputs=()),
    Bad("morphometry: grey image without threshold", lambda w, c: ["morphometry", "bone", S(w / "bone.nii.gz")],
        r"bone\.nii\.gz: not binary .*--threshold T, or otsu", outputs=()),
    Bad("morphometry: mask on another grid",
        lambda w, c: ["morphometry", "bone", S(w / "bone.nii.gz"), "--threshold", "300", "--mask", S(w / "mask16.nii.gz")],
        r"mask16\.nii\.gz.*(grid|shape)", outputs=()),
    Bad("morphometry vessels: unknown label id", lambda w, c: ["morphometry", "vessels", S(w / "labels_99.nii.gz")],
        r"labels_99\.nii\.gz: .*99", outputs=()),
    # -- datasets ------------------------------------------------------------------------------------------------
    Bad("dataset validate: empty folder", lambda w, c: ["dataset", "validate", S(w / "empty")],
        r"empty: no volumes found \(looked for", outputs=()),
    Bad("dataset validate: volumes in images/", lambda w, c: ["dataset", "validate", S(w / "bonephantoms")],
        r"bonephantoms: no volumes directly inside; its sub-folder\(s\) images/, masks/ hold volumes \(pass .*images",
        outputs=()),
    # -- train ---------------------------------------------------------------------------------------------------
    Bad("train: empty data folder", lambda w, c: ["train", "--preset", "tiny-spongiosa", "--data", S(w / "empty"),
                                                  "--out", S(c / "out")],
        r"empty: no volumes found"),
    Bad("train: volumes in images/", lambda w, c: ["train", "--preset", "tiny-spongiosa", "--data",
                                                   S(w / "bonephantoms"), "--out", S(c / "out")],
        r"its sub-folder\(s\) images/, masks/ hold volumes \(pass .*bonephantoms/images"),
    Bad("train: NaN in the data", lambda w, c: ["train", "--preset", "tiny-spongiosa", "--data", S(w / "nanfolder"),
                                                "--out", S(c / "out"), "--max-steps", "1"],
        r"a\.nii\.gz: contains 1 NaN/Inf voxel"),
    Bad("train: learning rate 0", lambda w, c: ["train", "--preset", "tiny-spongiosa", "--data",
                                                S(w / "bonephantoms" / "images"), "--out", S(c / "out"), "--lr-g", "0"],
        r"--lr-g must be > 0"),
    Bad("train: --padding for a StyleGAN preset", lambda w, c: ["train", "--preset", "tiny-cow", "--data",
                                                                S(w / "cowphantoms" / "images"), "--out", S(c / "out"),
                                                                "--padding", "circular"],
        r"--padding sets the progressive generator's conv padding; preset 'tiny-cow'"),
    Bad("train: --resume of another family", lambda w, c: ["train", "--preset", "tiny-spongiosa", "--data",
                                                           S(w / "bonephantoms" / "images"), "--out", S(w / "cowrun"),
                                                           "--resume", "--max-steps", "1"],
        r"cowrun/checkpoints/ckpt-0000001\.vgan: a stylegan2-3d checkpoint; preset 'tiny-spongiosa' trains pgan-3d "
        r"\(resume with the run's own preset", outputs=()),
    # -- generate, invert, steer, export, import -------------------------------------------------------------------
    Bad("generate: missing checkpoint", lambda w, c: ["generate", "--checkpoint", S(w / "absent.vgan"), "--out",
                                                      S(c / "out")],
        r"absent\.vgan: .*not found"),
    Bad("generate: truncated checkpoint", lambda w, c: ["generate", "--checkpoint", S(w / "trunc.vgan"), "--out",
                                                        S(c / "out")],
        r"trunc\.vgan: is truncated or damaged: its zip archive is incomplete \(pass a \.vgan checkpoint"),
    Bad("generate: not a checkpoint", lambda w, c: ["generate", "--checkpoint", S(w / "junk.vgan"), "--out", S(c / "out")],
        r"junk\.vgan: is not a PyTorch checkpoint: neither a zip archive nor"),
    Bad("generate: --n 0", lambda w, c: ["generate", "--checkpoint", S(MODELS / "tiny-cow.vgan"), "--n", "0", "--out",
                                         S(c / "out")],
        r"--n 0: expected at least 1 sample"),
    Bad("invert: NaN target", lambda w, c: ["generate", "--checkpoint", S(MODELS / "tiny-spongiosa.vgan"), "--mode",
                                            "invert", "--target", S(w / "nan.nii.gz"), "--out", S(c / "out")],
        r"nan\.nii\.gz: contains 1 NaN/Inf voxel"),
    Bad("steer: a vessel model", lambda w, c: ["steer", "--checkpoint", S(MODELS / "tiny-cow.vgan"), "--target",
                                               "BV/TV=0.2", "--out", S(c / "out")],
        r"tiny-cow\.vgan: steering measures bone micro-structure, but this is a 'circle-of-willis' model "
        r"\(steer a trabecular-bone"),
    Bad("steer: unreadable target", lambda w, c: ["steer", "--checkpoint", S(MODELS / "tiny-spongiosa.vgan"),
                                                  "--target", "BV/TV=lots", "--out", S(c / "out")],
        r"target 'BV/TV=lots': write NAME=VALUE"),
    Bad("export: no checkpoints in the folder", lambda w, c: ["export", S(w / "norun"), "--out", S(c / "out.vgan")],
        r"norun: no checkpoints/ckpt-\*\.vgan in this run folder \(is it a `volgan train --out` folder\?\)",
        outputs=("out.vgan",)),
    Bad("import: not a PyTorch file", lambda w, c: ["import", "--format", "miccai2020-pgan", S(w / "junk.pth"),
                                                    "--out", S(c / "out.vgan")],
        r"junk\.pth: .*(cannot|not)", outputs=("out.vgan",)),
    # -- evaluation ----------------------------------------------------------------------------------------------
    Bad("evaluate: empty real folder", lambda w, c: ["evaluate", "--real", S(w / "empty"), "--fake",
                                                     S(w / "bonephantoms" / "images"), "--out", S(c / "out")],
        r"empty: no volumes found"),
    Bad("evaluate: NaN in the generated set", lambda w, c: ["evaluate", "--real", S(w / "bonephantoms" / "images"),
                                                            "--fake", S(w / "nanfolder"), "--out", S(c / "out")],
        r"a\.nii\.gz: contains 1 NaN/Inf voxel"),
    Bad("evaluate-segmentation: grids differ", lambda w, c: ["evaluate-segmentation", "--pred",
                                                             S(w / "labels_small.nii.gz"), "--gt",
                                                             S(w / "labels_ok.nii.gz")],
        r"labels_small\.nii\.gz.*(grid|shape)", outputs=()),
    Bad("evaluate-segmentation: unknown label id", lambda w, c: ["evaluate-segmentation", "--pred",
                                                                 S(w / "labels_99.nii.gz"), "--gt",
                                                                 S(w / "labels_ok.nii.gz")],
        r"labels_99\.nii\.gz: .*99", outputs=()),
    Bad("segmentation-experiment: labels missing", lambda w, c: ["segmentation-experiment", "--real-images",
                                                                 S(w / "cowphantoms" / "images"), "--real-labels",
                                                                 S(w / "empty"), "--synthetic",
                                                                 S(w / "cowphantoms" / "images"), "--out", S(c / "out")],
        r"empty: no volumes found"),
    # -- the disk, not the input ----------------------------------------------------------------------------------
    Bad("generate: disk full during the atomic write", lambda w, c: ["generate", "--checkpoint",
                                                                     S(MODELS / "tiny-spongiosa.vgan"), "--n", "2",
                                                                     "--out", S(c / "out")],
        r"No space left on device \(free disk space", patch=_disk_full),
    Bad("phantom: read-only output folder", lambda w, c: ["phantom", "bone", "--n", "2", "--out", S(c / "out")],
        r"Permission denied \(choose an output folder you can write to\)", patch=_read_only),
    # -- Ctrl-C ----------------------------------------------------------------------------------------------------
    Bad("generate: Ctrl-C", lambda w, c: ["generate", "--checkpoint", S(MODELS / "tiny-spongiosa.vgan"), "--n", "4",
                                          "--out", S(c / "out")],
        r"^volgan generate: interrupted$", rc=130, patch=_interrupt_generation),
    Bad("evaluate: Ctrl-C", lambda w, c: ["evaluate", "--real", S(w / "bonephantoms" / "images"), "--fake",
                                          S(w / "bonephantoms" / "images"), "--out", S(c / "out")],
        r"^volgan evaluate: interrupted$", rc=130, patch=_interrupt_features),
]


def test_there_are_at_least_thirty_bad_inputs():
    assert len(CASES) >= 30 and len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_exits_2_with_one_line_naming_the_file_and_fix_and_leaves_nothing(case, ws, tmp_path, capsys,
                                                                                    monkeypatch):
    monkeypatch.delenv("VOLGAN_NAN_POLICY", raising=False)
    folder = tmp_path / "case"
    folder.mkdir()
    before = sorted(p.relative_to(ws) for p in ws.rglob("*"))
    if case.patch:
        case.patch(monkeypatch)
    try:
        rc = main(["--quiet", *case.argv(ws, folder)])
    except SystemExit as exc:   # argparse's own refusals
        rc = exc.code
    err = capsys.readouterr().err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert rc == case.rc, err
    assert 1 <= len(lines) <= 3, err
    assert re.search(case.expect, err, re.MULTILINE), err
    for name in case.outputs:
        assert not (folder / name).exists(), f"{name} left behind"
    assert sorted(folder.iterdir()) == [], "the command left files in the output folder"
    monkeypatch.undo()
    assert sorted(p.relative_to(ws) for p in ws.rglob("*")) == before, "the inputs were changed"
