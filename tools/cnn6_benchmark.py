"""The CNN6 train step and convolutions for tools/benchmark.py (`train-step`, `conv-layers`).

    python tools/benchmark.py train-step --method=scl|ce|hybrid|mscl|simclr [--batch=32]
        [--frames=251] [--dtype=float32|bfloat16] [--channels=64,128,256,512] [--vs-torch]
    python tools/benchmark.py conv-layers [--batch=32] [--frames=251] [--vs-torch]

`train-step`: two-view samples per second of the jitted train step of configs/<method>.py on
random inputs, after compilation, synchronised, median of rounds; the step's FLOPs (XLA's cost
analysis, which counts fewer than the analytic convolution FLOPs), the rate they are done at
as a fraction of a large matmul's rate measured on the same device in the same dtype, and the
projected wall time of the full ICBHI protocol. `--vs-torch` (SupCon only) times
tools/torch_reference.py's PyTorch step (CNN6 + projector, two views in two encoder calls,
SupCon, Adam) in the same process, alternating rounds with the JAX step.

`conv-layers`: each CNN6 block's 5x5 convolution alone (one view's batch): forward, input
gradient and weight gradient, best of rounds, with GFLOP/s; `--vs-torch` adds PyTorch's.
This is where XLA:CPU's choice of convolution backend shows (resp_jax/xla_setup.py;
`RESP_JAX_XLA_CPU_TUNING=0` gives XLA's default for comparison).
"""

from __future__ import annotations

import contextlib
import os


def run(bench, args) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from resp_jax import configuration
    from resp_jax.models import heads

    if args.method in ("patchmix_cl", "pafa"):
        raise SystemExit(f"--method={args.method} needs --model=ast (patchmix_cl) or "
                         "--model=beats (pafa)")
    if args.vs_torch and args.method != "scl":
        raise SystemExit("--vs-torch compares the SupCon step (tools/torch_reference.py "
                         "implements only that one): use it with --method=scl")
    config = bench.config_for(args.method)
    config.train.batch_size = args.batch
    config.model.channels = tuple(int(c) for c in args.channels.split(","))
    config.model.dtype = args.dtype
    config = configuration.resolve(config)
    mesh, model, state, step, eval_step = bench.step_setup(config, (64, args.frames),
                                                           np.full(4, 0.25, np.float32))

    batch, eval_batch, host = bench.random_batches(config, mesh, args.batch,
                                                   (64, args.frames))
    flops = step.lower(state, batch).compile().cost_analysis().get("flops")

    # Inference variables for the forward pass: copies, since every step donates `state`.
    classifier = heads.Classifier(4).init(jax.random.key(1),
                                         np.zeros((1, config.model.channels[-1]), np.float32))
    variables = jax.tree.map(jnp.copy, {"params": {**state.params,
                                                   "classifier": classifier["params"]},
                                        "batch_stats": state.batch_stats})

    runners = {"forward": (lambda: eval_step(variables, eval_batch), jax.block_until_ready)}
    if args.vs_torch:
        import torch
        import torch_reference

        tdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
        device = "cuda" if torch.cuda.is_available() else "cpu"
        ref = torch_reference.SupConStep(args.batch, args.frames, config.model.channels,
                                         device=device, dtype=tdtype)
        runners["torch"] = (ref, ref.sync)
    median, fields = bench.speed(bench.time_steps(step, state, batch, runners, args,
                                                  warmup=2), args.batch)
    rate = bench.matmul_rate(args.dtype, 2048 if jax.devices()[0].platform == "cpu" else 8192)
    sig = bench._sig
    return {"benchmark": "train-step", "model": "cnn6", "method": args.method,
            "batch": args.batch, "frames": args.frames, "dtype": args.dtype,
            "channels": list(config.model.channels),
            "device": jax.devices()[0].device_kind, "platform": jax.devices()[0].platform,
            "devices": len(jax.devices()), **fields,
            "step_gflop": sig(flops / 1e9) if flops else None,
            "achieved_tflops": sig(flops / median["jax"] / 1e12) if flops else None,
            "matmul_tflops": sig(rate / 1e12),
            "fraction_of_matmul_rate": sig(flops / median["jax"] / rate) if flops else None,
            "projected_icbhi_400_epochs_h": round(bench.icbhi_projection_h(
                median["jax"], median["forward"], args.batch, args.batch,
                configuration.is_two_stage(config)), 2)}


def conv_layer_shapes(channels, mel: int, frames: int) -> list:
    """(height, width, in, out) of each CNN6 block's 5x5 convolution (reference layout)."""
    out, h, w, cin = [], mel, frames, 1
    for cout in channels:
        out.append((h, w, cin, cout))
        h, w, cin = h // 2, w // 2, cout
    return out


def run_conv_layers(bench, args) -> dict:
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
                bench._timed(fn, sync, 1)  # compile / warm up
                best = min(bench._timed(fn, sync, 1) for _ in range(args.rounds))
                layer[name] = {"ms": round(1000 * best, 1), "gflop_s": round(gflop / best, 1)}
        layers.append(layer)
    return {"benchmark": "conv-layers", "batch": args.batch, "frames": args.frames,
            "platform": jax.devices()[0].platform, "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "layers": layers}
