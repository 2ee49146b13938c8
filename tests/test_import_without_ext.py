"""deta imports and runs on CPU without the compiled extension deta._C (STYLE §3.7): the
in-test equivalent of detectron2's import-tests.sh."""

import os
import subprocess
import sys
import unittest
from unittest import mock

import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_FRESH_IMPORT = """
import sys
{block}
import deta
import deta.layers
assert sys.modules.get("deta._C") is None, "importing deta loaded deta._C"
print("ok")
"""


class TestImportWithoutExtension(unittest.TestCase):
    def test_cpu_forward_falls_back_to_reference(self):
        from deta.layers import ms_deform_attn_func as msda

        with mock.patch.dict(sys.modules, {"deta._C": None}):
            msda._load_ext.cache_clear()
            saved_warnings = set(msda._warned_fallbacks)
            msda._warned_fallbacks.clear()
            try:
                import deta
                import deta.layers

                self.assertFalse(deta.layers.has_cpp_ext())
                torch.manual_seed(0)
                m = deta.layers.MSDeformAttn(d_model=32, n_levels=2, n_heads=4, n_points=2)
                shapes = torch.tensor([[4, 5], [2, 3]])
                starts = torch.tensor([0, 20])
                query, memory = torch.randn(2, 6, 32), torch.randn(2, 26, 32)
                ref = torch.rand(2, 6, 2, 2)
                with self.assertLogs(msda.logger, "WARNING") as logs:
                    with mock.patch.object(
                        msda, "ms_deform_attn_pytorch", wraps=msda.ms_deform_attn_pytorch
                    ) as reference:
                        out = m(query, ref, memory, shapes, starts)
                        m(query, ref, memory, shapes, starts)
                self.assertEqual(reference.call_count, 2)
                self.assertEqual(out.shape, (2, 6, 32))
                self.assertEqual(len(logs.output), 1)  # warned once, not per call
                self.assertIn("slow PyTorch implementation", logs.output[0])
            finally:
                msda._warned_fallbacks.clear()
                msda._warned_fallbacks.update(saved_warnings)
                msda._load_ext.cache_clear()

    def _fresh_import(self, block_ext):
        code = _FRESH_IMPORT.format(block='sys.modules["deta._C"] = None' if block_ext else "")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO_ROOT, env.get("PYTHONPATH")]))
        proc = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env
        )
        self.assertEqual(proc.returncode, 0, proc.stderr[-2000:])
        self.assertIn("ok", proc.stdout)

    def test_import_never_loads_extension(self):
        # Importing deta must not import deta._C (it is loaded lazily on first op call).
        self._fresh_import(block_ext=False)

    def test_fresh_import_with_extension_blocked(self):
        self._fresh_import(block_ext=True)


if __name__ == "__main__":
    unittest.main()
