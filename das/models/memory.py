"""``memory="lean"``: recompute blocks in the backward instead of storing their activations.

``recompute(module, x)`` runs ``module(x)`` under ``torch.utils.checkpoint`` (non-reentrant,
RNG state preserved) when autograd records, else plainly. The recomputation in the backward
leaves every buffer of `module` as the first forward left it (BatchNorm running statistics
and counters would otherwise be updated twice), so a lean step gives exactly the numbers of
a normal one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

__all__ = ["MEMORY_MODES", "recompute"]

MEMORY_MODES = ("normal", "lean")


@contextlib.contextmanager
def _buffers_kept(module: nn.Module) -> Iterator[None]:
    saved = [(b, b.detach().clone()) for b in module.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)


def recompute(module: nn.Module, x: Tensor) -> Tensor:
    """``module(x)``, its activations recomputed in the backward when autograd records."""
    if not torch.is_grad_enabled():
        return module(x)
    return checkpoint(
        module,
        x,
        use_reentrant=False,
        preserve_rng_state=True,
        context_fn=lambda: (contextlib.nullcontext(), _buffers_kept(module)),
    )
