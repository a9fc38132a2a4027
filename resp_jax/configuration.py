"""The experiment config, resolved and checked in one place when a run starts.

configs/base.py leaves dataset- and init-dependent fields as None; `resolve` fills them from
the dataset's `Source` (`data.name`) and `model.init_from` (docs/method.md §4-5) and checks
every field against the allowed values, which each live with the code that uses them and are
imported here, so `config.json` records what actually ran and a bad value fails before any
data is read.
`check_resume` guards a run directory against resuming with another config.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import jax
import ml_collections

from resp_jax import (bts, evaluation, linear_eval, logging_utils, losses, models, optim,
                      selection)
from resp_jax.data import audio, feature_store, features, metadata, pipeline, sources

# What differs between datasets (docs/method.md §4, §5: epochs, class weighting) is each
# Source's; the normalisation constants are the same for all (the reference reuses ICBHI's)
# and live in configs/base.py.
LR_PRETRAINED = 1e-4   # fine-tuning AudioSet weights
LR_SCRATCH = 1e-3

ONE_STAGE = ("ce", "hybrid", "patchmix_cl", "pafa", "bts")
TWO_STAGE = ("scl", "simclr", "mscl", "linear_probe")
NO_HEADS = ("ce", "linear_probe", "bts")  # methods without contrastive heads
# 'bts': CE on the audio encoder's and a text tower's outputs, the text each cycle's
# metadata as a sentence (BTS, docs/method.md §14; resp_jax.bts).
# 'linear_probe': no first stage; the second stage's linear classifier sits on the frozen
# encoder of model.init_from (OPERA's benchmark protocol, docs/method.md §12).
METHODS = ONE_STAGE + TWO_STAGE
INSTANCE = losses.INSTANCE
PATIENT = metadata.PATIENT  # pseudo-field: the patient ids of a split (PAFA's head)


def _choice(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"config.{name} must be one of {tuple(allowed)}, got {value!r}")


def _positive(name: str, value) -> None:
    if not value > 0:
        raise ValueError(f"config.{name} must be > 0, got {value!r}")


heads = losses.heads  # the contrastive heads of a config, checked


def fields(config) -> tuple[str, ...]:
    """Metadata fields the pipeline must deliver per example (the heads' fields, BTS's
    sentence fields, 'label' always and 'instance' never)."""
    out = ["label"]
    wanted = [f for f, _ in heads(config)]
    if config.method == "bts":
        wanted += list(config.bts.fields)
    for f in wanted:
        if f != INSTANCE and f not in out:
            out.append(f)
    return tuple(out)


def is_two_stage(config) -> bool:
    return config.method in TWO_STAGE


def resolve(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A checked copy of ``config`` with every placeholder filled in."""
    config = copy.deepcopy(config)  # field types (and placeholders' types) kept
    name = config.data.name
    _choice("data.name", name, sources.NAMES)
    _choice("method", config.method, METHODS)
    _choice("eval.selection", config.eval.selection, selection.PROTOCOLS)
    _choice("train.schedule", config.train.schedule, optim.SCHEDULES)
    _choice("loss.denominator", config.loss.denominator, losses.DENOMINATORS)
    _choice("data.pad", config.data.pad, audio.PAD_MODES)
    _choice("data.resampler", config.data.resampler, audio.RESAMPLERS)
    _choice("data.fade", config.data.fade, audio.FADE_MODES)
    _choice("data.norm", config.data.norm, pipeline.NORMS)
    _choice("model.dtype", config.model.dtype, models.DTYPES)
    _choice("model.name", config.model.name, tuple(models.BACKBONES))
    _choice("linear_eval.features", config.linear_eval.features, linear_eval.FEATURES)
    _choice("augment.apply_per", config.augment.apply_per, pipeline.APPLY_PER)
    _choice("augment.policy", config.augment.policy, pipeline.POLICIES)
    _choice("augment.fill", config.augment.fill, pipeline.FILLS)
    if config.augment.policy == "patchmix" and config.augment.fill != "mean":
        raise ValueError("config.augment.fill must be 'mean' with augment.policy='patchmix' "
                         "(the Patch-Mix code fills its masks with the example's mean)")
    _choice("data.frontend", config.data.frontend, features.FRONTENDS)
    _choice("model.proj_pool", config.model.get("proj_pool", "mean"), models.heads.POOLS)
    if features.fixed_norm(config.data.frontend) is not None and config.data.norm != "reference":
        raise ValueError("config.data.norm='dataset' is for CNN6's log-mel features; the other "
                         "front ends are normalised with their models' constants (keep "
                         "'reference')")
    feature_store.check_sample_rate(config.data.frontend, config.data.sample_rate)
    warm = config.train.get("warmup_epochs", 0)
    if isinstance(warm, bool) or not isinstance(warm, int) or warm < 0:
        raise ValueError(f"config.train.warmup_epochs must be an int >= 0, got {warm!r}")
    if not config.data.get("wave_scale", 1.0) > 0:
        raise ValueError(f"config.data.wave_scale must be > 0, got {config.data.wave_scale!r}")
    if config.model.get("proj_bn") and config.model.get("proj_ln"):
        raise ValueError("config.model.proj_bn and proj_ln: a projector has one norm, not both")
    if config.model.get("init_run"):
        inherit_encoder(config)
    if config.method == "linear_probe" and not (config.model.init_from
                                                or config.model.get("init_run")):
        raise ValueError("method 'linear_probe' measures a trained encoder: pass converted "
                         "weights (--config.model.init_from=DIR) or a finished run "
                         "(--config.model.init_run=WORKDIR, e.g. of configs/opera_mscl.py:quick)")
    hook = getattr(models.backbone(config.model.name), "resolve", None)
    if hook is not None:  # the backbone's own placeholders (AST: model.layer_norm_eps)
        hook(config)
    for field in ("proj_hidden", "proj_out"):
        if config.model[field] is None:
            raise ValueError(f"config.model.{field} must be set for model "
                             f"{config.model.name!r}")

    source = sources.get(name)
    if config.method == "linear_probe":
        config.train.epochs = 0  # the encoder is never trained
    if config.train.epochs is None:
        config.train.epochs = source.epochs
    if config.loss.class_weighted is None:
        config.loss.class_weighted = source.class_weighted
    if config.train.lr is None:
        pretrained = config.model.init_from or config.model.get("init_run")
        config.train.lr = LR_PRETRAINED if pretrained else LR_SCRATCH
    # The protocol (docs/method.md §13): a choice of splits, its held-out value, its classes.
    try:
        protocol = source.protocol(config.data.protocol)
    except ValueError as e:
        raise ValueError(f"config.data.protocol: {e}") from None
    if protocol.held_out_field:
        _choice(f"data.held_out (the {protocol.held_out_field} that protocol "
                f"{protocol.name!r} holds out)", config.data.held_out, protocol.held_out_values)
    elif config.data.held_out:
        raise ValueError(f"config.data.held_out={config.data.held_out!r} names what a "
                         f"leave-one-out protocol holds out; protocol {protocol.name!r} holds "
                         "nothing out: leave it ''")
    # Classes, metadata fields and splits: fixed, or read from the data (a manifest's CSV);
    # recorded here so config.json says what every code meant.
    schema, splits, normal = source.describe(config.data.root, config.data.classes,
                                             config.data.normal_class, protocol=protocol.name)
    config.data.classes = schema.classes
    config.data.normal_class = normal
    config.data.fields = schema.to_config()
    evaluation.columns(schema)  # a manifest column may not take a predictions-file column
    if "train" not in splits:
        raise ValueError(f"{config.data.root}: no 'train' split (splits found: "
                         f"{', '.join(splits) or 'none'}); training needs one")
    splits = source.protocol_split_names(splits, protocol.name, config.data.held_out)
    if config.data.test_split is None:
        config.data.test_split = (protocol.test_split(config.data.held_out)
                                  or source.test_split_of(splits))
    _choice("data.test_split", config.data.test_split, [s for s in splits if s != "train"])
    if config.eval.selection == "val" and selection.VAL_SPLIT in splits:
        raise ValueError(f"{config.data.root} has a split named {selection.VAL_SPLIT!r}, and "
                         "eval.selection='val' carves its own from 'train': rename that split")

    for key in ("train.epochs", "train.batch_size", "train.lr", "linear_eval.batch_size",
                "eval.batch_size", "data.duration", "loss.temperature", "train.log_every",
                "eval.bootstrap_resamples"):
        section, field = key.split(".")
        if key != "train.epochs" or config.method != "linear_probe":
            _positive(key, config[section][field])
    if is_two_stage(config):
        _positive("linear_eval.epochs", config.linear_eval.epochs)
    if not 0 < config.eval.val_fraction < 1:
        raise ValueError(f"config.eval.val_fraction must lie in (0, 1), got "
                         f"{config.eval.val_fraction!r}")
    if not 0 <= config.loss.alpha <= 1:
        raise ValueError(f"config.loss.alpha must lie in [0, 1], got {config.loss.alpha!r}")
    if not 0 <= config.train.weight_average < 1:
        raise ValueError(f"config.train.weight_average must lie in [0, 1), got "
                         f"{config.train.weight_average!r}")
    if not config.loss.mix_beta >= 0:
        raise ValueError(f"config.loss.mix_beta must be >= 0, got {config.loss.mix_beta!r}")

    hs = heads(config)
    if config.method in NO_HEADS and hs and config.method != "ce":
        raise ValueError(f"method {config.method!r} has no contrastive heads; set "
                         "config.loss.heads=()")
    if config.method not in NO_HEADS and not hs:
        raise ValueError(f"method {config.method!r} needs at least one contrastive head in "
                         "config.loss.heads, e.g. (('label', 1.0),)")
    names = [f for f, _ in hs]
    if len(set(names)) != len(names):
        raise ValueError(f"config.loss.heads names a field twice: {names}")
    if config.method == "simclr" and names != [INSTANCE]:
        raise ValueError(f"method 'simclr' uses the single head ({INSTANCE!r}, 1.0), got {names}")
    if config.method == "patchmix_cl":
        _check_patchmix(config, names)
    _check_pafa(config, names)
    if config.method == "bts":
        bts.resolve(config)
    if config.method == "hybrid" and INSTANCE in names:
        raise ValueError("method 'hybrid' combines CE with supervised heads; 'instance' "
                         "belongs to 'simclr'")
    try:
        metadata.check_fields(schema, [f for f in names if f not in (INSTANCE, PATIENT)])
    except KeyError as e:
        raise ValueError(f"config.loss.heads: {e.args[0]}") from None
    return config


