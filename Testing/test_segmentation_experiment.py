"""Downstream segmentation experiment: metrics (hand-computed, MONAI, real TopCoW labels), the protocol with an
identity network, a tiny real DynUNet run with nnU-Net export, and bad-input errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from VolGANCore import VolGANError, convert_labels, read_label_volume, read_volume, write_volume

SHAPE, SPACING = (16, 32, 32), 2.4       # tiny phantoms: the 32×128×128 ROI at a quarter resolution


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: robust on the shared 2-core test machine (see segmentation.demo.torch_threads)."""
    from GANTrainerLib.segmentation.demo import torch_threads

    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    from VolumetricGANLib.phantoms import write_cow_dataset

    root = tmp_path_factory.mktemp("seg")
    real = write_cow_dataset(root / "real", n=4, seed=0, shape=SHAPE, spacing_mm=SPACING)
    syn = write_cow_dataset(root / "syn", n=3, seed=1, shape=SHAPE, spacing_mm=SPACING)
    return real, syn


# ----------------------------------------------------------------------------------------------------------------
# metrics
def test_dice_and_hd95_hand_computed_with_anisotropic_spacing():
    from GANTrainerLib.segmentation.metrics import dice_per_class, hd95_per_class, iou_per_class

    sp = (2.0, 0.5, 0.25)                      # (D, H, W) mm
    gt = np.zeros((10, 12, 14), np.int16)
    pred = gt.copy()
    gt[2, 3, 4], pred[2, 3, 7] = 1, 1          # class 1: one voxel each, 3 voxels apart along W → 0.75 mm
    gt[5:8, 5:8, 5:8] = 2                      # class 2: 27-voxel cube …
    pred[5:8, 5:8, 5:9] = 2                    # … predicted one voxel longer along W (36 voxels)
    gt[1, 1, 1], pred[3, 1, 1] = 3, 3          # class 3: 2 voxels apart along D → 4 mm (the coarse axis)
    d = dice_per_class(pred, gt, [1, 2, 3])
    assert d[0] == 0 and d[2] == 0
    assert d[1] == pytest.approx(2 * 27 / (27 + 36))
    assert iou_per_class(pred, gt, [2])[0] == pytest.approx(27 / 36)
    hd = hd95_per_class(pred, gt, [1, 2, 3], sp)
    assert hd == pytest.approx([0.75, 0.25, 4.0])
    # the same geometry read in voxels would give 3, 1 and 2: spacing is applied per axis
    assert hd95_per_class(pred, gt, [3], (1.0, 1.0, 1.0))[0] == pytest.approx(2.0)


def test_empty_class_rules():
    from GANTrainerLib.segmentation.metrics import score_case, volume_diagonal_mm

    gt = np.zeros((8, 10, 12), np.int16)
    pred = gt.copy()
    gt[2:4, 2:4, 2:4] = 1          # BA: in both, identical
    pred[2:4, 2:4, 2:4] = 1
    gt[5, 5, 5:9] = 4              # R-ICA: missed by the prediction
    pred[6, 1, 1] = 5              # R-MCA: predicted but absent from the ground truth
    sp = (0.6, 0.3, 0.3)
    s = score_case(pred, gt, sp, "topcow13")
    diag = volume_diagonal_mm(gt.shape, sp)
    assert diag == pytest.approx(math.sqrt((8 * 0.6) ** 2 + (10 * 0.3) ** 2 + (12 * 0.3) ** 2))
    assert s["dice"]["BA"] == 1 and s["hd95_mm"]["BA"] == 0
    assert s["dice"]["R-ICA"] == 0 and s["hd95_mm"]["R-ICA"] == pytest.approx(diag)
    assert s["dice"]["R-MCA"] == 0 and s["hd95_mm"]["R-MCA"] == pytest.approx(diag)
    assert math.isnan(s["dice"]["Acom"]) and math.isnan(s["hd95_mm"]["Acom"])       # absent in both: not scored
    assert s["mean_dice"] == pytest.approx(1 / 3)                                    # NaN classes left out
    assert s["mean_hd95_mm"] == pytest.approx(2 * diag / 3)


