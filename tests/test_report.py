"""resp_jax.report: report.md with figures for a run, and --compare tables."""

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from resp_jax import comparison, evaluation, figures, report, sweep
from train_helpers import ROOT

pytestmark = pytest.mark.slow  # trains tiny models or runs commands (CI runs these)

FIGURES = ("confusion.png", "recall.png", "subgroups.png", "curves.png", "embedding.png")


def assert_real_image(path, min_width=300, min_height=200, min_coloured=0.002):
    """A PNG that exists, has a sensible size and is not blank (several colours, ink)."""
    import matplotlib.image as mpimg
    assert path.is_file() and path.stat().st_size > 5000, path
    img = mpimg.imread(path)[..., :3]
    h, w = img.shape[:2]
    assert w >= min_width and h >= min_height, (path, img.shape)
    ink = (img < 0.9).any(axis=-1).mean()      # share of non-white pixels
    assert 0.005 < ink < 0.95, (path, ink)
    # Axes and text are black or grey; the data (cells, bars, lines, points) is in colour.
    coloured = (img.max(axis=-1) - img.min(axis=-1) > 0.2).mean()
    assert coloured > min_coloured, (path, coloured)
    assert len(np.unique(img.reshape(-1, 3).round(2), axis=0)) > 10, path


@pytest.fixture(scope="module")
def reports(trained_runs, tmp_path_factory):
    """Copies of the two runs with their reports written."""
    out = {}
    for key, workdir in trained_runs.items():
        copy = tmp_path_factory.mktemp("report") / key
        shutil.copytree(workdir, copy)
        out[key] = (copy, report.report(copy))
    return out


def _table_rows(text, first_cell):
    return [[c.strip() for c in line.strip("|").split("|")]
            for line in text.splitlines() if line.startswith(f"| {first_cell}")]


@pytest.mark.parametrize("key", ["mscl", "ce"])
def test_report_has_every_figure_and_recomputes_the_results(reports, key):
    workdir, md = reports[key]
    text = md.read_text()
    for name in FIGURES:
        assert f"(report/{name})" in text
        # The tiny runs' subgroups are few, of one or two patients: markers without bars.
        assert_real_image(workdir / "report" / name,
                          min_coloured=0.0005 if name == "subgroups.png" else 0.002)
    results = json.loads((workdir / "results.json").read_text())
    (reported,), (from_file,), (recomputed,), (interval,) = (
        _table_rows(text, k) for k in ("results.json", "predictions.csv",
                                       "recomputed from ckpt/best", "95 % interval"))
    assert reported[1:] == recomputed[1:] == from_file[1:]
    assert reported[1:] == [f"{results['test'][k]:.2f}" for k in ("sp", "se", "score", "hs")]
    # The report's intervals are the run's: the same file, resamples and seed.
    assert interval[1:] == [f"[{a:.2f}, {b:.2f}]" for a, b in
                            (results["test_interval"][k] for k in ("sp", "se", "score", "hs"))]
    # The confusion-matrix table counts every test cycle once.
    counts = [[int(v) for v in row[1:]] for row in _table_rows(text, "normal")
              + _table_rows(text, "crackle") + _table_rows(text, "wheeze")
              + _table_rows(text, "both") if len(row) == 5]
    assert sum(map(sum, counts)) == results["cycles"]["test"]
    assert "coloured by class, sex, age group, device" in text
    # One subgroup row per value of each ICBHI field; each field's rows count every cycle.
    rows = _table_rows(text, "")
    subgroups = [r for r in rows if r[0] in ("sex", "age_group", "device", "location", "mode",
                                             "diagnosis")]
    assert {r[0] for r in subgroups} == {"sex", "age_group", "device", "location", "mode",
                                         "diagnosis"}
    for field in ("sex", "device", "location"):
        assert sum(int(r[2]) for r in subgroups if r[0] == field) == results["cycles"]["test"]


