#!/usr/bin/env python
"""Benchmarks of DETA: inference speed (the official FPS method), training speed, the
deformable-attention op, IoU assignment against Hungarian matching, and a per-stage breakdown.

Modes (subcommands):

- ``inference``:, one image repeated to the batch size, warm-up, then the mean time of
  ``model.forward_features`` on the normalised tensor (no pre/post-processing) and FPS; also the
  end-to-end ``model(batched_inputs)`` on uint8 images (normalisation, padding, NMS post-process),
  latency percentiles and peak memory. Every configuration runs in a fresh subprocess so its peak
  memory is its own. ``--peer hf`` times Hugging Face ``DetaForObjectDetection`` (same config,
  random init) on the same input in the same run; ``--check`` compares our outputs with the
  unoptimised path (grid_sample reference op, autograd on: no oneDNN fast path).
- ``train``: iterations/s and peak memory of forward + backward + optimizer step on synthetic
  images with random boxes.
- ``op``: the deformable-attention kernels against the PyTorch reference (runs
  ``tools/benchmark_ms_deform_attn.py``).
- ``assign``: Stage1Assigner / Stage2Assigner against HungarianMatcher per image.
- ``breakdown``: time per model stage from the ``record_function`` scopes of the model, and the
  most expensive ops, under ``torch.profiler``.
- ``ap``: COCO AP of a trained model (default: the ``tools/run_demo.py`` model on the synthetic
  val set) in fp32 and under bf16/fp16 autocast.

Every mode prints a table, optionally writes ``--json``, and records the machine (CPU model,
cores), threads, torch, the ``deta._C`` build and the load average (``os.getloadavg``) before and
after each measurement: on a shared machine the load says how far to trust the numbers.

Examples::

    python tools/benchmark.py inference --batch-sizes 1 4 --peer hf --check --json out.json
    python tools/benchmark.py inference --dtype bf16 --batch-sizes 1
    python tools/benchmark.py inference --skip-e2e --image-sizes 512x683 800x1201 \\
        --num-queries 300 900 --batch-sizes 1
    python tools/benchmark.py breakdown --iters 2
    python tools/benchmark.py train --image-size 512x683 --batch-size 2
    python tools/benchmark.py assign
    python tools/benchmark.py op --iters 5
    python tools/benchmark.py ap --dtype fp32 bf16
"""

import argparse
import contextlib
import glob
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # `python tools/benchmark.py` without PYTHONPATH
    sys.path.insert(0, REPO)

import torch  # noqa: E402

from tools.benchmark_ms_deform_attn import cpu_model  # noqa: E402

DEFAULT_CONFIG = os.path.join(REPO, "configs", "deta_R_50_5scale_12ep.yaml")
DEFAULT_PEER_PATH = os.path.join(REPO, ".bench", "peer")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# Stages of the breakdown: label -> record_function scopes in the model code (deta/modeling).
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


# ----------------------------------------------------------------------------------------------
# Environment


def load_average():
    return [round(x, 2) for x in os.getloadavg()]


def ext_info() -> dict:
    """Where ``deta._C`` is, whether it loads, and whether it is older than its sources."""
    from deta.layers.ms_deform_attn_func import describe_msda_impl, has_cpp_ext, has_cuda_ext

    sos = glob.glob(os.path.join(REPO, "deta", "_C*.so"))
    info = {"path": sos[0] if sos else None, "cpu": has_cpp_ext(), "cuda": has_cuda_ext()}
    info["cpu_impl"] = describe_msda_impl("cpu")
    if sos:
        built = os.path.getmtime(sos[0])
        sources = glob.glob(
            os.path.join(REPO, "deta", "layers", "csrc", "**", "*.*"), recursive=True
        )
        info["built"] = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(built))
        info["stale"] = any(os.path.getmtime(s) > built for s in sources)
    return info


# Variables that cap the instruction set of oneDNN / ATen / the deta._C kernels.
ISA_ENV = ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "DETA_CPU_CAPS", "DETA_CPU_KERNEL_ISA")


