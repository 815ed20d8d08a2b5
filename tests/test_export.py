"""The exported ONNX graph (run by OpenVINO and by ONNX Runtime) and the runtime's backends, against
JAX (`models.forward`) and the original pipeline as the references."""

import json
import subprocess
import sys
import threading
from pathlib import Path

import jax
import numpy as np
import onnxruntime
import pytest
from flax import nnx

from vggsound_jax import manifest
from vggsound_jax.model_dir import ModelCheckpointError, save_model
from vggsound_jax.models import ModelConfig, forward
from vggsound_jax.serving import backends, exported, graph
from vggsound_jax.testing.random_model import random_model

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "export.py"
NUM_SAMPLES = 8000  # 0.5 s
BATCH = 4
FP32_TOLERANCE = 1e-4
NAMES = ("a", "b", "c", "d", "e")


def _model(config):
  model = random_model(config, seed=3, std=0.3)  # clearly different outputs for different clips
  for _, module in nnx.iter_graph(model):
    if isinstance(module, nnx.BatchNorm):  # random_model's variances can be negative: NaN everywhere
      module.var[...] = np.abs(module.var[...]) + 0.5
  return model


def _clips(n=3, seed=0):
  rng = np.random.default_rng(seed)
  t = np.arange(NUM_SAMPLES) / 16000
  clips = 8000 * np.sin(2 * np.pi * rng.uniform(100, 4000, (n, 1)) * t) + rng.normal(0, 500, (n, NUM_SAMPLES))
  clips[0] = rng.integers(-2, 3, NUM_SAMPLES)  # near silence: the log1p path of the front end
  return clips.astype(np.int16)


CLIPS = _clips()
CONFIGS = {
  "r18-avgpool": ModelConfig(depth=18, head="avgpool", width=4, num_classes=5),
  "r18-vlad": ModelConfig(depth=18, head="vlad", width=4, num_classes=5, num_clusters=4),
  "r50-avgpool-sigmoid": ModelConfig(depth=50, head="avgpool", width=4, num_classes=5, output="sigmoid"),
}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  """name -> (model directory, the JAX reference's (probs, embeddings) of CLIPS)."""
  out = {}
  for name, config in CONFIGS.items():
    model = _model(config)
    directory = save_model(tmp_path_factory.mktemp("models") / name, model, class_names=NAMES)
    out[name] = (directory, tuple(np.asarray(x) for x in jax.jit(forward)(model, CLIPS)))
  return out


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
  monkeypatch.setenv(backends.CACHE_ENV, str(tmp_path / "cache"))
  return tmp_path / "cache" / backends.EXPORT_CACHE_SUBDIR


def _onnxruntime(path, clips):
  session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
  return session.run(list(graph.OUTPUT_NAMES), {graph.INPUT_NAME: clips})


@pytest.mark.parametrize("name", list(CONFIGS))
def test_exported_graph_matches_jax(saved, tmp_path, name):
  """One graph, two runtimes: the exported directory's model.onnx in OpenVINO (through the
  backend) and in ONNX Runtime, both against models.forward."""
  directory, (want_probs, want_embeddings) = saved[name]
  metadata = exported.export_model(directory, tmp_path / "exported", num_samples=NUM_SAMPLES)
  assert metadata["source_model_hash"] == exported.model_hash(directory)
  for batch in (CLIPS, CLIPS[:1]):  # the batch is dynamic
    got_probs, got_embeddings = _onnxruntime(tmp_path / "exported" / exported.GRAPH_FILE, batch)
    np.testing.assert_allclose(got_probs, want_probs[: len(batch)], atol=FP32_TOLERANCE, rtol=0)
    np.testing.assert_allclose(got_embeddings, want_embeddings[: len(batch)], atol=FP32_TOLERANCE, rtol=0)
  classifier, loaded = backends.load_classifier(tmp_path / "exported", batch_size=BATCH, num_samples=NUM_SAMPLES)
  assert (classifier.backend, classifier.batch_size, classifier.num_samples) == ("openvino", BATCH, NUM_SAMPLES)
  assert loaded["class_names"] == list(NAMES) and loaded["precision"] == "fp32"
  probs, embeddings = classifier(CLIPS)  # 3 clips: a padded batch
  assert probs.dtype == embeddings.dtype == np.float32
  assert embeddings.shape == want_embeddings.shape == (3, classifier.embedding_dim)
  np.testing.assert_allclose(probs, want_probs, atol=FP32_TOLERANCE, rtol=0)
  np.testing.assert_allclose(embeddings, want_embeddings, atol=FP32_TOLERANCE, rtol=0)
  assert np.ptp(want_probs, axis=0).max() > 5 * FP32_TOLERANCE  # the clips tell apart: the comparison means something


