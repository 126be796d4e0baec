"""The DAS cell: an image becomes a T-frame video through a DAG of transform edges.

One input node (the image, broadcast over T frames), ``nodes`` intermediate nodes and an
edge ``i -> j`` for every ``i < j`` (input included; 10 edges for 4 nodes, in DARTS order
(0,1), (0,2), (1,2), (0,3), ...). Every edge mixes its K ops in ONE
``das_kernels.multi_affine_warp`` call (plus its colour ops, if any; see below): edges
leaving the input warp the image ``(B, C, H, W)`` (every frame reads the same image), edges
leaving an intermediate node warp its video ``(B, T, C, H, W)`` (frame t samples frame t).
Node j is the sum of its incoming edges; the cell output is the mean of the intermediate
nodes, a ``(B, T, C, H, W)`` video. (Each edge is a convex mix, so with all-identity edges
node j is ``2**(j-1) x`` and the output ``(2**n - 1)/n x``: a
constant gain the backbone's first BatchNorm absorbs.)

Op k of edge e at frame t uses magnitude ``magnitudes[e, k]`` and frame step ``s_t``
(``centered``: the middle frame is the untouched image). Affine ops are the sampling matrices
of ``das_kernels.affine``, mixed in the edge's one fused warp call. Colour ops
(``das_kernels.colour``) take the amount ``a = s_t * m`` and act in pixel space: the cell
un-normalises a node with ``pixel_mean``/``pixel_std`` (the data's normalisation; default:
the input is already in [0, 1]) after dividing by the node's nominal gain ``2**(i-1)``, and
normalises the result back, so colour and affine terms add up like the ops of one mix.

Search spaces: ``affine5`` (translate_x, translate_y, scale, rotate, identity; the default),
``aa13``, the paper's 13-op AutoAugment-like set (shear_x, shear_y, translate_x,
translate_y, rotate and the colour ops auto_contrast, equalize, solarize, posterize,
contrast, color, brightness, sharpness), and ``aa13_affine``, its five affine members.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import das_kernels
from das.unwarp import AVERAGES, path_terms, unwarp_frames
from das_kernels.affine import DEFAULT_MAGNITUDE, OPS_AFFINE5, TRANSFORMS, build_theta, frame_steps
from das_kernels.colour import COLOUR_OPS, DEFAULT_COLOUR_MAGNITUDE, colour_transform

__all__ = [
    "AUTOAUGMENT13",
    "SEARCH_SPACES",
    "DASCell",
    "DiscreteCell",
    "Genotype",
    "ReplicaCell",
    "cell_edges",
    "genotype_video",
    "random_genotype",
    "resolve_ops",
]

AUTOAUGMENT13: tuple[str, ...] = (
    "shear_x",
    "shear_y",
    "translate_x",
    "translate_y",
    "rotate",
) + COLOUR_OPS
SEARCH_SPACES: dict[str, tuple[str, ...]] = {
    "affine5": tuple(OPS_AFFINE5),
    "aa13": AUTOAUGMENT13,
    "aa13_affine": tuple(op for op in AUTOAUGMENT13 if op in TRANSFORMS),
}
OP_MAGNITUDE: dict[str, float] = {**DEFAULT_MAGNITUDE, **DEFAULT_COLOUR_MAGNITUDE}
STEP_MODES = ("centered", "forward")
MAGNITUDE_MODES = ("fixed", "gaussian")
MIN_MAGNITUDE = -0.9  # `scale` needs m > -1; learnable magnitudes are clamped here


def resolve_ops(ops: str | Sequence[str]) -> tuple[str, ...]:
    """A search-space name (``affine5``, ``aa13``) or an explicit op list -> op names."""
    if isinstance(ops, str):
        if ops in SEARCH_SPACES:
            return SEARCH_SPACES[ops]
        names = tuple(o.strip() for o in ops.split(",") if o.strip())
    else:
        names = tuple(ops)
    if not names:
        raise ValueError("the op set is empty")
    unknown = [o for o in names if o not in OP_MAGNITUDE]
    if unknown:
        raise ValueError(
            f"unknown op(s) {unknown}: choose a search space ({', '.join(SEARCH_SPACES)}) "
            f"or ops from {sorted(OP_MAGNITUDE)}"
        )
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate ops in {list(names)}")
    return names


def cell_edges(nodes: int) -> list[tuple[int, int]]:
    """Edges ``(i, j)`` for ``0 <= i < j <= nodes`` in DARTS order (grouped by target node)."""
    if not isinstance(nodes, int) or nodes < 1:
        raise ValueError(f"nodes must be a positive int, got {nodes!r}")
    return [(i, j) for j in range(1, nodes + 1) for i in range(j)]


def _node_gain(i: int) -> float:
    """Nominal intensity gain of node i: input 1, node j ``2**(j-1)`` (j convex mixes summed)."""
    return 1.0 if i == 0 else 2.0 ** (i - 1)


def _run_dag(x: Tensor, nodes: int, edge: Callable[[int, int, Tensor], Tensor]) -> Tensor:
    """Node j = sum of ``edge(e, i, state_i)`` over incoming edges i -> j; output = mean of
    nodes 1..n."""
    states = [x]
    e = 0
    for j in range(1, nodes + 1):
        total = edge(e, 0, states[0])
        for i in range(1, j):
            total = total + edge(e + i, i, states[i])
        e += j
        states.append(total)
    return torch.stack(states[1:]).mean(0)


class PixelSpace(nn.Module):
    """Where the colour ops act: normalised cell states <-> [0, 1] pixels.

    ``mean``/``std``: the data's per-channel normalisation (None: the cell's input is already
    in [0, 1]). A node state ``g * x_norm`` (``g`` its nominal gain) is the pixel image
    ``x_norm * std + mean``."""

    def __init__(
        self, mean: Sequence[float] | None = None, std: Sequence[float] | None = None
    ) -> None:
        super().__init__()
        mean_t = torch.tensor([0.0] if mean is None else list(mean), dtype=torch.float32)
        std_t = torch.tensor([1.0] if std is None else list(std), dtype=torch.float32)
        if mean_t.dim() != 1 or std_t.shape != mean_t.shape or not bool((std_t > 0).all()):
            raise ValueError(
                f"pixel mean/std must be equal-length lists with std > 0, got {mean}, {std}"
            )
        self.register_buffer("mean", mean_t.view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", std_t.view(1, -1, 1, 1), persistent=False)

    def mix(
        self,
        state: Tensor,
        gain: float,
        frames: int,
        ops: Sequence[str],
        weights: Tensor,
        amounts: Tensor,
    ) -> Tensor:
        """``sum_k weights[k] * ops[k](state)`` frame by frame, in pixel space.

        ``state``: (B, C, H, W) (every frame reads it) or (B, T, C, H, W); ``weights``: (K,);
        ``amounts``: (K, T), the signed amount of op k at frame t, or (K, B, T) per sample.
        Returns (B, T, C, H, W)."""
        video = state.unsqueeze(1).expand(-1, frames, -1, -1, -1) if state.dim() == 4 else state
        B, T, C = video.shape[:3]
        if self.mean.shape[1] not in (1, C):
            raise ValueError(f"pixel mean/std have {self.mean.shape[1]} channels, images {C}")
        flat = video.reshape(B * T, *video.shape[2:])
        mean, std = self.mean.to(flat.dtype), self.std.to(flat.dtype)
        pixels = flat * (std / gain) + mean
        out = sum(
            w * colour_transform(op, pixels, a.to(flat.dtype).expand(B, T).reshape(-1))
            for op, w, a in zip(ops, weights, amounts)
        )
        return ((out - weights.sum() * mean) * (gain / std)).view_as(video)


def _empty_video(state: Tensor, frames: int) -> Tensor:
    """Zeros shaped like an edge's output (every op of the edge masked)."""
    shape = state.shape if state.dim() == 5 else (state.shape[0], frames, *state.shape[1:])
    return state.new_zeros(shape)


