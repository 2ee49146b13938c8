"""``tools/benchmark.py inference --peer official``: the official DETA code as a timed peer.

The argument checks always run. The worker test needs a source checkout of github.com/jozhang97/DETA
named by ``$DETA_OFFICIAL_SRC`` (skipped without it). It runs the tool end to end on a reduced
R-50 (the golden bundle's reductions) and a small image, and checks what the peer promises: both
models carry the same weights (the official random init, converted), so with the official query
selection fed to ours every output agrees, and our own selection is the official one.
"""

import json
import os
import subprocess
import sys
import tempfile
import unittest

from deta.utils.cli import CliError
from tools.benchmarking.cli import parse_args
from tools.benchmarking.inference import mode_inference
from tools.benchmarking.models import build_cfg
from tools.benchmarking.peer_official import official_flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(REPO, "tools", "benchmark.py")
R50 = os.path.join(REPO, "configs", "deta_R_50_5scale_12ep.yaml")
TINY = os.path.join(REPO, "configs", "quick_schedules", "deta_instant_test.yaml")
OFFICIAL_SRC = os.environ.get("DETA_OFFICIAL_SRC")
# The golden bundle's reductions of the official configs/deta.sh.
REDUCED = [
    "MODEL.DETA.ENC_LAYERS", "2",
    "MODEL.DETA.DEC_LAYERS", "2",
    "MODEL.DETA.DIM_FEEDFORWARD", "512",
    "MODEL.DETA.NUM_QUERIES", "300",
]  # fmt: skip


def _flag_values(flags):
    """{flag: value} of an argv list; switches map to True."""
    out, i = {}, 0
    while i < len(flags):
        if i + 1 < len(flags) and not flags[i + 1].startswith("--"):
            out[flags[i]], i = flags[i + 1], i + 2
        else:
            out[flags[i]], i = True, i + 1
    return out


class TestOfficialPeerArguments(unittest.TestCase):
    def assert_refused(self, argv, *fragments):
        with self.assertRaises(CliError) as ctx:
            mode_inference(parse_args(["inference", "--peer", "official", *argv]))
        message = str(ctx.exception)
        self.assertNotIn("\n", message)
        for fragment in fragments:
            self.assertIn(fragment, message)

    def test_needs_official_src(self):
        self.assert_refused([], "--official-src")

    def test_path_that_is_not_a_checkout(self):
        with tempfile.TemporaryDirectory() as tmp:
            self.assert_refused(["--official-src", tmp], tmp, "models/deformable_detr.py")

    def test_refuses_what_the_official_code_cannot_build(self):
        with tempfile.TemporaryDirectory() as tmp:
            os.makedirs(os.path.join(tmp, "models"))
            open(os.path.join(tmp, "models", "deformable_detr.py"), "w").close()
            src = ["--official-src", tmp]
            self.assert_refused([*src, "--config-file", TINY], "MODEL.RESNETS.DEPTH=18")
            self.assert_refused([*src, "MODEL.DETA.PROPOSAL_NMS_THRESH", "0.8"], "NMS_THRESH=0.8")
            self.assert_refused([*src, "MODEL.DETA.NUM_CLASSES", "20"], "NUM_CLASSES=20")
            self.assert_refused([*src, "--weights", "x.pth"], "--weights")

    def test_default_config_is_the_official_deta_sh(self):
        flags = _flag_values(official_flags(build_cfg(R50, [], "cpu")))
        deta_sh = {
            "--with_box_refine": True,
            "--two_stage": True,
            "--num_feature_levels": "5",
            "--num_queries": "900",
            "--dim_feedforward": "2048",
            "--dropout": "0.0",
            "--cls_loss_coef": "1.0",
            "--assign_first_stage": True,
            "--assign_second_stage": True,
        }
        self.assertEqual({k: flags.get(k) for k in deta_sh}, deta_sh)
        self.assertEqual((flags["--backbone"], flags["--enc_layers"]), ("resnet50", "6"))
        reduced = _flag_values(official_flags(build_cfg(R50, REDUCED, "cpu")))
        self.assertEqual(reduced["--dim_feedforward"], "512")
        self.assertEqual(reduced["--num_queries"], "300")


@unittest.skipUnless(OFFICIAL_SRC, "set DETA_OFFICIAL_SRC to a checkout of jozhang97/DETA")
class TestOfficialPeerWorker(unittest.TestCase):
    def test_same_weights_same_outputs(self):
        self.assertTrue(
            os.path.isfile(os.path.join(OFFICIAL_SRC, "models", "deformable_detr.py")),
            f"DETA_OFFICIAL_SRC={OFFICIAL_SRC!r} is not a checkout of the official DETA code",
        )
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "result.json")
            cmd = [
                sys.executable, TOOL, "inference", "--json", out, "--peer", "official",
                "--official-src", OFFICIAL_SRC, "--image-sizes", "192x256", "--batch-sizes", "1",
                "--threads", "1", "--warmup", "0", "--iters", "1", "--skip-e2e", "--check",
                *REDUCED,
            ]  # fmt: skip
            env = dict(os.environ, OMP_NUM_THREADS="1")
            proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
            self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
            with open(out) as f:
                (row,) = json.load(f)["results"]
        ours, peer = row["ours"], row["peer"]
        self.assertNotIn("error", peer)
        self.assertTrue(peer["impl"].startswith("official DETA"), peer["impl"])
        self.assertEqual((peer["forward"]["iters"], peer["forward"]["warmup"]), (1, 0))
        # The official head has the 91 raw COCO ids; ours the 80 the converter slices out.
        self.assertEqual(peer["shapes"]["pred_logits"], [1, 300, 91])
        self.assertEqual(ours["shapes"]["pred_logits"], [1, 300, 80])
        # Made by the timed model of our worker: it carries the official weights.
        check = ours["official_check"]
        for key in ("pred_logits", "pred_boxes", "enc_logits", "enc_boxes"):
            self.assertLess(check[f"max_abs_diff_{key}"], 1e-3, key)
        # Our own selection: the official one, but for queries whose first-stage logits are
        # within float noise of a neighbour's (none here on AVX-512; the ISA changes the noise).
        self.assertGreaterEqual(check["selected_same_fraction"], 0.99)


if __name__ == "__main__":
    unittest.main()
