"""End-to-end tests of ``train_net.py`` on CPU: train, checkpoint, resume, evaluate.

A tiny DETA (configs/quick_schedules/deta_instant_test.yaml) trains on a few synthetic images
written to a temporary folder, so the whole file runs in about a minute on two cores.
"""

import argparse
import json
import math
import os
import tempfile
import unittest

import torch
from torch import nn

from detectron2.data import DatasetCatalog
from detectron2.utils.events import EventStorage

from deta.checkpoint import CheckpointError
from deta.data import register_deta_synthetic
from deta.engine import DetaCheckpointer, add_nonfinite_loss_check

from .helpers.train import (
    cli_args,
    load_train_net,
    make_tiny_dataset,
    read_metrics,
)


class TestTrainNet(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        # One thread: spinning OpenMP threads slow down several-fold on a shared 2-core machine.
        cls._threads = torch.get_num_threads()
        torch.set_num_threads(1)
        cls._tmp = tempfile.TemporaryDirectory()
        register_deta_synthetic(make_tiny_dataset(cls._tmp.name))
        cls.train_net = load_train_net()
        cls.out = os.path.join(cls._tmp.name, "run")
        # 40 iterations on the 8 fixed images; checkpoints after iterations 19 and 39, and final.
        cls.train_net.main(cli_args(cls.out, "SOLVER.BASE_LR", 1e-3))

    @classmethod
    def tearDownClass(cls):
        register_deta_synthetic()  # point the names back at the default root
        cls._tmp.cleanup()
        torch.set_num_threads(cls._threads)

    def test_loss_decreases(self):
        # JSONWriter logs every 20 iterations the median over the last 20: two windows.
        rows = [r for r in read_metrics(self.out) if "total_loss" in r]
        self.assertEqual([r["iteration"] for r in rows], [19, 39])
        first, last = rows[0]["total_loss"], rows[-1]["total_loss"]
        self.assertTrue(math.isfinite(last))
        self.assertLess(last, 0.95 * first, f"median loss {first:.3f} -> {last:.3f}")

    def test_checkpoints_written_and_load_weights_only(self):
        names = sorted(n for n in os.listdir(self.out) if n.endswith(".pth"))
        self.assertEqual(names, ["model_0000019.pth", "model_0000039.pth", "model_final.pth"])
        self.assertFalse([n for n in os.listdir(self.out) if n.startswith(".tmp_")])
        with open(os.path.join(self.out, "last_checkpoint")) as f:
            self.assertEqual(f.read().strip(), "model_final.pth")
        # torch>=2.6 default: our checkpoints hold only tensors, numbers and containers.
        ckpt = torch.load(os.path.join(self.out, "model_final.pth"), weights_only=True)
        self.assertEqual(ckpt["iteration"], 39)
        # Saved under "_trainer" as later Detectron2 does (v0.6 did not save it at all).
        self.assertIn("optimizer", ckpt["trainer"]["_trainer"])

    def test_resume_continues_with_same_state(self):
        out = os.path.join(self._tmp.name, "resumed")
        os.makedirs(out)
        saved = torch.load(os.path.join(self.out, "model_0000019.pth"), weights_only=True)
        torch.save(saved, os.path.join(out, "model_0000019.pth"))
        with open(os.path.join(out, "last_checkpoint"), "w") as f:
            f.write("model_0000019.pth")
        cfg = self.train_net.setup(cli_args(out, "SOLVER.MAX_ITER", 24, resume=True))
        trainer = self.train_net.Trainer(cfg)
        trainer.resume_or_load(resume=True)
        self.assertEqual(trainer.start_iter, 20)
        got, want = trainer.optimizer.state_dict(), saved["trainer"]["_trainer"]["optimizer"]
        self.assertEqual(got["param_groups"], want["param_groups"])
        for key, state in want["state"].items():
            for name, value in state.items():
                torch.testing.assert_close(got["state"][key][name], value)
        scheduler_state = saved["trainer"]["hooks"]["LRScheduler"]
        self.assertEqual(trainer.scheduler.last_epoch, scheduler_state["last_epoch"])
        self.assertEqual(trainer.scheduler.base_lrs, scheduler_state["base_lrs"])
        model_state = trainer.model.state_dict()
        for key in ("class_embed.0.weight", "backbone.stem.conv1.weight"):
            torch.testing.assert_close(model_state[key], saved["model"][key])
        trainer.train()
        final = torch.load(os.path.join(out, "model_final.pth"), weights_only=True)
        self.assertEqual(final["iteration"], 23)

    def test_eval_only(self):
        weights = os.path.join(self.out, "model_final.pth")
        out = os.path.join(self._tmp.name, "eval")
        results = self.train_net.main(cli_args(out, "MODEL.WEIGHTS", weights, eval_only=True))
        self.assertIn("bbox", results)
        for key in ("AP", "AP50", "AP75", "APs", "APm", "APl"):
            self.assertIn(key, results["bbox"])
        num_val = len(DatasetCatalog.get("deta_synthetic_val"))
        with open(os.path.join(out, "inference", "coco_instances_results.json")) as f:
            image_ids = {d["image_id"] for d in json.load(f)}
        self.assertLessEqual(len(image_ids), num_val)
        self.assertGreater(len(image_ids), 0)


class TestSafety(unittest.TestCase):
    def test_nonfinite_loss_names_iteration_and_term(self):
        class Lossy(nn.Module):
            def forward(self, x):
                return {"loss_ok": x.sum(), "loss_giou": x.sum() / 0.0 * 0.0}

        model = Lossy().train()
        add_nonfinite_loss_check(model)
        with EventStorage(start_iter=17):
            with self.assertRaisesRegex(FloatingPointError, r"iteration 17.*loss_giou"):
                model(torch.ones(2))
        model.eval()
        model(torch.ones(2))  # inference outputs are not checked

    def test_checkpointer_refuses_nonfinite_and_is_atomic(self):
        with tempfile.TemporaryDirectory() as d:
            model = nn.Linear(2, 2)
            ckpt = DetaCheckpointer(model, save_dir=d)
            ckpt.save("good", iteration=3)
            with torch.no_grad():
                model.weight[0, 0] = float("nan")
            with self.assertRaisesRegex(FloatingPointError, "weight"):
                ckpt.save("bad", iteration=4)
            self.assertEqual(sorted(os.listdir(d)), ["good.pth", "last_checkpoint"])
            with open(os.path.join(d, "last_checkpoint")) as f:
                self.assertEqual(f.read(), "good.pth")
            self.assertEqual(ckpt.resume_or_load("", resume=True)["iteration"], 3)

    def test_untrusted_pickle_refused_with_message(self):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "odd.pth")
            torch.save({"model": {}, "extra": _Opaque()}, path)
            with self.assertRaises(CheckpointError) as ctx:
                DetaCheckpointer(nn.Linear(2, 2)).load(path)
            self.assertIn(f"{path} holds Python objects", str(ctx.exception))
            self.assertNotIn("weights_only=False", str(ctx.exception))

    def test_official_namespace_allowed(self):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "official.pth")
            model = nn.Linear(2, 2)
            torch.save({"model": model.state_dict(), "args": argparse.Namespace(lr=2e-4)}, path)
            extra = DetaCheckpointer(nn.Linear(2, 2)).load(path)
            self.assertEqual(extra["args"].lr, 2e-4)


class _Opaque:
    """A class torch's weights_only unpickler does not know."""


if __name__ == "__main__":
    unittest.main()
