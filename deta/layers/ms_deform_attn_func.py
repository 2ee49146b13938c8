"""Multi-scale deformable attention op (Deformable DETR, arXiv:2010.04159; used by DETA,
arXiv:2212.06137): lazy loader of the compiled ``deta._C``, the pure-PyTorch reference, the
autograd Function and the dispatch between them.

Shape shorthand: ``N`` batch, ``S = sum_l H_l * W_l`` value positions, ``M`` heads, ``D``
channels per head, ``Lq`` queries, ``L`` levels, ``P`` points per level.

Unlike the official op (CUDA only, ``models/ops/functions/ms_deform_attn_func.py``), the compiled
extension is optional: without it every call falls back to :func:`ms_deform_attn_pytorch`.
"""

import functools
import importlib
import logging
import os
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F

__all__ = [
    "describe_msda_impl",
    "has_cpp_ext",
    "has_cuda_ext",
    "ms_deform_attn",
    "ms_deform_attn_pytorch",
    "set_msda_impl",
    "get_msda_impl",
    "get_validate_levels",
    "set_validate_levels",
]

logger = logging.getLogger(__name__)

MSDA_IMPLS = ("auto", "pytorch", "cpp", "cuda")
_ENV_VAR = "DETA_MSDA_IMPL"
_VALIDATE_ENV_VAR = "DETA_MSDA_VALIDATE_LEVELS"
_REBUILD_HINT = "Rebuild with pip install --no-build-isolation -e ."
_CUDA_REBUILD_HINT = (
    "Rebuild with FORCE_CUDA=1 (and TORCH_CUDA_ARCH_LIST, CUDA_HOME) "
    "pip install --no-build-isolation -e ."
)
_default_impl: Optional[str] = None
_validate_levels: Optional[bool] = None
_ext_import_error: Optional[str] = None
# Fallback reasons already logged, so the slow-path warning is emitted once per reason.
_warned_fallbacks = set()


@functools.lru_cache(maxsize=None)
def _load_ext():
    """Import ``deta._C`` on first use; ``None`` (and the reason remembered) when it is missing."""
    global _ext_import_error
    try:
        # Not ``from deta import _C``: that returns the package attribute once _C has been
        # imported, ignoring a ``sys.modules["deta._C"] = None`` block (used by the tests).
        ext = importlib.import_module("deta._C")
    except ImportError as e:
        _ext_import_error = str(e)
        return None
    _ext_import_error = None
    return ext


def has_cpp_ext() -> bool:
    """Whether the compiled extension ``deta._C`` (CPU kernel at least) can be imported."""
    return _load_ext() is not None


def has_cuda_ext() -> bool:
    """Whether ``deta._C`` can be imported and was built with the CUDA kernels."""
    ext = _load_ext()
    return ext is not None and bool(ext.has_cuda())


def _check_impl(name: str, source: str) -> str:
    if name not in MSDA_IMPLS:
        raise ValueError(f"{source} must be one of {MSDA_IMPLS}, got {name!r}")
    return name


def set_msda_impl(name: Optional[str]) -> None:
    """Set the process-wide default implementation used when ``impl`` is None.

    Args:
        name (str or None): "auto", "pytorch", "cpp" or "cuda"; None goes back to the
            ``DETA_MSDA_IMPL`` environment variable (default "auto").
    """
    global _default_impl
    _default_impl = None if name is None else _check_impl(name, "set_msda_impl(name)")


def get_msda_impl() -> str:
    """The default implementation: from :func:`set_msda_impl`, else ``$DETA_MSDA_IMPL``, else
    "auto"."""
    if _default_impl is not None:
        return _default_impl
    return _check_impl(os.environ.get(_ENV_VAR, "auto"), f"${_ENV_VAR}")


def set_validate_levels(enabled: Optional[bool]) -> None:
    """Whether calls on CUDA tensors also check the contents of ``spatial_shapes`` and
    ``level_start_index`` (as calls on CPU tensors always do), for debugging.

    Off by default: reading them back is a device-to-host sync per call, which idles the GPU
    and rules out CUDA graphs. The model builds them from the feature maps' sizes, so they are
    right by construction; and the CUDA kernels skip corners outside ``value``, so wrong ones
    give wrong numbers, never out-of-bounds reads.

    Args:
        enabled (bool or None): None goes back to ``$DETA_MSDA_VALIDATE_LEVELS`` ("1" on,
            default "0").
    """
    global _validate_levels
    if enabled is not None and not isinstance(enabled, bool):
        raise ValueError(f"set_validate_levels(enabled) must be a bool or None, got {enabled!r}")
    _validate_levels = enabled


