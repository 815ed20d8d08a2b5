"""Decoding gives the samples of the original's conversion, Debian's `ffmpeg -acodec pcm_s16le -ac 1
-ar 16000` (5.1): each source is converted by the real ffmpeg program and compared sample by sample
(docs/decoding.md)."""

import shutil
import subprocess

import av
import numpy as np
import pytest
import soundfile as sf

from vggsound_jax.audio.decode import AudioDecodeError, convert_waveform, decode_audio, stream_audio

RATES = (8000, 11025, 16000, 22050, 32000, 44100, 48000, 96000)
WAV_SUBTYPES = ("PCM_U8", "PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE")
FLAC_SUBTYPES = ("PCM_S8", "PCM_16", "PCM_24")
# PyAV's encoder and input format for each wav sample type, for files written with a channel mask.
_COMMON = ("-nostdin", "-v", "error", "-y")
_CONVERSION = ("-acodec", "pcm_s16le", "-ac", "1", "-ar", "16000")
PCM_CODECS = {"s16": ("pcm_s16le", np.int16), "s24": ("pcm_s24le", np.int32), "flt": ("pcm_f32le", np.float32)}


def _ffmpeg() -> str:
  program = shutil.which("ffmpeg")
  if program is None:
    pytest.fail("the ffmpeg command line is missing: install Debian's ffmpeg: apt-get install ffmpeg")
  return program


def _run(command: list[str]) -> bytes:
  result = subprocess.run(command, capture_output=True, check=False)
  assert result.returncode == 0, result.stderr.decode(errors="replace")
  return result.stdout


def ffmpeg_convert(path) -> np.ndarray:
  """What the original pipeline's command gives for `path`, as int16 (ffmpeg picks the stream)."""
  return np.frombuffer(_run([_ffmpeg(), *_COMMON, "-i", str(path), *_CONVERSION, "-f", "s16le", "-"]), np.int16)


def ffmpeg_convert_all(paths: list) -> list[np.ndarray]:
  """`ffmpeg_convert` of files with one audio stream each, in one run of ffmpeg (a run costs 0.1 s)."""
  command = [_ffmpeg(), *_COMMON]
  for path in paths:
    command += ["-i", str(path)]
  outputs = [f"{path}.s16" for path in paths]
  for i, output in enumerate(outputs):
    # The same conversion, one simple filter graph per output, as for a file on its own.
    command += ["-map", f"{i}:a", *_CONVERSION, "-f", "s16le", output]
  _run(command)
  return [np.fromfile(output, np.int16) for output in outputs]


def assert_same(ours: np.ndarray, reference: np.ndarray, source: str = "") -> None:
  assert ours.dtype == np.int16 and ours.ndim == 1
  assert ours.size == reference.size, f"{source}: {ours.size} samples, ffmpeg gives {reference.size}"
  different = np.flatnonzero(ours != reference)
  assert different.size == 0, (
    f"{source}: {different.size} of {ours.size} samples differ from ffmpeg's, first at {different[0]}, "
    f"by up to {np.abs(ours.astype(int) - reference).max()}"
  )


def assert_all_same(paths: list) -> None:
  for path, reference in zip(paths, ffmpeg_convert_all(paths)):
    assert_same(decode_audio(path), reference, path.name)


def signal(seconds: float, rate: int, channels: int, seed: int = 0) -> np.ndarray:
  """A tone and noise in [-1, 1], different in each channel, shape (samples, channels)."""
  t = np.arange(int(seconds * rate)) / rate
  gains = np.linspace(0.2, 0.5, channels)
  x = gains * np.sin(2 * np.pi * 440.0 * t)[:, None] + 0.2 * np.random.default_rng(seed).normal(size=(t.size, channels))
  return np.clip(x, -1.0, 1.0)


