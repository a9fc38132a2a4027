"""Experiment configs: they load, resolve the dataset defaults, and take command-line overrides."""

import json
import statistics

import pytest
from absl import flags
from ml_collections import config_flags

from resp_jax import configuration
from train_helpers import CONFIGS, EXPERIMENTS, load_config

REQUIRED = ("data.name", "data.root", "data.duration", "data.pad", "model.channels",
            "model.layout", "model.init_from", "train.epochs", "train.batch_size", "train.lr",
            "train.seed", "linear_eval.epochs", "eval.selection")


def _get(config, dotted):
    for part in dotted.split("."):
        config = config[part]
    return config


def _parse(argv):
    """Parses argv with a fresh flag set, exactly as resp_jax.main does."""
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=values, lock_config=True,
                                    sys_argv=argv)
    values(argv)
    return values.config


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_resolves_on_both_datasets(name):
    for dataset, epochs, weighted, test_split in (("icbhi", 400, True, "test"),
                                                  ("sprsound", 200, False, "inter_test")):
        config = load_config(name, dataset)
        for field in REQUIRED:
            _get(config, field)  # exists
        resolved = configuration.resolve(config)
        assert resolved.data.name == dataset
        assert resolved.train.epochs == epochs
        assert resolved.loss.class_weighted is weighted
        assert resolved.data.test_split == test_split
        assert resolved.train.lr == 1e-3  # from scratch
        json.loads(resolved.to_json())  # config.json is writable
        assert config.train.epochs is None  # resolve copies; the original keeps placeholders


def test_experiment_heads_are_the_papers():
    heads = {name: tuple(load_config(name).loss.heads) for name in EXPERIMENTS}
    assert load_config("ce").method == "ce"
    assert heads["scl"] == (("label", 1.0),) and load_config("scl").method == "scl"
    assert heads["hybrid"] == (("label", 1.0),) and load_config("hybrid").method == "hybrid"
    assert heads["simclr"] == (("instance", 1.0),)
    assert heads["scl_meta"] == (("sex+age_group", 1.0),)
    assert heads["scl_composite"] == (("sex+age_group+label", 1.0),)
    assert heads["mscl"] == (("label", 0.75), ("sex+age_group", 0.25))
    assert load_config("mscl").method == "mscl"


def test_paper_defaults():
    c = load_config("mscl")
    assert (c.train.batch_size, c.train.weight_decay, c.loss.temperature, c.loss.alpha) == \
        (128, 1e-4, 0.06, 0.5)
    assert (c.train.schedule, c.train.cosine_t_max, c.train.eta_min) == \
        ("periodic_cosine", 40, 1e-6)
    assert (c.linear_eval.epochs, c.linear_eval.lr, c.linear_eval.weight_decay) == \
        (100, 0.1, 1e-4)
    # SpecAugment applies when 1 > a standard normal draw: P(Z < 1), not a rounded value.
    assert (c.data.duration, c.data.norm_mean, c.data.norm_std, c.augment.prob) == \
        (8.0, 0.3690, 0.0255, statistics.NormalDist().cdf(1.0))
    assert (c.augment.policy, c.augment.fill, c.augment.apply_per) == ("reference", "min", "batch")
    assert c.model.channels == (64, 128, 256, 512) and c.model.bn_per_view
    assert c.eval.selection == "test_best" and c.loss.denominator == "all"


RECIPES = EXPERIMENTS + ("ast_ce", "ast_patchmix_cl", "ast_mscl", "beats_ce", "beats_pafa",
                        "beats_mscl", "clap_ce", "opera_ce", "opera_mscl")


@pytest.mark.parametrize("name", RECIPES)
def test_every_recipe_prepares_audio_as_its_authors_code(name):
    """The SCL, Patch-Mix, PAFA and BTS codes resample with torchaudio's default windowed
    sinc, OPERA with librosa's soxr_hq; the SCL code fades each cycle (faded seams when
    padded), Patch-Mix, PAFA and BTS fade the recording and repeat unfaded cycles (hard
    seams). Their SpecAugment applies with P(Z < 1). docs/fidelity.md."""
    for arg in (None, "quick"):
        c = load_config(name, arg)
        fade = "recording" if name.startswith(("ast_", "beats_", "clap_")) else "cycle"
        resampler = "soxr" if name.startswith("opera_") else "torchaudio"
        assert (c.data.resampler, c.data.fade, c.data.pad) == (resampler, fade, "circular")
        # SpecAugment, where a recipe has it, as the references draw it: 1 > N(0, 1).
        assert c.augment.prob in (0.0, statistics.NormalDist().cdf(1.0)), c.augment.prob


def test_pretrained_weights_lower_the_learning_rate():
    config = load_config("scl")
    config.model.init_from = "/weights/cnn6"
    assert configuration.resolve(config).train.lr == 1e-4
    config.train.lr = 3e-4  # an explicit rate wins
    assert configuration.resolve(config).train.lr == 3e-4


def test_quick_preset_and_arguments_combine():
    config = load_config("mscl", "quick,sprsound")
    assert config.data.name == "sprsound"
    assert config.train.epochs < 50 and config.data.duration < 8
    assert config.model.channels[-1] < 512 and config.train.batch_size < 128
    assert config.method == "mscl"
    with pytest.raises(ValueError, match="unknown config argument 'fast'"):
        load_config("mscl", "fast")


