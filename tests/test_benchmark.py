"""tools/benchmark.py: each subcommand runs and reports consistent figures (no speed is
asserted here; speeds are measured by running the benchmarks, docs/benchmarks.md)."""

import contextlib
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from train_helpers import ROOT

sys.path.insert(0, str(ROOT / "tools"))
import benchmark  # noqa: E402

pytestmark = pytest.mark.slow  # trains tiny models or runs commands (CI runs these)

TINY = ["--channels=4,8,8,16", "--batch=4"]


def _main(args) -> dict:
    """Runs the benchmark in this process; its last stdout line, parsed."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        benchmark.main(args)
    return json.loads(out.getvalue().splitlines()[-1])


def test_train_step_vs_torch_from_the_command_line():
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "benchmark.py"), "train-step",
                           "--method=scl", "--frames=32", "--steps=1", "--rounds=1",
                           "--vs-torch", *TINY], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.splitlines()[-1])
    assert out["benchmark"] == "train-step" and out["method"] == "scl"
    assert (out["batch"], out["frames"], out["channels"]) == (4, 32, [4, 8, 8, 16])
    assert out["platform"] == "cpu" and out["devices"] == 1
    for key in ("samples_per_s", "step_ms", "forward_ms", "torch_samples_per_s",
                "matmul_tflops", "step_gflop", "projected_icbhi_400_epochs_h"):
        assert out[key] > 0, key
    assert out["samples_per_s"] == pytest.approx(4000 / out["step_ms"], rel=0.01)
    assert out["jax_over_torch"] == pytest.approx(
        out["samples_per_s"] / out["torch_samples_per_s"], rel=0.01)
    assert out["fraction_of_matmul_rate"] == pytest.approx(
        out["achieved_tflops"] / out["matmul_tflops"], rel=2e-3)
    assert out["achieved_tflops"] == pytest.approx(
        out["step_gflop"] / out["step_ms"], rel=0.01)  # GFLOP / ms = TFLOP/s


def test_vs_torch_is_only_for_supcon():
    with pytest.raises(SystemExit, match="--method=scl"):
        benchmark.main(["train-step", "--method=ce", "--vs-torch", *TINY])


def test_conv_layers_times_every_block_and_its_gradients():
    out = _main(["conv-layers", "--batch=2", "--frames=32", "--channels=4,8,8,16",
                 "--rounds=1", "--vs-torch"])
    shapes = [layer["shape"] for layer in out["layers"]]
    assert shapes == [[64, 32, 1, 4], [32, 16, 4, 8], [16, 8, 8, 8], [8, 4, 8, 16]]
    assert "--xla_cpu_experimental_ynn_fusion_type" in out["xla_flags"]  # resp_jax imported
    for k, layer in enumerate(out["layers"]):
        passes = {"forward", "weight_grad"} | ({"input_grad"} if k else set())
        passes |= {f"torch_{p}" for p in passes}
        assert set(layer) == {"shape", "gflop"} | passes  # block 1 needs no input gradient
        assert all(layer[p]["ms"] > 0 for p in passes)


@pytest.mark.parametrize("two_stage", [False, True])
def test_icbhi_projection_counts_steps_and_evaluation_passes(two_stage):
    # 400 epochs x ceil(4142 / 128) = 33 steps; test: ceil(2756 / 128) = 22 batches; the
    # reference's linear stage encodes the training split in each of its 100 epochs.
    forwards = 100 * 33 + 22 if two_stage else 400 * 22
    assert benchmark.icbhi_projection_h(2.0, 0.5, 128, 128, two_stage) == \
        pytest.approx((400 * 33 * 2.0 + forwards * 0.5) / 3600)


def test_input_and_loop_on_a_dataset(tiny_icbhi):
    data = [f"--data_dir={tiny_icbhi['root']}", f"--tfds_dir={tiny_icbhi['tfds']}"]
    out = _main(["input", *data, "--batch=8", "--duration=1", "--epochs=1"])
    assert out["benchmark"] == "input" and out["frames"] == 32
    assert out["samples_per_s"] > 0 and len(out["samples_per_s_each_epoch"]) == 1
    train_cycles = out["train_cycles"]

    # The real loop on two (fake CPU) devices: the run's own speed figures per epoch.
    out = _main(["loop", "--method=ce", *data, "--batch=8", "--duration=1", "--epochs=2",
                 "--channels=4,8,8,16"])
    assert out["benchmark"] == "loop" and out["train_cycles"] == train_cycles
    assert len(out["samples_per_s_each_epoch"]) == 3  # the first epoch compiles
    assert all(v > 0 for v in out["samples_per_s_each_epoch"])
    assert all(0 <= v < 1 for v in out["input_wait_fraction_each_epoch"])
    assert out["samples_per_s"] in out["samples_per_s_each_epoch"][1:]


def test_torch_two_stage_reference_runs_the_protocol(tiny_icbhi, capsys):
    """tools/torch_two_stage.py (the PyTorch check of the learning figures) runs both stages on
    resp_jax's features and reports the last epoch and the mean of the last ones."""
    import torch_two_stage

    torch_two_stage.main([f"--data_root={tiny_icbhi['root']}", f"--tfds_dir={tiny_icbhi['tfds']}",
                          "--epochs=2", "--linear_epochs=3", "--duration=1", "--batch=8",
                          "--linear_batch=8", "--channels=4,8,8,16"])
    lines = [l for l in capsys.readouterr().out.splitlines()   # (TFDS prints as it prepares)
             if l.startswith(("pretrain epoch", "linear epoch", "{"))]
    assert [l.split(":")[0] for l in lines[:-1]] == \
        ["pretrain epoch 1", "pretrain epoch 2"] + [f"linear epoch {k}" for k in (1, 2, 3)]
    out = json.loads(lines[-1])
    scores = [float(l.rsplit(" ", 1)[1]) for l in lines[2:-1]]
    assert out["score"] == pytest.approx(scores[-1], abs=0.01)
    assert out["score_recent"] == pytest.approx(np.mean(scores), abs=0.01)
    assert out["score"] == pytest.approx((out["sp"] + out["se"]) / 2)


def test_predict_times_resp_jax_predict_and_the_reference_forward():
    out = _main(["predict", "--model=cnn6", "--quick", "--seconds=9", "--rounds=1"])
    assert out["benchmark"] == "predict" and out["quick"] is True
    (cnn6,) = out["models"]
    # 4-s windows every 2 s over 9 s: starts 0, 2, 4, 6 (the last one reaches the end)
    assert (cnn6["model"], cnn6["clip_s"], cnn6["windows"], cnn6["batch_rows"]) == \
        ("cnn6", 4.0, 4, 4)
    assert cnn6["predict_ms_per_window"] == pytest.approx(1000 * cnn6["predict_s"] / 4,
                                                          rel=0.01)
    for key in ("forward_ms", "torch_forward_ms", "window_ms", "torch_window_ms",
                "jax_over_torch", "window_jax_over_torch", "predict_jax_over_torch"):
        assert cnn6[key] > 0, key
    assert cnn6["jax_over_torch"] == pytest.approx(
        cnn6["torch_forward_ms"] / cnn6["forward_ms"], rel=0.01)  # one round
    assert out["threads"] == out["torch_threads"] == out["xla_threads"]
    assert set(out["load_avg_1min"]) == {"start", "end", "max"}
    assert out["comparable"] == (out["load_avg_1min"]["max"] <= out["cores"])


def test_predict_with_beats_needs_the_reference():
    with pytest.raises(SystemExit, match="--reference=DIR"):
        benchmark.main(["predict", "--model=all"])
