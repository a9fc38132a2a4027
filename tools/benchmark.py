"""Throughput benchmarks; each subcommand prints one JSON object as its last line.

    python tools/benchmark.py input --data_dir=DIR [--dataset=icbhi] [--batch=128]
    python tools/benchmark.py train-step --method=scl|ce|hybrid|mscl|simclr [--batch=32]
        [--frames=251] [--dtype=float32|bfloat16] [--channels=64,128,256,512] [--vs-torch]
    python tools/benchmark.py train-step --model=ast --ast-size=tiny|small|base [--method=ce]
        [--batch=8] [--frames=798] [--remat=auto] [--vs-torch]     # tools/ast_benchmark.py
    python tools/benchmark.py train-step --model=beats --beats-size=tiny|small|base
        [--method=ce|pafa] [--batch=32] [--frames=498] [--vs-torch --reference=DIR]
                                                    # tools/beats_benchmark.py
    python tools/benchmark.py train-step --model=htsat [--htsat-size=tiny|base] --method=ce
        [--batch=8] [--vs-torch]                    # tools/htsat_benchmark.py
    python tools/benchmark.py loop --method=scl --data_dir=DIR [--batch=128] [--epochs=3]
    python tools/benchmark.py conv-layers [--batch=32] [--frames=251] [--vs-torch]
    python tools/benchmark.py predict [--model=cnn6|ast|beats|all] [--seconds=30]
        [--reference=DIR]                           # tools/predict_benchmark.py

`input`: steady-state two-view training samples per second of the tf.data pipeline
(features cached once per run, so an epoch is shuffle + batch min-max + 2 x SpecAugment +
standardisation). The first epoch (tracing, warm-up) is not timed.

`train-step`: two-view samples per second of the jitted train step of configs/<method>.py on
random inputs, after compilation, synchronised (the step's outputs are fetched), median of
rounds. Also: the step's FLOPs (XLA's cost analysis, which counts fewer than the analytic
convolution FLOPs), the rate they are done at as a fraction of a large matmul's rate measured
on the same device in the same dtype, and the projected wall time of the full ICBHI protocol
(400 epochs of the official training split at this batch size, plus the evaluation forward
passes: the test split every epoch for one-stage methods; for the linear stage the training
split every linear epoch (the reference recomputes its features) and the test split once).
`--vs-torch` (SupCon only) times tools/torch_reference.py's
PyTorch step (CNN6 + projector, two views in two encoder calls, SupCon, Adam) in the same
process on the same device, alternating rounds with the JAX step, and prints jax/torch.

`--profile=DIR` also writes a jax.profiler trace of three steps (Perfetto / TensorBoard).

`conv-layers`: each CNN6 block's 5x5 convolution alone (one view's batch): forward, input
gradient and weight gradient, best of rounds, with GFLOP/s; `--vs-torch` adds PyTorch's.
This is where XLA:CPU's choice of convolution backend shows (resp_jax/xla_setup.py;
`RESP_JAX_XLA_CPU_TUNING=0` gives XLA's default for comparison).

`predict`: `resp_jax.predict` on a recording with full-size CNN6, AST and BEATs (random
weights): wall time, per-window latency and the forward pass against the PyTorch reference
forward of the same model, in the same process (tools/predict_benchmark.py).

Every subcommand gives XLA:CPU and PyTorch the same number of threads (`--threads`, default
every usable core), records the load average and each side's thread count and CPU use, and
marks its figures not comparable when the load exceeded the cores (tools/bench_conditions.py);
ratios are medians of per-round ratios, with their spread.

`loop`: the real training loop (`train.train_and_evaluate`: input pipeline, host-side loop,
step) for `--epochs` + 1 epochs on a dataset; reports the samples/s and the share of each
epoch's wall time the loop waited for its input (what the run writes to TensorBoard), median
over the epochs after the first (which compiles).
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if importlib.util.find_spec("resp_jax") is None:  # a checkout that is not pip-installed
    sys.path.insert(0, str(REPO))

sys.path.insert(0, str(REPO / "tools"))  # the per-model benchmarks beside this file

import bench_conditions  # noqa: E402
import resp_jax  # noqa: E402,F401  (sets XLA's CPU flags before JAX starts a backend)
from resp_jax.data import sources  # noqa: E402


def config_for(name: str, arg: str | None = None):
    """configs/<name>.py's get_config(arg), loaded by path as --config does."""
    spec = importlib.util.spec_from_file_location(f"resp_jax_config_{name}",
                                                  REPO / "configs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def run_input(args) -> dict:
    from resp_jax.data import feature_store, pipeline, prepare

    config = config_for("base", args.dataset)
    config.data.duration = args.duration
    config.train.batch_size = args.batch

    t = time.perf_counter()
    prepared = prepare.load(args.dataset, args.data_dir, data_dir=args.tfds_dir or None)
    prepare_s = time.perf_counter() - t
    t = time.perf_counter()
    feats = feature_store.Features(prepared, config)
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
        "samples_per_s": round(statistics.median_high(rates), 1),
        "samples_per_s_each_epoch": [round(r, 1) for r in rates],
    }


