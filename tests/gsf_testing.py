"""Shared inputs and modules of the GSF tests (test_gsf, test_gsf_module, test_gsf_gate)."""

from __future__ import annotations

import torch

from das_kernels import nn as dnn
from das_kernels import reference


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


def op_inputs(B, T, C, G, H, W, seed=0):
    x = randn(B * T, C, H, W, seed=seed)
    gate = torch.tanh(randn(B * T, 2, H, W, seed=seed + 1))
    w = torch.sigmoid(randn(B, 2, G // 2, T, seed=seed + 2))
    return x, gate, w


def expected(fn, inputs, grad_out):
    leaves = [t.clone().requires_grad_(True) for t in inputs]
    out = fn(*leaves)
    return out.detach(), list(torch.autograd.grad(out, leaves, grad_out))


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
