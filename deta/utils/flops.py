"""FLOPs of a DETA forward with fvcore, per stage (by module) and per profiler scope.

fvcore's ``FlopCountAnalysis`` traces the model with the jit tracer and counts one fused
multiply-add as one flop. This module adds handles for the deformable-attention op (compiled, or
its ``grid_sample`` PyTorch path), maps module names onto the stages of the model
(:data:`STAGES`), and also attributes every counted op to the ``record_function`` scopes it ran
in (``deta.backbone``, ``deta.encoder.attn``, ...: the stages ``tools/benchmark.py breakdown``
times), so that FLOPs and measured times can be put side by side.

Used by ``tools/analyze_model.py`` and ``tools/benchmark.py roofline``.
"""

from collections import Counter
from typing import Callable, Dict, List, Optional, Tuple

import torch
from fvcore.nn import FlopCountAnalysis
from fvcore.nn.flop_count import _DEFAULT_SUPPORTED_OPS  # fvcore's own handles, to wrap them
from fvcore.nn.jit_handles import get_shape
from torch import nn

from .. import fast_cpu

__all__ = [
    "ATTENTION_MACS",
    "BILINEAR_MACS",
    "MAC_OPERATORS",
    "STAGES",
    "by_stage",
    "count_flops",
    "flop_handles",
    "real_flops",
    "stage_of",
]

# Multiply-adds per channel of one sampled point of deformable attention: bilinear interpolation
# reads 4 neighbours and weighs each (4 MACs), then the attention weight scales the interpolated
# value into the head's sum (1 MAC). The per-point coordinate arithmetic does not scale with the
# channels and is left out. So one MSDA call costs N * Lq * M * L * P * D * (4 + 1).
BILINEAR_MACS = 4
ATTENTION_MACS = 1
# grid_sampler's interpolation_mode argument: 0 bilinear, 1 nearest, 2 bicubic (4x4 taps).
_GRID_SAMPLE_MACS = {0: 4, 1: 0, 2: 16}

# Operators whose fvcore count is multiply-adds (fvcore's names, after its handles): a real
# FLOP count is twice theirs. fvcore counts norms, pooling and nearest upsampling per element,
# which are operations, not multiply-adds: those stay as counted.
MAC_OPERATORS = frozenset(
    {
        "conv", "_convolution", "addmm", "bmm", "einsum", "matmul", "mm", "linear",
        "upsample_bilinear2d", "ms_deform_attn_forward", "grid_sampler", "grid_sampler_2d",
    }
)  # fmt: skip

# Elementwise ops and cheap reductions are counted as 0, as Detectron2's analysis does, so that
# the "unsupported" list shows only what might really be missing. aten::sum is here because its
# one use that matters (the attention-weighted sum of the PyTorch MSDA path) is charged to
# grid_sampler below.
_IGNORED_OPS = (
    "aten::add", "aten::add_", "aten::sub", "aten::rsub", "aten::mul", "aten::mul_",
    "aten::div", "aten::div_", "aten::neg", "aten::exp", "aten::log", "aten::pow", "aten::sqrt",
    "aten::rsqrt", "aten::sin", "aten::cos", "aten::sigmoid", "aten::sigmoid_", "aten::softmax",
    "aten::sum", "aten::cumsum", "aten::prod", "aten::max_pool2d", "aten::meshgrid", "aten::pad",
    "aten::constant_pad_nd", "aten::fill_", "aten::ones_like", "aten::lt", "aten::le",
    "aten::where", "aten::any", "aten::all", "aten::numel", "aten::resolve_conj",
    "aten::resolve_neg",
)  # fmt: skip
# The tracer records a record_function scope as an enter op (its name a constant input, an
# object out) and an exit op taking that object.
_SCOPE_ENTER = "profiler::_record_function_enter_new"
_SCOPE_EXIT = "profiler::_record_function_exit"

# (stage, description) in report order; stage_of() says which modules make up each.
STAGES = (
    ("backbone", "backbone"),
    ("neck", "input projection + position encoding"),
    ("encoder", "deformable encoder"),
    ("proposals", "two-stage proposals: enc_output, first-stage head, query init"),
    ("decoder", "deformable decoder layers"),
    ("heads", "per-decoder-layer class and box heads"),
    ("other", "ops outside these modules: preprocess, masks, level flattening, postprocess"),
)


