"""Data parallelism with one device mesh (jit + NamedSharding, the successor of pmap).

Steps are written for one global batch: the batch is sharded along the mesh axis 'data' and the
train state is replicated, so XLA splits the work and inserts the collectives itself. SupCon
negatives and BatchNorm statistics therefore cover the whole global batch, on one device or
many, on one host or several.

Several processes (hosts) join one job through JAX's distributed runtime; `initialize` decides
from the environment whether and how (README, "Several hosts"):

- manual launch: JAX_COORDINATOR_ADDRESS=host:port, JAX_NUM_PROCESSES and JAX_PROCESS_ID, the
  same address and count on every process, ids 0 .. N-1 (process 0 runs the coordinator);
- SLURM (`srun`) and Open MPI (`mpirun`) jobs of more than one task are detected from their
  variables and join without any setting;
- RESP_JAX_DISTRIBUTED=1 asks JAX to detect any cluster it knows (also Kubernetes with the
  `jax[k8s]` extra and Cloud TPU pods, whose detection queries a server) and fails clearly if
  it finds none; RESP_JAX_DISTRIBUTED=0 never joins.

Every process runs the same command and feeds its own slice of every global batch. On CPU the
processes exchange data through gloo collectives (`jax_cpu_collectives_implementation`).
"""

from __future__ import annotations

import collections
import dataclasses
import os
import sys
import threading
from typing import Any, Iterable, Iterator, Mapping, Sequence

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXIS = "data"
DISTRIBUTED_ENV = "RESP_JAX_DISTRIBUTED"
COORDINATOR_ENV = "JAX_COORDINATOR_ADDRESS"
NUM_PROCESSES_ENV = "JAX_NUM_PROCESSES"
PROCESS_ID_ENV = "JAX_PROCESS_ID"
TIMEOUT_ENV = "RESP_JAX_DISTRIBUTED_TIMEOUT"
DEFAULT_TIMEOUT_S = 300
CPU_COLLECTIVES = "gloo"
JOIN_TIMEOUT_EXIT = 3  # exit status when the processes did not all join in time
# The variables by which JAX's own cluster detection recognises a SLURM step and an Open MPI
# job (jax/_src/clusters/{slurm,ompi}_cluster.py), with the one that holds the process count.
_CLUSTERS = {
    "slurm": (("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID",
               "SLURM_LOCALID"), "SLURM_NTASKS"),
    "ompi": (("OMPI_MCA_orte_hnp_uri", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK"),
             "OMPI_COMM_WORLD_SIZE"),
}
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


class DistributedSetupError(RuntimeError):
    """The processes of a multi-process job cannot join: a wrong or partial setting (the
    message names the variable) or a peer that did not arrive in time. One line."""


@dataclasses.dataclass(frozen=True)
class Launch:
    """How this process joins: what resp_jax passes to `jax.distributed.initialize` (None:
    JAX fills it in from the detected cluster)."""
    source: str                    # 'manual', 'slurm', 'ompi' or 'auto' (JAX detects)
    coordinator: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    timeout_s: int = DEFAULT_TIMEOUT_S


def _int(environ: Mapping[str, str], name: str, low: int, high: int | None = None,
         hint: str = "") -> int:
    text = environ[name].strip()
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < low or (high is not None and value >= high):
        bound = f"an integer >= {low}" if high is None else f"an integer in [{low}, {high})"
        raise DistributedSetupError(f"{name}={text!r} must be {bound}{hint}")
    return value


def _address(text: str) -> str:
    host, sep, port = text.strip().rpartition(":")
    ok = bool(sep and host.strip("[]") and port.isdigit() and 0 < int(port) < 65536)
    if not ok:
        raise DistributedSetupError(
            f"{COORDINATOR_ENV}={text!r} must be host:port (process 0's address, reachable "
            "from every process, and a free port, e.g. 10.0.0.1:12345)")
    return text.strip()


def detected_cluster(environ: Mapping[str, str]) -> tuple[str, int] | None:
    """(name, process count) of a SLURM step or Open MPI job this process belongs to, from
    their variables alone (no network), or None."""
    for name, (required, count) in _CLUSTERS.items():
        if all(environ.get(v) for v in required):
            try:
                return name, int(environ[count])
            except ValueError:
                return None
    return None


def launch_from_env(environ: Mapping[str, str] | None = None) -> Launch | None:
    """How to join from the environment, or None for a single-process run. Raises
    `DistributedSetupError` naming the variable of a wrong or partial setting."""
    environ = os.environ if environ is None else environ
    opt = environ.get(DISTRIBUTED_ENV, "").strip().lower()
    if opt in _FALSE:
        return None
    if opt and opt not in _TRUE:
        raise DistributedSetupError(f"{DISTRIBUTED_ENV}={environ[DISTRIBUTED_ENV]!r} must be "
                                    "1 (join a multi-process job) or 0 (never join)")
    timeout = (_int(environ, TIMEOUT_ENV, 1, hint=" (seconds)")
               if environ.get(TIMEOUT_ENV, "").strip() else DEFAULT_TIMEOUT_S)
    manual = {k: environ.get(k, "").strip() or None
              for k in (COORDINATOR_ENV, NUM_PROCESSES_ENV, PROCESS_ID_ENV)}
    cluster = detected_cluster(environ)
    if manual[NUM_PROCESSES_ENV] or manual[PROCESS_ID_ENV]:
        missing = [k for k, v in manual.items() if v is None]
        if missing:
            raise DistributedSetupError(
                f"{' and '.join(missing)} not set: a manual launch sets {COORDINATOR_ENV}="
                f"host:port, {NUM_PROCESSES_ENV} and {PROCESS_ID_ENV} on every process")
        n = _int(environ, NUM_PROCESSES_ENV, 1)
        pid = _int(environ, PROCESS_ID_ENV, 0, n, hint=f" ({NUM_PROCESSES_ENV}={n})")
        address = _address(manual[COORDINATOR_ENV])
        if n == 1:
            return None
        return Launch("manual", address, n, pid, timeout)
    address = _address(manual[COORDINATOR_ENV]) if manual[COORDINATOR_ENV] else None
    if cluster is not None:
        name, n = cluster
        if n <= 1:
            return None
        return Launch(name, address, None, None, timeout)  # JAX reads the rest from the cluster
    if address is not None and opt not in _TRUE:
        raise DistributedSetupError(
            f"{NUM_PROCESSES_ENV} and {PROCESS_ID_ENV} not set: {COORDINATOR_ENV} is set but no "
            f"SLURM or Open MPI job was detected; set all three on every process (or "
            f"{DISTRIBUTED_ENV}=1 where JAX detects the cluster, e.g. Kubernetes, Cloud TPU)")
    if opt in _TRUE:
        return Launch("auto", address, None, None, timeout)
    return None


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300]