def get_validate_levels() -> bool:
    """Whether CUDA calls check the level tensors' contents: from :func:`set_validate_levels`,
    else ``$DETA_MSDA_VALIDATE_LEVELS``, else off."""
    if _validate_levels is not None:
        return _validate_levels
    flag = os.environ.get(_VALIDATE_ENV_VAR, "0")
    if flag not in ("0", "1"):
        raise ValueError(f"${_VALIDATE_ENV_VAR} must be 0 or 1, got {flag!r}")
    return flag == "1"


def _warn_fallback(reason: str, hint: str = _REBUILD_HINT) -> None:
    if reason not in _warned_fallbacks:
        _warned_fallbacks.add(reason)
        logger.warning(
            f"deta._C is not available ({reason}); using the slow PyTorch implementation of "
            f"multi-scale deformable attention. {hint}"
        )


def _ext_unavailable_reason() -> str:
    return _ext_import_error or "deta._C could not be loaded"


# torch.compile evaluates the choice once while tracing and bakes it into the graph (it depends
# on the build and the settings, not on tensor values).
@torch.compiler.assume_constant_result
def _select_impl(is_cuda: bool, impl: Optional[str]) -> str:
    """Resolve a requested implementation to "pytorch" or "ext" for a tensor's device."""
    impl = get_msda_impl() if impl is None else _check_impl(impl, "impl")
    if impl == "pytorch":
        return "pytorch"
    if impl == "cuda" and not is_cuda:
        raise ValueError("impl='cuda' needs CUDA tensors; use 'cpp' or 'auto' for CPU tensors")
    ext = _load_ext()
    if is_cuda and not has_cuda_ext():
        reason = "not built with CUDA" if ext is not None else _ext_unavailable_reason()
        if impl == "auto":
            _warn_fallback(f"CUDA kernels missing: {reason}", _CUDA_REBUILD_HINT)
            return "pytorch"
        raise RuntimeError(
            f"impl={impl!r} needs deta._C with CUDA kernels ({reason}). {_CUDA_REBUILD_HINT}"
        )
    if ext is None:
        if impl == "auto":
            _warn_fallback(_ext_unavailable_reason())
            return "pytorch"
        reason = _ext_unavailable_reason()
        raise RuntimeError(f"impl={impl!r} needs deta._C ({reason}). {_REBUILD_HINT}")
    return "ext"


def describe_msda_impl(device: str = "cpu", impl: Optional[str] = None) -> str:
    """Name the implementation a call on ``device`` would use, without warning or raising."""
    is_cuda = torch.device(device).type == "cuda"
    try:
        requested = get_msda_impl() if impl is None else _check_impl(impl, "impl")
        if requested == "pytorch":
            return "pytorch (requested)"
        if requested == "cuda" and not is_cuda:
            return "error (impl='cuda' needs CUDA tensors)"
        if (is_cuda and has_cuda_ext()) or (not is_cuda and has_cpp_ext()):
            return "cuda kernel" if is_cuda else "cpu kernel"
        return "pytorch (fallback)" if requested == "auto" else f"error ({requested} unavailable)"
    except ValueError as e:
        return f"error ({e})"


def _check_float(name: str, t: torch.Tensor, dim: int) -> None:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    if t.dim() != dim:
        raise ValueError(f"{name} must be {dim}-d, got shape {tuple(t.shape)}")


def _check_levels(
    spatial_shapes: torch.Tensor, level_start_index: torch.Tensor, num_value: int
) -> List[Tuple[int, int]]:
    """Check the level bookkeeping against ``value.size(1)``; returns [(H_l, W_l)]."""
    if spatial_shapes.dim() != 2 or spatial_shapes.shape[1] != 2:
        raise ValueError(f"spatial_shapes must be (L, 2), got shape {tuple(spatial_shapes.shape)}")
    if level_start_index.shape != spatial_shapes.shape[:1]:
        raise ValueError(
            f"level_start_index must be (L,) = ({spatial_shapes.shape[0]},), "
            f"got shape {tuple(level_start_index.shape)}"
        )
    shapes = [(int(h), int(w)) for h, w in spatial_shapes.tolist()]
    if any(h < 0 or w < 0 for h, w in shapes):
        raise ValueError(f"spatial_shapes must be non-negative, got {shapes}")
    sizes = [h * w for h, w in shapes]
    if sum(sizes) != num_value:
        raise ValueError(
            f"sum(H * W) of spatial_shapes is {sum(sizes)} but value.size(1) is {num_value}"
        )
    expected = [sum(sizes[:i]) for i in range(len(sizes))]
    if level_start_index.tolist() != expected:
        raise ValueError(
            f"level_start_index {level_start_index.tolist()} is inconsistent with "
            f"spatial_shapes (expected {expected})"
        )
    return shapes


