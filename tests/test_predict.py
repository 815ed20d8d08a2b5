"""scripts/predict.py end to end: a legacy-format PyTorch checkpoint, converted, classifies wav
files like the PyTorch model fed by the original scipy front end; bad files, bad output paths,
non-finite outputs and a killed run each give one line per problem and lose no result."""

import csv
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from vggsound_jax import labels
from vggsound_jax.conversion import convert
from vggsound_jax.testing import torch_reference

REPO = Path(__file__).resolve().parent.parent
PREDICT = REPO / "scripts" / "predict.py"
FS = 16000
# A file name that is not UTF-8: Python hands it over with a surrogate escape.
NOT_UTF8 = os.fsdecode(b"caf\xe9 \xff.wav")


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
  return torch_reference.original_probs(model, [sf.read(os.fsencode(path), dtype="int16")[0] for path in paths])


def _predict(model_dir, *args, code=None, cwd=None):
  """The command as a user runs it (or, with `code`, after running `code` in its process)."""
  env = dict(os.environ, VGGSOUND_JAX_CACHE=str(Path(model_dir).parent / "cache"))
  command = [sys.executable, str(PREDICT)] if code is None else [sys.executable, "-c", code]
  # Bytes, so that names that are not UTF-8 reach the process as they are on disk.
  argv = [os.fsencode(str(a)) for a in (*command, "--checkpoint", model_dir, *args)]
  return subprocess.run(argv, capture_output=True, env=env, cwd=cwd)


def _text(stream):
  return stream.decode("utf-8", "backslashreplace")


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
    encoding="utf-8",
  )
  return model, tmp


@pytest.fixture(scope="module")
def tiny(tiny_converted, tmp_path_factory):
  """The tiny converted model, and a folder holding it and good clips (one named in bytes that are not UTF-8)."""
  model, converted_dir = tiny_converted
  tmp = tmp_path_factory.mktemp("tiny")
  (tmp / "model").symlink_to(converted_dir / "model", target_is_directory=True)
  good = []
  for i, name in enumerate(["a.wav", NOT_UTF8, "c.wav"]):
    good.append(str(tmp / name))
    sf.write(os.fsencode(good[-1]), _speech_like(1.0 + i, seed=20 + i), FS, subtype="PCM_16")
  return model, tmp, good


@pytest.mark.slow
def test_predict_matches_pytorch_with_scipy_front_end(converted):
  model, tmp = converted
  paths = []
  for i, seconds in enumerate([10.0, 10.0, 3.5]):
    paths.append(str(tmp / f"clip{i}.wav"))
    sf.write(paths[-1], _speech_like(seconds, seed=i), FS, subtype="PCM_16")
  paths[1] = str(tmp / NOT_UTF8)
  os.rename(os.fsencode(tmp / "clip1.wav"), os.fsencode(paths[1]))
  out = tmp / "preds.npz"
  result = _predict(tmp / "model", "--batch_size", "2", "--top_k", "3", "--output", out, *paths)
  assert result.returncode == 0, _text(result.stderr)
  preds = np.load(out)
  assert list(preds["files"]) == paths
  assert [os.fsencode(name) for name in preds["files"]] == [os.fsencode(p) for p in paths]
  assert preds["probs"].shape == (3, 309) and preds["probs"].dtype == np.float32
  assert preds["embeddings"].shape == (3, 512) and preds["embeddings"].dtype == np.float32
  assert len(preds["class_names"]) == 309 and preds["class_names"][0] == "air conditioning noise"
  assert not (tmp / "preds.npz.partial").exists()

  expected = _original_probs(model, paths)
  assert np.max(np.abs(preds["probs"] - expected)) <= 1e-4
  # The printed top class is the reference's top class.
  top = preds["class_names"][expected[0].argmax()]
  assert _text(result.stdout).splitlines()[1].endswith(top)


