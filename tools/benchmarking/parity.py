"""``inference --check``: our outputs against the unoptimised path, on the same weights."""

import torch


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
