"""The downstream experiment's ``paper`` scoring: EvaluateSegmentation's HDRFDST@0.95 in voxels (hand-computed and
against a transcription of its HausdorffDistanceMetric algorithm inside this test), the paper's absent-class rule,
SD over cases, and the experiment/report with either scoring."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from VolGANCore import VolGANError, read_label_volume


def _evaluatesegmentation_hdrfdst(gt: np.ndarray, pred: np.ndarray, quantile: float, rng=None) -> float:
    """EvaluateSegmentation's HausdorffDistanceMetric (calc0 + CalcHausdorffDistace), -unit voxel, transcribed.

    Voxels of the ground truth not in the prediction search the prediction's voxels, and voxels of the prediction
    not in the ground truth search the ground truth's, alternately, sharing one running maximum; with ``rng`` the
    four lists are shuffled (the tool's ``shuttle`` with ``srand(time)``) and a search stops at the first candidate
    closer than the running maximum, as the tool does; without ``rng`` every search is complete."""
    fn = np.argwhere(gt & ~pred).astype(float)
    fp = np.argwhere(pred & ~gt).astype(float)
    cand_1, cand_2 = np.argwhere(pred).astype(float), np.argwhere(gt).astype(float)
    if rng is not None:
        for a in (fn, fp, cand_1, cand_2):
            rng.shuffle(a)
    distances, globalmax = [], 0.0
    i1 = i2 = 0
    while i1 < len(fn) or i2 < len(fp):
        for pts, cands, idx in ((fn, cand_1, i1), (fp, cand_2, i2)):
            if idx >= len(pts):
                continue
            best = 1e8
            for c in cands:
                d = math.sqrt(float(np.sum((c - pts[idx]) ** 2)))
                best = min(best, d)
                if rng is not None and d < globalmax:
                    break
            distances.append(best)
            globalmax = max(globalmax, best)
        i1, i2 = i1 + 1, i2 + 1
    if quantile < 1 and len(distances) > 1:
        distances.sort()
        return distances[int(quantile * (len(distances) - 1))]
    return globalmax


def test_hdrfdst_hand_computed_whole_masks_pooled_nearest_rank():
    from GANTrainerLib.segmentation.metrics import hd95_per_class, hdrfdst_voxels

    gt = np.zeros((3, 3, 24), bool)
    gt[1, 1, 0:10] = True                          # a 10-voxel line
    pred = np.zeros_like(gt)
    pred[1, 1, 0:5] = True                         # its first half …
    pred[1, 1, 20] = True                          # … and a stray voxel 11 past its end
    # ground truth outside the prediction (w = 5…9) → nearest prediction voxel (w = 4): 1, 2, 3, 4, 5;
    # prediction outside the ground truth (w = 20) → nearest ground truth (w = 9): 11. Pooled and sorted:
    # [1, 2, 3, 4, 5, 11]; element int(0.95 · 5) = 4 → 5 voxels.
    assert hdrfdst_voxels(pred, gt) == 5.0
    # the volgan scoring's surface HD95 of the same masks differs (the larger directed linear 95th percentile:
    # [0]*5 + [11] → 8.25), not only by its unit
    assert hd95_per_class(pred.astype(np.int16), gt.astype(np.int16), [1], (1.0, 1.0, 1.0))[0] == pytest.approx(8.25)
    assert hdrfdst_voxels(pred, gt, quantile=1.0) == 11.0            # HDRFDST without a quantile: the maximum
    assert hdrfdst_voxels(gt, gt) == 0.0                              # nothing outside the overlap
    one = gt.copy()
    one[1, 2, 3] = True                                               # a single extra voxel: n = 1 → its distance
    assert hdrfdst_voxels(one, gt) == 1.0
    with pytest.raises(VolGANError, match="both masks must hold at least one voxel"):
        hdrfdst_voxels(np.zeros_like(gt), gt)


@pytest.mark.slow
def test_hdrfdst_equals_the_transcribed_algorithm_without_early_stopping(rng):
    from scipy.ndimage import gaussian_filter

    from GANTrainerLib.segmentation.metrics import hdrfdst_voxels

    for k in range(12):
        shape = tuple(int(n) for n in rng.integers(5, 10, 3))
        gt = gaussian_filter(rng.random(shape), 0.8) > 0.5
        pred = gaussian_filter(rng.random(shape), 0.8) > 0.5
        if not gt.any() or not pred.any():
            continue
        for q in (0.95, 0.5, 1.0):
            assert hdrfdst_voxels(pred, gt, q) == pytest.approx(_evaluatesegmentation_hdrfdst(gt, pred, q), abs=1e-12)


@pytest.mark.slow
def test_the_tools_randomised_early_stop_can_only_raise_the_value(rng):
    """EvaluateSegmentation's own search (shuffled, stops early): its HDRFDST@0.95 is ≥ ours, its HD equal."""
    from GANTrainerLib.segmentation.metrics import hdrfdst_voxels

    raised = 0
    for k in range(10):
        shape = (6, 7, 8)
        gt = rng.random(shape) > 0.55
        pred = rng.random(shape) > 0.55
        ours = hdrfdst_voxels(pred, gt)
        for trial in range(3):
            tool = _evaluatesegmentation_hdrfdst(gt, pred, 0.95, np.random.default_rng([k, trial]))
            assert tool >= ours - 1e-12
            raised += tool > ours + 1e-12
        assert _evaluatesegmentation_hdrfdst(gt, pred, 1.0, np.random.default_rng(k)) == pytest.approx(
            hdrfdst_voxels(pred, gt, 1.0))
    assert raised > 0                                 # the early stop does change the percentile in practice


def test_paper_absent_class_rule_and_score_case_keys():
    from GANTrainerLib.segmentation.metrics import paper_scores_per_class, score_case

    gt = np.zeros((8, 10, 12), np.int16)
    gt[2:4, 2:4, 2:4] = 1                          # BA: in both, identical
    gt[5, 5, 5:9] = 4                              # R-ICA: missed by the prediction
    pred = np.where(gt == 4, 0, gt)
    pred[6, 1, 1] = 5                              # R-MCA: false positive
    pred[2, 6, 6:9] = 6                            # L-ICA: in both, shifted by one voxel along D
    gt[3, 6, 6:9] = 6
    dice, hd = paper_scores_per_class(pred, gt, [1, 4, 5, 6, 10])
    assert dice[0] == 1 and hd[0] == 0
    assert np.isnan(dice[1]) and np.isnan(hd[1])                      # missed: no scores (not Dice 0)
    assert np.isnan(dice[2]) and np.isnan(hd[2])                      # false positive: no scores
    assert dice[3] == 0 and hd[3] == 1.0                              # overlap 0, each voxel 1 away
    assert np.isnan(dice[4])                                          # absent from both
    sp = (0.6, 0.3, 0.3)
    paper = score_case(pred, gt, sp, "topcow13", "paper")
    volgan = score_case(pred, gt, sp, "topcow13")
    assert "hd95_vox" in paper and "hd95_mm" not in paper and "hd95_mm" in volgan
    assert paper["hd95_vox"]["L-ICA"] == 1.0 and volgan["hd95_mm"]["L-ICA"] == pytest.approx(0.6)   # voxels vs mm
    assert paper["mean_dice"] == pytest.approx(0.5)                   # (BA 1 + L-ICA 0) / 2; volgan counts 0s
    assert volgan["mean_dice"] == pytest.approx(1 / 4)
    assert paper["topcow"]["dice"]["cls_avg"] == volgan["topcow"]["dice"]["cls_avg"]   # the suite is scoring-free
    with pytest.raises(VolGANError, match="scoring: choose one of"):
        score_case(pred, gt, sp, "topcow13", "exact")


def test_paper_summary_is_mean_and_sd_over_cases():
    from GANTrainerLib.segmentation.experiment import summarise

    def row(case, fold, dice_ba, hd_ba):
        det = {n: {"in_gt": False, "in_pred": False, "iou": float("nan"), "detected": None, "false_positive": False}
               for n in ("Pcom", "Acom")}
        dice = {n: float("nan") for n in ("BA", "PCA", "ICA", "MCA", "ACA", "Pcom", "Acom")}
        hd = dict(dice)
        dice["BA"], hd["BA"] = dice_ba, hd_ba
        return {"case": case, "fold": fold, "regime": "real", "dice": dice, "hd95_vox": hd, "mean_dice": dice_ba,
                "mean_hd95_vox": hd_ba, "detection": det, "variants": None}

    rows = [row("a", 0, 0.5, 2.0), row("b", 0, 1.0, 0.0), row("c", 1, 0.9, 1.0), row("d", 1, float("nan"), float("nan"))]
    s = summarise(rows, "aydin7", ["real"], 2, "paper")["real"]
    ba = s["per_class"]["BA"]
    assert ba["dice_mean"] == pytest.approx(0.8) and ba["dice_sd"] == pytest.approx(np.std([0.5, 1.0, 0.9], ddof=1))
    assert ba["hd95_vox_mean"] == pytest.approx(1.0) and ba["hd95_vox_sd"] == pytest.approx(1.0)
    assert ba["n_cases"] == 3 and "hd95_mm_mean" not in ba
    assert s["mean_dice"] == pytest.approx(0.8) and s["mean_hd95_vox"] == pytest.approx(1.0)
    v = summarise([{**r, "hd95_mm": r["hd95_vox"], "mean_hd95_mm": r["mean_hd95_vox"]} for r in rows],
                  "aydin7", ["real"], 2)["real"]["per_class"]["BA"]
    # volgan: mean of the fold means (0.75 and 0.9), SD over the two folds
    assert v["dice_mean"] == pytest.approx(0.825) and v["dice_sd"] == pytest.approx(np.std([0.75, 0.9], ddof=1))


@pytest.fixture(scope="module")
def cow_sets(tmp_path_factory):
    from VolumetricGANLib.phantoms import write_cow_dataset

    root = tmp_path_factory.mktemp("paper")
    real = write_cow_dataset(root / "real", n=4, seed=0, shape=(16, 32, 32), spacing_mm=2.4)
    syn = write_cow_dataset(root / "syn", n=2, seed=1, shape=(16, 32, 32), spacing_mm=2.4)
    return real, syn


def _shifted_mca(lab: np.ndarray) -> np.ndarray:
    """The label map with its L-MCA moved one voxel along W (into background only): imperfect, known."""
    lab = lab.copy()
    mca = lab == 7
    lab[mca] = 0
    moved = np.zeros_like(mca)
    moved[:, :, 1:] = mca[:, :, :-1]
    lab[moved & (lab == 0)] = 7
    return lab


class _ShiftTrainer:
    """A stand-in network that returns :func:`_shifted_mca` of the known label map of each case (synthetic
    cases under "syn:<case>")."""

    def __init__(self, truth):
        self.truth = truth

    def __call__(self, req):
        return lambda image, case: _shifted_mca(self.truth[case])


@pytest.mark.parametrize("scoring", ["paper", "volgan"])
def test_experiment_report_with_either_scoring_and_the_topcow_suite(cow_sets, tmp_path, scoring):
    from GANTrainerLib.segmentation import run_segmentation_experiment

    real, syn = cow_sets
    truth = {p.name.split(".")[0]: read_label_volume(p).array for p in sorted((real / "labels").iterdir())}
    truth.update({"syn:" + p.name.split(".")[0]: read_label_volume(p).array for p in sorted((syn / "labels").iterdir())})
    res = run_segmentation_experiment(real / "images", real / "labels", syn / "images", tmp_path / "out", folds=2,
                                      trainer=_ShiftTrainer(truth), device="cpu", scoring=scoring,
                                      regimes=("real", "synthetic"), save_predictions=False)
    hd = "hd95_vox" if scoring == "paper" else "hd95_mm"
    s = res["summary"]["real"]
    assert res["settings"]["scoring"] == scoring
    assert s["per_class"]["BA"]["dice_mean"] == 1 and s["per_class"]["BA"][f"{hd}_mean"] == 0
    mca = s["per_class"]["L-MCA"]
    assert 0 < mca["dice_mean"] < 1 and mca[f"{hd}_mean"] > 0
    if scoring == "paper":       # each held-out case once: the tool's algorithm (complete search) per case
        cases = [truth[c] for c in res["inputs"]["real_cases"]]
        expect = [_evaluatesegmentation_hdrfdst(g == 7, _shifted_mca(g) == 7, 0.95) for g in cases]
        assert mca["hd95_vox_mean"] == pytest.approx(np.mean(expect))
        assert mca["hd95_vox_sd"] == pytest.approx(np.std(expect, ddof=1)) and mca["n_cases"] == 4
    suite = s["topcow"]
    assert suite["n_cases"] == 4 and suite["dice"]["per_class"]["BA"]["mean"] == 1
    assert suite["hd95"]["per_class"]["L-MCA"]["mean"] >= 2.4 - 1e-9        # at least one voxel of 2.4 mm
    assert suite["b0_error"]["per_class"]["BA"]["mean"] == 0 and suite["cldice"]["per_class"]["BA"]["mean"] == 1
    assert suite["detection"]["mean_f1"] >= 0 and set(suite["variant_balanced_accuracy"]) == {"anterior", "posterior"}
    md = (tmp_path / "out" / "results.md").read_text()
    assert ("## HDRFDST@0.95 per class (voxels)" in md) == (scoring == "paper")
    assert ("## HD95 per class (mm)" in md) == (scoring == "volgan")
    assert "## TopCoW 2023 metric suite" in md and "Topology match rate, anterior" in md
    assert ("missing from the prediction or from the ground truth is not scored" in md) == (scoring == "paper")
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["summary"]["real"]["topcow"]["dice"]["merged"]["mean"] == pytest.approx(suite["dice"]["merged"]["mean"])
    assert saved["cases"][0]["topcow"]["classes"]


def test_the_panel_logic_loads_paper_scored_results_and_the_topcow_table(headless, cow_sets, tmp_path):
    from GANTrainerLib.segmentation import run_segmentation_experiment
    from GANTrainerSceneLogic import GANTrainerSceneLogic
    from VolGANCore import mrml

    real, syn = cow_sets
    truth = {p.name.split(".")[0]: read_label_volume(p).array for p in sorted((real / "labels").iterdir())}
    truth.update({"syn:" + p.name.split(".")[0]: read_label_volume(p).array for p in sorted((syn / "labels").iterdir())})
    out = tmp_path / "out"
    res = run_segmentation_experiment(real / "images", real / "labels", syn / "images", out, folds=2,
                                      trainer=_ShiftTrainer(truth), device="cpu", scoring="paper",
                                      regimes=("real",), save_predictions=False)
    loaded = GANTrainerSceneLogic(headless.scene).loadSegmentationExperiment(out)
    rows = mrml.rows_from_table(loaded.tables["per_class"])
    mca = next(r for r in rows if r["class"] == "L-MCA")
    assert "HD95 mean (mm)" not in mca
    assert mca["HD95 mean (voxels)"] == pytest.approx(res["summary"]["real"]["per_class"]["L-MCA"]["hd95_vox_mean"])
    topcow = {r["metric"]: r for r in mrml.rows_from_table(loaded.tables["topcow"])}
    suite = res["summary"]["real"]["topcow"]
    assert topcow["clDice, merged tree"]["mean"] == pytest.approx(suite["cldice"]["merged"]["mean"])
    assert topcow["HD95 (mm), class average"]["SD"] == pytest.approx(suite["hd95"]["cls_avg"]["sd"])
    assert topcow["topology match rate, posterior"]["mean"] == pytest.approx(suite["topology_match_rate"]["posterior"])
    assert len(topcow) == 8 + 1 + 4 and all(r["regime"] == "real" for r in topcow.values())