def _expected_top(model, paths, k):
  names = labels.class_names()
  rows = []
  for p in _original_probs(model, paths):
    order = np.argsort(-p)[:k]
    rows.append(([names[i] for i in order], p[order]))
  return rows


def test_bad_files_are_one_line_each_and_the_good_ones_are_written(tiny):
  model, tmp, good = tiny
  bad = tmp / "bad"
  bad.mkdir()
  (bad / "folder.wav").mkdir()
  nan = np.full(FS, 0.1, np.float32)
  nan[100] = np.nan
  sf.write(bad / "nan.wav", nan, FS, subtype="FLOAT")
  sf.write(bad / "one_hz.wav", np.zeros(32000, np.int16), FS, subtype="PCM_16")
  header = bytearray((bad / "one_hz.wav").read_bytes())
  header[24:32] = struct.pack("<II", 1, 2)  # sample rate 1 Hz, 2 bytes per second: a 64 KB file of 9 hours
  (bad / "one_hz.wav").write_bytes(bytes(header))
  (bad / "corrupt.mp4").write_bytes(b"\x00garbage" * 100)
  files = [good[0], bad / "folder.wav", good[1], bad / "nan.wav", bad / "one_hz.wav", bad / "corrupt.mp4"]
  files += [bad / "missing.wav", good[2]]
  out = tmp / "preds.jsonl"
  result = _predict(tmp / "model", "--top_k", "3", "--batch_size", "2", "--output", out, *files)
  assert result.returncode == 1
  errors = _text(result.stderr).splitlines()
  assert errors == [
    f"error: {bad / 'folder.wav'}: is a directory",
    f"error: {bad / 'nan.wav'}: non-finite samples",
    f"error: {bad / 'one_hz.wav'}: sample rate 1 Hz is outside 1000-768000 Hz",
    errors[3],
    f"error: {bad / 'missing.wav'}: no such file",
    "5 of 8 files could not be classified",
  ]
  assert errors[3].startswith(f"error: {bad / 'corrupt.mp4'}: cannot decode")  # FFmpeg's words
  stdout = _text(result.stdout)
  assert "caf\\udce9 \\udcff.wav" in stdout and f"wrote {out}" in stdout

  rows = [json.loads(line) for line in out.read_bytes().decode("utf-8").splitlines()]
  assert [os.fsencode(row["file"]) for row in rows] == [os.fsencode(p) for p in good]
  for row, (names, probs) in zip(rows, _expected_top(model, good, 3)):
    assert row["labels"] == names
    np.testing.assert_allclose(row["probs"], probs, atol=1e-4)
  assert sorted(p.name for p in tmp.iterdir() if "preds" in p.name) == ["preds.jsonl"]


def test_csv_output(tiny):
  model, tmp, good = tiny
  out = tmp / "preds.csv"
  result = _predict(tmp / "model", "--top_k", "2", "--output", out, *good)
  assert result.returncode == 0, _text(result.stderr)
  with open(out, encoding="utf-8", errors="surrogateescape", newline="") as f:
    rows = list(csv.reader(f))
  assert rows[0] == ["file", "window", "start", "end", "label1", "prob1", "label2", "prob2"]
  # Clips of up to 10 s are one window each: its row, then the file's mean and max rows.
  assert [os.fsencode(row[0]) for row in rows[1:]] == [os.fsencode(p) for p in good for _ in range(3)]  # bytes on disk
  assert [row[1] for row in rows[1:]] == ["0", "mean", "max"] * 3
  for i, (names, probs) in enumerate(_expected_top(model, good, 2)):
    for row in rows[1 + 3 * i : 4 + 3 * i]:
      assert (float(row[2]), float(row[3])) == (0.0, sf.info(os.fsencode(good[i])).duration)
      assert row[4::2] == names
      np.testing.assert_allclose([float(p) for p in row[5::2]], probs, atol=1e-4)