def _check_input(x: Tensor) -> None:
    if not isinstance(x, Tensor) or x.dim() != 4:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"the cell takes an image batch (B, C, H, W), got {shape}")


@dataclass(frozen=True)
class Genotype:
    """One op (and its magnitude) per edge of a cell; what search finds and train uses."""

    ops: tuple[str, ...]
    nodes: int = 4
    frames: int = 4
    magnitudes: tuple[float, ...] = ()
    mode: str = "centered"
    search_space: tuple[str, ...] = field(default_factory=tuple)
    sigmas: tuple[float, ...] = ()  # --magnitudes gaussian: each edge's learned sigma (report)

    def __post_init__(self) -> None:
        object.__setattr__(self, "ops", tuple(self.ops))
        object.__setattr__(self, "search_space", tuple(self.search_space))
        object.__setattr__(self, "sigmas", tuple(float(f"{float(v):.7g}") for v in self.sigmas))
        n_edges = len(cell_edges(self.nodes))
        if len(self.ops) != n_edges:
            raise ValueError(
                f"genotype has {len(self.ops)} ops but a {self.nodes}-node cell has {n_edges} edges"
            )
        resolve_ops(sorted(set(self.ops)))  # raises on unknown names
        mags = tuple(float(f"{float(m):.7g}") for m in self.magnitudes) or tuple(
            OP_MAGNITUDE[o] for o in self.ops
        )
        object.__setattr__(self, "magnitudes", mags)
        if len(self.magnitudes) != n_edges:
            raise ValueError(f"genotype needs {n_edges} magnitudes, got {len(self.magnitudes)}")
        bad = [i for i, m in enumerate(self.magnitudes) if not math.isfinite(m)]
        if bad:
            raise ValueError(
                f"genotype magnitudes must be finite numbers, but edge(s) {bad} have "
                f"{[self.magnitudes[i] for i in bad]}"
            )
        if self.sigmas and len(self.sigmas) != n_edges:
            raise ValueError(f"genotype needs {n_edges} sigmas (or none), got {len(self.sigmas)}")
        if not isinstance(self.frames, int) or self.frames < 1:
            raise ValueError(f"genotype frames must be a positive int, got {self.frames!r}")
        if self.mode not in STEP_MODES:
            raise ValueError(f"genotype mode must be one of {STEP_MODES}, got {self.mode!r}")

    @property
    def edges(self) -> list[tuple[int, int]]:
        return cell_edges(self.nodes)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["edges"] = [list(e) for e in self.edges]
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict) -> Genotype:
        if not isinstance(d, dict) or "ops" not in d:
            raise ValueError("a genotype is a JSON object with at least an 'ops' list")
        keys = {"ops", "nodes", "frames", "magnitudes", "mode", "search_space", "sigmas"}
        return cls(**{k: v for k, v in d.items() if k in keys})

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Genotype:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"genotype file not found: {path}")
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except (json.JSONDecodeError, TypeError, ValueError) as exc:
            raise ValueError(
                f"{path} is not a valid genotype ({exc}); expected JSON like "
                '{"ops": [...one op per edge...], "nodes": 4, "frames": 4, "magnitudes": [...]}'
            ) from exc


