"""The TopCoW 2023 metric suite (GANTrainerLib.segmentation.topcow): every metric on hand-made cases with known
answers, HD95 against the challenge's SimpleITK pipeline (transcribed here from its definition), and
``volgan evaluate-segmentation`` on files and folders with its errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from VolGANCore import Volume, read_label_volume, write_volume

TOPCOW_CROP = ("data", "topcow", "topcow_mr_roi_003_labels.nii.gz")


def _line(shape, start, stop, label=1, at=(1, 1)):
    """A one-voxel-thin line along W at (D, H) = ``at`` from ``start`` to ``stop``."""
    a = np.zeros(shape, np.int16)
    a[at[0], at[1], start:stop] = label
    return a


# ----------------------------------------------------------------------------------------------------------------
# clDice, Betti-0, HD95
def test_cldice_of_thin_lines_and_empty_masks():
    from GANTrainerLib.segmentation.topcow import cldice

    gt = _line((3, 3, 14), 1, 11) > 0         # a 10-voxel centreline: its own skeleton
    half = _line((3, 3, 14), 1, 6) > 0        # the first 5 voxels of it
    assert cldice(gt, gt) == 1.0
    # Tprec = |S(P) ∩ G| / |S(P)| = 5/5, Tsens = |S(G) ∩ P| / |S(G)| = 5/10 → 2·1·0.5 / 1.5
    assert cldice(half, gt) == pytest.approx(2 / 3)
    assert cldice(gt, half) == pytest.approx(2 / 3)               # symmetric
    far = _line((3, 3, 14), 12, 14) > 0                       # disjoint from the half line
    assert cldice(far, half) == 0.0
    assert cldice(np.zeros_like(gt), gt) == 0.0                   # empty prediction: both ratios 0
    assert cldice(np.zeros_like(gt), np.zeros_like(gt)) == 0.0
    bar = np.zeros((6, 6, 14), bool)
    bar[2:4, 2:4, 1:12] = True                    # two voxels thick: Lee's thinning deletes it entirely …
    assert cldice(bar, bar) == 0.0                # … so the definition scores even a perfect match 0 (documented)


def test_cldice_is_topology_aware_where_dice_is_not():
    """A thick tube cut by a one-voxel gap keeps a Dice near 1 but loses the skeleton across the gap."""
    from GANTrainerLib.segmentation.topcow import cldice

    gt = np.zeros((7, 7, 30), bool)
    gt[2:5, 2:5, 2:28] = True
    cut = gt.copy()
    cut[:, :, 15] = False
    dice = 2 * np.count_nonzero(cut & gt) / (cut.sum() + gt.sum())
    assert dice > 0.97
    assert cldice(cut, gt) < dice


def test_betti0_counts_26_connected_components():
    from GANTrainerLib.segmentation.topcow import betti0

    a = np.zeros((5, 5, 5), bool)
    a[1, 1, 1] = a[2, 2, 2] = True                # corner-touching: one 26-component
    assert betti0(a) == 1
    a[4, 4, 4] = True                             # a gap of one voxel: a second component
    assert betti0(a) == 2
    assert betti0(np.zeros((3, 3, 3), bool)) == 0


def test_hd95_hand_computed_linear_percentile_and_max_of_both_directions():
    from GANTrainerLib.segmentation.topcow import HD95_UPPER_BOUND, hd95_topcow

    gt = _line((3, 5, 22), 0, 20)             # 20 voxels along W at (1, 1)
    pred = gt.copy()
    pred[1, 1, 19] = 0
    pred[1, 3, 19] = 1                            # the last voxel moved 2 voxels along H
    # thin lines: every voxel is a surface voxel. G→P: 19 zeros and 1 (voxel 19 → its neighbour 18);
    # P→G: 19 zeros and 2. numpy's linear 95th percentile of 20 values sits at 18.05 → 0.05 and 0.1.
    hd95, hd = hd95_topcow(pred, gt, (1.0, 1.0, 1.0))
    assert hd95 == pytest.approx(0.1) and hd == pytest.approx(2.0)
    sp = (2.0, 0.5, 0.25)                         # anisotropic: one voxel each, 3 voxels apart along W
    a, b = np.zeros((4, 6, 9), bool), np.zeros((4, 6, 9), bool)
    a[2, 3, 4], b[2, 3, 7] = True, True
    assert hd95_topcow(a, b, sp) == pytest.approx((0.75, 0.75))
    assert hd95_topcow(np.zeros_like(a), b, sp) == (HD95_UPPER_BOUND, HD95_UPPER_BOUND) == (90.0, 90.0)


def _challenge_hd95(gt: np.ndarray, pred: np.ndarray, spacing_dhw) -> float:
    """The challenge's HD95 pipeline in SimpleITK (pad, LabelContour fully connected, |SignedMaurerDistanceMap| of
    the other contour with image spacing, numpy 95th percentile per direction, the larger one)."""
    import SimpleITK as sitk

    def image(m):
        img = sitk.GetImageFromArray(m.astype(np.uint8))
        img.SetSpacing([float(s) for s in reversed(spacing_dhw)])
        return sitk.ConstantPad(img, [1, 1, 1], [1, 1, 1], 0)

    def contour(img):
        c = sitk.LabelContour(img, fullyConnected=True)
        return c, sitk.Abs(sitk.SignedMaurerDistanceMap(c, squaredDistance=False, useImageSpacing=True))

    cg, dg = contour(image(gt))
    cp, dp = contour(image(pred))
    g2p = sitk.GetArrayFromImage(dp)[sitk.GetArrayFromImage(cg) > 0]
    p2g = sitk.GetArrayFromImage(dg)[sitk.GetArrayFromImage(cp) > 0]
    return max(float(np.percentile(g2p, 95)), float(np.percentile(p2g, 95)))


def test_hd95_agrees_with_the_challenge_simpleitk_pipeline(rng):
    from scipy.ndimage import gaussian_filter

    from GANTrainerLib.segmentation.topcow import hd95_topcow

    for k in range(25):
        shape = tuple(int(n) for n in rng.integers(6, 14, 3))
        sp = tuple(float(s) for s in rng.uniform(0.3, 1.6, 3))
        if k % 2:   # irregular, many thin parts
            gt, pred = rng.random(shape) > rng.uniform(0.3, 0.7), rng.random(shape) > rng.uniform(0.3, 0.7)
        else:       # smooth blobs
            gt = gaussian_filter(rng.random(shape), 1.0) > 0.5
            pred = gaussian_filter(rng.random(shape), 1.0) > 0.5
        if not gt.any() or not pred.any():
            continue
        assert hd95_topcow(pred, gt, sp)[0] == pytest.approx(_challenge_hd95(gt, pred, sp), abs=1e-4), k


def test_hd95_agrees_with_the_challenge_on_the_real_topcow_crop():
    from conftest import shared_file

    from GANTrainerLib.segmentation.topcow import hd95_topcow

    g = read_label_volume(shared_file(*TOPCOW_CROP), scheme="topcow13")
    pred = np.roll(g.array, 2, axis=1)
    pred[:, :, :40] = 0
    for cid in (1, 4, 7, 8, 11):
        ours = hd95_topcow(pred == cid, g.array == cid, g.array_spacing)[0]
        assert ours == pytest.approx(_challenge_hd95(g.array == cid, pred == cid, g.array_spacing), abs=1e-4), cid
    assert hd95_topcow(pred > 0, g.array > 0, g.array_spacing)[0] == pytest.approx(
        _challenge_hd95(g.array > 0, pred > 0, g.array_spacing), abs=1e-4)


# ----------------------------------------------------------------------------------------------------------------
# detection, balanced accuracy, topology
def test_detection_outcomes_and_f1_aggregation():
    from GANTrainerLib.segmentation.topcow import detection_outcome, topcow_aggregate

    gt = np.zeros((4, 4, 40), np.int16)
    pred = gt.copy()
    gt[1, 1, 0:20] = 10
    pred[1, 1, 15:20] = 10                        # IoU 5/20 = 0.25 → TP (≥)
    gt[2, 2, 0:20] = 8
    pred[2, 2, 16:20] = 8                         # IoU 0.2 → FN
    pred[3, 3, 0:3] = 9                           # absent from the ground truth, predicted → FP
    assert [detection_outcome(pred, gt, i) for i in (10, 8, 9, 15)] == ["TP", "FN", "FP", "TN"]

    def case(outcomes):                           # the fields topcow_aggregate reads for detection
        base = {"classes": [], "dice": {"cls_avg": 0, "merged": 0}, "cldice": {"cls_avg": 0, "merged": 0},
                "b0_error": {"cls_avg": 0, "merged": 0}, "hd95": {"cls_avg": 0, "merged": 0},
                "graph": {r: {"gt": [1, 1, 1, 1], "pred": [1, 1, 1, 1]} for r in ("anterior", "posterior")},
                "topology": {r: {"match": True} for r in ("anterior", "posterior")}}
        return {**base, "detection": dict(zip(("R-Pcom", "L-Pcom", "Acom", "3rd-A2"), outcomes))}

    agg = topcow_aggregate([case(["TP", "TP", "FN", "TN"]), case(["TP", "FP", "FN", "TN"]),
                            case(["FP", "TN", "TP", "TN"]), case(["FN", "TN", "TP", "TN"])])
    det = agg["detection"]
    # R-Pcom: TP 2, FP 1, FN 1 → P 2/3, R 2/3, F1 = 2·2/(4+1+1); L-Pcom: TP 1, FP 1 → F1 2/3, recall 1
    assert (det["R-Pcom"]["TP"], det["R-Pcom"]["FP"], det["R-Pcom"]["FN"]) == (2, 1, 1)
    assert det["R-Pcom"]["f1"] == pytest.approx(2 / 3) and det["R-Pcom"]["precision"] == pytest.approx(2 / 3)
    assert det["L-Pcom"]["f1"] == pytest.approx(2 / 3) and det["L-Pcom"]["recall"] == 1.0
    assert det["Acom"]["f1"] == pytest.approx(2 * 2 / (4 + 0 + 2))
    assert det["3rd-A2"]["f1"] == 0.0 and det["3rd-A2"]["TN"] == 4           # never present: 0 by their rule
    assert det["mean_f1"] == pytest.approx(np.mean([2 / 3, 2 / 3, 2 / 3, 0.0]))


def test_balanced_accuracy_is_mean_recall_over_true_classes():
    from GANTrainerLib.segmentation.topcow import balanced_accuracy

    # recall A = 1/2, B = 2/3; C is only predicted and does not enter the mean (sklearn's balanced_accuracy_score)
    assert balanced_accuracy(list("AABBB"), list("ABBBC")) == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert balanced_accuracy(list("AAAB"), list("AAAB")) == 1.0
    assert math.isnan(balanced_accuracy([], []))


def test_topology_match_on_the_real_topcow_crop():
    from conftest import shared_file

    from GANTrainerLib.segmentation.topcow import label_neighbours, lr_flipped, topcow_case, topology_match

    g = read_label_volume(shared_file(*TOPCOW_CROP), scheme="topcow13")
    gt = g.array
    same = topology_match(gt.copy(), gt, "anterior", g.direction)
    assert same["match"] and not same["lr_flipped"]
    assert same["labels"]["Acom"]["neighbours"][0] == label_neighbours(gt, 10) == [11, 12]   # Acom joins both ACAs
    assert topology_match(gt.copy(), gt, "posterior", g.direction)["match"]
    # Acom missed: detection FN breaks the anterior match only
    no_acom = np.where(gt == 10, 0, gt)
    assert not topology_match(no_acom, gt, "anterior")["match"]
    assert topology_match(no_acom, gt, "posterior")["match"]
    # an extra island of L-PCA: Betti-0 differs → posterior fails, detection still TP
    island = gt.copy()
    island[0, 0, 0] = 3
    t = topology_match(island, gt, "posterior")
    assert not t["match"] and t["labels"]["L-PCA"]["b0"] == [1, 2] and t["labels"]["L-PCA"]["detection"] == "TP"
    # left and right PCAs swapped: flipped, no match; the ground truth itself is not flipped
    swapped = gt.copy()
    swapped[gt == 2], swapped[gt == 3] = 3, 2
    assert lr_flipped(swapped, "posterior") and not lr_flipped(gt, "posterior")
    assert not topology_match(swapped, gt, "posterior")["match"]
    # the same array stored right-to-left (direction's x axis reversed) reads as flipped: the rule follows the
    # image's orientation, not its index order
    ras = np.diag([-1.0, 1.0, 1.0])
    assert lr_flipped(gt, "posterior", ras) and not lr_flipped(swapped, "posterior", ras)
    # the whole case: both regions of a perfect prediction match; graphs are cow_variants' vectors
    res = topcow_case(gt.copy(), gt, g.array_spacing, "topcow13", g.direction)
    assert res["topology"]["anterior"]["match"] and res["topology"]["posterior"]["match"]
    assert res["graph"]["anterior"]["gt"] == res["graph"]["anterior"]["pred"] == [0, 1, 0, 1]


def test_case_metrics_union_of_labels_and_class_averages():
    from GANTrainerLib.segmentation.topcow import topcow_case

    gt = np.zeros((6, 8, 30), np.int16)
    gt[1:4, 1:4, 2:12] = 1                        # BA (3×3×10): predicted exactly
    gt[1:4, 4:7, 2:12] = 4                        # R-ICA, touching BA: missed
    pred = gt.copy()
    pred[gt == 4] = 0
    pred[1:4, 1:4, 20:24] = 5                     # R-MCA: only in the prediction
    r = topcow_case(pred, gt, (1.0, 1.0, 1.0))
    assert r["classes"] == ["BA", "R-ICA", "R-MCA"]                 # Acom etc.: absent from both, not scored
    assert r["dice"]["BA"] == 1 and r["dice"]["R-ICA"] == 0 and r["dice"]["R-MCA"] == 0
    assert r["dice"]["cls_avg"] == pytest.approx(1 / 3)
    assert r["hd95"]["BA"] == 0 and r["hd95"]["R-ICA"] == 90 and r["hd95"]["R-MCA"] == 90
    assert r["hd95"]["cls_avg"] == pytest.approx(60)
    assert r["b0_error"]["R-MCA"] == 1 and r["b0_error"]["BA"] == 0 and r["b0_error"]["cls_avg"] == pytest.approx(2 / 3)
    assert r["cldice"]["BA"] == 1 and r["cldice"]["R-ICA"] == 0 and r["cldice"]["cls_avg"] == pytest.approx(1 / 3)
    # merged tree: gt 180 voxels, prediction 90 + 36, overlap 90
    assert r["dice"]["merged"] == pytest.approx(2 * 90 / (180 + 126))
    assert r["b0_error"]["merged"] == 1                             # gt one tree, prediction two pieces
    assert r["detection"] == {"R-Pcom": "TN", "L-Pcom": "TN", "Acom": "TN", "3rd-A2": "TN"}
    empty = topcow_case(np.zeros_like(gt), np.zeros_like(gt), (1.0, 1.0, 1.0))
    assert empty["classes"] == [] and empty["dice"] == {"cls_avg": 0.0, "merged": 0.0}
    from VolGANCore import convert_labels

    aydin = topcow_case(convert_labels(pred, "topcow13", "aydin7"), convert_labels(gt, "topcow13", "aydin7"),
                        (1.0, 1.0, 1.0), "aydin7")
    assert aydin["classes"] == ["BA", "ICA", "MCA"] and aydin["detection"] is None and aydin["topology"] is None


# ----------------------------------------------------------------------------------------------------------------
# volgan evaluate-segmentation
@pytest.fixture(scope="module")
def label_folders(tmp_path_factory):
    from VolumetricGANLib.phantoms import write_cow_dataset

    root = tmp_path_factory.mktemp("evalseg")
    ds = write_cow_dataset(root / "cow", n=3, seed=0, shape=(16, 32, 32), spacing_mm=2.4)
    gt = ds / "labels"
    pred = root / "pred"
    for k, p in enumerate(sorted(gt.iterdir())):
        lab = read_label_volume(p)
        arr = lab.array.copy()
        if k == 1:
            arr[arr == 8] = 0                     # case 1 (it has an R-Pcom) misses it
        write_volume(lab.with_array(arr), pred / p.name)
    return pred, gt


def test_evaluate_segmentation_folders_text_and_json(label_folders, capsys):
    from VolGANCore import cli

    pred, gt = label_folders
    assert cli.main(["--quiet", "evaluate-segmentation", "--pred", str(pred), "--gt", str(gt), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["kind"] == "volgan-segmentation-evaluation" and len(res["cases"]) == 3
    perfect = [c for c in res["cases"] if c["dice"]["cls_avg"] == 1]
    assert len(perfect) == 2 and all(c["hd95"]["cls_avg"] == 0 and c["b0_error"]["cls_avg"] == 0 for c in perfect)
    missed = res["cases"][1]
    assert missed["dice"]["R-Pcom"] == 0 and missed["hd95"]["R-Pcom"] == 90 and missed["detection"]["R-Pcom"] == "FN"
    post = missed["topology"]["posterior"]
    assert not post["match"] and post["labels"]["R-Pcom"]["detection"] == "FN" and not post["labels"]["R-Pcom"]["ok"]
    assert all(c["topology"][r]["match"] for c in perfect for r in ("anterior", "posterior"))
    assert missed["graph"]["posterior"]["pred"][3] == 0 and missed["graph"]["posterior"]["gt"][3] == 1
    assert res["aggregate"]["detection"]["R-Pcom"]["FN"] == 1
    assert res["aggregate"]["n_cases"] == 3
    assert cli.main(["--quiet", "evaluate-segmentation", "--pred", str(pred), "--gt", str(gt)]) == 0
    text = capsys.readouterr().out
    assert "TopCoW 2023 metrics of 3 segmentation(s)" in text and "group-2 detection F1" in text
    assert "topology match rate" in text
    one = sorted(gt.iterdir())[0]
    assert cli.main(["--quiet", "evaluate-segmentation", "--pred", str(pred / one.name), "--gt", str(one), "--json"]) == 0
    single = json.loads(capsys.readouterr().out)
    assert len(single["cases"]) == 1 and single["cases"][0]["dice"]["merged"] == 1


def test_evaluate_segmentation_errors_are_one_line_with_exit_2(label_folders, tmp_path, capsys):
    from VolGANCore import cli

    pred, gt = label_folders
    files = sorted(gt.iterdir())
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    write_volume(read_label_volume(files[0]), lonely / files[0].name)
    write_volume(read_label_volume(files[0]), lonely / "extra_case.nii.gz")
    lab = read_label_volume(files[0])
    (tmp_path / "grid").mkdir()
    write_volume(lab.with_array(lab.array, spacing=(1.0, 1.0, 1.0)), tmp_path / "grid" / files[0].name)
    (tmp_path / "ids").mkdir()
    bad = lab.array.copy()
    bad[0, 0, 0] = 13
    write_volume(lab.with_array(bad), tmp_path / "ids" / files[0].name)
    cases = {
        "missing ground truth": (lonely, gt, "extra_case.nii.gz: has no ground truth named extra_case.* in"),
        "grid": (tmp_path / "grid" / files[0].name, files[0], "grid differs from its ground truth"),
        "unknown ids": (tmp_path / "ids" / files[0].name, files[0], "unknown label id(s) [13]"),
        "file and folder": (files[0], gt, "is a file but --gt"),
        "not found": (tmp_path / "nope", gt, "nope: not found (--pred)"),
    }
    for name, (p, g, needle) in cases.items():
        rc = cli.main(["--quiet", "evaluate-segmentation", "--pred", str(p), "--gt", str(g)])
        err = capsys.readouterr().err
        assert rc == 2, (name, err)
        assert err.startswith("volgan evaluate-segmentation: error: ") and err.strip().count("\n") == 0, (name, err)
        assert needle in err, (name, err)
    # folders missing a prediction: the ground-truth file without partner is named
    partial = tmp_path / "partial"
    partial.mkdir()
    write_volume(read_label_volume(files[0]), partial / files[0].name)
    assert cli.main(["--quiet", "evaluate-segmentation", "--pred", str(partial), "--gt", str(gt)]) == 2
    err = capsys.readouterr().err
    assert f"{files[1]}: has no prediction named" in err and "2 unpaired" in err


def test_evaluate_segmentation_is_a_registered_project_command():
    from VolGANCore import cli

    assert cli.PROJECT_COMMANDS["segmentation"] == "GANTrainerLib.segmentation.cli:register"
    parser = cli.build_parser()
    args = parser.parse_args(["evaluate-segmentation", "--pred", "p", "--gt", "g"])
    assert args.command == "evaluate-segmentation" and args.label_scheme == "topcow13" and not args.json
    assert parser.parse_args(["segmentation-experiment", "--real-images", "a", "--real-labels", "b", "--synthetic",
                              "c", "--out", "d", "--scoring", "paper"]).scoring == "paper"


def test_volume_direction_reaches_the_flip_check(tmp_path):
    """Read from files, the ground truth's direction decides left and right (a RAS-stored pair still matches)."""
    from GANTrainerLib.segmentation.evaluate import evaluate_segmentations

    gt = np.zeros((6, 8, 20), np.int16)
    gt[1:3, 1:3, 12:16] = 3                       # L-PCA at larger x: left in LPS storage
    gt[1:3, 1:3, 2:6] = 2                         # R-PCA
    gt[1:3, 3:5, 5:13] = 1                        # BA between them, touching both
    for name, direction, arr in (("lps", np.eye(3), gt), ("ras", np.diag([-1.0, -1.0, 1.0]), gt[:, :, ::-1])):
        v = Volume(np.ascontiguousarray(arr), spacing=(1.0, 1.0, 1.0), direction=direction, label_scheme="topcow13")
        write_volume(v, tmp_path / name / "gt" / "c.nrrd")
        write_volume(v, tmp_path / name / "pred" / "c.nrrd")
        res = evaluate_segmentations(tmp_path / name / "pred", tmp_path / name / "gt")
        topo = res["cases"][0]["topology"]["posterior"]
        assert topo["match"] and not topo["lr_flipped"], name
