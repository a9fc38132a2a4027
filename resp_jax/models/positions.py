"""Position embeddings of a patch grid made fit for another grid, as AST does when a model
trained on one clip length (AudioSet: 12 x 101 patches) is fine-tuned on another (ICBHI's 8 s:
12 x 79); docs/method.md §9. Pure numpy; `resp_jax.models.ast.load_pretrained` applies it.

Two layouts (``model.pos_embed``, `LAYOUTS`):
  'ast'            :func:`adapt_position_embedding` to the run's (frequency, time) patch grid:
                   each patch gets the embedding of its own place (the AST paper);
  'patchmix_code'  :func:`patchmix_code_position_embedding`: the embedding the Patch-Mix code
                   adds, built for the transposed grid (docs/fidelity.md).
"""

from __future__ import annotations

import numpy as np


def _resize_linear(a: np.ndarray, size: int, axis: int) -> np.ndarray:
    """1-D linear resampling along ``axis`` as torch.nn.functional.interpolate's 'bilinear'
    (align_corners=False) does along one axis: source coordinate (dst + 0.5) * in / out - 0.5,
    clamped at 0, between its floor and the next sample (clamped at the end). The coordinate and
    weights are computed in float32 as PyTorch's CPU kernel does for float32 tensors, so the
    result matches AST's to float32 rounding."""
    n = a.shape[axis]
    if size == n:
        return a
    scale = np.float32(n) / np.float32(size)
    dst = np.arange(size, dtype=np.float32)
    src = np.maximum(scale * (dst + np.float32(0.5)) - np.float32(0.5), np.float32(0.0))
    lo = np.minimum(np.floor(src).astype(np.int64), n - 1)
    hi = np.minimum(lo + 1, n - 1)
    w1 = np.clip(src - lo.astype(np.float32), 0.0, 1.0).astype(np.float32)
    w0 = (np.float32(1.0) - w1).astype(np.float64)
    shape = [-1 if d == axis else 1 for d in range(a.ndim)]
    return (np.take(a, lo, axis=axis) * w0.reshape(shape)
            + np.take(a, hi, axis=axis) * w1.astype(np.float64).reshape(shape))


def adapt_position_embedding(pos_embed: np.ndarray, source_grid: tuple[int, int],
                             target_grid: tuple[int, int]) -> np.ndarray:
    """``pos_embed [1, 2 + F*T, D]`` of a (F, T) patch grid made fit for ``target_grid`` (f, t).

    As AST's ast_models.py: the two token embeddings are kept; the patch embeddings, as a
    (D, F, T) image, first along time: the centre t columns ``T//2 - t//2 ..`` when t < T
    (101 -> 79 keeps columns 11..89), bilinear interpolation (align_corners=False) when t > T;
    then along frequency likewise (centre rows when f < F, interpolation when f > F).
    """
    pos_embed = np.asarray(pos_embed, np.float64)
    (f0, t0), (f1, t1) = tuple(source_grid), tuple(target_grid)
    if pos_embed.ndim != 3 or pos_embed.shape[:2] != (1, 2 + f0 * t0):
        raise ValueError(f"pos_embed of a {f0} x {t0} grid must have shape [1, {2 + f0 * t0}, D], "
                         f"got {pos_embed.shape}")
    if min(f1, t1) < 1:
        raise ValueError(f"target grid must be positive, got {target_grid}")
    tokens, grid = pos_embed[:, :2], pos_embed[0, 2:].reshape(f0, t0, -1)
    if t1 < t0:
        start = t0 // 2 - t1 // 2
        grid = grid[:, start:start + t1]
    else:
        grid = _resize_linear(grid, t1, axis=1)
    if f1 < f0:
        start = f0 // 2 - f1 // 2
        grid = grid[start:start + f1]
    else:
        grid = _resize_linear(grid, f1, axis=0)
    out = np.concatenate([tokens, grid.reshape(1, f1 * t1, -1)], axis=1)
    return out.astype(np.float32)


def patchmix_code_position_embedding(pos_embed: np.ndarray, source_grid: tuple[int, int],
                                     target_grid: tuple[int, int]) -> np.ndarray:
    """The position embedding the Patch-Mix code adds for a (f, t) ``target_grid``.

    Its main.py sets ``args.h, args.w = 798, 128`` (frames, bins) and builds
    ``ASTModel(input_fdim=798, input_tdim=128)`` ([pm] `main.py:202,242-243`), so AST's
    adaptation runs on the transposed grid (t, f) = (79, 12): 12 centre columns of the 101
    (44..55) interpolated to 79 rows ([pm] `models/ast.py:137-157`). The forward pass
    transposes its input back to (frequency, time) and flattens the patches frequency-major
    (`models/ast.py:217-229`), so patch (f, t) (token f * T + t) receives the embedding of
    row (f * T + t) // F, column (f * T + t) % F of that (t, f) grid. The result has the
    encoder's shape [1, 2 + f * t, D] and is added as is.
    """
    f1, t1 = tuple(target_grid)
    return adapt_position_embedding(pos_embed, source_grid, (t1, f1))


LAYOUTS = {"ast": adapt_position_embedding, "patchmix_code": patchmix_code_position_embedding}


def fit_position_embedding(pos_embed: np.ndarray, source_grid: tuple[int, int],
                           target_grid: tuple[int, int], layout: str = "ast") -> np.ndarray:
    """``pos_embed`` of ``source_grid`` made fit for ``target_grid`` in ``layout`` (`LAYOUTS`)."""
    if layout not in LAYOUTS:
        raise ValueError(f"position-embedding layout must be one of {tuple(LAYOUTS)}, got "
                         f"{layout!r}")
    return LAYOUTS[layout](pos_embed, source_grid, target_grid)