def machine_info(threads: int, device: str = "cpu") -> dict:
    import torchvision

    from deta import fast_cpu

    info = {
        "cpu": cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "threads": threads,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "mkldnn": torch.backends.mkldnn.is_available(),
        "deta_C": ext_info(),
        "isa_caps": {k: os.environ[k] for k in ISA_ENV if k in os.environ},
        "cpu_fast_paths": {k.strip(): v for k, v in fast_cpu.describe()},
        "device": device,
        "loadavg": load_average(),
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def print_machine(info: dict) -> None:
    ext = info["deta_C"]
    stale = " (STALE: older than its sources, rebuild)" if ext.get("stale") else ""
    print(
        f"machine: {info['cpu']}, {info['usable_cores']}/{info['logical_cores']} cores usable, "
        f"{info['threads']} threads; torch {info['torch']}, torchvision {info['torchvision']}"
    )
    print(
        f"deta._C: {os.path.basename(ext['path'] or '-')}, built {ext.get('built', '-')}{stale}, "
        f"cpu kernel {ext['cpu']}, cuda kernel {ext['cuda']}; device {info['device']}"
        + (f" ({info['gpu']})" if "gpu" in info else "")
    )
    caps = " ".join(f"{k}={v}" for k, v in info["isa_caps"].items()) or "none"
    print(f"ISA caps in the environment: {caps}")
    for name, state in info["cpu_fast_paths"].items():
        print(f"  {name}: {state}")
    print(f"load average (1, 5, 15 min) at start: {info['loadavg']}")


def rss_mib(field: str = "VmRSS") -> float:
    """Current (VmRSS) or peak (VmHWM) resident set of this process, MiB (Linux)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_memory(device: torch.device) -> str:
    """Start a new peak-memory window; returns the method used."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return "cuda.max_memory_allocated"
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
        return "VmHWM"
    except OSError:
        return "ru_maxrss"  # process lifetime peak: the fresh subprocess keeps it meaningful


def peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return rss_mib("VmHWM")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device, dtype: str):
    if dtype == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[dtype])


def time_loop(fn, warmup: int, iters: int, device: torch.device) -> dict:
    """Official timing: synchronise, time one call, synchronise; warm-up calls discarded.

    Returns wall seconds per call (mean, the official statistic, plus p50/p90/min) and process
    CPU seconds per call, which is far less inflated than wall time when other jobs compete.
    """
    for _ in range(warmup):
        fn()
        synchronize(device)
    wall, cpu = [], []
    for _ in range(iters):
        synchronize(device)
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        synchronize(device)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    wall_sorted = sorted(wall)

    def pct(q):  # nearest-rank percentile
        return wall_sorted[min(len(wall) - 1, max(0, math.ceil(q * len(wall)) - 1))]

    return {
        "mean_s": statistics.fmean(wall),
        "p50_s": pct(0.5),
        "p90_s": pct(0.9),
        "min_s": wall_sorted[0],
        "cpu_s": statistics.fmean(cpu),
        "iters": iters,
        "warmup": warmup,
    }


# ----------------------------------------------------------------------------------------------
# Model and inputs


def parse_size(text: str):
    h, w = text.lower().split("x")
    return int(h), int(w)


def build_cfg(config_file: str, opts, device: str):
    from detectron2.config import get_cfg

    from deta import add_deta_config

    cfg = get_cfg()
    add_deta_config(cfg)
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts or []))
    cfg.MODEL.DEVICE = device
    cfg.freeze()
    return cfg


def build_model(cfg, weights=None, seed: int = 0):
    """The model with random weights (seeded), or ``weights`` loaded by Detectron2."""
    from detectron2.modeling import build_model as d2_build_model

    torch.manual_seed(seed)
    model = d2_build_model(cfg)
    if weights:
        from detectron2.checkpoint import DetectionCheckpointer

        DetectionCheckpointer(model).load(weights)
    return model


def synthetic_image(h: int, w: int, seed: int = 0) -> torch.Tensor:
    """A deterministic uint8 (3, H, W) image: smooth gradients plus noise, so the post-process
    sees varied scores (a constant image would make every query alike)."""
    g = torch.Generator().manual_seed(seed)
    ys = torch.linspace(0, 1, h)[:, None]
    xs = torch.linspace(0, 1, w)[None]
    base = torch.stack([ys * xs, ys * (1 - xs), (1 - ys) * xs]) * 200
    noise = torch.rand(3, h, w, generator=g) * 55
    return (base + noise).to(torch.uint8)


def forward_inputs(model, image: torch.Tensor, batch: int):
    """: the normalised image repeated ``batch`` times, no padding (all-False mask)."""
    x = image.to(model.device).float()
    x = ((x - model.pixel_mean) / model.pixel_std)[None].expand(batch, -1, -1, -1).contiguous()
    mask = torch.zeros((batch,) + x.shape[-2:], dtype=torch.bool, device=model.device)
    return x, mask


def count_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------------------------
# Workers (run in fresh subprocesses; each prints one JSON line last)


