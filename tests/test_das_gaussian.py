"""``--magnitudes gaussian``: per-sample magnitudes N(mu, sigma^2) in the DAS cell, learned with
tau: gradients to mu and sigma agree with finite differences (fixed noise), evaluation uses mu
(equal to the fixed-magnitude cell there), the genotype keeps sigma, and a tiny search runs."""

import json

import torch
from das_testing import FAST_FUSION, TINY_DATA

from das import search
from das.cell import DASCell, Genotype


def _cell(**kw) -> DASCell:
    torch.manual_seed(0)
    return DASCell(frames=3, nodes=1, ops=("translate_x", "rotate", "brightness"), **kw)


def test_mu_and_sigma_gradients_equal_finite_differences():
    cell = _cell(magnitudes="gaussian").train()
    x = torch.rand(2, 3, 10, 12)
    eps = torch.randn(2, 1, 3)
    r = torch.randn(2, 3, 3, 10, 12)

    def loss() -> torch.Tensor:
        return (cell(x, eps=eps) * r).sum()

    loss().backward()
    for name, k, h in (("magnitudes", 0, 1e-3), ("magnitudes", 1, 1e-2), ("sigma_raw", 0, 1e-2)):
        param = getattr(cell, name)
        grad = float(param.grad[0, k])
        with torch.no_grad():
            param[0, k] += h
            up = float(loss())
            param[0, k] -= 2 * h
            down = float(loss())
            param[0, k] += h
        fd = (up - down) / (2 * h)
        assert abs(grad - fd) <= 0.03 * abs(fd) + 1e-3, (name, k, grad, fd)
        assert abs(grad) > 1e-4, (name, k)


def test_evaluation_uses_mu_and_equals_the_fixed_cell():
    gaussian, fixed = _cell(magnitudes="gaussian"), _cell(learn_magnitudes=True)
    fixed.load_state_dict({k: v for k, v in gaussian.state_dict().items() if k != "sigma_raw"})
    x = torch.rand(4, 3, 8, 8)
    gaussian.eval()
    torch.testing.assert_close(gaussian(x), gaussian(x))
    torch.testing.assert_close(gaussian(x), fixed.eval()(x))
    gaussian.train()
    torch.manual_seed(1)
    assert not torch.allclose(gaussian(x), fixed(x))  # training draws per-sample magnitudes


def test_genotype_keeps_sigma(tmp_path):
    cell = _cell(magnitudes="gaussian")
    g = cell.genotype()
    assert len(g.sigmas) == 1 and g.sigmas[0] > 0
    g.save(tmp_path / "g.json")
    assert Genotype.load(tmp_path / "g.json") == g
    old = g.to_dict()
    del old["sigmas"]
    assert Genotype.from_dict(old).sigmas == ()  # genotypes written before it still load


def test_tiny_gaussian_search_logs_sigmas(tmp_path):
    out = tmp_path / "s"
    argv = [*TINY_DATA, "--frames", "2", "--nodes", "2", "--epochs", "1", "--steps-per-epoch"]
    argv += ["2", "--fusion", FAST_FUSION, "--select", "argmax", "--magnitudes", "gaussian"]
    assert search.main([*argv, "--out", str(out)]) == 0
    log = json.loads((out / "search_log.json").read_text())
    assert "sigmas" in log[-1] and "magnitudes" in log[-1]
    assert len(Genotype.load(out / "genotype.json").sigmas) == 3
