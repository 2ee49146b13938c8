#!/usr/bin/env python
"""Convert ImageNet backbone weights for training DETA from ImageNet, as the official recipe does.

    python tools/convert_torchvision_backbone.py --source resnet50-0676ba61.pth --output r50.pth
    python tools/convert_torchvision_backbone.py --swin \\
        --source swin_large_patch4_window12_384_22k.pth --output swin_L_22k.pth

``resnet50-0676ba61.pth`` is torchvision's ImageNet-1k V1 ResNet-50 (the official DETA backbone);
the Swin-L file is Microsoft's ImageNet-22K 384×384 classification checkpoint. Use the result as
``MODEL.WEIGHTS``: Detectron2 then loads the backbone and reports the (expected) missing keys of
the transformer and heads, which start from their initialisation.
"""

import argparse
import sys

import torch

from deta.checkpoint import (
    ConversionError,
    convert_swin_classification,
    convert_torchvision_resnet,
    save_atomic,
)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--source", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--swin", action="store_true", help="the source is a Swin checkpoint")
    args = p.parse_args(argv)
    try:
        state = torch.load(args.source, map_location="cpu", weights_only=True)
        if args.swin:
            converted = convert_swin_classification(state)
        else:
            converted = convert_torchvision_resnet(state.get("state_dict", state))
    except (ConversionError, OSError, RuntimeError) as e:
        print(f"convert_torchvision_backbone: {args.source}: {e}", file=sys.stderr)
        return 1
    save_atomic(
        {"model": converted, "__author__": "deta/tools/convert_torchvision_backbone.py"},
        args.output,
    )
    print(f"wrote {args.output}: {len(converted)} backbone tensors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
