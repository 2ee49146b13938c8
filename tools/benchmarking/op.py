"""``op``: the deformable-attention kernels against the PyTorch reference, i.e.
``tools/benchmark_ms_deform_attn.py`` under this tool's machine and load header."""


def mode_op(args) -> dict:
    from tools import benchmark_ms_deform_attn as msda

    options = msda.Options(
        threads=args.threads, warmup=args.warmup, iters=args.iters, no_memory=args.no_memory
    )
    return msda.run_benchmark(options)
