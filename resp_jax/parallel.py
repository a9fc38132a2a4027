"""Data parallelism with one device mesh (jit + NamedSharding, the successor of pmap).

Steps are written for one global batch: the batch is sharded along the mesh axis 'data' and the
train state is replicated, so XLA splits the work and inserts the collectives itself. SupCon
negatives and BatchNorm statistics therefore cover the whole global batch, on one device or
many, on one host or several.

Several hosts: set RESP_JAX_DISTRIBUTED=1 (plus JAX's usual coordinator variables where the
cluster is not auto-detected) and every process runs the same command; each process feeds its
own slice of every global batch.
"""

from __future__ import annotations

import collections
import os
from typing import Any, Iterable, Iterator, Mapping, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXIS = "data"
DISTRIBUTED_ENV = "RESP_JAX_DISTRIBUTED"


def initialize() -> None:
    """Joins a multi-host job when RESP_JAX_DISTRIBUTED is set (before any other JAX call).

    `jax.distributed.initialize()` reads the coordinator address, process count and id from the
    cluster (SLURM, TPU pods, ...) or from JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES /
    JAX_PROCESS_ID.
    """
    if os.environ.get(DISTRIBUTED_ENV, "").lower() in ("1", "true", "yes"):
        jax.distributed.initialize()


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh over ``devices`` (default: every device of every process)."""
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("make_mesh needs at least one device")
    return Mesh(np.array(devices), (AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over the devices."""
    return NamedSharding(mesh, P(AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    """A full copy on every device (train state, small arrays)."""
    return NamedSharding(mesh, P())


def check_batch_size(global_batch: int, mesh: Mesh, name: str = "train.batch_size") -> int:
    """Fails with a clear message unless ``global_batch`` splits evenly over the mesh's devices
    and over the processes; returns this process's share."""
    devices, processes = mesh.devices.size, jax.process_count()
    if global_batch <= 0 or global_batch % devices:
        lower = max(devices, global_batch - global_batch % devices)
        raise ValueError(
            f"config.{name}={global_batch} must be a positive multiple of the {devices} devices "
            f"in use (e.g. {lower} or {lower + devices}); batches are split evenly over devices")
    if global_batch % processes:
        raise ValueError(f"config.{name}={global_batch} must be a multiple of the "
                         f"{processes} processes")
    return global_batch // processes


def _canonical(a: Any) -> np.ndarray:
    """float32 / int32 host arrays, so every batch has the same dtypes (one compilation)."""
    a = np.asarray(a)
    if a.dtype.kind == "f":
        return a.astype(np.float32, copy=False)
    if a.dtype.kind in "iub":
        return a.astype(np.int32, copy=False)
    raise TypeError(f"batch arrays must be numeric, got dtype {a.dtype}")


def to_global(batch: Mapping[str, Any], mesh: Mesh) -> dict[str, jax.Array]:
    """This process's rows of a global batch -> global jax.Arrays sharded along 'data'."""
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, _canonical(v))
            for k, v in batch.items()}


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Places a pytree (host or device arrays) on every device of the mesh."""
    return jax.device_put(tree, replicated(mesh))


def to_host(x: jax.Array) -> np.ndarray:
    """The full value of a (possibly multi-host) array as numpy; a synchronisation point."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))


def prefetch(batches: Iterable[Mapping[str, Any]], mesh: Mesh,
             size: int = 2) -> Iterator[dict[str, jax.Array]]:
    """Moves up to ``size`` batches to the devices ahead of the step that consumes them."""
    queue: collections.deque = collections.deque()
    iterator = iter(batches)
    for batch in iterator:
        queue.append(to_global(batch, mesh))
        if len(queue) > size:
            yield queue.popleft()
    while queue:
        yield queue.popleft()
