"""Patient-Aware Feature Alignment's loss (docs/method.md §10).

Why: PAFA (Interspeech 2025; wa976/Patient-Aware-Feature-Alignment) fine-tunes BEATs with
cross-entropy plus a loss that pulls each patient's projected features together (PCSL) and
each patient's centroid towards the batch's mean centroid (GPAL). Its code (method/pafa.py
``PAFALoss.compute_loss``, main.py ``train``) defines what is computed here, on the projections
``z`` of one training batch and their patient ids:

    c_p     = mean of z over the rows of patient p               (one centroid per patient)
    within  = sum over rows i of ||z_i - c_patient(i)||^2
    between = sum over pairs of patients p < q of ||c_p - c_q||^2
    PCSL    = within / (between + 1e-6)
    GPAL    = mean over patients p of ||c_p - g||^2,  g = mean over patients of c_p
    loss    = lambda_pcsl * PCSL + lambda_gpal * GPAL        (0 when the batch holds < 2 patients)

The projections are used as they are (not normalised). The recipe (scripts/beats_pafa.sh):
lambda_pcsl 50, lambda_gpal 0.0005, total CE + 1.0 x loss, both weights constant.

Plain array code on the whole (global) batch with static shapes (patients found by comparing
ids, not by ``unique``), so it is jit-able and gives the same value sharded over devices. Rows
with ``mask`` 0 (padding) or an unknown patient (-1) take no part; the arithmetic runs in
float32 at least.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

EPS = 1e-6  # PAFALoss(eps=1e-6): the denominator's floor


def pafa_loss(z, patients, mask=None, lambda_pcsl: float = 50.0, lambda_gpal: float = 5e-4,
              eps: float = EPS) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(lambda_pcsl x PCSL + lambda_gpal x GPAL, {'pcsl', 'gpal'}) of projections ``z [N, D]``
    with patient codes ``patients [N]`` (module doc); both terms 0 with fewer than 2 patients."""
    z = jnp.asarray(z)
    patients = jnp.asarray(patients)
    if z.ndim != 2 or patients.shape != z.shape[:1]:
        raise ValueError(f"pafa_loss needs z [N, D] and patients [N], got {z.shape} and "
                         f"{patients.shape}")
    if mask is not None and jnp.shape(mask) != patients.shape:
        raise ValueError(f"mask must have shape {patients.shape}, got {jnp.shape(mask)}")
    dtype = jnp.promote_types(z.dtype, jnp.float32)
    n = z.shape[0]
    valid = patients >= 0
    if mask is not None:
        valid = valid & (jnp.asarray(mask) > 0)
    z = jnp.where(valid[:, None], z.astype(dtype), 0)
    same = valid[:, None] & valid[None, :] & (patients[:, None] == patients[None, :])
    count = jnp.maximum(jnp.sum(same, axis=1), 1).astype(dtype)
    centroid = jnp.matmul(same.astype(dtype), z, precision=jax.lax.Precision.HIGHEST) \
        / count[:, None]  # row i: its patient's centroid
    within = jnp.sum(jnp.where(valid[:, None], jnp.square(z - centroid), 0))

    index = jnp.arange(n)
    first = valid & ~jnp.any(same & (index[None, :] < index[:, None]), axis=1)  # one per patient
    num = jnp.sum(first)
    pairs = first[:, None] & first[None, :] & (index[:, None] < index[None, :])
    distance = jnp.sum(jnp.square(centroid[:, None, :] - centroid[None, :, :]), axis=-1)
    between = jnp.sum(jnp.where(pairs, distance, 0))
    pcsl = within / (between + eps)

    patients_n = jnp.maximum(num, 1).astype(dtype)
    global_centroid = jnp.sum(jnp.where(first[:, None], centroid, 0), axis=0) / patients_n
    gpal = jnp.sum(jnp.where(first, jnp.sum(jnp.square(centroid - global_centroid), -1), 0)) \
        / patients_n
    enough = num > 1
    pcsl, gpal = jnp.where(enough, pcsl, 0), jnp.where(enough, gpal, 0)
    return lambda_pcsl * pcsl + lambda_gpal * gpal, {"pcsl": pcsl, "gpal": gpal}
