"""resp_jax.report: report.md with figures for a run, and --compare tables."""

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from resp_jax import figures, report, sweep
from train_helpers import ROOT

pytestmark = pytest.mark.slow  # trains tiny models or runs commands (CI runs these)

FIGURES = ("confusion.png", "recall.png", "curves.png", "embedding.png")


def assert_real_image(path, min_width=300, min_height=200):
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
    assert coloured > 0.002, (path, coloured)
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
        assert_real_image(workdir / "report" / name)
    results = json.loads((workdir / "results.json").read_text())
    (reported,), (recomputed,) = (_table_rows(text, "results.json"),
                                  _table_rows(text, "recomputed from ckpt/best"))
    assert reported[1:] == recomputed[1:]
    assert reported[1:] == [f"{results['test'][k]:.2f}" for k in ("sp", "se", "score", "hs")]
    # The confusion-matrix table counts every test cycle once.
    counts = [[int(v) for v in row[1:]] for row in _table_rows(text, "normal")
              + _table_rows(text, "crackle") + _table_rows(text, "wheeze")
              + _table_rows(text, "both") if len(row) == 5]
    assert sum(map(sum, counts)) == results["cycles"]["test"]
    assert "coloured by class, sex, age group, device" in text


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
    table = report.compare([trained_runs["mscl"], tmp_path / "sweep"])
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
    assert lines[3].rstrip().endswith(f"| {recent['mean']:.2f} ± {recent['std']:.2f} |")
    with pytest.raises(FileNotFoundError, match="results.json or a sweep's summary.json"):
        report.compare([tmp_path])


def test_command_line(trained_runs, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    out = tmp_path / "cmp.md"
    done = subprocess.run([sys.executable, "-m", "resp_jax.report", "--compare",
                           str(trained_runs["mscl"]), str(trained_runs["ce"]), f"--out={out}"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout == out.read_text() and len(done.stdout.splitlines()) == 4
    done = subprocess.run([sys.executable, "-m", "resp_jax.report"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "either --workdir=DIR" in done.stderr
