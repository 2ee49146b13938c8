"""Prediction heads: the class and box heads of every decoder layer and of the first stage."""

import copy
import math

import torch
from torch import nn

from .. import fast_cpu

__all__ = ["MLP", "build_heads", "inverse_sigmoid"]


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Clamped logit, bounded by ±log(1/eps - 1)."""
    x = x.clamp(min=0, max=1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


class MLP(nn.Module):
    """``num_layers`` Linear layers with ReLU in between (the box head)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int):
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1)
        outs = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims, outs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = fast_cpu.compute_dtype(x, self)
        if dtype is not None:  # CPU inference: oneDNN linears with fused ReLU
            return fast_cpu.mlp_forward(self, dtype, x)
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = torch.relu(x)
        return x


def build_heads(hidden_dim: int, num_classes: int, num_pred: int, prior_prob: float):
    """``num_pred`` independent copies of the class and box heads, initialised as the official.

    All copies start identical; class biases carry the focal-loss prior and every box head's last
    layer is zero, so decoder boxes start at their references and encoder boxes at their anchors.
    """
    class_embed = nn.Linear(hidden_dim, num_classes)
    nn.init.constant_(class_embed.bias, -math.log((1 - prior_prob) / prior_prob))
    bbox_embed = MLP(hidden_dim, hidden_dim, 4, 3)
    nn.init.constant_(bbox_embed.layers[-1].weight, 0)
    nn.init.constant_(bbox_embed.layers[-1].bias, 0)
    classes = nn.ModuleList(copy.deepcopy(class_embed) for _ in range(num_pred))
    boxes = nn.ModuleList(copy.deepcopy(bbox_embed) for _ in range(num_pred))
    return classes, boxes