def _sig(x: float, digits: int = 4) -> float:
    """``x`` rounded to ``digits`` significant digits (rates span many orders of magnitude)."""
    return float(f"{x:.{digits}g}")


def _timed(fn, sync, steps: int) -> float:
    t = time.perf_counter()
    out = None
    for _ in range(steps):
        out = fn()
    sync(out)
    return time.perf_counter() - t


def round_seconds(runners: dict, rounds: int, steps: int, sampler=None) -> dict:
    """Seconds per call of each ``name: (fn, sync)`` in each of ``rounds`` alternating rounds
    of ``steps`` calls, so that every runner sees about the same machine; with a
    `bench_conditions.Sampler`, each runner's CPU use is recorded too."""
    times = {k: [] for k in runners}
    for _ in range(rounds):
        for k, (fn, sync) in runners.items():
            seconds = sampler.side(k, _timed, fn, sync, steps)[0] if sampler is not None \
                else _timed(fn, sync, steps)
            times[k].append(seconds / steps)
    return times


def step_setup(config, shape: tuple, class_weights=None) -> tuple:
    """(mesh, model, state, jitted train step, jitted eval step) of a resolved ``config``
    from scratch, for inputs [batch, *shape], 4 classes; the train step donates its state."""
    from resp_jax import optim, parallel, steps
    from resp_jax.models import build_model
    from resp_jax.train_state import create_train_state

    mesh = parallel.make_mesh()
    parallel.check_batch_size(config.train.batch_size, mesh)
    model = build_model(config, num_classes=4)
    tx = optim.make_optimizer(config, steps_per_epoch=100)
    state = create_train_state(config, model, tx, shape, mesh, pretrained=None)
    step = steps.make_train_step(model, tx, config, class_weights, mesh,
                                 optim.schedule(config, 100))
    return mesh, model, state, step, steps.make_eval_step(model, None, mesh)


def random_batches(config, mesh, batch: int, shape: tuple) -> tuple:
    """(train batch, eval batch, host arrays) of random inputs [batch, *shape]: two views, and
    every field the resolved ``config``'s method reads, drawn in ICBHI's value ranges."""
    import numpy as np

    from resp_jax import configuration, parallel
    from resp_jax.data import metadata

    rng = np.random.default_rng(0)
    host = {"view1": rng.standard_normal((batch,) + tuple(shape), np.float32),
            "view2": rng.standard_normal((batch,) + tuple(shape), np.float32),
            "mask": np.ones(batch, np.float32)}
    for field in configuration.fields(config):
        host[field] = rng.integers(0, metadata.num_values("icbhi", field), batch)
    eval_batch = {"x": host["view1"], "label": host["label"], "mask": host["mask"]}
    return parallel.to_global(host, mesh), parallel.to_global(eval_batch, mesh), host