def write_with_mask(path, x: np.ndarray, rate: int, layout: str, sample_format: str) -> None:
  """A wav file that names its channels (WAVE_FORMAT_EXTENSIBLE with a channel mask)."""
  codec, dtype = PCM_CODECS[sample_format]
  scale = {np.int16: 32767, np.int32: 2**31 - 1, np.float32: 1.0}[dtype]
  frame_format = "s32" if sample_format == "s24" else sample_format
  with av.open(str(path), "w") as container:
    stream = container.add_stream(codec, rate=rate, layout=layout)
    frame = av.AudioFrame.from_ndarray((x * scale).astype(dtype).reshape(1, -1), format=frame_format, layout=layout)
    frame.sample_rate, frame.pts = rate, 0
    for packet in [*stream.encode(frame), *stream.encode(None)]:
      container.mux(packet)


@pytest.mark.parametrize("rate", RATES)
def test_wav(tmp_path, rate):
  paths = []
  for subtype in WAV_SUBTYPES:
    for channels in (1, 2):
      paths.append(tmp_path / f"{rate}_{subtype}_{channels}ch.wav")
      sf.write(paths[-1], signal(0.3, rate, channels), rate, subtype=subtype)
  assert_all_same(paths)


@pytest.mark.parametrize("rate", [16000, 22050, 44100, 48000, 96000])
def test_flac(tmp_path, rate):
  paths = []
  for subtype in FLAC_SUBTYPES:
    for channels in (1, 2, 6):
      paths.append(tmp_path / f"{rate}_{subtype}_{channels}ch.flac")
      sf.write(paths[-1], signal(0.3, rate, channels), rate, subtype=subtype)
  assert_all_same(paths)


def test_other_pcm_containers(tmp_path):
  paths = []
  for ext, subtype in (("aiff", "PCM_16"), ("aiff", "PCM_24"), ("aiff", "FLOAT"), ("au", "PCM_16")):
    paths.append(tmp_path / f"{subtype}.{ext}")
    sf.write(paths[-1], signal(0.3, 44100, 2), 44100, subtype=subtype)
  assert_all_same(paths)


def test_wav_without_channel_mask_is_downmixed_from_the_default_layout(tmp_path):
  paths = []
  for subtype in ("PCM_16", "PCM_24", "FLOAT"):
    for channels in (3, 4, 5, 6, 7, 8, 24):
      paths.append(tmp_path / f"{subtype}_{channels}ch.wav")
      sf.write(paths[-1], signal(0.3, 48000, channels), 48000, subtype=subtype)
      with av.open(str(paths[-1])) as container:
        assert container.streams.audio[0].layout.name == f"{channels} channels"  # no mask: ffmpeg guesses
  assert_all_same(paths)


def test_channels_that_ffmpeg_cannot_downmix_are_refused(tmp_path):
  # 10 unnamed channels have no default layout in ffmpeg 5.1 (newer versions call them 5.1.4).
  sf.write(tmp_path / "ten.wav", signal(0.3, 48000, 10), 48000, subtype="PCM_16")
  result = subprocess.run(
    [_ffmpeg(), *_COMMON, "-i", str(tmp_path / "ten.wav"), *_CONVERSION, "-f", "s16le", "-"], capture_output=True
  )
  assert result.returncode != 0
  with pytest.raises(AudioDecodeError, match="10 channels of no known layout cannot be downmixed"):
    decode_audio(tmp_path / "ten.wav")
  with pytest.raises(ValueError, match="10 channels"):
    convert_waveform(np.zeros((100, 10), np.int16), 48000)


def test_wav_with_channel_mask(tmp_path):
  paths = []
  for sample_format in PCM_CODECS:
    for layout in ("5.1", "5.1(side)", "7.1", "quad", "2.1"):
      paths.append(tmp_path / f"{sample_format}_{layout}.wav")
      write_with_mask(paths[-1], signal(0.3, 44100, av.AudioLayout(layout).nb_channels), 44100, layout, sample_format)
      with av.open(str(paths[-1])) as container:
        assert container.streams.audio[0].layout.name == layout
  assert_all_same(paths)


