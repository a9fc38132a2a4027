"""SupCon on one composite label sex x age group x class (16 groups on ICBHI), then a
linear classifier (row 'SCL w/ sex+age+class, one head').

Arguments as in base.py, e.g. `--config=configs/scl_composite.py:quick,sprsound`.
"""

import pathlib
import runpy

_base = runpy.run_path(str(pathlib.Path(__file__).with_name("base.py")))


def get_config(arg=None):
    config = _base["get_config"](arg)
    config.method = "scl"
    config.loss.heads = (("sex+age_group+label", 1.0),)
    return config
