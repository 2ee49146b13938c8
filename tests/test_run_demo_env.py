"""``tools/run_demo.py`` starts its training with bounded OpenMP spinning, and leaves a user's own
OpenMP wait settings alone (docs/TRAINING.md has the measurements behind 1000 spins)."""

import importlib.util
import os
import unittest
from unittest import mock

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_run_demo():
    path = os.path.join(REPO, "tools", "run_demo.py")
    spec = importlib.util.spec_from_file_location("deta_tools_run_demo", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class TestTrainingEnvironment(unittest.TestCase):
    def train_env(self, **environ):
        run_demo = load_run_demo()
        clean = {
            k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
        }
        with mock.patch.dict(os.environ, {**clean, **environ}, clear=True):
            with mock.patch.object(run_demo.subprocess, "run") as run:
                run_demo._train("/out/model", "/out/datasets", ["SOLVER.MAX_ITER", "5"])
        ((args, kwargs),) = run.call_args_list
        self.assertIn("--resume", args[0])
        self.assertEqual(args[0][-2:], ["SOLVER.MAX_ITER", "5"])
        return kwargs["env"]

    def test_bounded_spinning_by_default(self):
        env = self.train_env()
        self.assertEqual(env["GOMP_SPINCOUNT"], "1000")
        self.assertNotIn("OMP_WAIT_POLICY", env)
        self.assertEqual(env["DETECTRON2_DATASETS"], "/out/datasets")

    def test_user_settings_win(self):
        env = self.train_env(OMP_WAIT_POLICY="PASSIVE")
        self.assertEqual(env["OMP_WAIT_POLICY"], "PASSIVE")
        self.assertNotIn("GOMP_SPINCOUNT", env)
        self.assertEqual(self.train_env(GOMP_SPINCOUNT="50")["GOMP_SPINCOUNT"], "50")


if __name__ == "__main__":
    unittest.main()
