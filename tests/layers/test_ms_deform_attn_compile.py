"""The compiled op is a registered custom op: torch.compile sees it as one node (no graph break,
``fullgraph=True``), forward and backward match eager, and its fake implementation gives the
right output shape for symbolic sizes."""

import unittest

import torch

from deta.layers import MSDeformAttn, has_cpp_ext

from .test_ms_deform_attn import NEEDS_CPP


def inputs(n=2, lq=30):
    shapes = torch.tensor([[12, 16], [6, 8], [3, 4]])
    starts = torch.cat([shapes.new_zeros(1), shapes.prod(1).cumsum(0)[:-1]])
    s = int(shapes.prod(1).sum())
    g = torch.Generator().manual_seed(0)
    query = torch.randn(n, lq, 32, generator=g, requires_grad=True)
    value = torch.randn(n, s, 32, generator=g, requires_grad=True)
    ref = torch.rand(n, lq, 3, 4, generator=g) * 0.5 + 0.25
    return query, ref, value, shapes, starts


@NEEDS_CPP
class TestCompile(unittest.TestCase):
    def setUp(self):
        torch.manual_seed(0)
        self.attn = MSDeformAttn(32, n_levels=3, n_heads=4, n_points=2, impl="cpp").train()
        torch.nn.init.normal_(self.attn.sampling_offsets.weight, std=0.05)

    def run_both(self, backend):
        torch._dynamo.reset()
        compiled = torch.compile(self.attn, backend=backend, fullgraph=True)
        results = []
        for module in (self.attn, compiled):
            query, ref, value, shapes, starts = inputs()
            out = module(query, ref, value, shapes, starts)
            out.square().sum().backward()
            grads = [query.grad] + [p.grad.clone() for p in self.attn.parameters()]
            self.attn.zero_grad()
            results.append((out.detach(), grads))
        return results

    def assert_match(self, results):
        (eager, eager_grads), (comp, comp_grads) = results
        torch.testing.assert_close(comp, eager, rtol=1e-5, atol=1e-5)
        self.assertEqual(len(comp_grads), len(eager_grads))
        for a, b in zip(comp_grads, eager_grads):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)

    def test_forward_and_backward_match_eager_through_aot_autograd(self):
        self.assert_match(self.run_both("aot_eager"))

    def test_forward_and_backward_match_eager_with_inductor(self):
        self.assert_match(self.run_both("inductor"))

    def test_op_is_one_node_in_one_graph(self):
        graphs = []

        def recording_backend(gm, example_inputs):
            graphs.append(gm)
            return gm.forward

        torch._dynamo.reset()
        compiled = torch.compile(self.attn, backend=recording_backend, fullgraph=True)
        query, ref, value, shapes, starts = inputs()
        compiled(query, ref, value, shapes, starts)
        self.assertEqual(len(graphs), 1)
        targets = [str(n.target) for n in graphs[0].graph.nodes if n.op == "call_function"]
        self.assertEqual(sum("deta.ms_deform_attn_forward" in t for t in targets), 1, targets)

    def test_fake_shape(self):
        value = torch.randn(2, 204, 4, 8)
        loc = torch.rand(2, 7, 4, 3, 2, 2)
        with torch._subclasses.fake_tensor.FakeTensorMode() as mode:
            fake = torch.ops.deta.ms_deform_attn_forward(
                mode.from_tensor(value),
                mode.from_tensor(torch.tensor([[12, 16], [6, 8], [3, 4]])),
                mode.from_tensor(torch.tensor([0, 192, 240])),
                mode.from_tensor(loc),
                mode.from_tensor(torch.rand(2, 7, 4, 3, 2)),
                64,
            )
        self.assertEqual(tuple(fake.shape), (2, 7, 32))


if __name__ == "__main__" and has_cpp_ext():
    unittest.main()