def test_bf16_export_reports_agreement_with_fp32(saved, tmp_path, monkeypatch):
  monkeypatch.setattr(backends, "cpu_has_bf16", lambda: True)  # whatever this CPU has: OpenVINO takes the hint
  directory, _ = saved["r18-vlad"]
  exported.export_model(directory, tmp_path / "bf16", precision="bf16", num_samples=NUM_SAMPLES)
  bf16, metadata = backends.load_classifier(tmp_path / "bf16", batch_size=BATCH, num_samples=NUM_SAMPLES)
  fp32, _ = backends.load_classifier(tmp_path / "bf16", batch_size=BATCH, num_samples=NUM_SAMPLES, precision="fp32")
  assert metadata["precision"] == bf16.precision == "bf16" and fp32.precision == "fp32"
  clips = _clips(4, seed=1)
  probs, _ = bf16(clips)
  agreement = float(np.mean(probs.argmax(1) == fp32(clips)[0].argmax(1)))
  assert 0.0 <= agreement <= 1.0
  assert np.isfinite(probs).all() and np.allclose(probs.sum(1), 1.0, atol=2e-2)


def test_auto_exports_once_into_the_cache_and_reuses_it(saved, cache, monkeypatch):
  directory, (want_probs, _) = saved["r18-avgpool"]
  classifier, metadata = backends.load_classifier(directory, batch_size=BATCH, num_samples=NUM_SAMPLES)
  assert classifier.backend == "openvino" and metadata["class_names"] == list(NAMES)
  (entry,) = cache.iterdir()  # one complete entry, no scratch directory left behind
  assert sorted(p.name for p in entry.iterdir()) == sorted(
    [exported.GRAPH_FILE, exported.METADATA_FILE, exported.MANIFEST]
  )

  def no_export(*args, **kwargs):
    raise AssertionError("exported again")

  monkeypatch.setattr(exported, "write_export", no_export)
  again, _ = backends.load_classifier(directory, batch_size=2, num_samples=NUM_SAMPLES)
  np.testing.assert_allclose(again(CLIPS[:2])[0], want_probs[:2], atol=FP32_TOLERANCE, rtol=0)
  # Another clip length is another entry.
  monkeypatch.undo()
  monkeypatch.setenv(backends.CACHE_ENV, str(cache.parent))
  backends.load_classifier(directory, batch_size=BATCH, num_samples=NUM_SAMPLES + 159)
  assert len(list(cache.iterdir())) == 2


def test_damaged_cache_entry_is_exported_again(saved, cache):
  directory, _ = saved["r18-avgpool"]
  backends.load_classifier(directory, batch_size=BATCH, num_samples=NUM_SAMPLES)
  (entry,) = cache.iterdir()
  (entry / exported.GRAPH_FILE).write_bytes(b"truncated")
  classifier, _ = backends.load_classifier(directory, batch_size=BATCH, num_samples=NUM_SAMPLES)
  assert classifier.backend == "openvino"
  exported.verify_manifest(entry)
  assert [p.name for p in cache.iterdir()] == [entry.name]


