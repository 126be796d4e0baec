"""GSF: nn.GSF and the gsf_pool / gsf_fuse ops on every backend against das_kernels.reference."""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F
from conftest import DEVICES

import das_kernels
from das_kernels import backends, reference
from das_kernels import nn as dnn
from das_kernels.ops import gsf as gsf_ops

OPS = ("gsf_pool", "gsf_fuse")
TRITON_MODULE = "das_kernels.triton.gsf"


def _reason(device: str, backend: str) -> str | None:
    if backend == "triton" and importlib.util.find_spec(TRITON_MODULE) is None:
        return f"no Triton GSF kernels yet ({TRITON_MODULE} is missing)"
    for op in OPS:
        reason = backends.unavailable_reason(backend, device, op)
        if reason is not None:
            return reason
    return None


def _backend_params() -> list:
    params = []
    for device in DEVICES:
        for name in backends.BACKENDS:
            reason = _reason(device, name)
            marks = [pytest.mark.skip(reason=f"{name}: {reason}")] if reason else []
            params.append(pytest.param(device, name, id=f"{device}-{name}", marks=marks))
    return params


BACKEND_PARAMS = _backend_params()
TOL = {
    torch.float64: dict(atol=1e-10, rtol=1e-10),
    torch.float32: dict(atol=1e-5, rtol=1e-5),
    torch.float16: dict(atol=1e-2, rtol=1e-2),
    torch.bfloat16: dict(atol=6e-2, rtol=4e-2),
}


def randn(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def make_modules(C, T, ratio, seed=0):
    """GSFReference with random parameters and statistics, and nn.GSF loaded from it."""
    torch.manual_seed(seed)
    ref = reference.GSFReference(C, T, ratio).double()
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
        ref.bn.running_mean.normal_()
        ref.bn.running_var.uniform_(0.5, 2.0)
    ours = dnn.GSF(C, T, ratio).double()
    ours.load_state_dict(ref.state_dict())
    return ref, ours


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
@pytest.mark.parametrize("path", list(gsf_ops.GATE_PATHS))
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


def test_reference_ops_compose_to_the_official_module():
    """gsf_pool -> fusion convs -> gsf_fuse (the reference ops) is the official forward."""
    ref, _ = make_modules(32, 3, 50)
    x = randn(6, 32, 5, 7, seed=3)
    G = ref.fPlane
    clip = ref.clip_view(x)
    gate5 = ref.gate(clip)  # (B, 2, T, H, W)
    gate = gate5.permute(0, 2, 1, 3, 4).reshape(6, 2, 5, 7)
    pooled = reference.gsf_pool(x, gate, 3, G)
    conv_w = torch.cat([ref.channel_conv1.weight, ref.channel_conv2.weight])
    conv_b = torch.cat([ref.channel_conv1.bias, ref.channel_conv2.bias])
    w = torch.sigmoid(F.conv2d(pooled, conv_w, conv_b, padding=1, groups=2))
    torch.testing.assert_close(
        reference.gsf_fuse(x, gate, w, 3, G), ref.shift_fuse(x, clip, gate5), atol=1e-12, rtol=0
    )


# --- the gate ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", list(gsf_ops.GATE_PATHS))
@pytest.mark.parametrize("backend", ["reference", "cpp"])
def test_gate_paths_match_official_conv3d(path, backend):
    """gsf_gate's CPU (GEMM + gsf_gate_taps) and GPU (grouped Conv2d) paths, both on CPU."""
    if backend == "cpp" and _reason("cpu", "cpp"):
        pytest.skip(_reason("cpu", "cpp"))
    B, T, G, H, W = 3, 3, 8, 5, 7
    h = randn(B * T, G, H, W, seed=20)
    weight, bias = randn(2, G // 2, 3, 3, 3, seed=21), randn(2, seed=22)
    grad = randn(B * T, 2, H, W, seed=23)

    def official(h, weight, bias):
        clip = torch.relu(h).view(B, T, G, H, W).transpose(1, 2)
        gate = torch.tanh(F.conv3d(clip, weight, bias, padding=1, groups=2))
        return gate.transpose(1, 2).reshape(B * T, 2, H, W)

    def ours(h, weight, bias):
        gate = gsf_ops.GATE_PATHS[path][0]
        return gate(torch.relu(h), weight, bias, T)

    want, want_grads = expected(official, (h, weight, bias), grad)
    with backends.use(backend):
        got, got_grads = expected(ours, (h, weight, bias), grad)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=0)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w, atol=1e-11, rtol=0)


