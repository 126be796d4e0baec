"""Differentiable RandAugment (das.dra, das.dra_ops, das.dra_search): gradients against
finite differences, sampling against the weights, straight-through, policy files, a tiny
search on digits and bad input."""

import json
import math

import pytest
import torch
from das_testing import TINY_DATA

from das import dra_search, search
from das.cli import METHOD_DEFAULTS, parse_config
from das.dra import DRAPolicy, LayerDraw
from das.dra_ops import DRA_OPS, EXACT, SPACES, resolve_dra_ops


def _fixed_draw(batch: int, n: int, eps: float, sign: float, favour: int = 0) -> LayerDraw:
    gumbel = torch.zeros(batch, n, dtype=torch.float64)
    gumbel[:, favour] = 5.0
    return LayerDraw(
        gumbel,
        torch.full((batch,), eps, dtype=torch.float64),
        torch.full((batch,), sign, dtype=torch.float64),
        torch.ones(batch, dtype=torch.bool),
    )


@pytest.mark.parametrize("op", ["rotate", "translate_x", "shear_y", "brightness", "solarize_add"])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_exact_mu_sigma_gradients_match_finite_differences(op: str, sign: float) -> None:
    torch.manual_seed(0)
    policy = DRAPolicy([op], layers=1, apply_prob=(1.0, 1.0)).double()
    with torch.no_grad():
        policy.mu.fill_(0.4)
        policy.sigma.fill_(0.2)
    x = torch.rand(3, 3, 12, 12, dtype=torch.float64)
    r = torch.randn(3, 3, 12, 12, dtype=torch.float64)
    draws = [_fixed_draw(3, 1, 0.7, sign)]

    def loss() -> torch.Tensor:
        return (policy(x, draws) * r).sum()

    loss().backward()
    h = 1e-6
    for name in ("mu", "sigma"):
        param = getattr(policy, name)
        with torch.no_grad():
            param += h
            up = float(loss())
            param -= 2 * h
            down = float(loss())
            param += h
        fd = (up - down) / (2 * h)
        assert param.grad.item() == pytest.approx(fd, rel=1e-5, abs=1e-8), name
        assert abs(fd) > 1e-3  # the magnitude matters


def _chi2_critical(df: int, p: float = 0.001) -> float:
    try:
        from scipy.stats import chi2

        return float(chi2.ppf(1 - p, df))
    except ImportError:  # Wilson-Hilferty: chi2 ~ df (1 - 2/(9df) + z sqrt(2/(9df)))^3
        z = 3.090232306167813  # standard normal 0.999 quantile
        return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def test_sampling_follows_the_weights() -> None:
    policy = DRAPolicy(layers=1)
    with torch.no_grad():
        policy.logits.copy_(
            torch.randn(1, len(DRA_OPS), generator=torch.Generator().manual_seed(3))
        )
    n = 20000
    draws = policy.draw(n, torch.Generator().manual_seed(4))
    k, gate = policy.select(0, draws[0].gumbel.float())
    counts = torch.bincount(k, minlength=len(DRA_OPS)).double()
    expected = policy.weights()[0].detach().double() * n
    stat = float(((counts - expected) ** 2 / expected).sum())
    assert stat < _chi2_critical(len(DRA_OPS) - 1)
    assert torch.allclose(gate, torch.ones_like(gate))


def test_straight_through_colour_op_and_unsampled_logits() -> None:
    policy = DRAPolicy(["posterize", "solarize", "color"], layers=1, apply_prob=(1.0, 1.0))
    x = torch.rand(1, 3, 8, 8)
    eps = 0.5
    policy(x, [_fixed_draw(1, 3, eps, 1.0, favour=0).to(x.device, x.dtype)]).sum().backward()
    pixels = 3 * 8 * 8
    assert policy.mu.grad[0, 0].item() == pytest.approx(pixels, rel=1e-5)
    assert policy.sigma.grad[0, 0].item() == pytest.approx(eps * pixels, rel=1e-5)
    assert policy.mu.grad[0, 1:].abs().sum() == 0  # not sampled: no magnitude gradient
    assert (policy.logits.grad[0, 1:].abs() > 0).all()  # but their logits get one
    assert "posterize" not in EXACT and "rotate" in EXACT


