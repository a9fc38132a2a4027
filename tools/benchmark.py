"""Throughput benchmarks; each subcommand prints one JSON object as its last line.

    python tools/benchmark.py input --data_dir=DIR [--dataset=icbhi] [--batch=128]

`input`: steady-state two-view training samples per second of the tf.data pipeline
(features cached once per run, so an epoch is shuffle + batch min-max + 2 x SpecAugment +
standardisation). The first epoch (tracing, warm-up) is not timed.
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
    args = parser.parse_args(argv)
    print(json.dumps(args.run(args)))


if __name__ == "__main__":
    main()
