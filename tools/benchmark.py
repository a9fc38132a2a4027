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

`loop`: the real training loop (`train.train_and_evaluate`: input pipeline, host-side loop,
step) for `--epochs` + 1 epochs on a dataset; reports the samples/s and the share of each
epoch's wall time the loop waited for its input (what the run writes to TensorBoard), median
over the epochs after the first (which compiles).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if importlib.util.find_spec("resp_jax") is None:  # a checkout that is not pip-installed
    sys.path.insert(0, str(REPO))

import resp_jax  # noqa: E402,F401  (sets XLA's CPU flags before JAX starts a backend)


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


def median_step_seconds(runners: dict, rounds: int, steps: int) -> dict:
    """Median seconds per call of each ``name: (fn, sync)``, timed in alternating rounds of
    ``steps`` calls so that every runner sees the same machine load."""
    times = {k: [] for k in runners}
    for _ in range(rounds):
        for k, (fn, sync) in runners.items():
            times[k].append(_timed(fn, sync, steps) / steps)
    return {k: statistics.median_high(v) for k, v in times.items()}


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


def time_steps(step, state, batch, others: dict, args, warmup: int = 1) -> dict:
    """Median seconds per call (`median_step_seconds`) of the train ``step`` as 'jax', fed its
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
    return median_step_seconds(runners, args.rounds, args.steps)


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
    if args.model in TRANSFORMERS:  # tools/<model>_benchmark.py
        sys.path.insert(0, str(REPO / "tools"))
        module, frames = TRANSFORMERS[args.model]
        args.frames = args.frames or frames
        return importlib.import_module(module).run(sys.modules[__name__], args)
    if args.method in ("patchmix_cl", "pafa"):
        raise SystemExit(f"--method={args.method} needs --model=ast (patchmix_cl) or "
                         "--model=beats (pafa)")
    args.frames = args.frames or 251
    import jax
    import jax.numpy as jnp
    import numpy as np

    from resp_jax import configuration, parallel
    from resp_jax.data import metadata
    from resp_jax.models import heads

    if args.vs_torch and args.method != "scl":
        raise SystemExit("--vs-torch compares the SupCon step (tools/torch_reference.py "
                         "implements only that one): use it with --method=scl")
    config = config_for(args.method)
    config.train.batch_size = args.batch
    config.model.channels = tuple(int(c) for c in args.channels.split(","))
    config.model.dtype = args.dtype
    config = configuration.resolve(config)
    mesh, model, state, step, eval_step = step_setup(config, (64, args.frames),
                                                     np.full(4, 0.25, np.float32))

    rng = np.random.default_rng(0)
    host = {"view1": rng.standard_normal((args.batch, 64, args.frames), np.float32),
            "view2": rng.standard_normal((args.batch, 64, args.frames), np.float32),
            "mask": np.ones(args.batch, np.float32)}
    for field in configuration.fields(config):
        host[field] = rng.integers(0, metadata.num_values("icbhi", field), args.batch)
    batch = parallel.to_global(host, mesh)
    eval_batch = parallel.to_global({"x": host["view1"], "label": host["label"],
                                     "mask": host["mask"]}, mesh)
    flops = step.lower(state, batch).compile().cost_analysis().get("flops")

    # Inference variables for the forward pass: copies, since every step donates `state`.
    classifier = heads.Classifier(4).init(jax.random.key(1),
                                         np.zeros((1, config.model.channels[-1]), np.float32))
    variables = jax.tree.map(jnp.copy, {"params": {**state.params,
                                                   "classifier": classifier["params"]},
                                        "batch_stats": state.batch_stats})

    runners = {"forward": (lambda: eval_step(variables, eval_batch), jax.block_until_ready)}
    if args.vs_torch:
        sys.path.insert(0, str(REPO / "tools"))
        import torch
        import torch_reference

        tdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
        device = "cuda" if torch.cuda.is_available() else "cpu"
        ref = torch_reference.SupConStep(args.batch, args.frames, config.model.channels,
                                         device=device, dtype=tdtype)
        runners["torch"] = (ref, ref.sync)
    median = time_steps(step, state, batch, runners, args, warmup=2)
    rate = matmul_rate(args.dtype, 2048 if jax.devices()[0].platform == "cpu" else 8192)
    out = {"benchmark": "train-step", "method": args.method, "batch": args.batch,
           "frames": args.frames, "dtype": args.dtype, "channels": list(config.model.channels),
           "device": jax.devices()[0].device_kind, "platform": jax.devices()[0].platform,
           "devices": len(jax.devices()),
           "samples_per_s": round(args.batch / median["jax"], 2),
           "step_ms": round(1000 * median["jax"], 2),
           "forward_ms": round(1000 * median["forward"], 2),
           "step_gflop": _sig(flops / 1e9) if flops else None,
           "achieved_tflops": _sig(flops / median["jax"] / 1e12) if flops else None,
           "matmul_tflops": _sig(rate / 1e12),
           "fraction_of_matmul_rate": _sig(flops / median["jax"] / rate) if flops else None,
           "projected_icbhi_400_epochs_h": round(icbhi_projection_h(
               median["jax"], median["forward"], args.batch, args.batch,
               configuration.is_two_stage(config)), 2)}
    if "torch" in median:
        out["torch_samples_per_s"] = round(args.batch / median["torch"], 2)
        out["jax_over_torch"] = round(median["torch"] / median["jax"], 3)
    return out


def conv_layer_shapes(channels, mel: int, frames: int) -> list:
    """(height, width, in, out) of each CNN6 block's 5x5 convolution (reference layout)."""
    out, h, w, cin = [], mel, frames, 1
    for cout in channels:
        out.append((h, w, cin, cout))
        h, w, cin = h // 2, w // 2, cout
    return out


