"""``tools/benchmark.py --compile``: the flag's parsing, the modes measured, and the eager vs
compiled ratio line, on hand-made results (the measured runs themselves compile for minutes; the
compiled model's correctness is tests/test_compile.py's)."""

import contextlib
import io
import unittest

from tools.benchmarking import compiling
from tools.benchmarking.cli import parse_args


def row(mode, mean_s, first_s, **compile_counts):
    c = {"mode": mode, "first_call_s": first_s, "graphs": 0, "graph_breaks": 0}
    c.update(recompiles_after_first_call=0, **compile_counts)
    ours = {"impl": "ours", "forward": {"mean_s": mean_s}, "compile": c}
    return {"image_size": "512x683", "batch_size": 1, "ours": ours}


class TestCompileFlag(unittest.TestCase):
    def test_modes_parsed_in_order_and_default_is_the_config(self):
        args = parse_args(["inference", "--compile", "", "default"])
        self.assertEqual(compiling.compile_modes(args), ["", "default"])
        self.assertEqual(compiling.compile_modes(parse_args(["train"])), [None])

    def test_unknown_mode_refused(self):
        with contextlib.redirect_stderr(io.StringIO()) as err, self.assertRaises(SystemExit):
            parse_args(["inference", "--compile", "fast"])
        self.assertIn("invalid choice: 'fast'", err.getvalue())

    def test_ratio_line_against_the_eager_row(self):
        results = [row("", 1.242, 1.3), row("default", 1.202, 72.9, graphs=4, graph_breaks=2)]
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            compiling.print_ratios(results, ("image_size", "batch_size"), ("forward",))
        line = out.getvalue().splitlines()[-1]
        self.assertIn("[512x683 1] compile=default vs eager", line)
        self.assertIn("first call 72.9 s vs 1.3 s eager (compile ~72 s)", line)
        self.assertIn("forward 1242 -> 1202 ms = 1.03x", line)
        self.assertIn("4 graphs, 2 breaks, 0 recompiles after the first call", line)
        self.assertEqual(compiling.label(results[1]["ours"]), "ours compile=default")
        self.assertEqual(compiling.label(results[0]["ours"]), "ours")

    def test_no_ratio_without_an_eager_row(self):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            compiling.print_ratios([row("default", 1.2, 70.0)], ("image_size",), ("forward",))
        self.assertEqual(out.getvalue(), "")


if __name__ == "__main__":
    unittest.main()