@pytest.mark.parametrize("path", list(gsf_ops.GATE_PATHS))
def test_gate_backward_paths_match_autograd(path):
    """gsf_module's explicit gate backward (both paths, run on CPU) equals autograd."""
    B, T, G, H, W = 2, 3, 8, 4, 5
    a = torch.relu(randn(B * T, G, H, W, seed=60))
    weight, bias = randn(2, G // 2, 3, 3, 3, seed=61), randn(2, seed=62)
    grad = randn(B * T, 2, H, W, seed=63)
    forward, backward = gsf_ops.GATE_PATHS[path]
    gate, want = expected(lambda a, w, b: forward(a, w, b, T), (a, weight, bias), grad)
    got = backward(a, weight, gate, grad, T)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-12, rtol=0)


@pytest.mark.parametrize("hw", [(3, 4), (1, 1), (1, 5)])
def test_gate_taps_kernels_match_reference(hw):
    if _reason("cpu", "cpp"):
        pytest.skip(_reason("cpu", "cpp"))
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
    if backend == "cpp" and _reason("cpu", "cpp"):
        pytest.skip(_reason("cpu", "cpp"))
    T, H, W = 2, 2, 3
    leaves = [randn(2, 54, H, W, seed=27).requires_grad_(True), randn(2, seed=28).requires_grad_()]
    with backends.use(backend):
        assert torch.autograd.gradcheck(lambda *a: gsf_ops._taps(*a, T), leaves)
        torch.library.opcheck(torch.ops.das_kernels.gsf_gate_taps.default, (*leaves, T))
        gate = gsf_ops._taps(*leaves, T).detach()
        args = (torch.randn_like(gate), gate, T)
        torch.library.opcheck(torch.ops.das_kernels.gsf_gate_taps_backward.default, args)


# --- the ops ----------------------------------------------------------------------------

# (B, T, C, G, H, W)
OP_CASES = {
    "T3-7x13": (2, 3, 8, 8, 7, 13),
    "T8-pass": (1, 8, 12, 8, 4, 5),
    "T1-1x1": (3, 1, 8, 4, 1, 1),
    "T2-wide": (1, 2, 40, 32, 3, 3),  # several channel chunks in the backward
}