def _msda_flop_jit(inputs, outputs) -> int:
    """``deta::ms_deform_attn_forward(value, shapes, starts, locations, weights, step)``."""
    n, _, m, d = get_shape(inputs[0])  # value (N, S, M, D)
    _, lq, _, levels, points, _ = get_shape(inputs[3])  # locations (N, Lq, M, L, P, 2)
    return n * lq * m * levels * points * d * (BILINEAR_MACS + ATTENTION_MACS)


def _grid_sample_flop_jit(inputs, outputs) -> int:
    """``grid_sampler(input, grid, mode, padding, align_corners)``: per output element.

    In DETA grid_sample is only the PyTorch MSDA path, whose output elements are exactly the
    (channel, sampled point) pairs, so it is charged the same 4 + 1 MACs as the compiled op: the
    weighted sum that follows is a mul and a sum, which count as 0.
    """
    mode = inputs[2].toIValue()
    macs = _GRID_SAMPLE_MACS.get(mode, BILINEAR_MACS) + ATTENTION_MACS
    numel = 1
    for s in get_shape(outputs[0]):  # (N * M, D, Lq, P)
        numel *= s
    return numel * macs


def flop_handles(deform_attn: bool = True) -> Dict[str, Optional[Callable]]:
    """fvcore op handles: the ignored ops, and the deformable-attention ones unless disabled
    (then the compiled op is unsupported and grid_sampler keeps fvcore's 4 per output)."""
    handles: Dict[str, Optional[Callable]] = {k: None for k in _IGNORED_OPS}
    handles[_SCOPE_ENTER] = handles[_SCOPE_EXIT] = None
    if deform_attn:
        # The name the jit tracer records for the custom op (torch.library registration).
        handles["deta::ms_deform_attn_forward"] = _msda_flop_jit
        handles["aten::grid_sampler"] = _grid_sample_flop_jit
        handles["aten::grid_sampler_2d"] = _grid_sample_flop_jit
    return handles


def real_flops(by_operator: Dict[str, float]) -> float:
    """Floating-point operations from fvcore counts: 2 per multiply-add (:data:`MAC_OPERATORS`),
    the other operators as fvcore counts them."""
    return float(sum(v * (2 if op in MAC_OPERATORS else 1) for op, v in by_operator.items()))


class _ScopeCounter:
    """Wraps counting handles to also charge each op to the ``record_function`` scopes open
    when it ran: fvcore calls the handles node by node in the order the tracer recorded them."""

    def __init__(self):
        self.stack: List[Tuple[str, str]] = []  # (debug name of the enter op's output, scope)
        self.by_scope: Dict[str, Counter] = {}

    def handles(self, handles: Dict[str, Optional[Callable]]) -> Dict[str, Optional[Callable]]:
        wrapped = {k: (v if v is None else self._wrap(k, v)) for k, v in handles.items()}
        wrapped[_SCOPE_ENTER], wrapped[_SCOPE_EXIT] = self._enter, self._exit
        return wrapped

    def _wrap(self, kind: str, handle: Callable) -> Callable:
        name = kind.split("::")[-1]  # fvcore's simplified name, as in by_operator()

        def counted(inputs, outputs):
            flops = handle(inputs, outputs)
            path = "/".join(s for _, s in self.stack)
            counts = self.by_scope.setdefault(path, Counter())
            counts.update(flops if isinstance(flops, Counter) else {name: flops})
            return flops

        return counted

    def _enter(self, inputs, outputs) -> int:
        self.stack.append((outputs[0].debugName(), str(inputs[0].toIValue())))
        return 0

    def _exit(self, inputs, outputs) -> int:
        handle = inputs[0].debugName()
        for i in range(len(self.stack) - 1, -1, -1):  # innermost first; drops unclosed ones
            if self.stack[i][0] == handle:
                del self.stack[i:]
                break
        return 0


