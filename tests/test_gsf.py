"""gsf_pool / gsf_fuse / gsf_shift_fuse on every backend against das_kernels.reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import backend_params
from gsf_testing import expected, make_modules, op_inputs, randn

import das_kernels
from das_kernels import backends, reference
from das_kernels import nn as dnn

OPS = ("gsf_pool", "gsf_fuse")
BACKEND_PARAMS = backend_params(*OPS)
TOL = {
    torch.float64: dict(atol=1e-10, rtol=1e-10),
    torch.float32: dict(atol=1e-5, rtol=1e-5),
    torch.float16: dict(atol=1e-2, rtol=1e-2),
    torch.bfloat16: dict(atol=6e-2, rtol=4e-2),
}


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


# (B, T, C, G, H, W)
OP_CASES = {
    "T3-7x13": (2, 3, 8, 8, 7, 13),
    "T8-pass": (1, 8, 12, 8, 4, 5),
    "T1-1x1": (3, 1, 8, 4, 1, 1),
    "T2-wide": (1, 2, 40, 32, 3, 3),  # several channel chunks in the backward
}


def run(backend, device, dtype, fn, inputs, grad_out):
    leaves = [t.to(device, dtype).requires_grad_(True) for t in inputs]
    with backends.use(backend):
        out = fn(*leaves)
        grads = torch.autograd.grad(out, leaves, grad_out.to(device, dtype))
    return out.detach().cpu().double(), [g.cpu().double() for g in grads]


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
