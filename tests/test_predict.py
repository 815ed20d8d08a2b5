"""scripts/predict.py end to end: a legacy-format PyTorch checkpoint, converted, classifies wav
files like the PyTorch model fed by the original scipy front end."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.signal
import soundfile as sf
import torch

from vggsound_jax.testing import torch_reference

REPO = Path(__file__).resolve().parent.parent
FS = 16000


def _speech_like(seconds, seed):
  rng = np.random.default_rng(seed)
  t = np.arange(int(seconds * FS)) / FS
  pitch = rng.uniform(100, 250)
  voiced = sum(np.sin(2 * np.pi * k * pitch * t) / k for k in range(1, 15))
  envelope = (np.sin(2 * np.pi * rng.uniform(2, 5) * t) > 0.2) * np.abs(np.sin(2 * np.pi * 1.3 * t))
  x = 0.2 * envelope * voiced + rng.normal(0, 0.01, t.size)
  return np.clip(x * 32767, -32768, 32767).astype(np.int16)


def _original_probs(model, paths):
  """The original pipeline: sf.read, tile to 10 s, clip, scipy spectrogram, log, standardise."""
  specs = []
  for path in paths:
    samples, rate = sf.read(path, dtype="int16")
    x = np.tile(samples, 10)[:160000] / 32768.0
    x = np.clip(x, -1.0, 1.0)
    _, _, s = scipy.signal.spectrogram(x, rate, nperseg=512, noverlap=353)
    s = np.log(s + 1e-7)
    specs.append((s - s.mean()) / (s.std() + 1e-9))
  x = torch.from_numpy(np.stack(specs)[:, None]).float()
  with torch.no_grad():
    return torch.softmax(model(x), dim=1).numpy()


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("predict")
  model = torch_reference.build_torch_model(18, "avgpool")
  torch_reference.randomize_(model, seed=3)
  model.eval()
  checkpoint = tmp / "vggsound_avgpool.pth.tar"
  torch_reference.save_release_style(model, checkpoint, legacy=True)
  subprocess.run(
    [
      sys.executable,
      str(REPO / "converters/pytorch_to_flax.py"),
      "--input",
      str(checkpoint),
      "--output",
      str(tmp / "model"),
    ],
    check=True,
    capture_output=True,
    text=True,
  )
  return model, tmp


def test_predict_matches_pytorch_with_scipy_front_end(converted):
  model, tmp = converted
  paths = []
  for i, seconds in enumerate([10.0, 10.0, 3.5]):
    paths.append(str(tmp / f"clip{i}.wav"))
    sf.write(paths[-1], _speech_like(seconds, seed=i), FS, subtype="PCM_16")
  out = tmp / "preds.npz"
  result = subprocess.run(
    [
      sys.executable,
      str(REPO / "scripts/predict.py"),
      "--checkpoint",
      str(tmp / "model"),
      "--batch_size",
      "2",
      "--top_k",
      "3",
      "--output",
      str(out),
      *paths,
    ],
    capture_output=True,
    text=True,
    env=dict(os.environ, VGGSOUND_JAX_CACHE=str(tmp / "cache")),
  )
  assert result.returncode == 0, result.stderr
  preds = np.load(out)
  assert list(preds["files"]) == paths
  assert preds["probs"].shape == (3, 309) and preds["probs"].dtype == np.float32
  assert preds["embeddings"].shape == (3, 512) and preds["embeddings"].dtype == np.float32
  assert len(preds["class_names"]) == 309 and preds["class_names"][0] == "air conditioning noise"

  expected = _original_probs(model, paths)
  assert np.max(np.abs(preds["probs"] - expected)) <= 1e-4
  # The printed top class is the reference's top class.
  top = preds["class_names"][expected[0].argmax()]
  assert result.stdout.splitlines()[1].endswith(top)


def test_unreadable_files_are_reported_and_skipped(converted):
  _, tmp = converted
  good = tmp / "good.wav"
  sf.write(good, _speech_like(1.0, seed=9), FS, subtype="PCM_16")
  corrupt = tmp / "corrupt.mp4"
  corrupt.write_bytes(b"\x00garbage" * 100)
  missing = tmp / "missing.wav"
  out = tmp / "partial.npz"
  result = subprocess.run(
    [
      sys.executable,
      str(REPO / "scripts/predict.py"),
      "--checkpoint",
      str(tmp / "model"),
      "--output",
      str(out),
      str(corrupt),
      str(good),
      str(missing),
    ],
    capture_output=True,
    text=True,
    env=dict(os.environ, VGGSOUND_JAX_CACHE=str(tmp / "cache")),
  )
  assert result.returncode == 1
  assert f"{corrupt}: cannot decode" in result.stderr
  assert f"{missing}: no such file" in result.stderr
  assert "Traceback" not in result.stderr
  assert list(np.load(out)["files"]) == [str(good)]


def test_bad_checkpoint_directory_is_one_line_error(tmp_path):
  result = subprocess.run(
    [sys.executable, str(REPO / "scripts/predict.py"), "--checkpoint", str(tmp_path), "x.wav"],
    capture_output=True,
    text=True,
  )
  assert result.returncode != 0
  assert "Traceback" not in result.stderr and str(tmp_path) in result.stderr