def op_inputs(B, T, C, G, H, W, seed=0):
    x = randn(B * T, C, H, W, seed=seed)
    gate = torch.tanh(randn(B * T, 2, H, W, seed=seed + 1))
    w = torch.sigmoid(randn(B, 2, G // 2, T, seed=seed + 2))
    return x, gate, w


def run(backend, device, dtype, fn, inputs, grad_out):
    leaves = [t.to(device, dtype).requires_grad_(True) for t in inputs]
    with backends.use(backend):
        out = fn(*leaves)
        grads = torch.autograd.grad(out, leaves, grad_out.to(device, dtype))
    return out.detach().cpu().double(), [g.cpu().double() for g in grads]


def expected(fn, inputs, grad_out):
    leaves = [t.clone().requires_grad_(True) for t in inputs]
    out = fn(*leaves)
    return out.detach(), list(torch.autograd.grad(out, leaves, grad_out))


@pytest.mark.parametrize("device,backend", BACKEND_PARAMS)
@pytest.mark.parametrize(
    "dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16], ids=str
)
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("case", list(OP_CASES))
def test_op_matches_reference(device, backend, dtype, op, case):
    if backend == "reference" and dtype in (torch.float16, torch.bfloat16):
        pytest.skip("the reference is its own ground truth")
    if backend == "triton" and device == "cpu" and dtype == torch.bfloat16:
        pytest.skip("the Triton interpreter has no bf16 arithmetic")
    B, T, C, G, H, W = OP_CASES[case]
    x, gate, w = op_inputs(B, T, C, G, H, W)
    # round the inputs to the tested dtype so both sides see the same numbers
    x, gate, w = (t.to(dtype).double() for t in (x, gate, w))
    if op == "gsf_pool":
        inputs = (x, gate)
        ours = lambda x, g: das_kernels.gsf_pool(x, g, T, G)  # noqa: E731
        ref = lambda x, g: reference.gsf_pool(x, g, T, G)  # noqa: E731
        out_shape = (B, 4, G // 2, T)
    else:
        inputs = (x, gate, w)
        ours = lambda x, g, w: das_kernels.gsf_fuse(x, g, w, T, G)  # noqa: E731
        ref = lambda x, g, w: reference.gsf_fuse(x, g, w, T, G)  # noqa: E731
        out_shape = x.shape
    grad_out = randn(*out_shape, seed=9).to(dtype).double()
    out, grads = run(backend, device, dtype, ours, inputs, grad_out)
    want, want_grads = expected(ref, inputs, grad_out)
    tol = TOL[dtype]
    torch.testing.assert_close(out, want, **tol)
    for name, got, exp in zip(("x", "gate", "w"), grads, want_grads):
        # gate and w gradients sum over channels / pixels: scale atol by the reduction size
        scale = 1 if name == "x" else (G if name == "gate" else H * W) ** 0.5
        torch.testing.assert_close(
            got, exp, atol=tol["atol"] * scale, rtol=tol["rtol"], msg=lambda m, n=name: f"{n}: {m}"
        )


def test_reference_backward_formulas_match_autograd():
    B, T, C, G, H, W = 2, 3, 12, 8, 3, 5
    x, gate, w = op_inputs(B, T, C, G, H, W, seed=4)
    gp = randn(B, 4, G // 2, T, seed=5)
    want = expected(lambda x, g: reference.gsf_pool(x, g, T, G), (x, gate), gp)[1]
    for got, exp in zip(reference.gsf_pool_backward(gp, x, gate, T, G), want):
        torch.testing.assert_close(got, exp, atol=1e-12, rtol=0)
    go = randn(B * T, C, H, W, seed=6)
    want = expected(lambda x, g, w: reference.gsf_fuse(x, g, w, T, G), (x, gate, w), go)[1]
    for got, exp in zip(reference.gsf_fuse_backward(go, x, gate, w, T, G), want):
        torch.testing.assert_close(got, exp, atol=1e-12, rtol=0)


@pytest.mark.parametrize("device,backend", BACKEND_PARAMS)
def test_pool_backward_accumulate_adds_in_place(device, backend):
    """gsf_pool_backward_accumulate (the backend's kernel, or its fallback) equals
    gsf_pool_backward + add, and leaves the pass-through channels of grad_x alone."""
    B, T, C, G, H, W = 2, 3, 12, 8, 3, 5
    x, gate, _ = (t.to(device) for t in op_inputs(B, T, C, G, H, W, seed=14))
    grad_pooled = randn(B, 4, G // 2, T, seed=15).to(device)
    grad_x = randn(B * T, C, H, W, seed=16).to(device)
    ops = torch.ops.das_kernels
    with backends.use(backend):
        want_gx, want_gg = ops.gsf_pool_backward(grad_pooled, x, gate, T, G)
        got_gx = grad_x.clone()
        got_gg = ops.gsf_pool_backward_accumulate(got_gx, grad_pooled, x, gate, T, G)
    torch.testing.assert_close(got_gx, grad_x + want_gx, atol=1e-12, rtol=0)
    torch.testing.assert_close(got_gg, want_gg, atol=1e-12, rtol=0)
    assert torch.equal(got_gx[:, G:], grad_x[:, G:])


@pytest.mark.parametrize("device,backend", BACKEND_PARAMS)
def test_gradcheck_float64(device, backend):
    B, T, C, G, H, W = 2, 3, 12, 8, 2, 2
    x, gate, w = (t.to(device).requires_grad_(True) for t in op_inputs(B, T, C, G, H, W, seed=7))
    fast = backend == "triton" and device == "cpu"  # the interpreter is slow
    with backends.use(backend):
        pool = lambda x, g: das_kernels.gsf_pool(x, g, T, G)  # noqa: E731
        fuse = lambda x, g, w: das_kernels.gsf_fuse(x, g, w, T, G)  # noqa: E731
        shift_fuse = lambda x, g, fw, fb: das_kernels.gsf_shift_fuse(x, g, fw, fb, T, G)  # noqa: E731
        assert torch.autograd.gradcheck(pool, (x, gate), fast_mode=fast)
        assert torch.autograd.gradcheck(fuse, (x, gate, w), fast_mode=fast)
        fuse_params = [
            randn(*shape, seed=s).to(device).requires_grad_(True)
            for s, shape in ((30, (2, 2, 3, 3)), (31, (2,)))
        ]
        # the composite of the two ops above: a fast-mode check is enough
        assert torch.autograd.gradcheck(shift_fuse, (x, gate, *fuse_params), fast_mode=True)


@pytest.mark.parametrize("device,backend", BACKEND_PARAMS)
def test_opcheck(device, backend):
    B, T, C, G, H, W = 2, 2, 12, 8, 3, 4
    x, gate, w = (t.float().to(device) for t in op_inputs(B, T, C, G, H, W, seed=8))
    gp = torch.randn(B, 4, G // 2, T, device=device)
    fuse_w = torch.randn(2, 2, 3, 3, device=device, requires_grad=True)
    fuse_b = torch.randn(2, device=device, requires_grad=True)
    ops = torch.ops.das_kernels
    with backends.use(backend):
        for op, args in [
            (ops.gsf_pool, (x.requires_grad_(True), gate.requires_grad_(True), T, G)),
            (ops.gsf_fuse, (x, gate, w.requires_grad_(True), T, G)),
            (ops.gsf_pool_backward, (gp, x.detach(), gate.detach(), T, G)),
            (ops.gsf_shift_fuse, (x, gate, fuse_w, fuse_b, T, G)),
            (
                ops.gsf_pool_backward_accumulate,
                (x.detach() * 1, gp, x.detach(), gate.detach(), T, G),
            ),
            (
                ops.gsf_fuse_backward,
                (torch.randn_like(x), x.detach(), gate.detach(), w.detach(), T, G),
            ),
        ]:
            torch.library.opcheck(op.default, args)


def module_op_args(device, dtype, batch_stats, B=2, T=3, C=12, G=8, H=3, W=4):
    """Arguments of das_kernels::gsf_module (tensors as leaves)."""
    x = randn(B * T, C, H, W, seed=40)
    params = [
        randn(*shape, seed=41 + i) * 0.5
        for i, shape in enumerate([(2, G // 2, 3, 3, 3), (2,), (2, 2, 3, 3), (2,), (G,), (G,)])
    ]
    mean = x[:, :G].mean((0, 2, 3)) if batch_stats else randn(G, seed=50)
    invstd = (x[:, :G].var((0, 2, 3)) + 1e-5).rsqrt() if batch_stats else randn(G, seed=51).exp()
    leaves = [t.to(device, dtype).requires_grad_(True) for t in (x, *params)]
    return leaves, [mean.to(device, dtype), invstd.to(device, dtype)], T


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
        nondet = 1e-12 if gsf_ops.gate_path(torch.device(device)) == "conv" else 0.0
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


def test_compile_fullgraph_inductor():
    """Inductor compiles the ops (forward and backward) without graph breaks."""
    B, T, C, G, H, W = 2, 2, 12, 8, 3, 4
    inputs = [t.float() for t in op_inputs(B, T, C, G, H, W, seed=13)]

    def f(x, gate, w):
        return das_kernels.gsf_pool(x, gate, T, G), das_kernels.gsf_fuse(x, gate, w, T, G)

    compiled = torch.compile(f, fullgraph=True)
    leaves = [t.clone().requires_grad_(True) for t in inputs]
    try:
        got = compiled(*leaves)
    except Exception as exc:  # pragma: no cover - depends on the toolchain
        if "graph break" in str(exc).lower() or "Unsupported" in type(exc).__name__:
            raise
        pytest.skip(f"inductor cannot compile here: {type(exc).__name__}: {exc}")
    grad_outs = [torch.randn_like(o) for o in got]
    grads = torch.autograd.grad(got, leaves, grad_outs)
    ref_leaves = [t.clone().requires_grad_(True) for t in inputs]
    want = f(*ref_leaves)
    want_grads = torch.autograd.grad(want, ref_leaves, grad_outs)
    for a, b in zip((*got, *grads), (*want, *want_grads)):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("device,backend", BACKEND_PARAMS)
def test_non_contiguous_inputs(device, backend):
    B, T, C, G, H, W = 2, 2, 8, 8, 5, 6
    x, gate, w = op_inputs(B, T, C, G, H, W, seed=11)
    x_nc = x.to(device).contiguous(memory_format=torch.channels_last)
    gate_nc = gate.transpose(2, 3).contiguous().transpose(2, 3).to(device)
    w_nc = w.transpose(0, 3).contiguous().transpose(0, 3).to(device)
    assert not (x_nc.is_contiguous() or gate_nc.is_contiguous() or w_nc.is_contiguous())
    with backends.use(backend):
        for fn, args in [
            (das_kernels.gsf_pool, (T, G)),
            (lambda x, g, T, G: das_kernels.gsf_fuse(x, g, w_nc, T, G), (T, G)),
        ]:
            got = fn(x_nc, gate_nc, *args)
            want = fn(x.to(device), gate.to(device), *args)
            torch.testing.assert_close(got, want, atol=0, rtol=0)
        module = dnn.GSF(C, T).double().to(device)
        torch.testing.assert_close(module(x_nc), module(x.to(device)), atol=1e-12, rtol=0)


@pytest.mark.parametrize("device,backend", BACKEND_PARAMS)
def test_backward_is_deterministic(device, backend):
    B, T, C, G, H, W = 2, 3, 72, 64, 4, 4  # several channel chunks per half
    x, gate, w = (t.float().to(device) for t in op_inputs(B, T, C, G, H, W, seed=12))
    grad_out = torch.randn_like(x)
    ops = torch.ops.das_kernels
    threads = torch.get_num_threads()
    results = []
    with backends.use(backend):
        for n in (threads, 1, threads):
            torch.set_num_threads(n)
            try:
                results.append(ops.gsf_fuse_backward(grad_out, x, gate, w, T, G))
            finally:
                torch.set_num_threads(threads)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


def test_backward_saves_only_inputs():
    x, gate, w = op_inputs(1, 2, 8, 8, 3, 3)
    x.requires_grad_(True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        das_kernels.gsf_fuse(x, gate, w, 2)
        das_kernels.gsf_pool(x, gate, 2)
    assert sum(t.numel() for t in saved) == 2 * (x.numel() + gate.numel()) + w.numel()


def test_bad_inputs_raise_clear_errors():
    x, gate, w = op_inputs(2, 2, 8, 8, 3, 3)
    with pytest.raises(ValueError, match="num_segments=3"):
        das_kernels.gsf_pool(x, gate, 3)
    with pytest.raises(ValueError, match="n_gsf"):
        das_kernels.gsf_pool(x, gate, 2, n_gsf=6)
    with pytest.raises(ValueError, match="n_gsf"):
        das_kernels.gsf_pool(x, gate, 2, n_gsf=12)
    with pytest.raises(ValueError, match="x must have 4 dims"):
        das_kernels.gsf_pool(x[0], gate, 2)
    with pytest.raises(ValueError, match="gate must have shape"):
        das_kernels.gsf_pool(x, gate[:, :1], 2)
    with pytest.raises(TypeError, match="x must be float16"):
        das_kernels.gsf_pool(x.long(), gate, 2)
    with pytest.raises(TypeError, match="gate must be a torch.Tensor"):
        das_kernels.gsf_pool(x, None, 2)
    with pytest.raises(TypeError, match="num_segments must be an int"):
        das_kernels.gsf_pool(x, gate, 2.0)
    with pytest.raises(ValueError, match="one device"):
        das_kernels.gsf_pool(x, gate.to("meta"), 2)
    with pytest.raises(ValueError, match="w must have shape"):
        das_kernels.gsf_fuse(x, gate, w[:, :, :2], 2)
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
