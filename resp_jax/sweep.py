"""Runs one experiment over several seeds and tabulates mean +- std (the paper's 10 runs).

    python -m resp_jax.sweep --config=configs/mscl.py --seeds=10 --workdir=DIR [--config.x=...]
    python -m resp_jax.sweep --config=configs/ce.py --config.data.protocol=leave_device_out \
        --over=data.held_out [--values=AKGC417L,Meditron] --seeds=2 --workdir=DIR

Without --seeds a sweep runs the config's ``sweep_seeds`` seeds (the BEATs and AST configs: 5, as PAFA
reports), else 10 (the paper's). Seed k (0-based) trains with train.seed = config.train.seed + k in DIR/seed_<k>. Seeds run one
after another; rerunning the same command skips finished seeds (their results.json exists)
and resumes an interrupted one from its checkpoint. DIR/summary.md and DIR/summary.json hold the
table in the layout of docs/method.md §8; std is the population standard deviation (numpy's default).
Beside it: the 95 % t interval of each mean over seeds, and every seed's patient-bootstrap
interval (docs/method.md §11; `resp_jax.evaluation`).

With ``--over=FIELD`` the seeds run for each value of a config field (``--values``; for
``data.held_out``, default: every value the config's protocol may hold out, e.g. ICBHI's four
devices) in DIR/<value>, each a sweep as above, and DIR/summary.md and DIR/summary.json put
the values side by side (`over_values`): each value's test cycles (normal / abnormal) and
patients, its figures over seeds, every run's interval. A figure a value's test set cannot
define (Sp without a normal cycle, Se without an abnormal one, and then Score and HS) is
'n/a', with the reason, not a 0.
"""

from __future__ import annotations

import copy
import json
import os
import re
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from resp_jax import evaluation, metrics  # noqa: E402
from resp_jax.cli import interval_text, md_table, method_label  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config, as for resp_jax.main.", lock_config=True)
_SEEDS = flags.DEFINE_integer("seeds", None, "Number of seeds (runs); default: the config's "
                              "sweep_seeds, else 10.", lower_bound=1)
DEFAULT_SEEDS = 10  # the paper's runs per row
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Sweep directory; seed k runs in <workdir>/seed_<k>. Default: "
    "runs/<config name>-sweep-<YYYYmmdd-HHMMSS>.")
_OVER = flags.DEFINE_string(
    "over", None, "A config field to sweep (e.g. data.held_out): each value runs the seeds "
    "in <workdir>/<value>; <workdir>/summary.md tabulates the values.")
_VALUES = flags.DEFINE_list(
    "values", None, "Values of --over (comma separated); for data.held_out the default is "
    "every value the config's protocol holds out (ICBHI's leave_device_out: its 4 devices).")
flags.mark_flags_as_required(["config"])


RECENT, HEADERS = metrics.RECENT, metrics.TABLE_NAMES


def summarize(runs: list[dict], label: str) -> dict:
    """Each metric over ``runs`` (results.json contents): mean, population std, the 95 % t
    interval of the mean over seeds (`evaluation.across_seeds`), every seed's value and, for
    runs that recorded it, every seed's patient-bootstrap interval."""
    keys = [m for m in metrics.REPORTED if all(m in r["test"] for r in runs)]
    table = {}
    for m in keys:
        values = np.array([r["test"][m] for r in runs], np.float64)
        table[m] = {**evaluation.across_seeds(values), "values": values.tolist()}
        intervals = [r.get("test_interval", {}).get(m) for r in runs]
        if all(intervals):
            table[m]["seed_intervals"] = intervals
    if all(r.get("test_score_recent") for r in runs):  # runs since the selection-noise figure
        means = np.array([r["test_score_recent"]["mean"] for r in runs], np.float64)
        table[RECENT] = {**evaluation.across_seeds(means), "values": means.tolist(),
                         "within_std": [r["test_score_recent"]["std"] for r in runs]}
    first = runs[0]
    out = {"method": label, "dataset": first["dataset"], "test_split": first["test_split"],
           "selection": first["selection"], "runs": len(runs),
           "seeds": [r["seed"] for r in runs], "epochs": [r["epoch"] for r in runs],
           "metrics": table}
    support = first["test"].get("support")  # every seed is tested on the same cycles
    if support:
        out["test_cycles"] = {"normal": int(support[0]), "abnormal": int(sum(support[1:]))}
        undefined = undefined_metrics(out["test_cycles"])
        for m, reason in undefined.items():
            if m in table:
                table[m]["undefined"] = reason
    if first.get("bootstrap"):
        out["patients"] = first["bootstrap"]["patients"]
    return out


