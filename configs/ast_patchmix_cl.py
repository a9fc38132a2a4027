"""Patch-Mix contrastive learning on AST (Bae et al., Interspeech 2023; docs/method.md §9):
CE on the clean features + 1.0 x the Patch-Mix contrastive loss (patches mixed with
lam ~ Beta(1, 1), temperature 0.06), a Linear-BatchNorm-ReLU-Linear projector as wide as the
encoder, weights averaged with the previous step's (0.5) after every step, unweighted CE (the
script has no --weighted_loss); Patch-Mix's recipe otherwise (`base.ast_recipe`,
[pm] scripts/icbhi_patchmix_cl.sh).

Published ICBHI (official split): Sp 81.66, Se 43.07, Score 62.37.

Position embedding: the default (`model.pos_embed='ast'`) gives each patch the AudioSet
embedding of its own (frequency, time) place, as AST does; the authors' code gives it the
transposed grid's scrambled one. To reproduce the authors' run add
`--config.model.pos_embed=patchmix_code` (docs/fidelity.md). The authors ran seed 1 only; a
`resp_jax.sweep` of this config runs seeds 0-4 (`sweep_seeds`).

    python -m resp_jax.main --config=configs/ast_patchmix_cl.py --config.data.root=ICBHI \
        --config.model.init_from=weights/ast_audioset --workdir=runs/ast-patchmix-cl

`:quick`: a tiny AST from scratch on the synthetic default (`base.ast_quick`). Tiny models:
--config.model.width=64 --config.model.depth=2 --config.model.heads=4 (the
projector follows model.width).
"""

import pathlib
import runpy

from ml_collections import config_dict

_base = runpy.run_path(str(pathlib.Path(__file__).with_name("base.py")))


def get_config(arg=None):
    config = _base["ast_recipe"](_base["get_config"](arg), arg)
    config.method = "patchmix_cl"
    config.loss.heads = (("instance", 1.0),)  # the Patch-Mix loss and its weight (alpha 1.0)
    config.loss.mix_beta = 1.0
    config.loss.temperature = 0.06
    # Linear(768, 768) -> BatchNorm1d -> ReLU -> Linear(768, 768); None = model.width
    config.model.proj_hidden = config_dict.placeholder(int)
    config.model.proj_out = config_dict.placeholder(int)
    config.model.proj_bn = True
    config.train.weight_average = 0.5  # --ma_update --ma_beta 0.5
    config.loss.class_weighted = False  # the script has no --weighted_loss
    return config
