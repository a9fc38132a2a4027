"""tools/convert_panns.py against an independent PyTorch CNN6 with PANNs' parameter names (docs/method.md §7).

The PyTorch model below mirrors the layout of PANNs' Cnn6 state dict (front-end buffers, bn0,
four conv blocks, fc1, fc_audioset) with random weights and random BatchNorm statistics; the
converted encoder must give the same features in both orientations.
"""

import argparse
import copy
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from resp_jax.models import cnn6

torch = pytest.importorskip("torch")
nn, F = torch.nn, torch.nn.functional

REPO = Path(__file__).resolve().parents[1]
TOOL = REPO / "tools" / "convert_panns.py"
FULL = (64, 128, 256, 512)
TINY = (4, 8, 8, 16)


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("convert_panns", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class TorchConvBlock(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, kernel_size=5, stride=1, padding=2, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)  # momentum 0.1, eps 1e-5

    def forward(self, x):
        return F.avg_pool2d(F.relu(self.bn1(self.conv1(x))), kernel_size=2)


class TorchCnn6(nn.Module):
    """PANNs-named CNN6; ``features`` is the encoder on an image (B, 1, H, W)."""

    def __init__(self, channels=FULL, n_fft=64, mel_bins=64, classes=527):
        super().__init__()
        self.spectrogram_extractor = nn.Module()
        self.spectrogram_extractor.stft = nn.Module()
        self.spectrogram_extractor.stft.conv_real = nn.Conv1d(1, n_fft // 2 + 1, n_fft, bias=False)
        self.spectrogram_extractor.stft.conv_imag = nn.Conv1d(1, n_fft // 2 + 1, n_fft, bias=False)
        self.logmel_extractor = nn.Module()
        self.logmel_extractor.melW = nn.Parameter(torch.rand(n_fft // 2 + 1, mel_bins))
        self.bn0 = nn.BatchNorm2d(mel_bins)
        for i, (cin, cout) in enumerate(zip((1, *channels[:-1]), channels), start=1):
            setattr(self, f"conv_block{i}", TorchConvBlock(cin, cout))
        self.n_blocks = len(channels)
        self.fc1 = nn.Linear(channels[-1], channels[-1])
        self.fc_audioset = nn.Linear(channels[-1], classes)

    def features(self, image):
        x = image
        for i in range(1, self.n_blocks + 1):
            x = getattr(self, f"conv_block{i}")(x)
        x = x.mean(dim=3)  # over W: time in 'reference', frequency in 'panns'
        return x.max(dim=2).values + x.mean(dim=2)

    def encode(self, logmel, layout):
        """``logmel`` (B, mel, frames) as the reference code (freq, time) or PANNs (time, freq)."""
        image = logmel if layout == "reference" else logmel.transpose(1, 2)
        return self.features(image[:, None])


def _torch_model(channels, seed):
    torch.manual_seed(seed)
    model = TorchCnn6(channels)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d):  # He-scaled so activations keep their size
                fan_in = module.weight[0].numel()
                module.weight.normal_(0, (2 / fan_in) ** 0.5)
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.2)
                module.running_mean.normal_(0, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.num_batches_tracked.fill_(12345)
    return model.eval()


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _save(path, state, **extra):
    torch.save({"iteration": 100000, "model": state, **extra}, path)
    return path


def _logmel(batch=2, frames=101, seed=0):
    return np.random.default_rng(seed).normal(size=(batch, 64, frames)).astype(np.float32)


def _assert_close(actual, expected, rtol=1e-4):
    expected = np.asarray(expected)
    np.testing.assert_allclose(np.asarray(actual), expected, rtol=rtol,
                               atol=rtol * np.abs(expected).max())


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """Full-width PANNs-like checkpoint converted with the documented command line."""
    root = tmp_path_factory.mktemp("panns")
    model = _torch_model(FULL, seed=0)
    checkpoint = _save(root / "Cnn6_mAP=0.343.pth", _state(model))
    out = root / "encoder"
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run([sys.executable, str(TOOL), f"--checkpoint={checkpoint}",
                             f"--output={out}"], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert f"wrote {out}" in result.stdout
    return model, checkpoint, out


@pytest.mark.parametrize("layout", cnn6.LAYOUTS)
def test_converted_encoder_matches_pytorch_in_inference_mode(converted, layout):
    model, _, out = converted
    encoder, variables = cnn6.load_pretrained(out, layout=layout)
    assert tuple(encoder.channels) == FULL
    x = _logmel()
    features = encoder.apply(variables, x, train=False)
    assert features.shape == (2, 512)
    with torch.no_grad():
        expected = model.encode(torch.from_numpy(x), layout).numpy()
    _assert_close(features, expected)


def test_converted_encoder_matches_pytorch_batch_statistics(converted):
    """Training mode: same features and the same running mean and (unbiased) variance."""
    model, _, out = converted
    encoder, variables = cnn6.load_pretrained(out)
    x = _logmel(batch=3, frames=64, seed=1)
    features, updates = encoder.apply(variables, x, train=True, mutable=["batch_stats"])
    model = copy.deepcopy(model).train()
    with torch.no_grad():
        expected = model.encode(torch.from_numpy(x), "reference").numpy()
    _assert_close(features, expected)
    for i in range(1, 5):
        bn = getattr(model, f"conv_block{i}").bn1
        stats = updates["batch_stats"][f"conv_block{i}"]["bn"]
        _assert_close(stats["mean"], bn.running_mean)
        _assert_close(stats["var"], bn.running_var)


def test_output_directory_holds_only_the_encoder(converted):
    _, checkpoint, out = converted
    assert sorted(p.name for p in out.iterdir()) == ["encoder.json", "state"]
    assert sorted(p.name for p in out.parent.iterdir()) == sorted([checkpoint.name, out.name])
    meta = cnn6.encoder_meta(out)
    assert meta["channels"] == FULL and meta["layout"] == "reference"
    assert meta["source"]["checkpoint"] == checkpoint.name


@pytest.mark.parametrize("variant", ["bare_state_dict", "legacy_format", "numpy_extras"])
def test_checkpoint_variants_convert(tool, tmp_path, variant):
    model = _torch_model(TINY, seed=1)
    path = tmp_path / "ckpt.pth"
    if variant == "bare_state_dict":
        torch.save(_state(model), path)
    elif variant == "legacy_format":
        torch.save({"model": _state(model)}, path, _use_new_zipfile_serialization=False)
    else:  # PANNs' training script also saved a sampler state holding numpy arrays
        _save(path, _state(model), sampler={"indexes": np.arange(10), "pointer": np.int64(3)})
    out = tool.convert(path, tmp_path / "out", channels=TINY, layout="panns")
    encoder, variables = cnn6.load_pretrained(out)
    assert encoder.layout == "panns"
    x = _logmel(frames=40)
    with torch.no_grad():
        expected = model.encode(torch.from_numpy(x), "panns").numpy()
    _assert_close(encoder.apply(variables, x, train=False), expected)


def test_arbitrary_pickles_need_trust(tool, tmp_path, capsys):
    path = _save(tmp_path / "ckpt.pth", _state(_torch_model(TINY, seed=1)),
                 args=argparse.Namespace(lr=0.1))
    args = [f"--checkpoint={path}", f"--output={tmp_path / 'out'}", "--channels=4,8,8,16"]
    assert tool.main(args) == 2
    assert "argparse.Namespace" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    assert tool.main(args + ["--trust_pickle"]) == 0


def _cnn14_like_state():
    """Cnn14's keys and shapes; each tensor is a broadcast view of one element (small file)."""
    widths = (64, 128, 256, 512, 1024, 2048)
    state = {"bn0.weight": torch.ones(64), "bn0.running_var": torch.ones(64)}
    for i, (cin, cout) in enumerate(zip((1, *widths[:-1]), widths), start=1):
        state[f"conv_block{i}.conv1.weight"] = torch.zeros(1).expand(cout, cin, 3, 3)
        state[f"conv_block{i}.conv2.weight"] = torch.zeros(1).expand(cout, cout, 3, 3)
        for bn in ("bn1", "bn2"):
            for name in ("weight", "bias", "running_mean", "running_var"):
                state[f"conv_block{i}.{bn}.{name}"] = torch.ones(1).expand(cout)
            state[f"conv_block{i}.{bn}.num_batches_tracked"] = torch.tensor(7)
    state["fc1.weight"] = torch.zeros(1).expand(2048, 2048)
    state["fc_audioset.weight"] = torch.zeros(1).expand(527, 2048)
    return state


def _run_failing(tool, capsys, tmp_path, checkpoint, channels=FULL):
    out = tmp_path / "out"
    rc = tool.main([f"--checkpoint={checkpoint}", f"--output={out}",
                    f"--channels={','.join(map(str, channels))}"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ")
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [checkpoint.name]  # no temporaries
    return err


def test_cnn14_checkpoint_is_rejected_listing_every_difference(tool, tmp_path, capsys):
    state = _cnn14_like_state()
    err = _run_failing(tool, capsys, tmp_path, _save(tmp_path / "Cnn14.pth", state))
    assert "not a PANNs Cnn6 checkpoint" in err and "Cnn14" in err
    assert "conv_block5, conv_block6" in err and "conv2/bn2" in err
    for i, (cin, cout) in enumerate(zip((1, 64, 128, 256), FULL), start=1):
        assert (f"conv_block{i}.conv1.weight: shape ({cout}, {cin}, 3, 3), "
                f"expected ({cout}, {cin}, 5, 5)") in err
    unexpected = [k for k in state
                  if "conv2" in k or "bn2" in k or k.startswith(("conv_block5", "conv_block6"))]
    for key in unexpected:
        assert f"unexpected {key} " in err
    assert f"{len(unexpected) + 4} difference(s)" in err


def test_missing_extra_and_wrong_shape_are_all_listed(tool, tmp_path, capsys):
    state = _state(_torch_model(TINY, seed=2))
    del state["conv_block3.bn1.running_var"]
    state["head.weight"] = torch.zeros(3, 16)
    state["conv_block2.conv1.weight"] = torch.zeros(8, 4, 3, 3)
    state["conv_block4.bn1.running_mean"] = torch.zeros(15)
    err = _run_failing(tool, capsys, tmp_path, _save(tmp_path / "ckpt.pth", state), TINY)
    assert "4 difference(s)" in err
    assert "missing conv_block3.bn1.running_var (expected shape (8,))" in err
    assert "unexpected head.weight (shape (3, 16))" in err
    assert "conv_block2.conv1.weight: shape (8, 4, 3, 3), expected (8, 4, 5, 5)" in err
    assert "conv_block4.bn1.running_mean: shape (15,), expected (16,)" in err
    assert "Cnn14" not in err


@pytest.mark.parametrize("case", ["missing", "extra", "shape", "non_finite"])
def test_each_kind_of_difference_alone(tool, tmp_path, capsys, case):
    state = _state(_torch_model(TINY, seed=3))
    if case == "missing":
        del state["conv_block1.conv1.weight"]
        expected = "missing conv_block1.conv1.weight (expected shape (4, 1, 5, 5))"
    elif case == "extra":
        state["conv_block1.bn2.weight"] = torch.ones(4)
        expected = "unexpected conv_block1.bn2.weight (shape (4,))"
    elif case == "shape":
        state["conv_block1.bn1.weight"] = torch.ones(4, 1)
        expected = "conv_block1.bn1.weight: shape (4, 1), expected (4,)"
    else:
        state["conv_block2.bn1.running_var"][0] = float("nan")
        expected = "conv_block2.bn1.running_var: has non-finite values"
    err = _run_failing(tool, capsys, tmp_path, _save(tmp_path / "ckpt.pth", state), TINY)
    assert "1 difference(s)" in err and expected in err


@pytest.mark.parametrize("content", [os.urandom(4096), b"", b"PK\x03\x04not a zip"])
def test_not_a_torch_file(tool, tmp_path, capsys, content):
    path = tmp_path / "ckpt.pth"
    path.write_bytes(content)
    err = _run_failing(tool, capsys, tmp_path, path)
    assert f"{path}: not a PyTorch checkpoint" in err


def test_not_a_state_dict(tool, tmp_path, capsys):
    path = tmp_path / "ckpt.pth"
    torch.save({"iteration": 3, "optimizer": {"lr": 0.1}}, path)
    err = _run_failing(tool, capsys, tmp_path, path)
    assert "expected a dict with a 'model' state dict" in err and "'optimizer'" in err


def test_existing_output_is_kept_unless_overwrite(tool, tmp_path, capsys):
    path = _save(tmp_path / "ckpt.pth", _state(_torch_model(TINY, seed=4)))
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    args = [f"--checkpoint={path}", f"--output={out}", "--channels=4,8,8,16"]
    assert tool.main(args) == 2
    assert "already exists" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "mine"
    assert tool.main(args + ["--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["encoder.json", "state"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pth", "out"]
    assert cnn6.load_pretrained(out)[0].channels == TINY
