"""Command line: train and evaluate one experiment.

    python -m resp_jax.main --config=configs/mscl.py[:quick,sprsound] [--workdir=DIR]
        [--config.train.epochs=10 ...]

Without --workdir the run goes to runs/<config name>-<YYYYmmdd-HHMMSS>. Running the same
command with the same --workdir resumes an interrupted run. Exit status: 0 done, 1 the loss
became NaN/inf, 2 a bad config value, bad input data or a bad multi-process setting (README,
"Several hosts"), 3 the processes of a multi-process job did not all join in time, 128 +
signal number after SIGINT/SIGTERM (a checkpoint was saved).
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is imported

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config: configs/<experiment>.py, optionally with arguments "
    "after ':' (e.g. configs/mscl.py:quick,sprsound).", lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Run directory (created; an existing run there is resumed). Default: "
    "runs/<config name>-<YYYYmmdd-HHMMSS>.")
flags.mark_flags_as_required(["config"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from resp_jax import cli, parallel
    try:
        parallel.initialize()  # multi-process jobs join before any other JAX call
    except parallel.DistributedSetupError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    import jax
    workdir = _WORKDIR.value
    if workdir is None:
        if jax.process_count() > 1:
            raise app.UsageError("several hosts: pass the same --workdir to every process")
        workdir = cli.default_workdir(config_flags.get_config_filename(flags.FLAGS["config"]))
    logging.info("workdir: %s", workdir)
    return cli.run(_CONFIG.value, workdir)


if __name__ == "__main__":
    app.run(main)
