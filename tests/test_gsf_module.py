"""das_kernels.nn.GSF and das_kernels.gsf_module against the official module
(das_kernels.reference.GSFReference), on every backend and gate-conv path."""

from __future__ import annotations

import importlib

import pytest
import torch
from conftest import DEVICES, backend_params
from gsf_testing import make_modules, module_op_args, op_inputs, randn

import das_kernels
from das_kernels import backends, reference
from das_kernels import nn as dnn

# the module, not das_kernels.ops.gsf_gate (the function of that name)
gate_ops = importlib.import_module("das_kernels.ops.gsf_gate")

BACKEND_PARAMS = backend_params("gsf_pool", "gsf_fuse")


# (C, ratio, B, T, H, W)
MODULE_CASES = {
    "r100-T8-7x13": (8, 100, 1, 8, 7, 13),
    "r50-T3-5x4": (16, 50, 2, 3, 5, 4),
    "r25-T2-7x13": (32, 25, 2, 2, 7, 13),
    "r25-T1-1x1": (32, 25, 3, 1, 1, 1),
    "r100-T3-1x1": (12, 100, 2, 3, 1, 1),
    "r75-rounds-up": (15, 75, 2, 2, 3, 5),  # int(11.25) = 11, made even: 12 gated, 3 copied
}


INTERPRETED_CASES = ("r25-T2-7x13", "r100-T3-1x1", "r75-rounds-up")


@pytest.mark.parametrize("device,backend", BACKEND_PARAMS)
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("case", list(MODULE_CASES))
def test_module_matches_official(device, backend, train, case):
    if backend == "triton" and device == "cpu" and (not train or case not in INTERPRETED_CASES):
        pytest.skip("the Triton interpreter is slow: a subset of cases (the ops are tested fully)")
    C, ratio, B, T, H, W = MODULE_CASES[case]
    ref, ours = make_modules(C, T, ratio)
    ours.to(device)
    ref.train(train)
    ours.train(train)
    x = randn(B * T, C, H, W, seed=1)
    grad_out = randn(B * T, C, H, W, seed=2)
    x_ref = x.clone().requires_grad_(True)
    x_ours = x.to(device).requires_grad_(True)
    want = ref(x_ref)
    want_grads = torch.autograd.grad(want, [x_ref, *ref.parameters()], grad_out)
    with backends.use(backend):
        got = ours(x_ours)
        got_grads = torch.autograd.grad(got, [x_ours, *ours.parameters()], grad_out.to(device))
    tol = dict(atol=1e-11, rtol=1e-9)
    torch.testing.assert_close(got.cpu(), want, **tol)
    names = ["x"] + [n for n, _ in ref.named_parameters()]
    assert names[1:] == [n for n, _ in ours.named_parameters()]
    for name, g, w in zip(names, got_grads, want_grads):
        torch.testing.assert_close(g.cpu(), w, **tol, msg=lambda m, name=name: f"grad {name}: {m}")
    for key, value in ref.state_dict().items():  # running statistics too
        torch.testing.assert_close(ours.state_dict()[key].cpu(), value, **tol)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("path", list(gate_ops.GATE_PATHS))
def test_module_in_clip_chunks_matches_official(device, train, path, monkeypatch):
    """gsf_module recomputes the activations in pieces of whole clips: forced into uneven
    pieces, with each gate-conv path, values, gradients and running statistics are
    unchanged."""
    module_ops = importlib.import_module("das_kernels.ops.gsf_module")
    monkeypatch.setenv("DAS_KERNELS_GSF_GATE", path)
    C, ratio, B, T, H, W = 16, 50, 5, 3, 4, 5  # 5 clips in 3 pieces (2 + 2 + 1)
    activation_bytes = B * T * (8 + 54) * H * W * 8  # 8 gated channels + 54 taps, float64
    monkeypatch.setitem(module_ops.CHUNK_BYTES, torch.device(device).type, activation_bytes // 3)
    assert len(module_ops._clip_slices(randn(B * T, C, H, W).to(device), T, 8)) == 3
    ref, ours = make_modules(C, T, ratio)
    ours.to(device)
    ref.train(train)
    ours.train(train)
    x, grad_out = randn(B * T, C, H, W, seed=1), randn(B * T, C, H, W, seed=2)
    x_ref, x_ours = x.clone().requires_grad_(True), x.to(device).requires_grad_(True)
    want = ref(x_ref)
    want_grads = torch.autograd.grad(want, [x_ref, *ref.parameters()], grad_out)
    got = ours(x_ours)
    got_grads = torch.autograd.grad(got, [x_ours, *ours.parameters()], grad_out.to(device))
    torch.testing.assert_close(got.cpu(), want, atol=1e-11, rtol=1e-9)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g.cpu(), w, atol=1e-11, rtol=1e-9)
    for key, value in ref.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[key].cpu(), value, atol=1e-11, rtol=1e-9)