def _worker_setup(spec: dict) -> torch.device:
    torch.set_num_threads(spec["threads"])
    return torch.device(spec["device"])


def inference_worker(spec: dict) -> dict:
    device = _worker_setup(spec)
    cfg = build_cfg(spec["config_file"], spec["opts"], spec["device"])
    model = build_model(cfg, spec.get("weights"), spec["seed"]).eval()
    h, w = spec["image_size"]
    batch = spec["batch_size"]
    image = synthetic_image(h, w, spec["seed"])
    x, mask = forward_inputs(model, image, batch)
    batched = [{"image": image, "height": h, "width": w} for _ in range(batch)]
    amp = autocast(device, spec["dtype"])
    result = {
        "impl": "ours",
        "params": count_params(model),
        "rss_model_mib": rss_mib(),
        "loadavg_start": load_average(),
    }

    def forward():
        with torch.no_grad(), amp:
            return model.forward_features(x, mask)

    def end_to_end():
        with torch.no_grad(), amp:
            return model(batched)

    result["memory_method"] = reset_peak_memory(device)
    result["forward"] = time_loop(forward, spec["warmup"], spec["iters"], device)
    result["forward"]["peak_mib"] = peak_memory_mib(device)
    if not spec["skip_e2e"]:
        reset_peak_memory(device)
        result["e2e"] = time_loop(end_to_end, spec["warmup"], spec["iters"], device)
        result["e2e"]["peak_mib"] = peak_memory_mib(device)
        result["detections"] = len(end_to_end()[0]["instances"])
    out = forward()
    result["shapes"] = {k: list(out[k].shape) for k in ("pred_logits", "pred_boxes")}
    if spec["check"]:
        result["check"] = parity_check(model, x, mask, out, amp, spec["dtype"])
    result["loadavg_end"] = load_average()
    return result


def parity_check(model, x, mask, out, amp, dtype: str) -> dict:
    """Max |ours - unoptimised| of pred_logits / pred_boxes on the same weights and input.

    The unoptimised path is the grid_sample reference op with autograd on, which disables every
    inference fast path of the model (they require autograd off), i.e. the code before the
    speed-ups. First-stage selection is a top-k/NMS over 20k near-tied scores (random weights):
    a 1e-6 change of a score can swap a token, so the decoder is compared with the reference fed
    the *same* selected tokens, and the agreement of the selection is reported separately.
    Under bf16/fp16 the reference is the fp32 model: the numbers are the reduced-precision error,
    not a pass/fail check.
    """
    from deta.layers import MSDeformAttn

    transformer = model.transformer
    attns = [m for m in model.modules() if isinstance(m, MSDeformAttn)]
    saved = [m.impl for m in attns]
    select = transformer.select_queries
    selected = out["extras"]["selected"]
    own_selection = {}

    def same_selection(objectness, *a):
        own_selection["tokens"] = select(objectness, *a)
        return selected

    try:
        for m in attns:
            m.impl = "pytorch"
        transformer.select_queries = same_selection
        with torch.enable_grad():
            ref = model.forward_features(x, mask)
    finally:
        transformer.select_queries = select
        for m, impl in zip(attns, saved):
            m.impl = impl
    result = {"reference": "MSDA_IMPL pytorch, autograd on, fp32", "dtype": dtype}
    pairs = {
        "pred_logits": (out["pred_logits"], ref["pred_logits"]),
        "pred_boxes": (out["pred_boxes"], ref["pred_boxes"]),
        "enc_logits": (out["enc_outputs"]["pred_logits"], ref["enc_outputs"]["pred_logits"]),
        "memory": (out["extras"]["memory"], ref["extras"]["memory"]),
    }
    for key, (a, b) in pairs.items():
        result[f"max_abs_diff_{key}"] = (a.float() - b.detach().float()).abs().max().item()
    same = selected.cpu() == own_selection["tokens"].cpu()
    result["selected_same_fraction"] = same.float().mean().item()
    if dtype == "fp32":
        keys = ("pred_logits", "pred_boxes")
        result["pass_1e-4"] = all(result[f"max_abs_diff_{k}"] < 1e-4 for k in keys)
    return result


