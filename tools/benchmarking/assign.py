"""``assign``: per-image time of DETA's Stage1Assigner / Stage2Assigner against the Hungarian
matcher on random boxes, each built from the config exactly as training builds it."""

import functools

import torch

from tools.benchmarking.harness import load_average, time_loop
from tools.benchmarking.models import build_cfg
from tools.benchmarking.tables import print_table


def assign_cfg(args):
    """``--config-file`` and ``--opts``, with ``--queries`` / ``--num-classes`` over them if given.

    Both assigners are switched on whatever the config trains with: this mode compares them with
    the matcher, with the STAGE1 / STAGE2 parameters of the config.
    """
    opts = list(args.opts)
    if args.queries:
        opts += ["MODEL.DETA.NUM_QUERIES", str(args.queries)]
    if args.num_classes:
        opts += ["MODEL.DETA.NUM_CLASSES", str(args.num_classes)]
    opts += ["MODEL.DETA.ASSIGN_FIRST_STAGE", "True", "MODEL.DETA.ASSIGN_SECOND_STAGE", "True"]
    return build_cfg(args.config_file, opts, args.device)


def mode_assign(args) -> dict:
    from deta.modeling.criterion import build_criterion

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cfg = assign_cfg(args)
    criterion = build_criterion(cfg)
    methods = {
        "stage2": criterion.stage2_assigner,
        "stage1": criterion.stage1_assigner,
        "hungarian": criterion.matcher,
    }
    g = torch.Generator().manual_seed(args.seed)
    q, k, s = cfg.MODEL.DETA.NUM_QUERIES, cfg.MODEL.DETA.NUM_CLASSES, args.tokens

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
        for name, method in methods.items():
            call = functools.partial(method, outputs, targets)
            row[name] = time_loop(call, args.warmup, args.iters, device)
        row["loadavg_end"] = load_average()
        # Positive (prediction, GT) pairs of one more call: what the config's thresholds,
        # sample sizes and MAX_K leave; the matcher's is min(GTs, queries).
        row["positives"] = {name: len(m(outputs, targets)[0][0]) for name, m in methods.items()}
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
    d = cfg.MODEL.DETA
    return {
        "results": results,
        "queries": q,
        "classes": k,
        "tokens": s,
        "assigner_cfg": {"STAGE1": dict(d.STAGE1), "STAGE2": dict(d.STAGE2)},
    }
