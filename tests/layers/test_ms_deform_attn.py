"""Tests of the multi-scale deformable attention op (all implementations) and MSDeformAttn."""

import os
import unittest
from unittest import mock

import torch

from deta.layers import (
    MSDeformAttn,
    has_cpp_ext,
    has_cuda_ext,
    ms_deform_attn,
    ms_deform_attn_pytorch,
    set_msda_impl,
)
from deta.layers import ms_deform_attn_func as msda

NEEDS_CPP = unittest.skipIf(not has_cpp_ext(), "requires deta._C (pip install -e .)")
NEEDS_CUDA = unittest.skipIf(
    not (torch.cuda.is_available() and has_cuda_ext()),
    "requires a CUDA device and deta._C built with CUDA",
)
# Small multi-level maps, including a 1x1 level; and DETA-like ones (8 heads x 32 channels).
SMALL_LEVELS = [(6, 4), (3, 2), (1, 1)]
DETA_LEVELS = [(24, 36), (12, 18), (6, 9), (3, 5)]


def make_inputs(levels, batch=2, queries=5, heads=2, channels=3, points=2, **kwargs):
    """Random op inputs; locations spill ``spread`` outside [0, 1] so off-map samples and
    corners occur. Returns [value, spatial_shapes, level_start_index, locations, weights]."""
    dtype = kwargs.get("dtype", torch.float64)
    spread = kwargs.get("spread", 0.25)
    g = torch.Generator().manual_seed(kwargs.get("seed", 0))
    spatial_shapes = torch.tensor(levels, dtype=torch.int64)
    sizes = spatial_shapes.prod(1)
    level_start_index = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
    value = torch.randn(batch, int(sizes.sum()), heads, channels, generator=g, dtype=dtype)
    shape = (batch, queries, heads, len(levels), points)
    locations = torch.rand(*shape, 2, generator=g, dtype=dtype) * (1 + 2 * spread) - spread
    weights = torch.rand(*shape, generator=g, dtype=dtype) + 0.01
    weights = weights / weights.sum((-1, -2), keepdim=True)
    tensors = [value, spatial_shapes, level_start_index, locations, weights]
    return [t.to(kwargs.get("device", "cpu")) for t in tensors]


def run_with_grads(impl, inputs, grad_output=None):
    """Forward (and backward if grad_output is given) of one implementation; returns
    (output, [grad_value, grad_locations, grad_weights])."""
    value, spatial_shapes, level_start_index, locations, weights = (
        t.detach().clone().requires_grad_(t.is_floating_point()) for t in inputs
    )
    out = ms_deform_attn(value, spatial_shapes, level_start_index, locations, weights, impl=impl)
    if grad_output is None:
        return out, []
    out.backward(grad_output)
    return out, [value.grad, locations.grad, weights.grad]


class TestMSDeformAttnGradcheck(unittest.TestCase):
    def _gradcheck(self, impl):
        for levels, batch, queries in ((SMALL_LEVELS, 2, 5), ([(5, 7)], 1, 4), ([(1, 1)], 3, 2)):
            with self.subTest(levels=levels, batch=batch):
                value, shapes, starts, loc, attn = make_inputs(levels, batch, queries)
                loc[0, 0, 0, 0] = torch.tensor([-0.3, 1.2], dtype=loc.dtype)  # off-map sample

                def fn(v, l, a, shapes=shapes, starts=starts):
                    return ms_deform_attn(v, shapes, starts, l, a, impl=impl)

                args = [t.requires_grad_() for t in (value, loc, attn)]
                self.assertTrue(torch.autograd.gradcheck(fn, args, eps=1e-6, atol=1e-5))

    def test_gradcheck_pytorch(self):
        self._gradcheck("pytorch")

    @NEEDS_CPP
    def test_gradcheck_cpu_kernel(self):
        self._gradcheck("cpp")


