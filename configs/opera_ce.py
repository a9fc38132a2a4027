"""OPERA-CT fine-tuned with cross-entropy (evelyn0414/OPERA, NeurIPS 2024 datasets and
benchmarks): the respiratory foundation model's HTS-AT, pretrained contrastively on 136k
respiratory recordings, trained end to end on ICBHI's cycles with OPERA's fine-tuning recipe
(`htsat_recipes.opera_recipe`: OPERA's log-mel of 8.18 s, Adam 1e-4 decayed x 0.99 per epoch,
64 epochs, batch 64, gradient clipped to 1, the best validation epoch; docs/method.md §12).

No published ICBHI cycle figure: OPERA fine-tunes on ICBHI's recordings (COPD vs healthy).

    python tools/convert_opera.py --checkpoint=encoder-operaCT.ckpt --output=weights/opera_ct
    python -m resp_jax.sweep --config=configs/opera_ce.py --config.data.root=ICBHI \
        --config.model.init_from=weights/opera_ct --workdir=runs/opera-ce

`:quick`: a tiny HTS-AT from scratch on the synthetic default (`htsat_recipes.htsat_quick`).
"""

import pathlib
import runpy

_here = pathlib.Path(__file__).parent
_base = runpy.run_path(str(_here / "base.py"))
_htsat = runpy.run_path(str(_here / "htsat_recipes.py"))


def get_config(arg=None):
    config = _htsat["opera_recipe"](_base["get_config"](arg), arg)
    config.method = "ce"
    config.loss.heads = ()
    return config
