"""The HEAR 2021 embedding API (Turian et al., NeurIPS 2021) over a model directory.

  model = hear.load_model("models/H")
  scene = hear.get_scene_embeddings(audio, model)                 # (n_sounds, D)
  embeddings, timestamps = hear.get_timestamp_embeddings(audio, model)

`audio` is float (n_sounds, n_samples) in [-1, 1] at `model.sample_rate` (16 kHz), as a numpy
array, a jax array or a torch tensor (torch is never imported here unless the caller already
did); results come back in the caller's framework, float32. A scene embedding is what the
Tagger gives for the sound: the mean of the model's embeddings of its 10 s windows (a shorter
sound tiled, as the original tiles a clip). Timestamp embeddings: the ResNet's last feature map
has one column per 32 spectrogram hops (5,088 samples, 318 ms) and its embedding pools them, so
each timestamp gets its own window instead: the embedding of `TIMESTAMP_WINDOW_SECONDS` of audio
centred on it (the sound mirrored at its ends), every `TIMESTAMP_HOP_MS` from 0 to the sound's
end, the 50 ms hop of HEAR's baseline. docs/transfer.md#the-hear-api.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import numpy as np

from vggsound_jax.audio import decode as audio_lib
from vggsound_jax.errors import UserError

SAMPLE_RATE = audio_lib.SAMPLE_RATE
SCENE_WINDOW_SECONDS = audio_lib.CLIP_SECONDS  # what the model was trained on
# One second: about one VGGish patch (0.96 s), and 97 spectrogram frames (4 feature-map columns) for a ResNet.
TIMESTAMP_WINDOW_SECONDS = 1.0
TIMESTAMP_HOP_MS = 50.0  # HEAR's baseline hop; the event tasks score onsets at this resolution
DEFAULT_BATCH_SIZE = 16


class HearModel:
  """What `load_model` returns: the HEAR attributes, and the two classifiers behind them."""

  sample_rate = SAMPLE_RATE

  def __init__(
    self,
    path: str | os.PathLike,
    *,
    backend: str = "auto",
    batch_size: int = DEFAULT_BATCH_SIZE,
    timestamp_window: float = TIMESTAMP_WINDOW_SECONDS,
    timestamp_hop_ms: float = TIMESTAMP_HOP_MS,
  ) -> None:
    from vggsound_jax.serving import backends  # heavy: load on use

    if not timestamp_hop_ms > 0:
      raise ValueError(f"timestamp_hop_ms {timestamp_hop_ms}: must be positive")
    self.path = os.fspath(path)
    self.batch_size = batch_size
    self.scene_window = SCENE_WINDOW_SECONDS * SAMPLE_RATE
    self.timestamp_window = round(timestamp_window * SAMPLE_RATE)
    self.timestamp_hop_ms = float(timestamp_hop_ms)
    load = dict(backend=backend, batch_size=batch_size)
    self._scene, self.metadata = backends.load_classifier(path, num_samples=self.scene_window, **load)
    self._timestamp, _ = backends.load_classifier(path, num_samples=self.timestamp_window, **load)
    self.scene_embedding_size = int(self._scene.embedding_dim)
    self.timestamp_embedding_size = int(self._timestamp.embedding_dim)
    self.class_names = list(self.metadata.get("class_names") or [])

  @property
  def backend(self) -> str:
    return self._scene.backend

  def embed_windows(self, windows: np.ndarray, which: str) -> np.ndarray:
    """(n, window) int16 -> (n, D) float32 embeddings, in batches."""
    classifier = self._scene if which == "scene" else self._timestamp
    out = [classifier(windows[i : i + self.batch_size])[1] for i in range(0, len(windows), self.batch_size)]
    return np.concatenate(out) if out else np.zeros((0, classifier.embedding_dim), np.float32)


def load_model(model_file_path: str = "", **options: Any) -> HearModel:
  """The model of a model directory (vggsound-convert, training, vggsound-crossval). An exported
  directory serves one clip length, and HEAR needs two (scene and timestamp windows): give the
  model directory, which backend 'auto' exports for each on its own.

  `options`: `backend` ('auto': the fastest here, OpenVINO on a CPU), `batch_size`,
  `timestamp_window` (seconds), `timestamp_hop_ms`.
  """
  if not model_file_path:
    raise UserError("hear.load_model: give a model directory (e.g. vggsound-convert's output, models/H)")
  return HearModel(model_file_path, **options)


# ----------------------------------------------------------------------------- frameworks


def _framework(audio: Any) -> str:
  torch = sys.modules.get("torch")
  if torch is not None and isinstance(audio, torch.Tensor):
    return "torch"
  if type(audio).__module__.startswith(("jax", "jaxlib")):
    return "jax"
  return "numpy"


def _to_numpy(audio: Any, framework: str) -> np.ndarray:
  if framework == "torch":
    audio = audio.detach().cpu().float().numpy()
  audio = np.asarray(audio, dtype=np.float32)
  if audio.ndim != 2:
    raise ValueError(f"audio of shape {audio.shape}: expected (n_sounds, n_samples)")
  if not np.isfinite(audio).all():
    raise ValueError("audio: non-finite samples")
  return audio


def _like(values: np.ndarray, framework: str) -> Any:
  values = np.ascontiguousarray(values, np.float32)
  if framework == "torch":
    return sys.modules["torch"].from_numpy(values)
  if framework == "jax":
    import jax.numpy as jnp  # the caller has jax loaded already

    return jnp.asarray(values)
  return values


def _int16(sound: np.ndarray) -> np.ndarray:
  """A float sound at 16 kHz as the model reads it: the int16 an ffmpeg conversion gives."""
  if sound.size == 0:
    raise ValueError("audio: sounds of 0 samples have no embedding")
  return audio_lib.convert_waveform(sound, SAMPLE_RATE)


# ----------------------------------------------------------------------------- embeddings


def scene_windows(sound: np.ndarray, window: int) -> np.ndarray:
  """(W, window) int16: the Tagger's windows of a sound (one tiled window if not longer)."""
  from vggsound_jax.serving.tagger import window_starts

  return np.stack([audio_lib.to_clip(sound[s : s + window], window) for s in window_starts(sound.size, window, window)])


