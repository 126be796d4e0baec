"""GSF's gate conv (das_kernels.ops.gsf_gate): every path (``DAS_KERNELS_GSF_GATE``) and the
gsf_gate_taps helper against the official Conv3d + autograd; the Triton path's kernels
(das_kernels.triton.gsf_gate), gsf_gate and the whole nn.GSF module on that path. Tiny
shapes: on CPU the Triton kernels run in Triton's interpreter."""

from __future__ import annotations

import importlib

import pytest
import torch
import torch.nn.functional as F
from gsf_testing import expected, make_modules, module_op_args, randn

import das_kernels
from das_kernels import backends, reference
from das_kernels import nn as dnn

# the module, not das_kernels.ops.gsf_gate (the function of that name)
gate_ops = importlib.import_module("das_kernels.ops.gsf_gate")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
REASON = backends.unavailable_reason("triton", DEVICE)
needs_triton = pytest.mark.skipif(REASON is not None, reason=f"Triton cannot run: {REASON}")
CPP_REASON = backends.unavailable_reason("cpp", "cpu", "gsf_gate_taps")

# (B, T, G, C, H, W): pass-through channels (C > G), one pixel, several pixel tiles and
# channel blocks (17 x 17 > 256 pixels: 4 channels per block), T = 1, B = 1
CASES = {
    "B2-T3-G8-5x7": (2, 3, 8, 11, 5, 7),
    "B1-T1-G4-1x1": (1, 1, 4, 4, 1, 1),
    "B1-T2-G12-17x17": (1, 2, 12, 13, 17, 17),
}
# forward (gate), backward (gradients): per dtype; half stores gate and grad_x in half
TOL = {
    torch.float64: (dict(atol=1e-12, rtol=1e-12), dict(atol=1e-11, rtol=1e-11)),
    torch.float32: (dict(atol=2e-6, rtol=1e-5), dict(atol=1e-4, rtol=1e-5)),
    torch.float16: (dict(atol=2e-3, rtol=2e-3), dict(atol=1e-2, rtol=2e-3)),
}


def kernels():
    return gate_ops.triton_gate_kernels(torch.device(DEVICE))


