"""Flush-to-zero for CPU training.

As a model trains, some gradients, focal-loss terms and AdamW's second moments fall below
float32's normal range (~1.2e-38). x86 CPUs compute on such denormal numbers through a slow
microcode path: the demo's CPU training step grew from 0.96 s to 1.45 s per iteration within 60
iterations without flushing, and stayed at 0.97-1.0 s with it (docs/TRAINING.md). Flushing them
to zero changes nothing above 1.2e-38.
"""

import logging
import os

import torch

from ..layers.ms_deform_attn_func import _load_ext

__all__ = ["ENV_FLUSH_DENORMAL", "flush_denormals"]

logger = logging.getLogger(__name__)

# Set to 0 to keep denormal arithmetic (IEEE gradual underflow) in train_net.py and the benchmark.
ENV_FLUSH_DENORMAL = "DETA_FLUSH_DENORMAL"


def flush_denormals() -> bool:
    """Flush denormal floats to zero in this process unless ``$DETA_FLUSH_DENORMAL`` is 0.

    ``torch.set_flush_denormal`` sets the calling thread only, and the threads of the intra-op
    pool do not inherit it, so with ``deta._C`` every pool thread is set too. Call it again after
    ``torch.set_num_threads`` grows the pool.

    Returns:
        bool: whether flushing is on in every thread (False where disabled, where the CPU has
        no such mode, or, without ``deta._C``, with more than one thread).
    """
    value = os.environ.get(ENV_FLUSH_DENORMAL, "1").strip()
    if value not in ("0", "1"):
        raise ValueError(f"${ENV_FLUSH_DENORMAL}={value!r}: must be 0 or 1")
    if value == "0":
        return False
    if not torch.set_flush_denormal(True):
        logger.info("this CPU has no flush-to-zero mode: denormal floats are computed as such")
        return False
    ext = _load_ext()
    threads = torch.get_num_threads()
    if ext is not None and hasattr(ext, "set_flush_denormal_all_threads"):
        return ext.set_flush_denormal_all_threads(True) == threads
    if threads > 1:
        logger.warning(
            "flush-to-zero is on in the main thread only (deta._C is missing or older than its "
            "sources: rebuild it to set every intra-op thread); CPU training may slow down as "
            "values underflow"
        )
    return threads == 1
