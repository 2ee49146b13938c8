"""The command line of ``tools/benchmark.py``: the flags of every mode, the dispatch to the mode,
the JSON it writes, and the ``_worker`` entry the measuring subprocesses run."""

import argparse
import json
import os
import sys

import torch

import tools.benchmarking as package
from deta.utils.cli import add_config_args
from deta.utils.cpu_allocator import MODES as ALLOCATOR_MODES
from deta.utils.cpu_allocator import configure_cpu_allocator
from tools.benchmarking.ab import ab_train_worker
from tools.benchmarking.ap import mode_ap
from tools.benchmarking.assign import mode_assign
from tools.benchmarking.breakdown import mode_breakdown
from tools.benchmarking.compiling import add_compile_arg
from tools.benchmarking.harness import DTYPES, REPO, load_average, machine_info, print_machine
from tools.benchmarking.inference import inference_worker, mode_inference
from tools.benchmarking.machine import print_probe, probe_machine
from tools.benchmarking.op import mode_op
from tools.benchmarking.peer_hf import peer_train_worker, peer_worker
from tools.benchmarking.peer_official import official_worker
from tools.benchmarking.peer_ort import peer_ort_worker
from tools.benchmarking.roofline import mode_roofline
from tools.benchmarking.train import mode_train, train_worker

DEFAULT_CONFIG = os.path.join(REPO, "configs", "deta_R_50_5scale_12ep.yaml")
DEFAULT_PEER_PATH = os.path.join(REPO, ".bench", "peer")

MODES = {
    "ap": mode_ap,
    "inference": mode_inference,
    "train": mode_train,
    "op": mode_op,
    "assign": mode_assign,
    "breakdown": mode_breakdown,
    "roofline": mode_roofline,
}
# What `tools/benchmark.py _worker NAME JSON` runs (harness.run_worker starts these).
WORKERS = {
    "inference": inference_worker,
    "peer": peer_worker,
    "peer_ort": peer_ort_worker,
    "peer_official": official_worker,
    "train": train_worker,
    "peer_train": peer_train_worker,
    "ab_train": ab_train_worker,
}


def add_common(p, iters: int, warmup: int, dtypes: bool = False, allocators: bool = False) -> None:
    # --config-file (alias --config) and trailing KEY VALUE overrides, as in the other tools.
    add_config_args(p, default=DEFAULT_CONFIG)
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    if dtypes:
        p.add_argument(
            "--dtype", dest="dtypes", nargs="+", choices=list(DTYPES), default=["fp32"],
            help="fp32, or torch.autocast with bf16/fp16; several are measured in turn",
        )  # fmt: skip
    else:
        p.add_argument("--dtype", choices=list(DTYPES), default="fp32", help="or torch.autocast")
    if allocators:
        p.add_argument(
            "--allocator", dest="allocators", nargs="+", choices=ALLOCATOR_MODES,
            default=["keep"],
            help="our CPU allocator mode (deta.utils.cpu_allocator): keep (what train_net.py "
            "and tools/demo.py use) or system; several are measured in turn",
        )  # fmt: skip
    else:
        p.add_argument(
            "--allocator", choices=ALLOCATOR_MODES, default="keep",
            help="CPU allocator mode (deta.utils.cpu_allocator): keep or system",
        )  # fmt: skip
    p.add_argument("--iters", type=int, default=iters, help="timed iterations")
    p.add_argument("--warmup", type=int, default=warmup, help="discarded iterations")
    p.add_argument("--weights", default=None, help="checkpoint; default random weights")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also write the results to this file")
    p.add_argument(
        "--probe-machine",
        action="store_true",
        help="measure GEMM GFLOP/s and copy GB/s (a few seconds) into the header and JSON",
    )
    # The old spelling of the overrides, kept so recorded commands (BENCHMARKS.md) still run.
    p.add_argument(
        "--opts",
        dest="legacy_opts",
        nargs=argparse.REMAINDER,
        default=[],
        metavar="KEY VALUE",
        help="deprecated: the same as the trailing KEY VALUE overrides",
    )


def add_peer_allocator_arg(p) -> None:
    p.add_argument(
        "--peer-allocator", choices=ALLOCATOR_MODES, default="system",
        help="the peer's CPU allocator mode; default system (the peer as its users run it)",
    )  # fmt: skip


