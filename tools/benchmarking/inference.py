"""``inference``: forward-only FPS (the official method) and end-to-end latency, one fresh
subprocess per (image size, queries, batch, dtype), optionally with a peer (Hugging Face, ONNX
Runtime or the official code) and the ``--check`` parity result."""

import os

import torch

from deta.utils.cli import fail
from tools.benchmarking import allocator, compiling
from tools.benchmarking.harness import base_spec, load_average, measure, run_worker, start_result
from tools.benchmarking.models import forward_inputs, parse_size, synthetic_image, worker_model
from tools.benchmarking.parity import parity_check
from tools.benchmarking.peer_official import check_official_peer, official_check, run_official_pair
from tools.benchmarking.tables import ms, print_table


def inference_worker(spec: dict) -> dict:
    device, cfg, model, amp = worker_model(spec)
    probe = compiling.CompileProbe(model, cfg, spec, device)
    h, w = spec["image_size"]
    batch = spec["batch_size"]
    image = synthetic_image(h, w, spec["seed"])
    x, mask = forward_inputs(model, image, batch)
    batched = [{"image": image, "height": h, "width": w} for _ in range(batch)]
    result = start_result("ours", model)

    def forward():
        with torch.no_grad(), amp:
            return model.forward_features(x, mask)

    def end_to_end():
        with torch.no_grad(), amp:
            return model(batched)

    probe.first_call(forward)  # apart from the steady state: it compiles
    result["memory_method"], result["forward"] = measure(forward, spec, device)
    if not spec["skip_e2e"]:
        _, result["e2e"] = measure(end_to_end, spec, device)
        result["detections"] = len(end_to_end()[0]["instances"])
    result["compile"] = probe.finish()
    out = forward()
    result["shapes"] = {k: list(out[k].shape) for k in ("pred_logits", "pred_boxes")}
    with compiling.eager(model):  # the checks' references run eagerly
        if spec["check"]:
            result["check"] = parity_check(model, x, mask, out, amp, spec["dtype"])
        if spec.get("official_outputs"):
            official = spec["official_outputs"]
            result["official_check"] = official_check(model, x, mask, out, official)
    result["loadavg_end"] = load_average()
    return result


def mode_inference(args) -> dict:
    if args.peer == "official":
        try:
            check_official_peer(args)
        except ValueError as e:
            fail(str(e))
    results = []
    modes = compiling.compile_modes(args)
    grid = [
        (s, q, b, d, c, a)
        for s in args.image_sizes
        for q in args.num_queries
        for b in args.batch_sizes
        for d in args.dtypes  # adjacent in time, so their comparison sees the same load
        for c in modes
        for a in args.allocators
    ]
    for size, queries, batch, dtype, mode, alloc in grid:
        spec = base_spec(args)
        spec.update(compile=mode, allocator=alloc)
        spec.update(
            dtype=dtype,
            image_size=parse_size(size),
            batch_size=batch,
            skip_e2e=args.skip_e2e,
            check=args.check and batch == min(args.batch_sizes),
            peer_path=args.peer_path,
            onnx_model=args.onnx_model,
        )
        if queries:
            spec["opts"] += ["MODEL.DETA.NUM_QUERIES", str(queries)]
        row = {"image_size": size, "batch_size": batch, "num_queries": queries, "dtype": dtype}
        row["allocator"] = alloc
        # The peer once per configuration, with the first compile mode and allocator.
        first = mode == modes[0] and alloc == args.allocators[0]
        peer_spec = _peer_spec(args, spec, dtype, batch) if first else None
        if peer_spec and args.peer == "official":
            # The official worker first: ours loads the official random init it converted.
            peer, row["ours"] = run_official_pair(spec, peer_spec)
            row["peer"] = peer
        else:
            row["ours"] = run_worker("inference", spec)
            if peer_spec:
                row["peer"] = run_worker("peer" if args.peer == "hf" else "peer_ort", peer_spec)
        results.append(row)
        _print_row(row)
    print()
    _print_table(results, args)
    keys = ("image_size", "batch_size", "num_queries", "dtype")
    compiling.print_ratios(results, keys + ("allocator",), ("forward", "e2e"))
    allocator.print_ratios(results, keys, ("forward", "e2e"))
    allocator.print_growing_heap_notes(results, ("forward", "e2e"))
    return {"results": results}


