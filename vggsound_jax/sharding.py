"""The device mesh and every sharding the project uses, declared once.

Data parallelism over one mesh axis: each batch is split along its first dimension over all
devices of all processes, the train state is replicated. Under `jax.jit` the compiler then
inserts the gradient all-reduce and computes BatchNorm statistics over the global batch.
This replaces `jax.pmap`, which is in maintenance mode since JAX 0.8.

Launching:
- one GPU / CPU: `python scripts/train.py ...`;
- several GPUs on one host: the same command; all local devices join the mesh;
- several processes (TPU pod slice, multi-node GPU): start the same command on every host
  with `--multiprocess`; `jax.distributed.initialize()` detects the cluster (TPU, SLURM,
  Open MPI) or reads JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID. Each
  process reads its own shard of the data and feeds it with `shard_batch`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def initialize_distributed(force: bool = False) -> None:
  """Joins a multi-process run; a no-op for a single process unless `force` is set.

  Without arguments JAX detects TPU pods, SLURM and Open MPI clusters itself; elsewhere it
  takes the coordinator from JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID.
  """
  if force or "JAX_COORDINATOR_ADDRESS" in os.environ:
    jax.distributed.initialize()


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A one-axis (`data`) mesh over `devices`, by default every device of every process."""
  devices = jax.devices() if devices is None else list(devices)
  # Auto axes: inside jit the compiler propagates the batch sharding through the model and
  # inserts the collectives (explicit axes would make every gather spell out its sharding).
  return jax.make_mesh((len(devices),), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,), devices=devices)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over all devices, the rest of each array whole."""
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def local_batch_size(global_batch_size: int) -> int:
  """This process's share of the global batch; the global batch must split evenly."""
  if global_batch_size % jax.device_count():
    raise ValueError(f"global batch size {global_batch_size} is not a multiple of the {jax.device_count()} devices")
  return global_batch_size // jax.process_count()


def shard_batch(batch: dict, mesh: Mesh) -> dict:
  """This process's local batch (numpy) -> global jax.Arrays sharded over the data axis."""
  sharding = batch_sharding(mesh)
  return {key: jax.make_array_from_process_local_data(sharding, np.asarray(value)) for key, value in batch.items()}


def is_main_process() -> bool:
  return jax.process_index() == 0
