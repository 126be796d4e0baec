"""A default-sized search pinned to what it gave before the das/ redesign (issue 11): same
genotype, same final tau (to 1e-6), same accuracies.

The expected values were measured on the code before the redesign (commit 2166c3b) with

    python -m das.search --epochs 2 --steps-per-epoch 4 --eval-images 64 --seed 0 \\
        --no-progress --out /tmp/das_before

(2-core CPU, torch's default threads, das_kernels' fused ops = the cpp backend on CPU), and
repeated by the same command on the redesigned code. This is the one heavy das test: about
a minute on 2 idle cores (the first run of a checkout also JIT-builds the native ops).
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMMAND = ["--epochs", "2", "--steps-per-epoch", "4", "--eval-images", "64", "--seed", "0"]

GENOTYPE = [
    "translate_x",
    "translate_x",
    "identity",
    "rotate",
    "identity",
    "rotate",
    "identity",
    "identity",
    "identity",
    "scale",
]
# search_log.json, last epoch: tau (rounded to 1e-10), edges x
# [translate_x, translate_y, scale, rotate, identity]
# fmt: off
TAU = [
    [-0.0014840100, -0.0006298324, 0.0006481971, -0.0004723972, 0.0010515668],
    [0.0004616340, 0.0002913295, -0.0021150920, 0.0001575104, -0.0010390080],
    [-0.0001926653, 0.0007014546, 0.0018182845, 0.0015252049, 0.0012770750],
    [-0.0003487876, -0.0006863449, -0.0019445585, 0.0002562796, 0.0010946346],
    [0.0000814190, -0.0010611124, 0.0005993377, 0.0021117108, 0.0008326579],
    [-0.0011284549, 0.0002521529, 0.0011948281, 0.0016830810, 0.0017452113],
    [0.0008926730, -0.0001573815, -0.0010168070, -0.0004266780, 0.0015248085],
    [-0.0002625226, 0.0003645727, -0.0003043899, 0.0007986531, -0.0003660126],
    [-0.0003165604, 0.0000737409, 0.0019136742, 0.0036971469, -0.0014383676],
    [-0.0017642388, 0.0022820509, 0.0001001447, -0.0010047556, 0.0003513899],
]
# (train_acc, arch_acc, val_acc) per epoch; counts over 256 / 256 / 64 images
ACCURACIES = [(0.12890625, 0.11328125, 0.109375), (0.19921875, 0.2734375, 0.40625)]
# selection.json base_acc per selected edge, and the supernet after selection (report.md)
SELECTION_BASE_ACC = [0.40625, 0.40625, 0.40625, 0.40625, 0.421875, 0.4375, 0.421875,
                      0.421875, 0.375, 0.375]
# fmt: on
FINAL_VAL_ACC = "val acc 0.3750 (64 images of the arch half)"


@pytest.fixture(scope="module")
def pinned_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("pinned")
    subprocess.run(
        [sys.executable, "-m", "das.search", *COMMAND, "--no-progress", "--out", str(out)],
        cwd=ROOT,
        check=True,
        timeout=1200,
    )
    return out


def test_pinned_search_genotype_tau_accuracies(pinned_run):
    genotype = json.loads((pinned_run / "genotype.json").read_text())
    assert genotype["ops"] == GENOTYPE
    log = json.loads((pinned_run / "search_log.json").read_text())
    assert [r["epoch"] for r in log] == [0, 1, 2]
    tau = log[-1]["tau"]["values"]
    assert len(tau) == len(TAU)
    for got, want in zip(tau, TAU):
        assert got == pytest.approx(want, abs=1e-6)
    assert [(r["train_acc"], r["arch_acc"], r["val_acc"]) for r in log[1:]] == ACCURACIES
    selection = json.loads((pinned_run / "selection.json").read_text())
    assert [r["base_acc"] for r in selection] == SELECTION_BASE_ACC
    assert FINAL_VAL_ACC in (pinned_run / "report.md").read_text()
