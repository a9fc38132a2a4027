"""`python -m resp_jax.report --compare DIR ...`: runs and sweeps side by side, and for two of
them how sure their difference is (docs/method.md §11).

  `table`       any number of runs (results.json) and sweeps (summary.json), one row each;
  `difference`  two runs: the paired patient-bootstrap difference on their common test cycles
                (refused when the cycles differ); two sweeps: each mean over seeds with its t
                interval, and Welch's t-test of the difference.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from resp_jax import evaluation, metrics
from resp_jax.cli import interval_text, md_table

SUMMARY, RESULTS = "summary.json", "results.json"
COMPARED = ("sp", "se", "score")  # the metrics of the difference tables


def heads_cell(config: dict) -> str:
    """The contrastive heads with their weights ('label 0.5, device 0.25'); '–' for CE. The
    method label names the fields only, so runs that differ in weights need this column."""
    if config.get("method") == "ce":
        return "–"
    return ", ".join(f"{field} {float(weight):g}" for field, weight in config["loss"]["heads"])


def is_sweep(directory) -> bool:
    return (Path(directory) / SUMMARY).is_file()


def compare_row(directory) -> dict:
    """One row of the comparison: a sweep (summary.json) or a single run (results.json).
    ``metrics``: key -> (value or mean, std or None, 95 % interval or None)."""
    from ml_collections import ConfigDict

    from resp_jax import cli, finished_run

    directory = Path(directory)
    if is_sweep(directory):
        s = finished_run.read_json(directory / SUMMARY, "the sweep summary")
        if "over" in s:   # resp_jax.sweep --over: one sweep per value, each a row of its own
            raise ValueError(f"{directory} holds one sweep per value of {s['over']} "
                             f"({', '.join(s['values'])}): compare those, "
                             f"{directory}/<{'|'.join(s['folders'])}>")
        first = directory / "seed_0" / finished_run.CONFIG_FILE  # every seed shares the heads
        heads = heads_cell(finished_run.read_json(first, "its config")) if first.is_file() else ""
        return {"dir": str(directory), "method": s["method"], "heads": heads,
                "dataset": s["dataset"], "test_split": s["test_split"],
                "selection": s["selection"], "runs": s["runs"],
                "metrics": {k: (v["mean"], v["std"], v.get("interval"))
                            for k, v in s["metrics"].items()}}
    res = finished_run.read_json(directory / RESULTS, "results.json or a sweep's summary.json")
    config = finished_run.read_json(directory / "config.json", "its config")
    ci = res.get("test_interval", {})
    return {"dir": str(directory), "method": cli.method_label(ConfigDict(config)),
            "heads": heads_cell(config), "dataset": res["dataset"],
            "test_split": res["test_split"], "selection": res["selection"], "runs": 1,
            "metrics": {**{k: (v, None, ci.get(k)) for k, v in res["test"].items()
                           if k != "loss"},
                        **({metrics.RECENT: (res["test_score_recent"]["mean"], None, None)}
                           if res.get("test_score_recent") else {})}}


def table(directories) -> str:
    """A Markdown table of several runs or sweeps: a run's figure with its patient-bootstrap
    interval, a sweep's mean ± population std with the t interval of its mean."""
    rows = [compare_row(d) for d in directories]
    keys = [(k, h) for k, h in metrics.TABLE_NAMES.items()
            if any(k in r["metrics"] for r in rows)]

    def cell(r, k):
        if k not in r["metrics"]:
            return "–"
        mean, std, ci = r["metrics"][k]
        text = f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}"
        return text + (f" {interval_text(ci)}" if ci else "")

    lines = md_table(["run", "method", "heads (weight)", "dataset (test split)", "selection",
                      "runs"] + [h for _, h in keys],
                     [[f"`{r['dir']}`", r["method"], r["heads"],
                       f"{r['dataset']} ({r['test_split']})", r["selection"], r["runs"]]
                      + [cell(r, k) for k, _ in keys]
                      for r in rows])
    if any(ci for r in rows for *_, ci in r["metrics"].values()):
        lines += ["", "[low, high]: 95 % interval; of a run, from resampling its test patients "
                  "(patient sampling); of a sweep, the t interval of the mean over its seeds "
                  "(seed noise). docs/method.md §11."]
    return "\n".join(lines) + "\n"