def _write_streams(path, streams: list[tuple[int, str, bool]]) -> None:
  """A Matroska file with one PCM audio stream per (rate, layout, default disposition)."""
  with av.open(str(path), "w") as container:
    added = []
    for rate, layout, default in streams:
      stream = container.add_stream("pcm_s16le", rate=rate, layout=layout)
      stream.disposition = av.stream.Disposition.default if default else av.stream.Disposition(0)
      added.append(stream)
    for seed, stream in enumerate(added):
      x = signal(0.5, stream.sample_rate, stream.channels, seed=seed)
      frame = av.AudioFrame.from_ndarray(
        (x * 32767).astype(np.int16).reshape(1, -1), format="s16", layout=stream.layout.name
      )
      frame.sample_rate, frame.pts = stream.sample_rate, 0
      for packet in [*stream.encode(frame), *stream.encode(None)]:
        container.mux(packet)


@pytest.mark.parametrize(
  "streams",
  [
    [(44100, "stereo", False), (48000, "5.1", False)],  # the most channels
    [(48000, "5.1", False), (44100, "stereo", False)],
    [(44100, "stereo", False), (48000, "stereo", False)],  # the first on ties
    [(44100, "stereo", True), (48000, "5.1", False)],  # the default disposition over channels
    [(22050, "mono", False), (44100, "stereo", True), (48000, "stereo", True)],
  ],
)
def test_the_stream_ffmpeg_picks(tmp_path, streams):
  path = tmp_path / "a.mka"
  _write_streams(path, streams)
  assert_same(decode_audio(path), ffmpeg_convert(path))


@pytest.mark.parametrize("rate,subtype", [(44100, "PCM_16"), (48000, "FLOAT"), (16000, "PCM_16"), (8000, "PCM_24")])
def test_stream_chunks_join_to_ffmpegs_output(tmp_path, rate, subtype):
  path = tmp_path / "a.wav"
  channels = 1 if rate == 16000 else 2  # 16 kHz mono: the file read as it is
  sf.write(path, signal(2.0, rate, channels), rate, subtype=subtype)
  chunks = list(stream_audio(path, chunk_seconds=0.3))
  assert all(chunk.size == 4800 for chunk in chunks[:-1]) and 0 < chunks[-1].size <= 4800
  reference = ffmpeg_convert(path)
  assert_same(np.concatenate(chunks), reference)
  # A cut is a prefix of the whole conversion, not a conversion of a cut file.
  assert_same(np.concatenate(list(stream_audio(path, chunk_seconds=0.4, max_seconds=1.1))), reference[:17600])


@pytest.mark.parametrize("rate", [8000, 16000, 44100, 48000])
def test_convert_waveform_is_ffmpegs_conversion_of_a_wav(tmp_path, rate):
  waveforms, paths = [], []
  for dtype in (np.uint8, np.int16, np.int32, np.float32, np.float64):
    for channels in (1, 2, 6):
      x = signal(0.3, rate, channels)
      paths.append(tmp_path / f"{np.dtype(dtype).name}_{channels}ch.wav")
      if dtype == np.uint8:
        samples = np.round(x * 127 + 128).astype(np.uint8)
        # soundfile writes no uint8 arrays: the same values as int16, which PCM_U8 stores exactly.
        sf.write(paths[-1], (samples.astype(np.int16) - 128) << 8, rate, subtype="PCM_U8")
      else:
        samples = x.astype(dtype) if dtype in (np.float32, np.float64) else (x * np.iinfo(dtype).max).astype(dtype)
        subtype = {np.int16: "PCM_16", np.int32: "PCM_32", np.float32: "FLOAT", np.float64: "DOUBLE"}[dtype]
        sf.write(paths[-1], samples, rate, subtype=subtype)
      waveforms.append(samples[:, 0] if channels == 1 else samples)
  for path, samples, reference in zip(paths, waveforms, ffmpeg_convert_all(paths)):
    assert_same(convert_waveform(samples, rate), reference, path.name)
