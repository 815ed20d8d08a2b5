"""The flags that start the processes of a run (train and evaluate), and start-up itself."""

from __future__ import annotations

import ml_collections
from absl import flags

_MULTIPROCESS = flags.DEFINE_bool(
  "multiprocess",
  False,
  "Join a multi-process run, detecting the cluster (TPU pod slice, SLURM, Open MPI) unless "
  "--coordinator_address, --num_processes and --process_id are given.",
)
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "HOST:PORT of process 0's coordination service.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes in the run.", lower_bound=1)
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index, 0 .. num_processes - 1.", lower_bound=0)
_LOCAL_DEVICES = flags.DEFINE_list(
  "local_device_ids", None, "Devices this process uses, e.g. 0,1 (for schedulers that start one process per GPU)."
)
_TIMEOUT = flags.DEFINE_integer(
  "initialization_timeout", 300, "Seconds to wait for the other processes and the coordinator.", lower_bound=1
)


def start(config: ml_collections.ConfigDict) -> None:
  """Joins a multi-process run if asked (`config.distributed` tunes it), and caches compiled programs on disk."""
  from vggsound_jax import distributed  # keeps --help fast
  from vggsound_jax.compilation_cache import enable_compilation_cache

  local = [int(i) for i in _LOCAL_DEVICES.value] if _LOCAL_DEVICES.value else None
  distributed.initialize(
    multiprocess=_MULTIPROCESS.value,
    coordinator_address=_COORDINATOR.value,
    num_processes=_NUM_PROCESSES.value,
    process_id=_PROCESS_ID.value,
    local_device_ids=local,
    timeout_seconds=_TIMEOUT.value,
    heartbeat_timeout_seconds=config.distributed.heartbeat_timeout_seconds,
  )
  enable_compilation_cache()
