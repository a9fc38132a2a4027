"""Throughput benchmarks; each subcommand prints one JSON object as its last line.

    python tools/benchmark.py input --data_dir=DIR [--dataset=icbhi] [--batch=128]
    python tools/benchmark.py train-step --method=scl|ce|hybrid|mscl [--batch=32] [--frames=251]
        [--dtype=float32|bfloat16] [--channels=64,128,256,512] [--vs-torch]

`input`: steady-state two-view training samples per second of the tf.data pipeline
(features cached once per run, so an epoch is shuffle + batch min-max + 2 x SpecAugment +
standardisation). The first epoch (tracing, warm-up) is not timed.

`train-step`: two-view samples per second of the jitted train step of configs/<method>.py on
random inputs, after compilation, synchronised (the step's outputs are fetched), median of
rounds. `--vs-torch` times tools/torch_reference.py's PyTorch step (CNN6 + projector, two
views in two encoder calls, SupCon, Adam) in the same process on the same device, alternating
rounds with the JAX step, and prints jax/torch.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if importlib.util.find_spec("resp_jax") is None:  # a checkout that is not pip-installed
    sys.path.insert(0, str(REPO))


def base_config(dataset: str):
    """configs/base.py's defaults for ``dataset`` (the single source of every field)."""
    spec = importlib.util.spec_from_file_location("resp_jax_base_config",
                                                  REPO / "configs" / "base.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(dataset)


def run_input(args) -> dict:
    from resp_jax.data import pipeline, prepare

    config = base_config(args.dataset)
    config.data.duration = args.duration
    config.train.batch_size = args.batch

    t = time.perf_counter()
    prepared = prepare.load(args.dataset, args.data_dir, data_dir=args.tfds_dir or None)
    prepare_s = time.perf_counter() - t
    t = time.perf_counter()
    feats = pipeline.Features(prepared, config)
    features_s = time.perf_counter() - t
    del prepared

    rates = []
    for epoch in range(args.epochs + 1):
        t = time.perf_counter()
        samples = 0
        for batch in pipeline.train_batches(feats, config, epoch=epoch, fields=("label",),
                                            global_batch=args.batch):
            samples += int(batch["mask"].sum())
        if epoch:  # epoch 0 warms up
            rates.append(samples / (time.perf_counter() - t))
    return {
        "benchmark": "input", "dataset": args.dataset, "batch": args.batch,
        "duration_s": args.duration, "frames": feats.frames,
        "train_cycles": len(feats["train"]), "epochs_timed": args.epochs,
        "prepare_s": round(prepare_s, 2), "features_s": round(features_s, 2),
        "samples_per_s": round(sorted(rates)[len(rates) // 2], 1),
        "samples_per_s_each_epoch": [round(r, 1) for r in rates],
    }


def config_for(method: str):
    spec = importlib.util.spec_from_file_location(f"resp_jax_config_{method}",
                                                  REPO / "configs" / f"{method}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def _timed(fn, sync, steps: int) -> float:
    t = time.perf_counter()
    out = None
    for _ in range(steps):
        out = fn()
    sync(out)
    return time.perf_counter() - t


def run_train_step(args) -> dict:
    import jax
    import numpy as np

    from resp_jax import defaults, optim, parallel, train
    from resp_jax.data import metadata

    config = config_for(args.method)
    config.train.batch_size = args.batch
    config.model.channels = tuple(int(c) for c in args.channels.split(","))
    config.model.dtype = args.dtype
    config = defaults.resolve(config)
    mesh = parallel.make_mesh()
    parallel.check_batch_size(args.batch, mesh)
    model = train.build_model(config, num_classes=4)
    tx = optim.make_optimizer(config, steps_per_epoch=100)
    state = train.create_train_state(config, model, tx, args.frames, mesh, pretrained=None)
    step = train.make_train_step(model, tx, config, np.full(4, 0.25, np.float32), mesh)

    rng = np.random.default_rng(0)
    host = {"view1": rng.standard_normal((args.batch, 64, args.frames), np.float32),
            "view2": rng.standard_normal((args.batch, 64, args.frames), np.float32),
            "mask": np.ones(args.batch, np.float32)}
    for field in defaults.fields(config):
        host[field] = rng.integers(0, metadata.num_values("icbhi", field), args.batch)
    batch = parallel.to_global(host, mesh)

    holder = {"state": state}

    def jax_step():
        holder["state"], metrics = step(holder["state"], batch)
        return metrics["loss"]

    def jax_sync(loss):
        jax.block_until_ready(loss)

    runners = {"jax": (jax_step, jax_sync)}
    if args.vs_torch:
        sys.path.insert(0, str(REPO / "tools"))
        import torch
        import torch_reference

        tdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
        device = "cuda" if torch.cuda.is_available() else "cpu"
        ref = torch_reference.SupConStep(args.batch, args.frames, config.model.channels,
                                         device=device, dtype=tdtype)
        runners["torch"] = (ref, ref.sync)
    for fn, sync in runners.values():  # compile / warm up
        _timed(fn, sync, 2)
    times = {k: [] for k in runners}
    for _ in range(args.rounds):  # alternate so both see the same machine load
        for k, (fn, sync) in runners.items():
            times[k].append(_timed(fn, sync, args.steps) / args.steps)
    median = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    out = {"benchmark": "train-step", "method": args.method, "batch": args.batch,
           "frames": args.frames, "dtype": args.dtype, "channels": list(config.model.channels),
           "device": str(jax.devices()[0].platform), "devices": len(jax.devices()),
           "samples_per_s": round(args.batch / median["jax"], 2),
           "step_ms": round(1000 * median["jax"], 1)}
    if "torch" in median:
        out["torch_samples_per_s"] = round(args.batch / median["torch"], 2)
        out["jax_over_torch"] = round(median["torch"] / median["jax"], 3)
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("input", help="tf.data input pipeline throughput")
    p.add_argument("--data_dir", required=True, help="dataset root (distributed files)")
    p.add_argument("--dataset", default="icbhi", choices=("icbhi", "sprsound"))
    p.add_argument("--batch", type=int, default=128, help="global batch")
    p.add_argument("--duration", type=float, default=8.0, help="seconds per example")
    p.add_argument("--epochs", type=int, default=3, help="timed epochs after the warm-up")
    p.add_argument("--tfds_dir", default="", help="prepared-data cache (default: prepare's)")
    p.set_defaults(run=run_input)
    p = sub.add_parser("train-step", help="jitted train step throughput (optionally vs PyTorch)")
    p.add_argument("--method", default="scl", choices=("scl", "ce", "hybrid", "mscl", "simclr"))
    p.add_argument("--batch", type=int, default=32, help="global batch (two views each)")
    p.add_argument("--frames", type=int, default=251, help="log-mel frames (251 = 8 s)")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--channels", default="64,128,256,512", help="CNN6 widths")
    p.add_argument("--steps", type=int, default=3, help="steps per timed round")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds (median reported)")
    p.add_argument("--vs-torch", dest="vs_torch", action="store_true",
                   help="also time tools/torch_reference.py's step and print the ratio")
    p.set_defaults(run=run_train_step)
    args = parser.parse_args(argv)
    print(json.dumps(args.run(args)))


if __name__ == "__main__":
    main()