def _merge_opts(args):
    """One ``args.opts`` from the trailing overrides and the deprecated ``--opts``."""
    opts = list(args.opts)
    if opts[:1] == ["--"]:
        opts = opts[1:]
    # The trailing positional takes every later argument, so `A 1 --opts B 2` lands here whole.
    if "--opts" in opts:
        i = opts.index("--opts")
        opts = opts[:i] + opts[i + 1 :]
    args.opts = opts + list(args.legacy_opts)
    del args.legacy_opts
    return args


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=package.__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="mode", required=True)

    p = sub.add_parser("inference", help="forward-only FPS and end-to-end latency")
    add_common(p, iters=10, warmup=5, dtypes=True, allocators=True)
    add_peer_allocator_arg(p)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4])
    p.add_argument("--image-sizes", nargs="+", default=["800x1201"], help="HxW")
    p.add_argument(
        "--num-queries", type=int, nargs="+", default=[0], help="MODEL.DETA.NUM_QUERIES; 0: cfg"
    )
    p.add_argument("--skip-e2e", action="store_true", help="forward-only timing")
    p.add_argument(
        "--peer",
        choices=["hf", "onnxruntime", "official"],
        default=None,
        help="also time a peer: HF transformers, our ONNX export in ONNX Runtime (CPU), or the "
        "official DETA code (--official-src) on the same weights",
    )
    p.add_argument(
        "--official-src", default=None, help="--peer official: a checkout of jozhang97/DETA"
    )
    p.add_argument("--onnx-model", default=None, help="--peer onnxruntime: reuse this export")
    p.add_argument("--peer-path", default=DEFAULT_PEER_PATH, help="folder holding transformers")
    p.add_argument("--peer-iters", type=int, default=None, help="default: --iters")
    p.add_argument("--peer-warmup", type=int, default=None, help="default: --warmup")
    p.add_argument("--check", action="store_true", help="compare outputs with the unoptimised path")
    add_compile_arg(p)

    p = sub.add_parser("train", help="training iterations/s and peak memory")
    add_common(p, iters=5, warmup=2, allocators=True)
    add_peer_allocator_arg(p)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[2])
    p.add_argument("--image-size", default="800x1201", help="HxW of every synthetic image")
    p.add_argument("--boxes-per-image", type=int, default=10)
    p.add_argument("--peer", choices=["hf"], default=None, help="also train HF transformers")
    p.add_argument(
        "--ab", nargs=3, metavar=("KEY", "A", "B"), default=None,
        help="train the config with KEY=A and with KEY=B side by side in one process, steps "
        "alternating, and print the speed-up of B, e.g. --ab MODEL.DETA.BACKBONE_TRAIN_DTYPE "
        "float32 bfloat16",
    )  # fmt: skip
    add_compile_arg(p)
    p.add_argument("--peer-path", default=DEFAULT_PEER_PATH, help="folder holding transformers")

    p = sub.add_parser("op", help="deformable-attention kernels vs the PyTorch reference")
    add_common(p, iters=10, warmup=2)
    p.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses")

    p = sub.add_parser("assign", help="IoU assignment vs Hungarian matching, per image")
    add_common(p, iters=20, warmup=3)
    p.add_argument("--num-gts", type=int, nargs="+", default=[10, 50, 100])
    p.add_argument("--queries", type=int, default=None, help="default: MODEL.DETA.NUM_QUERIES")
    p.add_argument("--num-classes", type=int, default=None, help="default: MODEL.DETA.NUM_CLASSES")
    p.add_argument("--tokens", type=int, default=20167, help="encoder tokens (Stage1 anchors)")

    p = sub.add_parser("breakdown", help="time per model stage (torch.profiler scopes)")
    add_common(p, iters=3, warmup=1)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--image-size", default="800x1201", help="HxW")
    p.add_argument("--top", type=int, default=15, help="ops listed")

    p = sub.add_parser("roofline", help="FLOPs, time and fraction of the GEMM peak per stage")
    add_common(p, iters=3, warmup=1)
    p.add_argument("--image-size", default="800x1201", help="HxW")
    p.set_defaults(probe_machine=True)  # the peak is its limit

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
    return _merge_opts(parser.parse_args(argv))


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "_worker":
        result = WORKERS[sys.argv[2]](json.loads(sys.argv[3]))
        print(json.dumps(result))
        return
    args = parse_args()
    if getattr(args, "weights", None):
        # Checked here, once: a broken file in a measuring subprocess would surface as its
        # traceback. load_weights_only raises a one-line CheckpointError (run_main prints it).
        from deta.checkpoint import load_weights_only

        load_weights_only(args.weights)
    if hasattr(args, "allocator"):  # the modes that measure in this process
        configure_cpu_allocator(args.allocator)
    torch.set_num_threads(args.threads)
    info = machine_info(args.threads, args.device)
    print_machine(info)
    if args.probe_machine:
        # Modes that use the peaks (roofline) read them from args.probe.
        info["probe"] = args.probe = probe_machine(args.threads)
        print_probe(info["probe"])
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