@pytest.mark.parametrize("device,backend", BACKEND_PARAMS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_module_low_precision_matches_official(device, backend, dtype):
    if backend == "reference" and dtype != torch.float32:
        pytest.skip("the reference is its own ground truth")
    if backend == "triton" and device == "cpu" and dtype != torch.float32:
        pytest.skip("the Triton interpreter has no half arithmetic")
    C, ratio, B, T, H, W = MODULE_CASES["r50-T3-5x4"]
    ref, ours = make_modules(C, T, ratio)
    ours.to(device)
    x, grad_out = randn(B * T, C, H, W, seed=1), randn(B * T, C, H, W, seed=2)
    x_ref = x.clone().requires_grad_(True)
    want = ref(x_ref)
    want_grads = torch.autograd.grad(want, [x_ref, *ref.parameters()], grad_out)
    x_ours = x.to(device, dtype).requires_grad_(True)
    with backends.use(backend):
        got = ours(x_ours)  # float64 parameters, x in dtype: as under autocast
        got_grads = torch.autograd.grad(got, [x_ours, *ours.parameters()], grad_out.to(got))
    assert got.dtype == dtype
    tol = {torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 1.5e-1}[dtype]
    torch.testing.assert_close(got.cpu().double(), want, atol=tol, rtol=tol)
    for g, w in zip(got_grads, want_grads):
        scale = w.abs().max().item() + 1
        torch.testing.assert_close(g.cpu().double() / scale, w / scale, atol=tol, rtol=tol)


def test_module_saves_no_activation_sized_tensor():
    """nn.GSF's backward keeps x and (N, 2, H, W)-sized tensors only: no BN output, ReLU
    output, gate-conv input or shift/fusion intermediate (the official module keeps ~8)."""
    C, T, H, W = 16, 4, 6, 5
    _, ours = make_modules(C, T, 100)
    x = randn(2 * T, C, H, W).requires_grad_(True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        ours(x)
    big = [t for t in saved if t.numel() > 2 * T * 2 * H * W]
    assert len(big) == 1 and big[0].data_ptr() == x.data_ptr(), [t.shape for t in big]
    assert sum(t.numel() for t in saved) < 1.5 * x.numel()


def test_state_dict_round_trips_in_the_official_format():
    ref, ours = make_modules(16, 4, 50)
    assert list(ours.state_dict()) == list(ref.state_dict())
    for key, value in ref.state_dict().items():
        assert ours.state_dict()[key].shape == value.shape, key
    back = reference.GSFReference(16, 4, 50).double()
    back.load_state_dict(ours.state_dict())
    x = randn(8, 16, 3, 3)
    torch.testing.assert_close(back.eval()(x), ref.eval()(x), atol=0, rtol=0)
    assert ours.fPlane == ref.fPlane == 8 and ours.num_segments == 4


def test_default_initialisation_matches_official_shapes():
    torch.manual_seed(0)
    ours = dnn.GSF(64, num_segments=8, gsf_ch_ratio=25)
    assert ours.conv3D.weight.shape == (2, 8, 3, 3, 3)
    assert ours.channel_conv1.weight.shape == (1, 2, 3, 3)
    assert ours.bn.running_var.shape == (16,)
    official = reference.GSFReference(64, 8, 25)
    for name, module in official.named_children():  # same types: optimizer policies agree
        if any(True for _ in module.parameters()):
            assert isinstance(getattr(ours, name), type(module)), name
    assert "fPlane=16" in repr(ours)


@pytest.mark.parametrize("device,backend", BACKEND_PARAMS)
@pytest.mark.parametrize("training", [True, False], ids=["batch-stats", "running-stats"])
def test_module_op_gradcheck_and_opcheck(device, backend, training):
    if backend == "triton" and device == "cpu" and not training:
        pytest.skip("the Triton interpreter is slow: batch statistics only")
    leaves, _, T = module_op_args(device, torch.float64, training)
    running = [randn(8, seed=52).to(device), randn(8, seed=53).exp().to(device)]

    def module(x, gate_w, gate_b, fuse_w, fuse_b, bn_w, bn_b):
        stats = [r.clone() for r in running]  # the op updates them in training
        return das_kernels.gsf_module(
            x, gate_w, gate_b, fuse_w, fuse_b, bn_w, bn_b, *stats, T, training=training
        )

    with backends.use(backend):
        # cuDNN's float64 conv backward (the gate conv on GPUs) is not bitwise reentrant
        nondet = 1e-12 if backends.gsf_gate_path(torch.device(device)) == "conv" else 0.0
        assert torch.autograd.gradcheck(module, leaves, fast_mode=True, nondet_tol=nondet)
        leaves32, stats, T = module_op_args(device, torch.float32, training)
        args = (*leaves32, *(s.float() for s in stats), training, T)
        torch.library.opcheck(torch.ops.das_kernels.gsf_module.default, args)


def test_compile_fullgraph_module():
    """torch.compile(fullgraph=True) traces nn.GSF with the ops: same values and gradients."""
    _, module = make_modules(16, 2, 50)
    x = randn(4, 16, 5, 6, seed=10).float()
    module = module.float()

    def f(x):
        return module(x).square().mean()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    xc, xe = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    got = compiled(xc)
    (grad,) = torch.autograd.grad(got, xc)
    want = f(xe)
    (want_grad,) = torch.autograd.grad(want, xe)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(grad, want_grad)


def test_module_bad_inputs_raise_clear_errors():
    x, _, w = op_inputs(2, 2, 8, 8, 3, 3)
    with pytest.raises(ValueError, match="divisible by 4"):
        dnn.GSF(6)
    with pytest.raises(ValueError, match="divisible by 4"):
        reference.GSFReference(64, 8, gsf_ch_ratio=10)  # int(6.4) = 6
    with pytest.raises(ValueError, match="not divisible by num_segments=3"):
        dnn.GSF(8, num_segments=3)(x.float())
    with pytest.raises(ValueError, match="x has 8 channels"):
        dnn.GSF(16)(x)  # fewer channels than the module gates
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        dnn.GSF(8, num_segments=1)(x[:1, :, :1, :1])
    module = dnn.GSF(8, num_segments=2)
    with pytest.raises(ValueError, match="fuse_weight must be"):
        das_kernels.gsf_module(x, module.conv3D.weight, None, w, None, None, None, None, None, 2)
