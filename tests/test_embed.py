"""resp_jax.embed: frozen features of a split with labels and metadata."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from resp_jax import embed, metrics, finished_run

from resp_jax.data import run_data
from resp_jax.data import metadata, prepare
from train_helpers import ROOT

pytestmark = pytest.mark.slow  # trains tiny models or runs commands (CI runs these)


@pytest.fixture(scope="module")
def loaded(trained_runs):
    run = finished_run.load(trained_runs["mscl"])
    return run, run_data.load(run.config)


def test_test_split_embeddings_reproduce_the_reported_metrics(loaded, tiny_icbhi):
    run, data = loaded
    arrays = embed.embed(run, data, "test")
    prepared = prepare.load("icbhi", str(tiny_icbhi["root"]), data_dir=str(tiny_icbhi["tfds"]))
    test = prepared["test"]
    n, width = arrays["features"].shape
    assert (n, width) == (len(test), run.config.model.channels[-1])
    np.testing.assert_array_equal(arrays["label"], test.label)
    assert list(arrays["stem"]) == list(test.stem)
    assert list(arrays["patient"]) == list(test.patient)
    np.testing.assert_array_equal(arrays["index"], test.index)
    for field in ("sex", "age_group", "device", "location", "mode", "diagnosis"):
        np.testing.assert_array_equal(arrays[field], test.codes[field])
        assert tuple(arrays[f"{field}_names"]) == metadata.vocab("icbhi", field)
    assert tuple(arrays["label_names"]) == run.classes
    # The exported features through the saved linear classifier, in numpy: the probabilities.
    w = np.asarray(run.variables["params"]["classifier"]["linear"]["kernel"], np.float64)
    b = np.asarray(run.variables["params"]["classifier"]["linear"]["bias"], np.float64)
    logits = arrays["features"].astype(np.float64) @ w + b
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    np.testing.assert_allclose(arrays["probabilities"], p / p.sum(axis=1, keepdims=True),
                               atol=1e-5)
    # ckpt/best is the selected epoch: its predictions give results.json's test metrics.
    s = metrics.summarize(arrays["label"], arrays["prediction"], dataset="icbhi")
    for key in ("sp", "se", "score", "hs"):
        assert s[key] == pytest.approx(run.results["test"][key], abs=1e-9)


def test_other_splits_and_a_clear_error_for_unknown_ones(loaded):
    run, data = loaded
    train_arrays = embed.embed(run, data, "train")
    assert len(train_arrays["label"]) == data.sizes["train"]
    assert str(train_arrays["split"]) == "train"
    with pytest.raises(ValueError, match="split 'intra_test' not in this icbhi run"):
        embed.embed(run, data, "intra_test")


def test_command_line_writes_the_npz(trained_runs, tmp_path):
    out = tmp_path / "emb.npz"
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    done = subprocess.run([sys.executable, "-m", "resp_jax.embed",
                           f"--workdir={trained_runs['ce']}", "--split=val", f"--out={out}"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    with np.load(out) as f:
        assert str(f["split"]) == "val" and str(f["dataset"]) == "icbhi"
        cycles = json.loads((trained_runs["ce"] / "results.json").read_text())["cycles"]
        assert f["features"].shape[0] == cycles["val"]
        assert np.isfinite(f["features"]).all()
    assert f"{out}: {cycles['val']} cycles" in done.stdout


def test_output_path_is_the_file_numpy_writes(tmp_path):
    assert embed.output_path(None, tmp_path, "val") == tmp_path / "embeddings_val.npz"
    assert embed.output_path(str(tmp_path / "e.npz"), tmp_path, "test") == tmp_path / "e.npz"
    assert embed.output_path(str(tmp_path / "emb"), tmp_path, "test") == tmp_path / "emb.npz"
    assert embed.output_path("a/run.v2", tmp_path, "test").name == "run.v2.npz"