def hf_config(cfg):
    """A transformers ``DetaConfig`` equal to our ``cfg`` (DETA R-50), random init, offline."""
    from transformers import DetaConfig, ResNetConfig

    d = cfg.MODEL.DETA
    depths = {50: [3, 4, 6, 3], 101: [3, 4, 23, 3]}
    if cfg.MODEL.BACKBONE.NAME != "build_resnet_backbone" or cfg.MODEL.RESNETS.DEPTH not in depths:
        raise ValueError("--peer hf supports the ResNet-50/101 configs only")
    backbone = ResNetConfig(
        depths=depths[cfg.MODEL.RESNETS.DEPTH],
        layer_type="bottleneck",
        out_features=["stage2", "stage3", "stage4"],
    )
    return DetaConfig(
        backbone_config=backbone,
        use_pretrained_backbone=False,  # nothing may be downloaded
        use_timm_backbone=False,
        num_labels=d.NUM_CLASSES,
        num_queries=d.NUM_QUERIES,
        two_stage_num_proposals=d.NUM_QUERIES,
        two_stage=d.TWO_STAGE,
        with_box_refine=d.WITH_BOX_REFINE,
        assign_first_stage=d.ASSIGN_FIRST_STAGE,
        assign_second_stage=d.ASSIGN_SECOND_STAGE,
        num_feature_levels=d.NUM_FEATURE_LEVELS,
        encoder_layers=d.ENC_LAYERS,
        decoder_layers=d.DEC_LAYERS,
        encoder_ffn_dim=d.DIM_FEEDFORWARD,
        decoder_ffn_dim=d.DIM_FEEDFORWARD,
        encoder_attention_heads=d.NHEADS,
        decoder_attention_heads=d.NHEADS,
        encoder_n_points=d.ENC_N_POINTS,
        decoder_n_points=d.DEC_N_POINTS,
        d_model=d.HIDDEN_DIM,
        dropout=d.DROPOUT,
    )