def with_support(results: dict, rundir) -> dict:
    """A run's results with its test cycles per class (``test.support``): a training run's
    results.json leaves them out, its predictions.csv has them (an evaluation's has both)."""
    path = Path(rundir) / evaluation.PREDICTIONS_FILE
    if "support" in results["test"] or not path.exists():
        return results
    p = evaluation.read(path, results["dataset"])
    support = np.bincount(p.label, minlength=len(p.classes)).tolist()
    return {**results, "test": {**results["test"], "support": support}}


def undefined_metrics(cycles: dict) -> dict:
    """``{metric: reason}`` of the figures a test set of ``cycles`` (normal, abnormal)
    cannot define: Sp without a normal cycle, Se without an abnormal one, and the figures
    made of them (metrics.py gives such a rate as 0, which is not a result)."""
    out = {}
    if not cycles["normal"]:
        out["sp"] = "no normal test cycle"
    if not cycles["abnormal"]:
        out["se"] = "no abnormal test cycle"
    if out:
        reason = " and ".join(out.values())
        for m in ("score", "hs", "sprsound_score", RECENT):
            out[m] = reason
    return out


def _seed_cell(metric: dict, i: int) -> str:
    if "undefined" in metric:
        return "n/a"
    cell = f"{metric['values'][i]:.2f}"
    if "within_std" in metric:  # the run's own swing over its last epochs
        cell += f" ± {metric['within_std'][i]:.2f}"
    if "seed_intervals" in metric:  # the run's patient-bootstrap interval
        cell += f" {interval_text(metric['seed_intervals'][i])}"
    return cell


def _mean_cell(metric: dict) -> str:
    if "undefined" in metric:
        return f"n/a ({metric['undefined']})"
    return f"{metric['mean']:.2f} ± {metric['std']:.2f}"


def markdown(summary: dict) -> str:
    keys = list(summary["metrics"])
    cells = [_mean_cell(summary["metrics"][k]) for k in keys]
    lines = [
        f"# {summary['method']} on {summary['dataset']} ({summary['test_split']})",
        "",
        f"{summary['runs']} runs (seeds {summary['seeds']}), model selection "
        f"`{summary['selection']}`; mean ± population std over seeds, in percent, and the 95 % "
        "t interval of the mean over seeds (seed noise on this test set; docs/method.md §11).",
        "",
        "| method | " + " | ".join(HEADERS[k] for k in keys) + " |",
        "|---|" + "---|" * len(keys),
        f"| {summary['method']} | " + " | ".join(cells) + " |",
        "| 95 % interval of the mean | "
        + " | ".join(interval_text(None if "undefined" in summary["metrics"][k] else
                                   summary["metrics"][k].get("interval")) for k in keys) + " |",
        "",
        "Per seed: the selected epoch's figure with its 95 % patient-bootstrap interval (test-"
        "patient sampling, for that trained model); Score, last epochs: mean ± std over the "
        "run's last epochs.",
        "",
        "| seed | epoch | " + " | ".join(HEADERS[k] for k in keys) + " |",
        "|---|---|" + "---|" * len(keys),
    ]
    for i, (seed, epoch) in enumerate(zip(summary["seeds"], summary["epochs"])):
        values = " | ".join(_seed_cell(summary["metrics"][k], i) for k in keys)
        lines.append(f"| {seed} | {epoch} | {values} |")
    return "\n".join(lines) + "\n"


def default_seeds(config) -> int:
    """Seeds of a sweep without --seeds: the config's ``sweep_seeds``, else `DEFAULT_SEEDS`."""
    return int(config.get("sweep_seeds", DEFAULT_SEEDS))


