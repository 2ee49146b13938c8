"""Benchmarks of DETA: inference speed (the official FPS method), training speed, the
deformable-attention op, IoU assignment against Hungarian matching, and a per-stage breakdown.

Modes (subcommands):

- ``inference``: one image repeated to the batch size, warm-up, then the mean time of
  ``model.forward_features`` on the normalised tensor (no pre/post-processing) and FPS; also the
  end-to-end ``model(batched_inputs)`` on uint8 images (normalisation, padding, NMS post-process),
  latency percentiles and peak memory. Every configuration runs in a fresh subprocess so its peak
  memory is its own. ``--peer hf`` times Hugging Face ``DetaForObjectDetection`` (same config,
  random init) on the same input in the same run; ``--peer official --official-src PATH`` times
  the official DETA code of a source checkout (its pure-PyTorch deformable attention) with the
  same weights as ours (its random init, converted); ``--check`` compares our outputs with the
  unoptimised path (grid_sample reference op, autograd on: no oneDNN fast path) and, with
  ``--peer official``, with the official outputs.
- ``train``: iterations/s and peak memory of forward + backward + optimizer step on synthetic
  images with random boxes; ``--peer hf`` trains Hugging Face ``DetaForObjectDetection`` (same
  config, same batch and labels, our optimizer groups and clipping) in the same run;
  ``--ab KEY A B`` trains the config with two values of one key side by side in one process,
  steps alternating, and prints the speed-up of B.
- ``op``: the deformable-attention kernels against the PyTorch reference (runs
  ``tools/benchmark_ms_deform_attn.py``).
- ``assign``: Stage1Assigner / Stage2Assigner against HungarianMatcher per image.
- ``breakdown``: time per model stage from the ``record_function`` scopes of the model, and the
  most expensive ops, under ``torch.profiler``.
- ``roofline``: per stage of one CPU inference (batch 1), its FLOPs (fvcore, charged to the same
  scopes, in real FLOPs: 2 per multiply-add), measured time, GFLOP/s and fraction of the
  machine's measured GEMM peak, and the stages sorted by their gap to the time at that peak.
- ``ap``: COCO AP of a trained model (default: the ``tools/run_demo.py`` model on the synthetic
  val set) in fp32 and under bf16/fp16 autocast.

Every mode prints a table, optionally writes ``--json``, and records the machine (CPU model,
cores), threads, torch, the ``deta._C`` build and the load average (``os.getloadavg``) before and
after each measurement: on a shared machine the load says how far to trust the numbers.
``--probe-machine`` adds the measured fp32/bf16 GEMM GFLOP/s and copy GB/s (``machine``).

Examples::

    python tools/benchmark.py inference --batch-sizes 1 4 --peer hf --check --json out.json
    python tools/benchmark.py inference --dtype bf16 --batch-sizes 1
    python tools/benchmark.py inference --skip-e2e --image-sizes 512x683 800x1201 \\
        --num-queries 300 900 --batch-sizes 1
    python tools/benchmark.py breakdown --iters 2
    python tools/benchmark.py roofline --iters 2 --dtype bf16
    python tools/benchmark.py train --image-size 512x683 --batch-sizes 2 --peer hf
    python tools/benchmark.py train --config-file configs/deta_R_18_synthetic_cpu.yaml \
        --image-size 160x213 --batch-sizes 8 --ab MODEL.DETA.BACKBONE_TRAIN_DTYPE float32 bfloat16
    python tools/benchmark.py assign
    python tools/benchmark.py op --iters 5
    python tools/benchmark.py ap --dtype fp32 bf16

Layout: ``cli`` (flags, dispatch), ``harness`` (machine info, timing, memory, worker
subprocesses), ``machine`` (the peak probe), ``models`` (config, model, synthetic inputs),
``tables``, ``peer_hf`` (the Hugging Face peer), ``peer_official`` (the official code), ``parity``
(``--check``), ``ab`` (``train --ab``) and one module per mode. The entry point is
``tools/benchmark.py``; workers run as ``tools/benchmark.py _worker NAME JSON``.
"""
