"""Morphometric fidelity of bone: identical populations look alike, shifted populations do not."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from GANTrainerLib.evaluation.fidelity import bone_fidelity
from VolGANCore import VolGANError

pytestmark = pytest.mark.slow  # every test here shares a module fixture that takes tens of seconds


@pytest.fixture(scope="module")
def populations(tmp_path_factory):
    from VolumetricGANLib.phantoms import write_bone_dataset

    root = tmp_path_factory.mktemp("fid")
    real = write_bone_dataset(root / "real", n=8, seed=0, bvtv=0.18, bvtv_sd=0.03)
    same = write_bone_dataset(root / "same", n=6, seed=1, bvtv=0.18, bvtv_sd=0.03)
    dense = write_bone_dataset(root / "dense", n=6, seed=2, bvtv=0.32, bvtv_sd=0.03)
    return real / "images", same / "images", dense / "images"


def test_shifted_bvtv_is_flagged_and_same_population_is_not(populations):
    real, same, dense = populations
    alike = {r["parameter"]: r for r in bone_fidelity(real, same)["parameters"]}
    apart = {r["parameter"]: r for r in bone_fidelity(real, dense)["parameters"]}
    assert apart["BV/TV"]["ks"] == 1.0 and apart["BV/TV"]["wasserstein_over_sd"] > 3
    assert alike["BV/TV"]["wasserstein_over_sd"] < apart["BV/TV"]["wasserstein_over_sd"] / 3
    assert apart["BV/TV"]["generated_mean"] == pytest.approx(0.32, abs=0.04)
    assert "wasserstein_over_sd_real_vs_real" in alike["Tb.Th [mm]"]


def test_too_few_patches_is_a_clear_error(populations, tmp_path):
    from VolumetricGANLib.phantoms import write_bone_dataset

    real, same, _ = populations
    tiny = write_bone_dataset(tmp_path / "tiny", n=1, seed=3)
    with pytest.raises(VolGANError, match="needs ≥ 4 measurable real and ≥ 2 generated"):
        bone_fidelity(real, tiny / "images")


def test_cli_report(populations, tmp_path):
    real, _, dense = populations
    out = subprocess.run([sys.executable, "-m", "VolGANCore.cli", "--quiet", "evaluate-morphometry", "--real",
                          str(real), "--fake", str(dense), "--out", str(tmp_path / "rep")], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "largest W1/SD" in out.stdout
    doc = json.loads((tmp_path / "rep" / "fidelity.json").read_text())
    assert doc["n_real"] == 8 and len(doc["parameters"]) == 10
    assert "| BV/TV |" in (tmp_path / "rep" / "fidelity.md").read_text()
    assert (tmp_path / "rep" / "violins.png").stat().st_size > 1000
