"""``--allocator MODE ...`` of ``inference`` and ``train``: our model with the CPU allocator
modes of ``deta.utils.cpu_allocator`` measured in turn (adjacent subprocesses: the mode is
process-wide and must be set before the model is built), and the ratio printed. Modes may
repeat (``--allocator system keep system keep``): the ratio is then of the medians."""

import statistics

# Minor faults per timed call above which a keep-mode run was not at its steady state (~80 MiB of
# fresh pages; a steady R-50 train step at 512x683 makes a handful, a growing heap ~0.1 million).
GROWING_HEAP_FAULTS = 20_000


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


def growing_heap_notes(results: list, metrics: tuple) -> list:
    """One line per timing (ours or the peer's) whose allocator kept memory but whose timed calls
    still faulted in fresh pages: the heap was still growing (fragmentation), so the time is above
    the steady state of a long run."""
    lines = []
    for r in results:
        for key in ("ours", "peer"):
            m = r.get(key) or {}
            if label(m) != "keep":
                continue
            for metric in metrics:
                timing = m.get(metric) or {}
                faults = timing.get("faults_per_iter")
                if faults is not None and faults >= GROWING_HEAP_FAULTS:
                    lines.append(
                        f"note: {key} {metric} at {r['image_size']} batch {r['batch_size']} kept "
                        f"memory but still made {faults} page faults per timed call: its heap was "
                        f"still growing after {timing.get('warmup')} warm-up calls; raise the "
                        "warm-up for the steady state"
                    )
    return lines


def print_growing_heap_notes(results: list, metrics: tuple) -> None:
    for line in growing_heap_notes(results, metrics):
        print(line)