def gate_inputs(B, T, G, C, H, W, dtype, seed=0):
    """(x, scale, shift, weight, bias, grad_gate) on DEVICE; x and grad_gate in dtype."""
    x = randn(B * T, C, H, W, seed=seed).to(DEVICE, dtype)
    scale, shift = randn(G, seed=seed + 1), randn(G, seed=seed + 2) * 0.5
    weight, bias = randn(2, G // 2, 3, 3, 3, seed=seed + 3) * 0.3, randn(2, seed=seed + 4)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    params = [t.to(DEVICE, acc) for t in (scale, shift, weight, bias)]
    return x, *params, randn(B * T, 2, H, W, seed=seed + 5).to(DEVICE, dtype)


def official_pre(x, scale, shift, weight, bias, T, G, relu):
    """conv3D((relu)(x[:, :G] * scale + shift)) + bias in float64, (N, 2, H, W) frames."""
    N, _, H, W = x.shape
    a = x[:, :G] * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)
    a = a.relu() if relu else a
    clip = a.view(N // T, T, G, H, W).transpose(1, 2)
    pre = F.conv3d(clip, weight, bias, padding=1, groups=2)
    return pre.transpose(1, 2).reshape(N, 2, H, W)


def official_grads(inputs, gate, grad_gate, T, G, relu):
    """(grad_x, grad_scale = sum_dy_x, grad_shift = sum_dy, grad_weight, grad_bias) through
    the official conv for the given gate (the kernels' output) and grad_gate, in float64."""
    leaves = [t.detach().double().requires_grad_(True) for t in inputs]
    gp = grad_gate.double() * (1 - gate.double().square())  # through the tanh
    return torch.autograd.grad(official_pre(*leaves, T, G, relu), leaves, gp)


@needs_triton
@pytest.mark.parametrize("relu", [True, False], ids=["relu", "affine"])
@pytest.mark.parametrize(
    "dtype,case",
    [(torch.float64, case) for case in CASES]
    + [(torch.float32, "B2-T3-G8-5x7"), (torch.float16, "B2-T3-G8-5x7")],
    ids=str,
)
def test_kernels_match_official_conv3d(dtype, case, relu):
    """Forward gate and backward (grad_x accumulated in place, grad_weight, grad_bias,
    sum_dy, sum_dy_x) against the official Conv3d and autograd."""
    B, T, G, C, H, W = CASES[case]
    x, scale, shift, weight, bias, grad_gate = gate_inputs(B, T, G, C, H, W, dtype)
    gate = kernels().gsf_gate_forward(x, scale, shift, weight, bias, T, G, relu)
    inputs = (x, scale, shift, weight, bias)
    want = torch.tanh(official_pre(*(t.double() for t in inputs), T, G, relu))
    assert gate.dtype == dtype
    torch.testing.assert_close(gate.double(), want, **TOL[dtype][0])

    grad_x0 = randn(*x.shape, seed=9).to(DEVICE, dtype)
    grad_x = grad_x0.clone()
    gw, gb, sum_dy, sum_dy_x = kernels().gsf_gate_backward(
        x, scale, shift, weight, gate, grad_gate, T, G, relu, grad_x
    )
    want_x, want_scale, want_shift, want_w, want_b = official_grads(
        inputs, gate, grad_gate, T, G, relu
    )
    tol = TOL[dtype][1]
    torch.testing.assert_close(grad_x.double() - grad_x0.double(), want_x, **tol)
    for name, got, want in [
        ("grad_weight", gw, want_w),
        ("grad_bias", gb, want_b),
        ("sum_dy", sum_dy, want_shift),
        ("sum_dy_x", sum_dy_x, want_scale),
    ]:
        torch.testing.assert_close(got.double(), want, **tol, msg=lambda m, n=name: f"{n}: {m}")


@needs_triton
def test_backward_without_grad_x_is_deterministic():
    """grad_x=None gives the same sums (and writes nothing); repeated runs are bitwise equal."""
    B, T, G, C, H, W = 1, 2, 4, 6, 3, 4
    x, scale, shift, weight, bias, grad_gate = gate_inputs(B, T, G, C, H, W, torch.float32)
    gate = kernels().gsf_gate_forward(x, scale, shift, weight, bias, T, G, True)
    args = (x, scale, shift, weight, gate, grad_gate, T, G, True)
    without = kernels().gsf_gate_backward(*args, None)
    again = kernels().gsf_gate_backward(*args, None)
    grad_x = torch.zeros_like(x)
    with_grad_x = kernels().gsf_gate_backward(*args, grad_x)
    for a, b, c in zip(without, again, with_grad_x):
        assert torch.equal(a, b) and torch.equal(a, c)
    assert grad_x[:, G:].abs().sum() == 0


@needs_triton
def test_gsf_gate_on_triton_path(monkeypatch):
    """das_kernels.gsf_gate (autograd through das_kernels::gsf_gate_triton) with
    DAS_KERNELS_GSF_GATE=triton equals the official Conv3d path; the op passes opcheck."""
    B, T, G, H, W = 1, 3, 12, 5, 7
    a = torch.relu(randn(B * T, G, H, W, seed=30)).to(DEVICE)
    weight, bias = randn(2, G // 2, 3, 3, 3, seed=31).to(DEVICE), randn(2, seed=32).to(DEVICE)
    grad = randn(B * T, 2, H, W, seed=33).to(DEVICE)

    def run(a, weight, bias):
        leaves = [t.clone().requires_grad_(True) for t in (a, weight, bias)]
        out = gate_ops.gsf_gate(*leaves, T)
        return [out, *torch.autograd.grad(out, leaves, grad)]

    want = run(a, weight, bias)  # default path
    monkeypatch.setenv("DAS_KERNELS_GSF_GATE", "triton")
    assert backends.gsf_gate_path(a.device) == "triton"
    for got, w in zip(run(a, weight, bias), want):
        torch.testing.assert_close(got, w, atol=1e-12, rtol=0)
    small = (a[:2, :4, :1, :2], weight[:, :2], bias)  # opcheck runs the op several times
    torch.library.opcheck(torch.ops.das_kernels.gsf_gate_triton.default, (*small, 2))


def module_run(module, x, grad_out):
    """(out, grads of x and every parameter, state_dict) of module on x."""
    x = x.clone().requires_grad_(True)
    out = module(x)
    grads = torch.autograd.grad(out, [x, *module.parameters()], grad_out)
    return [out, *grads, *module.state_dict().values()]


@needs_triton
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_module_on_triton_path_matches_official(train, monkeypatch):
    """nn.GSF with DAS_KERNELS_GSF_GATE=triton (gate read from x, BatchNorm + ReLU fused)
    equals the default gate path and GSFReference: output, input and parameter gradients,
    running statistics."""
    C, ratio, B, T, H, W = 16, 50, 2, 3, 4, 5
    ref, default = make_modules(C, T, ratio)
    _, ours = make_modules(C, T, ratio)
    for m in (ref, default, ours):
        m.to(DEVICE).train(train)
    x, grad_out = randn(B * T, C, H, W, seed=1).to(DEVICE), randn(B * T, C, H, W, seed=2)
    want = module_run(ref, x, grad_out.to(DEVICE))
    want_default = module_run(default, x, grad_out.to(DEVICE))
    monkeypatch.setenv("DAS_KERNELS_GSF_GATE", "triton")
    got = module_run(ours, x, grad_out.to(DEVICE))
    names = ["out", "x", *(n for n, _ in ref.named_parameters()), *ref.state_dict()]
    assert len(names) == len(got)
    for name, g, w, d in zip(names, got, want, want_default):
        torch.testing.assert_close(g, w, atol=1e-11, rtol=1e-9, msg=lambda m, n=name: f"{n}: {m}")
        torch.testing.assert_close(g, d, atol=1e-11, rtol=1e-9, msg=lambda m, n=name: f"{n}: {m}")


@needs_triton
def test_module_op_gradcheck_and_opcheck_on_triton_path(monkeypatch):
    """float64 gradcheck and opcheck (its backward is traceable: the kernel is an op) of
    das_kernels.gsf_module (batch statistics) on the triton path."""
    monkeypatch.setenv("DAS_KERNELS_GSF_GATE", "triton")
    leaves, _, T = module_op_args(DEVICE, torch.float64, True, B=1, T=2, H=2, W=3)
    G = leaves[5].shape[0]
    running = [randn(G, seed=52).to(DEVICE), randn(G, seed=53).exp().to(DEVICE)]

    def module(x, gate_w, gate_b, fuse_w, fuse_b, bn_w, bn_b):
        stats = [r.clone() for r in running]  # the op updates them in training
        return das_kernels.gsf_module(x, gate_w, gate_b, fuse_w, fuse_b, bn_w, bn_b, *stats, T)

    assert torch.autograd.gradcheck(module, leaves, fast_mode=True)
    leaves32, stats, T = module_op_args(DEVICE, torch.float32, True, B=1, T=2, H=2, W=3)
    args = (*leaves32, *(s.float() for s in stats), True, T)
    torch.library.opcheck(torch.ops.das_kernels.gsf_module.default, args)


def test_bad_gate_path_raises_clear_errors(monkeypatch):
    x = randn(4, 8, 3, 3)
    module = dnn.GSF(8, num_segments=2).double()
    monkeypatch.setenv("DAS_KERNELS_GSF_GATE", "tirton")
    with pytest.raises(ValueError, match="DAS_KERNELS_GSF_GATE must be one of .*triton"):
        module(x)
    monkeypatch.setenv("DAS_KERNELS_GSF_GATE", "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # Triton cannot run on CPU tensors now
    with pytest.raises(backends.BackendUnavailable, match="triton cannot run on cpu.*INTERPRET"):
        module(x)
    with pytest.raises(backends.BackendUnavailable, match="TRITON_INTERPRET=1"):
        gate_ops.gsf_gate(x[:, :4], module.conv3D.weight[:, :2], None, 2)


# --- the PyTorch and C++ paths -------------------------------------------------------


@pytest.mark.parametrize("path", list(gate_ops.GATE_PATHS))
@pytest.mark.parametrize("backend", ["reference", "cpp"])
def test_gate_paths_match_official_conv3d(path, backend):
    """gsf_gate's CPU (GEMM + gsf_gate_taps) and GPU (grouped Conv2d) paths, both on CPU."""
    if backend == "cpp" and CPP_REASON:
        pytest.skip(CPP_REASON)
    B, T, G, H, W = 3, 3, 8, 5, 7
    h = randn(B * T, G, H, W, seed=20)
    weight, bias = randn(2, G // 2, 3, 3, 3, seed=21), randn(2, seed=22)
    grad = randn(B * T, 2, H, W, seed=23)

    def official(h, weight, bias):
        clip = torch.relu(h).view(B, T, G, H, W).transpose(1, 2)
        gate = torch.tanh(F.conv3d(clip, weight, bias, padding=1, groups=2))
        return gate.transpose(1, 2).reshape(B * T, 2, H, W)

    def ours(h, weight, bias):
        gate = gate_ops.GATE_PATHS[path][0]
        return gate(torch.relu(h), weight, bias, T)

    want, want_grads = expected(official, (h, weight, bias), grad)
    with backends.use(backend):
        got, got_grads = expected(ours, (h, weight, bias), grad)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=0)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w, atol=1e-11, rtol=0)


@pytest.mark.parametrize("path", list(gate_ops.GATE_PATHS))
def test_gate_backward_paths_match_autograd(path):
    """gsf_module's explicit gate backward (both paths, run on CPU) equals autograd."""
    B, T, G, H, W = 2, 3, 8, 4, 5
    a = torch.relu(randn(B * T, G, H, W, seed=60))
    weight, bias = randn(2, G // 2, 3, 3, 3, seed=61), randn(2, seed=62)
    grad = randn(B * T, 2, H, W, seed=63)
    forward, backward = gate_ops.GATE_PATHS[path]
    gate, want = expected(lambda a, w, b: forward(a, w, b, T), (a, weight, bias), grad)
    got = backward(a, weight, gate, grad, T)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-12, rtol=0)


@pytest.mark.parametrize("hw", [(3, 4), (1, 1), (1, 5)])
def test_gate_taps_kernels_match_reference(hw):
    if CPP_REASON:
        pytest.skip(CPP_REASON)
    T, (H, W) = 3, hw
    taps, bias = randn(6, 54, H, W, seed=24), randn(2, seed=25)
    want = reference.gsf_gate_taps(taps, bias, T)
    got = torch.ops.das_native.gsf_gate_taps_forward(taps, bias, T)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=0)
    grad = randn(6, 2, H, W, seed=26)
    taps_leaf, bias_leaf = taps.clone().requires_grad_(True), bias.clone().requires_grad_(True)
    autograd = torch.autograd.grad(
        reference.gsf_gate_taps(taps_leaf, bias_leaf, T), (taps_leaf, bias_leaf), grad
    )
    for impl in (reference.gsf_gate_taps_backward, torch.ops.das_native.gsf_gate_taps_backward):
        for g, w in zip(impl(grad, want, T), autograd):
            torch.testing.assert_close(g, w, atol=1e-12, rtol=0)


@pytest.mark.parametrize("backend", ["reference", "cpp"])
def test_gate_taps_op(backend):
    if backend == "cpp" and CPP_REASON:
        pytest.skip(CPP_REASON)
    T, H, W = 2, 2, 3
    leaves = [randn(2, 54, H, W, seed=27).requires_grad_(True), randn(2, seed=28).requires_grad_()]
    with backends.use(backend):
        assert torch.autograd.gradcheck(lambda *a: gate_ops._taps(*a, T), leaves)
        torch.library.opcheck(torch.ops.das_kernels.gsf_gate_taps.default, (*leaves, T))
        gate = gate_ops._taps(*leaves, T).detach()
        args = (torch.randn_like(gate), gate, T)
        torch.library.opcheck(torch.ops.das_kernels.gsf_gate_taps_backward.default, args)