def test_dice_and_hd95_agree_with_monai_metrics(rng):
    import torch
    from monai.metrics import DiceMetric, HausdorffDistanceMetric
    from scipy.ndimage import gaussian_filter

    from GANTrainerLib.segmentation.metrics import dice_per_class, hd95_per_class

    def blobs(seed):
        r = np.random.default_rng(seed)
        f = gaussian_filter(r.normal(size=(3, 20, 24, 28)), (0, 2, 2, 2))
        lab = np.argmax(f, 0).astype(np.int16) + 1
        lab[gaussian_filter(r.normal(size=(20, 24, 28)), 2) < 0.05] = 0
        return lab

    gt, pred = blobs(1), blobs(2)
    sp = (1.5, 0.4, 0.7)
    onehot = lambda a: torch.from_numpy(np.eye(4, dtype=np.float32)[a].transpose(3, 0, 1, 2))[None]
    dm = DiceMetric(include_background=False, reduction="none")
    dm(onehot(pred), onehot(gt))
    hm = HausdorffDistanceMetric(include_background=False, percentile=95, reduction="none")
    hm(onehot(pred), onehot(gt), spacing=list(sp))
    assert dice_per_class(pred, gt, [1, 2, 3]) == pytest.approx(dm.aggregate().numpy()[0], rel=1e-6)
    assert hd95_per_class(pred, gt, [1, 2, 3], sp) == pytest.approx(hm.aggregate().numpy()[0], rel=1e-5)


def test_detection_iou_rule():
    from GANTrainerLib.segmentation.metrics import detection_per_class

    gt = np.zeros((4, 4, 40), np.int16)
    pred = gt.copy()
    gt[1, 1, 0:20] = 10                 # Acom: 20 voxels
    pred[1, 1, 15:20] = 10              # 5 overlapping → IoU 5/20 = 0.25: detected (≥)
    gt[2, 2, 0:20] = 8                  # R-Pcom
    pred[2, 2, 16:20] = 8               # IoU 4/20 = 0.2: missed
    pred[3, 3, 0:3] = 9                 # L-Pcom predicted, absent from the ground truth: false positive
    d = detection_per_class(pred, gt, "topcow13")
    assert d["Acom"]["iou"] == pytest.approx(0.25) and d["Acom"]["detected"] is True
    assert d["R-Pcom"]["iou"] == pytest.approx(0.2) and d["R-Pcom"]["detected"] is False
    assert d["L-Pcom"]["detected"] is None and d["L-Pcom"]["false_positive"] is True
    assert d["3rd-A2"]["detected"] is None and d["3rd-A2"]["false_positive"] is False
    assert set(detection_per_class(pred.clip(0, 7), gt.clip(0, 7), "aydin7")) == {"Pcom", "Acom"}


@pytest.mark.slow
def test_metrics_on_the_real_topcow_label_crop():
    from conftest import shared_file
    from monai.metrics import compute_hausdorff_distance
    import torch

    from GANTrainerLib.segmentation.metrics import score_case, volume_diagonal_mm
    from VolGANCore.labels import TOPCOW13

    gt_vol = read_label_volume(shared_file("data", "topcow", "topcow_mr_roi_003_labels.nii.gz"), scheme="topcow13")
    gt, sp = gt_vol.array, gt_vol.array_spacing
    assert sp == pytest.approx((0.6, 0.296875, 0.296875))
    same = score_case(gt.copy(), gt, sp, "topcow13")
    present = [TOPCOW13.name_of(i) for i in np.unique(gt) if i]
    assert all(same["dice"][n] == 1 and same["hd95_mm"][n] == 0 for n in present)
    assert math.isnan(same["dice"]["3rd-A2"])                       # no 3rd-A2 in this subject
    assert same["variants"]["anterior_match"] and same["variants"]["posterior_match"]
    assert same["variants"]["gt"]["anterior"][1] == 1                # Acom present

    pred = gt.copy()
    pred[pred == 10] = 11                                           # Acom labelled as R-ACA: Acom missed
    pred[pred == 9] = 0                                             # L-Pcom missed
    shifted = np.zeros_like(pred)                                   # BA moved 2 voxels along W (0.59 mm)
    shifted[:, :, 2:] = (pred == 1)[:, :, :-2]
    pred[pred == 1] = 0
    pred[shifted == 1] = 1
    s = score_case(pred, gt, sp, "topcow13")
    diag = volume_diagonal_mm(gt.shape, sp)
    assert s["dice"]["Acom"] == 0 and s["hd95_mm"]["Acom"] == pytest.approx(diag)
    assert s["detection"]["Acom"]["detected"] is False and s["detection"]["L-Pcom"]["detected"] is False
    assert s["detection"]["R-Pcom"]["detected"] is True
    assert not s["variants"]["anterior_match"] and s["variants"]["pred"]["anterior"][1] == 0
    assert not s["variants"]["posterior_match"] and s["variants"]["pred"]["posterior"][0] == 0
    a, b = pred == 1, gt == 1
    assert s["dice"]["BA"] == pytest.approx(2 * (a & b).sum() / (a.sum() + b.sum()))
    assert 0 < s["hd95_mm"]["BA"] <= 2 * 0.296875 + 1e-6
    ref = compute_hausdorff_distance(torch.from_numpy(a)[None, None], torch.from_numpy(b)[None, None],
                                     include_background=True, percentile=95, spacing=list(sp))
    assert s["hd95_mm"]["BA"] == pytest.approx(float(ref), rel=1e-6)


