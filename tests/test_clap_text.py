"""CLAP's text tower (docs/method.md §14) against transformers: a tiny random ClapModel with a
tiny RoBERTa BPE tokenizer saved in the hub layout here, converted by tools/convert_clap.py;
the tokens of BTS's sentences, the tower's outputs (ClapTextModelWithProjection) and BTS's
features (ClapModel: [text_embeds ; audio_embeds]) equal transformers'.

Tolerances: outputs within 1e-4 relative (max |ours - reference| / max |reference|;
measured below 1e-6); token ids exactly.
"""

import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from resp_jax import bts  # noqa: E402
from resp_jax.data import metadata  # noqa: E402
from resp_jax.models import clap_text, heads, htsat  # noqa: E402
from test_htsat_parity import RELATIVE, _relative, _tool  # noqa: E402  (CLAP's audio side)

TINY_AUDIO = dict(window_size=4, num_mel_bins=16, spec_size=64, patch_embeds_hidden_size=8,
                  depths=[2, 4], num_attention_heads=[2, 4], hidden_size=16)
TINY_TEXT = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                 intermediate_size=32, max_position_embeddings=70)


@pytest.fixture(scope="module")
def clap(tmp_path_factory):
    """A tiny random ClapModel and a RoBERTa tokenizer (a byte-level BPE learnt from BTS's
    ICBHI sentences) saved as transformers saves them; ``texts`` are those sentences."""
    root = tmp_path_factory.mktemp("clap_text")
    texts = bts.sentences(metadata.schema("icbhi"), bts.FIELDS)
    bpe = tokenizers.ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=1000, min_frequency=1, show_progress=False,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    (root / "bpe").mkdir()
    bpe.save_model(str(root / "bpe"))
    tok = transformers.RobertaTokenizer(vocab=str(root / "bpe" / "vocab.json"),
                                        merges=str(root / "bpe" / "merges.txt"))
    torch.manual_seed(0)
    config = transformers.ClapConfig(text_config={**TINY_TEXT, "vocab_size": len(tok)},
                                     audio_config=TINY_AUDIO, projection_dim=6)
    model = transformers.ClapModel(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            scale = name.endswith("weight") and p.ndim == 1
            p.copy_((1.0 if scale else 0.0) + 0.2 * torch.randn(p.shape))
    model.eval()
    model.save_pretrained(root / "hub")
    tok.save_pretrained(root / "hub")
    return model, root, texts


@pytest.mark.slow  # two transformers models, a conversion and three compiles: ~15 s
def test_text_tower_tokens_and_bts_features_match_transformers(clap):
    model, root, texts = clap
    out = _tool("convert_clap").convert(root / "hub", root / "converted")
    meta = clap_text.encoder_meta(out / "text")
    assert json.loads((out / "encoder.json").read_text())["text"] == "text"
    assert meta["logit_scale_a"] == pytest.approx(float(model.logit_scale_a.detach()))
    assert meta["regularisation"]["hidden_dropout_prob"] == 0.1  # ClapTextConfig's default
    # BTS's tokenizer call: padding='max_length', max_length=64
    theirs = transformers.AutoTokenizer.from_pretrained(str(root / "hub"))(
        texts, padding="max_length", max_length=64, return_tensors="np")
    ids, mask, pad = bts.tokenize(texts, str(out / "text"), 64)
    np.testing.assert_array_equal(ids, theirs["input_ids"])
    np.testing.assert_array_equal(mask, theirs["attention_mask"])
    assert pad == 1
    # the tower: ClapTextModelWithProjection with the ClapModel's text weights
    reference = transformers.ClapTextModelWithProjection(model.config.text_config).eval()
    state = {k: v for k, v in model.state_dict().items() if k.startswith("text_")}
    reference.load_state_dict(state)
    tower, variables = clap_text.load_pretrained(out / "text")
    rows = np.arange(0, len(texts), 37)
    ours = jax.jit(lambda v, i, m: tower.apply(v, i, m, False, outputs=True))(
        variables, ids[rows], mask[rows])
    with torch.no_grad():
        ref = reference(input_ids=torch.from_numpy(ids[rows]).long(),
                        attention_mask=torch.from_numpy(mask[rows]).long())
        pooled = reference.text_model(input_ids=torch.from_numpy(ids[rows]).long(),
                                      attention_mask=torch.from_numpy(mask[rows]).long())
    assert _relative(ours["projection"], ref.text_embeds.numpy()) < RELATIVE
    assert _relative(ours["pooled"], pooled.pooler_output.numpy()) < RELATIVE
    assert _relative(ours["last_hidden_state"], ref.last_hidden_state.numpy()) < RELATIVE
    # BTS's features: ClapModel's normalised [text_embeds ; audio_embeds] (models/clap.py)
    encoder, audio = htsat.load_pretrained(out, output="projection")
    prompts = bts.Prompts(bts.FIELDS, (2, 2, 7, 4), tuple(texts), ids, mask, str(out / "text"))
    bts_model = heads.Model(encoder=encoder, text=bts.PromptText(tower, prompts))
    codes = np.array([[0, 0, 0, 0], [1, 1, 6, 3], [-1, 0, 2, 1]], np.int32)
    x = np.random.default_rng(0).standard_normal((3, 201, 16)).astype(np.float32) * 3
    feats = bts_model.apply({"params": {"encoder": audio["params"], "text": {
        "tower": variables["params"]}}, "batch_stats": {"encoder": audio["batch_stats"]}},
        jnp.asarray(x), False, method="encode", meta=codes)
    rows = np.asarray(prompts.rows(codes))
    with torch.no_grad():
        both = model(input_ids=torch.from_numpy(ids[rows]).long(),
                     attention_mask=torch.from_numpy(mask[rows]).long(),
                     input_features=torch.from_numpy(x)[:, None])
    want = torch.cat((both.text_embeds, both.audio_embeds), dim=-1).numpy()
    assert _relative(feats, want) < RELATIVE


def test_converter_refuses_what_it_does_not_know(clap, tmp_path):
    """Nothing is written when the tokenizer is missing or a text entry is unknown or of
    another shape."""
    model, root, _ = clap
    tool = _tool("convert_clap")
    hub = tmp_path / "hub"
    shutil.copytree(root / "hub", hub)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (hub / name).unlink()
    with pytest.raises(tool.ConversionError, match="needs its tokenizer"):
        tool.convert(hub, tmp_path / "out")
    shutil.copytree(root / "hub", hub, dirs_exist_ok=True)
    from safetensors.torch import save_file
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    state["text_model.encoder.layer.0.attention.self.query.weight"] = torch.zeros(16, 8)
    state["text_model.extra.weight"] = torch.zeros(3)
    save_file(state, str(hub / "model.safetensors"))
    with pytest.raises(tool.ConversionError) as err:
        tool.convert(hub, tmp_path / "out")
    assert "unknown text_model.extra.weight" in str(err.value)
    assert "layer.0.attention.self.query.weight: shape (16, 8), expected (16, 16)" in \
        str(err.value)
    config = json.loads((root / "hub" / "config.json").read_text())
    config["text_config"]["hidden_act"] = "relu"
    (hub / "config.json").write_text(json.dumps(config))
    with pytest.raises(tool.ConversionError, match="hidden_act = 'relu'"):
        tool.convert(hub, tmp_path / "out")
    assert not (tmp_path / "out").exists()
