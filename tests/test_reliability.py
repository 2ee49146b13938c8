"""A killed run loses nothing; fixed seeds reproduce training exactly on CPU."""

import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import unittest

import torch

from deta.data import register_deta_synthetic
from deta.engine import DetaCheckpointer

from .helpers.train import REPO, cli_args, load_train_net, make_tiny_dataset, read_metrics

# Child process: a 12-iteration run with a checkpoint every 5 iterations. With KILL_AT_SAVE=n
# the n-th torch.save writes part of its file and then SIGKILLs the process, as a crash or an
# out-of-memory kill in the middle of writing a checkpoint would.
CHILD = textwrap.dedent(
    """
    import os, signal, sys
    import torch
    sys.path.insert(0, {repo!r})
    from deta.data import register_deta_synthetic
    from tests.helpers.train import cli_args, load_train_net, make_tiny_dataset

    torch.set_num_threads(1)
    kill_at = int(os.environ.get("KILL_AT_SAVE", "0"))
    calls = [0]
    real_save = torch.save

    def dying_save(obj, f, *args, **kwargs):
        calls[0] += 1
        if calls[0] == kill_at:
            with open(f, "wb") as out:
                out.write(b"PK" + b"x" * 4096)  # the first bytes of a zip, then nothing
                out.flush()
                os.fsync(out.fileno())
            os.kill(os.getpid(), signal.SIGKILL)
        return real_save(obj, f, *args, **kwargs)

    torch.save = dying_save
    register_deta_synthetic(make_tiny_dataset({data!r}))
    opts = ["SOLVER.MAX_ITER", 12, "SOLVER.STEPS", "(10,)", "SOLVER.CHECKPOINT_PERIOD", 5]
    load_train_net().main(cli_args({out!r}, *opts, resume=True))
    """
)


class TestInterruption(unittest.TestCase):
    def test_sigkill_while_writing_a_checkpoint_then_resume(self):
        with tempfile.TemporaryDirectory() as tmp:
            out, data = os.path.join(tmp, "run"), os.path.join(tmp, "data")
            script = os.path.join(tmp, "child.py")
            with open(script, "w") as f:
                f.write(CHILD.format(repo=REPO, data=data, out=out))
            env = dict(os.environ, KILL_AT_SAVE="2", OMP_NUM_THREADS="1")
            killed = subprocess.run(
                [sys.executable, script], env=env, cwd=REPO, capture_output=True, text=True
            )
            self.assertEqual(killed.returncode, -signal.SIGKILL, killed.stderr[-2000:])
            # The first checkpoint (after iteration 5) is intact and still the last one.
            with open(os.path.join(out, "last_checkpoint")) as f:
                self.assertEqual(f.read().strip(), "model_0000004.pth")
            self.assertFalse(os.path.exists(os.path.join(out, "model_0000009.pth")))
            ckpt = DetaCheckpointer(torch.nn.Linear(1, 1))._load_file(
                os.path.join(out, "model_0000004.pth")
            )
            self.assertEqual(ckpt["iteration"], 4)
            before = read_metrics(out)

            env["KILL_AT_SAVE"] = "0"
            resumed = subprocess.run(
                [sys.executable, script], env=env, cwd=REPO, capture_output=True, text=True
            )
            self.assertEqual(resumed.returncode, 0, resumed.stderr[-2000:])
            self.assertTrue(os.path.isfile(os.path.join(out, "model_final.pth")))
            rows = [r for r in read_metrics(out) if "total_loss" in r]
            self.assertEqual(rows[-1]["iteration"], 11)
            # Continued from the checkpoint's iteration, not from 0.
            after = [r["iteration"] for r in rows[len([r for r in before if "total_loss" in r]) :]]
            self.assertGreaterEqual(min(after), 5)
            # The second process started from the intact checkpoint, not from scratch.
            with open(os.path.join(out, "log.txt")) as f:
                log = f.read()
            self.assertIn("Starting training from iteration 5", log)


class TestReproducibility(unittest.TestCase):
    def test_two_runs_give_identical_losses_and_weights(self):
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        self.addCleanup(torch.set_num_threads, threads)
        with tempfile.TemporaryDirectory() as tmp:
            register_deta_synthetic(make_tiny_dataset(tmp))
            self.addCleanup(register_deta_synthetic)
            train_net = load_train_net()
            runs = []
            for name in ("a", "b"):
                out = os.path.join(tmp, name)
                opts = [
                    "SOLVER.MAX_ITER",
                    6,
                    "SOLVER.CHECKPOINT_PERIOD",
                    100,
                    "MODEL.DETA.MSDA_IMPL",
                    "cpp",
                ]
                train_net.main(cli_args(out, *opts))
                losses = [r["total_loss"] for r in read_metrics(out) if "total_loss" in r]
                weights = torch.load(os.path.join(out, "model_final.pth"), weights_only=True)
                runs.append((losses, weights["model"]))
            self.assertEqual(runs[0][0], runs[1][0])
            for key, value in runs[0][1].items():
                self.assertTrue(torch.equal(value, runs[1][1][key]), key)
            json.dumps(runs[0][0])  # plain floats, as written to metrics.json


if __name__ == "__main__":
    unittest.main()