def test_wilcoxon_reports_n_and_small_samples():
    from scipy.stats import wilcoxon

    from GANTrainerLib.segmentation.experiment import paired_wilcoxon

    a = np.array([0.5, 0.6, 0.55, 0.7, 0.62, 0.58, 0.66, 0.61])
    b = a + np.array([0.05, 0.02, 0.07, 0.01, 0.04, 0.03, 0.06, -0.005])
    t = paired_wilcoxon(a, b)
    assert t["n"] == 8 and t["note"] == "" and t["p_value"] == pytest.approx(wilcoxon(a, b).pvalue)
    small = paired_wilcoxon(a[:4], b[:4])
    assert small["n"] == 4 and "too small" in small["note"] and small["p_value"] >= 2 / 2 ** 4 - 1e-12
    assert paired_wilcoxon(a, a)["p_value"] == 1.0
    assert paired_wilcoxon([np.nan, 0.5], [0.3, np.nan])["n"] == 0


def test_network_plan_is_nnunet_like_for_anisotropic_spacing():
    from GANTrainerLib.segmentation.network import plan_network
    from VolGANCore.env import amp_dtype

    plan = plan_network((32, 128, 128), (1.5, 0.5, 0.5), filters_base=32, filters_max=320, max_stages=6)
    assert plan["kernel_size"][0] == [1, 3, 3]          # coarse D axis: in-plane kernels first
    assert plan["strides"][1] == [1, 2, 2]              # and in-plane pooling until the spacings meet
    assert plan["kernel_size"][1] == [3, 3, 3]
    assert plan["strides"][2] == [2, 2, 2]
    assert plan["filters"] == [32, 64, 128, 256, 320, 320][: len(plan["strides"])]
    final = np.asarray([32, 128, 128]) // np.prod(np.asarray(plan["strides"]), axis=0)
    assert final.min() >= 4
    assert amp_dtype("auto", "cpu").dtype is None
    with pytest.raises(VolGANError, match="down-sampling"):
        plan_network((8, 8, 8), (1, 1, 1))


def test_full_recipe_trains_with_deep_supervision_and_round_trips(phantoms, tmp_path):
    """The GPU recipe's code paths (SGD + poly LR, deep supervision heads) on a CPU-sized copy of it."""
    import dataclasses

    import torch

    from GANTrainerLib.segmentation.network import SegmentationModel, get_config, train_network

    real, _ = phantoms
    img = read_volume(sorted((real / "images").iterdir())[0])
    lab = read_label_volume(sorted((real / "labels").iterdir())[0]).array
    cfg = dataclasses.replace(get_config("full", epochs=1), iters_per_epoch=2, filters_base=4, filters_max=16)
    assert cfg.deep_supervision and cfg.optimizer == "sgd" and cfg.patch_size == (32, 128, 128)
    ids = [0, *range(1, 13), 15]
    model = train_network([img.array], [lab], ids, img.array_spacing, cfg, seed=1)
    assert model.plan["patch_size"] == [16, 32, 32]                  # clipped to the data
    assert any(k.startswith("heads.") or "deep_supervision" in k for k in model.net.state_dict())
    assert np.isfinite(model.config["loss_last10"])
    pred = model.predict(img)
    assert pred.shape == img.shape and set(np.unique(pred).tolist()) <= set(ids)
    model.save(tmp_path / "m.pt")
    again = SegmentationModel.load(tmp_path / "m.pt")
    assert np.array_equal(again.predict(img), pred)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # atomic write left no temporary file
    with pytest.raises(VolGANError, match="label map 0 holds ids \\[13\\]"):
        train_network([img.array], [np.where(lab == 1, 13, lab)], ids, img.array_spacing, cfg)
    torch.save({"format": "something-else"}, tmp_path / "other.pt")
    with pytest.raises(VolGANError, match="other.pt: is not a volgan segmentation checkpoint"):
        SegmentationModel.load(tmp_path / "other.pt")


