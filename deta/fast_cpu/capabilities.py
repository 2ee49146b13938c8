"""What this CPU and this PyTorch build support, probed once, overridable for tests.

The fast paths call oneDNN primitives directly (``torch.ops.mkldnn.*``). Unlike ATen's own ops,
which pick a fallback kernel, these raise when asked for something the CPU lacks: bfloat16
convolutions and GEMMs need AVX-512 (BW, VL, DQ), AVX-NE-CONVERT or AMX. Every fast path asks
:func:`capabilities` first and, for whatever is missing, takes the plain path or float32.

Two sources are read, because they can disagree:

* oneDNN's view (``torch.ops.mkldnn._is_mkldnn_bf16_supported``) follows ``ONEDNN_MAX_CPU_ISA``,
  so ``ONEDNN_MAX_CPU_ISA=AVX2`` on an AVX-512 machine makes bf16 unsupported, as on an AVX2-only
  CPU;
* the CPU's own flags (``torch.cpu._is_*_supported``) do not follow it.

Overrides: ``$DETA_CPU_CAPS`` (e.g. ``bf16=0,amx=0``) is read when the probe runs, and
:func:`override_capabilities` changes them inside a ``with`` block. Both exist so that the
fallbacks of a CPU one does not have can be tested on the one one has.
"""

import contextlib
import dataclasses
import functools
import os
from typing import Dict, Iterator, Optional

import torch

__all__ = ["CpuCapabilities", "capabilities", "override_capabilities", "ENV_CAPS"]

ENV_CAPS = "DETA_CPU_CAPS"
_FLAGS = ("onednn_linear", "onednn_conv", "bf16", "amx", "avx512")


@dataclasses.dataclass(frozen=True)
class CpuCapabilities:
    """Flags the fast paths act on, each with the reason it has its value.

    Attributes:
        onednn_linear: ``mkldnn._linear_pointwise`` exists and oneDNN is usable.
        onednn_conv: ``mkldnn._convolution_pointwise`` (unary and binary forms) exists.
        bf16: oneDNN runs bfloat16 convolutions and GEMMs on this CPU (under its ISA cap).
        amx: the CPU has AMX tiles and oneDNN may use them (bf16 GEMMs ~3x faster than AVX-512).
        avx512: the CPU has AVX-512 (its flags; ``ONEDNN_MAX_CPU_ISA`` does not change them).
        aten_capability: the vector ISA of ATen's own kernels (``ATEN_CPU_CAPABILITY``).
        reasons: one line per flag, for ``collect_env``.
    """

    onednn_linear: bool
    onednn_conv: bool
    bf16: bool
    amx: bool
    avx512: bool
    aten_capability: str
    reasons: Dict[str, str] = dataclasses.field(default_factory=dict, compare=False)


def _op_exists(name: str, *overloads: str) -> bool:
    try:
        op = getattr(torch.ops.mkldnn, name)
        for overload in overloads:
            getattr(op, overload)
    except (AttributeError, RuntimeError):
        return False
    return True


def _call(fn_name: str, module) -> Optional[bool]:
    fn = getattr(module, fn_name, None)
    if fn is None:
        return None
    try:
        return bool(fn())
    except (RuntimeError, AttributeError):
        return None


def _onednn_isa_cap() -> str:
    return os.environ.get("ONEDNN_MAX_CPU_ISA", os.environ.get("DNNL_MAX_CPU_ISA", "")).upper()


def _parse_overrides(text: str) -> Dict[str, bool]:
    fields = set(_FLAGS)
    out = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in fields or value.strip() not in ("0", "1"):
            raise ValueError(
                f"${ENV_CAPS}: bad item {item!r} in {text!r}; expected NAME=0 or NAME=1 "
                f"with NAME one of {sorted(fields)}"
            )
        out[key] = value.strip() == "1"
    return out