def test_concurrent_loads_share_one_complete_entry(saved, cache):
  directory, _ = saved["r18-vlad"]
  results, errors = [], []

  def load():
    try:
      results.append(backends.load_classifier(directory, batch_size=BATCH, num_samples=NUM_SAMPLES)[0].backend)
    except Exception as e:  # noqa: BLE001 - reported below
      errors.append(e)

  threads = [threading.Thread(target=load) for _ in range(3)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert not errors and results == ["openvino"] * 3
  (entry,) = cache.iterdir()
  exported.verify_manifest(entry)


def test_forced_and_fallback_backends(saved, tmp_path, monkeypatch, capsys):
  directory, reference = saved["r18-vlad"]
  clips = CLIPS
  jax_classifier, metadata = backends.load_classifier(
    directory, backend="jax", batch_size=BATCH, num_samples=NUM_SAMPLES
  )
  assert jax_classifier.backend == "jax" and metadata["class_names"] == list(NAMES)
  ov_classifier, _ = backends.load_classifier(directory, backend="openvino", batch_size=BATCH, num_samples=NUM_SAMPLES)
  assert ov_classifier.backend == "openvino"
  for got_jax, got_openvino, want in zip(jax_classifier(clips), ov_classifier(clips), reference):
    np.testing.assert_allclose(got_jax, want, atol=1e-6, rtol=0)
    np.testing.assert_allclose(got_openvino, want, atol=FP32_TOLERANCE, rtol=0)
  with pytest.raises(ValueError, match="exceeds batch_size"):
    ov_classifier(_clips(BATCH + 1))
  with pytest.raises(ValueError, match=r"expected \(n, 8000\)"):
    jax_classifier(clips[:, :-1])
  with pytest.raises(backends.BackendError, match="unknown backend 'tpu'"):
    backends.load_classifier(directory, backend="tpu")

  output = tmp_path / "exported"
  exported.export_model(directory, output, num_samples=NUM_SAMPLES)
  with pytest.raises(backends.BackendError, match="runs on openvino only"):
    backends.load_classifier(output, backend="jax", num_samples=NUM_SAMPLES)
  with pytest.raises(backends.BackendError, match="exported for clips of 8000 samples, not 16000"):
    backends.load_classifier(output, num_samples=16000)

  # On an accelerator, auto runs JAX.
  monkeypatch.setattr(backends, "jax_on_cpu_only", lambda: False)
  assert backends.load_classifier(directory, batch_size=BATCH, num_samples=NUM_SAMPLES)[0].backend == "jax"
  # Without openvino: auto runs JAX, and forcing it is one line.
  monkeypatch.setattr(backends, "openvino_version", lambda: None)
  assert backends.load_classifier(directory, batch_size=BATCH, num_samples=NUM_SAMPLES)[0].backend == "jax"
  with pytest.raises(backends.BackendError, match="'openvino' is not installed"):
    backends.load_classifier(directory, backend="openvino", num_samples=NUM_SAMPLES)
  assert capsys.readouterr().err == ""


def test_vggish_falls_back_to_jax(tmp_path, capsys):
  config = ModelConfig(arch="vggish", width=4, fc_width=32, num_classes=5)
  model = random_model(config)
  directory = save_model(tmp_path / "vggish", model, class_names=NAMES)
  clips = np.random.default_rng(0).integers(-3000, 3000, (2, 16000)).astype(np.int16)  # one 0.96 s patch
  classifier, _ = backends.load_classifier(directory, batch_size=2, num_samples=16000)
  assert classifier.backend == "jax"
  assert "note: running on JAX instead of OpenVINO" in capsys.readouterr().err
  np.testing.assert_allclose(classifier(clips)[0], np.asarray(jax.jit(forward)(model, clips)[0]), atol=1e-6)
  with pytest.raises(backends.BackendError, match="vggish model cannot be exported"):
    backends.load_classifier(directory, backend="openvino", num_samples=16000)
  with pytest.raises(exported.UnsupportedExportError):
    exported.export_model(directory, tmp_path / "out", num_samples=16000)


@pytest.mark.slow
def test_exported_model_runs_without_jax_tensorflow_or_telemetry(saved, tmp_path):
  directory, _ = saved["r18-avgpool"]
  exported.export_model(directory, tmp_path / "exported", num_samples=NUM_SAMPLES)
  code = (
    "import os, sys, numpy as np\n"
    "forks = []\n"
    "os.register_at_fork(before=lambda: forks.append(1))\n"
    "from vggsound_jax.serving.backends import load_classifier\n"
    f"c, m = load_classifier({str(tmp_path / 'exported')!r}, batch_size=2, num_samples={NUM_SAMPLES})\n"
    f"probs, _ = c(np.zeros((1, {NUM_SAMPLES}), np.int16))\n"
    "assert probs.shape == (1, 5), probs.shape\n"
    "print(sorted(m for m in ('jax', 'tensorflow', 'torch', 'scipy.signal') if m in sys.modules), len(forks))\n"
  )
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, encoding="utf-8", timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  # No fork either: openvino's usage telemetry (a network call from a forked process) stays off.
  assert result.stdout.strip() == "[] 0"


def _export_command(*args, cwd):
  return subprocess.run(
    [sys.executable, str(SCRIPT), *map(str, args)],
    capture_output=True,
    text=True,
    encoding="utf-8",
    timeout=300,
    cwd=cwd,
  )


@pytest.mark.slow
def test_export_command(saved, tmp_path):
  directory, _ = saved["r18-avgpool"]
  output = tmp_path / "out"
  result = _export_command("--checkpoint", directory, "--output", output, "--num_samples", NUM_SAMPLES, cwd=tmp_path)
  assert result.returncode == 0, result.stderr[-2000:]
  assert "(directory): ResNet-18 avgpool, 5 classes, clips of 8000 samples, fp32" in result.stdout
  assert exported.read_metadata(output)["num_samples"] == NUM_SAMPLES
  onnx_file = tmp_path / "tiny.onnx"
  result = _export_command(
    "--checkpoint", directory, "--output", onnx_file, "--format", "onnx", "--precision", "bf16", cwd=tmp_path
  )
  assert result.returncode == 0, result.stderr[-2000:]
  assert "(onnx): ResNet-18 avgpool, 5 classes, clips of 160000 samples, bf16" in result.stdout
  assert exported.read_onnx_metadata(onnx_file)["precision"] == "bf16"

  # Refused before any work: an existing output without --overwrite, or a directory it did not write.
  with pytest.raises(exported.ExportError, match="already exists"):
    exported.export_model(directory, output, num_samples=NUM_SAMPLES)
  (output / "notes.txt").write_text("mine")
  with pytest.raises(exported.ExportError, match="notes.txt: was not written by vggsound-jax"):
    exported.export_model(directory, output, num_samples=NUM_SAMPLES, overwrite=True)
  foreign = tmp_path / "foreign"
  foreign.mkdir()
  (foreign / "data.txt").write_text("keep me")
  bad = tmp_path / "not_a_model"
  bad.mkdir()
  for args, message in [
    (
      ["--checkpoint", directory, "--output", foreign, "--overwrite"],
      "is not an exported model written by vggsound-jax",
    ),
    (["--checkpoint", bad, "--output", tmp_path / "new"], "not a model checkpoint"),
  ]:
    result = _export_command(*args, cwd=tmp_path)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
  assert (foreign / "data.txt").read_text() == "keep me"
  assert not (tmp_path / "new").exists()


def test_graph_refuses_a_module_it_does_not_know():
  vggish = random_model(ModelConfig(arch="vggish", width=4, fc_width=32, num_classes=5))
  with pytest.raises(exported.UnsupportedExportError, match="a model the exporter has no graph for"):
    graph.build_graph(vggish, NUM_SAMPLES)

  class Unknown(nnx.Module):
    pass

  model = _model(CONFIGS["r18-avgpool"])
  model.layer2 = nnx.List([Unknown()])
  with pytest.raises(exported.UnsupportedExportError, match="^Unknown: a block the exporter has no graph for"):
    graph.build_graph(model, NUM_SAMPLES)


def test_onnx_format_is_one_standalone_file(saved, tmp_path):
  directory, (want_probs, want_embeddings) = saved["r18-vlad"]
  output = tmp_path / "model.onnx"
  metadata = exported.export_model(directory, output, num_samples=NUM_SAMPLES, format="onnx")
  assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]  # no scratch file left
  assert exported.read_onnx_metadata(output) == metadata
  assert metadata["class_names"] == list(NAMES) and metadata["num_samples"] == NUM_SAMPLES
  got_probs, got_embeddings = _onnxruntime(output, CLIPS)
  np.testing.assert_allclose(got_probs, want_probs, atol=FP32_TOLERANCE, rtol=0)
  np.testing.assert_allclose(got_embeddings, want_embeddings, atol=FP32_TOLERANCE, rtol=0)

  with pytest.raises(exported.ExportError, match="already exists"):
    exported.export_model(directory, output, num_samples=NUM_SAMPLES, format="onnx")
  exported.export_model(directory, output, num_samples=NUM_SAMPLES, format="onnx", overwrite=True)
  foreign = tmp_path / "other.onnx"
  foreign.write_bytes(b"someone else's model")
  with pytest.raises(exported.ExportError, match="not an ONNX export written by vggsound-jax"):
    exported.export_model(directory, foreign, num_samples=NUM_SAMPLES, format="onnx", overwrite=True)
  assert foreign.read_bytes() == b"someone else's model"
  with pytest.raises(exported.ExportError, match=r"one file named \*\.onnx"):
    exported.export_model(directory, tmp_path / "model.bin", num_samples=NUM_SAMPLES, format="onnx")