def time_steps(step, state, batch, others: dict, args, warmup: int = 1) -> dict:
    """Per-round seconds per call (`round_seconds`) of the train ``step`` as 'jax', fed its
    own output state, and of ``others`` ({name: (fn, sync)}), after ``warmup`` calls of each;
    with ``args.profile`` a jax.profiler trace of three steps is written there first."""
    import jax

    holder = {"state": state}

    def jax_step():
        holder["state"], m = step(holder["state"], batch)
        return m["loss"]

    runners = {"jax": (jax_step, jax.block_until_ready), **others}
    for fn, sync in runners.values():  # compile / warm up
        _timed(fn, sync, warmup)
    if getattr(args, "profile", ""):  # for Perfetto or TensorBoard's profiler
        with jax.profiler.trace(args.profile, create_perfetto_trace=True):
            _timed(jax_step, jax.block_until_ready, 3)
    return round_seconds(runners, args.rounds, args.steps, getattr(args, "sampler", None))


def speed(times: dict, batch: int, reference: str = "torch") -> tuple[dict, dict]:
    """(median seconds per call of each runner, the JSON's speed fields) from `time_steps`'
    per-round times: samples/s and step time of 'jax', the forward pass's time, and with a
    ``reference`` runner its samples/s and ``jax_over_torch``, the median of the per-round
    ratios, with their spread (`bench_conditions.round_ratios`)."""
    median = {k: statistics.median(v) for k, v in times.items()}
    out = {"samples_per_s": _sig(batch / median["jax"]),
           "step_ms": _sig(1000 * median["jax"]),
           **({"forward_ms": _sig(1000 * median["forward"])} if "forward" in median else {})}
    if reference in times:
        spread = bench_conditions.round_ratios(times[reference], times["jax"])
        out.update({"torch_samples_per_s": _sig(batch / median[reference]),
                    "jax_over_torch": spread.pop("median"), "jax_over_torch_rounds": spread})
    return median, out


ICBHI_TRAIN, ICBHI_TEST, ICBHI_EPOCHS = 4142, 2756, 400  # docs/method.md §1.1, §5
LINEAR_EPOCHS = 100  # linear_eval.epochs


def matmul_rate(dtype: str, n: int) -> float:
    """FLOP/s of an n x n matmul on the default device (median of 5, synchronised)."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (n, n), jnp.dtype(dtype))
    f = jax.jit(lambda a: a @ a)
    f(a).block_until_ready()
    times = [_timed(lambda: f(a), jax.block_until_ready, 3) / 3 for _ in range(5)]
    return 2 * n ** 3 / statistics.median(times)


def icbhi_projection_h(step_s: float, forward_s: float, batch: int, eval_batch: int,
                       two_stage: bool) -> float:
    """Hours of the ICBHI protocol: 400 epochs of steps, plus evaluation forward passes."""
    steps = ICBHI_EPOCHS * -(-ICBHI_TRAIN // batch)
    if two_stage:  # the reference's linear stage: train features every epoch, test once
        forwards = LINEAR_EPOCHS * -(-ICBHI_TRAIN // eval_batch) + -(-ICBHI_TEST // eval_batch)
    else:  # the test split after every epoch
        forwards = ICBHI_EPOCHS * -(-ICBHI_TEST // eval_batch)
    return (steps * step_s + forwards * forward_s) / 3600


TRANSFORMERS = {"ast": ("ast_benchmark", 798), "beats": ("beats_benchmark", 498),
                "htsat": ("htsat_benchmark", None)}  # frames (HTS-AT: its front end's)


def run_train_step(args) -> dict:
    """tools/<model>_benchmark.py's ``run`` (CNN6: tools/cnn6_benchmark.py)."""
    module, frames = TRANSFORMERS.get(args.model, ("cnn6_benchmark", 251))
    args.frames = args.frames or frames
    return importlib.import_module(module).run(sys.modules[__name__], args)


def run_conv_layers(args) -> dict:
    return importlib.import_module("cnn6_benchmark").run_conv_layers(sys.modules[__name__], args)


def run_predict(args) -> dict:
    return importlib.import_module("predict_benchmark").run(sys.modules[__name__], args)


