"""Checks that need a GPU: marked `gpu`, deselected by default (pyproject's addopts:
`-m "not gpu"`), run by `pytest -m gpu` (what tools/gpu_check.sh does on a CUDA machine).

The test session itself is CPU-only (conftest), so the checks run in one child process on
the accelerator (this file run as a script), which writes a JSON of figures; the tests read
it. RESP_JAX_GPU_TEST_PLATFORM=cpu runs the same checks on two CPU devices (tools/gpu_check.sh
--cpu: the plumbing, not the GPU); RESP_JAX_GPU_REPORT=FILE keeps the figures.

- the step runs on the accelerator;
- a float32 SCL train step there gives the losses of the CPU (matmul precision 'highest');
- bfloat16 (`model.dtype`) stays finite and close to float32;
- with two GPUs, one global batch over two devices trains as over one (skipped with one);
- AST's attention in bfloat16 is cuDNN's fused kernel ('auto'), whose loss and gradients match
  XLA's attention (GPU only).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.gpu

HERE = Path(__file__).resolve().parent
PLATFORM_ENV = "RESP_JAX_GPU_TEST_PLATFORM"
REPORT_ENV = "RESP_JAX_GPU_REPORT"
CHILD_TIMEOUT_S = 420
STEPS, BATCH, FRAMES = 4, 8, 32


def _platform() -> str:
    """The JAX platform the checks run on: 'cuda' unless RESP_JAX_GPU_TEST_PLATFORM says."""
    return os.environ.get(PLATFORM_ENV, "cuda").strip().lower() or "cuda"


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("gpu") / "report.json"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE.parent), str(HERE)]),
               TF_CPP_MIN_LOG_LEVEL="2")
    platform = _platform()
    if platform == "cpu":
        env.update(JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES="2")
    else:
        env["JAX_PLATFORMS"] = f"{platform},cpu"  # fails if the accelerator is missing
        if env.get("CUDA_VISIBLE_DEVICES") == "":  # conftest's CPU-only default
            del env["CUDA_VISIBLE_DEVICES"]
    done = subprocess.run([sys.executable, __file__, str(out)], env=env, cwd=HERE.parent,
                          capture_output=True, text=True, timeout=CHILD_TIMEOUT_S)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    result = json.loads(out.read_text())
    if os.environ.get(REPORT_ENV):
        shutil.copyfile(out, os.environ[REPORT_ENV])
    return result


def test_the_step_runs_on_the_accelerator(report):
    assert report["platform"] == ("cpu" if _platform() == "cpu" else "gpu"), report


def test_float32_step_gives_the_cpu_losses(report):
    assert report["float32_vs_cpu_max_rel_loss_diff"] < 1e-3, report


def test_bfloat16_step_is_finite_and_close_to_float32(report):
    assert report["bfloat16_finite"], report
    assert report["bfloat16_vs_float32_max_rel_loss_diff"] < 5e-2, report


def test_ast_cudnn_attention_matches_xla(report):
    if report["platform"] != "gpu":
        pytest.skip("cuDNN's attention kernel needs a GPU")
    assert report["ast_auto_attention"] == "cudnn", report
    assert report["ast_cudnn_vs_xla_loss_rel_diff"] < 5e-2, report
    assert report["ast_cudnn_vs_xla_grad_rel_diff"] < 5e-2, report


def test_two_devices_train_as_one(report):
    if report["devices"] < 2:
        pytest.skip(f"one {report['platform']} device: the two-device check needs two")
    assert report["two_devices_max_rel_loss_diff"] < 1e-4, report
    assert report["two_devices_max_abs_param_diff"] < 1e-4, report


# ------------------------------------------------------------------------------------------
# The child process


def _checks() -> dict:
    import time

    import jax
    import numpy as np

    from resp_jax import configuration
    from test_parallel import _batches, _train
    from train_helpers import tiny_config

    t0 = time.perf_counter()
    devices = jax.devices()
    cpu = jax.devices("cpu")[0]
    batches = _batches(STEPS, BATCH, FRAMES)

    def run(dtype, devs):
        config = configuration.resolve(tiny_config("scl", batch_size=BATCH, model__dtype=dtype))
        return _train(config, devs, batches, FRAMES)

    def rel(a, b):
        return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-12)))

    with jax.default_matmul_precision("highest"):
        l_acc, p_acc, _ = run("float32", devices[:1])
        l_cpu, _, _ = run("float32", [cpu])
    l_bf16, _, _ = run("bfloat16", devices[:1])
    l_f32, _, _ = run("float32", devices[:1])
    out = {"platform": devices[0].platform, "device_kind": devices[0].device_kind,
           "devices": len(devices), "steps": STEPS, "batch": BATCH, "frames": FRAMES,
           "float32_losses": l_acc.tolist(), "cpu_losses": l_cpu.tolist(),
           "float32_vs_cpu_max_rel_loss_diff": rel(l_acc, l_cpu),
           "bfloat16_losses": l_bf16.tolist(),
           "bfloat16_finite": bool(np.all(np.isfinite(l_bf16))),
           "bfloat16_vs_float32_max_rel_loss_diff": rel(l_bf16, l_f32)}
    if len(devices) >= 2:
        with jax.default_matmul_precision("highest"):
            l_two, p_two, _ = run("float32", devices[:2])
        out["two_devices_max_rel_loss_diff"] = rel(l_two, l_acc)
        out["two_devices_max_abs_param_diff"] = max(
            float(np.max(np.abs(a - b))) for a, b in zip(jax.tree.leaves(p_two),
                                                          jax.tree.leaves(p_acc)))
    if devices[0].platform == "gpu":
        out.update(_ast_attention(devices[0]))
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


def _ast_attention(device, kernels=("xla", "cudnn")) -> dict:
    """A tiny AST encoder's loss and gradients in bfloat16 with each attention kernel."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from resp_jax.models import ast, transformer

    kw = dict(width=64, depth=2, heads=2, frames=64, num_bins=32, dtype=jnp.bfloat16)
    x = np.random.default_rng(0).standard_normal((4, 64, 32)).astype(np.float32)
    with jax.default_device(device):
        params = ast.ASTEncoder(**kw).init(jax.random.key(0), x, train=False)["params"]

        def loss_and_grads(attention):
            encoder = ast.ASTEncoder(**kw, attention=attention)
            loss = lambda p: jnp.sum(encoder.apply({"params": p}, x, train=True) ** 2)  # noqa: E731
            value, grads = jax.jit(jax.value_and_grad(loss))(params)
            return float(value), np.concatenate([np.ravel(g) for g in jax.tree.leaves(grads)])
        (l_xla, g_xla), (l_other, g_other) = (loss_and_grads(k) for k in kernels)
    return {"ast_auto_attention": transformer.attention_kernel("auto", jnp.bfloat16, 32, False),
            "ast_cudnn_vs_xla_loss_rel_diff": abs(l_other - l_xla) / abs(l_xla),
            "ast_cudnn_vs_xla_grad_rel_diff": float(np.linalg.norm(g_other - g_xla)
                                                    / np.linalg.norm(g_xla))}


if __name__ == "__main__":
    import resp_jax  # noqa: F401  (XLA's CPU flags before JAX starts)

    Path(sys.argv[1]).write_text(json.dumps(_checks(), indent=2) + "\n")
