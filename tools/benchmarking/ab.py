"""``train --ab KEY A B``: two values of one config key trained side by side in one process.

Two models built with the same seed (so the same initial weights wherever the key leaves the
parameters alone), each with its own optimizer, step on the same batch in turn, A then B, then
B then A: a drift of the machine's speed (a VM's spells, a neighbour's job) then falls on both
arms alike, which separate subprocesses minutes apart cannot promise. The figure to quote is
the median over rounds of t_A / t_B (the speed-up of B); the ratio of the arms' medians is
printed beside it. Peak memory is not reported: both models share the process.
"""

import statistics

import torch

from deta.utils.cli import CliError
from tools.benchmarking.harness import load_average, summarize, synchronize, timed_call
from tools.benchmarking.models import build_cfg, worker_model
from tools.benchmarking.tables import ms, print_table
from tools.benchmarking.train import param_fingerprint, synthetic_batch


def check_ab(args) -> None:
    """One line if ``--ab`` is combined with what it cannot measure, or a value is refused."""
    if args.peer:
        raise CliError("--ab compares two of our configs; run --peer without it")
    if args.compile:
        raise CliError("--ab times eager models; compare compile modes with --compile")
    from deta.config import check_deta_config

    key, a, b = args.ab
    for value in (a, b):
        # The config's own checks, so that an unknown key or a bad value is named here in one
        # line rather than in a worker's traceback.
        cfg = build_cfg(args.config_file, [*args.opts, key, value], args.device)
        try:
            check_deta_config(cfg)
        except ValueError as e:
            raise CliError(f"--ab {key} {value}: {e}") from None


def _arm(spec: dict, key: str, value: str):
    from deta.solver import build_deta_optimizer

    device, cfg, model, amp = worker_model(dict(spec, opts=[*spec["opts"], key, value]), True)
    return device, cfg, model, build_deta_optimizer(cfg, model), amp


def _same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(
        sa[k].shape == sb[k].shape and torch.equal(sa[k], sb[k]) for k in sa
    )


def ab_train_worker(spec: dict) -> dict:
    key, values = spec["ab_key"], spec["ab_values"]
    arms = [_arm(spec, key, v) for v in values]
    device, cfg = arms[0][0], arms[0][1]
    same_init = _same_weights(arms[0][2], arms[1][2])
    batch = synthetic_batch(spec, cfg.MODEL.DETA.NUM_CLASSES)
    losses = [[], []]

    def make_step(i):
        _, _, model, optimizer, amp = arms[i]

        def step():
            with amp:
                loss = sum(model(batch).values())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses[i].append(float(loss))

        return step

    steps = [make_step(0), make_step(1)]
    before = [param_fingerprint(arm[3]) for arm in arms]
    loadavg_start = load_average()
    for _ in range(spec["warmup"]):
        for step in steps:
            step()
            synchronize(device)
    wall, cpu = [[], []], [[], []]
    for r in range(spec["iters"]):
        for i in (0, 1) if r % 2 == 0 else (1, 0):
            w, c = timed_call(steps[i], device)
            wall[i].append(w)
            cpu[i].append(c)
    result = {
        "impl": "ours",
        "key": key,
        "same_initial_weights": same_init,
        "params": [sum(p.numel() for p in arm[2].parameters()) for arm in arms],
        "arms": [],
        "paired_ratios": [a / b for a, b in zip(wall[0], wall[1])],
        "loadavg_start": loadavg_start,
        "loadavg_end": load_average(),
    }
    for i, value in enumerate(values):
        after = param_fingerprint(arms[i][3])
        result["arms"].append(
            {
                "value": value,
                "step": summarize(wall[i], cpu[i], spec["warmup"]),
                "losses": losses[i],
                "changed_groups": [k for k in before[i] if after[k] != before[i][k]],
            }
        )
    if result["paired_ratios"]:
        result["paired_ratio_p50"] = statistics.median(result["paired_ratios"])
    return result


def print_ab(args, results: list) -> None:
    key = args.ab[0]
    print(
        f"interleaved A/B of {key} in one process (rounds alternate A,B / B,A), "
        f"dtype {args.dtype}, {args.threads} threads, {args.boxes_per_image} random boxes per "
        f"image, {args.warmup} warm-up + {args.iters} timed steps per arm"
    )
    rows = []
    for r in results:
        m = r["ours"]
        if "error" in m:
            print(m["error"])
            continue
        for arm in m["arms"]:
            s = arm["step"]
            rows.append(
                [
                    r["image_size"],
                    r["batch_size"],
                    f"{key}={arm['value']}",
                    ms(s["mean_s"]),
                    ms(s["p50_s"]),
                    ms(s["min_s"]),
                    f"{s['cpu_s']:.2f}",
                    f"{arm['losses'][-1]:.4f}" if arm["losses"] else "-",
                    f"{m['loadavg_start']} -> {m['loadavg_end']}",
                ]
            )
    header = ["input", "batch", "arm", "mean ms", "p50 ms", "min ms", "CPU s/it", "last loss"]
    print_table(header + ["load"], rows)
    for r in results:
        m = r["ours"]
        if "paired_ratio_p50" not in m:
            continue
        a, b = (arm["step"]["p50_s"] for arm in m["arms"])
        print(
            f"{r['image_size']} batch {r['batch_size']}: B ({m['arms'][1]['value']}) vs A "
            f"({m['arms'][0]['value']}): median t_A/t_B over {len(m['paired_ratios'])} rounds "
            f"{m['paired_ratio_p50']:.2f}x, p50 A / p50 B {a / b:.2f}x; same initial weights: "
            f"{'yes' if m['same_initial_weights'] else 'no (the key changes the parameters)'}"
        )