@pytest.mark.slow
def test_onnx_graph_matches_the_original_pipeline(tmp_path):
  """A released-style PyTorch checkpoint, converted, exported to ONNX and run by ONNX Runtime on
  10 s clips, against the original's scipy front end and PyTorch network."""
  import torch

  from vggsound_jax.conversion import convert
  from vggsound_jax.testing import torch_reference

  torch_model = torch_reference.randomize_(torch_reference.build_torch_model(18, "avgpool", width=4), seed=5).eval()
  with torch.no_grad():  # logits of order 1: probabilities that differ between clips, not one-hot
    next(p for name, p in torch_model.named_parameters() if name.endswith("fc.weight")).mul_(0.01)
  torch_reference.save_release_style(torch_model, tmp_path / "tiny.pth.tar", legacy=False)
  convert(tmp_path / "tiny.pth.tar", tmp_path / "model")
  exported.export_model(tmp_path / "model", tmp_path / "tiny.onnx", format="onnx")
  rng = np.random.default_rng(4)
  t = np.arange(160000) / 16000
  clips = (8000 * np.sin(2 * np.pi * rng.uniform(100, 4000, (2, 1)) * t) + rng.normal(0, 300, (2, t.size))).astype(
    np.int16
  )
  want = torch_reference.original_probs(torch_model, list(clips))
  got, _ = _onnxruntime(tmp_path / "tiny.onnx", clips)
  np.testing.assert_allclose(got, want, atol=FP32_TOLERANCE, rtol=0)
  assert np.ptp(want, axis=0).max() > 5 * FP32_TOLERANCE