def _check_inputs(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> List[Tuple[int, int]]:
    """Validate the op's inputs (raising ValueError naming the argument); returns [(H_l, W_l)],
    or [] where the level tensors' contents are not read (compiling, or CUDA by default)."""
    _check_float("value", value, 4)
    _check_float("sampling_locations", sampling_locations, 6)
    _check_float("attention_weights", attention_weights, 5)
    for name, t in (("spatial_shapes", spatial_shapes), ("level_start_index", level_start_index)):
        if not isinstance(t, torch.Tensor) or t.dtype != torch.int64:
            got = t.dtype if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name} must be an int64 tensor, got {got}")
    n, _, m, _ = value.shape
    num_levels = spatial_shapes.shape[0]
    loc_shape = tuple(sampling_locations.shape)
    if loc_shape[0] != n or loc_shape[2] != m or loc_shape[3] != num_levels or loc_shape[5] != 2:
        raise ValueError(
            f"sampling_locations must be (N, Lq, M, L, P, 2) = ({n}, Lq, {m}, {num_levels}, P, 2) "
            f"for value {tuple(value.shape)} and {num_levels} levels, got shape {loc_shape}"
        )
    if tuple(attention_weights.shape) != loc_shape[:5]:
        raise ValueError(
            f"attention_weights must be (N, Lq, M, L, P) = {loc_shape[:5]}, "
            f"got shape {tuple(attention_weights.shape)}"
        )
    for name, t in (
        ("spatial_shapes", spatial_shapes),
        ("level_start_index", level_start_index),
        ("sampling_locations", sampling_locations),
        ("attention_weights", attention_weights),
    ):
        if t.device != value.device:
            raise ValueError(f"{name} is on {t.device} but value is on {value.device}")
    if torch.compiler.is_compiling():
        # The level bookkeeping is data (tensor values): checking it would break the graph.
        return []
    if value.device.type != "cpu" and not get_validate_levels():
        # Reading device tensors back costs a sync per call (see set_validate_levels).
        return []
    return _check_levels(spatial_shapes, level_start_index, value.shape[1])


