"""The device mesh and every sharding the project uses, declared once.

Data parallelism over one mesh axis: each batch is split along its first dimension over all
devices of all processes, the train state is replicated. Under `jax.jit` the compiler then
inserts the gradient all-reduce and computes BatchNorm statistics over the global batch.
This replaces `jax.pmap`, which is in maintenance mode since JAX 0.8. Joining a multi-process
run is `distributed.py`.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from vggsound_jax.errors import ConfigError

DATA_AXIS = "data"


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


def check_batch_size(field: str, global_batch_size: int, mesh: Mesh) -> None:
  """A global batch must split evenly over the mesh's devices."""
  devices = mesh.devices.size
  if global_batch_size <= 0 or global_batch_size % devices:
    raise ConfigError(field, f"{global_batch_size} is not a positive multiple of the {devices} devices")


def process_rows(mesh: Mesh, global_batch_size: int) -> np.ndarray:
  """The rows of a global batch that this process's devices hold, in order.

  The input pipeline reads exactly these examples, so the global batch is the same whatever
  the split of devices into processes.
  """
  index_map = batch_sharding(mesh).addressable_devices_indices_map((global_batch_size,))
  rows = sorted({row for index in index_map.values() for row in range(*index[0].indices(global_batch_size))})
  if rows != list(range(rows[0], rows[0] + len(rows))):
    raise ValueError(f"this process's devices hold rows {rows} of the batch, which are not contiguous")
  return np.asarray(rows, np.int64)


def shard_batch(batch: dict, mesh: Mesh) -> dict:
  """This process's rows of a global batch (numpy) -> global jax.Arrays sharded over the data axis."""
  sharding = batch_sharding(mesh)
  return {key: jax.make_array_from_process_local_data(sharding, np.asarray(value)) for key, value in batch.items()}


def is_main_process() -> bool:
  return jax.process_index() == 0
