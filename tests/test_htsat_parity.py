"""HTS-AT against its references (docs/method.md §12): CLAP's audio tower and front end
against transformers (a tiny random ClapAudioModelWithProjection saved in the hub layout here,
ClapFeatureExtractor), OPERA-CT's against the outputs of OPERA's own code.

tests/fixtures/opera/ was made once by tools/make_opera_fixtures.py, which imports
evelyn0414/OPERA's src/model/htsat and pre_process_audio_mel_t from a checkout given to it
(OPERA 3622310, torch 2.13, librosa 0.11, torchlibrosa 0.1.0): a tiny random OPERA-CT in the
released Lightning layout (encoder-tiny.ckpt) and, in reference.npz, its latent, clipwise and
framewise outputs for a fixed input and OPERA's log-mel of two fixed waves.

Tolerances: encoder outputs within 1e-4 relative (max |ours - reference| / max |reference|;
measured below 1e-6, framewise 5e-6); CLAP's log-mel within 1e-3 dB (measured 8e-6; float32
STFT in transformers, float64 here); OPERA's min-maxed log-mel within 1e-5 (measured 1e-7).
"""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import jax  # noqa: E402

from resp_jax.data import htsat_frontends  # noqa: E402
from resp_jax.models import htsat  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures" / "opera"
RELATIVE = 1e-4