@pytest.mark.slow
def test_bf16_on_a_cpu_without_bf16_arithmetic_runs_fp32(saved, tmp_path, monkeypatch, capsys):
  directory, _ = saved["r18-avgpool"]
  exported.export_model(directory, tmp_path / "bf16", precision="bf16", num_samples=NUM_SAMPLES)
  monkeypatch.setattr(backends, "cpu_has_bf16", lambda: False)
  for path, backend in ((tmp_path / "bf16", "auto"), (directory, "openvino"), (directory, "jax")):
    classifier, _ = backends.load_classifier(
      path, backend=backend, batch_size=BATCH, num_samples=NUM_SAMPLES, precision=None if backend == "auto" else "bf16"
    )
    assert classifier.precision == "fp32", backend
    assert capsys.readouterr().err == "note: this CPU has no bf16 arithmetic (AVX-512 BF16 or AMX): running fp32\n"
  monkeypatch.setattr(backends, "cpu_has_bf16", lambda: True)
  assert backends.load_classifier(tmp_path / "bf16", batch_size=BATCH, num_samples=NUM_SAMPLES)[0].precision == "bf16"
  assert capsys.readouterr().err == ""


def test_cpu_has_bf16_reads_the_cpu_flags(tmp_path, monkeypatch):
  cpuinfo = tmp_path / "cpuinfo"
  monkeypatch.setattr(backends, "CPUINFO", cpuinfo)
  for text, want in [
    ("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_vnni\n", False),
    ("flags\t\t: fpu avx512f avx512_bf16\n", True),
    ("Features\t: fp asimd bf16 i8mm\n", True),  # Arm
    ("processor\t: 0\n", None),
  ]:
    cpuinfo.write_text(text)
    assert backends.cpu_has_bf16() is want, text
  cpuinfo.unlink()
  assert backends.cpu_has_bf16() is None


