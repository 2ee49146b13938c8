"""Training curves of a Detectron2 ``metrics.json`` (one JSON object per line).

Three panels: the loss terms (total loss and the final-layer, auxiliary and encoder terms), the
learning rate, and the COCO bbox AP/AP50/AP75 of the periodic evaluations. Used by
``tools/plot_metrics.py`` and ``tools/run_demo.py``.
"""

import json
import os
from typing import Dict, List, Optional, Tuple

__all__ = ["load_metrics", "plot_metrics"]

Series = Dict[str, Tuple[List[int], List[float]]]
_FINAL_TERMS = ("total_loss", "loss_ce", "loss_bbox", "loss_giou")


def load_metrics(path: str) -> Series:
    """Read ``metrics.json`` into ``{key: (iterations, values)}``, skipping broken lines.

    When a run is resumed the file holds the earlier lines again; the last value written for
    an iteration wins.
    """
    by_key: Dict[str, Dict[int, float]] = {}
    with open(path) as f:
        for line in f:
            try:
                row = json.loads(line)
            except ValueError:
                continue  # a line cut by an interrupted write
            if not isinstance(row, dict):
                continue
            it = row.get("iteration")
            if it is None:
                continue
            for key, value in row.items():
                if key != "iteration" and isinstance(value, (int, float)):
                    by_key.setdefault(key, {})[int(it)] = float(value)
    return {k: (sorted(v), [v[i] for i in sorted(v)]) for k, v in by_key.items()}


def _loss_keys(series: Series) -> List[str]:
    # Final-layer terms, and the summed total; aux (_0, _1, ...) and encoder (_enc) are drawn
    # dashed so the panel stays readable with many decoder layers.
    keys = [k for k in series if k.startswith("loss_") or k == "total_loss"]
    return sorted(keys, key=lambda k: (k != "total_loss", k))


def plot_metrics(metrics_path: str, output_path: str, title: Optional[str] = None) -> str:
    """Write a PNG of the curves of ``metrics_path`` to ``output_path`` and return the path."""
    import matplotlib

    matplotlib.use("Agg")  # no display on training machines
    import matplotlib.pyplot as plt

    series = load_metrics(metrics_path)
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.8))
    ax_loss, ax_lr, ax_ap = axes
    for key in _loss_keys(series):
        its, vals = series[key]
        style = "-" if key in _FINAL_TERMS else "--"
        width = 2.0 if key == "total_loss" else 1.0
        ax_loss.plot(its, vals, style, linewidth=width, label=key)
    ax_loss.set_yscale("log")
    ax_loss.set_title("losses (weighted)")
    ax_loss.legend(fontsize=6, ncol=2)
    if "lr" in series:
        ax_lr.plot(*series["lr"])
    ax_lr.set_title("learning rate (default group)")
    for key in ("bbox/AP", "bbox/AP50", "bbox/AP75"):
        if key in series:
            ax_ap.plot(*series[key], marker="o", label=key)
    ax_ap.set_title("COCO bbox AP (val)")
    if any(k.startswith("bbox/") for k in series):
        ax_ap.legend()
    for ax in axes:
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(output_path)), exist_ok=True)
    fig.savefig(output_path, dpi=110)
    plt.close(fig)
    return output_path
