"""``train``: iterations/s and peak memory of forward + backward + optimizer step, on synthetic
images with random boxes, one fresh subprocess per batch size; with ``--peer hf``, Hugging Face
``DetaForObjectDetection`` trained on the same batch right after ours, in its own subprocess."""

import torch

from deta.utils.cli import CliError
from tools.benchmarking import allocator, compiling
from tools.benchmarking.harness import base_spec, load_average, measure, run_worker, start_result
from tools.benchmarking.models import build_cfg, parse_size, synthetic_image, worker_model
from tools.benchmarking.tables import ms, print_table


def synthetic_batch(spec: dict, num_classes: int) -> list:
    """``batch_size`` synthetic images with ``boxes_per_image`` random boxes and classes each."""
    from detectron2.structures import Boxes, Instances

    h, w = spec["image_size"]
    g = torch.Generator().manual_seed(spec["seed"])
    batch = []
    for i in range(spec["batch_size"]):
        n = spec["boxes_per_image"]
        xy = torch.rand(n, 2, generator=g) * torch.tensor([w * 0.7, h * 0.7])
        wh = (torch.rand(n, 2, generator=g) * 0.25 + 0.05) * torch.tensor([w, h])
        inst = Instances((h, w))
        inst.gt_boxes = Boxes(torch.cat([xy, xy + wh], 1))
        inst.gt_classes = torch.randint(0, num_classes, (n,), generator=g)
        batch.append({"image": synthetic_image(h, w, spec["seed"] + i), "instances": inst})
    return batch


def param_fingerprint(optimizer) -> dict:
    """Per optimizer group, the float64 sum of squares of its parameters (a step changes it)."""
    with torch.no_grad():
        return {
            g["name"]: sum(float(p.double().square().sum()) for p in g["params"])
            for g in optimizer.param_groups
        }


def measure_step(result: dict, step, optimizer, spec: dict, device: torch.device) -> None:
    """Time ``step`` (which returns the loss) into ``result``: timings and peak memory, the last
    loss, the optimizer groups (tensors, lr) and the groups whose parameters the steps changed."""
    before = param_fingerprint(optimizer)
    losses = []
    result["memory_method"], result["step"] = measure(
        lambda: losses.append(float(step())), spec, device
    )
    after = param_fingerprint(optimizer)
    result["loss"] = losses[-1] if losses else None
    result["groups"] = {g["name"]: [len(g["params"]), g["lr"]] for g in optimizer.param_groups}
    result["changed_groups"] = [k for k in before if after[k] != before[k]]
    result["loadavg_end"] = load_average()


def train_worker(spec: dict) -> dict:
    from deta.solver import build_deta_optimizer

    device, cfg, model, amp = worker_model(spec, train=True)
    probe = compiling.CompileProbe(model, cfg, spec, device)
    optimizer = build_deta_optimizer(cfg, model)
    batch = synthetic_batch(spec, cfg.MODEL.DETA.NUM_CLASSES)

    def step():
        with amp:
            losses = model(batch)
        loss = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss

    result = start_result("ours", model, optimizer="build_deta_optimizer")
    probe.first_call(step)  # apart from the steady state: it compiles
    measure_step(result, step, optimizer, spec, device)
    result["compile"] = probe.finish()
    return result


def check_peer(args) -> list:
    """Stop with one line if HF cannot build or run this config and input; else the config
    values HF hard-codes differently from ours."""
    from tools.benchmarking import peer_hf  # it imports this module

    cfg = build_cfg(args.config_file, args.opts, args.device)
    try:
        peer_hf.hf_backbone_args(cfg)
    except ValueError as e:
        raise CliError(f"--peer hf: {args.config_file}: {e}") from None
    error = peer_hf.hf_token_error(cfg, parse_size(args.image_size))
    if error:
        raise CliError(f"--peer hf: {error}")
    return peer_hf.hf_fixed_differences(cfg)