def _flip_a_byte(path):
  data = bytearray(path.read_bytes())
  data[len(data) // 2] ^= 0xFF
  path.write_bytes(bytes(data))  # same size; the mtime moves


def test_a_model_directory_damaged_after_its_export_is_an_error(saved, tmp_path, cache, monkeypatch):
  directory = save_model(tmp_path / "model", _model(CONFIGS["r18-avgpool"]), class_names=NAMES)
  backends.load_classifier(directory, batch_size=BATCH, num_samples=NUM_SAMPLES)  # exports into the cache

  # Unchanged: the cached export runs without hashing the arrays again.
  verify = manifest.verify

  def no_hashing(path, *args, **kwargs):
    assert Path(path) != directory, "the model directory was hashed again"
    return verify(path, *args, **kwargs)

  monkeypatch.setattr(manifest, "verify", no_hashing)
  assert backends.load_classifier(directory, batch_size=BATCH, num_samples=NUM_SAMPLES)[0].backend == "openvino"
  monkeypatch.undo()
  monkeypatch.setenv(backends.CACHE_ENV, str(cache.parent))

  # Touched but intact: hashed once, then recorded again.
  array = max(
    (directory / n for n in manifest.files(directory) if n.startswith("state/")), key=lambda p: p.stat().st_size
  )
  array.touch()
  assert backends.load_classifier(directory, batch_size=BATCH, num_samples=NUM_SAMPLES)[0].backend == "openvino"

  _flip_a_byte(array)
  for backend in ("auto", "openvino"):
    with pytest.raises(backends.ModelDirectoryError, match=r"damaged: its sha256 differs from SHA256SUMS") as e:
      backends.load_classifier(directory, backend=backend, batch_size=BATCH, num_samples=NUM_SAMPLES)
    assert e.value.path == str(array)
  with pytest.raises(ModelCheckpointError, match="damaged"):  # as the JAX backend says it
    backends.load_classifier(directory, backend="jax", batch_size=BATCH, num_samples=NUM_SAMPLES)


def test_an_export_of_an_earlier_format_is_refused(saved, tmp_path):
  directory, _ = saved["r18-avgpool"]
  output = tmp_path / "old"
  exported.export_model(directory, output, num_samples=NUM_SAMPLES)
  metadata = json.loads((output / exported.METADATA_FILE).read_text())
  (output / exported.METADATA_FILE).write_text(json.dumps(dict(metadata, format="vggsound_jax.export/1")))
  manifest.write_manifest(output)
  with pytest.raises(exported.ExportError, match=r"export.json: format 'vggsound_jax.export/1' of another version"):
    backends.load_classifier(output, num_samples=NUM_SAMPLES)