@pytest.mark.parametrize("key", ["mscl", "ce"])
def test_predictions_file_gives_the_reported_figures_exactly(trained_runs, key):
    """A two-stage (linear evaluation) and a one-stage run (validation selection): the file
    holds the selected epoch's test cycles, and Sp / Se / Score / HS and their intervals
    recomputed from it equal results.json to the last bit."""
    results = json.loads((trained_runs[key] / "results.json").read_text())
    p = evaluation.read(trained_runs[key] / evaluation.PREDICTIONS_FILE, results["dataset"])
    assert len(p) == results["cycles"]["test"]
    scores = p.scores()
    assert {k: scores[k] for k in ("sp", "se", "score", "hs")} == {
        k: results["test"][k] for k in ("sp", "se", "score", "hs")}
    assert evaluation.bootstrap(p, results["bootstrap"]["resamples"]) == \
        results["test_interval"]
    assert results["bootstrap"]["patients"] == len(set(p.patient)) >= 2
    np.testing.assert_allclose(p.probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert list(p.fields) == ["sex", "age_group", "device", "location", "mode", "diagnosis"]
    assert (p.end > p.start).all() and set(p.fields["device"]) <= {
        "AKGC417L", "LittC2SE", "Litt3200", "Meditron"}


def test_curves_follow_metrics_jsonl(reports):
    records = report.read_metrics(reports["ce"][0])
    evaluations = [r for r in records if "split" in r]
    windows = [r for r in records if "step" in r]
    assert {(r["stage"], r["split"]) for r in evaluations} == {
        ("train", "train"), ("train", "test"), ("train", "val")}
    assert windows and len(evaluations) + len(windows) == len(records)
    assert (f"From `metrics.jsonl` ({len(evaluations)} evaluations, {len(windows)} logging "
            "windows)") in reports["ce"][1].read_text()
    panels = figures.curve_panels(records)
    assert [(stage, key, sorted(s), x) for stage, key, s, x in panels] == [
        ("train", "loss", ["test", "train", "val"], "epoch"),
        ("train", "score", ["test", "val"], "epoch"),
        ("train", "step losses", ["loss", "loss/ce"], "step"),
        ("train", "lr", ["lr"], "step"), ("train", "grad_norm", ["grad_norm"], "step")]
    assert [e for e, _ in panels[0][2]["val"]] == [1, 2]
    assert panels[2][2]["loss/ce"] == [(r["step"], r["loss/ce"]) for r in windows]
    assert figures.map_panels("sprsound")[-1][0] == "location"


def test_two_stage_curves_give_each_stage_its_own_panels(reports):
    """Pretraining (SupCon) and the linear classifier (CE) restart at epoch 1 and have losses
    on different scales: one shared axis would overlay unrelated curves."""
    records = report.read_metrics(reports["mscl"][0])
    panels = figures.curve_panels(records)
    assert [(stage, key, sorted(s)) for stage, key, s, _ in panels] == [
        ("pretrain", "loss", ["train"]), ("linear", "loss", ["test", "train"]),
        ("linear", "score", ["test"]),
        ("pretrain", "step losses", ["loss", "loss/device", "loss/label", "loss/location"]),
        ("pretrain", "lr", ["lr"]), ("pretrain", "grad_norm", ["grad_norm"])]
    pretrain = [r for r in records if r["stage"] == "pretrain" and "split" in r]
    assert panels[0][2]["train"] == [(r["epoch"], r["loss"]) for r in pretrain]


def test_compare_puts_runs_and_sweeps_side_by_side(trained_runs, tmp_path):
    runs = [json.loads((trained_runs[k] / "results.json").read_text()) for k in ("ce", "ce")]
    runs[1]["test"] = {k: v + 2.0 for k, v in runs[1]["test"].items()}
    (tmp_path / "sweep" / "seed_0").mkdir(parents=True)
    shutil.copy(trained_runs["ce"] / "config.json", tmp_path / "sweep" / "seed_0")
    summary = sweep.summarize(runs, "CE, scratch")
    (tmp_path / "sweep" / "summary.json").write_text(json.dumps(summary))
    table = comparison.table([trained_runs["mscl"], tmp_path / "sweep"])
    lines = table.splitlines()
    assert lines[0].startswith("| run | method | heads (weight) | dataset (test split) | "
                               "selection | runs | Sp |")
    mscl = json.loads((trained_runs["mscl"] / "results.json").read_text())
    # The head weights (the method label names only the fields) tell M-SCL variants apart.
    assert re.search(r"\| mscl \[label, device, location\], scratch \| label 0\.5, device "
                     r"0\.25, location 0\.25 \| icbhi \(test\) \| test_best \| 1 \| "
                     + f"{mscl['test']['sp']:.2f} ", lines[2]), lines[2]
    assert "| CE, scratch | – | icbhi (test) |" in lines[3]
    score = summary["metrics"]["score"]
    assert f"{score['mean']:.2f} ± {score['std']:.2f}" in lines[3] and "| 2 |" in lines[3]
    assert score["std"] == pytest.approx(1.0)
    # The mean Score of the last epochs (which selection cannot inflate) has its own column.
    assert lines[0].rstrip().endswith("| Score, last epochs |")
    assert lines[2].rstrip().endswith(f"| {mscl['test_score_recent']['mean']:.2f} |")
    recent = summary["metrics"]["score_recent"]
    assert lines[3].rstrip().endswith(f"| {recent['mean']:.2f} ± {recent['std']:.2f} "
                                      f"[{recent['interval'][0]:.2f}, "
                                      f"{recent['interval'][1]:.2f}] |")
    # A run's figure carries its patient-bootstrap interval, a sweep's mean its t interval.
    low, high = mscl["test_interval"]["sp"]
    assert f"| {mscl['test']['sp']:.2f} [{low:.2f}, {high:.2f}] |" in lines[2]
    low, high = score["interval"]
    assert f"{score['mean']:.2f} ± {score['std']:.2f} [{low:.2f}, {high:.2f}]" in lines[3]
    with pytest.raises(FileNotFoundError, match="results.json or a sweep's summary.json"):
        comparison.table([tmp_path])
    assert "between a run and a sweep" in comparison.difference(trained_runs["mscl"],
                                                                tmp_path / "sweep")


def test_two_sweeps_are_compared_with_welchs_test(trained_runs, tmp_path):
    base = json.loads((trained_runs["ce"] / "results.json").read_text())
    dirs = []
    for name, scores in (("a", (60.0, 62.0, 61.0)), ("b", (55.0, 58.0, 56.5, 57.0))):
        runs = [{**base, "seed": k, "test": {**base["test"], "sp": s, "se": s, "score": s}}
                for k, s in enumerate(scores)]
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.json").write_text(json.dumps(sweep.summarize(runs, name)))
        dirs.append(tmp_path / name)
    text = comparison.difference(*dirs)
    (row,) = _table_rows(text, "Score")
    welch = evaluation.welch([60.0, 62.0, 61.0], [55.0, 58.0, 56.5, 57.0])
    mean_a = evaluation.across_seeds([60.0, 62.0, 61.0])
    assert row[1] == f"61.00 ± 0.82 [{mean_a['interval'][0]:.2f}, {mean_a['interval'][1]:.2f}]"
    assert row[3] == f"{welch['difference']:+.2f}" and row[6] == f"{welch['p']:.3g}"
    assert "Welch's t-test" in text
    (row,) = _table_rows(comparison.difference(dirs[0], dirs[0]), "Score")
    assert (row[3], row[5], row[6]) == ("0.00", "0.00 (4.0)", "1")
    other = json.loads((dirs[1] / "summary.json").read_text())
    (dirs[1] / "summary.json").write_text(json.dumps({**other, "test_split": "val"}))
    with pytest.raises(ValueError, match="different test sets: test_split 'test'"):
        comparison.difference(*dirs)


def test_a_run_compared_with_itself_and_refused_pairs(trained_runs, tmp_path):
    text = comparison.difference(trained_runs["ce"], trained_runs["ce"], resamples=300)
    assert "Score difference A - B: 0.00, 95 % interval [0.00, 0.00], p = 1." in text
    (sp,) = _table_rows(text, "Sp")
    assert sp[3:] == ["0.00", "[0.00, 0.00]", "1"]
    # Two runs on the same test cycles: a difference, its interval and a p-value.
    text = comparison.difference(trained_runs["mscl"], trained_runs["ce"], resamples=300)
    assert re.search(r"Score difference A - B: [-+]?\d+\.\d\d, 95 % interval \[[^]]+\], "
                     r"p = [\d.e-]+\.", text), text


def test_command_line(trained_runs, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    out = tmp_path / "cmp.md"
    done = subprocess.run([sys.executable, "-m", "resp_jax.report", "--compare",
                           str(trained_runs["mscl"]), str(trained_runs["ce"]), f"--out={out}"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout == out.read_text() and "Score difference A - B: " in done.stdout
    # A run whose test cycles differ: the table, then the pairing refused, naming why.
    broken = tmp_path / "broken"
    shutil.copytree(trained_runs["ce"], broken, ignore=shutil.ignore_patterns("ckpt", "tens*"))
    rows = (broken / "predictions.csv").read_text().splitlines()
    (broken / "predictions.csv").write_text("\n".join(rows[:1] + rows[2:]) + "\n")
    done = subprocess.run([sys.executable, "-m", "resp_jax.report", "--compare",
                           str(trained_runs["ce"]), str(broken)],
                          env=env, capture_output=True, text=True, timeout=300)
    first = rows[1].split(",")
    assert done.returncode == 2 and done.stdout.startswith("| run | method |")
    assert (f"were evaluated on different test cycles: {len(rows) - 1} vs {len(rows) - 2} "
            f"cycles; 1 only in A ({trained_runs['ce']}) ({first[0]}#{first[1]})"
            in done.stderr), done.stderr[-2000:]
    done = subprocess.run([sys.executable, "-m", "resp_jax.report"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "either --workdir=DIR" in done.stderr


def test_subgroups_leave_out_fields_of_many_values(tmp_path):
    """A manifest's free-valued column (an age in years) would make one subgroup per value:
    it is named and left out; the other fields are tabulated and drawn."""
    import test_evaluation
    from resp_jax.data import metadata
    p = test_evaluation.make_predictions(patients=20)
    p.fields["age"] = p.patient.copy()   # 20 values
    schema = metadata.Schema("manifest", p.classes, (("sex", ("M", "F")), ("age", ())))
    lines = report.subgroup_section(p, schema, 100, tmp_path / "subgroups.png")
    text = "\n".join(lines)
    assert "Left out, with more than 12 values: age (20 values)." in text
    assert [r[:2] for r in _table_rows(text, "sex")] == [["sex", "M"], ["sex", "F"],
                                                         ["sex", "unknown"]]
    assert not _table_rows(text, "age")
    assert_real_image(tmp_path / "subgroups.png")