def ms_deform_attn_pytorch(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Pure-PyTorch reference of multi-scale deformable attention (slow, memory hungry).

    Bilinear ``F.grid_sample`` with zero padding and ``align_corners=False`` at ``2 * loc - 1``,
    as the official ``ms_deform_attn_core_pytorch`` (same op order, so the same float results).

    Args:
        value (Tensor): (N, S, M, D) values of all levels, flattened level by level.
        spatial_shapes (Tensor): (L, 2) int64, (H_l, W_l) of each level.
        sampling_locations (Tensor): (N, Lq, M, L, P, 2) normalised (x, y), 0..1 inside the map.
        attention_weights (Tensor): (N, Lq, M, L, P).

    Returns:
        Tensor: (N, Lq, M * D), channels ordered [head][d].
    """
    n, _, m, d = value.shape
    _, lq, _, num_levels, p, _ = sampling_locations.shape
    shapes = [(int(h), int(w)) for h, w in spatial_shapes.tolist()]
    value_levels = value.split([h * w for h, w in shapes], dim=1)
    grids = 2 * sampling_locations.to(value.dtype) - 1
    sampled = []
    for level, (h, w) in enumerate(shapes):
        # (N, H*W, M, D) -> (N*M, D, H, W)
        v = value_levels[level].flatten(2).transpose(1, 2).reshape(n * m, d, h, w)
        # (N, Lq, M, P, 2) -> (N*M, Lq, P, 2)
        grid = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)
        sampled.append(
            F.grid_sample(v, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        )  # (N*M, D, Lq, P)
    # (N, Lq, M, L, P) -> (N*M, 1, Lq, L*P)
    weights = attention_weights.to(value.dtype).transpose(1, 2)
    weights = weights.reshape(n * m, 1, lq, num_levels * p)
    out = (torch.stack(sampled, dim=-2).flatten(-2) * weights).sum(-1).view(n, m * d, lq)
    return out.transpose(1, 2).contiguous()


# The compiled kernels as PyTorch custom ops (``torch.ops.deta.*``), with fake (meta)
# implementations for shape propagation and a registered derivative: torch.compile and
# torch.export then see the op as one node, without graph breaks.
@torch.library.custom_op("deta::ms_deform_attn_forward", mutates_args=())
def _forward_op(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
    im2col_step: int,
) -> torch.Tensor:
    ext = _load_ext()
    if ext is None:  # only reached from an exported program run where deta._C is missing
        return ms_deform_attn_pytorch(value, spatial_shapes, sampling_locations, attention_weights)
    return ext.ms_deform_attn_forward(
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights, im2col_step
    )


@_forward_op.register_fake
def _(value, spatial_shapes, level_start_index, sampling_locations, attention_weights, step):
    n, _, m, d = value.shape
    return value.new_empty((n, sampling_locations.shape[1], m * d))


@torch.library.custom_op("deta::ms_deform_attn_backward", mutates_args=())
def _backward_op(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
    grad_output: torch.Tensor,
    im2col_step: int,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    grad_value, grad_loc, grad_attn = _load_ext().ms_deform_attn_backward(
        value,
        spatial_shapes,
        level_start_index,
        sampling_locations,
        attention_weights,
        grad_output,
        im2col_step,
    )
    return grad_value, grad_loc, grad_attn


@_backward_op.register_fake
def _(value, spatial_shapes, level_start_index, sampling_locations, attention_weights, grad, step):
    return (
        torch.empty_like(value),
        torch.empty_like(sampling_locations),
        torch.empty_like(attention_weights),
    )


def _setup_context(ctx, inputs, output):
    value, spatial_shapes, level_start_index, sampling_locations, attention_weights, step = inputs
    ctx.im2col_step = step
    ctx.save_for_backward(
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights
    )


def _backward(ctx, grad_output):
    value, spatial_shapes, level_start_index, sampling_locations, attention_weights = (
        ctx.saved_tensors
    )
    grad_value, grad_loc, grad_attn = _backward_op(
        value,
        spatial_shapes,
        level_start_index,
        sampling_locations,
        attention_weights,
        grad_output.contiguous(),
        ctx.im2col_step,
    )
    return grad_value, None, None, grad_loc, grad_attn, None


_forward_op.register_autograd(_backward, setup_context=_setup_context)


def _ms_deform_attn_ext(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
    im2col_step: int,
) -> torch.Tensor:
    # The kernels take float32/float64 only; half and bfloat16 (autocast) run in float32, and
    # the output is cast back to value's dtype. The casts are differentiable.
    dtype = value.dtype
    compute = dtype if dtype in (torch.float32, torch.float64) else torch.float32
    out = _forward_op(
        value.to(compute).contiguous(),
        spatial_shapes.contiguous(),
        level_start_index.contiguous(),
        sampling_locations.to(compute).contiguous(),
        attention_weights.to(compute).contiguous(),
        im2col_step,
    )
    return out.to(dtype)


def ms_deform_attn(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
    im2col_step: int = 64,
    impl: Optional[str] = None,
) -> torch.Tensor:
    """Multi-scale deformable attention, on the compiled kernels when available.

    Args:
        value (Tensor): (N, S, M, D) float values of all levels, flattened level by level.
        spatial_shapes (Tensor): (L, 2) int64, (H_l, W_l) of each level.
        level_start_index (Tensor): (L,) int64, offset of each level in S: [0, cumsum(H*W)[:-1]].
            The contents of both are checked on CPU; on CUDA only after
            ``set_validate_levels(True)`` (the check would sync every call).
        sampling_locations (Tensor): (N, Lq, M, L, P, 2) normalised (x, y), 0..1 inside the map.
        attention_weights (Tensor): (N, Lq, M, L, P).
        im2col_step (int): kept for compatibility with Deformable DETR; the kernels here need
            no im2col buffer and have no batch divisibility constraint.
        impl (str or None): "auto" (compiled kernel for the tensors' device if built, else the
            PyTorch reference with a one-time warning), "pytorch", "cpp" (compiled kernel for
            the tensors' device, error if missing) or "cuda" (CUDA kernel, error if missing).
            None uses :func:`get_msda_impl`.

    Returns:
        Tensor: (N, Lq, M * D) in value's dtype, channels ordered [head][d].
    """
    _check_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    if not isinstance(im2col_step, int) or im2col_step <= 0:
        raise ValueError(f"im2col_step must be a positive int, got {im2col_step!r}")
    # torch.export keeps the op as one node (the reference reads the level sizes back from
    # spatial_shapes, which a dynamic image size does not allow); the ONNX exporter then
    # writes that node in standard ops (deta.export.onnx_ops).
    if not torch.compiler.is_exporting() and _select_impl(value.is_cuda, impl) == "pytorch":
        return ms_deform_attn_pytorch(value, spatial_shapes, sampling_locations, attention_weights)
    return _ms_deform_attn_ext(
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights, im2col_step
    )
