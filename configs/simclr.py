"""SimCLR (NT-Xent, no labels) pretraining, then a linear classifier (row 'SimCLR').

Arguments as in base.py, e.g. `--config=configs/simclr.py:quick,sprsound`.
"""

import pathlib
import runpy

_base = runpy.run_path(str(pathlib.Path(__file__).with_name("base.py")))


def get_config(arg=None):
    config = _base["get_config"](arg)
    config.method = "simclr"
    config.loss.heads = (("instance", 1.0),)
    return config