def test_command_line_overrides():
    config = _parse(["prog", f"--config={CONFIGS}/mscl.py:quick",
                     "--config.train.epochs=7", "--config.data.name=sprsound",
                     "--config.model.channels=(4,8,8,16)",
                     "--config.loss.heads=(('label',0.25),('sex+age_group',0.75))",
                     "--config.train.lr=0.002"])
    assert config.train.epochs == 7 and config.train.lr == 0.002
    assert config.model.channels == (4, 8, 8, 16)
    assert config.loss.heads == (("label", 0.25), ("sex+age_group", 0.75))
    resolved = configuration.resolve(config)
    assert resolved.data.name == "sprsound" and not resolved.loss.class_weighted


def test_command_line_rejects_unknown_fields_and_wrong_types():
    with pytest.raises(AttributeError, match='Did you mean "epochs"'):
        _parse(["prog", f"--config={CONFIGS}/ce.py", "--config.train.epoch=3"])
    with pytest.raises(flags.Error, match="batch_size"):
        _parse(["prog", f"--config={CONFIGS}/ce.py", "--config.train.batch_size=big"])


@pytest.mark.parametrize("field, value, message", [
    ("method", "byol", "config.method must be one of"),
    ("data.name", "esc50", "config.data.name must be one of"),
    ("eval.selection", "best", "config.eval.selection must be one of"),
    ("train.schedule", "step", "config.train.schedule must be one of"),
    ("loss.heads", (("label", 1.0), ("label", 0.5)), "names a field twice"),
    ("loss.heads", (("weight", 1.0),), "metadata field 'weight'"),
    ("loss.heads", (("label", 0.5), ("devise", 0.5)),
     "config.loss.heads: metadata field 'devise' is not defined for dataset 'icbhi'"),
    # --config.loss.heads="(('label', 0.5))" is one pair, not a tuple of pairs.
    ("loss.heads", ("label", 0.5), r"config.loss.heads\[0\] is 'label'; expected .*pairs"),
    ("loss.heads", (("label", 0.5), ("mode",)), r"config.loss.heads\[1\] is \('mode',\)"),
    ("loss.heads", (("label", -0.5),), "weight -0.5 of head 'label' is not a number >= 0"),
    ("loss.heads", (("label", "x"),), "weight 'x' of head 'label'"),
    ("train.batch_size", 0, "config.train.batch_size must be > 0"),
    ("eval.val_fraction", 1.5, "val_fraction must lie in"),
    ("augment.fill", "zero", "config.augment.fill must be one of"),
    ("data.resampler", "scipy", "config.data.resampler must be one of"),
    ("data.fade", "none", "config.data.fade must be one of"),
    ("augment.policy", "patchmix", "augment.fill must be 'mean' with augment.policy='patchmix'"),
])
def test_bad_values_fail_before_running(field, value, message):
    config = load_config("mscl")
    section, _, key = field.rpartition(".")
    target = config[section] if section else config
    target[key] = value
    with pytest.raises((ValueError, KeyError), match=message):
        configuration.resolve(config)


def test_any_metadata_field_is_a_head_from_the_config_alone():
    config = load_config("mscl_device_location")
    config.loss.heads = (("label", 0.5), ("mode", 0.25), ("diagnosis", 0.25))
    resolved = configuration.resolve(config)
    assert configuration.heads(resolved) == (("label", 0.5), ("mode", 0.25), ("diagnosis", 0.25))
    assert configuration.fields(resolved) == ("label", "mode", "diagnosis")
    spr = load_config("mscl_device_location", "sprsound")
    assert configuration.fields(configuration.resolve(spr)) == ("label", "location")
    spr.loss.heads = (("label", 0.5), ("device", 0.5))  # SPRSound records no device
    with pytest.raises(ValueError, match="config.loss.heads: metadata field 'device' is not "
                                         "defined for dataset 'sprsound'; expected one of "
                                         r"\['label', 'sex', 'age_group', 'location'\]"):
        configuration.resolve(spr)


def test_fields_the_pipeline_delivers():
    assert configuration.fields(configuration.resolve(load_config("mscl"))) == ("label", "sex+age_group")
    assert configuration.fields(configuration.resolve(load_config("simclr"))) == ("label",)
    assert configuration.fields(configuration.resolve(load_config("ce"))) == ("label",)


def test_runs_recorded_before_the_preparation_fields_resume_only_as_they_ran(tmp_path):
    """A run recorded before data.resampler and data.fade existed was prepared with soxr and
    per-cycle fades: it resumes with those, not silently on other inputs."""
    config = configuration.resolve(load_config("beats_ce"))
    old = json.loads(config.to_json())
    del old["data"]["resampler"], old["data"]["fade"]
    (tmp_path / "config.json").write_text(json.dumps(old))
    with pytest.raises(ValueError, match=r"differs in data.fade, data.resampler.*"
                                         r"--config.data.fade=cycle --config.data.resampler=soxr"):
        configuration.check_resume(tmp_path, config, resuming=True)
    config.data.resampler, config.data.fade = "soxr", "cycle"
    configuration.check_resume(tmp_path, config, resuming=True)