def run_sweep(config, seeds: int, workdir) -> tuple[int, dict | None]:
    """Runs the missing seeds; returns (exit status, summary or None when a run stopped, and
    on every process but process 0, which alone reads the results and writes the summary)."""
    import jax

    from resp_jax import cli, logging_utils
    workdir = Path(workdir)
    lead = jax.process_index() == 0
    runs = []
    for k in range(seeds):
        rundir = workdir / f"seed_{k}"
        done = rundir / "results.json"
        if not done.exists():
            seeded = copy.deepcopy(config)
            seeded.train.seed = config.train.seed + k
            logging.info("seed %d/%d (train.seed=%d) in %s", k + 1, seeds, seeded.train.seed,
                         rundir)
            status = cli.run(seeded, rundir)
            if status:
                return status, None
        else:
            logging.info("seed %d/%d already done: %s", k + 1, seeds, done)
        if lead:  # results.json is written by process 0 at the end of its run
            runs.append(with_support(json.loads(done.read_text()), rundir))
    if not lead:
        return 0, None
    summary = summarize(runs, method_label(config))
    logging_utils.write_json(workdir / "summary.json", summary)
    (workdir / "summary.md").write_text(markdown(summary))
    return 0, summary


# ------------------------------------------------------------------------------------------
# A sweep over the values of a config field (e.g. the held-out device)


def default_values(config, field: str) -> tuple:
    """The values of ``--over=field`` without ``--values``: for ``data.held_out``, every
    value the config's protocol may hold out."""
    from resp_jax.data import sources

    if field == "data.held_out":
        protocol = sources.get(config.data.name).protocol(config.data.get("protocol",
                                                                           sources.OFFICIAL))
        if protocol.held_out_values:
            return protocol.held_out_values
        raise ValueError(f"--over=data.held_out: protocol {protocol.name!r} of "
                         f"{config.data.name} holds nothing out; set --config.data.protocol "
                         "(e.g. leave_device_out) or give --values")
    raise ValueError(f"--over={field} needs --values (comma separated)")


def with_value(config, field: str, text: str):
    """A copy of ``config`` with ``field`` ('section.name') set to ``text`` read as the
    field's type (str, int, float or bool)."""
    out = copy.deepcopy(config)
    *sections, name = field.split(".")
    node = out
    for part in sections:
        node = node.get(part)
        if node is None or not hasattr(node, "get_type"):
            raise ValueError(f"--over={field}: the config has no section {part!r}")
    if name not in node:
        raise ValueError(f"--over={field}: the config has no such field")
    kind = node.get_type(name)
    try:
        if kind is bool:
            if text.lower() not in ("true", "false"):
                raise ValueError
            node[name] = text.lower() == "true"
        else:
            node[name] = kind(text) if kind in (int, float) else text
    except ValueError:
        raise ValueError(f"--values: {text!r} is not a {kind.__name__} for {field}") from None
    return out