# What the encoder of model.init_run was trained on must be what this run feeds it.
SAME_AS_INIT_RUN = ("model.name", "data.frontend", "data.sample_rate")


def _tuples(value):
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def _fill(ours: ml_collections.ConfigDict, theirs) -> None:
    """Every placeholder (None) of ``ours`` takes ``theirs``' value (nested sections too)."""
    for key, value in ours.items():
        if key not in theirs:
            continue
        if isinstance(value, ml_collections.ConfigDict):
            _fill(value, theirs[key])
        elif value is None and theirs[key] is not None:
            ours[key] = _tuples(theirs[key])


def inherit_encoder(config) -> None:
    """``model.init_run``: a finished run whose selected encoder starts this run. It must
    have this run's backbone and front end (`SAME_AS_INIT_RUN`); every ``model.*``
    placeholder left None takes the run's resolved value (its architecture), so the probe of
    a run needs no architecture flags. Not with ``model.init_from``."""
    from resp_jax import run_files

    m = config.model
    if m.init_from:
        raise ValueError(f"config.model.init_from ({m.init_from}) and model.init_run "
                         f"({m.init_run}) both name a starting encoder; set one")
    run = run_files.run_config(m.init_run)
    for key in SAME_AS_INIT_RUN:
        section, field = key.split(".")
        theirs, ours = run[section].get(field), config[section][field]
        if theirs is not None and theirs != ours:  # (runs before data.frontend: log-mel)
            raise ValueError(f"config.model.init_run={m.init_run}: that run's {key} is "
                             f"{theirs!r}, this config's {ours!r}: its encoder reads other "
                             "inputs")
    _fill(m, run.model)


