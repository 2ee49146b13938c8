"""The measured model and its input: config, random or loaded weights, a synthetic image."""

import torch

from tools.benchmarking.harness import autocast, worker_setup


def parse_size(text: str):
    h, w = text.lower().split("x")
    return int(h), int(w)


def build_cfg(config_file: str, opts, device: str):
    """The project's shared cfg builder (one-line errors), on ``device``."""
    from deta.utils.cli import build_cfg as shared_build_cfg

    return shared_build_cfg(config_file, [*(opts or []), "MODEL.DEVICE", device])


def build_model(cfg, weights=None, seed: int = 0):
    """The model with random weights (seeded), or ``weights`` loaded by Detectron2."""
    from detectron2.modeling import build_model as d2_build_model

    torch.manual_seed(seed)
    model = d2_build_model(cfg)
    if weights:
        from deta.checkpoint import DetaCheckpointer  # weights-only loading, one-line errors

        DetaCheckpointer(model).load(weights)
    return model


def worker_model(spec: dict, train: bool = False):
    """Device, config, model (in train or eval mode) and autocast context of a measurement.

    ``spec`` is a worker spec or ``vars(args)`` of a mode that measures in its own process.
    """
    device = worker_setup(spec)
    cfg = build_cfg(spec["config_file"], spec["opts"], spec["device"])
    model = build_model(cfg, spec.get("weights"), spec["seed"]).train(train)
    return device, cfg, model, autocast(device, spec["dtype"])


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
    """The normalised image repeated ``batch`` times and its mask (no padding: all False)."""
    x = image.to(model.device).float()
    x = ((x - model.pixel_mean) / model.pixel_std)[None].expand(batch, -1, -1, -1).contiguous()
    mask = torch.zeros((batch,) + x.shape[-2:], dtype=torch.bool, device=model.device)
    return x, mask