def _peer_spec(args, spec: dict, dtype: str, batch: int):
    """The peer's worker spec, or None where none runs: peers run in fp32 only, ONNX Runtime at
    batch 1 only; the official peer's outputs are saved for ``--check``."""
    if not args.peer or dtype != "fp32" or (args.peer == "onnxruntime" and batch != 1):
        return None
    peer_spec = dict(spec, check=args.peer == "official" and spec["check"])
    peer_spec["allocator"] = args.peer_allocator
    peer_spec["warmup"] = args.warmup if args.peer_warmup is None else args.peer_warmup
    peer_spec["iters"] = args.iters if args.peer_iters is None else args.peer_iters
    if args.peer == "official":
        peer_spec["official_src"] = os.path.abspath(args.official_src)
    return peer_spec


def _print_row(row) -> None:
    """One line per configuration as soon as it is measured (a full run takes minutes)."""
    ours = row["ours"]
    if "error" in ours:
        print(ours["error"])
        return
    f, c = ours["forward"], ours["compile"]
    print(
        f"[{row['image_size']} b{row['batch_size']} q{row['num_queries'] or 'cfg'} {row['dtype']}"
        f"{' compile=' + c['mode'] if c['mode'] else ''} alloc={allocator.label(ours)}] "
        f"first call {c['first_call_s']:.1f} s, "
        f"forward mean {ms(f['mean_s'])} ms, load {ours['loadavg_start']} -> {ours['loadavg_end']}"
    )
    if "check" in ours:
        c = ours["check"]
        print(
            f"  check vs {c['reference']}: max|d logits| {c['max_abs_diff_pred_logits']:.2e}, "
            f"max|d boxes| {c['max_abs_diff_pred_boxes']:.2e} (same tokens fed), "
            f"max|d memory| {c['max_abs_diff_memory']:.2e}, max|d enc logits| "
            f"{c['max_abs_diff_enc_logits']:.2e}; reference selects the same tokens: "
            f"{100 * c['selected_same_fraction']:.1f}%"
            + (f", pass(1e-4) {c['pass_1e-4']}" if "pass_1e-4" in c else "")
        )
    if "official_check" in ours:
        c = ours["official_check"]
        print(
            f"  check vs {c['reference']}: max|d logits| {c['max_abs_diff_pred_logits']:.2e}, "
            f"max|d boxes| {c['max_abs_diff_pred_boxes']:.2e} (official selection fed), "
            f"max|d enc logits| {c['max_abs_diff_enc_logits']:.2e}, max|d enc boxes| "
            f"{c['max_abs_diff_enc_boxes']:.2e}; ours selects the same tokens: "
            f"{100 * c['selected_same_fraction']:.1f}%"
        )
    peer = row.get("peer")
    if peer and "error" in peer:
        print(peer["error"])
    elif peer and "export_s" in peer:
        print(f"  exported {peer['onnx_model']} in {peer['export_s']:.1f} s")


def _print_table(results, args) -> None:
    header = ["input", "batch", "queries", "dtype", "model", "alloc", "warm-up+iters"]
    header += ["fwd mean ms"]
    header += ["p50", "p90"]
    header += ["FPS", "CPU s/it", "faults/it"]
    header += ["peak MiB", "e2e mean ms", "e2e p50", "e2e p90", "e2e FPS", "peer/ours"]
    rows = []
    for r in results:
        for key in ("ours", "peer"):
            m = r.get(key)
            if not m or "error" in m:
                continue
            f, e = m["forward"], m.get("e2e")
            ratio = "-"
            if key == "peer" and "error" not in r["ours"]:
                # ONNX Runtime runs the whole graph, post-processing included: vs our e2e.
                ours = r["ours"].get("e2e") if "onnxruntime" in m["impl"] else None
                ours = ours or r["ours"]["forward"]
                ratio = f"{f['mean_s'] / ours['mean_s']:.2f}x"
            rows.append(
                [
                    r["image_size"],
                    r["batch_size"],
                    r["num_queries"] or "cfg",
                    r["dtype"],
                    compiling.label(m),
                    allocator.label(m),
                    f"{f['warmup']}+{f['iters']}",
                    ms(f["mean_s"]),
                    ms(f["p50_s"]),
                    ms(f["p90_s"]),
                    f"{r['batch_size'] / f['mean_s']:.2f}",
                    f"{f['cpu_s']:.2f}",
                    f.get("faults_per_iter", "-"),
                    f"{max(f['peak_mib'], e['peak_mib'] if e else 0):.0f}",
                    ms(e["mean_s"]) if e else "-",
                    ms(e["p50_s"]) if e else "-",
                    ms(e["p90_s"]) if e else "-",
                    f"{r['batch_size'] / e['mean_s']:.2f}" if e else "-",
                    ratio,
                ]
            )
    peak = "cuda.max_memory_allocated" if args.device.startswith("cuda") else "RSS high-water"
    print(f"device {args.device}, {args.threads} threads; peak memory = {peak}")
    print_table(header, rows)
