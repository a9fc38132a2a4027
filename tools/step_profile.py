"""Where a transformer train step spends its time: XLA's ops against PyTorch's, by category.

    python tools/step_profile.py --model=ast|beats [--size=tiny] [--frames=398] [--batch=8]
        [--threads=N] [--steps=3] [--remat=auto] [--reference=DIR] [--top=12]

Runs tools/benchmark.py's train step of ``--model`` (tools/ast_benchmark.py,
tools/beats_benchmark.py: the JAX step and the PyTorch reference step, method ce) with the
same thread count on both sides, and profiles ``--steps`` steps of each after a warm-up:
JAX with `jax.profiler` (the duration of every XLA:CPU op of the compiled step), PyTorch with
`torch.profiler` (the self time of every aten op). Both durations are wall time on the
calling thread, each op's own worker threads included, so the totals are comparable with
the steps' wall times (the JSON gives those too).

Ops are put in categories by what they compute: XLA's by the HLO instructions in the op (a
fusion's body), PyTorch's by the aten op's name:

  matmul        XLA dot (alone or in a fusion); aten mm, bmm, addmm, baddbmm, convolutions
  softmax       a fusion with exp and a reduction; aten _softmax and its backward
  layernorm     a fusion with rsqrt; aten native_layer_norm and its backward
  reduction     other fusions with a reduction; aten sum, mean, max, amax, norm
  copy          copies, transposes, concatenations, (dynamic-)slices, pads; aten copy_,
                clone, cat, index, contiguous, fill_, zero_, pad
  elementwise   the other fusions; every other aten op (add, mul, gelu, where, Adam's
                _foreach_ ops, ...)

Prints the table (ms per step per category, and the JAX / PyTorch time of each) and each
side's largest ops, then one JSON line. Timing figures on a loaded machine mean nothing: the
JSON carries tools/bench_conditions.py's load and thread record.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import importlib
import json
import re
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
if importlib.util.find_spec("resp_jax") is None:  # a checkout that is not pip-installed
    sys.path.insert(0, str(REPO))

import bench_conditions  # noqa: E402
import benchmark  # noqa: E402  (imports resp_jax: XLA's CPU flags before a backend starts)

CATEGORIES = ("matmul", "softmax", "layernorm", "reduction", "copy", "elementwise")
_COPY_OPCODES = {"copy", "transpose", "concatenate", "slice", "dynamic-slice",
                 "dynamic-update-slice", "pad", "broadcast", "bitcast", "reshape", "iota",
                 "gather", "scatter", "parameter", "tuple", "get-tuple-element", "constant"}
_TORCH = (("matmul", ("mm", "bmm", "addmm", "baddbmm", "matmul", "linear", "convolution",
                      "_convolution", "mkldnn_convolution", "conv2d", "conv1d",
                      "convolution_backward", "_scaled_dot_product_flash_attention_for_cpu",
                      "_scaled_dot_product_flash_attention_for_cpu_backward")),
          ("softmax", ("_softmax", "softmax", "_softmax_backward_data", "log_softmax",
                       "_log_softmax", "_log_softmax_backward_data")),
          ("layernorm", ("native_layer_norm", "native_layer_norm_backward", "layer_norm")),
          ("reduction", ("sum", "mean", "max", "amax", "norm", "linalg_vector_norm", "min")),
          ("copy", ("copy_", "clone", "cat", "index", "contiguous", "fill_", "zero_", "pad",
                    "constant_pad_nd", "index_select", "gather", "_to_copy", "empty_like",
                    "zeros_like", "repeat", "expand_as", "stack", "narrow_copy", "roll")))


def hlo_computations(text: str) -> dict:
    """{computation name: its instruction lines} of an HLO module's text."""
    out, name = {}, None
    for line in text.splitlines():
        head = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{\s*$", line)
        if head and not line.startswith(" "):
            name = head.group(1)
            out[name] = []
        elif name is not None and line.startswith(" "):
            out[name].append(line)
    return out


def _opcodes(lines) -> set:
    found = set()
    for line in lines:
        m = re.search(r"= [^=]*?\b([a-z][a-z\-]*)\(", line)
        if m:
            found.add(m.group(1))
    return found


def xla_category(op: str, instructions: dict, computations: dict) -> str:
    """The category of the XLA op named ``op`` (see the module doc)."""
    line = instructions.get(op, "")
    codes = _opcodes([line])
    called = re.search(r"calls=%?([\w.\-]+)", line)
    if called:
        codes |= _opcodes(computations.get(called.group(1), []))
    if codes & {"dot", "convolution"} or op.startswith(("dot", "convolution")):
        return "matmul"
    if "exponential" in codes and codes & {"reduce", "reduce-window"}:
        return "softmax"
    if "rsqrt" in codes:
        return "layernorm"
    if "reduce" in codes:
        return "reduction"
    if codes and codes <= _COPY_OPCODES | {"fusion"} or op.startswith(
            ("copy", "transpose", "concatenate", "slice", "dynamic", "pad", "broadcast")):
        return "copy"
    return "elementwise"


def _source(line: str) -> str:
    """The JAX operation an HLO instruction came from (its op_name metadata, shortened)."""
    m = re.search(r'op_name="([^"]*)"', line)
    if not m:
        return ""
    name = re.sub(r"jit\(train_step\)/|/while/body/closed_call|/checkpoint", "", m.group(1))
    return name.replace("transpose(jvp(Model.encode))", "bwd").replace("jvp(Model.encode)",
                                                                        "fwd")


def torch_category(name: str) -> str:
    base = name.split("::")[-1]
    for category, names in _TORCH:
        if base in names:
            return category
    return "elementwise"


def profile_jax(compiled, state, batch, steps: int) -> tuple[dict, float, list]:
    """({category: seconds per step}, wall seconds per step, [(op, category, s/step)])."""
    import jax

    text = compiled.as_text()
    computations = hlo_computations(text)
    instructions = {}
    for lines in computations.values():
        for line in lines:
            m = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = ", line)
            if m:
                instructions[m.group(1)] = line
    holder = {"state": state}

    def step():
        holder["state"], metrics = compiled(holder["state"], batch)
        return metrics["loss"]

    jax.block_until_ready(step())
    with tempfile.TemporaryDirectory() as folder:
        with jax.profiler.trace(folder):
            t = time.perf_counter()
            jax.block_until_ready([step() for _ in range(steps)])
            wall = (time.perf_counter() - t) / steps
        trace = json.load(gzip.open(glob.glob(f"{folder}/plugins/profile/*/*.trace.json.gz")[0]))
    per_op = collections.Counter()
    for e in trace["traceEvents"]:
        module = str(e.get("args", {}).get("hlo_module", ""))
        if e.get("ph") != "X" or "train_step" not in module:
            continue
        name = e["name"]
        if name.startswith(("while", "call", "conditional")):  # containers: their ops count
            continue
        per_op[name] += e["dur"] / 1e6 / steps
    ops = [(f"{op} {_source(instructions.get(op, ''))}",
            xla_category(op, instructions, computations), s) for op, s in per_op.items()]
    return _by_category(ops), wall, sorted(ops, key=lambda o: -o[2])


def profile_torch(ref, steps: int) -> tuple[dict, float, list]:
    from torch.profiler import ProfilerActivity, profile

    ref(), ref()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t = time.perf_counter()
        for _ in range(steps):
            ref()
        wall = (time.perf_counter() - t) / steps
    ops = [(e.key, torch_category(e.key), e.self_cpu_time_total / 1e6 / steps)
           for e in prof.key_averages() if e.key.startswith("aten::")]
    return _by_category(ops), wall, sorted(ops, key=lambda o: -o[2])


def _by_category(ops) -> dict:
    out = dict.fromkeys(CATEGORIES, 0.0)
    for _, category, seconds in ops:
        out[category] += seconds
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="ast", choices=("ast", "beats"))
    parser.add_argument("--size", default="tiny", choices=("tiny", "small", "base"))
    parser.add_argument("--frames", type=int, default=None, help="default: 398 (AST), 498")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--depth", type=int, default=12)
    parser.add_argument("--threads", type=int, default=None,
                        help="threads of both sides (default: every usable core)")
    parser.add_argument("--steps", type=int, default=3, help="profiled steps of each side")
    parser.add_argument("--remat", default="auto", help="--model=ast: model.remat")
    parser.add_argument("--reference", default="", help="--model=beats: the directory of "
                        "the reference BEATs.py (microsoft/unilm beats/)")
    parser.add_argument("--top", type=int, default=12, help="largest ops listed per side")
    args = parser.parse_args(argv)
    if args.model == "beats" and not args.reference:
        raise SystemExit("--model=beats needs --reference=DIR (microsoft/unilm's beats/)")
    threads = bench_conditions.set_threads(args.threads)
    torch_info = bench_conditions.set_torch_threads(threads)
    args.frames = args.frames or {"ast": 398, "beats": 498}[args.model]
    args.method, args.dtype, args.attention = "ce", "float32", "auto"
    args.ast_size = args.beats_size = args.size

    import numpy as np

    from resp_jax import configuration, parallel
    from resp_jax.data import features

    module = importlib.import_module(f"{args.model}_benchmark")
    config = configuration.resolve(module._config(benchmark, args))
    shape = features.input_shape(config)
    mesh, _, state, step, _ = benchmark.step_setup(config, shape)
    rng = np.random.default_rng(0)
    host = {"view1": rng.standard_normal((args.batch,) + shape, np.float32),
            "label": rng.integers(0, 4, args.batch).astype(np.int32),
            "mask": np.ones(args.batch, np.float32)}
    batch = parallel.to_global({k: v for k, v in host.items()
                                if k in ("view1", "mask") + configuration.fields(config)}, mesh)
    compiled = step.lower(state, batch).compile()
    if args.model == "ast":
        ref = module.TorchASTStep(module.SIZES[args.size], args.batch, args.frames, "float32")
    else:
        ref = module.TorchBEATsStep(args.reference, module.reference_cfg(config), args.batch,
                                    args.frames, "float32")
    with bench_conditions.Sampler() as sampler:
        jax_cat, jax_wall, jax_ops = profile_jax(compiled, state, batch, args.steps)
        torch_cat, torch_wall, torch_ops = profile_torch(ref, args.steps)

    print(f"{'category':12s} {'JAX ms/step':>12s} {'PyTorch ms/step':>16s} {'JAX/PyTorch':>12s}")
    for c in CATEGORIES + ("total",):
        j = sum(jax_cat.values()) if c == "total" else jax_cat[c]
        t = sum(torch_cat.values()) if c == "total" else torch_cat[c]
        print(f"{c:12s} {1000 * j:12.1f} {1000 * t:16.1f} {j / t if t else float('nan'):12.2f}")
    print(f"{'wall':12s} {1000 * jax_wall:12.1f} {1000 * torch_wall:16.1f} "
          f"{jax_wall / torch_wall:12.2f}")
    for side, ops in (("JAX", jax_ops), ("PyTorch", torch_ops)):
        print(f"\n{side}: largest ops (ms/step)")
        for op, category, seconds in ops[:args.top]:
            print(f"  {1000 * seconds:9.1f}  {category:11s} {op[:110]}")
    out = {"benchmark": "step-profile", "model": args.model, "size": args.size,
           "frames": args.frames, "batch": args.batch, "remat": args.remat,
           "steps": args.steps,
           "jax_ms": {c: round(1000 * v, 1) for c, v in jax_cat.items()},
           "torch_ms": {c: round(1000 * v, 1) for c, v in torch_cat.items()},
           "jax_wall_ms": round(1000 * jax_wall, 1),
           "torch_wall_ms": round(1000 * torch_wall, 1),
           **bench_conditions.conditions(sampler, threads, torch_info)}
    bench_conditions.warn(out)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
