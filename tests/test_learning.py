"""Two-stage methods learn what generalises to new patients (docs/benchmarks.md, "Two-stage
methods on small sets"): M-SCL with the `quick` preset, on a small synthetic set whose classes
are separable in the spectrogram, scores clearly above the majority guess on the held-out
patients, over two seeds. A change that breaks the pretraining, the linear stage or the
augmentation so that nothing transferable is learnt fails here."""

import pytest

from resp_jax import train
from resp_jax.data import synthetic
from train_helpers import load_config

MAJORITY = 50.0   # Score of a constant guess (Sp 100, Se 0, or the reverse)


@pytest.fixture(scope="module")
def learnable(tmp_path_factory):
    """36 recordings of 36 patients (22 train, 14 test; about 300 cycles)."""
    base = tmp_path_factory.mktemp("learnable")
    return synthetic.write_icbhi(base / "root", recordings=36, patients=36, seed=0), \
        base / "tfds"


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_mscl_quick_learns_on_held_out_patients(learnable, tmp_path, seed):
    root, tfds = learnable
    config = load_config("mscl", "quick")
    config.data.root, config.data.tfds_dir = str(root), str(tfds)
    config.data.duration = 2.0          # CI's time: shorter clips, fewer epochs
    config.train.epochs = 20
    config.linear_eval.epochs = 20
    config.eval.selection = "last"
    config.augment.prob = 0.0
    config.train.seed = seed
    results = train.train_and_evaluate(config, tmp_path / "run")
    recent = results["test_score_recent"]
    assert recent["epochs"] == [11, 20]
    assert recent["mean"] > MAJORITY + 12, results