def run_loop(args) -> dict:
    """A short real run in a temporary directory; its per-epoch speed from TensorBoard."""
    import tempfile

    from tensorboard.backend.event_processing import event_accumulator
    from tensorboard.util import tensor_util

    from resp_jax import configuration, train

    config = config_for(args.method)
    config.data.root, config.data.tfds_dir = args.data_dir, args.tfds_dir
    config.data.name = args.dataset
    config.train.batch_size = config.eval.batch_size = args.batch
    config.train.epochs = args.epochs + 1
    config.linear_eval.epochs = 2  # the second one runs compiled
    config.linear_eval.batch_size = args.batch
    config.model.channels = tuple(int(c) for c in args.channels.split(","))
    config.model.dtype = args.dtype
    config.data.duration = args.duration
    stage = "pretrain" if configuration.is_two_stage(config) else "train"
    with tempfile.TemporaryDirectory() as workdir:
        results = train.train_and_evaluate(config, workdir)
        events = event_accumulator.EventAccumulator(
            f"{workdir}/tensorboard", size_guidance={event_accumulator.TENSORS: 0})
        events.Reload()
        speed = {key: [float(tensor_util.make_ndarray(e.tensor_proto))
                       for e in events.Tensors(f"{stage}/speed/{key}")]
                 for key in ("samples_per_s", "input_wait_fraction")}
        linear = [float(tensor_util.make_ndarray(e.tensor_proto))
                  for e in events.Tensors("linear/speed/samples_per_s")] if stage == "pretrain" \
            else []
    steady = {k: statistics.median_high(v[1:]) for k, v in speed.items()}
    return {"benchmark": "loop", "method": args.method, "dataset": args.dataset,
            "batch": args.batch, "dtype": args.dtype, "channels": list(config.model.channels),
            "train_cycles": results["cycles"]["train"], "epochs_timed": args.epochs,
            "samples_per_s": round(steady["samples_per_s"], 2),
            "input_wait_fraction": round(steady["input_wait_fraction"], 4),
            "samples_per_s_each_epoch": [round(v, 2) for v in speed["samples_per_s"]],
            "input_wait_fraction_each_epoch": [round(v, 4)
                                               for v in speed["input_wait_fraction"]],
            # the reference's linear epoch (features recomputed) against a pretraining epoch
            **({"linear_samples_per_s": round(linear[-1], 2),
                "pretrain_epoch_over_linear_epoch": round(linear[-1] / steady["samples_per_s"],
                                                          2)} if linear else {})}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--threads", type=int, default=None,
                        help="threads of XLA:CPU and of PyTorch, the same on both sides "
                             "(default: every usable core)")
    sub.add_parser = functools.partial(sub.add_parser, parents=[common])
    p = sub.add_parser("input", help="tf.data input pipeline throughput")
    p.add_argument("--data_dir", required=True, help="dataset root (distributed files)")
    p.add_argument("--dataset", default="icbhi", choices=sources.NAMES)
    p.add_argument("--batch", type=int, default=128, help="global batch")
    p.add_argument("--duration", type=float, default=8.0, help="seconds per example")
    p.add_argument("--epochs", type=int, default=3, help="timed epochs after the warm-up")
    p.add_argument("--tfds_dir", default="", help="prepared-data cache (default: prepare's)")
    p.set_defaults(run=run_input)
    p = sub.add_parser("train-step", help="jitted train step throughput (optionally vs PyTorch)")
    p.add_argument("--model", default="cnn6", choices=("cnn6", "ast", "beats", "htsat"))
    p.add_argument("--htsat-size", dest="htsat_size", default="base", choices=("tiny", "base"),
                   help="--model=htsat: CLAP's HTS-AT or configs' tiny one")
    for model in ("ast", "beats"):
        p.add_argument(f"--{model}-size", dest=f"{model}_size", default="base",
                       choices=("tiny", "small", "base"),
                       help=f"--model={model}: width 192 / 384 / 768, depth 12")
    p.add_argument("--depth", type=int, default=12, help="--model=ast|beats: layers")
    p.add_argument("--reference", default="", help="--model=beats --vs-torch: the directory "
                   "of the reference BEATs.py (microsoft/unilm beats/)")
    p.add_argument("--method", default="scl",
                   choices=("scl", "ce", "hybrid", "mscl", "simclr", "patchmix_cl", "pafa"))
    p.add_argument("--batch", type=int, default=32, help="global batch (two views each)")
    p.add_argument("--frames", type=int, default=None,
                   help="frames: log-mel 251, fbank 798 (8 s; --model=beats: 498, 5 s)")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--channels", default="64,128,256,512", help="CNN6 widths")
    p.add_argument("--steps", type=int, default=3, help="steps per timed round")
    p.add_argument("--rounds", type=int, default=7,
                   help="timed rounds, alternating between the sides (median reported)")
    p.add_argument("--vs-torch", dest="vs_torch", action="store_true",
                   help="also time the PyTorch reference step (CNN6: --method=scl; AST, BEATs "
                        "and HTS-AT: --method=ce) and print the ratio")
    p.add_argument("--profile", default="", help="also write a jax.profiler trace of 3 "
                   "steps to this directory")
    p.add_argument("--compile-only", dest="compile_only", action="store_true",
                   help="--model=ast: only the step's FLOPs and memory, nothing timed")
    p.add_argument("--remat", default="auto", help="--model=ast: model.remat")
    p.add_argument("--attention", default="auto", help="--model=ast: model.attention")
    p.set_defaults(run=run_train_step)
    p = sub.add_parser("conv-layers", help="each CNN6 convolution: forward and gradients")
    p.add_argument("--batch", type=int, default=32, help="examples (one view)")
    p.add_argument("--frames", type=int, default=251, help="log-mel frames (251 = 8 s)")
    p.add_argument("--channels", default="64,128,256,512", help="CNN6 widths")
    p.add_argument("--rounds", type=int, default=3, help="timed calls (best reported)")
    p.add_argument("--vs-torch", dest="vs_torch", action="store_true",
                   help="also time PyTorch's convolution and its gradients")
    p.set_defaults(run=run_conv_layers)
    p = sub.add_parser("predict", help="resp_jax.predict on a recording vs PyTorch's forward")
    p.add_argument("--model", default="all", choices=("cnn6", "ast", "beats", "all"))
    p.add_argument("--seconds", type=float, default=30.0, help="length of the recording")
    p.add_argument("--rounds", type=int, default=5,
                   help="timed rounds, alternating between the sides (median reported)")
    p.add_argument("--reference", default="", help="--model=beats|all: the directory of "
                   "the reference BEATs.py (microsoft/unilm beats/)")
    p.add_argument("--quick", action="store_true", help="the configs' tiny quick models "
                   "(checks the command; not a figure)")
    p.set_defaults(run=run_predict)
    p = sub.add_parser("loop", help="the real training loop: samples/s and input wait")
    p.add_argument("--data_dir", required=True, help="dataset root (distributed files)")
    p.add_argument("--dataset", default="icbhi", choices=sources.NAMES)
    p.add_argument("--method", default="scl", choices=("scl", "ce", "hybrid", "mscl", "simclr"))
    p.add_argument("--batch", type=int, default=128, help="global batch")
    p.add_argument("--epochs", type=int, default=3, help="timed epochs after the first")
    p.add_argument("--duration", type=float, default=8.0, help="seconds per example")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--channels", default="64,128,256,512", help="CNN6 widths")
    p.add_argument("--tfds_dir", default="", help="prepared-data cache (default: prepare's)")
    p.set_defaults(run=run_loop)
    args = parser.parse_args(argv)
    threads = bench_conditions.set_threads(args.threads)
    torch_info = bench_conditions.set_torch_threads(threads) \
        if getattr(args, "vs_torch", False) or args.command == "predict" else None
    with bench_conditions.Sampler() as sampler:
        args.sampler = sampler
        out = args.run(args)
    out.update(bench_conditions.conditions(sampler, threads, torch_info))
    bench_conditions.warn(out)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
