"""What the command lines share: naming run directories, running one experiment, the result
line. Kept apart from resp_jax.main and resp_jax.sweep, which each define absl flags."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from absl import logging


def config_name(spec: str) -> str:
    """'configs/mscl.py:quick,sprsound' -> 'mscl-quick-sprsound'."""
    path, _, arg = spec.partition(":")
    parts = [Path(path).stem] + [a.strip() for a in arg.split(",") if a.strip()]
    return "-".join(parts)


def default_workdir(spec: str, now: float | None = None, kind: str = "") -> Path:
    """runs/<config name>[-kind]-<YYYYmmdd-HHMMSS> (local time ``now``, default: now)."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    return Path("runs") / "-".join(p for p in (config_name(spec), kind, stamp) if p)


def method_label(config) -> str:
    """The docs/method.md §8 row name of a config (e.g. 'M-SCL w/ sex+age & class, AudioSet')."""
    heads = tuple(f for f, _ in config.loss.heads)
    names = {
        ("ce", None): "CE", ("hybrid", ("label",)): "Hybrid",
        ("scl", ("label",)): "SCL", ("simclr", ("instance",)): "SimCLR (no labels)",
        ("scl", ("sex+age_group",)): "SCL w/ sex+age (no class)",
        ("scl", ("sex+age_group+label",)): "SCL w/ sex+age+class, one head",
        ("mscl", ("label", "sex+age_group")): "M-SCL w/ sex+age & class",
        ("patchmix_cl", ("instance",)): "Patch-Mix CL",
    }
    key = (config.method, None if config.method == "ce" else heads)
    name = names.get(key, f"{config.method} [{', '.join(heads)}]")
    if config.model.get("name", "cnn6") != "cnn6":
        name += f" ({config.model.name.upper()})"
    start = ("AudioSet" if config.model.init_from else
             "from a run" if config.model.get("init_run") else "scratch")
    return f"{name}, {start}"


def md_table(header: list, rows: list) -> list:
    """The lines of a Markdown table."""
    return (["| " + " | ".join(str(h) for h in header) + " |", "|" + "---|" * len(header)]
            + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def interval_text(interval, signed: bool = False) -> str:
    """'[57.10, 63.42]' (``signed``: '[-1.20, +3.05]'); '–' when there is none."""
    if not interval:
        return "–"
    fmt = "{:+.2f}" if signed else "{:.2f}"
    return "[" + ", ".join("0.00" if v == 0 else fmt.format(v) for v in interval) + "]"


def summary_line(results: dict) -> str:
    test = results["test"]
    line = (f"test ({results['test_split']}): Sp {test['sp']:.2f}  Se {test['se']:.2f}  "
            f"Score {test['score']:.2f}  HS {test['hs']:.2f}")
    if "sprsound_score" in test:
        line += f"  SPRSound score {test['sprsound_score']:.2f}"
    ci = results.get("test_interval", {}).get("score")
    if ci:
        line += f"  (Score 95 % interval {interval_text(ci)}, patient bootstrap)"
    trained = results.get("evaluation", {}).get("run_dataset")  # resp_jax.evaluate's
    where = (f"trained on {trained}, evaluated on {results['dataset']}" if trained
             else f"on {results['dataset']}")
    return (f"{line}  [{results['method']} {where}, selection {results['selection']}, "
            f"epoch {results['epoch']}]")


def run(config, workdir) -> int:
    """Trains in ``workdir`` and prints the result line; returns the process exit status:
    0 done, 1 the loss became NaN/inf, 2 a bad config value or bad input data (one line
    naming the field, or the file, line and column; no traceback), 128 + signal number after
    SIGINT/SIGTERM."""
    import jax

    from resp_jax import configuration, train
    from resp_jax.data.records import DataError
    from resp_jax.stopping import Interrupted, NonFiniteLoss
    try:
        configuration.resolve(config)  # train resolves again; this only reports config errors
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    try:
        results = train.train_and_evaluate(config, workdir)
    except Interrupted as e:
        logging.warning("%s", e)
        return 128 + e.signum
    except NonFiniteLoss as e:
        logging.error("%s", e)
        return 1
    except DataError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    if jax.process_index() == 0:
        print(summary_line(results), flush=True)
        print(f"outputs in {workdir}", flush=True)
    return 0
