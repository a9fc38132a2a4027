"""Tiny random AST models in both published layouts, for the AST, converter and Patch-Mix tests.

Hugging Face's ASTModel / ASTForAudioClassification with every weight random (LayerNorm scales
around 1) is the reference; ``save_pretrained`` writes the hub layout, and
:func:`original_state` renames the hub names to the original release's ``module.v.*`` timm
names (q, k, v fused into ``attn.qkv``) with a random ``mlp_head`` and DeiT heads beside.
"""

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
TOOL = REPO / "tools" / "convert_ast.py"


def load_tool():
    spec = importlib.util.spec_from_file_location("convert_ast", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def hf_model(*, classification=True, hidden=64, layers=2, heads=4, max_length=100,
             num_mel_bins=128, eps=1e-12, seed=0, labels=5):
    from transformers import ASTConfig, ASTForAudioClassification, ASTModel

    config = ASTConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                       intermediate_size=4 * hidden, max_length=max_length,
                       num_mel_bins=num_mel_bins, layer_norm_eps=eps, num_labels=labels)
    model = (ASTForAudioClassification if classification else ASTModel)(config).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=generator)
            if "layernorm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * noise)
            else:
                p.copy_(0.1 * noise)
    return model


def encoder_of(model):
    return getattr(model, "audio_spectrogram_transformer", model)


def pooled(model, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return encoder_of(model)(torch.from_numpy(x)).pooler_output.numpy()


def save_hub(model, directory: Path, *, bin_file=False) -> Path:
    """The hub layout: config.json + model.safetensors, or + pytorch_model.bin."""
    from safetensors.torch import load_file

    model.save_pretrained(directory)
    if bin_file:
        state = load_file(directory / "model.safetensors")
        (directory / "model.safetensors").unlink()
        torch.save(state, directory / "pytorch_model.bin")
    return directory


def hub_state(model, tmp: Path) -> dict:
    """The model's state dict in the hub's names (as save_pretrained writes them)."""
    from safetensors.torch import load_file

    directory = tmp / "_hub_names"
    model.save_pretrained(directory)
    state = load_file(directory / "model.safetensors")
    shutil.rmtree(directory)
    return state


_RENAMES = [
    ("embeddings.cls_token", "cls_token"), ("embeddings.distillation_token", "dist_token"),
    ("embeddings.position_embeddings", "pos_embed"),
    ("embeddings.patch_embeddings.projection.", "patch_embed.proj."),
    ("layernorm_before.", "norm1."), ("layernorm_after.", "norm2."),
    ("attention.output.dense.", "attn.proj."), ("intermediate.dense.", "mlp.fc1."),
    ("output.dense.", "mlp.fc2."), ("encoder.layer.", "blocks."), ("layernorm.", "norm."),
]


def original_state(model, tmp: Path, *, classes=527, seed=1) -> dict:
    """The original release's layout of ``model``'s weights (DataParallel ``module.`` keys)."""
    state = {k.removeprefix("audio_spectrogram_transformer."): v
             for k, v in hub_state(model, tmp).items() if not k.startswith("classifier.")}
    out = {}
    for k, v in state.items():
        if ".attention.attention." in k:
            continue
        for old, new in _RENAMES:
            k = k.replace(old, new)
        out["module.v." + k] = v
    layers = model.config.num_hidden_layers
    for i in range(layers):
        a = f"encoder.layer.{i}.attention.attention."
        for part in ("weight", "bias"):
            out[f"module.v.blocks.{i}.attn.qkv.{part}"] = torch.cat(
                [state[a + f"{n}.{part}"] for n in ("query", "key", "value")])
    width = model.config.hidden_size
    generator = torch.Generator().manual_seed(seed)
    extras = {"module.mlp_head.0.weight": (width,), "module.mlp_head.0.bias": (width,),
              "module.mlp_head.1.weight": (classes, width), "module.mlp_head.1.bias": (classes,),
              "module.v.head.weight": (1000, width), "module.v.head.bias": (1000,),
              "module.v.head_dist.weight": (1000, width), "module.v.head_dist.bias": (1000,)}
    for k, shape in extras.items():
        out[k] = torch.randn(shape, generator=generator)
    return out


def save_original(model, path: Path, tmp: Path) -> Path:
    torch.save(original_state(model, tmp), path)
    return path


def torch_adapt_pos_embed(pos: torch.Tensor, source_grid, target_grid) -> torch.Tensor:
    """AST's ast_models.py position-embedding adaptation, re-implemented on a general grid:
    cut the centre columns (start T//2 - t//2) when shorter, else bilinear interpolation to
    (F, t); then rows likewise (cut when fewer, interpolate to (f, t) when more)."""
    import torch.nn.functional as F

    (f0, t0), (f1, t1) = source_grid, target_grid
    width = pos.shape[-1]
    grid = pos[:, 2:, :].reshape(1, f0 * t0, width).transpose(1, 2).reshape(1, width, f0, t0)
    if t1 < t0:
        grid = grid[:, :, :, int(t0 / 2) - int(t1 / 2): int(t0 / 2) - int(t1 / 2) + t1]
    else:
        grid = F.interpolate(grid, size=(f0, t1), mode="bilinear")
    if f1 < f0:
        grid = grid[:, :, int(f0 / 2) - int(f1 / 2): int(f0 / 2) - int(f1 / 2) + f1, :]
    elif f1 > f0:
        grid = F.interpolate(grid, size=(f1, t1), mode="bilinear")
    grid = grid.reshape(1, width, f1 * t1).transpose(1, 2)
    return torch.cat([pos[:, :2, :], grid], dim=1)


def torch_patchmix_code_pos_embed(pos: torch.Tensor, frames: int, bins: int) -> torch.Tensor:
    """The position embedding the Patch-Mix code builds, re-created: its model is made with
    input_fdim = frames and input_tdim = bins (main.py sets args.h, args.w = 798, 128), so the
    grid its AST adaptation targets is what a 16 x 16, stride-10 convolution gives on a
    (frames, bins) image (79 x 12 for 798 x 128); cut / interpolated from the 12 x 101 grid
    as AST does and flattened row-major, to be added to tokens in the forward pass's
    (frequency, time) order."""
    probe = torch.nn.Conv2d(1, 1, kernel_size=16, stride=10)(torch.zeros(1, 1, frames, bins))
    rows, cols = probe.shape[2:]
    return torch_adapt_pos_embed(pos, (12, 101), (rows, cols))
