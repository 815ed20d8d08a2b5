"""Nothing in the runtime path imports PyTorch or TensorFlow (only tests and dataset builds do)."""

import os
import subprocess
import sys

import pytest

LIBRARY_MODULES = [
  "vggsound_jax.audio.decode",
  "vggsound_jax.audio.spectrogram",
  "vggsound_jax.models",
  "vggsound_jax.serving.inference",
  "vggsound_jax.model_dir",
  "vggsound_jax.conversion.torch_pickle",
  "vggsound_jax.input_pipeline",
  "vggsound_jax.trainer",
  "vggsound_jax.evaluation",
  "vggsound_jax.metrics",
  "vggsound_jax.conversion.resnet",
  "vggsound_jax.distributed",
  "vggsound_jax.checkpoints",
  "vggsound_jax.audio.vggish_frontend",
  "vggsound_jax.conversion.vggish",
  "vggsound_jax.warm_start",
  "vggsound_jax.datasets.audioset",
  "vggsound_jax.serving.tagger",
  "vggsound_jax.serving.prediction_files",
  "vggsound_jax.serving.backends",
  "vggsound_jax.serving.exported",
  "vggsound_jax.serving.graph",
  "vggsound_jax.audio.ffmpeg_compat",
  "vggsound_jax.hear",
  "vggsound_jax.probe",
  "vggsound_jax.crossval",
  "vggsound_jax.finetune",
  "vggsound_jax.datasets.labelled",
]
# Each command defines its absl flags on import, so each gets a process of its own.
COMMANDS = [
  "vggsound_jax.cli.train",
  "vggsound_jax.cli.evaluate",
  "vggsound_jax.cli.predict",
  "vggsound_jax.cli.convert",
  "vggsound_jax.cli.export",
  "vggsound_jax.cli.crossval",
]


@pytest.mark.slow
@pytest.mark.parametrize("modules", [LIBRARY_MODULES] + [[c] for c in COMMANDS], ids=["library"] + COMMANDS)
def test_runtime_modules_import_neither_torch_nor_tensorflow(modules):
  code = (
    f"import sys, importlib\nfor m in {modules!r}: importlib.import_module(m)\n"
    "print(sorted({n.split('.')[0] for n in sys.modules} & {'torch', 'tensorflow'}))"
  )
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, encoding="utf-8")
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.strip().splitlines()[-1] == "[]"


# A training process with both libraries installed but every import of them failing, and
# recorded: a step, its TensorBoard events, the final evaluation, then an evaluation of the
# run's checkpoint, all reading the built data set from disk.
_BLOCKED_RUN = """
import importlib.abc, importlib.machinery, sys
attempts = []

class Blocked(importlib.abc.Loader):
  def create_module(self, spec):
    attempts.append(spec.name)
    raise ImportError(spec.name + " is blocked")

  def exec_module(self, module):
    pass

class Finder(importlib.abc.MetaPathFinder):
  # A spec, so that `importlib.util.find_spec` says installed (as on a host with both) and
  # only a real import fails.
  def find_spec(self, name, path, target=None):
    if name.split(".")[0] in ("torch", "tensorflow"):
      return importlib.machinery.ModuleSpec(name, Blocked())

sys.meta_path.insert(0, Finder())
from vggsound_jax import default_config, evaluation, trainer
config = default_config.get_config()
config.update_from_flattened_dict({
  "data.data_dir": sys.argv[1], "data.config": "synthetic", "data.crop_samples": 4000, "data.worker_count": 0,
  "model.width": 4, "model.dtype": "float32", "batch_size": 8, "num_train_steps": 1, "log_every_steps": 1,
  "eval.num_samples": 4000, "eval.batch_size": 48,
})
trainer.train_and_evaluate(config, sys.argv[2])
evaluation.evaluate(config, sys.argv[2])
print(attempts, sorted({n.split(".")[0] for n in sys.modules} & {"torch", "tensorflow"}))
"""


@pytest.mark.slow
def test_training_and_evaluation_run_with_torch_and_tensorflow_blocked(tmp_path):
  from vggsound_jax import input_pipeline

  input_pipeline.ensure_synthetic(tmp_path / "data")  # a build may use TensorFlow; reading may not
  workdir = tmp_path / "run"
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  result = subprocess.run(
    [sys.executable, "-c", _BLOCKED_RUN, str(tmp_path / "data"), str(workdir)],
    capture_output=True,
    text=True,
    encoding="utf-8",
    env=env,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.strip().splitlines()[-1] == "[] []"
  assert list(workdir.glob("events.out.tfevents.*"))  # the events were written
  assert (workdir / "eval" / "test" / "metrics.json").is_file()
