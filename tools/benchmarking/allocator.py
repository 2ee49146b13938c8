"""``--allocator MODE ...`` of ``inference`` and ``train``: our model with the CPU allocator
modes of ``deta.utils.cpu_allocator`` measured in turn (adjacent subprocesses: the mode is
process-wide and must be set before the model is built), and the ratio printed."""


def label(result: dict) -> str:
    """The mode a worker ran with (``keep``/``system``), from its recorded allocator state."""
    state = result.get("allocator") or "-"
    return state.split(":")[0]


def print_ratios(results: list, keys: tuple, metrics: tuple) -> None:
    """For every ``keep`` row, ``metrics`` and peak memory against the ``system`` row of the
    same ``keys`` and compile mode: system / keep time, > 1 where keeping memory is faster."""
    by_key = {}
    for r in results:
        m = r["ours"]
        if "error" not in m:
            mode = (m.get("compile") or {}).get("mode")
            by_key[(tuple(r[k] for k in keys), mode, label(m))] = m
    lines = []
    for (where, mode, alloc), m in by_key.items():
        base = by_key.get((where, mode, "system"))
        if alloc != "keep" or base is None:
            continue
        parts = []
        for metric in metrics:
            if metric in m and metric in base:
                s, k = base[metric]["mean_s"], m[metric]["mean_s"]
                parts.append(f"{metric} {s * 1e3:.0f} -> {k * 1e3:.0f} ms = {s / k:.2f}x")
        metric = next((x for x in metrics if x in m and x in base), None)
        if metric:
            s, k = base[metric]["peak_mib"], m[metric]["peak_mib"]
            parts.append(f"peak {s:.0f} -> {k:.0f} MiB = {k / s:.2f}x")
        tag = " ".join(str(x) for x in where) + (f" compile={mode}" if mode else "")
        lines.append(f"  [{tag}] keep vs system: " + "; ".join(parts))
    if lines:
        print("CPU allocator keep vs system (system/keep mean time, > 1x: keep is faster):")
        print("\n".join(lines))
