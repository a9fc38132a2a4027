"""tools/convert_ast.py against Hugging Face's ASTModel with random weights (docs/method.md §9).

Both published layouts are made from tiny random models: the hub layout by ``save_pretrained``
(model.safetensors, and a pytorch_model.bin copy; hidden 64, 2 layers, 4 heads, 100 frames),
the original release's by renaming to ``module.v.*`` timm names with q/k/v fused and saving
with torch.save (hidden 96, 3 layers, 4 heads, 798 frames). Converted and loaded, the encoder
must give HF's ``pooler_output`` within 1e-4 (float32; max absolute difference, or max
relative difference for the original layout). Position embeddings adapted to other clip
lengths must equal a PyTorch re-implementation of AST's cut / bilinear interpolation, and
``pos_embed='patchmix_code'`` a re-creation of the Patch-Mix code's transposed layout.
"""

import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("safetensors")

import jax  # noqa: E402

from resp_jax.models import ast  # noqa: E402
from ast_helpers import (hf_model, load_tool, pooled, save_hub, save_original,  # noqa: E402
                         torch_adapt_pos_embed, torch_patchmix_code_pos_embed, original_state,
                         hub_state)

TOLERANCE = 1e-4  # max |JAX - PyTorch| of pooled float32 features (or, where said, relative)


@pytest.fixture(scope="module")
def tool():
    return load_tool()


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(0).standard_normal((3, 100, 128)).astype(np.float32)


def _features(directory, x, **kw):
    encoder, variables = ast.load_pretrained(directory, **kw)
    assert set(variables) == {"params"}
    return np.asarray(jax.jit(lambda v, x: encoder.apply(v, x, train=False))(variables, x))


@pytest.mark.parametrize("classification", [True, False], ids=["ASTForAudioClassification",
                                                                "ASTModel"])
@pytest.mark.parametrize("bin_file", [False, True], ids=["safetensors", "bin"])
def test_hub_layout_matches_transformers(tool, tmp_path, x, classification, bin_file):
    model = hf_model(classification=classification)
    hub = save_hub(model, tmp_path / "hub", bin_file=bin_file)
    # The directory or the weights file inside it.
    source = hub if classification else hub / ("pytorch_model.bin" if bin_file
                                               else "model.safetensors")
    out = tool.convert(source, tmp_path / "out")
    meta = json.loads((out / "encoder.json").read_text())
    assert meta["source"]["layout"] == "hub"
    assert meta["source"]["class"] == ("ASTForAudioClassification" if classification
                                       else "ASTModel")
    assert meta["layer_norm_eps"] == 1e-12 and meta["grid"] == [12, 9]
    assert bool(meta["dropped"]) == classification  # the classifier is dropped, listed
    err = np.abs(_features(out, x) - pooled(model, x)).max()
    assert err < TOLERANCE, err


def _max_relative(got, want):
    """max |got - want| / max |want|: the relative difference of two feature arrays."""
    return float(np.abs(got - want).max() / np.abs(want).max())


def test_original_layout_matches_transformers(tool, tmp_path):
    """The original release's layout (``module.v.*``, fused qkv, DeiT and mlp_head entries,
    torch.save) of a random ASTForAudioClassification (hidden 96, 3 layers, 4 heads, eps 1e-6)
    made for 798 frames, converted and loaded for 798 frames: transformers' ASTModel within
    1e-4 (max relative difference). The file does not hold the number of heads: a width
    that is not a DeiT size is refused without --heads (width / 64 = 1 head would be
    another model: a relative difference of 0.45 here)."""
    model = hf_model(hidden=96, layers=3, heads=4, max_length=798, eps=1e-6, seed=3)
    path = save_original(model, tmp_path / "audioset_tiny.pth", tmp_path)
    _refuses(tool, tmp_path, path, "width 96", "--heads", frames=798)
    out = tool.convert(path, tmp_path / "out", frames=798, heads=4)
    meta = json.loads((out / "encoder.json").read_text())
    assert meta["source"]["layout"] == "original" and meta["heads"] == 4
    assert meta["layer_norm_eps"] == 1e-6 and meta["grid"] == [12, 79]
    assert sorted(meta["dropped"]) == sorted(
        k for k in original_state(model, tmp_path) if ".head" in k or "mlp_head" in k)
    x = np.random.default_rng(4).standard_normal((2, 798, 128)).astype(np.float32)
    err = _max_relative(_features(out, x, frames=798), pooled(model, x))
    assert err < TOLERANCE, err


