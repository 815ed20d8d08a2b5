"""Every test process has 4 CPU devices, so multi-device code (a mesh over several devices, the
batch split between them) runs in-process as on a multi-GPU host; a test that wants one device
builds its mesh from `jax.devices()[:1]`. Set before any test touches a JAX backend."""

import os
import tempfile
from pathlib import Path

import jax
import pytest
from absl import flags
from ml_collections import config_flags

from vggsound_jax.compilation_cache import CACHE_MAX_BYTES

NUM_CPU_DEVICES = 4  # several, as on a multi-GPU host; few, as compiling for each costs CI time
REPO = Path(__file__).resolve().parents[1]

jax.config.update("jax_platforms", "cpu")
jax.config.update("jax_num_cpu_devices", NUM_CPU_DEVICES)
# Tests compile the same programs again and again (the tiny model's initialisers, train and eval
# steps, in test after test and in every xdist worker): one compilation cache for the whole run
# compiles each once. Programs are looked up by their HLO and compile options, so no test gets
# another's program. Commands run by tests keep their own cache (VGGSOUND_JAX_CACHE).
if os.environ.get("VGGSOUND_JAX_TEST_CACHE", "1") != "0":
  jax.config.update("jax_compilation_cache_dir", str(Path(tempfile.gettempdir()) / f"vggsound-jax-tests-{os.getuid()}"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.1)
  jax.config.update("jax_compilation_cache_max_size", CACHE_MAX_BYTES)  # and so the xdist workers' file lock


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


@pytest.fixture(scope="session")
def tiny_converted(tmp_path_factory):
  """A width-4 ResNet-18 avgpool with random weights, saved as the release saves its models and
  converted: (the PyTorch model, the folder holding `tiny.pth.tar` and the model directory `model`)."""
  from vggsound_jax.conversion import convert  # jax, flax: only for the tests that use it
  from vggsound_jax.testing import torch_reference  # torch: only for the tests that use it

  tmp = tmp_path_factory.mktemp("tiny_converted")
  model = torch_reference.randomize_(torch_reference.build_torch_model(18, "avgpool", width=4), seed=5).eval()
  torch_reference.save_release_style(model, tmp / "tiny.pth.tar", legacy=False)
  convert(tmp / "tiny.pth.tar", tmp / "model")
  return model, tmp
