"""Runs one experiment over several seeds and tabulates mean +- std (the paper's 10 runs).

    python -m resp_jax.sweep --config=configs/mscl.py --seeds=10 --workdir=DIR [--config.x=...]

Without --seeds a sweep runs the config's ``sweep_seeds`` seeds (the BEATs and AST configs: 5, as PAFA
reports), else 10 (the paper's). Seed k (0-based) trains with train.seed = config.train.seed + k in DIR/seed_<k>. Seeds run one
after another; rerunning the same command skips finished seeds (their results.json exists)
and resumes an interrupted one from its checkpoint. DIR/summary.md and DIR/summary.json hold the
table in the layout of docs/method.md §8; std is the population standard deviation (numpy's default).
Beside it: the 95 % t interval of each mean over seeds, and every seed's patient-bootstrap
interval (docs/method.md §11; `resp_jax.evaluation`).
"""

from __future__ import annotations

import copy
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from resp_jax import evaluation, metrics  # noqa: E402
from resp_jax.cli import interval_text, method_label  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config, as for resp_jax.main.", lock_config=True)
_SEEDS = flags.DEFINE_integer("seeds", None, "Number of seeds (runs); default: the config's "
                              "sweep_seeds, else 10.", lower_bound=1)
DEFAULT_SEEDS = 10  # the paper's runs per row
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Sweep directory; seed k runs in <workdir>/seed_<k>. Default: "
    "runs/<config name>-sweep-<YYYYmmdd-HHMMSS>.")
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
    return {"method": label, "dataset": first["dataset"], "test_split": first["test_split"],
            "selection": first["selection"], "runs": len(runs),
            "seeds": [r["seed"] for r in runs], "epochs": [r["epoch"] for r in runs],
            "metrics": table}


def _seed_cell(metric: dict, i: int) -> str:
    cell = f"{metric['values'][i]:.2f}"
    if "within_std" in metric:  # the run's own swing over its last epochs
        cell += f" ± {metric['within_std'][i]:.2f}"
    if "seed_intervals" in metric:  # the run's patient-bootstrap interval
        cell += f" {interval_text(metric['seed_intervals'][i])}"
    return cell


def markdown(summary: dict) -> str:
    keys = list(summary["metrics"])
    cells = [f"{summary['metrics'][k]['mean']:.2f} ± {summary['metrics'][k]['std']:.2f}"
             for k in keys]
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
        + " | ".join(interval_text(summary["metrics"][k].get("interval")) for k in keys) + " |",
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
            runs.append(json.loads(done.read_text()))
    if not lead:
        return 0, None
    summary = summarize(runs, method_label(config))
    logging_utils.write_json(workdir / "summary.json", summary)
    (workdir / "summary.md").write_text(markdown(summary))
    return 0, summary


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
    status, summary = run_sweep(_CONFIG.value, seeds, workdir)
    if summary is not None:
        print(markdown(summary), flush=True)
    return status


if __name__ == "__main__":
    app.run(main)
