"""GPU readiness of the deformable-attention op: no device-to-host sync per call on CUDA (level
tensors are checked on CPU, on CUDA only when asked), and torch.use_deterministic_algorithms
honoured (the CPU backward is deterministic; the CUDA backward, which scatters with atomics,
alerts). The CUDA tests are named ``test_cuda_*`` so that ``pytest -k cuda`` selects them."""

import contextlib
import os
import types
import unittest
import warnings
from unittest import mock

import torch

from deta.layers import MSDeformAttn, get_validate_levels, ms_deform_attn, set_validate_levels
from deta.layers import ms_deform_attn_func as msda
from deta.modeling.deformable_transformer import (
    DeformableDecoder,
    DeformableDecoderLayer,
    DeformableEncoder,
    DeformableEncoderLayer,
    DeformableTransformer,
)

from . import test_ms_deform_attn as base  # the module, so its TestCases are not collected twice
from .test_ms_deform_attn import (
    DETA_LEVELS,
    NEEDS_CPP,
    NEEDS_CUDA,
    SMALL_LEVELS,
    make_inputs,
    run_with_grads,
)

# The cases of TestMSDeformAttnBadInputs that only the level tensors' contents reveal.
LEVEL_CASES = ("sum_hw", "starts", "negative_hw", "huge_hw")


def level_cases(device="cpu"):
    for name in LEVEL_CASES:
        index, mutate, py_pattern, c_pattern = base.TestMSDeformAttnBadInputs.CASES[name]
        inputs = make_inputs(SMALL_LEVELS)
        inputs[index] = mutate(inputs[index]).contiguous()
        yield name, [t.to(device) for t in inputs], py_pattern, c_pattern


@contextlib.contextmanager
def deterministic(warn_only=False):
    previous = torch.are_deterministic_algorithms_enabled()
    previous_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=warn_only)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous, warn_only=previous_warn)