def _signed(x: float) -> str:
    return "0.00" if x == 0 else f"{x:+.2f}"


def _p(p) -> str:
    return "–" if p is None else f"{p:.3g}"


def paired_runs(dir_a, dir_b, resamples: int | None = None) -> str:
    """The paired patient-bootstrap comparison of two runs on the same test cycles."""
    from resp_jax import finished_run

    preds = []
    for d in (dir_a, dir_b):
        res = finished_run.read_json(Path(d) / RESULTS, "the results of the finished run")
        preds.append(evaluation.read(Path(d) / evaluation.PREDICTIONS_FILE, res["dataset"]))
        if resamples is None:
            resamples = res.get("bootstrap", {}).get("resamples", evaluation.RESAMPLES)
    out = evaluation.paired(*preds, resamples=resamples, names=(f"A ({dir_a})", f"B ({dir_b})"))
    m = out["metrics"]
    lines = [f"Paired comparison, A = `{dir_a}`, B = `{dir_b}`: the same {out['cycles']} test "
             f"cycles of {out['patients']} patients; 95 % intervals of A - B from "
             f"{out['resamples']} resamples of the test patients, both runs scored on each "
             "(docs/method.md §11).", ""]
    lines += md_table(["metric", "A", "B", "A - B", "95 % interval", "p (two-sided)"],
                      [[metrics.NAMES[k], f"{m[k]['a']:.2f}", f"{m[k]['b']:.2f}",
                        _signed(m[k]["difference"]), interval_text(m[k]["interval"], True),
                        _p(m[k]["p"])] for k in COMPARED])
    s = m["score"]
    lines += ["", f"Score difference A - B: {_signed(s['difference'])}, 95 % interval "
              f"{interval_text(s['interval'], True)}, p = {_p(s['p'])}."]
    return "\n".join(lines) + "\n"


def sweeps(dir_a, dir_b) -> str:
    """Two sweeps: mean ± std and the t interval of each mean over seeds, and Welch's test."""
    from resp_jax import finished_run

    s = [finished_run.read_json(Path(d) / SUMMARY, "the sweep summary") for d in (dir_a, dir_b)]
    for key in ("dataset", "test_split"):
        if s[0][key] != s[1][key]:
            raise ValueError(f"the sweeps were evaluated on different test sets: {key} "
                             f"{s[0][key]!r} (A, {dir_a}) vs {s[1][key]!r} (B, {dir_b})")
    rows = []
    for k in COMPARED:
        a, b = (np.asarray(x["metrics"][k]["values"], np.float64) for x in s)
        fa, fb = evaluation.across_seeds(a), evaluation.across_seeds(b)
        w = evaluation.welch(a, b)
        rows.append([metrics.NAMES[k]] + [f"{f['mean']:.2f} ± {f['std']:.2f} "
                                          f"{interval_text(f['interval'])}" for f in (fa, fb)]
                    + [_signed(w["difference"]), interval_text(w["interval"], True),
                       "–" if w["t"] is None else f"{w['t']:.2f} ({w['df']:.1f})",
                       _p(w["p"])])
    lines = [f"Sweeps, A = `{dir_a}` ({s[0]['runs']} seeds), B = `{dir_b}` ({s[1]['runs']} "
             "seeds): mean ± population std over seeds with the 95 % t interval of the mean; "
             "the difference of the means with Welch's t-test (docs/method.md §11).", ""]
    lines += md_table(["metric", "A", "B", "A - B", "95 % interval (Welch)", "t (df)",
                       "p (two-sided)"], rows)
    return "\n".join(lines) + "\n"


def difference(dir_a, dir_b, resamples: int | None = None) -> str:
    """`paired_runs` of two runs, `sweeps` of two sweeps; a note for a run and a sweep.
    ValueError (naming what differs) when they were not evaluated on the same test set."""
    kinds = (is_sweep(dir_a), is_sweep(dir_b))
    if all(kinds):
        return sweeps(dir_a, dir_b)
    if any(kinds):
        return ("No test of the difference between a run and a sweep: compare two runs (a "
                "sweep's seed_<k> is a run) or two sweeps.\n")
    return paired_runs(dir_a, dir_b, resamples)
