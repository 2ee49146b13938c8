"""The ONNX Runtime peer (``inference --peer onnxruntime``): our model exported to ONNX
(``deta.export``), run by ONNX Runtime's CPU execution provider on the same image, batch 1.

The exported graph includes the post-processing (top-k, class-wise NMS), so it is compared with
our end-to-end time (``model(batched_inputs)``), not with the forward alone. ``--onnx-model``
reuses an exported file; otherwise the worker exports the measured model first (minutes for
DETA R-50) and reports how long that took.
"""

import os
import tempfile
import time

from tools.benchmarking.harness import load_average, measure, start_result
from tools.benchmarking.models import synthetic_image, worker_model


def peer_ort_worker(spec: dict) -> dict:
    import onnxruntime as ort

    from deta.export.exporter import export_onnx, export_program

    device, cfg, model, _ = worker_model(spec)
    if device.type != "cpu" or spec["batch_size"] != 1 or spec["dtype"] != "fp32":
        raise ValueError("--peer onnxruntime measures CPU, batch 1, fp32 only")
    h, w = spec["image_size"]
    image = synthetic_image(h, w, spec["seed"]).float()
    result = start_result(f"onnxruntime {ort.__version__} (CPU EP, end to end)", model)
    path = spec.get("onnx_model")
    if not path:
        path = os.path.join(tempfile.mkdtemp(prefix="deta_bench_"), "model.onnx")
        start = time.perf_counter()
        export_onnx(export_program(model, image), path)
        result["export_s"] = time.perf_counter() - start
    options = ort.SessionOptions()
    options.intra_op_num_threads = spec["threads"]
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    feed = {"image": image.numpy()}

    def run():
        return session.run(None, feed)

    result["memory_method"], result["forward"] = measure(run, spec, device)
    result["detections"] = len(run()[1])
    result["onnx_model"] = path
    result["loadavg_end"] = load_average()
    return result