@pytest.mark.slow
def test_long_recordings_are_tagged_window_by_window(converted, tmp_path):
  model, tmp = converted
  long, short = tmp_path / "long.flac", tmp_path / "short.wav"
  samples = np.concatenate([_speech_like(8.0, seed=s) for s in range(4)])  # 32 s
  sf.write(long, samples, FS, subtype="PCM_16")
  sf.write(short, _speech_like(4.0, seed=9), FS, subtype="PCM_16")
  out = tmp_path / "preds.npz"
  args = ("--hop", "8", "--batch_size", "3", "--backend", "jax", "--output")
  result = _predict(tmp / "model", *args, out, long, short)
  assert result.returncode == 0, _text(result.stderr)
  preds = np.load(out)
  starts = [0.0, 8.0, 16.0, 22.0]  # every 8 s, and one more ending at the end
  np.testing.assert_array_equal(preds["window_start"], starts + [0.0])
  np.testing.assert_array_equal(preds["window_end"], [s + 10 for s in starts] + [4.0])
  np.testing.assert_array_equal(preds["window_file"], [0, 0, 0, 0, 1])
  np.testing.assert_array_equal(preds["durations"], [32.0, 4.0])
  clips = [samples[int(s) * FS : int(s) * FS + 10 * FS] for s in starts]
  expected = torch_reference.original_probs(model, clips)
  np.testing.assert_allclose(preds["window_probs"][:4], expected, atol=1e-4)
  np.testing.assert_allclose(preds["probs"][0], expected.mean(axis=0), atol=1e-4)
  np.testing.assert_allclose(preds["max_probs"][0], expected.max(axis=0), atol=1e-4)
  np.testing.assert_allclose(preds["embeddings"][0], preds["window_embeddings"][:4].mean(axis=0), rtol=1e-5)
  np.testing.assert_allclose(preds["probs"][1], _original_probs(model, [str(short)])[0], atol=1e-4)
  # The printout gives each window of the long file its top class, then the mean's top-k.
  stdout = _text(result.stdout).splitlines()
  assert stdout[0] == str(long) and stdout[1].startswith("  [0:00.00-0:10.00] ") and "mean over 4 windows" in stdout[5]

  out = tmp_path / "preds.jsonl"
  result = _predict(tmp / "model", *args, out, "--top_k", "2", long)
  assert result.returncode == 0, _text(result.stderr)
  (row,) = [json.loads(line) for line in out.read_text().splitlines()]
  assert row["duration"] == 32.0 and [(w["start"], w["end"]) for w in row["windows"]] == [(s, s + 10) for s in starts]
  names = labels.class_names()
  for w, p in zip(row["windows"], expected):
    assert w["labels"] == [names[i] for i in np.argsort(-p)[:2]]
  assert row["labels"] == [names[i] for i in np.argsort(-expected.mean(axis=0))[:2]]
  assert row["max_labels"] == [names[i] for i in np.argsort(-expected.max(axis=0))[:2]]


@pytest.mark.slow
def test_plot_writes_one_timeline_per_file(tiny, tmp_path):
  model, tmp, good = tiny
  pictures = tmp_path / "pictures"
  result = _predict(tmp / "model", "--backend", "jax", "--plot", pictures, "--plot_classes", "3", *good)
  assert result.returncode == 0, _text(result.stderr)
  names = sorted(os.fsencode(p.name) for p in pictures.iterdir())
  assert names == sorted(os.fsencode(Path(p).name + ".png") for p in good)  # a name that is not UTF-8 too
  for path in pictures.iterdir():
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">I", data[16:20]) == (1200,)
  assert f"  timeline: {pictures / 'a.wav.png'}" in _text(result.stdout)
  # A file there that this project did not write is not replaced: one line, before any work.
  (pictures / "c.wav.png").write_bytes(b"my own picture")
  result = _predict(tmp_path / "no_model", "--plot", pictures, good[2])
  assert result.returncode == 1 and (pictures / "c.wav.png").read_bytes() == b"my own picture"
  message = f"error: {pictures / 'c.wav.png'}: exists and is not a picture written by vggsound-jax"
  assert _text(result.stderr).startswith(message) and _text(result.stderr).count("\n") == 1


