"""Images: training throughput of the pipeline's input path against `model.fit` on tensors in memory, accuracy,
and the serving latency of one image over REST and gRPC.

    .venv/bin/python benchmarks/images.py [--quick] [--images 20000] [--size 64] [--epochs 5] [--write-docs]

The data is the project's synthetic shapes (`pipeline generate --images shapes`: circles, squares, triangles and
crosses of random place, size and colours with pixel noise) as PNG files, read as the pipeline reads a folder:
`pipeline.ingest` (the files' bytes into the snapshot), the streamed hash split, the preprocessing fitted on the
training split (64x64x3 from the files), and the small CNN (`models.image.build_cnn` with the parameters in
`MODEL_PARAMS`: a light one, as a 2-core CPU trains it in minutes; augmentation on).

- **Ours**: `pipeline.train.train` on the split's Parquet files, as the train task runs it: `tf.data` reads the
  PNG bytes record batch by record batch and decodes and resizes them in the model's own preprocessing layer
  (parallel map) into 8-bit pixels; 14,000 training images of 64x64x3 (165 MB) fit in the default
  `training.in_memory_mb` (256), so they are decoded once and each epoch gathers shuffled batches from them.
- **Ours, streamed**: the same with `training.in_memory_mb: 0`, the path of image sets larger than the cache:
  every epoch reads the Parquet again, decodes, shuffles (blocks of rows), batches and prefetches.
- **Ceiling**: the same body, compiled the same way, `model.fit` on the training images decoded beforehand
  into one float tensor in memory (and the validation images likewise), the same batch size and epochs.

Images/s is the training rows over an epoch's wall time (validation included in both), the median of the
epochs after the first (which traces the functions); the fastest epoch is shown too (on a shared machine other
processes only ever slow an epoch down). Accuracy is each model's on the test split. Serving:
the pipeline's model exported as the export stage exports it, `pipeline serve` (our TF Serving-compatible
server) on free ports, one image per request, sequentially: REST with the PNG as `{"b64": ...}` and gRPC with a
DT_STRING tensor, median and p99 of the wall time of the call; every answer compared with the SavedModel's.

Floors: images/s of ours >= 0.8x the ceiling; the served answers equal the SavedModel's (REST and gRPC,
within 1e-5). `--quick` runs 2,000 images and 3 epochs. The last line is `floors met: K/N`; the exit status is
non-zero unless all are met.
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
LABEL = "shape"
MODEL_PARAMS = {"filters": [16, 32, 64], "convs_per_block": 1, "dense_units": 64, "dropout": 0.2,
                "flip": "horizontal", "rotation": 0.05, "zoom": 0.1, "contrast": 0.1}
THROUGHPUT_FLOOR = 0.8
BEGIN, END = "<!-- images-benchmark:begin -->", "<!-- images-benchmark:end -->"

from common import free_port, stop_group, write_section  # noqa: E402


def epoch_timer():
    """A Keras callback keeping each epoch's wall time in ``times``."""
    import keras

    class EpochTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.times: list[float] = []

        def on_epoch_begin(self, epoch, logs=None):
            self._t = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.times.append(time.perf_counter() - self._t)

    return EpochTimer()


