"""Nothing in the runtime path imports PyTorch or TensorFlow (only tests and dataset builds do)."""

import subprocess
import sys
from pathlib import Path

RUNTIME_MODULES = [
    "vggsound_jax.audio", "vggsound_jax.spectrogram", "vggsound_jax.models", "vggsound_jax.inference",
    "vggsound_jax.checkpoint", "vggsound_jax.torch_pickle", "vggsound_jax.input_pipeline",
    "vggsound_jax.trainer", "vggsound_jax.evaluation", "vggsound_jax.metrics", "converters.pytorch_to_flax",
]


def test_runtime_modules_import_neither_torch_nor_tensorflow():
  code = (f"import sys, importlib\nfor m in {RUNTIME_MODULES!r}: importlib.import_module(m)\n"
          "print(sorted({n.split('.')[0] for n in sys.modules} & {'torch', 'tensorflow'}))")
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          cwd=Path(__file__).resolve().parent.parent)
  assert result.stdout.strip().splitlines()[-1] == "[]"