def test_command_line(tool, tmp_path, x, capsys):
    model = hf_model(classification=False, seed=5)
    hub = save_hub(model, tmp_path / "hub")
    assert tool.main([f"--checkpoint={hub}", f"--output={tmp_path / 'out'}"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert tool.main([f"--checkpoint={hub}", f"--output={tmp_path / 'out'}"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert tool.main([f"--checkpoint={hub}", f"--output={tmp_path / 'out'}", "--overwrite"]) == 0


# ----------------------------------------------------------------------------------------------
# Position embeddings for other clip lengths.


@pytest.fixture(scope="module")
def audioset_grid(tmp_path_factory):
    """A width-8 original-layout model made for 1024 frames (grid 12 x 101), converted."""
    tmp = tmp_path_factory.mktemp("audioset_grid")
    model = hf_model(hidden=8, layers=1, heads=2, max_length=1024, eps=1e-6, seed=7)
    path = save_original(model, tmp / "tiny_audioset.pth", tmp)
    out = load_tool().convert(path, tmp / "out", heads=2)
    pos = torch.load(path, weights_only=True)["module.v.pos_embed"]
    return model, out, pos


@pytest.mark.parametrize("frames,bins", [(798, 128), (1024, 128), (1200, 128), (100, 128),
                                         (798, 200), (798, 90)])
def test_position_embedding_adaptation(audioset_grid, frames, bins):
    _, out, pos = audioset_grid
    encoder, variables = ast.load_pretrained(out, frames=frames, num_bins=bins)
    want = torch_adapt_pos_embed(pos, (12, 101), encoder.grid).numpy()
    got = np.asarray(variables["params"]["pos_embed"])
    assert got.shape == want.shape == (1, 2 + encoder.grid[0] * encoder.grid[1], 8)
    assert np.abs(got - want).max() < 1e-6
    if (frames, bins) == (798, 128):
        assert encoder.grid == (12, 79)
        np.testing.assert_array_equal(  # columns 11..89 of the 101
            got[0, 2:].reshape(12, 79, 8), pos[0, 2:].numpy().reshape(12, 101, 8)[:, 11:90])
    # The Patch-Mix code's layout (model.pos_embed='patchmix_code'): same shape, other values.
    _, code = ast.load_pretrained(out, frames=frames, num_bins=bins, pos_embed="patchmix_code")
    code = np.asarray(code["params"]["pos_embed"])
    assert code.shape == got.shape
    assert np.abs(code - torch_patchmix_code_pos_embed(pos, frames, bins).numpy()).max() < 1e-6
    assert np.abs(code - got).max() > 1e-2


def test_patchmix_code_layout_at_798_frames(audioset_grid):
    """Patch (f, t) of the 12 x 79 grid gets the authors' row (79 f + t) // 12, column
    (79 f + t) % 12 of their 79 x 12 grid: 12 centre columns (44..55) of the 101, 79 rows."""
    _, out, pos = audioset_grid
    _, code = ast.load_pretrained(out, frames=798, pos_embed="patchmix_code")
    grid = pos[0, 2:].numpy().reshape(12, 101, 8)[:, 44:56]  # columns kept: 12 of 101
    got = np.asarray(code["params"]["pos_embed"])[0, 2:].reshape(79, 12, 8)
    np.testing.assert_allclose(got[0], grid[0], atol=1e-7)  # the authors' row 0 is source row 0
    np.testing.assert_allclose(got[-1], grid[-1], atol=1e-7)  # and row 78 source row 11
    with pytest.raises(ValueError, match="patchmix_code"):
        ast.load_pretrained(out, frames=798, pos_embed="other")


@pytest.mark.parametrize("layout", ["ast", "patchmix_code"])
def test_adapted_encoder_matches_transformers_at_798_frames(audioset_grid, layout):
    """End to end: HF's model built for 798 frames with AST's adapted position embedding, or
    with the one the Patch-Mix code builds (HF's forward flattens the patches frequency-major
    as that code's does, so this is the authors' forward pass)."""
    model, out, pos = audioset_grid
    from transformers import ASTConfig, ASTModel

    config = ASTConfig(**{**model.config.to_dict(), "max_length": 798})
    short = ASTModel(config).eval()
    state = {k.removeprefix("audio_spectrogram_transformer."): v
             for k, v in model.state_dict().items() if not k.startswith("classifier.")}
    state["embeddings.position_embeddings"] = (
        torch_adapt_pos_embed(pos, (12, 101), (12, 79)) if layout == "ast"
        else torch_patchmix_code_pos_embed(pos, 798, 128))
    short.load_state_dict(state)
    x = np.random.default_rng(1).standard_normal((2, 798, 128)).astype(np.float32)
    err = np.abs(_features(out, x, frames=798, pos_embed=layout) - pooled(short, x)).max()
    assert err < TOLERANCE, err


# ----------------------------------------------------------------------------------------------
# Refusals: one clear message, nothing written.


def _refuses(tool, tmp_path, checkpoint, *needles, **kw):
    out = tmp_path / "out"
    before = set(tmp_path.iterdir())
    with pytest.raises(tool.ConversionError) as info:
        tool.convert(checkpoint, out, **kw)
    message = str(info.value)
    for needle in needles:
        assert needle in message, message
    assert not out.exists()
    assert set(tmp_path.iterdir()) == before  # no temporary directory left behind
    return message


def test_refuses_unknown_layout(tool, tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"features.0.weight": torch.zeros(3, 3)}, path)
    _refuses(tool, tmp_path, path, "unknown layout", "module.v.", "Hugging Face")
    directory = tmp_path / "not_hub"
    directory.mkdir()
    (directory / "model.safetensors").write_bytes(b"")
    _refuses(tool, tmp_path, directory, "config.json")


def test_refuses_other_hub_model(tool, tmp_path):
    hub = save_hub(hf_model(), tmp_path / "hub")
    config = json.loads((hub / "config.json").read_text())
    (hub / "config.json").write_text(json.dumps({**config, "model_type": "vit"}))
    _refuses(tool, tmp_path, hub, "audio-spectrogram-transformer", "'vit'")


def test_refuses_missing_unknown_and_misshapen_entries(tool, tmp_path):
    model = hf_model(eps=1e-6)
    state = original_state(model, tmp_path)
    del state["module.v.blocks.1.mlp.fc2.bias"]
    state["module.v.blocks.0.attn.qkv.weight"] = torch.zeros(3 * 64, 32)
    state["module.v.extra.weight"] = torch.zeros(2)
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    message = _refuses(tool, tmp_path, path, "3 difference(s)",
                       "missing module.v.blocks.1.mlp.fc2.bias",
                       "module.v.blocks.0.attn.qkv.weight: shape (192, 32), expected (192, 64)",
                       "unknown module.v.extra.weight", frames=100, heads=4)
    assert message.count("\n") == 3

    hub = save_hub(model, tmp_path / "hub")
    from safetensors.torch import save_file

    state = hub_state(model, tmp_path)
    state["audio_spectrogram_transformer.layernorm.bias"] = torch.zeros(65)
    del state["audio_spectrogram_transformer.encoder.layer.0.output.dense.weight"]
    save_file(state, hub / "model.safetensors")
    _refuses(tool, tmp_path, hub, "2 difference(s)",
             "layernorm.bias: shape (65,), expected (64,)",
             "missing encoder.layer.0.output.dense.weight")


def test_refuses_wrong_grid(tool, tmp_path):
    path = save_original(hf_model(eps=1e-6), tmp_path / "tiny.pth", tmp_path)
    _refuses(tool, tmp_path, path, "108 patch positions", "--frames", heads=4)  # 1024 frames


def test_refuses_garbage_and_non_state_dicts(tool, tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x00not a checkpoint" * 100)
    _refuses(tool, tmp_path, garbage, "not a PyTorch state dict", "Hugging Face")
    listed = tmp_path / "list.pth"
    torch.save([torch.zeros(2)], listed)
    _refuses(tool, tmp_path, listed, "holds a list, not a state dict")
    mixed = tmp_path / "mixed.pth"
    torch.save({"module.v.cls_token": torch.zeros(1, 1, 8), "epoch": 3}, mixed)
    _refuses(tool, tmp_path, mixed, "not a state dict of tensors", "'epoch' (int)")
    hub = save_hub(hf_model(), tmp_path / "hub")
    (hub / "model.safetensors").write_bytes(b"garbage" * 50)
    _refuses(tool, tmp_path, hub, "not a readable safetensors file")
    shutil.rmtree(hub)
