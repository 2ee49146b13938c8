#!/usr/bin/env python
"""Train and evaluate DETA ("NMS Strikes Back", arXiv:2212.06137) with Detectron2.

Examples::

    python train_net.py --config-file configs/deta_R_50_5scale_12ep.yaml --num-gpus 8
    python train_net.py --config-file configs/deta_R_50_5scale_12ep.yaml --eval-only \\
        MODEL.WEIGHTS output/model_final.pth
    python train_net.py --config-file configs/deta_R_18_synthetic_cpu.yaml --num-gpus 2  # CPU
    python train_net.py --config-file configs/deta_R_50_5scale_12ep.yaml \\
        --register my_train data/train.json data/train --register my_val data/val.json data/val \\
        DATASETS.TRAIN "('my_train',)" DATASETS.TEST "('my_val',)" MODEL.DETA.NUM_CLASSES -1

Without CUDA, ``--num-gpus N`` starts N CPU worker processes (gloo); set ``MODEL.DEVICE cpu``.
See docs/TRAINING.md for multi-node and slurm use.
"""

import logging
import weakref

from detectron2.data import build_detection_test_loader, build_detection_train_loader
from detectron2.engine import DefaultTrainer, default_argument_parser, default_setup
from detectron2.evaluation import verify_results
from detectron2.utils import comm

import deta  # noqa: F401  registers the DETA meta-architecture and the synthetic datasets
from deta import DetaDatasetMapper
from deta.engine import DetaCheckpointer, add_nonfinite_loss_check, cpu_safe_ddp, launch
from deta.evaluation import build_coco_evaluator
from deta.solver import build_deta_optimizer
from deta.utils.cli import build_cfg, fail, run_main
from deta.utils.compile import compile_model
from deta.utils.cpu_allocator import allocator_mode, configure_cpu_allocator

# Detectron2 v0.6's DefaultTrainer checkpoints neither the optimizer nor the AMP scaler, so
# --resume restarted AdamW from zero moments; later versions store them under "_trainer".
_D2_SAVES_OPTIMIZER = "state_dict" in DefaultTrainer.__dict__


class Trainer(DefaultTrainer):
    """``DefaultTrainer`` with DETA's data mapper, optimizer, evaluator and checkpointer."""

    def __init__(self, cfg):
        # DefaultTrainer wraps the model in DDP with device_ids, which CPU models reject.
        with cpu_safe_ddp():
            super().__init__(cfg)

    def build_hooks(self):
        # Runs at the end of DefaultTrainer.__init__, before the checkpoint hook captures the
        # checkpointer: swap in the atomic, finite-only one.
        self.checkpointer = DetaCheckpointer(
            self._trainer.model, self.cfg.OUTPUT_DIR, trainer=weakref.proxy(self)
        )
        return super().build_hooks()

    def state_dict(self):
        ret = super().state_dict()
        if not _D2_SAVES_OPTIMIZER:
            ret["_trainer"] = self._trainer.state_dict()  # the layout of later Detectron2
        return ret

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        if not _D2_SAVES_OPTIMIZER and "_trainer" in state_dict:
            self._trainer.load_state_dict(state_dict["_trainer"])

    @classmethod
    def build_model(cls, cfg):
        model = super().build_model(cfg)
        add_nonfinite_loss_check(model)
        # In place and before any DDP wrap: state-dict keys stay those of the eager model.
        return compile_model(model, cfg.MODEL.DETA.COMPILE)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        return build_coco_evaluator(cfg, dataset_name, output_folder)

    @classmethod
    def build_train_loader(cls, cfg):
        return build_detection_train_loader(cfg, mapper=DetaDatasetMapper(cfg, is_train=True))

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        # The official test resize truncates the long side; Detectron2's default mapper rounds.
        return build_detection_test_loader(
            cfg, dataset_name, mapper=DetaDatasetMapper(cfg, is_train=False)
        )

    @classmethod
    def build_optimizer(cls, cfg, model):
        return build_deta_optimizer(cfg, model)


def setup(args):
    """Config from ``--config-file``, the trailing overrides and ``--register``, the datasets
    registered and ``MODEL.DETA.NUM_CLASSES`` resolved, then Detectron2's setup."""
    # A wrong class count is caught here rather than as a crash or a silent waste of heads later;
    # evaluation of a given checkpoint only needs -1 resolved.
    cfg = build_cfg(
        args.config_file,
        args.opts,
        register=getattr(args, "register", None) or (),
        require_files=True,
        check_num_classes=not getattr(args, "eval_only", False),
    )
    default_setup(cfg, args)
    return cfg


def main(args):
    """Per-process entry point: evaluate (``--eval-only``) or train, returning the results."""
    # Before anything big is allocated; each launched process runs main. $DETA_CPU_ALLOCATOR.
    allocator = configure_cpu_allocator()
    cfg = setup(args)
    logging.getLogger("deta").info("CPU allocator: %s", allocator)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        DetaCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        res = Trainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, res)
        return res
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def argument_parser():
    """Detectron2's standard command line plus ``--register NAME JSON IMAGE_ROOT``."""
    parser = default_argument_parser()
    parser.add_argument(
        "--register",
        nargs=3,
        action="append",
        default=[],
        metavar=("NAME", "JSON", "IMAGE_ROOT"),
        help="register a COCO-format dataset (repeatable; appended to DATASETS.COCO_REGISTER)",
    )
    return parser


def invoke_main() -> None:
    """Parse the command line and launch ``main`` on every process."""
    args = argument_parser().parse_args()
    print("Command Line Args:", args)
    # A broken weights file or dataset setting is one error line (run_main), not a traceback.
    run_main(lambda: _launch(args))


def _launch(args):
    try:
        allocator_mode()  # a bad $DETA_CPU_ALLOCATOR fails here, not in every worker
    except ValueError as e:
        fail(str(e))
    return launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )


if __name__ == "__main__":
    invoke_main()  # pragma: no cover