def _check_patchmix(config, names) -> None:
    """Patch-Mix CL mixes AST patch tokens and contrasts projections with the encoder's own
    features, so it needs an AST, one head and a projector as wide as the encoder."""
    if config.model.name != "ast":
        raise ValueError(f"method 'patchmix_cl' mixes AST patch tokens; config.model.name must "
                         f"be 'ast', got {config.model.name!r}")
    if names != [INSTANCE]:
        raise ValueError(f"method 'patchmix_cl' uses the single head ({INSTANCE!r}, weight of "
                         f"the Patch-Mix loss), got {names}")
    if config.model.proj_out != config.model.width:
        raise ValueError(f"method 'patchmix_cl' compares projections with the encoder features: "
                         f"config.model.proj_out ({config.model.proj_out}) must equal "
                         f"config.model.width ({config.model.width})")


def _check_pafa(config, names) -> None:
    """PAFA aligns the projections of each patient: one head, the patient pseudo-field; its
    projector's attention pooling needs an encoder that returns its tokens."""
    if config.method == "pafa":
        if names != [PATIENT]:
            raise ValueError(f"method 'pafa' uses the single head ({PATIENT!r}, weight of the "
                             f"PAFA loss), got {names}")
        for key in ("pafa_pcsl", "pafa_gpal"):
            if not config.loss[key] >= 0:
                raise ValueError(f"config.loss.{key} must be >= 0, got {config.loss[key]!r}")
    if config.model.get("proj_pool", "mean") != "attention":
        return
    if config.method != "pafa":
        raise ValueError("config.model.proj_pool='attention' is PAFA's projector (method "
                         f"'pafa'), got method {config.method!r}")
    if not getattr(models.backbone(config.model.name), "TOKENS", False):
        raise ValueError(f"config.model.proj_pool='attention' pools an encoder's tokens; "
                         f"model {config.model.name!r} returns pooled features only ('beats' "
                         "returns its tokens)")


