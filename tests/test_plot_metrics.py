"""``tools/plot_metrics.py``: a metrics.json cut by a kill still plots; a missing, binary or
wrong file stops with one line naming it."""

import contextlib
import importlib.util
import io
import json
import os
import tempfile
import unittest

from deta.utils.cli import run_main
from deta.utils.plot_metrics import load_metrics

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_tool():
    spec = importlib.util.spec_from_file_location(
        "deta_tools_plot_metrics", os.path.join(REPO, "tools", "plot_metrics.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class TestPlotMetrics(unittest.TestCase):
    def setUp(self):
        self._tmp = tempfile.TemporaryDirectory()
        self.addCleanup(self._tmp.cleanup)
        self.tool = load_tool()

    def write(self, name, data: bytes):
        path = os.path.join(self._tmp.name, name)
        with open(path, "wb") as f:
            f.write(data)
        return path

    def run_tool(self, *argv):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            with self.assertRaises(SystemExit) as exit_:
                run_main(lambda: self.tool.main(list(argv)))
        return exit_.exception.code, out.getvalue(), err.getvalue()

    def test_cut_last_line_still_plots(self):
        rows = [{"iteration": i, "total_loss": 3.0 - i * 0.1, "lr": 1e-4} for i in range(5)]
        text = "".join(json.dumps(r) + "\n" for r in rows) + '{"iteration": 5, "total_lo'
        path = self.write("metrics.json", text.encode())
        self.assertEqual(load_metrics(path)["total_loss"][0], [0, 1, 2, 3, 4])
        png = os.path.join(self._tmp.name, "curves.png")
        code, out, err = self.run_tool(path, "-o", png)
        self.assertEqual(code, 0, err)
        self.assertIn(f"wrote {png}", out)
        with open(png, "rb") as f:
            self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n")

    def test_bad_files_are_named(self):
        cases = {
            "missing": (os.path.join(self._tmp.name, "none.json"), "no such file"),
            "text": (self.write("log.txt", b"not json\n[1, 2]\n"), "no metrics lines"),
            "binary": (self.write("bin.json", b"\x89PNG\x00\xff\xfe"), "cannot be read"),
        }
        for kind, (path, why) in cases.items():
            with self.subTest(kind):
                code, _, err = self.run_tool(path, "-o", os.path.join(self._tmp.name, "x.png"))
                self.assertEqual(code, 2)
                self.assertEqual(err.count("\n"), 1, err)
                self.assertIn(path, err)
                self.assertIn(why, err)


if __name__ == "__main__":
    unittest.main()