def random_genotype(
    ops: str | Sequence[str] = "affine5",
    nodes: int = 4,
    frames: int = 4,
    seed: int = 0,
    mode: str = "centered",
) -> Genotype:
    """A genotype with a uniformly random op per edge (the paper's random-policy baseline)."""
    names = resolve_ops(ops)
    rng = random.Random(seed)
    chosen = tuple(rng.choice(names) for _ in cell_edges(nodes))
    return Genotype(chosen, nodes, frames, mode=mode, search_space=names)


class DASCell(nn.Module):
    """The mixed (searchable) cell: per edge, a softmax(tau)-weighted mix of all ops.

    ``tau``: (edges, ops) architecture logits. ``magnitudes``: (edges, ops), a Parameter when
    ``learn_magnitudes`` else a buffer. ``mask``: (edges, ops) 0/1 buffer; a masked op gets
    weight 0 without renormalisation (perturbation selection). ``fixed``: (edges,) op index
    per edge already discretised by selection (one-hot weights), -1 while still mixed.
    ``pixel_mean``/``pixel_std``: the input's normalisation, for the colour ops (see
    ``PixelSpace``). ``magnitudes="gaussian"`` (DRA's magnitude distributions in the video
    setting): in training each sample draws its magnitudes ``m = mu + eps * sigma``,
    ``eps ~ N(0, 1)`` per (sample, edge, op), with ``mu`` the (learnable) ``magnitudes`` and
    ``sigma = softplus(sigma_raw)`` (init 0.1 x the op's default magnitude) learned with tau;
    evaluation, selection and the genotype use ``mu``.
    """

    def __init__(
        self,
        frames: int = 4,
        nodes: int = 4,
        ops: str | Sequence[str] = "affine5",
        learn_magnitudes: bool = False,
        mode: str = "centered",
        aspect: float = 1.0,
        tau_init_std: float = 1e-3,
        pixel_mean: Sequence[float] | None = None,
        pixel_std: Sequence[float] | None = None,
        magnitudes: str = "fixed",
    ) -> None:
        super().__init__()
        if not isinstance(frames, int) or frames < 1:
            raise ValueError(f"frames must be a positive int, got {frames!r}")
        if magnitudes not in MAGNITUDE_MODES:
            raise ValueError(f"magnitudes must be one of {MAGNITUDE_MODES}, got {magnitudes!r}")
        self.gaussian = magnitudes == "gaussian"
        learn_magnitudes = learn_magnitudes or self.gaussian
        if mode not in STEP_MODES:
            raise ValueError(f"mode must be one of {STEP_MODES}, got {mode!r}")
        self.frames, self.nodes, self.mode, self.aspect = frames, nodes, mode, aspect
        self.ops = resolve_ops(ops)
        self.affine_idx = [k for k, o in enumerate(self.ops) if o in TRANSFORMS]
        self.colour_idx = [k for k, o in enumerate(self.ops) if o in COLOUR_OPS]
        self.edges = cell_edges(nodes)
        E, K = len(self.edges), len(self.ops)
        self.tau = nn.Parameter(tau_init_std * torch.randn(E, K))
        self.pixels = PixelSpace(pixel_mean, pixel_std)
        mags = torch.tensor([OP_MAGNITUDE[o] for o in self.ops]).repeat(E, 1)
        self.learn_magnitudes = learn_magnitudes
        if learn_magnitudes:
            self.magnitudes = nn.Parameter(mags)
        else:
            self.register_buffer("magnitudes", mags)
        if self.gaussian:  # softplus^-1 of 0.1 x |default| (at least 1e-3)
            sigma0 = (0.1 * mags.abs()).clamp(min=1e-3)
            self.sigma_raw = nn.Parameter(torch.log(torch.expm1(sigma0)))
        self.register_buffer("mask", torch.ones(E, K))
        self.register_buffer("fixed", torch.full((E,), -1, dtype=torch.long))
        self._theta_cache: Tensor | None = None

    def arch_parameters(self) -> list[nn.Parameter]:
        """What the architecture optimiser updates: tau (and learnable magnitudes)."""
        extra = [self.magnitudes] if self.learn_magnitudes else []
        return [self.tau] + extra + ([self.sigma_raw] if self.gaussian else [])

    def sigma(self) -> Tensor:
        """(edges, ops) standard deviations of the magnitudes (``--magnitudes gaussian``)."""
        if not self.gaussian:
            return torch.zeros_like(self.magnitudes)
        return F.softplus(self.sigma_raw.float())

    def _sampled(self, eps: Tensor) -> Tensor:
        """(B, edges, ops) magnitudes ``mu + eps * sigma`` (clamped like learnable ones)."""
        return (self.magnitudes.float() + eps * self.sigma()).clamp(min=MIN_MAGNITUDE)

    def _sample_thetas(self, mags: Tensor) -> Tensor:
        """(B, edges, affine ops, T, 2, 3) sampling matrices of per-sample magnitudes."""
        steps = frame_steps(self.frames, self.mode, device=mags.device)
        return torch.stack(
            [
                TRANSFORMS[self.ops[k]](mags[..., k, None], steps, self.aspect)
                for k in self.affine_idx
            ],
            dim=2,
        )

    def edge_weights(self) -> Tensor:
        """(edges, ops): softmax(tau) per edge, masked ops at 0 (no renormalisation);
        edges fixed by selection are one-hot."""
        w = torch.softmax(self.tau.float(), dim=-1) * self.mask
        fixed = self.fixed >= 0
        if bool(fixed.any()):
            onehot = F.one_hot(self.fixed.clamp(min=0), w.shape[-1]).to(w.dtype)
            w = torch.where(fixed[:, None], onehot, w)
        return w

    def fix_edge(self, edge: int, op: int) -> None:
        """Discretise `edge` to op index `op` (one-hot weight from now on)."""
        self.fixed[edge] = op

    def _clamped_magnitudes(self) -> Tensor:
        mags = self.magnitudes.float()
        return mags.clamp(min=MIN_MAGNITUDE) if self.learn_magnitudes else mags

    def thetas(self) -> Tensor:
        """(edges, affine ops, T, 2, 3) sampling matrices of the affine ops (differentiable in
        learnable magnitudes)."""
        if not self.learn_magnitudes and self._theta_cache is not None:
            cached = self._theta_cache
            if cached.device == self.magnitudes.device:
                return cached
        mags = self._clamped_magnitudes()[:, self.affine_idx]
        affine_ops = [self.ops[k] for k in self.affine_idx]
        theta = torch.stack(
            [build_theta(affine_ops, self.frames, m, self.mode, self.aspect) for m in mags]
        )
        if not self.learn_magnitudes:
            self._theta_cache = theta.detach()
        return theta

    def colour_amounts(self) -> Tensor:
        """(edges, colour ops, T): the signed amount ``s_t * m`` of each colour op."""
        mags = self._clamped_magnitudes()[:, self.colour_idx]
        steps = frame_steps(self.frames, self.mode, device=mags.device)
        return mags[..., None] * steps

    def op_thetas(self) -> Tensor:
        """(edges, ops, T, 2, 3): every op's sampling matrix, the identity for colour ops."""
        E, K = self.tau.shape
        eye = torch.eye(2, 3, device=self.magnitudes.device)
        theta = eye.expand(E, K, self.frames, 2, 3)
        if not self.affine_idx:
            return theta
        theta = theta.clone()
        theta[:, self.affine_idx] = self.thetas()
        return theta

    def unwarp(self, frames: Tensor, average: str = "logits") -> tuple[Tensor, Tensor]:
        """Per-frame predictions (B, T, C, H, W) -> un-warped (B, C, H, W) and coverage
        (B, 1, H, W), with every path of the current (masked, fixed) mix; see das.unwarp."""
        theta, weights = path_terms(self.edges, self.nodes, self.op_thetas(), self.edge_weights())
        return unwarp_frames(frames, theta, weights, average)

    def _load_from_state_dict(self, *args, **kwargs) -> None:  # type: ignore[override]
        self._theta_cache = None
        super()._load_from_state_dict(*args, **kwargs)

    def forward(
        self, x: Tensor, weights: Tensor | None = None, eps: Tensor | None = None
    ) -> Tensor:
        """x (B, C, H, W) -> (B, T, C, H, W). ``weights`` (edges, ops) overrides the mix;
        ``eps`` (B, edges, ops) fixes the gaussian magnitudes' noise (training only)."""
        _check_input(x)
        w = self.edge_weights() if weights is None else weights
        if w.shape != self.tau.shape:
            raise ValueError(
                f"weights must have shape {tuple(self.tau.shape)}, got {tuple(w.shape)}"
            )
        w = w.float()
        w_affine, w_colour = w[:, self.affine_idx], w[:, self.colour_idx]
        sampled = None
        if self.gaussian and self.training:
            if eps is None:
                eps = torch.randn(x.shape[0], *self.tau.shape).to(x.device)
            sampled = self._sampled(eps.float())
        if not self.affine_idx:
            theta = None
        elif sampled is not None:  # per sample: (edges, B, affine ops, T, 2, 3)
            theta = self._sample_thetas(sampled).transpose(0, 1)
        else:
            theta = self.thetas()
        warped = [theta is not None] * len(self.edges)
        if self.colour_idx:
            if sampled is None:
                amounts = self.colour_amounts()
            else:  # per sample: (edges, colour ops, B, T)
                steps = frame_steps(self.frames, self.mode, device=x.device)
                amounts = (sampled[..., self.colour_idx, None] * steps).permute(1, 2, 0, 3)
            live = (w_colour != 0).tolist()  # exact zeros (masked / fixed) add nothing
            colour_ops = [self.ops[k] for k in self.colour_idx]
            if theta is not None:
                warped = (w_affine != 0).any(dim=1).tolist()

        def edge(e: int, i: int, state: Tensor) -> Tensor:
            out = None
            if warped[e]:
                out = das_kernels.multi_affine_warp(state, theta[e], w_affine[e])
            if self.colour_idx and any(live[e]):
                ks = [k for k, on in enumerate(live[e]) if on]
                mixed = self.pixels.mix(
                    state,
                    _node_gain(i),
                    self.frames,
                    [colour_ops[k] for k in ks],
                    w_colour[e, ks],
                    amounts[e, ks],
                )
                out = mixed if out is None else out + mixed
            return _empty_video(state, self.frames) if out is None else out

        return _run_dag(x, self.nodes, edge)

    @torch.no_grad()
    def genotype(self) -> Genotype:
        """Argmax of the (masked) weights per edge."""
        w = self.edge_weights()
        idx = w.argmax(dim=-1).tolist()
        mags = [float(self.magnitudes[e, k]) for e, k in enumerate(idx)]
        sigma = self.sigma()
        return Genotype(
            tuple(self.ops[k] for k in idx),
            self.nodes,
            self.frames,
            tuple(mags),
            self.mode,
            self.ops,
            tuple(float(sigma[e, k]) for e, k in enumerate(idx)) if self.gaussian else (),
        )

    def extra_repr(self) -> str:
        return (
            f"frames={self.frames}, nodes={self.nodes}, edges={len(self.edges)}, "
            f"ops={list(self.ops)}, learn_magnitudes={self.learn_magnitudes}, mode={self.mode}"
            + (", magnitudes=gaussian" if self.gaussian else "")
        )


