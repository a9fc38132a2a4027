"""OPERA-CT as OPERA's benchmark evaluates it: a linear probe of the frozen encoder (method
'linear_probe': no first stage; `htsat_recipes.opera_probe`: features of 8 s clips computed
once, a Linear head, Adam 1e-4 x 0.97 per epoch, batch 32, 64 epochs, gradient clipped to 1,
L2 1e-5 on the head, the best validation epoch; docs/method.md §12). It probes a trained
encoder: converted weights (model.init_from) or the selected encoder of a finished resp_jax
run of any HTS-AT config (model.init_run, whose architecture it takes).

    python -m resp_jax.main --config=configs/opera_probe.py --config.data.root=ICBHI \
        --config.model.init_from=weights/opera_ct --workdir=runs/opera-probe
    python -m resp_jax.main --config=configs/opera_probe.py --config.data.root=ICBHI \
        --config.model.init_run=runs/opera-mscl --workdir=runs/opera-mscl-probe

`:quick`: the probe of a finished tiny run on the synthetic default (lr 1e-3, 30 epochs):

    python -m resp_jax.main --config=configs/opera_mscl.py:quick --workdir=runs/mscl-quick
    python -m resp_jax.main --config=configs/opera_probe.py:quick \
        --config.model.init_run=runs/mscl-quick --workdir=runs/probe-quick
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
