"""AST fine-tuning: the baseline of Patch-Mix CL (Bae et al., Interspeech 2023, Table 1), the
AudioSet-pretrained AST trained with cross-entropy only, with the arguments of the authors'
scripts/icbhi_ce.sh: Patch-Mix's recipe (`base.ast_recipe`: Adam 5e-5, 50 epochs, batch 8,
8 s clips, 128 fbank bins, weights averaged with the previous step's, --ma_update --ma_beta
0.5) with CE weighted by 1 / class frequency (--weighted_loss, [pm] main.py:261-269);
docs/method.md §9.

Published ICBHI (official split): Sp 77.14, Se 41.97, Score 59.55.

Position embedding: the default (`model.pos_embed='ast'`) gives each patch the AudioSet
embedding of its own (frequency, time) place, as AST does; the authors' code gives it the
transposed grid's scrambled one. To reproduce the authors' run add
`--config.model.pos_embed=patchmix_code` (docs/fidelity.md). The authors ran seed 1 only; a
`resp_jax.sweep` of this config runs seeds 0-4 (`sweep_seeds`).

    python -m resp_jax.main --config=configs/ast_ce.py --config.data.root=ICBHI \
        --config.model.init_from=weights/ast_audioset --workdir=runs/ast-ce

`:quick`: a tiny AST from scratch on the synthetic default (`base.ast_quick`). Tiny models:
--config.model.width=64 --config.model.depth=2 --config.model.heads=4.
"""

import pathlib
import runpy

_base = runpy.run_path(str(pathlib.Path(__file__).with_name("base.py")))


def get_config(arg=None):
    config = _base["ast_recipe"](_base["get_config"](arg), arg)
    config.method = "ce"
    config.loss.heads = ()
    config.loss.class_weighted = True  # --weighted_loss: CE weighted by 1 / class frequency
    return config