class _Traced(nn.Module):
    """The model with tensor inputs and outputs, which the jit tracer needs.

    The model itself is the child ``model``, so fvcore's module names are ``model.<name>``.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor):
        (out,) = self.model([{"image": image}])
        inst = out["instances"]
        return inst.pred_boxes.tensor, inst.scores, inst.pred_classes


def stage_of(name: str, num_decoder_layers: int) -> Optional[str]:
    """The stage of a module name relative to DETA (``transformer.encoder``, ...), or None for
    modules that contain several stages (the model, ``transformer``, ``transformer.decoder``)."""
    parts = name.split(".")
    top = parts[0]
    if top == "backbone":
        return "backbone"
    if top in ("input_proj", "position_embedding"):
        return "neck"
    if top != "transformer" or len(parts) < 2:
        return None
    child = parts[1]
    if child == "encoder":
        return "encoder"
    if child in ("enc_output", "enc_output_norm", "pos_trans", "pos_trans_norm"):
        return "proposals"
    if child in ("pix_trans", "pix_trans_norm"):
        return "proposals"
    if child != "decoder" or len(parts) < 3:
        return None
    if parts[2] == "layers":
        return "decoder"
    if parts[2] in ("class_embed", "bbox_embed") and len(parts) >= 4:
        # Head index D is the first-stage (encoder) head; 0..D-1 are the decoder's. The heads
        # are shared with the meta-architecture, and fvcore names them by this first path.
        return "proposals" if int(parts[3]) == num_decoder_layers else "heads"
    return None


def by_stage(by_module: Dict[str, int], total: int, num_decoder_layers: int) -> Dict[str, int]:
    """FLOPs per stage of :data:`STAGES` from fvcore's ``by_module()`` (names ``model.<name>``);
    ``other`` is what the stages leave of ``total``."""
    stages = Counter({s: 0 for s, _ in STAGES})
    for name, flops in by_module.items():
        if not name.startswith("model."):
            continue
        rel = name[len("model.") :]
        parent = rel.rsplit(".", 1)[0] if "." in rel else ""
        stage = stage_of(rel, num_decoder_layers)
        # Count each module once: at the outermost name that has a stage.
        if stage is not None and (not parent or stage_of(parent, num_decoder_layers) is None):
            stages[stage] += flops
    stages["other"] = total - sum(v for k, v in stages.items() if k != "other")
    return dict(stages)


def count_flops(model: nn.Module, image: torch.Tensor, deform_attn: bool = True) -> Dict:
    """FLOPs of one forward of ``model`` (eval mode) on one CHW image, in fvcore's unit (one
    multiply-add is one flop; :func:`real_flops` converts).

    Returns:
        dict: ``total``, ``by_stage``, ``by_operator``, ``by_module`` (names relative to the
        model), ``by_scope`` ({"deta.encoder/deta.encoder.attn": {op: count}}: the
        ``record_function`` scopes open when the ops ran, outermost first; "" outside any),
        ``unsupported`` ({op: count}).
    """
    was_training = model.training
    model.eval()
    analysis = FlopCountAnalysis(_Traced(model), (image.to(model.device),))
    scopes = _ScopeCounter()
    analysis.set_op_handle(
        **scopes.handles({**_DEFAULT_SUPPORTED_OPS, **flop_handles(deform_attn)})
    )
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    analysis.tracer_warnings("none")
    # The CPU fast paths call oneDNN ops fvcore cannot count; they and nn.MultiheadAttention's
    # fused kernel are only taken without autograd, so trace the plain modules with it on.
    try:
        with fast_cpu.disabled(), torch.enable_grad():
            total = analysis.total()
            by_module = analysis.by_module()
    finally:
        model.train(was_training)
    num_layers = model.transformer.decoder.num_layers
    return {
        "total": total,
        "by_stage": by_stage(by_module, total, num_layers),
        "by_operator": dict(analysis.by_operator()),
        "by_module": {k[6:]: v for k, v in by_module.items() if k.startswith("model.")},
        "by_scope": {k: dict(v) for k, v in scopes.by_scope.items()},
        "unsupported": dict(analysis.unsupported_ops()),
    }