def mode_train(args) -> dict:
    if args.ab:
        return _mode_ab(args)
    differences = check_peer(args) if args.peer else []
    results = []
    modes = compiling.compile_modes(args)
    grid = [(b, c, a) for b in args.batch_sizes for c in modes for a in args.allocators]
    for batch, mode, alloc in grid:
        spec = _spec(args, batch)
        spec.update(compile=mode, allocator=alloc)
        row = {"image_size": args.image_size, "batch_size": batch, "allocator": alloc}
        row["ours"] = run_worker("train", spec)
        if args.peer and mode == modes[0] and alloc == args.allocators[0]:
            # Right after ours, so both see about the same load.
            row["peer"] = run_worker("peer_train", dict(spec, allocator=args.peer_allocator))
        results.append(row)
        for key in ("ours", "peer"):
            if "error" in row.get(key, {}):
                print(row[key]["error"])
    print(
        f"train step (forward + backward + build_deta_optimizer step), dtype {args.dtype}, "
        f"{args.threads} threads, {args.boxes_per_image} random boxes per image; peak memory = "
        + ("cuda.max_memory_allocated" if args.device.startswith("cuda") else "RSS high-water")
    )
    header = ["input", "batch", "model", "alloc", "mean ms", "p50 ms", "it/s", "img/s"]
    header += ["CPU s/it", "faults/it"]
    header += ["peak MiB"]
    print_table(header + ["peer/ours ms", "peer/ours MiB", "load"], _rows(results))
    allocator.print_growing_heap_notes(results, ("step",))
    compiling.print_ratios(results, ("image_size", "batch_size", "allocator"), ("step",))
    allocator.print_ratios(results, ("image_size", "batch_size"), ("step",))
    if args.peer:
        print(
            "HF differs: its PyTorch deformable attention (grid_sample) vs our kernel; it is fed "
            "normalised tensors, ours uint8 images (normalised in the step); it also computes "
            "cardinality_error; hard-coded values: " + ("; ".join(differences) or "none differ")
        )
    return {"results": results, "peer_differences": differences}


def _spec(args, batch: int) -> dict:
    spec = base_spec(args)
    spec.update(
        image_size=parse_size(args.image_size),
        batch_size=batch,
        boxes_per_image=args.boxes_per_image,
        peer_path=args.peer_path,
    )
    return spec


def _mode_ab(args) -> dict:
    from tools.benchmarking import ab  # it imports this module

    ab.check_ab(args)
    if len(args.allocators) > 1:
        raise CliError("--ab: one --allocator at a time (the two arms share one process)")
    results = []
    for batch in args.batch_sizes:
        spec = _spec(args, batch)
        spec.update(ab_key=args.ab[0], ab_values=list(args.ab[1:]))
        row = {"image_size": args.image_size, "batch_size": batch}
        row["ours"] = run_worker("ab_train", spec)
        results.append(row)
    ab.print_ab(args, results)
    return {"results": results, "ab": list(args.ab)}


def _rows(results) -> list:
    rows = []
    for r in results:
        ours = r["ours"].get("step")
        for key in ("ours", "peer"):
            m = r.get(key)
            if not m or "error" in m:
                continue
            s = m["step"]
            ratio = ["-", "-"]
            if key == "peer" and ours:
                ratio = [
                    f"{s['mean_s'] / ours['mean_s']:.2f}x",
                    f"{s['peak_mib'] / ours['peak_mib']:.2f}x",
                ]
            rows.append(
                [
                    r["image_size"],
                    r["batch_size"],
                    compiling.label(m),
                    allocator.label(m),
                    ms(s["mean_s"]),
                    ms(s["p50_s"]),
                    f"{1 / s['mean_s']:.3f}",
                    f"{r['batch_size'] / s['mean_s']:.2f}",
                    f"{s['cpu_s']:.2f}",
                    s.get("faults_per_iter", "-"),
                    f"{s['peak_mib']:.0f}",
                    *ratio,
                    f"{m['loadavg_start']} -> {m['loadavg_end']}",
                ]
            )
    return rows