def test_output_path_is_checked_before_any_work(tmp_path):
  (tmp_path / "taken.csv.partial").write_text("file,label1\nearlier.wav,dog\n")
  (tmp_path / "folder.npz").mkdir()
  cases = {
    tmp_path / "preds.txt": f"{tmp_path / 'preds.txt'}: unknown output format '.txt': use .npz, .csv or .jsonl",
    tmp_path / "no" / "preds.csv": f"{tmp_path / 'no'}: no such directory",
    tmp_path / "folder.npz": f"{tmp_path / 'folder.npz'}: is a directory",
    tmp_path / "taken.csv": f"{tmp_path / 'taken.csv.partial'}: holds the results of an interrupted run",
  }
  for output, message in cases.items():
    # The model directory does not exist either: the output is what gets reported.
    result = _predict(tmp_path / "no_model", "--output", output, tmp_path / "x.wav")
    assert result.returncode == 1
    assert _text(result.stderr).startswith(f"error: {message}") and _text(result.stderr).count("\n") == 1
  assert (tmp_path / "taken.csv.partial").read_text() == "file,label1\nearlier.wav,dog\n"
  # A model that cannot be loaded leaves no partial file behind.
  result = _predict(tmp_path / "no_model", "--output", tmp_path / "preds.jsonl", tmp_path / "x.wav")
  assert result.returncode == 1 and "no such model directory" in _text(result.stderr)
  assert sorted(p.name for p in tmp_path.iterdir() if p.name != "cache") == ["folder.npz", "taken.csv.partial"]


# Runs the command, but sends itself SIGNAL when the model is called for the KILL_AT-th batch.
KILL_AT = 3
_KILLED_RUN = """
import os, signal, sys
from vggsound_jax.serving import inference
calls = []
original = inference.Classifier.__call__
def call_or_die(self, audio):
  calls.append(1)
  if len(calls) == KILL_AT:
    os.kill(os.getpid(), SIGNAL)
  return original(self, audio)
inference.Classifier.__call__ = call_or_die
from vggsound_jax.cli.predict import run
run()
"""


def _killed_run(signum):
  return f"KILL_AT, SIGNAL = {KILL_AT}, {int(signum)}" + _KILLED_RUN


@pytest.mark.slow
@pytest.mark.parametrize(
  ("suffix", "signum"), [(".jsonl", signal.SIGKILL), (".npz", signal.SIGKILL), (".csv", signal.SIGINT)]
)
def test_a_killed_run_keeps_every_result_so_far(tiny, suffix, signum):
  _, tmp, good = tiny
  files = [good[i % 3] for i in range(7)]
  out = tmp / f"killed{suffix}"
  args = ("--batch_size", "2", "--backend", "jax", "--output", out, *files)
  result = _predict(tmp / "model", *args, code=_killed_run(signum))
  kept = 2 * (KILL_AT - 1)
  partial = tmp / f"killed{suffix}.partial"
  if signum == signal.SIGKILL:
    assert result.returncode == -signal.SIGKILL
  else:  # Ctrl-C: the project's two lines, no traceback
    assert result.returncode == 130
    assert _text(result.stderr).splitlines() == [
      f"stopped: the {kept} results so far are kept in {partial}",
      "interrupted",
    ]
  assert not out.exists()
  if suffix == ".jsonl":
    rows = [json.loads(line) for line in partial.read_text().splitlines()]
    assert [os.fsencode(row["file"]) for row in rows] == [os.fsencode(f) for f in files[:kept]]
  elif suffix == ".csv":
    with open(partial, encoding="utf-8", errors="surrogateescape", newline="") as f:
      rows = [row for row in csv.reader(f)][1:]
    assert [os.fsencode(row[0]) for row in rows] == [os.fsencode(f) for f in files[:kept] for _ in range(3)]
  else:
    names = [json.loads(line) for line in (partial / "files.txt").read_text().splitlines()]
    assert [os.fsencode(name) for name in names] == [os.fsencode(f) for f in files[:kept]]
    probs, embeddings = np.load(partial / "probs.npy"), np.load(partial / "embeddings.npy")
    assert probs.shape == (kept, 309) and embeddings.shape == (kept, 32)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(probs[0], probs[3], atol=1e-6)  # the same file, a.wav, twice
  before = sorted(p.name for p in tmp.rglob("*"))
  # Running again over it is refused, and the kept results stay.
  result = _predict(tmp / "model", "--output", out, *files)
  assert result.returncode == 1 and "interrupted run" in _text(result.stderr)
  assert sorted(p.name for p in tmp.rglob("*")) == before


