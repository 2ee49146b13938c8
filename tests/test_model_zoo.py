"""``deta.model_zoo``: every shipped config by name, models with official weights converted on
the fly and cached, and the configs inside a built wheel."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

import torch

from deta import model_zoo

from .helpers.config import REPO
from .helpers.golden import GOLDEN_OPTS, WEIGHTS, golden_model, require_golden


def repo_configs():
    root = os.path.join(REPO, "configs")
    return sorted(
        os.path.relpath(os.path.join(d, f), root)
        for d, _, files in os.walk(root)
        for f in files
        if f.endswith(".yaml")
    )


class TestConfigs(unittest.TestCase):
    def test_every_config_by_name(self):
        self.assertEqual(model_zoo.list_configs(), repo_configs())
        for name in model_zoo.list_configs():
            with self.subTest(name):
                cfg = model_zoo.get_config(name, ["MODEL.DEVICE", "cpu"])
                self.assertEqual(cfg.MODEL.META_ARCHITECTURE, "DETA")

    def test_unknown_name_lists_the_known_ones(self):
        with self.assertRaisesRegex(FileNotFoundError, "deta_R_50_5scale_12ep.yaml"):
            model_zoo.get_config_file("deta_R_51.yaml")


class TestGetWithOfficialWeights(unittest.TestCase):
    def test_converts_once_and_caches(self):
        require_golden(self)
        opts = [v for pair in zip(GOLDEN_OPTS[::2], GOLDEN_OPTS[1::2]) if pair[0] != "MODEL.DEVICE"
                for v in pair]  # fmt: skip
        with tempfile.TemporaryDirectory() as d:
            official = os.path.join(d, "official.pth")
            shutil.copy(WEIGHTS, official)
            model = model_zoo.get("Base-DETA.yaml", weights=official, opts=opts)
            cached = os.path.join(d, "official.d2.pth")
            self.assertTrue(os.path.isfile(cached))
            first = os.path.getmtime(cached)
            again = model_zoo.get("Base-DETA.yaml", weights=official, opts=opts)
            self.assertEqual(os.path.getmtime(cached), first)  # reused, not converted again
        self.assertFalse(model.training)
        expected = golden_model().state_dict()
        for m in (model, again):
            state = m.state_dict()
            self.assertEqual(sorted(state), sorted(expected))
            for k, v in expected.items():
                self.assertTrue(torch.equal(state[k], v), k)


class TestWheel(unittest.TestCase):
    def test_a_built_wheel_has_every_config(self):
        files = subprocess.run(
            ["git", "ls-files"], cwd=REPO, check=True, capture_output=True, text=True
        ).stdout.split()
        with tempfile.TemporaryDirectory() as d:
            src, wheels, target = (os.path.join(d, x) for x in ("src", "wheels", "target"))
            for f in files:  # a clean copy: the wheel build must not touch this checkout
                os.makedirs(os.path.dirname(os.path.join(src, f)), exist_ok=True)
                shutil.copy(os.path.join(REPO, f), os.path.join(src, f))
            pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
            subprocess.run(
                pip + ["wheel", "--no-build-isolation", "--no-deps", "-w", wheels, src],
                check=True, capture_output=True,
            )  # fmt: skip
            (wheel,) = os.listdir(wheels)
            subprocess.run(
                pip + ["install", "--no-deps", "--target", target, os.path.join(wheels, wheel)],
                check=True, capture_output=True,
            )  # fmt: skip
            # The checkout's editable install hooks sys.meta_path ahead of PYTHONPATH: drop it,
            # so that the probe imports the wheel's copy.
            probe = (
                "import sys; sys.meta_path = [f for f in sys.meta_path "
                "if 'editable' not in getattr(f, '__name__', type(f).__module__).lower()]; "
                "import deta.model_zoo as z, os, json; "
                "print(json.dumps([z.list_configs(), os.path.dirname(z.get_config_file("
                "'Base-DETA.yaml'))]))"
            )
            out = subprocess.run(
                [sys.executable, "-c", probe], cwd=d, check=True, capture_output=True, text=True,
                env=dict(os.environ, PYTHONPATH=target),
            ).stdout  # fmt: skip
        names, folder = json.loads(out.strip().splitlines()[-1])
        self.assertEqual(names, repo_configs())
        self.assertTrue(folder.startswith(target), folder)


if __name__ == "__main__":
    unittest.main()
