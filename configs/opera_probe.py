"""OPERA-CT as OPERA's benchmark evaluates it: a linear probe of the frozen encoder (method
'linear_probe': no first stage; `htsat_recipes.opera_probe`: features of 8 s clips computed
once, a Linear head, Adam 1e-4 x 0.97 per epoch, batch 32, 64 epochs, gradient clipped to 1,
L2 1e-5 on the head, the best validation epoch; docs/method.md §12). It needs converted
weights: a probe of a random encoder measures the random features.

    python -m resp_jax.main --config=configs/opera_probe.py --config.data.root=ICBHI \
        --config.model.init_from=weights/opera_ct --workdir=runs/opera-probe

`:quick`: the probe of a tiny random HTS-AT on the synthetic default
(`htsat_recipes.htsat_quick`): it checks the plumbing and that random features carry the
synthetic set's classes.
"""

import pathlib
import runpy

_here = pathlib.Path(__file__).parent
_base = runpy.run_path(str(_here / "base.py"))
_htsat = runpy.run_path(str(_here / "htsat_recipes.py"))


def get_config(arg=None):
    config = _htsat["opera_recipe"](_base["get_config"](arg), arg)
    _htsat["opera_probe"](config)
    if "quick" in [t.strip() for t in (arg or "").split(",")]:
        config.data.duration = 4.0
        config.linear_eval.update(lr=1e-3, epochs=30)
    return config