def test_non_finite_outputs_fail_the_run(tmp_path):
  model = torch_reference.build_torch_model(18, "avgpool", width=4)
  torch_reference.randomize_(model, seed=1)
  with torch.no_grad():
    model.audnet.fc.weight.fill_(3e38)  # finite weights, logits that overflow to inf
  torch_reference.save_release_style(model, tmp_path / "overflow.pth.tar", legacy=False)
  convert(tmp_path / "overflow.pth.tar", tmp_path / "model")
  clip = tmp_path / "clip.wav"
  sf.write(clip, _speech_like(1.0, seed=1), FS, subtype="PCM_16")
  result = _predict(tmp_path / "model", "--output", tmp_path / "preds.npz", clip)
  assert result.returncode == 1
  assert _text(result.stderr).splitlines() == [
    f"error: {clip}: the model's outputs are not finite (NaN or inf)",
    "1 of 1 files could not be classified",
  ]
  preds = np.load(tmp_path / "preds.npz")
  assert preds["probs"].shape == (0, 309) and preds["files"].shape == (0,)


def test_bad_checkpoint_directory_is_one_line_error(tmp_path):
  result = subprocess.run(
    [sys.executable, str(PREDICT), "--checkpoint", str(tmp_path), "x.wav"],
    capture_output=True,
    text=True,
    encoding="utf-8",
  )
  assert result.returncode != 0
  assert "Traceback" not in result.stderr and str(tmp_path) in result.stderr
  assert result.stderr.count("\n") == 1  # and no library log lines


# Runs the command as on a CPU without bf16 arithmetic.
_NO_BF16_RUN = """
from vggsound_jax.serving import backends
backends.cpu_has_bf16 = lambda: False
from vggsound_jax.cli.predict import run
run()
"""


@pytest.mark.slow
def test_bf16_without_bf16_arithmetic_and_a_model_damaged_after_its_export(tiny, tmp_path):
  model, tmp, good = tiny
  directory = shutil.copytree(tmp / "model", tmp_path / "model")
  out = tmp_path / "preds.npz"
  result = _predict(directory, "--precision", "bf16", "--output", out, good[0], code=_NO_BF16_RUN)
  assert result.returncode == 0, _text(result.stderr)
  assert "note: this CPU has no bf16 arithmetic (AVX-512 BF16 or AMX): running fp32\n" in _text(result.stderr)
  np.testing.assert_allclose(np.load(out)["probs"], _original_probs(model, good[:1]), atol=1e-4)  # fp32 ran

  # The arrays change after the export was cached (the manifest does not): an error, not the old export.
  array = max((p for p in (directory / "state").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
  data = bytearray(array.read_bytes())
  data[len(data) // 2] ^= 0xFF
  array.write_bytes(bytes(data))
  for backend in ("auto", "jax"):
    result = _predict(directory, "--backend", backend, good[0])
    lines = _text(result.stderr).strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1, _text(result.stderr)
    assert lines[0].startswith(f"error: {array}: damaged: its sha256 differs from SHA256SUMS"), lines