def run_conv_layers(args) -> dict:
    """Forward, input-gradient and weight-gradient time of each block's convolution."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    def conv(x, w):
        return jax.lax.conv_general_dilated(x, w, (1, 1), ((2, 2), (2, 2)),
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))

    fns = {"forward": jax.jit(conv),
           "input_grad": jax.jit(lambda x, w, g: jax.vjp(lambda x: conv(x, w), x)[1](g)[0]),
           "weight_grad": jax.jit(lambda x, w, g: jax.vjp(lambda w: conv(x, w), w)[1](g)[0])}
    torch = None
    if args.vs_torch:
        import torch
        device = "cuda" if torch.cuda.is_available() else "cpu"  # JAX's device kind too
        torch_sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    channels = tuple(int(c) for c in args.channels.split(","))
    layers = []
    for h, w, cin, cout in conv_layer_shapes(channels, 64, args.frames):
        rng = np.random.default_rng(0)
        x = rng.standard_normal((args.batch, h, w, cin), np.float32)
        k = rng.standard_normal((5, 5, cin, cout), np.float32)
        g = rng.standard_normal((args.batch, h, w, cout), np.float32)
        gflop = 2 * args.batch * h * w * cin * cout * 25 / 1e9
        runners = {}
        xj, kj, gj = (jnp.asarray(a) for a in (x, k, g))
        runners["forward"] = lambda: fns["forward"](xj, kj)
        runners["weight_grad"] = lambda: fns["weight_grad"](xj, kj, gj)
        if cin > 1:  # the first block's input gradient is never needed
            runners["input_grad"] = lambda: fns["input_grad"](xj, kj, gj)
        if torch is not None:
            F = torch.nn.functional
            xt, kt, gt = (torch.from_numpy(np.ascontiguousarray(a)).to(device) for a in
                          (x.transpose(0, 3, 1, 2), k.transpose(3, 2, 0, 1),
                           g.transpose(0, 3, 1, 2)))
            runners["torch_forward"] = lambda: F.conv2d(xt, kt, padding=2)
            runners["torch_weight_grad"] = lambda: torch.nn.grad.conv2d_weight(
                xt, kt.shape, gt, padding=2)
            if cin > 1:
                runners["torch_input_grad"] = lambda: torch.nn.grad.conv2d_input(
                    xt.shape, kt, gt, padding=2)
        layer = {"shape": [h, w, cin, cout], "gflop": round(gflop, 2)}
        with torch.no_grad() if torch is not None else contextlib.nullcontext():
            for name, fn in runners.items():
                sync = (lambda out: torch_sync()) if name.startswith("torch") \
                    else jax.block_until_ready
                _timed(fn, sync, 1)  # compile / warm up
                best = min(_timed(fn, sync, 1) for _ in range(args.rounds))
                layer[name] = {"ms": round(1000 * best, 1), "gflop_s": round(gflop / best, 1)}
        layers.append(layer)
    return {"benchmark": "conv-layers", "batch": args.batch, "frames": args.frames,
            "platform": jax.devices()[0].platform, "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "layers": layers}


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
    p = sub.add_parser("input", help="tf.data input pipeline throughput")
    p.add_argument("--data_dir", required=True, help="dataset root (distributed files)")
    p.add_argument("--dataset", default="icbhi", choices=("icbhi", "sprsound"))
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
    p.add_argument("--rounds", type=int, default=3, help="timed rounds (median reported)")
    p.add_argument("--vs-torch", dest="vs_torch", action="store_true",
                   help="also time tools/torch_reference.py's SupCon step (--method=scl) and "
                        "print the ratio")
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
    p = sub.add_parser("loop", help="the real training loop: samples/s and input wait")
    p.add_argument("--data_dir", required=True, help="dataset root (distributed files)")
    p.add_argument("--dataset", default="icbhi", choices=("icbhi", "sprsound"))
    p.add_argument("--method", default="scl", choices=("scl", "ce", "hybrid", "mscl", "simclr"))
    p.add_argument("--batch", type=int, default=128, help="global batch")
    p.add_argument("--epochs", type=int, default=3, help="timed epochs after the first")
    p.add_argument("--duration", type=float, default=8.0, help="seconds per example")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--channels", default="64,128,256,512", help="CNN6 widths")
    p.add_argument("--tfds_dir", default="", help="prepared-data cache (default: prepare's)")
    p.set_defaults(run=run_loop)
    args = parser.parse_args(argv)
    print(json.dumps(args.run(args)))


if __name__ == "__main__":
    main()
