"""Supervised contrastive pretraining on class labels, then a linear classifier (rows 'SCL').

Arguments as in base.py, e.g. `--config=configs/scl.py:quick,sprsound`.
"""

import pathlib
import runpy

_base = runpy.run_path(str(pathlib.Path(__file__).with_name("base.py")))


def get_config(arg=None):
    config = _base["get_config"](arg)
    config.method = "scl"
    config.loss.heads = (("label", 1.0),)
    return config