def folder(value: str) -> str:
    """A value's folder name: letters, digits, '.', '-' and '_' kept, the rest '_'."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", value) or "_"


def run_over(config, field: str, values, seeds: int, workdir) -> tuple[int, dict | None]:
    """`run_sweep` for each value of ``field`` in ``workdir/<value>``, then the table of the
    values (`over_summary`) in ``workdir/summary.md`` and ``summary.json``."""
    import jax

    from resp_jax import logging_utils
    workdir, values = Path(workdir), [str(v) for v in values]
    names = [folder(v) for v in values]
    if len(set(names)) != len(names):
        raise ValueError(f"--values {values} give the same folder twice ({names}); "
                         "give distinct values")
    rows = []
    for value, name in zip(values, names):
        logging.info("%s = %s (%d seed(s)) in %s", field, value, seeds, workdir / name)
        status, summary = run_sweep(with_value(config, field, value), seeds, workdir / name)
        if status:
            return status, None
        rows.append(summary)
    if jax.process_index() != 0:
        return 0, None
    summary = over_summary(field, values, names, rows)
    logging_utils.write_json(workdir / "summary.json", summary)
    (workdir / "summary.md").write_text(over_markdown(summary))
    return 0, summary


def over_summary(field: str, values: list, names: list, rows: list) -> dict:
    """The sweeps of each value of ``field`` (`summarize` outputs) side by side, and the
    unweighted mean over values of each figure every value defines."""
    keys = [k for k in rows[0]["metrics"] if all(k in r["metrics"] for r in rows)]
    mean = {k: float(np.mean([r["metrics"][k]["mean"] for r in rows])) for k in keys
            if not any("undefined" in r["metrics"][k] for r in rows)}
    return {"over": field, "values": values, "folders": names, "method": rows[0]["method"],
            "dataset": rows[0]["dataset"], "selection": rows[0]["selection"],
            "sweeps": rows, "mean_over_values": mean}


def over_markdown(summary: dict) -> str:
    field, rows = summary["over"], summary["sweeps"]
    keys = [k for k in rows[0]["metrics"] if all(k in r["metrics"] for r in rows)]

    def cell(metric):
        if "undefined" in metric:
            return "n/a"
        return f"{metric['mean']:.2f} ± {metric['std']:.2f} {interval_text(metric.get('interval'))}"

    def cycles(r):
        c = r.get("test_cycles")
        return f"{c['normal'] + c['abnormal']} ({c['normal']} / {c['abnormal']})" if c else "–"

    lines = [f"# {summary['method']} on {summary['dataset']}, one sweep per value of `{field}`",
             "", f"{rows[0]['runs']} seed(s) per value, model selection `{summary['selection']}`;"
             " each figure: mean ± population std over seeds and the 95 % t interval of the "
             "mean (seed noise on that value's test set; docs/method.md §11). Test sets "
             "differ between values: a small one (few patients) gives wide intervals.", ""]
    lines += md_table(
        [field, "test split", "test cycles (normal / abnormal)", "patients"]
        + [HEADERS[k] for k in keys],
        [[v, r["test_split"], cycles(r), r.get("patients", "–")]
         + [cell(r["metrics"][k]) for k in keys] for v, r in zip(summary["values"], rows)]
        + [["mean over values", "", "", ""]
           + [f"{summary['mean_over_values'][k]:.2f}" if k in summary["mean_over_values"]
              else "n/a" for k in keys]])
    notes = [f"- {v}: {', '.join(sorted({m['undefined'] for m in r['metrics'].values() if 'undefined' in m}))}:"
             " its undefined figures are n/a (and left out of the mean over values)"
             for v, r in zip(summary["values"], rows)
             if any("undefined" in m for m in r["metrics"].values())]
    if notes:
        lines += [""] + notes
    lines += ["", "Every run: the selected epoch's figure with its 95 % patient-bootstrap "
              "interval (test-patient sampling; docs/method.md §11).", ""]
    lines += md_table(
        [field, "seed", "epoch"] + [HEADERS[k] for k in keys],
        [[v, seed, epoch] + [_seed_cell(r["metrics"][k], i) for k in keys]
         for v, r in zip(summary["values"], rows)
         for i, (seed, epoch) in enumerate(zip(r["seeds"], r["epochs"]))])
    return "\n".join(lines) + "\n"


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from resp_jax import cli, parallel
    try:
        parallel.initialize()  # multi-process jobs join before any other JAX call
    except parallel.DistributedSetupError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    workdir = _WORKDIR.value
    if workdir is None:
        import jax
        if jax.process_count() > 1:
            raise app.UsageError("several hosts: pass the same --workdir to every process")
        spec = config_flags.get_config_filename(flags.FLAGS["config"])
        workdir = cli.default_workdir(spec, kind="sweep")
    seeds = _SEEDS.value if _SEEDS.value is not None else default_seeds(_CONFIG.value)
    if _VALUES.value and not _OVER.value:
        raise app.UsageError("--values needs --over=FIELD")
    if not _OVER.value:
        status, summary = run_sweep(_CONFIG.value, seeds, workdir)
        if summary is not None:
            print(markdown(summary), flush=True)
        return status
    try:
        values = _VALUES.value or default_values(_CONFIG.value, _OVER.value)
        status, summary = run_over(_CONFIG.value, _OVER.value, values, seeds, workdir)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    if summary is not None:
        print(over_markdown(summary), flush=True)
    return status


if __name__ == "__main__":
    app.run(main)