def _probe() -> CpuCapabilities:
    reasons = {}
    mkldnn = torch.backends.mkldnn.is_available()
    linear = mkldnn and _op_exists("_linear_pointwise", "default")
    conv = mkldnn and _op_exists("_convolution_pointwise", "default", "binary")
    if not mkldnn:
        reasons["onednn_linear"] = reasons["onednn_conv"] = "this PyTorch build has no oneDNN"
    else:
        reasons["onednn_linear"] = "mkldnn._linear_pointwise " + ("found" if linear else "missing")
        reasons["onednn_conv"] = "mkldnn._convolution_pointwise " + ("found" if conv else "missing")

    onednn_bf16 = _call("_is_mkldnn_bf16_supported", torch.ops.mkldnn) if mkldnn else False
    if onednn_bf16 is None:  # an older build without the probe: ask the CPU flags
        onednn_bf16 = bool(_call("_is_avx512_bf16_supported", torch.cpu))
        reasons["bf16"] = "no oneDNN bf16 probe in this build; AVX512-BF16 flag read"
    else:
        cap = _onednn_isa_cap()
        reasons["bf16"] = "oneDNN reports bf16 " + ("supported" if onednn_bf16 else "unsupported")
        reasons["bf16"] += f" (ONEDNN_MAX_CPU_ISA={cap})" if cap else ""
    avx512 = bool(_call("_is_avx512_supported", torch.cpu))
    reasons["avx512"] = "CPU flags " + ("have" if avx512 else "lack") + " AVX-512"
    amx_tiles = bool(_call("_is_amx_tile_supported", torch.cpu))
    cap = _onednn_isa_cap()
    # oneDNN uses AMX only when its ISA cap (if any) names an AMX level or is unlimited.
    capped = bool(cap) and "AMX" not in cap and cap not in ("ALL", "DEFAULT")
    amx = amx_tiles and onednn_bf16 and not capped
    if not amx_tiles:
        reasons["amx"] = "CPU flags lack AMX tiles"
    elif capped:
        reasons["amx"] = f"AMX tiles present, but ONEDNN_MAX_CPU_ISA={cap} keeps oneDNN off them"
    else:
        reasons["amx"] = "AMX tiles present" + ("" if onednn_bf16 else ", but no oneDNN bf16")
    caps = dict(
        onednn_linear=linear,
        onednn_conv=conv,
        bf16=bool(onednn_bf16) and mkldnn,
        amx=amx,
        avx512=avx512,
    )
    _apply(caps, reasons, _parse_overrides(os.environ.get(ENV_CAPS, "")), f"${ENV_CAPS}")
    return CpuCapabilities(
        aten_capability=torch.backends.cpu.get_cpu_capability(), reasons=reasons, **caps
    )


def _apply(caps: Dict[str, bool], reasons: Dict[str, str], flags: Dict[str, bool], source: str):
    """Set ``flags`` in ``caps``; "no AVX-512" also means no bf16 and no AMX unless they are
    given too (oneDNN's bf16 needs AVX-512 BW/VL/DQ, AVX-NE-CONVERT or AMX)."""
    for key, value in flags.items():
        caps[key] = value
        reasons[key] = f"forced to {value} by {source}"
    if flags.get("avx512") is False:
        for key in ("bf16", "amx"):
            if key not in flags and caps[key]:
                caps[key] = False
                reasons[key] = f"off: follows avx512=False ({source})"


_overridden: Optional[CpuCapabilities] = None


@functools.lru_cache(maxsize=None)
def _probed() -> CpuCapabilities:
    return _probe()


def capabilities() -> CpuCapabilities:
    """The CPU capabilities the fast paths use (probed on first call, then cached)."""
    return _overridden if _overridden is not None else _probed()


@contextlib.contextmanager
def override_capabilities(**flags: bool) -> Iterator[CpuCapabilities]:
    """Pretend, inside the block, that the CPU has (True) or lacks (False) the named flags.

    Example: ``with override_capabilities(bf16=False): ...`` runs bf16 autocast as on an
    AVX2-only CPU. Not thread-safe: meant for tests and benchmarks.
    """
    global _overridden
    saved = _overridden
    base = capabilities()
    unknown = set(flags) - set(_FLAGS)
    if unknown:
        raise TypeError(f"override_capabilities: unknown flags {sorted(unknown)}")
    reasons = dict(base.reasons)
    caps = {k: getattr(base, k) for k in _FLAGS}
    _apply(caps, reasons, flags, "override_capabilities")
    _overridden = dataclasses.replace(base, reasons=reasons, **caps)
    try:
        yield _overridden
    finally:
        _overridden = saved