class TestMSDeformAttnKernels(unittest.TestCase):
    """Compiled kernels against the PyTorch reference; CPU and CUDA share the bodies."""

    def _compare(self, device, dtype, channels=32, **kwargs):
        inputs = make_inputs(
            DETA_LEVELS, queries=300, heads=8, channels=channels, points=4, dtype=dtype, **kwargs
        )
        inputs = [t.to(device) for t in inputs]
        grad_output = torch.randn(2, 300, 8 * channels, dtype=dtype, device=device)
        ref, ref_grads = run_with_grads("pytorch", inputs, grad_output)
        out, grads = run_with_grads("cpp", inputs, grad_output)
        if dtype == torch.float64:
            tols = dict(rtol=1e-7, atol=1e-10)
        else:  # measured max abs error ~1e-6 (grads ~3e-5 for locations, scaled by W)
            tols = dict(rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(out, ref, **tols)
        names = ("grad_value", "grad_sampling_locations", "grad_attention_weights")
        for name, grad, ref_grad in zip(names, grads, ref_grads):
            scale = max(1.0, ref_grad.abs().max().item())  # location grads are O(W)
            torch.testing.assert_close(
                grad, ref_grad, rtol=tols["rtol"], atol=tols["atol"] * scale, msg=name
            )

    @NEEDS_CPP
    def test_cpu_matches_reference(self):
        for dtype in (torch.float32, torch.float64):
            for channels in (32, 64, 30):  # fixed-width kernels and the generic one
                with self.subTest(dtype=dtype, channels=channels):
                    self._compare("cpu", dtype, channels)

    @NEEDS_CPP
    def test_cpu_baseline_and_avx2_builds(self):
        # $DETA_CPU_KERNEL_ISA=baseline forces the SSE2 build on a CPU that has AVX2, so both
        # builds are checked on one machine; "avx2" is used only where the CPU has it.
        ext = msda._load_ext()
        builds = ["baseline"] + (["avx2"] if ext.cpu_kernel_isa() == "avx2" else [])
        for build in builds:
            env = {"DETA_CPU_KERNEL_ISA": build} if build == "baseline" else {}
            with self.subTest(build=build), mock.patch.dict(os.environ, env):
                self.assertEqual(ext.cpu_kernel_isa(), build)
                for dtype in (torch.float32, torch.float64):
                    self._compare("cpu", dtype, 32)
                    self._compare("cpu", dtype, 30)

    @NEEDS_CPP
    def test_cpu_backward_is_deterministic(self):
        inputs = make_inputs(DETA_LEVELS, queries=600, heads=8, channels=32, points=4)
        grad_output = torch.randn(2, 600, 256, dtype=torch.float64)
        _, first = run_with_grads("cpp", inputs, grad_output)
        _, second = run_with_grads("cpp", inputs, grad_output)
        for a, b in zip(first, second):
            self.assertTrue(torch.equal(a, b))

    @NEEDS_CPP
    def test_cpu_backward_split_slices(self):
        # One (batch, head) slice and more threads than slices: queries are split into chunks
        # with their own grad_value buffers, summed in a fixed order.
        threads = torch.get_num_threads()
        torch.set_num_threads(4)
        try:
            inputs = make_inputs(DETA_LEVELS, batch=1, queries=1024, heads=1, channels=32)
            grad_output = torch.randn(1, 1024, 32, dtype=torch.float64)
            _, ref_grads = run_with_grads("pytorch", inputs, grad_output)
            _, first = run_with_grads("cpp", inputs, grad_output)
            _, second = run_with_grads("cpp", inputs, grad_output)
        finally:
            torch.set_num_threads(threads)
        for a, b, ref in zip(first, second, ref_grads):
            self.assertTrue(torch.equal(a, b))
            torch.testing.assert_close(a, ref)

    @NEEDS_CPP
    def test_cpu_empty_inputs(self):
        for kwargs in (dict(queries=0), dict(batch=0), dict(channels=0)):
            with self.subTest(**kwargs):
                inputs = make_inputs(SMALL_LEVELS, **kwargs)
                out, _ = run_with_grads("cpp", inputs)
                ref, ref_grads = run_with_grads("pytorch", inputs, torch.ones_like(out))
                _, grads = run_with_grads("cpp", inputs, torch.ones_like(out))
                self.assertEqual(out.shape, ref.shape)
                for grad, ref_grad in zip(grads, ref_grads):
                    torch.testing.assert_close(grad, ref_grad)

    @NEEDS_CUDA
    def test_cuda_matches_reference(self):
        for dtype in (torch.float32, torch.float64):
            for channels in (32, 30, 71):
                with self.subTest(dtype=dtype, channels=channels):
                    self._compare("cuda", dtype, channels)

    @NEEDS_CUDA
    def test_cuda_gradcheck(self):
        value, shapes, starts, loc, attn = make_inputs(SMALL_LEVELS, device="cuda")

        def fn(v, l, a):
            return ms_deform_attn(v, shapes, starts, l, a, impl="cuda")

        args = [t.requires_grad_() for t in (value, loc, attn)]
        self.assertTrue(torch.autograd.gradcheck(fn, args, eps=1e-6, atol=1e-5))

    @NEEDS_CUDA
    def test_cuda_autocast_half(self):
        inputs = make_inputs(DETA_LEVELS, queries=100, heads=8, channels=32, dtype=torch.float32)
        inputs = [t.cuda() for t in inputs]
        ref = ms_deform_attn(*inputs, impl="cuda")
        for dtype in (torch.float16, torch.bfloat16):
            with self.subTest(dtype=dtype), torch.autocast("cuda", dtype=dtype):
                value = inputs[0].to(dtype).requires_grad_()
                out = ms_deform_attn(value, *inputs[1:], impl="cuda")
                self.assertEqual(out.dtype, dtype)
                out.float().sum().backward()
                self.assertEqual(value.grad.dtype, dtype)
                torch.testing.assert_close(out.float(), ref, rtol=2e-2, atol=2e-2)


class TestMSDeformAttnDispatch(unittest.TestCase):
    def setUp(self):
        self.inputs = make_inputs(SMALL_LEVELS)
        self.addCleanup(set_msda_impl, None)

    def _uses_reference(self, **kwargs):
        with mock.patch.object(msda, "ms_deform_attn_pytorch", wraps=ms_deform_attn_pytorch) as ref:
            ms_deform_attn(*self.inputs, **kwargs)
        return ref.called

    def test_explicit_impl(self):
        self.assertTrue(self._uses_reference(impl="pytorch"))
        if has_cpp_ext():
            self.assertFalse(self._uses_reference(impl="cpp"))
            self.assertFalse(self._uses_reference(impl="auto"))

    def test_unknown_impl(self):
        with self.assertRaisesRegex(ValueError, "'triton'"):
            ms_deform_attn(*self.inputs, impl="triton")
        with self.assertRaisesRegex(ValueError, "set_msda_impl"):
            set_msda_impl("triton")

    def test_cuda_impl_needs_cuda_tensors(self):
        with self.assertRaisesRegex(ValueError, "impl='cuda'"):
            ms_deform_attn(*self.inputs, impl="cuda")

    def test_process_default_and_env_var(self):
        set_msda_impl("pytorch")
        self.assertTrue(self._uses_reference())
        set_msda_impl(None)
        with mock.patch.dict(os.environ, {"DETA_MSDA_IMPL": "pytorch"}):
            self.assertTrue(self._uses_reference())
        with mock.patch.dict(os.environ, {"DETA_MSDA_IMPL": "nope"}):
            with self.assertRaisesRegex(ValueError, "DETA_MSDA_IMPL"):
                ms_deform_attn(*self.inputs)

    def test_cpp_impl_without_extension(self):
        with mock.patch.object(msda, "_load_ext", return_value=None):
            with self.assertRaisesRegex(RuntimeError, "pip install --no-build-isolation"):
                ms_deform_attn(*self.inputs, impl="cpp")
            self.assertTrue(self._uses_reference(impl="auto"))


class TestMSDeformAttnBadInputs(unittest.TestCase):
    """Bad inputs raise errors naming the argument, from Python (ValueError) and _C
    (RuntimeError), never crash."""

    # name: (input index, mutation, Python error pattern, _C error pattern); inputs are
    # [value, spatial_shapes, level_start_index, sampling_locations, attention_weights].
    CASES = {
        "int_value": (0, lambda t: t.long(), "value", "value must be float"),
        "int32_shapes": (1, lambda t: t.int(), "spatial_shapes", "shapes must be int64"),
        "float_starts": (2, lambda t: t.double(), "level_start_index", "index must be int64"),
        "loc_heads": (3, lambda t: t[:, :, :1], "sampling_locations", "sampling_loc"),
        "loc_levels": (3, lambda t: t[:, :, :, :2], "sampling_locations", "sampling_loc"),
        "attn_shape": (4, lambda t: t[..., :1], "attention_weights", "attn_weight"),
        "levels_count": (1, lambda t: t[:2], "sampling_locations", "level_start_index"),
        "sum_hw": (1, lambda t: t + 1, "spatial_shapes", "spatial_shapes"),
        "starts": (2, lambda t: t + 1, "level_start_index", "level_start_index"),
        "negative_hw": (1, lambda t: -t, "spatial_shapes", "spatial_shapes"),
        "huge_hw": (1, lambda t: t * 2**40, "spatial_shapes", "spatial_shapes"),
        "loc_dtype": (3, lambda t: t.float(), None, "sampling_loc must have the dtype"),
    }

    def _cases(self):
        for name, (index, mutate, py_pattern, c_pattern) in self.CASES.items():
            inputs = make_inputs(SMALL_LEVELS)
            inputs[index] = mutate(inputs[index]).contiguous()
            yield name, inputs, py_pattern, c_pattern

    def test_python_entry(self):
        for name, inputs, pattern, _ in self._cases():
            if pattern is not None:
                with self.subTest(name), self.assertRaisesRegex(ValueError, pattern):
                    ms_deform_attn(*inputs, impl="pytorch")
        with self.assertRaisesRegex(ValueError, "im2col_step"):
            ms_deform_attn(*make_inputs(SMALL_LEVELS), im2col_step=0)

    @NEEDS_CPP
    def test_raw_extension(self):
        ext = msda._load_ext()
        for name, inputs, _, pattern in self._cases():
            with self.subTest(name), self.assertRaisesRegex(RuntimeError, pattern):
                ext.ms_deform_attn_forward(*inputs, 64)
        inputs = make_inputs(SMALL_LEVELS)
        out = ext.ms_deform_attn_forward(*inputs, 64)
        with self.assertRaisesRegex(RuntimeError, "sampling_loc must be contiguous"):
            ext.ms_deform_attn_forward(*inputs[:3], inputs[3].transpose(0, 1), inputs[4], 64)
        with self.assertRaisesRegex(RuntimeError, "im2col_step"):
            ext.ms_deform_attn_forward(*inputs, 0)
        with self.assertRaisesRegex(RuntimeError, "grad_output"):
            ext.ms_deform_attn_backward(*inputs, out[:, :1], 64)
        with self.assertRaisesRegex(RuntimeError, "grad_output must be contiguous"):
            strided = out.transpose(0, 1).contiguous().transpose(0, 1)
            ext.ms_deform_attn_backward(*inputs, strided, 64)

    def test_non_contiguous_inputs(self):
        value, shapes, starts, loc, attn = make_inputs(SMALL_LEVELS, queries=6)
        strided = [value.transpose(0, 1).contiguous().transpose(0, 1), shapes, starts]
        strided += [loc.transpose(1, 2).contiguous().transpose(1, 2), attn]
        self.assertFalse(strided[0].is_contiguous() or strided[3].is_contiguous())
        expected = ms_deform_attn_pytorch(value, shapes, loc, attn)
        for impl in ("pytorch", "cpp") if has_cpp_ext() else ("pytorch",):
            torch.testing.assert_close(ms_deform_attn(*strided, impl=impl), expected)


class TestMSDeformAttnModule(unittest.TestCase):
    def test_init(self):
        m = MSDeformAttn(d_model=64, n_levels=2, n_heads=8, n_points=4)
        directions = torch.tensor(
            [[1, 0], [1, 1], [0, 1], [-1, 1], [-1, 0], [-1, -1], [0, -1], [1, -1]],
            dtype=torch.float32,
        )
        points = torch.arange(1, 5, dtype=torch.float32)
        expected = directions[:, None, None, :] * points[None, None, :, None]  # (M, 1, P, 2)
        expected = expected.expand(8, 2, 4, 2).reshape(-1)  # [head][level][point][xy]
        # float32 cos/sin: the official init has the same ~1e-7 relative error.
        torch.testing.assert_close(m.sampling_offsets.bias.data, expected, atol=1e-6, rtol=1e-6)
        for t in (m.sampling_offsets.weight, m.attention_weights.weight, m.attention_weights.bias):
            self.assertEqual(t.abs().sum().item(), 0.0)
        self.assertEqual(m.value_proj.bias.abs().sum().item(), 0.0)
        self.assertGreater(m.output_proj.weight.abs().sum().item(), 0.0)
        names = {k.split(".")[0] for k in m.state_dict()}
        expected_names = {"sampling_offsets", "attention_weights", "value_proj", "output_proj"}
        self.assertEqual(names, expected_names)

    def test_bad_arguments(self):
        with self.assertRaisesRegex(ValueError, "d_model"):
            MSDeformAttn(d_model=30, n_heads=8)
        with self.assertWarnsRegex(UserWarning, "power of 2"):
            MSDeformAttn(d_model=24, n_heads=8)

    def _inputs(self, levels, batch=2, queries=7, d_model=32):
        shapes = torch.tensor(levels, dtype=torch.int64)
        sizes = shapes.prod(1)
        starts = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
        memory = torch.randn(batch, int(sizes.sum()), d_model)
        return torch.randn(batch, queries, d_model), memory, shapes, starts

    def test_forward_shapes(self):
        m = MSDeformAttn(d_model=32, n_levels=2, n_heads=4, n_points=3)
        query, memory, shapes, starts = self._inputs([(5, 6), (3, 2)])
        mask = torch.zeros(memory.shape[:2], dtype=torch.bool)
        mask[1, -4:] = True
        for ref_dim in (2, 4):
            ref = torch.rand(2, 7, 2, ref_dim)
            out = m(query, ref, memory, shapes, starts, mask)
            self.assertEqual(out.shape, (2, 7, 32))
        with self.assertRaisesRegex(ValueError, "reference_points"):
            m(query, torch.rand(2, 7, 2, 3), memory, shapes, starts)

    def _ramp_module(self, offset):
        """1 head, 1 level, 1 point, 1 channel, identity projections: the output is the
        bilinearly sampled input at the sampling location."""
        m = MSDeformAttn(d_model=1, n_levels=1, n_heads=1, n_points=1)
        with torch.no_grad():
            for proj in (m.value_proj, m.output_proj):
                proj.weight.fill_(1.0)
            m.sampling_offsets.bias.copy_(torch.tensor(offset))
        return m

    def test_reference_point_math(self):
        h, w = 4, 8
        xs = torch.arange(w, dtype=torch.float32).repeat(h)  # value at (y, x) is x
        memory, query = xs.view(1, h * w, 1), torch.zeros(1, 1, 1)
        shapes, starts = torch.tensor([[h, w]]), torch.tensor([0])
        # 2-d: loc_x = 0.5 + 1 / W -> pixel x = loc_x * W - 0.5 = 4.5.
        m = self._ramp_module([1.0, 0.0])
        out = m(query, torch.tensor([[[[0.5, 0.25]]]]), memory, shapes, starts)
        torch.testing.assert_close(out, torch.full((1, 1, 1), 4.5))
        # 4-d: loc_x = cx + dx / P * w * 0.5 = 0.5 + 1 * 0.25 * 0.5 -> pixel x = 4.5.
        ref = torch.tensor([[[[0.5, 0.5, 0.25, 0.5]]]])
        out = m(query, ref, memory, shapes, starts)
        torch.testing.assert_close(out, torch.full((1, 1, 1), 4.5))
        # Direct check of both normalisations, y included.
        offsets = torch.tensor([2.0, -1.0]).view(1, 1, 1, 1, 1, 2)
        locations = m.sampling_locations(torch.tensor([[[[0.5, 0.25]]]]), offsets, shapes)
        torch.testing.assert_close(locations.flatten(), torch.tensor([0.75, 0.0]))
        locations = m.sampling_locations(ref, offsets, shapes)
        torch.testing.assert_close(locations.flatten(), torch.tensor([0.75, 0.25]))


if __name__ == "__main__":
    unittest.main()
