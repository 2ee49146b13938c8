"""Report the deta build (compiled extension, CUDA, compiler), which CPU fast paths are active
and why, and after it detectron2's environment report.

Run as ``python -m deta.utils.collect_env``.
"""

import os
import sys
from typing import List, Tuple

import torch

__all__ = ["collect_deta_env_info", "collect_env_info"]


def _kernel_isa(ext) -> str:
    isa = getattr(ext, "cpu_kernel_isa", None)
    if isa is None:
        return "unknown (an older build; rebuild with pip install --no-build-isolation -e .)"
    forced = os.environ.get("DETA_CPU_KERNEL_ISA") == "baseline"
    return f"{isa()} build" + (" (forced by $DETA_CPU_KERNEL_ISA=baseline)" if forced else "")


def _deta_rows() -> List[Tuple[str, str]]:
    import deta
    from deta import fast_cpu
    from deta.layers import ms_deform_attn_func as msda
    from deta.utils.cpu_allocator import describe_cpu_allocator

    rows = [("deta", f"{deta.__version__} @ {os.path.dirname(deta.__file__)}")]
    ext = msda._load_ext()
    if ext is None:
        rows.append(("deta._C", f"not importable ({msda._ext_unavailable_reason()})"))
    else:
        rows += [
            ("deta._C", f"importable @ {ext.__file__}"),
            ("deta._C built with CUDA", str(bool(ext.has_cuda()))),
            ("deta._C CUDA version", ext.get_cuda_version()),
            ("deta._C compiler", ext.get_compiler_version()),
            ("deta._C CPU kernels", _kernel_isa(ext)),
        ]
    rows += [
        ("PyTorch", f"{torch.__version__} (CUDA {torch.version.cuda})"),
        ("torch threads", str(torch.get_num_threads())),
        ("CPU allocator", describe_cpu_allocator()),
        ("CUDA available", str(torch.cuda.is_available())),
        ("MSDA impl setting", msda.get_msda_impl()),
        ("MSDA impl on CPU", msda.describe_msda_impl("cpu")),
    ]
    if torch.cuda.is_available():
        rows.append(("MSDA impl on CUDA", msda.describe_msda_impl("cuda")))
    return rows + fast_cpu.describe()


def collect_deta_env_info() -> str:
    """The deta part of the report, one ``name  value`` line per item."""
    rows = _deta_rows()
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def collect_env_info() -> str:
    """The deta report followed by detectron2's ``collect_env_info()`` (when it runs)."""
    parts = [collect_deta_env_info()]
    try:
        from detectron2.utils.collect_env import collect_env_info as d2_collect_env_info

        parts.append(d2_collect_env_info())
    except Exception as e:  # the deta part is still useful when detectron2's report fails
        parts.append(f"detectron2 collect_env failed: {type(e).__name__}: {e}")
    return "\n\n".join(parts)


if __name__ == "__main__":
    sys.stdout.write(collect_env_info() + "\n")