def _give_up(message: str) -> None:
    sys.stderr.write(f"error: {message}\n")
    sys.stderr.flush()
    os._exit(JOIN_TIMEOUT_EXIT)


def initialize(environ: Mapping[str, str] | None = None) -> Launch | None:
    """Joins a multi-process job when the environment describes one (see the module
    docstring); call before any other JAX call. Returns how it joined, or None (one process).
    Raises `DistributedSetupError` (one line) on a wrong or partial setting, a cluster JAX
    cannot read or a coordinator that fails; when not every process has arrived within
    RESP_JAX_DISTRIBUTED_TIMEOUT seconds, writes one line to stderr and exits with status
    JOIN_TIMEOUT_EXIT (JAX would abort later, with a C++ stack trace)."""
    launch = launch_from_env(environ)
    if launch is None:
        return None
    if jax.distributed.is_initialized():
        return launch
    if not os.environ.get("JAX_CPU_COLLECTIVES_IMPLEMENTATION"):  # the user's choice wins
        # gloo: CPU processes exchange data over TCP; a no-op for GPU and TPU devices.
        jax.config.update("jax_cpu_collectives_implementation", CPU_COLLECTIVES)
    # JAX's own deadline aborts the process from C++ with a stack trace: the watchdog below
    # ends it first, with one line and exit status JOIN_TIMEOUT_EXIT.
    kwargs = dict(coordinator_address=launch.coordinator, num_processes=launch.num_processes,
                  process_id=launch.process_id, initialization_timeout=launch.timeout_s + 60)
    if launch.source in _CLUSTERS:
        kwargs["cluster_detection_method"] = launch.source
    who = (f"process {launch.process_id} of {launch.num_processes}"
           if launch.source == "manual" else f"this process ({launch.source})")
    failed = f"{who} could not join the job through {launch.coordinator or 'its coordinator'}"
    if launch.source == "manual":
        hint = (f"Start the same command on every process, with the same {COORDINATOR_ENV} "
                f"and {NUM_PROCESSES_ENV}, each its own {PROCESS_ID_ENV}")
    else:
        hint = (f"Start the same command as every task of the job (SLURM: with srun); "
                f"{DISTRIBUTED_ENV}=0 runs one process on its own")
    logging.info("joining a multi-process job as %s through %s (timeout %d s)", who,
                 launch.coordinator or "the detected coordinator", launch.timeout_s)
    watchdog = threading.Timer(launch.timeout_s, _give_up, (
        f"{failed}: not every process arrived within {launch.timeout_s} s. {hint} "
        f"({TIMEOUT_ENV} sets the wait)",))
    watchdog.daemon = True
    watchdog.start()
    try:
        jax.distributed.initialize(**kwargs)
        jax.devices()  # the backend exchanges every process's devices: inside the wait too
    except ValueError as e:  # JAX found no cluster to fill in what is missing
        raise DistributedSetupError(
            f"JAX could not read the job from the environment ({_first_line(e)}); set "
            f"{COORDINATOR_ENV}, {NUM_PROCESSES_ENV} and {PROCESS_ID_ENV} on every "
            "process") from e
    except Exception as e:  # the coordinator's client: refused, bad address, ...
        raise DistributedSetupError(f"{failed}: {_first_line(e)}. {hint}") from e
    finally:
        watchdog.cancel()
    logging.info("joined: process %d of %d", jax.process_index(), jax.process_count())
    return launch


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
