"""One command-line vocabulary for every tool: ``--config-file``, trailing ``KEY VALUE``
overrides, ``--output`` under ``output/`` by default, and one-line errors.

Tools call :func:`add_config_args` on their parser, then :func:`build_cfg`; a user error is raised
as :class:`CliError` (or anything from :func:`fail`) and :func:`run_main` prints it as one line.
"""

import argparse
import os
import sys
from typing import Callable, Optional, Sequence

from detectron2.config import CfgNode, get_cfg

__all__ = ["CliError", "add_config_args", "build_cfg", "default_output", "fail", "run_main"]

# Relative to the working directory, like Detectron2's own OUTPUT_DIR default.
OUTPUT_ROOT = "output"


class CliError(Exception):
    """A user error the tool reports as one line (no traceback)."""


def fail(message: str) -> "None":
    raise CliError(message)


def add_config_args(
    parser: argparse.ArgumentParser, *, required: bool = True, default: Optional[str] = None
) -> None:
    """``--config-file`` (``--config`` kept as an alias) and trailing ``KEY VALUE`` overrides."""
    parser.add_argument(
        "--config-file",
        "--config",
        dest="config_file",
        required=required and default is None,
        default=default,
        metavar="FILE",
        help="the model's yaml config",
    )
    parser.add_argument(
        "opts",
        nargs=argparse.REMAINDER,
        default=[],
        metavar="KEY VALUE",
        help="config overrides, e.g. MODEL.WEIGHTS model_final.pth MODEL.DEVICE cpu",
    )


def build_cfg(
    config_file: Optional[str],
    opts: Sequence[str] = (),
    *,
    freeze: bool = True,
    register: Sequence[Sequence[str]] = (),
    require_files: bool = False,
    check_num_classes: bool = False,
) -> CfgNode:
    """Detectron2's cfg with the DETA keys, the yaml merged, then the overrides; the datasets of
    ``DATASETS.COCO_REGISTER`` registered and ``MODEL.DETA.NUM_CLASSES -1`` resolved from
    ``DATASETS.TRAIN`` (when set).

    Args:
        register: extra ``[name, json, image_root]`` entries (``train_net.py --register``),
            appended to ``DATASETS.COCO_REGISTER`` so that the written config.yaml reproduces
            the run and every launched worker registers them too.
        require_files: registered json files and image folders must exist now.
        check_num_classes: a positive ``NUM_CLASSES`` must agree with the training set.
            Both are off by default, for tools that only run a model: they may be given a
            training run's config on a machine without that run's data. train_net.py is strict.

    Raises:
        CliError: the file is missing, or a key or value is wrong (named in the message).
    """
    from deta.config import add_deta_config
    from deta.data.annotations import DatasetError
    from deta.data.datasets import DatasetConfigError, register_from_config, resolve_num_classes

    cfg = get_cfg()
    add_deta_config(cfg)
    if config_file:
        if not os.path.isfile(config_file):
            fail(f"--config-file {config_file}: no such file")
        try:
            cfg.merge_from_file(config_file)
        except (KeyError, ValueError, AssertionError, TypeError) as e:
            fail(f"--config-file {config_file}: {_message(e)}")
    opts = list(opts)
    if opts and opts[0] == "--":
        opts = opts[1:]
    if len(opts) % 2:
        fail(f"overrides must be KEY VALUE pairs, got an odd number: {' '.join(opts)}")
    try:
        cfg.merge_from_list(opts)
    except (KeyError, ValueError, AssertionError, TypeError) as e:
        fail(f"config override: {_message(e)}")
    if register:
        cfg.DATASETS.COCO_REGISTER = [*cfg.DATASETS.COCO_REGISTER, *[list(t) for t in register]]
    try:
        register_from_config(cfg, require_files=require_files)
        if check_num_classes or cfg.DATASETS.TRAIN or cfg.MODEL.DETA.NUM_CLASSES == -1:
            resolve_num_classes(cfg, check=check_num_classes)
    except (DatasetConfigError, DatasetError) as e:
        fail(str(e))
    if freeze:
        cfg.freeze()
    return cfg


def default_output(tool: str, output: Optional[str] = None) -> str:
    """``output`` when given, else ``output/<tool>`` (the folder every tool writes under)."""
    return output if output else os.path.join(OUTPUT_ROOT, tool)


def _message(e: BaseException) -> str:
    # KeyError's str() is the repr of its argument; show the text itself.
    return str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)


def run_main(main: Callable[[], Optional[int]]) -> None:
    """Run a tool's ``main``; a :class:`CliError`, a dataset setting's ``DatasetConfigError`` or
    a weights file's :class:`~deta.checkpoint.CheckpointError` is printed as one ``error: ...``
    line and exits 2."""
    from deta.checkpoint import CheckpointError
    from deta.data.datasets import DatasetConfigError

    try:
        code = main()
    except (CliError, DatasetConfigError) as e:  # their messages name the key/file and value
        sys.stderr.write(f"error: {e}\n")
        sys.exit(2)
    except CheckpointError as e:  # a weights file, wherever a tool loads one
        sys.stderr.write(f"error: cannot load weights: {e}\n")
        sys.exit(2)
    sys.exit(code or 0)