def test_apply_probability_zero_is_identity() -> None:
    policy = DRAPolicy(apply_prob=(0.0, 0.0))
    x = torch.rand(16, 3, 10, 10)
    assert torch.equal(policy(x, generator=torch.Generator().manual_seed(0)), x)
    assert torch.equal(policy.augment(x, torch.Generator().manual_seed(0)), x)


def test_every_op_runs_in_both_spaces() -> None:
    x = torch.rand(4, 3, 9, 11)
    for space in SPACES:
        for op in DRA_OPS:
            policy = DRAPolicy([op], space, layers=1, apply_prob=(1.0, 1.0))
            out = policy(x, generator=torch.Generator().manual_seed(0))
            assert out.shape == x.shape and torch.isfinite(out).all(), (space, op)
            out.sum().backward()
            assert policy.mu.grad.abs().sum() > 0, (space, op)
    gray = torch.rand(2, 1, 8, 8)
    assert DRAPolicy().augment(gray).shape == gray.shape


def test_policy_json_round_trip(tmp_path) -> None:
    policy = DRAPolicy(space="imagenet", layers=3, temperature=0.7)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in policy.parameters():
            p.copy_(torch.rand(p.shape, generator=g))
    path = tmp_path / "policy.json"
    policy.save(path)
    d = json.loads(path.read_text())
    assert d["method"] == "dra" and d["space"] == "imagenet" and d["apply_prob"] == [0.2, 0.8]
    assert len(d["layers"]) == 3 and sum(d["layers"][0]["weights"]) == pytest.approx(1.0)
    back = DRAPolicy.load(path)
    assert back.ops == policy.ops and back.temperature == 0.7 and back.space == "imagenet"
    for a, b in zip(policy.parameters(), back.parameters()):
        assert torch.equal(a, b)
    x = torch.rand(8, 3, 12, 12)
    a = policy.augment(x, torch.Generator().manual_seed(5))
    b = back.augment(x, torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and not torch.equal(a, x)
    (tmp_path / "bad.json").write_text('{"method": "das"}')
    with pytest.raises(ValueError, match="bad.json"):
        DRAPolicy.load(tmp_path / "bad.json")


# ----------------------------------------------------------------------------- search

TIMING_KEYS = ("sec_per_step", "epoch_sec")


def _dra_search(out, *extra: str) -> int:
    argv = [*TINY_DATA, "--method", "dra", "--epochs", "2", "--proxy-images", "40"]
    return search.main([*argv, "--out", str(out), *extra])


def _strip(rows):
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows]


def test_dra_search_end_to_end_and_resume(tmp_path, monkeypatch, capsys) -> None:
    full = tmp_path / "full"
    assert _dra_search(full) == 0
    for name in ("policy.json", "report.md", "weights.png", "magnitudes.png", "config.json"):
        assert (full / name).is_file(), name
    log = json.loads((full / "search_log.json").read_text())
    assert [r["epoch"] for r in log] == [0, 1, 2]
    assert {"policy_loss", "policy_kl", "val_acc", "weights", "mu", "sigma"} <= set(log[-1])
    header = (full / "search_log.csv").read_text().splitlines()[0]
    assert "mu_l1_rotate" in header and "weights_l0_cutout" in header
    policy = DRAPolicy.load(full / "policy.json")
    assert policy.layers == 2 and len(policy.ops) == 16
    assert not torch.equal(policy.mu, torch.full_like(policy.mu, 0.5))  # it was trained
    assert (policy.mu >= 0).all() and (policy.mu <= 1).all() and (policy.sigma >= 0).all()
    captured = capsys.readouterr()
    assert "dra epoch 2/2" in captured.err and "layer 2:" in captured.out
    config = json.loads((full / "config.json").read_text())
    assert config["dra"]["method"] == "dra" and config["search"]["epochs"] == 2

    calls = {"n": 0}
    original = dra_search.DRASearcher.evaluate

    def flaky(self):  # dies in epoch 2's evaluation, after epoch 1's checkpoint
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(dra_search.DRASearcher, "evaluate", flaky)
    cut = tmp_path / "cut"
    assert _dra_search(cut) == 130
    monkeypatch.setattr(dra_search.DRASearcher, "evaluate", original)
    assert search.main(["--resume", "--out", str(cut), "--no-progress"]) == 0
    a = json.loads((full / "search_log.json").read_text())
    b = json.loads((cut / "search_log.json").read_text())
    assert _strip(a) == _strip(b)
    assert (full / "policy.json").read_text() == (cut / "policy.json").read_text()