def _median(values: list[float]) -> float:
    values = sorted(values)
    return values[len(values) // 2] if len(values) % 2 else (values[len(values) // 2 - 1] + values[len(values) // 2]) / 2


def prepare(work: Path, n: int, size: int) -> dict:
    """Files -> snapshot -> split -> fitted preprocessing, through the pipeline's own stage functions."""
    import pandas as pd

    from pipeline.config import FeaturesConfig, SplitConfig
    from pipeline.datasets import iter_frames
    from pipeline.features import resolve_features
    from pipeline.images.generate import write_shapes
    from pipeline.ingest import ingest
    from pipeline.preprocess import fit_preprocessing_parquet
    from pipeline.split import split_parquet

    t = time.perf_counter()
    root = write_shapes(work / "files", n, size, seed=0)
    generated = time.perf_counter() - t
    t = time.perf_counter()
    snap = ingest(str(root), work / "data", label=LABEL)
    ingested = time.perf_counter() - t
    spec = resolve_features(next(iter_frames(snap.path, batch_rows=2000)), LABEL, "classification")
    split = split_parquet(snap.path, work / "split", LABEL, SplitConfig(), "classification")
    meta = fit_preprocessing_parquet(split.paths["train"], spec, FeaturesConfig())
    return {"meta": meta, "paths": split.paths, "rows": split.rows, "generate_s": generated, "ingest_s": ingested,
            "snapshot_mb": Path(snap.path).stat().st_size / 2**20, "test": pd.read_parquet(split.paths["test"])}


def _accuracy(model, meta, frame) -> float:
    from pipeline.export import predict_keras
    from pipeline.preprocess import label_array

    y = label_array(frame, meta)
    return float((predict_keras(model, frame, meta).argmax(axis=1) == y).mean())


def _timing(times: list[float], rows: int) -> dict:
    after = times[1:] or times
    return {"epoch_s": _median(after), "fastest_epoch_s": min(after), "epochs": times,
            "images_per_s": rows / _median(after), "fastest_images_per_s": rows / min(after)}


def train_ours(data: dict, epochs: int, work: Path, in_memory_mb: int | None = None) -> dict:
    from pipeline.config import ModelConfig, TrainingConfig
    from pipeline.preprocess import processed_row_bytes
    from pipeline.train import load_model, train

    meta = data["meta"]
    timer = epoch_timer()
    cfg = TrainingConfig(epochs=epochs, early_stopping_patience=epochs)
    if in_memory_mb is not None:
        import dataclasses

        cfg = dataclasses.replace(cfg, in_memory_mb=in_memory_mb)
    result = train(data["paths"]["train"], data["paths"]["val"], meta, ModelConfig(builder="cnn", params=MODEL_PARAMS),
                   cfg, work / f"ours_{in_memory_mb}", seed=0, callbacks=[timer])
    model = load_model(result.model_path, meta)
    cached = processed_row_bytes(meta) * data["rows"]["train"] <= cfg.in_memory_mb << 20
    return {**_timing(timer.times, data["rows"]["train"]), "batch": result.batch_size, "cached": cached,
            "accuracy": _accuracy(model, meta, data["test"]), "model": model}


def train_ceiling(data: dict, epochs: int) -> dict:
    import keras
    import pandas as pd
    import tensorflow as tf

    from pipeline.config import ModelConfig, TrainingConfig
    from pipeline.preprocess import build_preprocessor, full_model, label_array, raw_dataset
    from pipeline.train import compiled_body, plan

    meta = data["meta"]
    pre = build_preprocessor(meta)

    def tensors(path):
        frame = pd.read_parquet(path)
        x = tf.concat([pre(b)["image__image"] for b in raw_dataset(frame, meta.feature_spec, 1024)], axis=0)
        return x, tf.constant(label_array(frame, meta))

    t = time.perf_counter()
    x, y = tensors(data["paths"]["train"])
    xv, yv = tensors(data["paths"]["val"])
    decode_s = time.perf_counter() - t
    cfg = TrainingConfig(epochs=epochs, early_stopping_patience=epochs)
    sizes = plan(int(x.shape[0]), cfg)
    keras.utils.set_random_seed(0)
    body = compiled_body(meta, ModelConfig(builder="cnn", params=MODEL_PARAMS), cfg, sizes)
    timer = epoch_timer()
    body.fit({"image__image": x}, y, batch_size=sizes.batch_size, epochs=epochs, shuffle=True,
             validation_data=({"image__image": xv}, yv), validation_batch_size=1024, callbacks=[timer], verbose=2)
    accuracy = _accuracy(full_model(meta, body), meta, data["test"])
    return {**_timing(timer.times, int(x.shape[0])), "batch": sizes.batch_size, "accuracy": accuracy,
            "decode_s": decode_s, "tensor_mb": x.numpy().nbytes / 2**20}


def serve_latency(model, data: dict, work: Path, requests_n: int) -> dict:
    """Export as the export stage does, serve with `pipeline serve`, time single-image REST and gRPC calls."""
    import grpc
    import numpy as np
    import requests
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    from pipeline.export import write_candidate

    meta, test = data["meta"], data["test"]
    tmp, diff = write_candidate(model, meta, test.head(64), work / "staging", {"benchmark": "images"})
    base = work / "serving" / "shapes"
    base.mkdir(parents=True)
    shutil.move(str(tmp), base / "1")
    fn = tf.saved_model.load(str(base / "1")).signatures["serving_default"]
    images = [bytes(b) for b in test["image"].head(requests_n)]
    direct = fn(image=tf.constant(images))["probabilities"].numpy()
    rest_port, grpc_port = free_port(), free_port()
    log = open(work / "server.log", "w")
    env = {**os.environ, "PIPELINE_HOME": str(work / "home"), "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.serving", "--host", "127.0.0.1", "--port", str(grpc_port),
                             "--rest_api_port", str(rest_port), "--model_name", "shapes", "--model_base_path",
                             str(base)], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        session = requests.Session()
        url = f"http://127.0.0.1:{rest_port}/v1/models/shapes"
        deadline = time.monotonic() + 180
        while True:
            try:
                if session.get(url, timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start: {(work / 'server.log').read_text()[-2000:]}")
            time.sleep(0.2)
        stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(f"127.0.0.1:{grpc_port}"))
        rest_ms, grpc_ms, rest_out, grpc_out = [], [], [], []
        for i, image in enumerate(images):
            body = json.dumps({"instances": [{"image": {"b64": base64.b64encode(image).decode()}}]})
            t = time.perf_counter()
            response = session.post(url + ":predict", data=body, timeout=60)
            rest_ms.append((time.perf_counter() - t) * 1000)
            response.raise_for_status()
            rest_out.append(response.json()["predictions"][0]["probabilities"])
            request = predict_pb2.PredictRequest()
            request.model_spec.name = "shapes"
            request.inputs["image"].CopyFrom(tf.make_tensor_proto([image], tf.string))
            t = time.perf_counter()
            reply = stub.Predict(request, timeout=60)
            grpc_ms.append((time.perf_counter() - t) * 1000)
            grpc_out.append(tf.make_ndarray(reply.outputs["probabilities"])[0])
    finally:
        stop_group(proc)
        log.close()

    def pct(values, q):
        return float(np.percentile(np.array(values[5:] or values), q))  # the first calls warm the server up

    return {"requests": len(images), "rest_p50_ms": pct(rest_ms, 50), "rest_p99_ms": pct(rest_ms, 99),
            "grpc_p50_ms": pct(grpc_ms, 50), "grpc_p99_ms": pct(grpc_ms, 99),
            "rest_max_diff": float(np.abs(np.array(rest_out) - direct).max()),
            "grpc_max_diff": float(np.abs(np.array(grpc_out) - direct).max()), "export_diff": diff,
            "png_bytes_median": float(np.median([len(b) for b in images]))}


def floors(res: dict) -> list[tuple[str, bool, str]]:
    ratio = res["ours"]["images_per_s"] / res["ceiling"]["images_per_s"]
    s = res["serving"]
    return [
        ("training images/s >= 0.8x model.fit on tensors in memory", ratio >= THROUGHPUT_FLOOR,
         f"{res['ours']['images_per_s']:.0f} vs {res['ceiling']['images_per_s']:.0f} images/s: {ratio:.2f}x"),
        ("served answers equal the SavedModel's (REST, gRPC)", max(s["rest_max_diff"], s["grpc_max_diff"]) <= 1e-5,
         f"max |diff| REST {s['rest_max_diff']:.2g}, gRPC {s['grpc_max_diff']:.2g}"),
    ]


def report(res: dict, judged: list, command: str) -> str:
    o, c, s, d, st = res["ours"], res["ceiling"], res["serving"], res["data"], res["streamed"]
    lines = [BEGIN, "## Images (`benchmarks/images.py`)", "",
             f"`{command}` on {res['machine']}, {res['date']}: {d['images']:,} synthetic {d['size']}x{d['size']} "
             f"RGB shapes (4 classes), split {d['rows']['train']:,}/{d['rows']['val']:,}/{d['rows']['test']:,}; "
             f"snapshot {d['snapshot_mb']:.0f} MB of PNG bytes (ingest {d['ingest_s']:.1f} s). "
             f"CNN `{json.dumps(MODEL_PARAMS)}`, {res['epochs']} epochs, batch {o['batch']}.", "",
             "| | images/s (median epoch) | images/s (fastest) | epoch (s) | test accuracy |",
             "|---|---:|---:|---:|---:|",
             f"| pipeline (defaults): `tf.data` over the Parquet split, PNG bytes decoded "
             f"{'once into the in-memory cache' if o['cached'] else 'every epoch'} | {o['images_per_s']:.0f} | "
             f"{o['fastest_images_per_s']:.0f} | {o['epoch_s']:.1f} | {o['accuracy']:.4f} |",
             f"| pipeline, `in_memory_mb: 0`: decoded every epoch (image sets over the cache) | "
             f"{st['images_per_s']:.0f} | {st['fastest_images_per_s']:.0f} | {st['epoch_s']:.1f} | "
             f"{st['accuracy']:.4f} |",
             f"| ceiling: `model.fit` on decoded tensors in memory ({c['tensor_mb']:.0f} MB) | "
             f"{c['images_per_s']:.0f} | {c['fastest_images_per_s']:.0f} | {c['epoch_s']:.1f} | {c['accuracy']:.4f} |",
             f"| ratio, defaults / ceiling | **{o['images_per_s'] / c['images_per_s']:.2f}x** | "
             f"{o['fastest_images_per_s'] / c['fastest_images_per_s']:.2f}x | | |",
             f"| ratio, streamed / ceiling | {st['images_per_s'] / c['images_per_s']:.2f}x | "
             f"{st['fastest_images_per_s'] / c['fastest_images_per_s']:.2f}x | | |", "",
             f"Serving one image per request ({s['requests']} requests, PNG of {s['png_bytes_median']:.0f} bytes), "
             "`pipeline serve`:", "",
             "| API | p50 (ms) | p99 (ms) | max \\|diff\\| vs SavedModel |", "|---|---:|---:|---:|",
             f"| REST (`{{\"b64\": ...}}`) | {s['rest_p50_ms']:.2f} | {s['rest_p99_ms']:.2f} | {s['rest_max_diff']:.2g} |",
             f"| gRPC (DT_STRING) | {s['grpc_p50_ms']:.2f} | {s['grpc_p99_ms']:.2f} | {s['grpc_max_diff']:.2g} |", "",
             "Floors:", ""]
    lines += [f"- {'met' if ok else '**not met**'}: {name} ({why})" for name, ok, why in judged]
    lines += ["", END]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2,000 images, 3 epochs")
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--write-docs", action="store_true")
    parser.add_argument("--work", help="working folder (default: a temporary one, removed)")
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.epochs, args.requests = 2000, 3, 50
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="images-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        data = prepare(work, args.images, args.size)
        ours = train_ours(data, args.epochs, work)
        model = ours.pop("model")
        streamed = train_ours(data, args.epochs, work, in_memory_mb=0)
        streamed.pop("model")
        serving = serve_latency(model, data, work, args.requests)
        ceiling = train_ceiling(data, args.epochs)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    res = {"data": {"images": args.images, "size": args.size, "rows": data["rows"], "ingest_s": data["ingest_s"],
                    "snapshot_mb": data["snapshot_mb"]},
           "epochs": args.epochs, "ours": ours, "streamed": streamed, "ceiling": ceiling, "serving": serving,
           "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, no GPU", "date": time.strftime("%Y-%m-%d")}
    judged = floors(res)
    command = "python benchmarks/images.py" + (" --quick" if args.quick else "")
    section = report(res, judged, command)
    print(section)
    if args.write_docs:
        write_section(section, BEGIN, END)
    unmet = [name for name, ok, _ in judged if not ok]
    print(f"floors met: {len(judged) - len(unmet)}/{len(judged)}" + (f" (unmet: {'; '.join(unmet)})" if unmet else ""))
    return 0 if not unmet else 1


if __name__ == "__main__":
    sys.exit(main())