# Fields a resumed run may change: they do not affect training (the bootstrap runs at the end).
RESUME_MAY_CHANGE = ("train.log_every", "sweep_seeds", "eval.bootstrap_resamples")
# Fields added since runs began recording config.json: a run recorded without them resumes.
ADDED_SINCE = ("data.classes", "data.normal_class", "data.fields", "data.frontend", "augment.policy",
               "augment.fill",
               "model.width", "model.depth", "model.heads", "model.dropout",
               "model.attention_dropout", "model.drop_path", "model.layer_norm_eps",
               "model.proj_bn", "model.classifier_norm", "loss.mix_beta",
               "train.weight_average", "model.pos_embed", "model.attention",
               "model.remat", "data.wave_scale", "model.proj_ln", "model.proj_pool",
               "loss.pafa_pcsl", "loss.pafa_gpal", "train.warmup_epochs",
               "model.fstride", "model.tstride", "model.pool", "train.lr_decay",
               "train.clip_norm", "train.head_weight_decay", "linear_eval.lr_decay",
               "linear_eval.clip_norm", "model.init_run", "data.protocol",
               "data.held_out")
# Fields added since whose default changed what a run computes: a run recorded without one
# resumes only with the value it ran with.
ADDED_WITH = {"data.resampler": "soxr", "data.fade": "cycle"}


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def check_resume(workdir: Path, config, resuming: bool) -> None:
    """Writes config.json; a resumed run must have the same config as the one it resumes."""
    path = workdir / "config.json"
    current = json.loads(config.to_json())
    if resuming and path.exists():
        old, new = _flat(json.loads(path.read_text())), _flat(current)
        diff = sorted(k for k in old.keys() | new.keys()
                      if old.get(k) != new.get(k) and k not in RESUME_MAY_CHANGE
                      and not (k in ADDED_SINCE and k not in old)
                      and not (k not in old and new.get(k) == ADDED_WITH.get(k, ())))
        if diff:
            before = [f"--config.{k}={ADDED_WITH[k]}" for k in diff
                      if k in ADDED_WITH and k not in old]
            raise ValueError(f"{workdir} holds a run with a different config (differs in "
                             f"{', '.join(diff)}); resume with the same config"
                             + (f" (it ran before these fields existed: {' '.join(before)})"
                                if before else "") + " or use a new --workdir")
    if jax.process_index() == 0:
        logging_utils.write_json(path, current)
