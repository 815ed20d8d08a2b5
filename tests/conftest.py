"""Every test process has 4 CPU devices, so multi-device code (a mesh over several devices, the
batch split between them) runs in-process as on a multi-GPU host; a test that wants one device
builds its mesh from `jax.devices()[:1]`. Set before any test touches a JAX backend."""

from pathlib import Path

import jax
import pytest
from absl import flags
from ml_collections import config_flags

NUM_CPU_DEVICES = 4  # several, as on a multi-GPU host; few, as compiling for each costs CI time
REPO = Path(__file__).resolve().parents[1]

jax.config.update("jax_platforms", "cpu")
jax.config.update("jax_num_cpu_devices", NUM_CPU_DEVICES)


def load_config(spec: str, *overrides: str):
  """A config as the commands load it: `configs/paper.py:H` (relative to the repository) and
  `--config.FIELD=VALUE` overrides."""
  flag_values = flags.FlagValues()
  argv = ["prog", f"--config={REPO / spec}", *(f"--config.{o}" for o in overrides)]
  config_flags.DEFINE_config_file("config", flag_values=flag_values, sys_argv=argv, lock_config=True)
  flag_values(argv)
  return flag_values.config


@pytest.fixture(name="load_config")
def load_config_fixture():
  return load_config
