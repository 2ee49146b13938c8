"""Keep freed CPU memory in the process, so that big tensors do not page-fault on every step.

glibc's malloc serves blocks above its mmap threshold (at most 32 MiB) with ``mmap`` and gives
them back with ``munmap`` when they are freed. A DETA training step allocates and frees
hundreds of such tensors (encoder activations, their gradients), so every step gets them as
fresh pages that the kernel faults in and zeroes one 4 KiB page at a time: about 0.9 million
minor faults per R-50 step at 512x683, batch 2. With mmap off and the heap's trim threshold
raised, freed blocks stay in the heap and the next step reuses them. This costs memory: the
RSS high-water mark rises (about 20% in that step) because freed blocks are not returned.

``DETA_CPU_ALLOCATOR`` picks the mode: ``keep`` (the default of ``train_net.py``, ``tools/demo.py``
and the benchmarks) or ``system`` (glibc as it is). Other C libraries are left as they are.
"""

import ctypes
import os
import platform
from typing import Optional

ENV = "DETA_CPU_ALLOCATOR"
MODES = ("keep", "system")
# mallopt(3) parameters (malloc.h) and the largest trim threshold it takes (an int).
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_TRIM_THRESHOLD = 2**31 - 1


def allocator_mode(mode: Optional[str] = None) -> str:
    """``mode``, or ``$DETA_CPU_ALLOCATOR`` (default ``keep``), checked against :data:`MODES`."""
    source = "mode"
    if mode is None:
        mode, source = os.environ.get(ENV, "keep"), ENV
    if mode not in MODES:
        raise ValueError(f"{source}={mode!r}: expected one of {', '.join(MODES)}")
    return mode


def configure_cpu_allocator(mode: Optional[str] = None) -> str:
    """Apply ``mode`` (see :func:`allocator_mode`) to this process; returns what was done.

    Process-wide and one-way: ``system`` leaves malloc untouched (it does not undo an earlier
    ``keep``). Call it before the model is built; forked workers inherit it.
    """
    mode = allocator_mode(mode)
    if mode == "system":
        return "system: the C library's malloc as it is"
    if platform.libc_ver()[0] != "glibc":
        return "system: not glibc, left as it is"
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is None:
        return "system: this glibc has no mallopt"
    # mallopt returns 1 on success. Raising the trim threshold first: with mmap off, a freed
    # block at the heap's top would otherwise be trimmed and faulted in again.
    ok = mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD) == 1 and mallopt(_M_MMAP_MAX, 0) == 1
    if not ok:
        return "system: glibc refused mallopt"
    return "keep: glibc keeps freed memory for reuse (mmap off, trim threshold 2 GiB)"


def describe_cpu_allocator() -> str:
    """What :func:`configure_cpu_allocator` would do here, without doing it (collect_env)."""
    try:
        mode = allocator_mode()
    except ValueError as e:
        return f"invalid: {e}"
    source = f"${ENV}" if ENV in os.environ else "default"
    if mode == "keep" and platform.libc_ver()[0] != "glibc":
        return f"keep ({source}), but not glibc: left as it is"
    return f"{mode} ({source}; applied by train_net.py, tools/demo.py, tools/benchmark.py)"