# ----------------------------------------------------------------------------------------------------------------
# the protocol with an identity network
def test_identity_network_scores_perfectly_and_never_sees_held_out_cases(phantoms, tmp_path):
    from GANTrainerLib.segmentation import OracleTrainer, run_segmentation_experiment

    real, syn = phantoms
    truth = {p.name.split(".")[0]: read_label_volume(p).array for p in sorted((real / "labels").iterdir())}
    truth.update({"syn:" + p.name.split(".")[0]: read_label_volume(p).array for p in sorted((syn / "labels").iterdir())})
    oracle = OracleTrainer(truth)
    res = run_segmentation_experiment(real / "images", real / "labels", syn / "images", tmp_path / "out",
                                      folds=2, n_real=1, n_synthetic=2, trainer=oracle, device="cpu",
                                      export_nnunet=tmp_path / "nnunet")
    for reg in ("real", "synthetic", "real+synthetic"):
        s = res["summary"][reg]
        for name, c in s["per_class"].items():
            if c["n_cases"]:
                assert c["dice_mean"] == 1 and c["hd95_mm_mean"] == 0, (reg, name)
            else:
                assert math.isnan(c["dice_mean"]), (reg, name)          # absent from every ground truth
        assert s["mean_dice"] == 1 and s["n_cases"] == 4
        assert all(d["rate"] == 1 for d in s["detection"].values() if d["n_present"])
        assert s["variants"]["both_accuracy"] == 1 and s["variants"]["n"] == 4
    assert all(t["p_value"] == 1.0 and t["note"] == "all paired differences are zero" for t in res["tests"])
    # the teacher labels written for each fold are what the teacher predicted (here: the truth)
    lab = read_label_volume(tmp_path / "out" / "teacher_labels" / "fold0" / f"{res['inputs']['synthetic_cases_used'][0]}.nii.gz")
    assert np.array_equal(lab.array, truth["syn:" + res["inputs"]["synthetic_cases_used"][0]])
    # no network of a fold was trained on that fold's held-out real cases; sizes follow --n-real/--n-synthetic
    held = {f["fold"]: set(f["test"]) for f in res["folds"]}
    assert set().union(*held.values()) == set(res["inputs"]["real_cases"])
    assert len(oracle.requests) == 2 * 4
    for req in oracle.requests:
        assert not held[req.fold] & set(req.cases), (req.role, req.fold)
        n_r = sum(not c.startswith("syn:") for c in req.cases)
        n_s = len(req.cases) - n_r
        expect = {"teacher": (2, 0), "real": (1, 0), "synthetic": (0, 2), "real+synthetic": (1, 2)}[req.role]
        assert (n_r, n_s) == expect, req.role
    # per-fold teacher labels → one synthetic copy per fold in the nnU-Net export
    ds = tmp_path / "nnunet" / "Dataset902_VolGANCoWRealSynthetic"
    split = json.loads((ds / "splits_final.json").read_text())
    assert [set(s["val"]) for s in split] == [held[0], held[1]]
    assert all(sum(c.startswith("syn_f%d_" % k) for c in s["train"]) == 2 for k, s in enumerate(split))


@pytest.mark.slow
def test_progress_is_one_task_through_folds_regimes_and_iterations(phantoms, tmp_path):
    """A background job shows one bar: the networks' iterations fill the experiment's steps, never backwards."""
    from GANTrainerLib.segmentation import OracleTrainer, run_segmentation_experiment
    from VolGANCore import Cancelled, CancelToken, Progress, RecordingProgress

    real, syn = phantoms
    truth = {p.name.split(".")[0]: read_label_volume(p).array for p in sorted((real / "labels").iterdir())}
    truth.update({"syn:" + p.name.split(".")[0]: read_label_volume(p).array for p in sorted((syn / "labels").iterdir())})
    oracle, token = OracleTrainer(truth), CancelToken()

    def trainer(req, stop_at=None):                     # the oracle, reporting 4 iterations like a network
        with Progress(4, f"train {req.role}", req.progress, req.cancel) as p:
            for it in range(4):
                if (req.fold, req.role, it) == stop_at:
                    token.cancel()
                p.advance(1, f"loss {1 / (it + 1):.2f}")
        return oracle(req)

    rec = RecordingProgress()
    run_segmentation_experiment(real / "images", real / "labels", syn / "images", tmp_path / "out", folds=2,
                                trainer=trainer, device="cpu", progress=rec)
    assert {e.description for e in rec.events} == {"read real set", "read synthetic set", "segmentation experiment"}
    ev = [e for e in rec.events if e.description == "segmentation experiment"]
    assert {e.total for e in ev} == {2 * (2 + 2 * 3)}    # per fold: teacher, its labels, 3 × (student, scoring)
    done = [e.done for e in ev]
    assert done == sorted(done) and done[-1] == 16 and ev[-1].finished
    assert sum(d != int(d) for d in done) == 2 * 4 * 3   # 8 networks × iterations 1–3 fall inside their step
    half = next(e for e in ev if e.message == "fold 2 real+synthetic: 2/4, loss 0.50")
    assert half.done == 8 + 6 + 0.5                    # fold 1 (8 steps), teacher/labels/real/synthetic of fold 2
    with pytest.raises(Cancelled):
        run_segmentation_experiment(real / "images", real / "labels", syn / "images", tmp_path / "cancelled",
                                    folds=2, trainer=lambda r: trainer(r, stop_at=(1, "synthetic", 2)),
                                    device="cpu", cancel=token)
    assert not (tmp_path / "cancelled").exists()