def peer_worker(spec: dict) -> dict:
    """Hugging Face DetaForObjectDetection forward on the same input (random init)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    sys.path.insert(0, spec["peer_path"])  # only this subprocess sees transformers
    device = _worker_setup(spec)
    import transformers
    from transformers import DetaForObjectDetection

    if not transformers.__file__.startswith(os.path.abspath(spec["peer_path"])):
        print(f"warning: transformers imported from {transformers.__file__}", file=sys.stderr)
    cfg = build_cfg(spec["config_file"], spec["opts"], spec["device"])
    torch.manual_seed(spec["seed"])
    model = DetaForObjectDetection(hf_config(cfg)).to(device).eval()
    h, w = spec["image_size"]
    batch = spec["batch_size"]
    image = synthetic_image(h, w, spec["seed"]).to(device).float()
    mean = torch.tensor(cfg.MODEL.PIXEL_MEAN, device=device).view(-1, 1, 1)
    std = torch.tensor(cfg.MODEL.PIXEL_STD, device=device).view(-1, 1, 1)
    x = ((image - mean) / std)[None].expand(batch, -1, -1, -1).contiguous()
    pixel_mask = torch.ones((batch, h, w), dtype=torch.long, device=device)  # 1 = valid
    amp = autocast(device, spec["dtype"])
    result = {
        "impl": f"hf transformers {transformers.__version__}",
        "params": count_params(model),
        "rss_model_mib": rss_mib(),
        "loadavg_start": load_average(),
    }

    def forward():
        with torch.no_grad(), amp:
            return model(pixel_values=x, pixel_mask=pixel_mask)

    result["memory_method"] = reset_peak_memory(device)
    result["forward"] = time_loop(forward, spec["warmup"], spec["iters"], device)
    result["forward"]["peak_mib"] = peak_memory_mib(device)
    out = forward()
    result["shapes"] = {
        "pred_logits": list(out.logits.shape),
        "pred_boxes": list(out.pred_boxes.shape),
    }
    result["loadavg_end"] = load_average()
    return result


def train_worker(spec: dict) -> dict:
    from detectron2.structures import Boxes, Instances

    device = _worker_setup(spec)
    cfg = build_cfg(spec["config_file"], spec["opts"], spec["device"])
    model = build_model(cfg, spec.get("weights"), spec["seed"]).train()
    try:
        from deta.solver import build_deta_optimizer

        optimizer, opt_name = build_deta_optimizer(cfg, model), "build_deta_optimizer"
    except ImportError:
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer, opt_name = torch.optim.AdamW(params, lr=cfg.SOLVER.BASE_LR), "AdamW"
    h, w = spec["image_size"]
    g = torch.Generator().manual_seed(spec["seed"])
    num_classes = cfg.MODEL.DETA.NUM_CLASSES
    batch = []
    for i in range(spec["batch_size"]):
        n = spec["boxes_per_image"]
        xy = torch.rand(n, 2, generator=g) * torch.tensor([w * 0.7, h * 0.7])
        wh = (torch.rand(n, 2, generator=g) * 0.25 + 0.05) * torch.tensor([w, h])
        inst = Instances((h, w))
        inst.gt_boxes = Boxes(torch.cat([xy, xy + wh], 1))
        inst.gt_classes = torch.randint(0, num_classes, (n,), generator=g)
        batch.append({"image": synthetic_image(h, w, spec["seed"] + i), "instances": inst})
    amp = autocast(device, spec["dtype"])

    def step():
        with amp:
            losses = model(batch)
        loss = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    result = {"impl": "ours", "optimizer": opt_name, "params": count_params(model)}
    result["rss_model_mib"] = rss_mib()
    result["loadavg_start"] = load_average()
    result["memory_method"] = reset_peak_memory(device)
    result["step"] = time_loop(step, spec["warmup"], spec["iters"], device)
    result["step"]["peak_mib"] = peak_memory_mib(device)
    result["loadavg_end"] = load_average()
    return result


WORKERS = {"inference": inference_worker, "peer": peer_worker, "train": train_worker}


def run_worker(kind: str, spec: dict) -> dict:
    """Run one measurement in a fresh interpreter; its last stdout line is the JSON result."""
    cmd = [sys.executable, os.path.abspath(__file__), "_worker", kind, json.dumps(spec)]
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        return {"error": f"{kind} worker exited with {proc.returncode}:\n{tail}"}
    return json.loads(lines[-1])


# ----------------------------------------------------------------------------------------------
# Tables


def print_table(header, rows) -> None:
    rows = [[str(c) for c in r] for r in rows]
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)
    ]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |")


def _ms(s: float) -> str:
    return f"{1e3 * s:.0f}"


# ----------------------------------------------------------------------------------------------
# Modes


def base_spec(args) -> dict:
    return {
        "config_file": args.config_file,
        "opts": list(args.opts),
        "device": args.device,
        "threads": args.threads,
        "dtype": getattr(args, "dtype", None),
        "warmup": args.warmup,
        "iters": args.iters,
        "seed": args.seed,
        "weights": args.weights,
    }


def mode_inference(args) -> dict:
    results = []
    grid = [
        (s, q, b, d)
        for s in args.image_sizes
        for q in args.num_queries
        for b in args.batch_sizes
        for d in args.dtypes  # adjacent in time, so their comparison sees the same load
    ]
    for size, queries, batch, dtype in grid:
        spec = base_spec(args)
        spec.update(
            dtype=dtype,
            image_size=parse_size(size),
            batch_size=batch,
            skip_e2e=args.skip_e2e,
            check=args.check and batch == min(args.batch_sizes),
            peer_path=args.peer_path,
        )
        if queries:
            spec["opts"] += ["MODEL.DETA.NUM_QUERIES", str(queries)]
        ours = run_worker("inference", spec)
        row = {"image_size": size, "batch_size": batch, "num_queries": queries, "dtype": dtype}
        row["ours"] = ours
        if args.peer == "hf" and dtype == "fp32":  # the peer is timed in fp32 only
            peer_spec = dict(spec, check=False)
            peer_spec["warmup"] = args.warmup if args.peer_warmup is None else args.peer_warmup
            peer_spec["iters"] = args.iters if args.peer_iters is None else args.peer_iters
            row["peer"] = run_worker("peer", peer_spec)
        results.append(row)
        _print_inference_row(row, args)
    print()
    _print_inference_table(results, args)
    return {"results": results}


def _print_inference_row(row, args) -> None:
    ours = row["ours"]
    if "error" in ours:
        print(ours["error"])
        return
    f = ours["forward"]
    print(
        f"[{row['image_size']} b{row['batch_size']} q{row['num_queries'] or 'cfg'} {row['dtype']}] "
        f"forward mean {_ms(f['mean_s'])} ms, load {ours['loadavg_start']} -> {ours['loadavg_end']}"
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
    peer = row.get("peer")
    if peer and "error" in peer:
        print(peer["error"])


def _print_inference_table(results, args) -> None:
    header = ["input", "batch", "queries", "dtype", "model", "warm-up+iters", "fwd mean ms"]
    header += ["p50", "p90"]
    header += ["FPS", "CPU s/it"]
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
                ratio = f"{f['mean_s'] / r['ours']['forward']['mean_s']:.2f}x"
            rows.append(
                [
                    r["image_size"],
                    r["batch_size"],
                    r["num_queries"] or "cfg",
                    r["dtype"],
                    "ours" if key == "ours" else m["impl"],
                    f"{f['warmup']}+{f['iters']}",
                    _ms(f["mean_s"]),
                    _ms(f["p50_s"]),
                    _ms(f["p90_s"]),
                    f"{r['batch_size'] / f['mean_s']:.2f}",
                    f"{f['cpu_s']:.2f}",
                    f"{max(f['peak_mib'], e['peak_mib'] if e else 0):.0f}",
                    _ms(e["mean_s"]) if e else "-",
                    _ms(e["p50_s"]) if e else "-",
                    _ms(e["p90_s"]) if e else "-",
                    f"{r['batch_size'] / e['mean_s']:.2f}" if e else "-",
                    ratio,
                ]
            )
    peak = "cuda.max_memory_allocated" if args.device.startswith("cuda") else "RSS high-water"
    print(f"device {args.device}, {args.threads} threads; peak memory = {peak}")
    print_table(header, rows)


def mode_train(args) -> dict:
    results = []
    for batch in args.batch_sizes:
        spec = base_spec(args)
        spec.update(
            image_size=parse_size(args.image_size),
            batch_size=batch,
            boxes_per_image=args.boxes_per_image,
        )
        r = run_worker("train", spec)
        results.append({"image_size": args.image_size, "batch_size": batch, "ours": r})
        if "error" in r:
            print(r["error"])
    rows = []
    for r in results:
        m = r["ours"]
        if "error" in m:
            continue
        s = m["step"]
        rows.append(
            [
                r["image_size"],
                r["batch_size"],
                m["optimizer"],
                _ms(s["mean_s"]),
                _ms(s["p50_s"]),
                f"{1 / s['mean_s']:.3f}",
                f"{r['batch_size'] / s['mean_s']:.2f}",
                f"{s['peak_mib']:.0f}",
                f"{m['loadavg_start']} -> {m['loadavg_end']}",
            ]
        )
    print(
        f"train step (forward + backward + optimizer), dtype {args.dtype}, {args.threads} "
        f"threads, {args.boxes_per_image} random boxes per image"
    )
    header = ["input", "batch", "optimizer", "mean ms", "p50 ms", "it/s", "img/s", "peak MiB"]
    print_table(header + ["load"], rows)
    return {"results": results}


def mode_op(args) -> dict:
    from tools import benchmark_ms_deform_attn as msda

    json_path = os.path.join(REPO, ".bench", f"op_{os.getpid()}.json")
    os.makedirs(os.path.dirname(json_path), exist_ok=True)
    argv = ["--threads", str(args.threads), "--iters", str(args.iters), "--json", json_path]
    argv += ["--warmup", str(args.warmup)]
    if args.no_memory:
        argv.append("--no-memory")
    saved, sys.argv = sys.argv, [msda.__file__] + argv
    try:
        msda.main()
    finally:
        sys.argv = saved
    with open(json_path) as f:
        data = json.load(f)
    os.remove(json_path)
    return data


def mode_assign(args) -> dict:
    from detectron2.config import get_cfg  # noqa: F401  (imports detectron2 first, like deta)

    from deta.modeling.assigner import Stage1Assigner, Stage2Assigner
    from deta.modeling.matcher import HungarianMatcher

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    g = torch.Generator().manual_seed(args.seed)
    q, k, s = args.queries, args.num_classes, args.tokens
    stage1, stage2 = Stage1Assigner(), Stage2Assigner(k, q)
    matcher = HungarianMatcher()

    def boxes(n):  # cxcywh inside the unit square
        c = torch.rand(n, 2, generator=g) * 0.8 + 0.1
        wh = torch.rand(n, 2, generator=g) * 0.2 + 0.02
        return torch.cat([c, wh], 1).to(device)

    outputs = {
        "pred_logits": torch.randn(1, q, k, generator=g).to(device),
        "pred_boxes": boxes(q)[None],
        "init_reference": boxes(q)[None],
        "anchors": boxes(s)[None],
    }
    rows, results = [], []
    for num_gt in args.num_gts:
        targets = [{"boxes": boxes(num_gt), "labels": torch.randint(0, k, (num_gt,), generator=g)}]
        targets[0]["labels"] = targets[0]["labels"].to(device)
        row = {"num_gt": num_gt, "loadavg_start": load_average()}
        for name, fn in (
            ("stage2", lambda t=targets: stage2(outputs, t)),
            ("stage1", lambda t=targets: stage1(outputs, t)),
            ("hungarian", lambda t=targets: matcher(outputs, t)),
        ):
            row[name] = time_loop(fn, args.warmup, args.iters, device)
        row["loadavg_end"] = load_average()
        results.append(row)
        rows.append(
            [
                num_gt,
                f"{1e3 * row['stage2']['p50_s']:.2f}",
                f"{1e3 * row['stage1']['p50_s']:.2f}",
                f"{1e3 * row['hungarian']['p50_s']:.2f}",
                f"{row['hungarian']['p50_s'] / row['stage2']['p50_s']:.2f}x",
            ]
        )
    print(
        f"per image, median ms of {args.iters} calls; {q} queries x {k} classes (Stage2 and "
        f"Hungarian), {s} anchors (Stage1)"
    )
    header = ["GTs", "Stage2Assigner", "Stage1Assigner", "HungarianMatcher", "Hungarian/Stage2"]
    print_table(header, rows)
    return {"results": results, "queries": q, "classes": k, "tokens": s}


def mode_breakdown(args) -> dict:
    from torch.profiler import ProfilerActivity, profile

    device = _worker_setup(vars(args))
    cfg = build_cfg(args.config_file, args.opts, args.device)
    model = build_model(cfg, args.weights, args.seed).eval()
    h, w = parse_size(args.image_size)
    x, mask = forward_inputs(model, synthetic_image(h, w, args.seed), args.batch_size)
    sizes = [(h, w)] * args.batch_size
    amp = autocast(device, args.dtype)

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
        for _ in range(args.iters):
            run()
            synchronize(device)
    load_end = load_average()
    events = {e.key: e for e in prof.key_averages()}
    n = args.iters
    stages = []
    for label, scopes in STAGES:
        ms = sum(events[s].cpu_time_total for s in scopes if s in events) / 1e3 / n
        stages.append({"stage": label, "ms": ms})
    total = 1e3 * plain["mean_s"]
    top_sum = sum(s["ms"] for s in stages if s["stage"] in TOP_LEVEL)
    stages.append({"stage": "other (outside the scopes)", "ms": max(0.0, total - top_sum)})
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
        "loadavg_profiled": [load_start, load_end],
    }


def mode_ap(args) -> dict:
    """COCO AP of a trained model per dtype: what bf16/fp16 autocast costs in accuracy."""
    import tempfile

    from detectron2.data import build_detection_test_loader
    from detectron2.evaluation import inference_on_dataset

    from deta import DetaDatasetMapper
    from deta.data import register_deta_synthetic
    from deta.evaluation import build_coco_evaluator

    if not os.path.isfile(args.weights or ""):
        raise SystemExit(f"no trained model at {args.weights} (make it with tools/run_demo.py)")
    device = _worker_setup(vars(args))
    register_deta_synthetic(args.dataset_root)
    cfg = build_cfg(args.config_file, args.opts, args.device)
    model = build_model(cfg, args.weights, args.seed).eval()

    class Autocast(torch.nn.Module):
        def __init__(self, model, dtype):
            super().__init__()
            self.model, self.dtype = model, dtype

        def forward(self, batched_inputs):
            with autocast(device, self.dtype):
                return self.model(batched_inputs)

    results = []
    for dtype in args.dtypes:
        loader = build_detection_test_loader(
            cfg, args.dataset, mapper=DetaDatasetMapper(cfg, is_train=False)
        )
        with tempfile.TemporaryDirectory() as tmp:
            evaluator = build_coco_evaluator(cfg, args.dataset, tmp)
            load_start, t0 = load_average(), time.perf_counter()
            bbox = inference_on_dataset(Autocast(model, dtype), loader, evaluator)["bbox"]
        results.append(
            {
                "dtype": dtype,
                "bbox": bbox,
                "seconds": time.perf_counter() - t0,
                "loadavg": [load_start, load_average()],
            }
        )
    base = results[0]["bbox"]
    print(f"{args.dataset} ({args.weights}), {args.threads} threads")
    rows = [
        [
            r["dtype"],
            f"{r['bbox']['AP']:.2f}",
            f"{r['bbox']['AP'] - base['AP']:+.2f}",
            f"{r['bbox']['AP50']:.2f}",
            f"{r['bbox']['AP75']:.2f}",
            f"{r['seconds']:.0f}",
        ]
        for r in results
    ]
    header = ["dtype", "AP", f"AP - {results[0]['dtype']} AP", "AP50", "AP75", "eval s"]
    print_table(header, rows)
    return {"dataset": args.dataset, "weights": args.weights, "results": results}


# ----------------------------------------------------------------------------------------------
# CLI


def add_common(p, iters: int, warmup: int, dtypes: bool = False) -> None:
    p.add_argument("--config-file", default=DEFAULT_CONFIG)
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    if dtypes:
        p.add_argument(
            "--dtype", dest="dtypes", nargs="+", choices=list(DTYPES), default=["fp32"],
            help="fp32, or torch.autocast with bf16/fp16; several are measured in turn",
        )  # fmt: skip
    else:
        p.add_argument("--dtype", choices=list(DTYPES), default="fp32", help="or torch.autocast")
    p.add_argument("--iters", type=int, default=iters, help="timed iterations")
    p.add_argument("--warmup", type=int, default=warmup, help="discarded iterations")
    p.add_argument("--weights", default=None, help="checkpoint; default random weights")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also write the results to this file")
    p.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="config KEY VALUE pairs")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="mode", required=True)

    p = sub.add_parser("inference", help="forward-only FPS and end-to-end latency")
    add_common(p, iters=10, warmup=5, dtypes=True)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4])
    p.add_argument("--image-sizes", nargs="+", default=["800x1201"], help="HxW")
    p.add_argument(
        "--num-queries", type=int, nargs="+", default=[0], help="MODEL.DETA.NUM_QUERIES; 0: cfg"
    )
    p.add_argument("--skip-e2e", action="store_true", help="forward-only timing")
    p.add_argument("--peer", choices=["hf"], default=None, help="also time a peer implementation")
    p.add_argument("--peer-path", default=DEFAULT_PEER_PATH, help="folder holding transformers")
    p.add_argument("--peer-iters", type=int, default=None, help="default: --iters")
    p.add_argument("--peer-warmup", type=int, default=None, help="default: --warmup")
    p.add_argument("--check", action="store_true", help="compare outputs with the unoptimised path")

    p = sub.add_parser("train", help="training iterations/s and peak memory")
    add_common(p, iters=5, warmup=2)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[2])
    p.add_argument("--image-size", default="800x1201", help="HxW of every synthetic image")
    p.add_argument("--boxes-per-image", type=int, default=10)

    p = sub.add_parser("op", help="deformable-attention kernels vs the PyTorch reference")
    add_common(p, iters=10, warmup=2)
    p.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses")

    p = sub.add_parser("assign", help="IoU assignment vs Hungarian matching, per image")
    add_common(p, iters=20, warmup=3)
    p.add_argument("--num-gts", type=int, nargs="+", default=[10, 50, 100])
    p.add_argument("--queries", type=int, default=900)
    p.add_argument("--num-classes", type=int, default=80)
    p.add_argument("--tokens", type=int, default=20167, help="encoder tokens (Stage1 anchors)")

    p = sub.add_parser("breakdown", help="time per model stage (torch.profiler scopes)")
    add_common(p, iters=3, warmup=1)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--image-size", default="800x1201", help="HxW")
    p.add_argument("--top", type=int, default=15, help="ops listed")

    p = sub.add_parser("ap", help="COCO AP of a trained model in fp32 vs bf16/fp16 autocast")
    add_common(p, iters=0, warmup=0, dtypes=True)
    p.set_defaults(
        config_file=os.path.join(REPO, "configs", "deta_R_18_synthetic_cpu.yaml"),
        weights=os.path.join(REPO, "output", "demo", "model", "model_final.pth"),
        dtypes=["fp32", "bf16"],
    )
    p.add_argument("--dataset", default="deta_synthetic_val")
    p.add_argument(
        "--dataset-root", default=os.path.join(REPO, "output", "demo", "datasets", "deta_synthetic")
    )
    return parser.parse_args(argv)


MODES = {
    "ap": mode_ap,
    "inference": mode_inference,
    "train": mode_train,
    "op": mode_op,
    "assign": mode_assign,
    "breakdown": mode_breakdown,
}


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "_worker":
        result = WORKERS[sys.argv[2]](json.loads(sys.argv[3]))
        print(json.dumps(result))
        return
    args = parse_args()
    torch.set_num_threads(args.threads)
    info = machine_info(args.threads, args.device)
    print_machine(info)
    data = MODES[args.mode](args)
    info["loadavg_end"] = load_average()
    print(
        f"load average (1, 5, 15 min) at end: {info['loadavg_end']} "
        f"on {info['usable_cores']} cores"
    )
    if args.json:
        payload = {"mode": args.mode, "argv": sys.argv[1:], "machine": info, **data}
        with open(args.json, "w") as f:
            json.dump(payload, f, indent=2)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
