"""BTS (resp_jax.bts, docs/method.md §14): the authors' sentences, the prompt table and its
file, the config, the model's features and step, and a tiny run end to end with predict.
The text tower against transformers and the converter: tests/test_clap_text.py."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

from resp_jax import bts, configuration, finished_run
from resp_jax.data import metadata
from resp_jax.models import htsat
from resp_jax.models.heads import inputs
from train_helpers import load_config


def test_sentences_are_the_authors_template():
    """[bts] util/meta_description.py:6-69 with util/icbhi_util.py:136-171's words: the
    sentence of every combination of the four fields, the subsets (--meta_mode) and unknowns."""
    s = metadata.schema("icbhi")
    table = bts.sentences(s, bts.FIELDS)
    assert len(table) == 3 * 3 * 8 * 5 and table[0] == bts.NO_DESCRIPTION
    spoken = bts.words(s)
    assert spoken["location"]["Al"] == "left anterior chest"
    assert spoken["device"]["AKGC417L"] == "AKGC417L microphone"
    cases = [
        (dict(age_group="adult", sex="male", location="left anterior chest",
              device="Meditron stethoscope"),
         "This sound was recorded from the left anterior chest of an adult male patient, "
         "using a Meditron stethoscope."),
        (dict(age_group="pediatric", sex="female", location="trachea",
              device="AKGC417L microphone"),
         "This sound was recorded from the trachea of a female pediatric patient, using an "
         "AKGC417L microphone."),
        (dict(age_group=None, sex="female", location="trachea", device="Litt3200 stethoscope"),
         "This sound was recorded from the trachea of a female patient with unknown age, "
         "using a Litt3200 stethoscope."),
        (dict(age_group="adult", sex="male", location=None, device=None),
         "This sound was recorded from an unknown region of an adult male patient, using an "
         "unknown device."),
        (dict(age_group=None, sex=None, location="trachea", device="Meditron stethoscope"),
         "This sound was recorded from the trachea with a Meditron stethoscope."),
    ]
    for values, want in cases:
        assert bts.sentence(values) == want
    assert bts.sentence(dict(age_group="adult", sex="male"), ("age_group", "sex")) == \
        "This patient is an adult male patient."
    assert bts.sentence(dict(sex=None, device="Meditron stethoscope"), ("sex", "device")) == \
        "This sound was recorded from a patient of unknown sex, using a Meditron stethoscope."
    assert bts.sentence(dict(device=None), ("device",)) == \
        "This sound was recorded with an unknown device."
    assert bts.sentence({}, ("sex", "device")) == bts.NO_DESCRIPTION


def _prompts(fields=bts.FIELDS, length=32):
    config = load_config("clap_bts", "quick")
    config.bts.update(fields=fields, max_length=length)
    config = configuration.resolve(config)
    return config, bts.build_prompts(config)


def test_prompt_rows_tokens_and_file(tmp_path):
    config, p = _prompts()
    s = metadata.schema("icbhi")
    spoken = bts.words(s)
    codes = np.array([[0, 1, 2, 3], [-1, 0, -1, 1], [-1, -1, -1, -1]])
    rows = np.asarray(p.rows(codes))
    for row, c in zip(rows, codes):
        values = {f: None if k < 0 else spoken[f][s.vocab(f)[k]] for f, k in zip(p.fields, c)}
        assert p.sentences[row] == bts.sentence(values)
    # word tokens: <s> words </s>, then padding; one id per word or mark
    tok = bts.WordTokenizer(p.sentences)
    first = p.ids[rows[0]][:int(p.mask[rows[0]].sum())]
    words = bts.WordTokenizer.split(p.sentences[rows[0]])
    assert first[0] == 0 and first[-1] == 2 and len(first) == len(words) + 2
    assert [tok.vocab[w] for w in words] == list(first[1:-1])
    assert (p.ids[rows[0]][len(first):] == 1).all() and config.model.text.vocab_size == len(tok)
    # kept in the run directory once; read back without a tokenizer; another config refused
    bts.write_prompts(tmp_path, p)
    back = bts.prompts(config, tmp_path)
    assert back == p and hash(back) == hash(p)
    other = load_config("clap_bts", "quick")
    other.bts.fields = ("sex", "device")
    with pytest.raises(ValueError, match="other sentences"):
        bts.prompts(configuration.resolve(other), tmp_path)
    with pytest.raises(ValueError, match="more than bts.max_length=8"):
        bts.tokenize(p.sentences, "word", 8)


def test_config_checks(tmp_path):
    config = configuration.resolve(load_config("clap_bts"))
    assert (config.method, config.model.htsat.output, config.train.lr, config.bts.max_length) \
        == ("bts", "projection", 5e-5, 64)
    assert config.model.text.init_from == "" and config.model.text.hidden_size == 768
    assert configuration.fields(config) == ("label", "age_group", "sex", "location", "device")
    bad = load_config("clap_bts", "quick")
    bad.bts.fields = ("age_group", "diagnosis")
    with pytest.raises(ValueError, match="bts.fields must be distinct fields among"):
        configuration.resolve(bad)
    sprsound = load_config("clap_bts", "quick,sprsound")  # no device there
    with pytest.raises(ValueError, match="bts.fields: metadata field 'device'"):
        configuration.resolve(sprsound)
    sprsound.bts.fields = ("age_group", "sex", "location")
    assert configuration.resolve(sprsound).bts.fields == ("age_group", "sex", "location")
    # :quick after a finished clap_ce:quick run (model.init_run: its audio tower, the text
    # tower from scratch)
    run = tmp_path / "clap_ce_run"
    run.mkdir()
    (run / "config.json").write_text(configuration.resolve(load_config("clap_ce", "quick"))
                                     .to_json())
    (run / "results.json").write_text("{}")
    quick = load_config("clap_bts", "quick")
    quick.model.init_run = str(run)
    quick = configuration.resolve(quick)
    assert (quick.method, quick.model.text.init_from, quick.model.text.hidden_size) == \
        ("bts", "", 32)
    audio_only = {**htsat.ARCH_DEFAULTS, "depths": [2, 2, 6, 2], "heads": [4, 8, 16, 32],
                  "projection_dim": 512, "architecture": "htsat", "format": 1}
    (tmp_path / "encoder.json").write_text(json.dumps(audio_only))  # an older conversion
    missing = load_config("clap_bts")
    missing.model.init_from = str(tmp_path)
    with pytest.raises(FileNotFoundError, match="holds no CLAP text tower"):
        configuration.resolve(missing)


def _tiny_cnn6_bts(**overrides):
    """BTS on a tiny CNN6 with 1 s log-mel clips and the quick text tower (dropout off)."""
    config = load_config("clap_bts", "quick")
    config.model.update(name="cnn6", channels=(4, 8, 8, 16), dropout=0.0)
    config.model.text.update(dropout=0.0, attention_dropout=0.0)
    config.data.update(frontend="logmel", sample_rate=16000, duration=1.0)
    config.bts.max_length = 32
    config.train.update(batch_size=8, weight_average=0.0, log_every=2)
    for key, value in overrides.items():
        section, field = key.split("__")
        config[section][field] = value
    return configuration.resolve(config)


@pytest.mark.slow  # a tiny run (data, three epochs, the bootstrap) and predict
def test_tiny_bts_run_features_and_predict(tiny_icbhi, tmp_path):
    """A run trains (its loss falls), keeps its tokenised sentences, and its classifier sees
    [text ; audio], each L2-normalised, the text the sentence of each row's metadata;
    predict reads --metadata."""
    from resp_jax import predict, train

    config = _tiny_cnn6_bts(train__epochs=3, train__lr=1e-2)  # unit-norm features
    config.data.root, config.data.tfds_dir = str(tiny_icbhi["root"]), str(tiny_icbhi["tfds"])
    config.eval.bootstrap_resamples = 20
    train.train_and_evaluate(config, tmp_path / "run")
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    loss = [line["loss"] for line in lines if line.get("split") == "train"]
    assert len(loss) == 3 and loss[-1] < loss[0] - 0.02, loss
    held = json.loads((tmp_path / "run" / bts.PROMPTS_FILE).read_text())
    assert held["tokenizer"] == "word" and len(held["sentences"]) == 360
    run = finished_run.load(tmp_path / "run")
    model, variables, p = run.model, run.variables, run.model.text.prompts
    assert set(variables["params"]) == {"encoder", "text", "classifier"}
    rng = np.random.default_rng(0)
    batch = {"x": rng.normal(size=(8, 64, 101)).astype(np.float32),
             "age_group": np.array([0, 1, -1, 0, 1, 0, 0, 1], np.int32),
             "sex": np.array([0, 1, 0, -1, 1, 0, 1, 1], np.int32),
             "location": np.array([0, 1, 2, 3, 4, 5, 6, -1], np.int32),
             "device": np.array([0, 1, 2, 3, 0, 1, -1, 3], np.int32)}
    feats = model.apply(variables, batch["x"], False, method="encode", **inputs(model, batch))
    audio = model.encoder.apply({"params": variables["params"]["encoder"],
                                 "batch_stats": variables["batch_stats"]["encoder"]},
                                batch["x"], False)
    rows = p.rows(np.stack([batch[f] for f in p.fields], -1))
    text = bts.text_tower(run.config).apply({"params": variables["params"]["text"]["tower"]},
                                            p.ids[rows], p.mask[rows], False)
    unit = lambda z: z / jnp.linalg.norm(z, axis=-1, keepdims=True)  # noqa: E731
    np.testing.assert_allclose(feats, jnp.concatenate([unit(text), unit(audio)], -1),
                               atol=1e-5)
    with pytest.raises(ValueError, match="metadata sentence"):
        model.apply(variables, batch["x"], False, method="encode")
    txt = sorted((tiny_icbhi["root"] / "ICBHI_final_database").glob("*.txt"))[0]
    wav = str(txt.with_suffix(".wav"))
    meta = ["sex=F", "age_group=adult", "location=Tc", "device=Meditron"]
    one = predict.predict(run, [wav], [str(txt)], recompute=True, meta=meta)
    other = predict.predict(run, [wav], [str(txt)], recompute=True, meta=meta[:1])
    p1 = np.array([list(r["probabilities"].values()) for r in one])
    p2 = np.array([list(r["probabilities"].values()) for r in other])
    assert p1.shape == p2.shape and not np.allclose(p1, p2)  # the sentence changes the output
    with pytest.raises(ValueError, match="expected FIELD=VALUE"):
        predict.predict(run, [wav], [str(txt)], recompute=True, meta=["colour=red"])
    with pytest.raises(ValueError, match="is not one of"):
        predict.predict(run, [wav], [str(txt)], recompute=True, meta=["sex=X"])
