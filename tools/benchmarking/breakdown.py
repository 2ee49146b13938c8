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


def mode_breakdown(args) -> dict:
    from torch.profiler import ProfilerActivity, profile

    device, _, model, amp = worker_model(vars(args))
    h, w = parse_size(args.image_size)
    x, mask = forward_inputs(model, synthetic_image(h, w, args.seed), args.batch_size)
    sizes = [(h, w)] * args.batch_size

    def run():
        with torch.no_grad(), amp:
            out = model.forward_features(x, mask)
            model.inference(out, sizes)

    plain = time_loop(run, args.warmup, args.iters, device)  # without the profiler
    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    load_start = load_average()
    with profile(activities=activities) as prof:
        t0 = time.perf_counter()
        for _ in range(args.iters):
            run()
            synchronize(device)
        # The scopes are timed in these iterations, not in the unprofiled ones: their sum is
        # bounded by this wall time, not by the unprofiled total the table shows.
        profiled_s = (time.perf_counter() - t0) / args.iters
    load_end = load_average()
    events = {e.key: e for e in prof.key_averages()}
    n = args.iters
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
    )[: args.top]
    ops = [
        {"op": e.key, "self_ms": e.self_cpu_time_total / 1e3 / n, "calls": e.count // n}
        for e in top_ops
    ]
    print(
        f"{h}x{w}, batch {args.batch_size}, {args.dtype}, {args.threads} threads; "
        f"mean of {n} profiled iterations; load {load_start} -> {load_end}"
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
    return {
        "image_size": [h, w],
        "batch_size": args.batch_size,
        "stages": stages,
        "top_ops": ops,
        "unprofiled": plain,
        "profiled_mean_s": profiled_s,
        "loadavg_profiled": [load_start, load_end],
    }
