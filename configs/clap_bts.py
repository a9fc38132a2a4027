"""BTS (kaen2891/bts, Interspeech 2024; docs/method.md §14): each cycle's patient metadata (age
group, sex, chest location, recording device) written as a sentence and read by CLAP's text
tower beside its audio tower; one Linear classifier on both towers' L2-normalised
projections, trained with CE on BTS's recipe (`htsat_recipes.bts_recipe`: 48 kHz, CLAP's
log-mel, Adam 5e-5, 50 epochs, batch 8, weight average 0.5).

    python tools/convert_clap.py --checkpoint=clap-htsat-unfused/ --output=weights/clap
    python -m resp_jax.sweep --config=configs/clap_bts.py --config.data.root=ICBHI \
        --config.model.init_from=weights/clap --workdir=runs/clap-bts

Needs each cycle's metadata at test time too (predict: --metadata). The sentences are
tokenised once when a run starts (with weights/clap/text's tokenizer: the `tokenizers`
package, pip install -e '.[text]') and kept in the run's prompts.json.

`:quick`: a tiny HTS-AT and a tiny text tower (2 layers, width 32) on the synthetic default,
the text tokenised by words (`htsat_recipes.htsat_quick`). As BTS fine-tunes a trained CLAP
audio tower, the preset starts its audio tower from a finished `clap_ce.py:quick` run (from
scratch, the tiny tower learns nothing here in 20 epochs: docs/benchmarks.md):

    python -m resp_jax.main --config=configs/clap_ce.py:quick --workdir=runs/clap-quick
    python -m resp_jax.main --config=configs/clap_bts.py:quick \
        --config.model.init_run=runs/clap-quick --workdir=runs/bts-quick
"""

import pathlib
import runpy

_here = pathlib.Path(__file__).parent
_base = runpy.run_path(str(_here / "base.py"))
_htsat = runpy.run_path(str(_here / "htsat_recipes.py"))


def get_config(arg=None):
    return _htsat["bts_recipe"](_base["get_config"](arg), arg)
