"""CLAP's audio tower fine-tuned with cross-entropy: BTS's "Audio-CLAP" baseline
(kaen2891/bts, Interspeech 2024, Table 2), laion/clap-htsat-unfused's HTS-AT audio tower and
projection trained end to end on BTS's recipe (`htsat_recipes.clap_recipe`: 48 kHz, CLAP's
log-mel, Adam 5e-5, 50 epochs, batch 8, weight average 0.5; docs/method.md §12).

    python tools/convert_clap.py --checkpoint=clap-htsat-unfused/ --output=weights/clap
    python -m resp_jax.sweep --config=configs/clap_ce.py --config.data.root=ICBHI \
        --config.model.init_from=weights/clap --workdir=runs/clap-ce

`:quick`: a tiny HTS-AT from scratch on the synthetic default (`htsat_recipes.htsat_quick`).
"""

import pathlib
import runpy

_here = pathlib.Path(__file__).parent
_base = runpy.run_path(str(_here / "base.py"))
_htsat = runpy.run_path(str(_here / "htsat_recipes.py"))


def get_config(arg=None):
    config = _htsat["clap_recipe"](_base["get_config"](arg), arg)
    config.method = "ce"
    config.loss.heads = ()
    return config