class DiscreteCell(nn.Module):
    """The cell of a genotype: one op per edge (a K=1 warp or one colour op), equal to the
    mixed cell with one-hot weights on the same ops and magnitudes. No learnable parameters."""

    def __init__(
        self,
        genotype: Genotype,
        aspect: float = 1.0,
        pixel_mean: Sequence[float] | None = None,
        pixel_std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        self.genotype = genotype
        self.frames, self.nodes = genotype.frames, genotype.nodes
        T, mode = genotype.frames, genotype.mode
        theta = torch.stack(
            [
                build_theta(
                    [op if op in TRANSFORMS else "identity"], T, torch.tensor([m]), mode, aspect
                )
                for op, m in zip(genotype.ops, genotype.magnitudes)
            ]
        )
        amounts = torch.tensor(genotype.magnitudes)[:, None, None] * frame_steps(T, mode)
        self.register_buffer("theta", theta, persistent=False)  # (edges, 1, T, 2, 3)
        self.register_buffer("amounts", amounts, persistent=False)  # (edges, 1, T)
        self.register_buffer("one", torch.ones(1), persistent=False)
        self.pixels = PixelSpace(pixel_mean, pixel_std)
        self._paths: tuple[Tensor, Tensor] | None = None

    def forward(self, x: Tensor) -> Tensor:
        _check_input(x)
        ops = self.genotype.ops

        def edge(e: int, i: int, state: Tensor) -> Tensor:
            if ops[e] in TRANSFORMS:
                return das_kernels.multi_affine_warp(state, self.theta[e], self.one)
            return self.pixels.mix(
                state, _node_gain(i), self.frames, [ops[e]], self.one, self.amounts[e]
            )

        return _run_dag(x, self.nodes, edge)

    def unwarp(self, frames: Tensor, average: str = "logits") -> tuple[Tensor, Tensor]:
        """Per-frame predictions (B, T, C, H, W) -> un-warped (B, C, H, W) and coverage
        (B, 1, H, W) over the genotype's paths; see das.unwarp."""
        if self._paths is None or self._paths[0].device != frames.device:
            weights = self.one.expand(len(self.genotype.ops), 1)
            self._paths = path_terms(cell_edges(self.nodes), self.nodes, self.theta, weights)
        return unwarp_frames(frames, *self._paths, average)

    def extra_repr(self) -> str:
        return f"frames={self.frames}, nodes={self.nodes}, ops={list(self.genotype.ops)}"


@torch.no_grad()
def genotype_video(
    genotype: Genotype,
    images: Tensor,
    pixel_mean: Sequence[float],
    pixel_std: Sequence[float],
    aspect: float = 1.0,
) -> Tensor:
    """What the genotype's cell makes of pixel images: (N, C, H, W) in [0, 1] ->
    (N, T, C, H, W) in pixel units (the cell's constant gain ``(2**n - 1)/n`` divided out)."""
    cell = DiscreteCell(genotype, aspect, pixel_mean, pixel_std).to(images.device)
    mean, std = cell.pixels.mean.to(images.dtype), cell.pixels.std.to(images.dtype)
    video = cell((images - mean) / std)
    gain = (2**genotype.nodes - 1) / genotype.nodes
    return video / gain * std + mean


class ReplicaCell(nn.Module):
    """Identity frames: the image repeated T times (the paper's replica ablation)."""

    def __init__(self, frames: int = 4) -> None:
        super().__init__()
        if not isinstance(frames, int) or frames < 1:
            raise ValueError(f"frames must be a positive int, got {frames!r}")
        self.frames = frames

    def forward(self, x: Tensor) -> Tensor:
        _check_input(x)
        return x.unsqueeze(1).expand(-1, self.frames, -1, -1, -1)

    def unwarp(self, frames: Tensor, average: str = "logits") -> tuple[Tensor, Tensor]:
        """The plain frame mean (nothing moved), coverage 1."""
        if average not in AVERAGES:
            raise ValueError(f"average must be one of {AVERAGES}, got {average!r}")
        if average == "probs":
            frames = torch.softmax(frames, dim=2)
        out = frames.mean(1)
        return out, out.new_ones(out.shape[0], 1, *out.shape[2:])

    def extra_repr(self) -> str:
        return f"frames={self.frames}"
