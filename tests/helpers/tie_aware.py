"""Tie-aware comparison of two runs of the first-stage selection and of their detections.

Two runs whose first-stage logits differ by float noise (another CPU, the fast path) may order
near-tied tokens differently, or keep the other one of two near-duplicates in NMS. What is
guaranteed, and checked here:

* a query is identified by its source token. Masked-out tokens (padding, border) carry the same
  logit and the same box within an image, so those are identified by level and rank instead;
* a token selected by one run only, or two tokens whose relative order differs between the runs,
  must be a tie: their first-stage scores differ by less than ``eps``;
* the queries are aligned by source token before continuous outputs are compared;
* detections match one to one: same label, score within ``atol``, box within ``atol`` of the
  image size.
"""

from typing import Dict, List, Tuple

import torch


def query_keys(tokens: torch.Tensor, anchors: torch.Tensor, starts: torch.Tensor) -> List[Tuple]:
    """One key per query of one image: ("token", t) or ("masked", level, rank within level).

    Args:
        tokens: (Q,) selected token index per query.
        anchors: (S, 4) first-stage anchors; exactly 1.0 on masked-out tokens.
        starts: (L,) level start index.
    """
    masked = (anchors[tokens] == 1.0).all(-1)
    levels = torch.bucketize(tokens, starts, right=True) - 1
    keys, seen = [], {}
    for t, m, lvl in zip(tokens.tolist(), masked.tolist(), levels.tolist()):
        if m:
            seen[lvl] = seen.get(lvl, -1) + 1
            keys.append(("masked", lvl, seen[lvl]))
        else:
            keys.append(("token", t))
    return keys


def compare_selection(keys_a, tokens_a, keys_b, tokens_b, scores: torch.Tensor) -> Dict:
    """How two selections of one image differ.

    Args:
        keys_a, keys_b: :func:`query_keys` of the two runs.
        tokens_a, tokens_b: (Q,) their selected tokens.
        scores: (S,) first-stage scores of every token (from either run).

    Returns:
        dict: ``perm`` (for each query of b, the index of the same query in a, or -1),
        ``only_a`` / ``only_b`` (keys selected by one run only), ``set_gap`` (largest score gap
        between the one-run-only tokens, paired in score order; inf if their numbers differ),
        ``order_flips`` (pairs of common queries in opposite relative order) and ``order_gap``
        (the largest score gap within such a pair).
    """
    score_a = {k: scores[t].item() for k, t in zip(keys_a, tokens_a.tolist())}
    score_b = {k: scores[t].item() for k, t in zip(keys_b, tokens_b.tolist())}
    index_a = {k: i for i, k in enumerate(keys_a)}
    perm = [index_a.get(k, -1) for k in keys_b]
    only_a = [k for k in keys_a if k not in score_b]
    only_b = [k for k in keys_b if k not in score_a]
    set_gap = 0.0
    if len(only_a) != len(only_b):
        set_gap = float("inf")
    elif only_a:
        pairs = zip(sorted(score_a[k] for k in only_a), sorted(score_b[k] for k in only_b))
        set_gap = max(abs(x - y) for x, y in pairs)
    # Common queries i < j of b that a holds in the opposite order.
    common = [(score_b[k], p) for k, p in zip(keys_b, perm) if p >= 0]
    order_gap, flips = 0.0, 0
    for x, (si, pi) in enumerate(common):
        for sj, pj in common[x + 1 :]:
            if pi > pj:
                flips += 1
                order_gap = max(order_gap, abs(si - sj))
    return {
        "perm": perm,
        "only_a": only_a,
        "only_b": only_b,
        "set_gap": set_gap,
        "order_gap": order_gap,
        "order_flips": flips,
    }


def match_detections(a: Dict, b: Dict, size: Tuple[int, int], atol: float) -> List[str]:
    """Greedy one-to-one match of detections a -> b; returns the problems (empty: all match).

    Args:
        a, b: dicts with ``scores`` (N,), ``labels`` (N,), ``boxes`` (N, 4) xyxy pixels.
        size: (h, w) of the image; boxes are compared divided by (w, h, w, h).
    """
    h, w = size
    scale = torch.tensor([w, h, w, h], dtype=torch.float32)
    problems = []
    if len(a["scores"]) != len(b["scores"]):
        problems.append(f"{len(a['scores'])} vs {len(b['scores'])} detections")
    used = torch.zeros(len(b["scores"]), dtype=torch.bool)
    boxes_b = b["boxes"].float() / scale
    for i in range(len(a["scores"])):
        ok = (
            (b["labels"] == a["labels"][i])
            & ((b["scores"].float() - a["scores"][i].float()).abs() < atol)
            & ((boxes_b - a["boxes"][i].float() / scale).abs().amax(-1) < atol)
            & ~used
        )
        hits = ok.nonzero().flatten()
        if len(hits) == 0:
            problems.append(
                f"detection {i} (label {int(a['labels'][i])}, score {float(a['scores'][i]):.6f})"
                " has no match"
            )
        else:
            used[hits[0]] = True
    return problems
