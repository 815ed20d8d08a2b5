"""Nothing in the runtime path imports PyTorch or TensorFlow (only tests and dataset builds do)."""

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


@pytest.mark.parametrize("modules", [LIBRARY_MODULES] + [[c] for c in COMMANDS], ids=["library"] + COMMANDS)
def test_runtime_modules_import_neither_torch_nor_tensorflow(modules):
  code = (
    f"import sys, importlib\nfor m in {modules!r}: importlib.import_module(m)\n"
    "print(sorted({n.split('.')[0] for n in sys.modules} & {'torch', 'tensorflow'}))"
  )
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.strip().splitlines()[-1] == "[]"