def test_method_defaults_apply_only_when_not_given() -> None:
    cfg = parse_config("search", ["--method", "dra"])
    assert cfg.method == "dra" and cfg.search.epochs == METHOD_DEFAULTS["dra"]["epochs"]
    assert parse_config("search", ["--method", "dra", "--epoch", "3"]).search.epochs == 3
    das_cfg = parse_config("search", [])
    assert das_cfg.method == "das" and das_cfg.search.epochs == 8


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--dra-layers", "0"], "--dra-layers: expected a positive integer"),
        (["--dra-space", "svhn"], "--dra-space: invalid choice"),
        (["--dra-temperature", "0"], "--dra-temperature: expected a positive number"),
        (["--dra-kl-weight", "-1"], "--dra-kl-weight: expected a non-negative number"),
        (["--proxy-images", "2"], "--proxy-images 2"),
        (["--order", "2"], "--order 2"),
        (["--rf"], "--rf"),
        (["--method", "ra"], "--method: invalid choice"),
        (["--dra-ops", "rotate,zoom"], "--dra-ops 'rotate,zoom'"),
        (["--dra-ops", "rotate,rotate"], "--dra-ops 'rotate,rotate'"),
        (["--dra-ops", ","], "--dra-ops ','"),
    ],
)
def test_bad_dra_cli_exits_2(argv, message, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        search.main(["--method", "dra", *argv] if argv[0] != "--method" else argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_one_warp_call_per_layer(monkeypatch) -> None:
    from das import dra

    calls = []
    real = dra.multi_affine_warp

    def counting(x, theta, weights):
        calls.append(tuple(theta.shape))
        return real(x, theta, weights)

    monkeypatch.setattr(dra, "multi_affine_warp", counting)
    policy = DRAPolicy(layers=2, apply_prob=(1.0, 1.0))
    x = torch.rand(64, 3, 8, 8)
    draws = policy.draw(64, torch.Generator().manual_seed(0))
    out = policy(x, draws)
    assert calls == [(64, 1, 1, 2, 3)] * 2
    k, _ = policy.select(0, draws[0].gumbel.float())
    colour = ~policy.is_affine[k]
    assert colour.any() and out.shape == x.shape


def test_dra_ops_subset_and_configs_written_before_it(tmp_path) -> None:
    from das.config import RunConfig
    from das.dra_ops import OP_GROUPS

    cfg = parse_config("search", ["--method", "dra", "--dra-ops", " invert, rotate "])
    assert resolve_dra_ops(cfg.dra.dra_ops) == ("invert", "rotate")
    assert len(OP_GROUPS["affine"]) == 5 and len(OP_GROUPS["colour"]) == 11
    old = cfg.to_dict()
    del old["dra"]["dra_ops"]  # a config.json written before --dra-ops existed
    assert RunConfig.from_dict(old).dra.dra_ops == "all"
    out = tmp_path / "subset"
    assert _dra_search(out, "--dra-ops", "affine", "--epochs", "1", "--dra-layers", "1") == 0
    policy = DRAPolicy.load(out / "policy.json")
    assert policy.ops == OP_GROUPS["affine"] and policy.layers == 1