@contextlib.contextmanager
def no_sync_allowed():
    """Any device-to-host synchronisation inside raises (CUDA's sync debug mode)."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


class TestLevelValidation(unittest.TestCase):
    def setUp(self):
        self.addCleanup(set_validate_levels, None)

    def test_cpu_checks_do_not_depend_on_the_setting(self):
        for enabled in (False, True, None):
            set_validate_levels(enabled)
            for name, inputs, py_pattern, _ in level_cases():
                with self.subTest(name, enabled=enabled):
                    with self.assertRaisesRegex(ValueError, py_pattern):
                        ms_deform_attn(*inputs, impl="pytorch")

    @NEEDS_CPP
    def test_cpu_kernel_checks_do_not_depend_on_the_setting(self):
        ext = msda._load_ext()
        for enabled in (False, True):
            set_validate_levels(enabled)
            for name, inputs, py_pattern, c_pattern in level_cases():
                with self.subTest(name, enabled=enabled):
                    with self.assertRaisesRegex(ValueError, py_pattern):
                        ms_deform_attn(*inputs, impl="cpp")
                    with self.assertRaisesRegex(RuntimeError, c_pattern):
                        ext.ms_deform_attn_forward(*inputs, 64)
                    out = torch.zeros(2, 5, 6, dtype=torch.float64)
                    with self.assertRaisesRegex(RuntimeError, c_pattern):
                        ext.ms_deform_attn_backward(*inputs, out, 64)

    def test_device_tensors_are_read_only_when_asked(self):
        # Meta tensors stand in for CUDA ones: any non-CPU device skips the read-back by default.
        inputs = [t.to("meta") for t in make_inputs(SMALL_LEVELS)]
        with mock.patch.object(msda, "_check_levels", return_value=SMALL_LEVELS) as check:
            self.assertEqual(msda._check_inputs(*inputs), [])
            check.assert_not_called()
            set_validate_levels(True)
            self.assertEqual(msda._check_inputs(*inputs), SMALL_LEVELS)
            check.assert_called_once_with(inputs[1], inputs[2], inputs[0].shape[1])
        # Checks that need no read-back (dtype, shape, device) still apply on any device.
        inputs[1] = inputs[1].int()
        set_validate_levels(False)
        with self.assertRaisesRegex(ValueError, "spatial_shapes must be an int64"):
            msda._check_inputs(*inputs)

    def test_setting_and_env_var(self):
        set_validate_levels(None)
        with mock.patch.dict(os.environ, {"DETA_MSDA_VALIDATE_LEVELS": "1"}):
            self.assertTrue(get_validate_levels())
            set_validate_levels(False)
            self.assertFalse(get_validate_levels())
        set_validate_levels(None)
        with mock.patch.dict(os.environ, {"DETA_MSDA_VALIDATE_LEVELS": "yes"}):
            with self.assertRaisesRegex(ValueError, "DETA_MSDA_VALIDATE_LEVELS must be 0 or 1"):
                get_validate_levels()
        with self.assertRaisesRegex(ValueError, "set_validate_levels"):
            set_validate_levels("1")

    @NEEDS_CUDA
    def test_cuda_level_checks_when_asked(self):
        for name, inputs, py_pattern, _ in level_cases("cuda"):
            with self.subTest(name):
                set_validate_levels(True)
                with self.assertRaisesRegex(ValueError, py_pattern):
                    ms_deform_attn(*inputs, impl="cuda")
                set_validate_levels(False)
                # Not checked: the kernel drops corners outside value instead of reading there.
                out = msda._load_ext().ms_deform_attn_forward(*inputs, 64)
                grads = msda._load_ext().ms_deform_attn_backward(*inputs, torch.ones_like(out), 64)
                torch.cuda.synchronize()
                for t in [out] + list(grads):
                    self.assertTrue(torch.isfinite(t).all())


def model_like_stack(device):
    """The encoder and decoder with DETA's sizes (fewer layers), and their inputs as the model
    builds them (flatten_levels); returns a callable running forward and backward."""
    torch.manual_seed(0)
    d, levels, batch, queries = 256, DETA_LEVELS, 2, 50
    encoder = DeformableEncoder(DeformableEncoderLayer(d, 512, 0.1, len(levels)), 2)
    decoder = DeformableDecoder(DeformableDecoderLayer(d, 512, 0.1, len(levels)), 2)
    encoder.to(device).train()
    decoder.to(device).train()
    holder = types.SimpleNamespace(level_embed=torch.randn(len(levels), d, device=device))
    srcs = [torch.randn(batch, d, h, w, device=device, requires_grad=True) for h, w in levels]
    masks = [torch.zeros(batch, h, w, dtype=torch.bool, device=device) for h, w in levels]
    for m in masks:
        m[0, :, -1:] = True  # a padded column in image 0
    pos = [torch.randn_like(s) for s in srcs]
    tgt = torch.randn(batch, queries, d, device=device)
    query_pos = torch.randn(batch, queries, d, device=device)
    boxes = torch.rand(batch, queries, 4, device=device) * 0.5 + 0.25

    def step():
        lv = DeformableTransformer.flatten_levels(holder, srcs, masks, pos)
        memory = encoder(
            lv["src"],
            lv["spatial_shapes"],
            lv["level_start_index"],
            lv["valid_ratios"],
            lv["pos"],
            lv["mask"],
            shapes=lv["shapes"],
        )
        hs, _ = decoder(
            tgt,
            boxes,
            memory,
            lv["spatial_shapes"],
            lv["level_start_index"],
            lv["valid_ratios"],
            query_pos,
            lv["mask"],
        )
        (hs.square().mean() + memory.square().mean()).backward()
        return hs.detach()

    return step


class TestNoSyncOnCuda(unittest.TestCase):
    @NEEDS_CUDA
    def test_cuda_op_forward_backward_has_no_sync(self):
        inputs = make_inputs(DETA_LEVELS, queries=300, heads=8, channels=32, points=4)
        inputs = [t.to("cuda", torch.float32 if t.is_floating_point() else None) for t in inputs]
        value, shapes, starts, loc, attn = (
            t.detach().requires_grad_(t.is_floating_point()) for t in inputs
        )
        grad = torch.randn(2, 300, 256, device="cuda")
        with no_sync_allowed():
            out = ms_deform_attn(value, shapes, starts, loc, attn, impl="cuda")
            out.backward(grad)
        torch.cuda.synchronize()
        self.assertTrue(torch.isfinite(value.grad).all())

    @NEEDS_CUDA
    def test_cuda_module_with_model_built_levels_has_no_sync(self):
        # spatial_shapes / level_start_index built on the device from Python ints, as
        # DeformableTransformer.flatten_levels does; then MSDeformAttn forward and backward.
        torch.manual_seed(0)
        attn = MSDeformAttn(256, len(DETA_LEVELS), 8, 4, impl="cuda").cuda()
        s = sum(h * w for h, w in DETA_LEVELS)
        query = torch.randn(2, 100, 256, device="cuda", requires_grad=True)
        memory = torch.randn(2, s, 256, device="cuda", requires_grad=True)
        ref = torch.rand(2, 100, len(DETA_LEVELS), 2, device="cuda")
        mask = torch.zeros(2, s, dtype=torch.bool, device="cuda")
        with no_sync_allowed():
            shapes = torch.stack(
                [
                    torch.stack([torch.full((), v, dtype=torch.long, device="cuda") for v in hw])
                    for hw in DETA_LEVELS
                ]
            )
            starts = torch.cat((shapes.new_zeros((1,)), shapes.prod(1).cumsum(0)[:-1]))
            attn(query, ref, memory, shapes, starts, mask).sum().backward()
        torch.cuda.synchronize()
        self.assertTrue(torch.isfinite(memory.grad).all())

    @NEEDS_CUDA
    def test_cuda_encoder_decoder_have_no_sync(self):
        step = model_like_stack("cuda")
        step()  # first call outside: lazy CUDA initialisation (cuBLAS handles) may sync
        with no_sync_allowed():
            hs = step()
        torch.cuda.synchronize()
        self.assertTrue(torch.isfinite(hs).all())


class TestDeterministicAlgorithms(unittest.TestCase):
    @NEEDS_CPP
    def test_cpu_forward_backward_are_bitwise_repeatable(self):
        # The CPU backward gives each (batch, head) slice of grad_value to one thread, or, with
        # fewer slices than threads, sums per-chunk buffers in a fixed order: deterministic.
        threads = torch.get_num_threads()
        cases = {
            "slices": (dict(batch=2, queries=400, heads=8), threads),
            "chunks": (dict(batch=1, queries=1024, heads=1), 4),
        }
        for name, (kwargs, num_threads) in cases.items():
            inputs = make_inputs(DETA_LEVELS, channels=32, points=4, **kwargs)
            grad_output = torch.randn(kwargs["batch"], kwargs["queries"], 32 * kwargs["heads"])
            grad_output = grad_output.double()
            torch.set_num_threads(num_threads)
            try:
                with self.subTest(name), deterministic(), warnings.catch_warnings():
                    warnings.simplefilter("error")  # nothing may fall back to a warning
                    first = run_with_grads("cpp", inputs, grad_output)
                    second = run_with_grads("cpp", inputs, grad_output)
                    for a, b in zip([first[0]] + first[1], [second[0]] + second[1]):
                        self.assertTrue(torch.equal(a, b))
                    self.assertGreater(first[1][0].abs().sum().item(), 0)
            finally:
                torch.set_num_threads(threads)

    @NEEDS_CUDA
    def test_cuda_backward_alerts_in_deterministic_mode(self):
        inputs = [t.cuda() for t in make_inputs(DETA_LEVELS, queries=50, heads=8, channels=32)]
        grad_output = torch.randn(2, 50, 256, dtype=torch.float64, device="cuda")
        with deterministic():
            # The forward is deterministic (one thread per output element, fixed order).
            first, _ = run_with_grads("cuda", inputs)
            second, _ = run_with_grads("cuda", inputs)
            self.assertTrue(torch.equal(first, second))
            with self.assertRaisesRegex(RuntimeError, "ms_deform_attn_backward_cuda"):
                run_with_grads("cuda", inputs, grad_output)
        with deterministic(warn_only=True), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            _, grads = run_with_grads("cuda", inputs, grad_output)
        self.assertTrue(any("ms_deform_attn_backward_cuda" in str(w.message) for w in caught))
        self.assertTrue(torch.isfinite(grads[0]).all())