@pytest.fixture(scope="module")
def tiny_run(phantoms, tmp_path_factory):
    """A real DynUNet run: 2 folds, 10 iterations per network, per-fold teachers, nnU-Net export."""
    from GANTrainerLib.segmentation import run_segmentation_experiment

    real, syn = phantoms
    root = tmp_path_factory.mktemp("tiny")
    out, nn = root / "exp", root / "nnunet_raw"
    res = run_segmentation_experiment(real / "images", real / "labels", syn / "images", out, folds=2, config="small",
                                      epochs=1, device="cpu", export_nnunet=nn, nnunet_id=42, seed=3)
    return res, out, nn


@pytest.mark.slow
def test_tiny_dynunet_run_writes_results_checkpoints_and_nnunet_dataset(phantoms, tiny_run):
    import torch

    from GANTrainerLib.segmentation.network import SegmentationModel

    real, syn = phantoms
    res, out, nn = tiny_run
    for f in ("results.json", "results.md", "dice_boxplot.png"):
        assert (out / f).is_file(), f
    assert (out / "dice_boxplot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    js = json.loads((out / "results.json").read_text())            # strict JSON (NaN written as null)
    assert js["settings"]["config"] == "small" and len(js["cases"]) == 3 * 4
    md = (out / "results.md").read_text()
    assert "| Class | real | synthetic | real+synthetic |" in md and "±" in md and "Wilcoxon" in md
    assert "HD95 per class (mm)" in md and "too small" in md and "Dataset044_VolGANCoWRealSynthetic" in md
    assert js["nnunet"]["real+synthetic"]["numTraining"] == 4 + 2 * 3
    for reg, s in res["summary"].items():
        d = [c["dice_mean"] for c in s["per_class"].values() if np.isfinite(c["dice_mean"])]
        assert d and all(0 <= v <= 1 for v in d), reg
    # per fold: a teacher (which is also the real-only student) and two students, saved, reloadable (weights_only)
    assert sorted(js["checkpoints"]) == sorted(f"checkpoints/fold{f}_{r}.pt" for f in (0, 1)
                                               for r in ("teacher", "synthetic", "real_plus_synthetic"))
    assert all(f.get("real_student_is_teacher") for f in js["folds"])
    raw = torch.load(out / "checkpoints" / "fold0_teacher.pt", weights_only=True)
    assert raw["format"] == "volgan-segmentation-dynunet-v1" and "state_dict" in raw
    model = SegmentationModel.load(out / "checkpoints" / "fold0_teacher.pt")
    case = js["folds"][0]["test"][0]
    img = read_volume(real / "images" / f"{case}.nii.gz")
    saved = read_label_volume(out / "predictions" / "fold0" / "real" / f"{case}.nii.gz")
    assert np.array_equal(model.predict(img), saved.array) and saved.same_geometry(img)
    assert sorted(model.config["training_cases"]) == sorted(js["folds"][0]["teacher_train"])
    assert not set(model.config["training_cases"]) & set(js["folds"][0]["test"])
    syn_case = js["inputs"]["synthetic_cases_used"][0]
    tl = read_label_volume(out / "teacher_labels" / "fold0" / f"{syn_case}.nii.gz")
    assert np.array_equal(tl.array, model.predict(read_volume(syn / "images" / f"{syn_case}.nii.gz")))
    # nnU-Net v2 raw datasets, one per regime, with the experiment's split
    assert sorted(p.name for p in nn.iterdir()) == ["Dataset042_VolGANCoWReal", "Dataset043_VolGANCoWSynthetic",
                                                     "Dataset044_VolGANCoWRealSynthetic"]
    ds = nn / "Dataset044_VolGANCoWRealSynthetic"
    meta = json.loads((ds / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "TOF-MRA"} and meta["file_ending"] == ".nii.gz"
    assert meta["labels"]["background"] == 0 and meta["labels"]["BA"] == 1 and meta["labels"]["3rd-A2"] == 13
    assert sorted(meta["labels"].values()) == list(range(14))        # nnU-Net needs consecutive labels
    assert meta["volgan_original_label_ids"]["3rd-A2"] == 15
    cases = sorted(p.name[: -len(".nii.gz")] for p in (ds / "labelsTr").iterdir())
    assert meta["numTraining"] == len(cases) == 4 + 2 * 3            # synthetic cases once per fold's teacher
    assert sorted(p.name for p in (ds / "imagesTr").iterdir()) == sorted(f"{c}_0000.nii.gz" for c in cases)
    split = json.loads((ds / "splits_final.json").read_text())
    assert len(split) == 2 and all(set(s) == {"train", "val"} for s in split)
    assert [s["val"] for s in split] == [f["test"] for f in js["folds"]]
    for k, s in enumerate(split):
        assert sorted(c for c in s["train"] if c.startswith("syn_")) == sorted(f"syn_f{k}_{c}" for c in
                                                                               js["inputs"]["synthetic_cases_used"])
    exported = read_label_volume(ds / "labelsTr" / f"syn_f0_{syn_case}.nii.gz")
    assert np.array_equal(exported.array, np.where(tl.array == 15, 13, tl.array))  # fold's teacher labels, 15 → 13
    lab = read_label_volume(ds / "labelsTr" / f"{case}.nii.gz")
    src = read_label_volume(real / "labels" / f"{case}.nii.gz")
    assert lab.same_geometry(src) and np.array_equal(lab.array, src.array)
    im = read_volume(ds / "imagesTr" / f"{case}_0000.nii.gz")
    assert np.allclose(im.array, img.array) and im.same_geometry(img)
    real_split = json.loads((nn / "Dataset042_VolGANCoWReal" / "splits_final.json").read_text())
    assert not any(c.startswith("syn_") for s in real_split for c in s["train"])


@pytest.mark.slow
def test_saved_teacher_or_given_labels_label_the_synthetic_set(phantoms, tiny_run, tmp_path):
    from GANTrainerLib.segmentation import OracleTrainer, run_segmentation_experiment
    from GANTrainerLib.segmentation.network import SegmentationModel

    real, syn = phantoms
    _, out, _ = tiny_run
    ckpt = out / "checkpoints" / "fold1_teacher.pt"
    truth = {p.name.split(".")[0]: read_label_volume(p).array for p in sorted((real / "labels").iterdir())}
    oracle = OracleTrainer(truth)
    res = run_segmentation_experiment(real / "images", real / "labels", syn / "images", tmp_path / "t", folds=2,
                                      teacher=ckpt, trainer=oracle, device="cpu", regimes=("real", "synthetic"),
                                      export_nnunet=tmp_path / "nn")
    assert res["teacher"] == f"checkpoint {ckpt}" and any("training data are unknown" in n for n in res["notes"])
    assert {r.role for r in oracle.requests} == {"real", "synthetic"}  # no teacher trained
    model = SegmentationModel.load(ckpt)
    for r in oracle.requests:                                         # the synthetic student learns the teacher's labels
        if r.role == "synthetic":
            for name, lab, img in zip(r.cases, r.labels, r.images):
                assert name.startswith("syn:") and np.array_equal(lab, model.predict(img))
    for c in res["inputs"]["synthetic_cases_used"]:
        lab = read_label_volume(tmp_path / "t" / "teacher_labels" / f"{c}.nii.gz")
        assert np.array_equal(lab.array, model.predict(read_volume(syn / "images" / f"{c}.nii.gz")))
    split = json.loads((tmp_path / "nn" / "Dataset901_VolGANCoWSynthetic" / "splits_final.json").read_text())
    assert all(sorted(s["train"]) == sorted("syn_" + c for c in res["inputs"]["synthetic_cases_used"]) for s in split)
    with pytest.raises(VolGANError, match="predicts scheme 'topcow13'.*--label-scheme topcow13"):
        run_segmentation_experiment(real / "images", real / "labels", syn / "images", tmp_path / "t2", folds=2,
                                    teacher=ckpt, label_scheme="aydin7", device="cpu")
    # given synthetic labels (joint generation): in the 7-class scheme, converted from the TopCoW files
    truth7 = {k: convert_labels(v, "topcow13", "aydin7") for k, v in truth.items()}
    truth7.update({"syn:" + p.name.split(".")[0]: convert_labels(read_label_volume(p).array, "topcow13", "aydin7")
                   for p in sorted((syn / "labels").iterdir())})
    oracle7 = OracleTrainer(truth7)
    res7 = run_segmentation_experiment(real / "images", real / "labels", syn / "images", tmp_path / "g", folds=2,
                                       synthetic_labels=syn / "labels", label_scheme="aydin7", trainer=oracle7,
                                       device="cpu")
    assert "teacher" not in {r.role for r in oracle7.requests} and len(oracle7.requests) == 2 * 3
    for r in oracle7.requests:                                        # students see the converted given labels
        for name, lab in zip(r.cases, r.labels):
            assert np.array_equal(lab, truth7[name])
    assert all(s["mean_dice"] == 1 for s in res7["summary"].values())
    assert set(res7["summary"]["real"]["per_class"]) == {"BA", "PCA", "ICA", "MCA", "ACA", "Pcom", "Acom"}
    assert res7["summary"]["real"]["variants"] is None and set(res7["summary"]["real"]["detection"]) == {"Pcom", "Acom"}


# ----------------------------------------------------------------------------------------------------------------
# bad input
def _copy_set(src, dst, n=None):
    (dst / "images").mkdir(parents=True)
    (dst / "labels").mkdir()
    for p in sorted((src / "images").iterdir())[:n]:
        write_volume(read_volume(p), dst / "images" / p.name)
        write_volume(read_label_volume(src / "labels" / p.name), dst / "labels" / p.name)
    return dst


def test_bad_inputs_give_one_readable_error(phantoms, tmp_path, capsys):
    from VolGANCore import cli

    real, syn = phantoms
    unknown = _copy_set(real, tmp_path / "unknown")
    lp = sorted((unknown / "labels").iterdir())[1]
    lab = read_label_volume(lp)
    arr = lab.array.copy()
    arr[0, 0, 0] = 13                                          # an id the TopCoW scheme does not use
    write_volume(lab.with_array(arr), lp)
    geom = _copy_set(real, tmp_path / "geom")
    gp = sorted((geom / "labels").iterdir())[0]
    glab = read_label_volume(gp)
    write_volume(glab.with_array(glab.array, spacing=(1.0, 1.0, 1.0)), gp)
    nolab = _copy_set(real, tmp_path / "nolab")
    missing = sorted((nolab / "labels").iterdir())[2]
    missing.unlink()
    (tmp_path / "empty").mkdir()
    (tmp_path / "coarse").mkdir()
    first = read_volume(sorted((syn / "images").iterdir())[0])
    write_volume(first.with_array(first.array, spacing=(1.2, 1.2, 1.2)), tmp_path / "coarse" / "gen_0.nii.gz")
    cases = {
        "spacing": (real, tmp_path / "coarse", [], "gen_0.nii.gz: spacing (1.2, 1.2, 1.2) mm differs"),
        "unknown id": (unknown, syn / "images", [], f"{lp}: unknown label id(s) [13]"),
        "geometry": (geom, syn / "images", [], f"{gp}: geometry differs from its image"),
        "missing label": (nolab, syn / "images", [], f"{missing.name.split('.')[0]}.* in"),
        "empty synthetic": (real, tmp_path / "empty", [], "no volumes found"),
        "too many folds": (real, syn / "images", ["--folds", "9"], "use at most 4 folds"),
        "too many real": (real, syn / "images", ["--folds", "2", "--n-real", "3"], "--n-real ≤ 2"),
        "both label sources": (real, syn / "images", ["--teacher", tmp_path / "t.pt", "--synthetic-labels",
                                                      syn / "labels"], "either --synthetic-labels or --teacher"),
        "bad teacher": (real, syn / "images", ["--folds", "2", "--teacher", real / "manifest.json"],
                        "segmentation checkpoint"),
    }
    for name, (rset, synthetic, extra, needle) in cases.items():
        out = tmp_path / f"out_{name.replace(' ', '_')}"
        argv = ["--quiet", "segmentation-experiment", "--real-images", rset / "images", "--real-labels",
                rset / "labels", "--synthetic", synthetic, "--device", "cpu", "--epochs", "1", *extra, "--out", out]
        rc = cli.main([str(a) for a in argv])
        err = capsys.readouterr().err
        assert rc == 2, (name, err)
        assert err.startswith("volgan segmentation-experiment: error: ") and err.strip().count("\n") == 0, name
        assert needle in err, (name, err)
        assert not out.exists(), name


@pytest.mark.slow
def test_volgan_segment_labels_a_folder_with_a_saved_teacher(phantoms, tiny_run, tmp_path, capsys):
    """`volgan segment`: the teacher's own predictions, in its scheme; a volume at another spacing is one line,
    exit 2, and no output folder."""
    from GANTrainerLib.segmentation.network import SegmentationModel
    from VolGANCore.cli import main

    real, syn = phantoms
    _, out, _ = tiny_run
    ckpt = out / "checkpoints" / "fold1_teacher.pt"
    model = SegmentationModel.load(ckpt)
    assert main(["segment", "--model", str(ckpt), "--images", str(syn / "images"), "--out", str(tmp_path / "lab"),
                 "--device", "cpu"]) == 0
    images = sorted((syn / "images").iterdir())
    assert len(list((tmp_path / "lab").iterdir())) == len(images) >= 2
    for p in images:
        lab = read_label_volume(tmp_path / "lab" / p.name, scheme="topcow13")  # ids checked against the scheme
        assert np.array_equal(lab.array, model.predict(read_volume(p)))
    bad = tmp_path / "bad"
    vol = read_volume(images[0])
    write_volume(vol.with_array(vol.array, spacing=tuple(2 * s for s in vol.spacing)), bad / "x.nii.gz")
    capsys.readouterr()
    assert main(["segment", "--model", str(ckpt), "--images", str(bad), "--out", str(tmp_path / "o2")]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]  # progress lines aside
    assert len(err) == 1 and "x.nii.gz" in err[0] and "trained at (2.4, 2.4, 2.4) mm" in err[0]
    assert not (tmp_path / "o2").exists()


def test_the_generated_labels_regime_runs_next_to_the_teacher_labels_one(phantoms, tmp_path):
    """synthetic-generated students learn the synthetic volumes' own labels while the synthetic students learn
    the fold teacher's; asked for without generated labels it is one clear error."""
    from GANTrainerLib.segmentation import OracleTrainer, run_segmentation_experiment

    real, syn = phantoms
    truth = {p.name.split(".")[0]: read_label_volume(p).array for p in sorted((real / "labels").iterdir())}
    teacher_view = {"syn:" + p.name.split(".")[0]: read_label_volume(p).array for p in sorted((syn / "labels").iterdir())}
    given = tmp_path / "given"  # the "generated" labels differ from the teacher's: no Acom (id 10)
    for p in sorted((syn / "labels").iterdir()):
        lab = read_label_volume(p)
        write_volume(lab.with_array(np.where(lab.array == 10, 0, lab.array).astype(np.int16)), given / p.name)
    oracle = OracleTrainer({**truth, **teacher_view})
    res = run_segmentation_experiment(real / "images", real / "labels", syn / "images", tmp_path / "e", folds=2,
                                      synthetic_labels=given, trainer=oracle, device="cpu",
                                      regimes=("real", "synthetic", "synthetic-generated"), export_nnunet=tmp_path / "nn")
    roles = [r.role for r in oracle.requests]
    assert roles.count("teacher") == 2 and roles.count("synthetic-generated") == 2  # one per fold
    for r in oracle.requests:
        for name, lab in zip(r.cases, r.labels):
            if r.role == "synthetic-generated":
                assert not (lab == 10).any() and np.array_equal(lab, np.where(teacher_view[name] == 10, 0,
                                                                               teacher_view[name]))
            elif r.role == "synthetic":
                assert np.array_equal(lab, teacher_view[name])            # the teacher's labels
    assert set(res["summary"]) == {"real", "synthetic", "synthetic-generated"}
    assert (tmp_path / "e" / "teacher_labels").is_dir()
    gen_set = tmp_path / "nn" / res["nnunet"]["synthetic-generated"]["folder"].split("/")[-1]
    exported = sorted(p.name for p in (gen_set / "labelsTr").iterdir() if p.name.startswith("syn_gen_"))
    assert len(exported) == 3  # the synthetic volumes with their given labels, under their own names
    split = json.loads((gen_set / "splits_final.json").read_text())
    assert all(any(n.startswith("syn_gen_") for n in s["train"]) for s in split)
    with pytest.raises(VolGANError, match="no generated labels"):
        run_segmentation_experiment(real / "images", real / "labels", syn / "images", tmp_path / "f", folds=2,
                                    trainer=OracleTrainer(truth), device="cpu",
                                    regimes=("synthetic", "synthetic-generated"))
    assert not (tmp_path / "f").exists()
