"""M-SCL on AST (beyond the paper and Patch-Mix): the paper's class 0.75 / sex x age 0.25
heads, each with its own projector, on the AudioSet AST with Patch-Mix's fine-tuning recipe
(`base.ast_recipe`: 50 pretraining epochs, batch 8, Adam 5e-5, weights averaged with the
previous step's), then the paper's linear evaluation on the frozen encoder: 100 epochs, Adam
lr 0.1, CE weighted by 1 / class frequency on ICBHI and unweighted on SPRSound, as the M-SCL
code's linear stage ([mscl] main.py:95-106,121; `loss.class_weighted` left to the dataset).

No published figure: the new row, to compare with AST fine-tuning (Score 59.55), Patch-Mix CL
(62.37) and M-SCL on CNN6 (58.04).

SupCon's two views are two draws of the recipe's SpecAugment (Patch-Mix's policy, per example;
`:quick` has none: its views are the same clip, docs/fidelity.md). The position embedding
follows AST (`model.pos_embed='ast'`); `--config.model.pos_embed=patchmix_code` gives the
Patch-Mix code's. A `resp_jax.sweep` runs seeds 0-4 (`sweep_seeds`).

    python -m resp_jax.main --config=configs/ast_mscl.py --config.data.root=ICBHI \
        --config.model.init_from=weights/ast_audioset --workdir=runs/ast-mscl

`:quick`: a tiny AST from scratch on the synthetic default (`base.ast_quick`). Tiny models:
--config.model.width=64 --config.model.depth=2 --config.model.heads=4.
"""

import pathlib
import runpy

_base = runpy.run_path(str(pathlib.Path(__file__).with_name("base.py")))


def get_config(arg=None):
    config = _base["ast_recipe"](_base["get_config"](arg), arg)
    config.method = "mscl"
    config.loss.heads = (("label", 0.75), ("sex+age_group", 0.25))
    return config
