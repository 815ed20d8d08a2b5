"""vggsound_jax.hear against the HEAR 2021 API rules (a validator of them, written here), and its
embeddings against the Tagger's (itself checked against the PyTorch original) on the same audio."""

import subprocess
import sys

import numpy as np
import pytest

from vggsound_jax import Tagger, hear
from vggsound_jax.model_dir import save_model
from vggsound_jax.models import ModelConfig
from vggsound_jax.testing.random_model import random_model, with_unit_statistics

FS = 16000


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
  directory = tmp_path_factory.mktemp("hear") / "model"
  model = with_unit_statistics(random_model(ModelConfig(width=4, num_classes=3), seed=3, std=0.3))
  save_model(directory, model, class_names=["a", "b", "c"])
  return directory


@pytest.fixture(scope="module")
def model(model_dir):
  return hear.load_model(str(model_dir), backend="jax", batch_size=8)


def _sounds(n, seconds, seed=0):
  rng = np.random.default_rng(seed)
  t = np.arange(int(seconds * FS)) / FS
  pitches = rng.uniform(200, 3000, (n, 1))
  return (0.4 * np.sin(2 * np.pi * pitches * t) + rng.normal(0, 0.01, (n, t.size))).astype(np.float32)


def validate(module, model, audio, to_numpy=np.asarray):
  """The rules of the HEAR 2021 API, as its validator and evaluation kit rely on them."""
  for name in ("sample_rate", "scene_embedding_size", "timestamp_embedding_size"):
    assert isinstance(getattr(model, name), int) and getattr(model, name) > 0, name
  n_sounds, n_samples = audio.shape
  scene = module.get_scene_embeddings(audio, model)
  assert type(scene) is type(audio)
  scene = to_numpy(scene)
  assert scene.shape == (n_sounds, model.scene_embedding_size) and scene.dtype == np.float32
  assert np.isfinite(scene).all()
  embeddings, timestamps = module.get_timestamp_embeddings(audio, model)
  assert type(embeddings) is type(audio) and type(timestamps) is type(audio)
  embeddings, timestamps = to_numpy(embeddings), to_numpy(timestamps)
  assert embeddings.ndim == 3 and embeddings.shape[0] == n_sounds
  assert embeddings.shape[2] == model.timestamp_embedding_size and embeddings.dtype == np.float32
  assert timestamps.shape == embeddings.shape[:2] and np.isfinite(embeddings).all()
  # Milliseconds, the same for every sound, increasing at one hop, covering the sound.
  assert (timestamps == timestamps[:1]).all()
  hops = np.diff(timestamps[0])
  assert (hops > 0).all() and np.allclose(hops, hops[0])
  duration_ms = n_samples / model.sample_rate * 1000
  assert timestamps[0, 0] <= hops[0] and duration_ms - hops[0] <= timestamps[0, -1] <= duration_ms
  return scene, embeddings, timestamps


@pytest.mark.slow
def test_torch_is_not_imported_for_numpy_audio(model_dir):
  # In a process of its own: another test of this process may have imported torch already.
  code = (
    "import sys, numpy as np\n"
    "from vggsound_jax import hear\n"
    f"model = hear.load_model({str(model_dir)!r}, backend='jax', batch_size=8)\n"
    "audio = np.random.default_rng(0).normal(0, 0.1, (1, 16000)).astype(np.float32)\n"
    "hear.get_scene_embeddings(audio, model)\n"
    "print('torch' in sys.modules)\n"
  )
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, encoding="utf-8", check=False)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.strip().splitlines()[-1] == "False"


def test_numpy_audio_follows_the_api(model):
  audio = _sounds(3, 1.3)
  scene, embeddings, timestamps = validate(hear, model, audio)
  assert model.sample_rate == FS and np.allclose(np.diff(timestamps[0]), hear.TIMESTAMP_HOP_MS)
  assert timestamps.shape[1] == int(1300 // 50) + 1
  # Each sound's embeddings depend on it alone: not on the others in the batch.
  alone, alone_ts = hear.get_scene_embeddings(audio[1:2], model), hear.get_timestamp_embeddings(audio[1:2], model)[0]
  np.testing.assert_allclose(alone[0], scene[1], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(alone_ts[0], embeddings[1], rtol=1e-5, atol=1e-6)
  assert not np.allclose(scene[0], scene[1])  # different sounds, different embeddings


def test_jax_and_torch_audio_come_back_in_their_framework(model):
  import jax.numpy as jnp
  import torch

  audio = _sounds(2, 1.0, seed=1)
  reference = hear.get_scene_embeddings(audio, model)
  scene = validate(hear, model, jnp.asarray(audio))[0]
  np.testing.assert_allclose(scene, reference, rtol=1e-6)
  scene = validate(hear, model, torch.from_numpy(audio), to_numpy=lambda t: t.detach().cpu().numpy())[0]
  np.testing.assert_allclose(scene, reference, rtol=1e-6)


def test_embeddings_are_the_taggers_on_the_same_windows(model, model_dir):
  audio = _sounds(1, 12.5, seed=2)  # longer than a window: two scene windows
  tagger = Tagger(model_dir, backend="jax", batch_size=4)
  expected = tagger.tag(audio[0], sample_rate=FS)
  np.testing.assert_allclose(hear.get_scene_embeddings(audio, model)[0], expected.embedding, rtol=1e-5, atol=1e-6)
  # A timestamp's embedding is that of the 1 s window centred on it.
  embeddings, timestamps = hear.get_timestamp_embeddings(audio, model)
  k = 40  # 2 s: its window is [1.5 s, 2.5 s)
  assert timestamps[0, k] == 2000.0
  one_second = Tagger(model_dir, backend="jax", batch_size=4, window=1.0)
  window = one_second.tag(audio[0, int(1.5 * FS) : int(2.5 * FS)], sample_rate=FS)
  np.testing.assert_allclose(embeddings[0, k], window.embedding, rtol=1e-5, atol=1e-6)


def test_bad_input_is_one_line(model):
  with pytest.raises(ValueError, match="n_sounds, n_samples"):
    hear.get_scene_embeddings(np.zeros(16000, np.float32), model)
  with pytest.raises(ValueError, match="non-finite"):
    hear.get_scene_embeddings(np.full((1, 16000), np.nan, np.float32), model)
  with pytest.raises(hear.UserError, match="model directory"):
    hear.load_model("")
