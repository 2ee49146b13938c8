"""Opt-in ``torch.compile`` of DETA's tensor part (``MODEL.DETA.COMPILE``).

:func:`compile_model` compiles ``DETA.forward_features`` (backbone, input projection, encoder,
first stage, decoder, heads) and leaves the rest eager: pre-processing and padding masks,
``Instances``, the criterion and its assigners, and the NMS post-process. The first-stage
query selection (per-level top-k, NMS, per-level caps) has data-dependent sizes; it runs eagerly
in the middle of the compiled forward. The forward then compiles into four graphs with two
breaks, both at that call, instead of dozens of fragments around every ``nonzero``, ``unique``
and NMS that would recompile whenever the number of NMS survivors changes.

The compiled function is an instance attribute that shadows the method, so the module tree, and
with it every ``state_dict`` key, is unchanged: checkpoints move freely between compiled and
eager models. The CPU inference fast paths (:mod:`deta.fast_cpu`) are off inside the compiled
region: their oneDNN calls cannot be traced (each would be a graph break), and inductor fuses the
plain modules itself.
"""

import logging
from typing import Dict, Optional

import torch
from torch import nn

from .. import fast_cpu
from ..config import COMPILE_MODES
from ..modeling.two_stage import TopkSelection

__all__ = [
    "COMPILE_MODES",
    "CompiledForwardFeatures",
    "check_compile_mode",
    "compile_model",
    "compile_stats",
    "is_compiled",
    "uncompile_model",
]

logger = logging.getLogger(__name__)


def check_compile_mode(mode, key: str = "MODEL.DETA.COMPILE") -> None:
    """Raise ``ValueError`` naming ``key`` unless ``mode`` is "" (eager) or a compile mode."""
    if mode != "" and mode not in COMPILE_MODES:
        raise ValueError(
            f"{key}={mode!r}: must be '' (eager) or a torch.compile mode, one of {COMPILE_MODES}"
        )


class _EagerSelection:
    """The first-stage selection, run eagerly even inside a compiled forward (module doc)."""

    def __init__(self, select):
        self.select = select

    @torch.compiler.disable
    def __call__(self, *args):
        return self.select(*args)


class CompiledForwardFeatures:
    """``model.forward_features`` compiled, with the CPU fast paths off while it runs.

    :func:`compile_model` installs it as the instance attribute ``forward_features``.
    Compilation is lazy: the first call compiles, and so does a call with a new grad mode,
    train/eval mode, autocast dtype or (static shapes) input size; later calls reuse the graphs.
    """

    def __init__(
        self,
        model: nn.Module,
        mode: str,
        dynamic: Optional[bool] = None,
        backend: str = "inductor",
    ):
        self.mode = mode
        self.dynamic = dynamic
        self.backend = backend
        # The class's method bound to the model: what ran before, and what uncompile restores.
        self.eager = type(model).forward_features.__get__(model)
        # Only inductor takes a mode; the debugging backends ("aot_eager", "eager") take none.
        self.compiled = torch.compile(
            self.eager,
            backend=backend,
            mode=mode if backend == "inductor" else None,
            dynamic=dynamic,
        )

    def __call__(self, images: torch.Tensor, mask: torch.Tensor) -> Dict:
        # Entered outside the compiled region, so tracing sees the fast paths off and the flag
        # becomes a guard of the graphs; eager calls elsewhere keep their fast paths.
        with fast_cpu.disabled():
            return self.compiled(images, mask)


def is_compiled(model: nn.Module) -> bool:
    """Whether :func:`compile_model` compiled ``model`` (and it was not undone)."""
    return isinstance(model.__dict__.get("forward_features"), CompiledForwardFeatures)


def compile_model(
    model: nn.Module,
    mode: str,
    dynamic: Optional[bool] = None,
    backend: str = "inductor",
) -> nn.Module:
    """Compile ``model.forward_features`` in place with ``torch.compile(mode=mode)``.

    Args:
        model (DETA): the model itself (for a DDP-wrapped model, its ``module``).
        mode (str): "" leaves the model eager (undoing an earlier compile); otherwise one of
            :data:`COMPILE_MODES`.
        dynamic (bool or None): ``torch.compile``'s ``dynamic``. None (PyTorch's default): the
            first input size compiles with static sizes, and each later change makes the
            dimension that changed symbolic with one more recompile (height, then width: two
            recompiles in multi-scale training, ~2 min each on 2 CPU cores). True: symbolic
            from the first call.
        backend (str): ``torch.compile`` backend; "aot_eager" traces forward and backward
            without generating code (for debugging and fast tests).

    Returns:
        the same model, for chaining.
    """
    check_compile_mode(mode)
    uncompile_model(model)
    if not mode:
        return model
    transformer = model.transformer
    if not isinstance(transformer.select_queries, TopkSelection):  # plain top-k traces as is
        transformer.select_queries = _EagerSelection(transformer.select_queries)
    model.forward_features = CompiledForwardFeatures(model, mode, dynamic, backend)
    logger.info(
        f"MODEL.DETA.COMPILE={mode!r}: DETA.forward_features is torch.compile'd "
        f"(backend {backend}, dynamic={dynamic}); the first forward of each kind compiles, and "
        "multi-scale training (input sizes changing per batch) can compile for many minutes on CPU"
    )
    return model


def uncompile_model(model: nn.Module) -> nn.Module:
    """Undo :func:`compile_model`; a no-op on an eager model."""
    if is_compiled(model):
        del model.forward_features
    select = model.transformer.select_queries
    if isinstance(select, _EagerSelection):
        model.transformer.select_queries = select.select
    return model


def compile_stats() -> Dict[str, int]:
    """Dynamo's process-wide counters (cumulative: ``torch._dynamo.reset()`` keeps them; the
    difference between two calls counts what happened in between).

    Returns:
        dict: ``graphs`` compiled; ``graph_breaks``, one per break site and compiled frame (a
        break inside an inlined call counts in the caller and again in the callee); ``frames``
        compiled (the forward and the resume functions after its breaks). A difference of
        ``frames`` between two points in time counts the recompilations in between.
    """
    from torch._dynamo.utils import counters

    return {
        "graphs": int(counters["stats"].get("unique_graphs", 0)),
        "graph_breaks": int(sum(counters["graph_break"].values())),
        "frames": int(counters["frames"].get("ok", 0)),
    }
