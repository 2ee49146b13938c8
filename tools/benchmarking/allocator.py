"""``--allocator MODE ...`` of ``inference`` and ``train``: our model with the CPU allocator
modes of ``deta.utils.cpu_allocator`` measured in turn (adjacent subprocesses: the mode is
process-wide and must be set before the model is built), and the ratio printed. Modes may
repeat (``--allocator system keep system keep``): the ratio is then of the medians."""

import statistics


def label(result: dict) -> str:
    """The mode a worker ran with (``keep``/``system``), from its recorded allocator state."""
    state = result.get("allocator") or "-"
    return state.split(":")[0]


def print_ratios(results: list, keys: tuple, metrics: tuple) -> None:
    """For every configuration (``keys`` and compile mode) measured with both modes: the median
    of ``metrics`` and of peak memory per mode, system / keep time (> 1 where keep is faster)."""
    runs = {}
    for r in results:
        m = r["ours"]
        if "error" not in m:
            mode = (m.get("compile") or {}).get("mode")
            where = (tuple(r[k] for k in keys), mode)
            runs.setdefault(where, {}).setdefault(label(m), []).append(m)
    lines = []
    for (where, mode), by_alloc in runs.items():
        keep, system = by_alloc.get("keep"), by_alloc.get("system")
        if not keep or not system:
            continue

        def median(ms, metric, field):
            return statistics.median(m[metric][field] for m in ms)

        present = [x for x in metrics if all(x in m for m in keep + system)]
        parts = []
        for metric in present:
            s, k = median(system, metric, "mean_s"), median(keep, metric, "mean_s")
            parts.append(f"{metric} {s * 1e3:.0f} -> {k * 1e3:.0f} ms = {s / k:.2f}x")
        if present:
            s, k = median(system, present[0], "peak_mib"), median(keep, present[0], "peak_mib")
            parts.append(f"peak {s:.0f} -> {k:.0f} MiB = {k / s:.2f}x")
        tag = " ".join(str(x) for x in where) + (f" compile={mode}" if mode else "")
        count = f"{len(system)} system / {len(keep)} keep run(s), medians"
        lines.append(f"  [{tag}] keep vs system ({count}): " + "; ".join(parts))
    if lines:
        print("CPU allocator keep vs system (system/keep mean time, > 1x: keep is faster):")
        print("\n".join(lines))
