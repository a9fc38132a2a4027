"""Cross-entropy: encoder and linear classifier trained together (docs/method.md §8 rows 'CE').

Arguments as in base.py, e.g. `--config=configs/ce.py:quick,sprsound`.
"""

import pathlib
import runpy

_base = runpy.run_path(str(pathlib.Path(__file__).with_name("base.py")))


def get_config(arg=None):
    config = _base["get_config"](arg)
    config.method = "ce"
    config.loss.heads = ()
    return config
