"""VGGish's jnp front end against Google's numpy one (`torchvggish.vggish_input.waveform_to_examples`)."""

import jax
import numpy as np
import pytest

from vggsound_jax.audio import vggish_frontend
from vggsound_jax.audio.decode import CLIP_SAMPLES, SAMPLE_RATE
from vggsound_jax.testing.torchvggish_reference import import_torchvggish

vggish_input = import_torchvggish().vggish_input


def _clips(num_samples):
  """int16 clips: a tone, a chord with a 40 Hz hum, white noise, quiet noise, silence, a click."""
  t = np.arange(num_samples) / SAMPLE_RATE
  rng = np.random.default_rng(0)
  clips = {
    "tone": 12000 * np.sin(2 * np.pi * 440 * t),
    "chord": 5000 * (np.sin(2 * np.pi * 40 * t) + np.sin(2 * np.pi * 1250 * t) + np.sin(2 * np.pi * 6100 * t)),
    "noise": rng.normal(0, 4000, num_samples),
    "quiet_noise": rng.normal(0, 3, num_samples),
    "silence": np.zeros(num_samples),
    "click": np.where(np.arange(num_samples) == num_samples // 3, 30000, 0),
  }
  return {k: np.clip(np.round(v), -32768, 32767).astype(np.int16) for k, v in clips.items()}


def _reference(clip):
  # As the original reads a wav file: int16 / 32768.
  return vggish_input.waveform_to_examples(clip / 32768.0, SAMPLE_RATE, return_tensor=False)


def test_ten_seconds_give_ten_patches_of_96_by_64():
  assert vggish_frontend.num_frames(CLIP_SAMPLES) == 998
  assert vggish_frontend.num_patches(CLIP_SAMPLES) == 10
  assert _reference(np.zeros(CLIP_SAMPLES, np.int16)).shape == (10, 96, 64)


@pytest.mark.parametrize("num_samples", [CLIP_SAMPLES, 3 * SAMPLE_RATE + 1234])
def test_patches_match_the_numpy_reference(num_samples):
  clips = _clips(num_samples)
  batch = np.stack(list(clips.values()))
  ours = np.asarray(jax.jit(vggish_frontend.log_mel_patches)(batch))
  assert ours.shape == (len(clips), vggish_frontend.num_patches(num_samples), 96, 64, 1)
  for i, (name, clip) in enumerate(clips.items()):
    reference = _reference(clip)
    assert ours[i, ..., 0].shape == reference.shape, name
    # Natural-log units, float32 against float64: the largest differences (about 1.5e-4) are
    # float32 FFT rounding in the bands far from a loud tone.
    np.testing.assert_allclose(ours[i, ..., 0], reference, atol=5e-4, rtol=0, err_msg=name)


def test_silence_is_log_of_the_offset():
  patches = np.asarray(vggish_frontend.log_mel_patches(np.zeros((1, CLIP_SAMPLES), np.int16)))
  np.testing.assert_array_equal(patches, np.float32(np.log(np.float32(0.01))))


def test_mel_matrix_is_the_reference_one():
  reference = vggish_input.mel_features.spectrogram_to_mel_matrix(
    num_mel_bins=64, num_spectrogram_bins=257, audio_sample_rate=16000, lower_edge_hertz=125, upper_edge_hertz=7500
  )
  np.testing.assert_allclose(vggish_frontend.mel_matrix(), reference, rtol=1e-12, atol=1e-12)


def test_float_input_is_taken_as_scaled():
  clip = _clips(SAMPLE_RATE * 2)["chord"]
  from_int = vggish_frontend.log_mel_patches(clip[None])
  from_float = vggish_frontend.log_mel_patches((clip / 32768.0).astype(np.float32)[None])
  np.testing.assert_allclose(np.asarray(from_float), np.asarray(from_int), atol=1e-5)


def test_too_short_for_one_patch_is_an_error():
  assert vggish_frontend.num_patches(vggish_frontend.MIN_SAMPLES) == 1
  assert vggish_frontend.num_patches(vggish_frontend.MIN_SAMPLES - 1) == 0
  with pytest.raises(ValueError, match="at least 15600 samples"):
    vggish_frontend.log_mel_patches(np.zeros((1, vggish_frontend.MIN_SAMPLES - 1), np.int16))
