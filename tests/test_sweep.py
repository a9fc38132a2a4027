"""resp_jax.sweep: seeds run in order, finished ones are skipped, the table is mean +- std;
--over sweeps a config field's values (the held-out device), each a sweep of its own."""

import json

import numpy as np
import pytest

from resp_jax import cli, sweep
from train_helpers import load_config, tiny_config



def _results(seed, sp, se, dataset="icbhi", support=None):
    test = {"sp": sp, "se": se, "score": (sp + se) / 2,
            "hs": 2 * sp * se / (sp + se) if sp + se else 0.0}
    if support is not None:
        test["support"] = support
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


@pytest.mark.slow   # two tiny runs
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


# ------------------------------------------------------------------------------------------
# --over: a config field's values, each a sweep


def test_a_sweep_over_held_out_devices_tabulates_each_device(tmp_path, monkeypatch):
    """Each device's seeds run in DIR/<device> with data.held_out set; the table gives each
    device's test cycles, figures over seeds and every run's interval, and says n/a (with
    the reason) where a device's test set has no abnormal cycle."""
    calls = []
    supports = {"Meditron": [30, 10, 6, 4], "Litt3200": [12, 0, 0, 0]}

    def fake_run(config, workdir):
        calls.append((config.data.held_out, config.train.seed, workdir.relative_to(tmp_path)))
        workdir.mkdir(parents=True, exist_ok=True)
        held = config.data.held_out
        res = _results(config.train.seed, 80.0 + config.train.seed,
                       0.0 if held == "Litt3200" else 50.0, support=supports[held])
        res["test_split"] = f"device={held}"
        res["test_interval"] = {k: [1.0, 2.0] for k in ("sp", "se", "score", "hs")}
        res["bootstrap"] = {"patients": 7}
        (workdir / "results.json").write_text(json.dumps(res))
        return 0

    monkeypatch.setattr(cli, "run", fake_run)
    config = load_config("ce")
    config.data.protocol = "leave_device_out"
    status, summary = sweep.run_over(config, "data.held_out", ["Meditron", "Litt3200"], 2,
                                     tmp_path)
    assert status == 0
    assert [(h, s, str(d)) for h, s, d in calls] == [
        ("Meditron", 0, "Meditron/seed_0"), ("Meditron", 1, "Meditron/seed_1"),
        ("Litt3200", 0, "Litt3200/seed_0"), ("Litt3200", 1, "Litt3200/seed_1")]
    assert config.data.held_out == ""   # the caller's config is not modified
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    assert (tmp_path / "Meditron" / "summary.json").is_file()
    med, litt = summary["sweeps"]
    assert med["test_cycles"] == {"normal": 30, "abnormal": 20} and med["patients"] == 7
    assert litt["metrics"]["se"]["undefined"] == "no abnormal test cycle"
    assert litt["metrics"]["score"]["undefined"] == "no abnormal test cycle"
    assert "undefined" not in litt["metrics"]["sp"]
    # The mean over devices leaves out what one device cannot define.
    assert summary["mean_over_values"]["sp"] == pytest.approx(80.5)
    assert "se" not in summary["mean_over_values"]
    md = (tmp_path / "summary.md").read_text()
    table = md.split("Every run")[0]   # the first table: one row per device
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.strip("|").split("|")]
            for line in table.splitlines() if line.startswith("| ")}
    assert rows["Meditron"][:4] == ["Meditron", "device=Meditron", "50 (30 / 20)", "7"]
    assert rows["Meditron"][4].startswith("80.50 ± 0.50 [")
    assert rows["Litt3200"][4:7] == [rows["Litt3200"][4], "n/a", "n/a"]
    assert rows["mean over values"][4:7] == ["80.50", "n/a", "n/a"]
    assert "- Litt3200: no abnormal test cycle" in md
    assert "| Meditron | 1 | 4 | 81.00 [1.00, 2.00] | 50.00 [1.00, 2.00] |" in md
    assert "| Litt3200 | 0 | 3 | 80.00 [1.00, 2.00] | n/a | n/a |" in md
    # A sweep over values is compared value by value.
    from resp_jax import comparison
    with pytest.raises(ValueError, match="holds one sweep per value of data.held_out"):
        comparison.table([tmp_path])


def test_over_values_and_their_types():
    config = load_config("ce")
    with pytest.raises(ValueError, match="holds nothing out"):
        sweep.default_values(config, "data.held_out")
    config.data.protocol = "leave_device_out"
    assert sweep.default_values(config, "data.held_out") == (
        "AKGC417L", "LittC2SE", "Litt3200", "Meditron")
    with pytest.raises(ValueError, match="--over=train.epochs needs --values"):
        sweep.default_values(config, "train.epochs")
    assert sweep.with_value(config, "train.epochs", "3").train.epochs == 3
    assert sweep.with_value(config, "loss.temperature", "0.1").loss.temperature == 0.1
    assert sweep.with_value(config, "model.bn_per_view", "false").model.bn_per_view is False
    with pytest.raises(ValueError, match="'x' is not a int for train.seed"):
        sweep.with_value(config, "train.seed", "x")
    with pytest.raises(ValueError, match="no such field"):
        sweep.with_value(config, "data.device", "x")
    assert sweep.folder("CAS & DAS") == "CAS_DAS"


@pytest.mark.slow   # a tiny run
def test_real_sweep_over_a_held_out_device(tiny_icbhi, tmp_path):
    config = tiny_config("ce", epochs=1)
    config.data.root, config.data.tfds_dir = str(tiny_icbhi["root"]), str(tiny_icbhi["tfds"])
    config.data.protocol = "leave_device_out"
    status, summary = sweep.run_over(config, "data.held_out", ["Meditron"], 1, tmp_path)
    assert status == 0
    res = json.loads((tmp_path / "Meditron" / "seed_0" / "results.json").read_text())
    assert res["test_split"] == "device=Meditron"
    preds = (tmp_path / "Meditron" / "seed_0" / "predictions.csv").read_text().splitlines()
    assert len(preds) - 1 == res["cycles"]["test"] > 0
    assert all(",Meditron," in row for row in preds[1:])   # only the held-out device
    (row,) = summary["sweeps"]
    assert row["test_split"] == "device=Meditron" and row["test_cycles"]["normal"] > 0
    assert "| Meditron | device=Meditron |" in (tmp_path / "summary.md").read_text()


def test_a_training_runs_test_cycles_come_from_its_predictions(tmp_path):
    """results.json of a training run has no per-class support; the sweep counts the test
    cycles of each class in the run's predictions.csv."""
    from resp_jax import evaluation
    from resp_jax.data import icbhi

    labels = np.array([0, 0, 0, 1, 3, 0, 2])
    n = len(labels)
    p = evaluation.Predictions(
        dataset="icbhi", classes=icbhi.CLASSES, stem=np.array(["101_1b1_Al_sc_Meditron"] * n),
        index=np.arange(n), start=np.zeros(n), end=np.ones(n), patient=np.array(["101"] * n),
        fields={}, label=labels, predicted=np.zeros(n, np.int64),
        probabilities=np.full((n, 4), 0.25, np.float32))
    evaluation.write(tmp_path / evaluation.PREDICTIONS_FILE, p)
    res = _results(0, 80.0, 50.0)
    assert sweep.with_support(res, tmp_path)["test"]["support"] == [4, 1, 1, 1]
    assert "support" not in res["test"]   # the caller's dict is not modified
    assert sweep.with_support(res, tmp_path / "elsewhere") == res   # no predictions file
    given = _results(0, 80.0, 50.0, support=[1, 2, 3, 4])
    assert sweep.with_support(given, tmp_path) == given
