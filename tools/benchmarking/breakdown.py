"""``breakdown``: time per model stage from the ``record_function`` scopes of the model
(deta/modeling), and the most expensive ops, under ``torch.profiler``."""

import time

import torch

from tools.benchmarking.harness import load_average, synchronize, time_loop
from tools.benchmarking.models import forward_inputs, parse_size, synthetic_image, worker_model
from tools.benchmarking.tables import print_table

# Stages of the breakdown: label -> record_function scopes in the model code (deta/modeling).
# An indented label is part of the stage above it.
STAGES = [
    ("backbone", ["deta.backbone"]),
    ("input proj + pos. enc.", ["deta.input_proj", "deta.flatten"]),
    ("encoder", ["deta.encoder"]),
    ("  encoder attention", ["deta.encoder.attn"]),
    ("  encoder FFN", ["deta.encoder.ffn"]),
    ("proposals + enc. heads", ["deta.proposals"]),
    ("selection + query init", ["deta.select"]),
    ("decoder", ["deta.decoder"]),
    ("heads", ["deta.heads"]),
    ("post-process (NMS)", ["deta.postprocess"]),
]
TOP_LEVEL = [s for s, _ in STAGES if not s.startswith(" ")]
OTHER = "other (outside the scopes)"


def forward_run(model, x, mask, sizes, amp):
    """One timed inference: ``forward_features`` on the normalised batch and the post-process."""

    def run():
        with torch.no_grad(), amp:
            out = model.forward_features(x, mask)
            model.inference(out, sizes)

    return run


def profile_stages(run, device, warmup: int, iters: int, top: int = 15) -> dict:
    """Time ``run`` without the profiler, then per stage (:data:`STAGES`) under it.

    Returns:
        dict: ``stages`` ([{stage, ms}], ms per iteration of the profiled runs, plus
        :data:`OTHER`: what the top-level stages leave of the unprofiled mean), ``top_ops``
        (the ``top`` ops by self CPU time), ``unprofiled`` (``time_loop``), ``profiled_mean_s``,
        ``loadavg_profiled``.
    """
    from torch.profiler import ProfilerActivity, profile

    plain = time_loop(run, warmup, iters, device)  # without the profiler
    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    load_start = load_average()
    with profile(activities=activities) as prof:
        t0 = time.perf_counter()
        for _ in range(iters):
            run()
            synchronize(device)
        # The scopes are timed in these iterations, not in the unprofiled ones: their sum is
        # bounded by this wall time, not by the unprofiled total the table shows.
        profiled_s = (time.perf_counter() - t0) / iters
    load_end = load_average()
    events = {e.key: e for e in prof.key_averages()}
    n = iters
    stages = []
    for label, scopes in STAGES:
        stage_ms = sum(events[s].cpu_time_total for s in scopes if s in events) / 1e3 / n
        stages.append({"stage": label, "ms": stage_ms})
    total = 1e3 * plain["mean_s"]
    top_sum = sum(s["ms"] for s in stages if s["stage"] in TOP_LEVEL)
    stages.append({"stage": OTHER, "ms": max(0.0, total - top_sum)})
    top_ops = sorted(
        (e for e in prof.key_averages() if not e.key.startswith("deta.")),
        key=lambda e: e.self_cpu_time_total,
        reverse=True,
    )[:top]
    ops = [
        {"op": e.key, "self_ms": e.self_cpu_time_total / 1e3 / n, "calls": e.count // n}
        for e in top_ops
    ]
    return {
        "stages": stages,
        "top_ops": ops,
        "unprofiled": plain,
        "profiled_mean_s": profiled_s,
        "loadavg_profiled": [load_start, load_end],
    }


def mode_breakdown(args) -> dict:
    device, _, model, amp = worker_model(vars(args))
    h, w = parse_size(args.image_size)
    x, mask = forward_inputs(model, synthetic_image(h, w, args.seed), args.batch_size)
    run = forward_run(model, x, mask, [(h, w)] * args.batch_size, amp)
    result = profile_stages(run, device, args.warmup, args.iters, args.top)
    stages, ops = result["stages"], result["top_ops"]
    total = 1e3 * result["unprofiled"]["mean_s"]
    load_start, load_end = result["loadavg_profiled"]
    print(
        f"{h}x{w}, batch {args.batch_size}, {args.dtype}, {args.threads} threads; "
        f"mean of {args.iters} profiled iterations; load {load_start} -> {load_end}"
    )
    if device.type == "cuda":
        print("note: on CUDA the stage times are host-side (launch) times")
    rows = [[s["stage"], f"{s['ms']:.1f}", f"{100 * s['ms'] / total:.1f}%"] for s in stages]
    rows.append(["total (unprofiled wall, mean)", f"{total:.1f}", "100%"])
    print_table(["stage", "ms", "share"], rows)
    print()
    print_table(
        ["op (self CPU time)", "ms / iter", "calls / iter"],
        [[o["op"], f"{o['self_ms']:.1f}", o["calls"]] for o in ops],
    )
    return {"image_size": [h, w], "batch_size": args.batch_size, **result}
