"""resp_jax.sweep: seeds run in order, finished ones are skipped, the table is mean +- std."""

import json

import numpy as np
import pytest

from resp_jax import cli, sweep
from train_helpers import load_config, tiny_config

pytestmark = pytest.mark.slow  # trains tiny models or runs commands (CI runs these)


def _results(seed, sp, se, dataset="icbhi"):
    test = {"sp": sp, "se": se, "score": (sp + se) / 2, "hs": 2 * sp * se / (sp + se)}
    if dataset == "sprsound":
        test["sprsound_score"] = (test["score"] + test["hs"]) / 2
    return {"method": "mscl", "dataset": dataset, "seed": seed, "selection": "test_best",
            "stage": "linear", "epoch": 3 + seed, "test": test,
            "test_split": "test" if dataset == "icbhi" else "inter_test"}


def test_summary_is_mean_and_population_std():
    runs = [_results(0, 80.0, 40.0), _results(1, 70.0, 44.0), _results(2, 75.0, 35.0)]
    summary = sweep.summarize(runs, "M-SCL w/ sex+age & class, AudioSet")
    score = np.array([60.0, 57.0, 55.0])
    assert summary["metrics"]["score"]["mean"] == pytest.approx(score.mean())
    assert summary["metrics"]["score"]["std"] == pytest.approx(
        np.sqrt(((score - score.mean()) ** 2).mean()))
    assert summary["metrics"]["sp"]["values"] == [80.0, 70.0, 75.0]
    assert "sprsound_score" not in summary["metrics"]
    assert summary["seeds"] == [0, 1, 2] and summary["epochs"] == [3, 4, 5]
    md = sweep.markdown(summary)
    assert "| method | Sp | Se | Score | HS |" in md
    assert f"| M-SCL w/ sex+age & class, AudioSet | 75.00 ± 4.08 | 39.67 ± 3.68 | " \
           f"{score.mean():.2f} ± {score.std():.2f} |" in md
    assert "| 2 | 5 | 75.00 | 35.00 | 55.00 |" in md
    # The 95 % t interval of each mean over seeds, on its own row.
    from scipy import stats
    half = stats.t.ppf(0.975, 2) * score.std(ddof=1) / np.sqrt(3)
    assert summary["metrics"]["score"]["interval"] == pytest.approx(
        [score.mean() - half, score.mean() + half])
    assert (f"| 95 % interval of the mean | [{75 - stats.t.ppf(0.975, 2) * 5 / np.sqrt(3):.2f}, "
            in md)


def test_summary_carries_every_seeds_patient_bootstrap_interval():
    runs = [_results(0, 80.0, 40.0), _results(1, 70.0, 44.0)]
    for r, ci in zip(runs, ([55.0, 65.0], [52.5, 61.25])):
        r["test_interval"] = {"sp": [1.0, 2.0], "se": [3.0, 4.0], "score": ci, "hs": [5.0, 6.0]}
    summary = sweep.summarize(runs, "CE, scratch")
    assert summary["metrics"]["score"]["seed_intervals"] == [[55.0, 65.0], [52.5, 61.25]]
    md = sweep.markdown(summary)
    assert "| 1 | 4 | 70.00 [1.00, 2.00] | 44.00 [3.00, 4.00] | 57.00 [52.50, 61.25] |" in md


def test_sprsound_summary_has_the_challenge_score():
    runs = [_results(0, 90.0, 80.0, "sprsound"), _results(1, 88.0, 82.0, "sprsound")]
    summary = sweep.summarize(runs, "SCL, AudioSet")
    assert "sprsound_score" in summary["metrics"]
    assert "SPRSound score" in sweep.markdown(summary)


@pytest.mark.parametrize("name, init, label", [
    ("ce", "", "CE, scratch"), ("hybrid", "w", "Hybrid, AudioSet"),
    ("scl", "", "SCL, scratch"), ("simclr", "w", "SimCLR (no labels), AudioSet"),
    ("scl_meta", "w", "SCL w/ sex+age (no class), AudioSet"),
    ("scl_composite", "w", "SCL w/ sex+age+class, one head, AudioSet"),
    ("mscl", "w", "M-SCL w/ sex+age & class, AudioSet"),
])
def test_rows_are_named_as_in_the_paper(name, init, label):
    config = load_config(name)
    config.model.init_from = init
    assert sweep.method_label(config) == label


def test_finished_seeds_are_skipped_and_a_failed_seed_stops_the_sweep(tmp_path, monkeypatch):
    calls = []

    def fake_run(config, workdir):
        calls.append((config.train.seed, str(workdir)))
        if config.train.seed == 12 and len(calls) < 4:
            return 143  # interrupted
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "results.json").write_text(json.dumps(
            _results(config.train.seed, 70.0 + config.train.seed, 40.0)))
        return 0

    monkeypatch.setattr(cli, "run", fake_run)
    config = load_config("mscl")
    config.train.seed = 10
    status, summary = sweep.run_sweep(config, 3, tmp_path)
    assert status == 143 and summary is None
    assert [c[0] for c in calls] == [10, 11, 12]
    assert not (tmp_path / "summary.json").exists()
    status, summary = sweep.run_sweep(config, 3, tmp_path)  # the same command again
    assert status == 0
    assert [c[0] for c in calls] == [10, 11, 12, 12]  # seeds 10 and 11 were not rerun
    assert calls[-1][1] == str(tmp_path / "seed_2")
    assert summary["seeds"] == [10, 11, 12]
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    assert (tmp_path / "summary.md").read_text() == sweep.markdown(summary)
    assert config.train.seed == 10  # the caller's config is not modified


def test_real_sweep_of_two_seeds(tiny_icbhi, tmp_path):
    config = tiny_config("ce", epochs=1)
    config.data.root, config.data.tfds_dir = str(tiny_icbhi["root"]), str(tiny_icbhi["tfds"])
    status, summary = sweep.run_sweep(config, 2, tmp_path)
    assert status == 0
    runs = [json.loads((tmp_path / f"seed_{k}" / "results.json").read_text()) for k in (0, 1)]
    assert [r["seed"] for r in runs] == [0, 1]
    assert json.loads((tmp_path / "seed_1" / "config.json").read_text())["train"]["seed"] == 1
    scores = [r["test"]["score"] for r in runs]
    assert summary["metrics"]["score"]["mean"] == pytest.approx(np.mean(scores))
    assert summary["metrics"]["score"]["std"] == pytest.approx(np.std(scores))
    assert summary["method"] == "CE, scratch"
