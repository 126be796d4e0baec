"""A default-sized search pinned: same genotype, same final tau (to 1e-6), same accuracies.

The expected values were first measured on the code before the das/ redesign (issue 11,
commit 2166c3b) and repeated on the redesigned code. They were re-pinned deliberately when
the architecture learning rate default became 3e-3 (was 3e-4: the softmax weights did not
move visibly in the default budget, see das/README.md "Selection confidence, --seeds and the
default --a-lr"); tau, the genotype and the selection's base accuracies follow from that
change. ``--select-images 64`` keeps selection on the same 64 images as before (selection now
defaults to all of the arch half, which would make this test several times slower); with
``--a-lr 3e-4 --select-images 64`` the code after the change repeated the old values. Measured
with

    python -m das.search --epochs 2 --steps-per-epoch 4 --eval-images 64 --select-images 64 \\
        --seed 0 --no-progress --out /tmp/das_pinned

(2-core CPU, torch's default threads, das_kernels' fused ops = the cpp backend on CPU). This is
the one heavy das test: about a minute on 2 idle cores (the first run of a checkout also
JIT-builds the native ops).
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMMAND = [
    *("--epochs", "2", "--steps-per-epoch", "4", "--eval-images", "64"),
    *("--select-images", "64", "--seed", "0"),
]

GENOTYPE = [
    "scale",
    "identity",
    "rotate",
    "rotate",
    "identity",
    "rotate",
    "translate_x",
    "identity",
    "translate_x",
    "translate_x",
]
# search_log.json, last epoch: tau (rounded to 1e-10), edges x
# [translate_x, translate_y, scale, rotate, identity]
# fmt: off
TAU = [
    [-0.0052012284, -0.0037109763, 0.0083351303, 0.0014875913, 0.0041330867],
    [-0.0012353456, -0.0027959323, -0.0017534166, 0.0014290599, 0.0020636865],
    [-0.0071822884, -0.0016584094, 0.0140751153, 0.0055029760, 0.0043180585],
    [-0.0001678504, -0.0035673287, -0.0040465011, 0.0008392339, 0.0046596844],
    [-0.0058963876, -0.0031841819, 0.0035519293, 0.0061373240, 0.0030926648],
    [-0.0083032968, -0.0014634529, 0.0046787108, 0.0057095564, 0.0047877477],
    [0.0021013718, -0.0026010093, -0.0052036927, -0.0005392359, 0.0062868372],
    [-0.0048223487, -0.0013176589, 0.0003891940, 0.0054564495, 0.0012813396],
    [-0.0065388829, -0.0012521639, 0.0037385994, 0.0079329619, 0.0009084997],
    [-0.0090000434, 0.0013333436, 0.0028606090, 0.0033458576, 0.0034281421],
]
# (train_acc, arch_acc, val_acc) per epoch; counts over 256 / 256 / 64 images
ACCURACIES = [(0.125, 0.11328125, 0.109375), (0.1796875, 0.2578125, 0.375)]
# selection.json base_acc per selected edge, and the supernet after selection (report.md)
SELECTION_BASE_ACC = [0.375, 0.375, 0.375, 0.390625, 0.40625, 0.421875, 0.4375, 0.421875,
                      0.34375, 0.4375]
# fmt: on
FINAL_VAL_ACC = "val acc 0.4375 (64 images of the arch half)"


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
