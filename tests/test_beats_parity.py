"""BEATs against the reference implementation's own outputs (docs/method.md §10).

tests/fixtures/beats/ was made once by tools/make_beats_fixtures.py, which imports
microsoft/unilm's beats/ code from a directory given to it (torch 2.13, torchaudio 2.11.1's
compliance/kaldi.py): a tiny random BEATs in the published {'cfg', 'model'} layout
(checkpoint.pt) and, in reference.npz, the reference's fbank of a fixed waveform (with and
without the upstream x 2**15 scaling), its tokens (extract_features, eval mode) and its
relative position buckets for the published bucket settings; in init_stats.json, the
statistics of the reference's own from-scratch initialisation of the same tiny model. These
tests need neither the reference code nor torchaudio; the checkpoint is read by
tools/convert_beats.py (torch).

Tolerances: tokens and pooled features within 1e-4 relative (max |ours - reference| / max
|reference|; measured 6e-7 from the reference fbank, 3e-6 from the waveform); fbank within
1e-4 in normalised units (measured 1.5e-5: float64 here, float32 in torchaudio); buckets exact.
"""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import jax  # noqa: E402

from resp_jax.data import features  # noqa: E402
from resp_jax.models import beats  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures" / "beats"
RELATIVE = 1e-4   # tokens / pooled: max |difference| / max |reference|
FBANK = 1e-4      # normalised fbank units