def timestamp_centres(num_samples: int, hop_ms: float) -> np.ndarray:
  """Timestamps (ms) every hop from 0 to the sound's end, as HEAR's baseline frames a sound."""
  duration_ms = num_samples / SAMPLE_RATE * 1000.0
  return np.arange(int(np.floor(duration_ms / hop_ms + 1e-9)) + 1) * hop_ms


def timestamp_windows(sound: np.ndarray, window: int, centres_ms: np.ndarray) -> np.ndarray:
  """(T, window) int16: `window` samples centred on each timestamp, the sound mirrored at its ends."""
  half = window // 2
  padded = np.pad(sound, (half, window - half), mode="symmetric")
  starts = np.round(centres_ms * SAMPLE_RATE / 1000.0).astype(np.int64)
  return np.stack([padded[s : s + window] for s in starts])


def get_scene_embeddings(audio: Any, model: HearModel) -> Any:
  """(n_sounds, n_samples) float -> (n_sounds, model.scene_embedding_size) float32."""
  framework = _framework(audio)
  sounds = _to_numpy(audio, framework)
  windows = [scene_windows(_int16(s), model.scene_window) for s in sounds]
  if not windows:
    return _like(np.zeros((0, model.scene_embedding_size), np.float32), framework)
  embedded = model.embed_windows(np.concatenate(windows), "scene")
  bounds = np.cumsum([0] + [len(w) for w in windows])
  return _like(np.stack([embedded[a:b].mean(axis=0) for a, b in zip(bounds[:-1], bounds[1:])]), framework)


def get_timestamp_embeddings(audio: Any, model: HearModel) -> tuple[Any, Any]:
  """(n_sounds, n_samples) float -> embeddings (n_sounds, T, timestamp_embedding_size) and
  timestamps (n_sounds, T) in ms, the centre of each embedding's window."""
  framework = _framework(audio)
  sounds = _to_numpy(audio, framework)
  centres = timestamp_centres(sounds.shape[1], model.timestamp_hop_ms)
  if not len(sounds):
    empty = np.zeros((0, len(centres), model.timestamp_embedding_size), np.float32)
    return _like(empty, framework), _like(np.zeros((0, len(centres))), framework)
  windows = np.concatenate([timestamp_windows(_int16(s), model.timestamp_window, centres) for s in sounds])
  embedded = model.embed_windows(windows, "timestamp").reshape(len(sounds), len(centres), -1)
  timestamps = np.broadcast_to(centres, (len(sounds), len(centres)))
  return _like(embedded, framework), _like(timestamps, framework)
