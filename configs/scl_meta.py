"""SupCon on sex x age group only (4 groups, no class labels), then a linear classifier
(row 'SCL w/ sex+age').

Arguments as in base.py, e.g. `--config=configs/scl_meta.py:quick,sprsound`.
"""

import pathlib
import runpy

_base = runpy.run_path(str(pathlib.Path(__file__).with_name("base.py")))


def get_config(arg=None):
    config = _base["get_config"](arg)
    config.method = "scl"
    config.loss.heads = (("sex+age_group", 1.0),)
    return config