def _tool():
    spec = importlib.util.spec_from_file_location("convert_beats",
                                                  REPO / "tools" / "convert_beats.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tool():
    return _tool()


@pytest.fixture(scope="module")
def reference():
    with np.load(FIXTURES / "reference.npz") as f:
        return {k: f[k] for k in f.files}


@pytest.fixture(scope="module")
def converted(tool, tmp_path_factory):
    out = tool.convert(FIXTURES / "checkpoint.pt", tmp_path_factory.mktemp("beats") / "enc")
    return out, beats.load_pretrained(out)


def _relative(ours, theirs):
    return float(np.abs(np.asarray(ours) - theirs).max() / np.abs(theirs).max())


def _waves(reference):
    return reference["wave_int16"].astype(np.float32) / 32768.0


def test_converted_encoder_matches_reference_tokens(converted, reference):
    out, (encoder, variables) = converted
    meta = json.loads((out / "encoder.json").read_text())
    assert meta["architecture"] == "beats" and meta["cfg"]["deep_norm"] is True
    assert (meta["width"], meta["depth"], meta["heads"], meta["embed_dim"]) == (64, 2, 4, 32)
    assert meta["shared_bias_copies"] == 1 and meta["source"]["layout"] == "beats"
    apply = jax.jit(lambda v, x: encoder.apply(v, x, train=False, tokens=True))
    pooled, tokens = apply(variables, reference["fbank"])  # the reference's fbank of wave 0
    assert tokens.shape == (1, 48, 64)
    assert _relative(tokens, reference["tokens"][:1]) < RELATIVE
    assert _relative(pooled, reference["tokens"][:1].mean(axis=1)) < RELATIVE


def test_waveform_to_tokens_matches_reference(converted, reference):
    """resp_jax's BEATs front end (upstream scaling) and encoder, end to end."""
    _, (encoder, variables) = converted
    fbank = features.normalise_fbank(features.fbank_batch(_waves(reference), "beats", 2.0 ** 15),
                                     "beats")  # [2, 128, frames], as the pipeline stores it
    tokens = encoder.clone(input="bins_frames").apply(variables, fbank, train=False,
                                                      tokens=True)[1]
    assert _relative(tokens, reference["tokens"]) < RELATIVE


@pytest.mark.parametrize("scale, key", [(2.0 ** 15, "fbank"), (1.0, "fbank_pafa")],
                         ids=["upstream", "pafa"])
def test_fbank_matches_reference(reference, scale, key):
    ours = features.normalise_fbank(features.fbank_batch(_waves(reference)[:1], "beats", scale),
                                    "beats")
    theirs = reference[key]
    assert ours.shape == (1, 128, 98) and theirs.shape == (1, 98, 128)
    assert np.abs(np.swapaxes(ours, 1, 2) - theirs).max() < FBANK
    # The two differ by more than rounding: without the scaling quiet bins reach the floor.
    assert np.abs(reference["fbank"] - reference["fbank_pafa"]).max() > 1.0


@pytest.mark.parametrize("num, far", [(320, 800), (320, 1280)])
def test_relative_position_buckets_match_reference(reference, num, far):
    n = 1001
    table = beats.relative_position_buckets(n, num, far)  # [query, key]: key - query
    ours = np.concatenate([table[n - 1], table[0, 1:]])  # distances -(n-1) .. n-1
    np.testing.assert_array_equal(ours, reference[f"buckets_{num}_{far}"][1000 - (n - 1):])


@pytest.mark.slow  # statistics over many initialisations
def test_initialisation_matches_reference_statistics(tool):
    """From scratch, every parameter is drawn as the reference draws it: per state-dict entry
    the mean and standard deviation of resp_jax's initialisation (8 seeds pooled) match the
    reference's (16 seeds, init_stats.json) within 10 % of the reference's deviation and 10 %
    in the deviation itself (measured within 3 %); constants exactly. The names and layouts
    come from tools/convert_beats.py's own mapping."""
    stats = json.loads((FIXTURES / "init_stats.json").read_text())
    arch = tool.architecture(stats["cfg"], "init_stats.json")
    entries = stats["entries"]
    names = sorted(entries)
    # Each entry as a constant array of its index: to_flax tells which leaf it becomes.
    index = tool.to_flax({n: np.full(entries[n]["shape"], i, np.float64)
                          for i, n in enumerate(names)}, arch)
    encoder = beats.BEATsEncoder(**arch)
    x = np.zeros((1, 32, 128), np.float32)
    draws = [encoder.init(jax.random.key(seed), x, train=False) for seed in range(8)]
    checked = set()
    for path, leaf in jax.tree_util.tree_flatten_with_path(index)[0]:
        name = names[int(np.asarray(leaf).flat[0])]
        ref = entries[name]
        ours = np.stack([np.asarray(_leaf(d, path)) for d in draws]).astype(np.float64)
        where = f"{name} ({jax.tree_util.keystr(path)})"
        if ref["std"] == 0:
            np.testing.assert_array_equal(ours, ref["mean"], err_msg=where)
        else:
            assert abs(ours.std() / ref["std"] - 1) < 0.1, (where, ours.std(), ref["std"])
            assert abs(ours.mean() - ref["mean"]) < 0.1 * ref["std"], (where, ours.mean(), ref)
        checked.add(name)
    assert len(checked) == len(jax.tree_util.tree_leaves(draws[0]))


def _leaf(tree, path):
    for key in path:
        tree = tree[key.key]
    return tree


def _checkpoint():
    return torch.load(FIXTURES / "checkpoint.pt", weights_only=True)


def _refused(tool, tmp_path, checkpoint, match):
    path = tmp_path / "bad.pt"
    torch.save(checkpoint, path)
    with pytest.raises(tool.ConversionError, match=match):
        tool.convert(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_refuses_other_layouts_and_leaves_nothing(tool, tmp_path):
    ck = _checkpoint()
    _refused(tool, tmp_path, ck["model"],
             r"holds a \w*Dict with keys .*\.\.\.; expected the published BEATs")
    _refused(tool, tmp_path, {**ck, "label_dict": {}}, "with keys")
    _refused(tool, tmp_path, {"cfg": [], "model": ck["model"]}, "'cfg' is a list")
    _refused(tool, tmp_path, {**ck, "cfg": {**ck["cfg"], "finetuned_model": True}},
             "finetuned_model is true.*pass --drop_predictor")
    _refused(tool, tmp_path, {**ck, "cfg": {**ck["cfg"], "layer_norm_first": True}},
             "post-LayerNorm")
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(tool.ConversionError, match="torch.load"):
        tool.convert(tmp_path / "garbage.pt", tmp_path / "out")


def test_refuses_missing_unknown_misshapen_and_untied_entries(tool, tmp_path):
    ck = _checkpoint()
    model = dict(ck["model"])
    del model["encoder.layers.1.fc2.bias"]
    model["encoder.layers.0.extra"] = torch.zeros(3)
    model["layer_norm.weight"] = torch.ones(33)
    _refused(tool, tmp_path, {**ck, "model": model},
             r"3 difference\(s\):\n  missing encoder.layers.1.fc2.bias .*\n  layer_norm.weight: "
             r"shape \(33,\), expected \(32,\)\n  unknown encoder.layers.0.extra")
    model = dict(ck["model"])
    model["encoder.layers.1.self_attn.relative_attention_bias.weight"] = torch.zeros(32, 4)
    _refused(tool, tmp_path, {**ck, "model": model}, "differ from layer 0's relative")
    # A smaller cfg than the weights: every tensor is checked against the cfg's sizes.
    _refused(tool, tmp_path, {**ck, "cfg": {**ck["cfg"], "encoder_layers": 1}},
             "unknown encoder.layers.1")


def test_command_line(tool, tmp_path, capsys):
    assert tool.main([f"--checkpoint={FIXTURES / 'checkpoint.pt'}",
                      f"--output={tmp_path / 'out'}"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert tool.main([f"--checkpoint={FIXTURES / 'checkpoint.pt'}",
                      f"--output={tmp_path / 'out'}"]) == 2  # exists: refused
    assert "already exists" in capsys.readouterr().err


def _finetuned(ck, classes=5):
    """The fixture's random encoder in the published layout of a fine-tuned BEATs: cfg with
    finetuned_model true and predictor_class, model with an AudioSet-style predictor."""
    g = torch.Generator().manual_seed(0)
    width = ck["cfg"]["encoder_embed_dim"]
    model = {**ck["model"], "predictor.weight": torch.randn(classes, width, generator=g),
             "predictor.bias": torch.randn(classes, generator=g)}
    return {"cfg": {**ck["cfg"], "finetuned_model": True, "predictor_class": classes,
                    "predictor_dropout": 0.1}, "model": model}


def test_finetuned_checkpoint_converts_its_encoder_only_when_asked(tool, tmp_path, capsys,
                                                                   converted):
    """--drop_predictor converts a fine-tuned checkpoint's encoder, says what it left out and
    records it; without the flag (or with a bad predictor) nothing is written."""
    ck = _checkpoint()
    path = tmp_path / "finetuned.pt"
    torch.save(_finetuned(ck), path)
    with pytest.raises(tool.ConversionError, match="--drop_predictor"):
        tool.convert(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert tool.main([f"--checkpoint={path}", f"--output={tmp_path / 'out'}",
                      "--drop_predictor"]) == 0
    printed = capsys.readouterr().out
    width = ck["cfg"]["encoder_embed_dim"]
    assert f"dropped the AudioSet predictor (5 classes): predictor.weight (5, {width}), " \
           "predictor.bias (5,)" in printed and "wrote" in printed
    meta = beats.encoder_meta(tmp_path / "out")
    assert meta["dropped"] == {"predictor.weight": [5, width], "predictor.bias": [5]}
    assert meta["cfg"]["finetuned_model"] is True
    ours, same = beats.load_pretrained(tmp_path / "out")[1], converted[1][1]  # the encoder
    for a, b in zip(jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves(same)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # The predictor is checked before it is dropped; a checkpoint without one is refused.
    bad = _finetuned(ck)
    bad["model"]["predictor.weight"] = bad["model"]["predictor.weight"][:, :3]
    with pytest.raises(tool.ConversionError, match=rf"predictor.weight: shape \(5, 3\), "
                                                   rf"expected \(5, {width}\)"):
        torch.save(bad, path)
        tool.convert(path, tmp_path / "out2", drop_predictor=True)
    del bad["model"]["predictor.weight"]
    with pytest.raises(tool.ConversionError, match="missing predictor.weight"):
        torch.save(bad, path)
        tool.convert(path, tmp_path / "out2", drop_predictor=True)
    with pytest.raises(tool.ConversionError, match="no predictor to drop"):
        tool.convert(FIXTURES / "checkpoint.pt", tmp_path / "out2", drop_predictor=True)
    assert not (tmp_path / "out2").exists()