def _tool(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _relative(ours, theirs):
    theirs = np.asarray(theirs)
    return float(np.abs(np.asarray(ours) - theirs).max() / np.abs(theirs).max())


# --- CLAP (transformers).


TINY_CLAP = dict(window_size=4, num_mel_bins=16, spec_size=64, patch_embeds_hidden_size=8,
                 depths=[2, 4], num_attention_heads=[2, 4], hidden_size=16, projection_dim=6)


@pytest.fixture(scope="module")
def clap(tmp_path_factory):
    """A tiny random ClapAudioModelWithProjection saved as transformers saves it."""
    torch.manual_seed(0)
    model = transformers.ClapAudioModelWithProjection(transformers.ClapAudioConfig(**TINY_CLAP))
    with torch.no_grad():
        for name, p in model.named_parameters():
            scale = name.endswith("weight") and p.ndim == 1
            p.copy_((1.0 if scale else 0.0) + 0.2 * torch.randn(p.shape))
        bn = model.audio_model.audio_encoder.batch_norm
        bn.running_mean.copy_(torch.randn(16))
        bn.running_var.copy_(0.5 + torch.rand(16))
    model.eval()
    root = tmp_path_factory.mktemp("clap")
    model.save_pretrained(root / "hub")
    return model, root


@pytest.mark.slow  # a transformers model, a conversion and a compile: ~10 s
def test_clap_audio_tower_matches_transformers(clap):
    """Converted with tools/convert_clap.py: the pooled output (pooler_output) and CLAP's
    projection (audio_embeds, what BTS classifies) equal transformers'; the 4-block stage runs
    as one scanned loop over its two (regular, shifted) pairs."""
    model, root = clap
    out = _tool("convert_clap").convert(root / "hub", root / "converted")
    meta = json.loads((out / "encoder.json").read_text())
    assert meta["architecture"] == "htsat" and meta["source"]["class"] == \
        "ClapAudioModelWithProjection"
    assert meta["regularisation"]["hidden_dropout_prob"] == 0.1  # ClapAudioConfig's default
    assert any(k.endswith("relative_position_index") for k in meta["dropped"])
    encoder, variables = htsat.load_pretrained(out)
    assert encoder.output == "latent" and encoder.projection_dim == 6
    x = np.random.default_rng(0).standard_normal((2, 201, 16)).astype(np.float32) * 3
    ours = jax.jit(lambda v, x: encoder.apply(v, x, train=False, outputs=True))(variables, x)
    with torch.no_grad():
        theirs = model(input_features=torch.from_numpy(x)[:, None])
        pooled = model.audio_model(input_features=torch.from_numpy(x)[:, None]).pooler_output
    assert _relative(ours["latent"], pooled.numpy()) < RELATIVE
    assert _relative(ours["projection"], theirs.audio_embeds.numpy()) < RELATIVE


def test_clap_converter_refuses_what_it_does_not_know(clap, tmp_path):
    model, root = clap
    tool = _tool("convert_clap")
    hub = tmp_path / "hub"
    hub.mkdir()
    config = json.loads((root / "hub" / "config.json").read_text())
    (hub / "config.json").write_text(json.dumps({**config, "enable_fusion": True}))
    (hub / "model.safetensors").write_bytes((root / "hub" / "model.safetensors").read_bytes())
    with pytest.raises(tool.ConversionError, match="enable_fusion"):
        tool.convert(hub, tmp_path / "out")
    (hub / "config.json").write_text(json.dumps(config))
    from safetensors.torch import save_file
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    state["audio_model.audio_encoder.extra.weight"] = torch.zeros(3)
    save_file(state, str(hub / "model.safetensors"))
    with pytest.raises(tool.ConversionError, match="unknown audio_model.audio_encoder.extra"):
        tool.convert(hub, tmp_path / "out")
    (hub / "preprocessor_config.json").write_text(json.dumps({"hop_length": 320}))
    with pytest.raises(tool.ConversionError, match="hop_length"):
        tool.convert(hub, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_clap_front_end_matches_feature_extractor():
    """ClapFeatureExtractor with laion/clap-htsat-unfused's settings (rand_trunc's Slaney mel,
    repeatpad to 10 s) on a 3 s clip: tiled 3 times, then 1 s of zeros."""
    extractor = transformers.ClapFeatureExtractor(**htsat_frontends.CLAP_EXTRACTOR)
    rng = np.random.default_rng(1)
    t = np.arange(48000 * 3) / 48000
    wave = (0.2 * np.sin(2 * np.pi * 440 * t) * np.sin(2 * np.pi * 0.7 * t)
            + 0.01 * rng.standard_normal(t.size)).astype(np.float32)
    for clip in (wave[:48000 * 3],):
        theirs = extractor(clip, sampling_rate=48000, return_tensors="np")["input_features"]
        ours = htsat_frontends.clap_logmel(clip[None])
        assert theirs.shape == (1, 1, 1001, 64) and ours.shape == (1, 64, 1001)
        assert np.abs(ours[0].T - theirs[0, 0]).max() < 1e-3


# --- OPERA-CT (OPERA's code, via the fixtures).


@pytest.fixture(scope="module")
def reference():
    with np.load(FIXTURES / "reference.npz") as f:
        return {k: f[k] for k in f.files}


def test_opera_encoder_matches_reference(reference, tmp_path):
    """Converted with tools/convert_opera.py from the Lightning layout: the latent (what
    OPERA's benchmark extracts) and the token-semantic head's outputs equal OPERA's."""
    out = _tool("convert_opera").convert(FIXTURES / "encoder-tiny.ckpt", tmp_path / "enc",
                                         spec_size=64, num_mel_bins=16)
    meta = json.loads((out / "encoder.json").read_text())
    assert meta["depths"] == [2, 2] and meta["tscam_classes"] == 5 and meta["window_size"] == 4
    assert {"g.weight", "encoder.encoder.htsat.head.weight",
            "encoder.encoder.htsat.logmel_extractor.melW"} <= set(meta["dropped"])
    encoder, variables = htsat.load_pretrained(out)
    ours = jax.jit(lambda v, x: encoder.apply(v, x, train=False, outputs=True))(
        variables, reference["x"])
    for key in ("latent", "clipwise", "framewise"):
        assert ours[key].shape == reference[key].shape
        assert _relative(ours[key], reference[key]) < RELATIVE, key


def test_opera_converter_refuses_other_checkpoints(tmp_path):
    tool = _tool("convert_opera")
    checkpoint = torch.load(FIXTURES / "encoder-tiny.ckpt", weights_only=True)
    bad = dict(checkpoint, hyper_parameters={**checkpoint["hyper_parameters"],
                                              "encoder": "efficientnet"})
    torch.save(bad, tmp_path / "ce.ckpt")
    with pytest.raises(tool.ConversionError, match="efficientnet"):
        tool.convert(tmp_path / "ce.ckpt", tmp_path / "out", spec_size=64, num_mel_bins=16)
    state = dict(checkpoint["state_dict"])
    state["encoder.encoder.htsat.layers.0.blocks.0.attn.qkv.weight"] = torch.zeros(3, 3)
    torch.save(dict(checkpoint, state_dict=state), tmp_path / "shape.ckpt")
    with pytest.raises(tool.ConversionError, match=r"blocks\.0\.attn\.qkv\.weight: shape"):
        tool.convert(tmp_path / "shape.ckpt", tmp_path / "out", spec_size=64, num_mel_bins=16)
    assert not (tmp_path / "out").exists()


def test_opera_front_end_matches_reference(reference):
    """OPERA's pre_process_audio_mel_t(wave, f_max=8000): [frames, 64] in [0, 1]."""
    ours = htsat_frontends.opera_logmel(reference["wave"])
    assert ours.shape == (2, 64, 40) and reference["mel"].shape == (2, 40, 64)
    assert np.abs(np.swapaxes(ours, 1, 2) - reference["mel"]).max() < 1e-5
    assert ours.min() == 0.0 and ours.max() == 1.0
