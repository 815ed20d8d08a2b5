"""converters/pytorch_to_flax.py: random-weight PyTorch models of the original architecture,
saved like the release in both formats, converted, give the same logits and embeddings; bad
inputs give one-line errors naming the problem."""

import collections
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from vggsound_jax import labels
from vggsound_jax.conversion import convert
from vggsound_jax.conversion.resnet import flax_model_from_state_dict
from vggsound_jax.conversion.torch_pickle import TorchCheckpointError
from vggsound_jax.errors import ConversionError
from vggsound_jax.model_dir import ModelCheckpointError, load_model
from vggsound_jax.testing import torch_reference

REPO = Path(__file__).resolve().parent.parent
CONVERTER = REPO / "converters" / "pytorch_to_flax.py"
# A short time axis keeps the full-width ResNet-18 fast on CPU.
INPUT_SHAPE = (2, 1, 257, 96)
MAX_RELATIVE_ERROR = 1e-4


def _run_cli(*args):
  return subprocess.run(
    [sys.executable, str(CONVERTER), *map(str, args)], capture_output=True, text=True, encoding="utf-8"
  )


def _relative_error(actual, expected):
  return np.max(np.abs(actual - expected)) / np.max(np.abs(expected))


def _random_torch_model(depth, head, width, seed):
  model = torch_reference.build_torch_model(depth, head, width=width)
  return torch_reference.randomize_(model, seed=seed).eval()


@pytest.mark.slow
@pytest.mark.parametrize("legacy", [True, False], ids=["legacy", "zip"])
@pytest.mark.parametrize(
  "depth,head,width", [(18, "avgpool", 64), (18, "vlad", 64), (34, "avgpool", 16), (50, "avgpool", 16)]
)
def test_converted_model_matches_pytorch(tmp_path, depth, head, width, legacy):
  torch_model = _random_torch_model(depth, head, width, seed=depth + legacy)
  checkpoint = tmp_path / f"vggsound_{head}.pth.tar"
  torch_reference.save_release_style(torch_model, checkpoint, legacy=legacy)
  output = tmp_path / "model"
  if depth == 18 and head == "avgpool" and legacy:  # the released model H, through the CLI
    result = _run_cli("--input", checkpoint, "--output", output)
    assert result.returncode == 0, result.stderr
    assert "ResNet-18 avgpool" in result.stdout
  else:
    convert(checkpoint, output)

  model, metadata = load_model(output)
  config = metadata["model_config"]
  assert {k: config[k] for k in ("depth", "head", "num_classes", "width", "num_clusters", "dtype")} == dict(
    depth=depth, head=head, num_classes=309, width=width, num_clusters=16, dtype="float32"
  )
  assert metadata["class_names"] == list(labels.class_names())
  assert metadata["source"]["file"] == checkpoint.name
  assert metadata["source"]["sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()

  x = np.random.default_rng(depth).standard_normal(INPUT_SHAPE).astype(np.float32)
  with torch.no_grad():
    expected_logits = torch_model(torch.from_numpy(x)).numpy()
    expected_embedding = torch_model.embed(torch.from_numpy(x)).numpy()
  logits, embedding = model(x.transpose(0, 2, 3, 1), return_embedding=True)
  assert _relative_error(np.asarray(logits), expected_logits) <= MAX_RELATIVE_ERROR
  assert embedding.shape == expected_embedding.shape
  assert _relative_error(np.asarray(embedding), expected_embedding) <= MAX_RELATIVE_ERROR


@pytest.mark.slow
def test_bare_state_dict_and_in_memory_conversion(tmp_path):
  torch_model = _random_torch_model(18, "vlad", 8, seed=1)
  checkpoint = tmp_path / "bare.pth"
  torch.save(torch_model.state_dict(), checkpoint)  # no model_state_dict wrapper
  convert(checkpoint, tmp_path / "model")
  model, _ = load_model(tmp_path / "model")
  in_memory = flax_model_from_state_dict({k: v.numpy() for k, v in torch_model.state_dict().items()}, dtype="bfloat16")
  assert in_memory.config.dtype == "bfloat16" and in_memory.config.head == "vlad"
  x = np.random.default_rng(0).standard_normal(INPUT_SHAPE).astype(np.float32)
  with torch.no_grad():
    expected = torch_model(torch.from_numpy(x)).numpy()
  assert _relative_error(np.asarray(model(x.transpose(0, 2, 3, 1))), expected) <= MAX_RELATIVE_ERROR
  # bf16 compute: same model, coarser arithmetic.
  assert _relative_error(np.asarray(in_memory(x.transpose(0, 2, 3, 1))), expected) <= 0.1


class _Payload:
  """Unpickling this runs a shell command that creates `marker`."""

  def __init__(self, marker):
    self.marker = str(marker)

  def __reduce__(self):
    return (os.system, (f"touch {self.marker}",))


def _save_malicious(path, marker, legacy, where):
  state = collections.OrderedDict(torch_reference.build_torch_model(18, "avgpool", width=4).state_dict())
  checkpoint = {"epoch": 1, "model_state_dict": state, "optimizer_state_dict": {}}
  if where == "weights":
    state["audnet.fc.extra"] = _Payload(marker)
  else:
    checkpoint["optimizer_state_dict"]["state"] = _Payload(marker)
  torch.save(checkpoint, path, _use_new_zipfile_serialization=not legacy)


@pytest.mark.parametrize("where", ["weights", "ignored entry"])
@pytest.mark.parametrize("legacy", [True, False], ids=["legacy", "zip"])
def test_code_executing_pickle_is_refused_and_never_runs(tmp_path, legacy, where):
  # The payload is live: plain unpickling runs it.
  control_marker = tmp_path / "control_ran"
  _save_malicious(tmp_path / "control.pth", control_marker, legacy, where)
  torch.load(tmp_path / "control.pth", weights_only=False)
  assert control_marker.exists()

  marker = tmp_path / "payload_ran"
  checkpoint = tmp_path / "evil.pth.tar"
  _save_malicious(checkpoint, marker, legacy, where)
  with pytest.raises(TorchCheckpointError, match="refused to load global 'posix.system'"):
    convert(checkpoint, tmp_path / "out_api")
  result = _run_cli("--input", checkpoint, "--output", tmp_path / "out_cli")
  assert result.returncode != 0
  assert len(result.stderr.strip().splitlines()) == 1
  assert str(checkpoint) in result.stderr and "posix.system" in result.stderr
  assert not marker.exists()
  assert not (tmp_path / "out_api").exists() and not (tmp_path / "out_cli").exists()


@pytest.mark.parametrize("legacy", [True, False], ids=["legacy", "zip"])
def test_truncated_checkpoint(tmp_path, legacy):
  checkpoint = tmp_path / "model.pth.tar"
  torch_reference.save_release_style(_random_torch_model(18, "avgpool", 4, seed=0), checkpoint, legacy=legacy)
  data = checkpoint.read_bytes()
  checkpoint.write_bytes(data[: int(len(data) * 0.6)])
  with pytest.raises(TorchCheckpointError, match="truncated"):
    convert(checkpoint, tmp_path / "out")
  result = _run_cli("--input", checkpoint, "--output", tmp_path / "out")
  assert result.returncode != 0
  assert result.stderr.strip().splitlines() == [result.stderr.strip()]
  assert "truncated" in result.stderr and "Traceback" not in result.stderr


def test_files_that_are_not_checkpoints(tmp_path):
  text = tmp_path / "notes.txt"
  text.write_text("hello, this is not a checkpoint\n")
  plain_pickle = tmp_path / "plain.pkl"
  import pickle

  plain_pickle.write_bytes(pickle.dumps({"model_state_dict": {}}, protocol=2))
  for path in (text, plain_pickle):
    with pytest.raises(TorchCheckpointError, match="not a PyTorch checkpoint"):
      convert(path, tmp_path / "out")
  result = _run_cli("--input", tmp_path / "missing.pth", "--output", tmp_path / "out")
  assert result.returncode != 0 and "missing.pth: no such file" in result.stderr

  no_weights = tmp_path / "no_weights.pth"
  torch.save({"epoch": 3, "optimizer_state_dict": {"state": {}}}, no_weights)
  with pytest.raises(ConversionError, match="no model weights"):
    convert(no_weights, tmp_path / "out")


def test_wrong_architecture_lists_every_problem_key(tmp_path):
  state = torch_reference.build_torch_model(18, "avgpool", width=4).state_dict()
  del state["audnet.layer2.0.bn1.running_var"]
  state["audnet.layer3.1.conv2.weight"] = torch.zeros(16, 16, 5, 5)
  state["audnet.extra.weight"] = torch.zeros(3)
  checkpoint = tmp_path / "wrong.pth.tar"
  torch.save({"epoch": 1, "model_state_dict": state}, checkpoint)
  with pytest.raises(ConversionError) as error:
    convert(checkpoint, tmp_path / "out")
  message = str(error.value)
  assert message.startswith(f"{checkpoint}: ")
  assert "missing: audnet.layer2.0.bn1.running_var" in message
  assert "unexpected: audnet.extra.weight" in message
  assert "wrong shape: audnet.layer3.1.conv2.weight (16, 16, 5, 5) (expected (16, 16, 3, 3))" in message

  result = _run_cli("--input", checkpoint, "--output", tmp_path / "out")
  assert result.returncode != 0 and len(result.stderr.strip().splitlines()) == 1
  assert "audnet.extra.weight" in result.stderr and not (tmp_path / "out").exists()


def test_unknown_depth_is_named(tmp_path):
  state = torch_reference.build_torch_model(18, "avgpool", width=4).state_dict()
  for key in [k for k in state if k.startswith("audnet.layer1.1.")]:
    state[key.replace("layer1.1.", "layer1.2.")] = state[key]
  checkpoint = tmp_path / "deeper.pth.tar"
  torch.save({"model_state_dict": state}, checkpoint)
  with pytest.raises(ConversionError, match=r"blocks per stage \[3, 2, 2, 2\]"):
    convert(checkpoint, tmp_path / "out")


def _tree(path):
  """Every file under `path` (or the file itself) with its bytes: what must survive a refusal."""
  path = Path(path)
  if path.is_file():
    return {path: path.read_bytes()}
  return {p: p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture(name="tiny_checkpoint")
def tiny_checkpoint_fixture(tmp_path):
  checkpoint = tmp_path / "model.pth.tar"
  torch_reference.save_release_style(_random_torch_model(18, "avgpool", 4, seed=0), checkpoint, legacy=False)
  return checkpoint


@pytest.mark.slow
def test_overwrite_replaces_only_a_model_directory_it_wrote(tmp_path, tiny_checkpoint, monkeypatch):
  output = tmp_path / "out" / "model"
  result = _run_cli("--input", tiny_checkpoint, "--output", output)
  assert result.returncode == 0, result.stderr
  assert result.stderr == ""  # no library INFO lines
  with pytest.raises(ModelCheckpointError, match=r"already exists \(pass --overwrite"):
    convert(tiny_checkpoint, output)
  result = _run_cli("--input", tiny_checkpoint, "--output", output, "--overwrite")
  assert result.returncode == 0, result.stderr
  assert load_model(output)[1]["source"]["file"] == tiny_checkpoint.name
  assert sorted(p.name for p in output.parent.iterdir()) == ["model"]  # no scratch left

  # Everything else is refused, before the checkpoint is read, and left as it was.
  foreign = tmp_path / "photos"
  foreign.mkdir()
  (foreign / "cat.jpg").write_bytes(b"meow")
  (tmp_path / "notes.txt").write_text("mine")
  monkeypatch.chdir(output)
  refused = {
    ".": "current directory",
    "..": "current directory",
    str(tmp_path): "current directory",
    str(foreign): "not a model directory written by vggsound-jax",
    str(tmp_path / "notes.txt"): "is a file",
  }
  everything = _tree(tmp_path)
  for target, reason in refused.items():
    with pytest.raises(ModelCheckpointError, match=reason) as error:
      convert(tmp_path / "missing.pth", target, overwrite=True)  # the input is never opened
    assert len(str(error.value).splitlines()) == 1
  result = _run_cli("--input", tiny_checkpoint, "--output", ".", "--overwrite")
  assert result.returncode != 0 and "current directory" in result.stderr
  assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
  assert _tree(tmp_path) == everything


def test_non_finite_weights_are_refused_naming_the_tensor(tmp_path):
  state = _random_torch_model(18, "vlad", 4, seed=2).state_dict()
  state["audnet.layer3.1.bn2.running_var"][3] = float("nan")
  state["audnet.avgpool.centroids"][0, :2] = float("inf")
  checkpoint = tmp_path / "diverged.pth.tar"
  torch.save({"epoch": 9, "model_state_dict": state}, checkpoint)
  with pytest.raises(ConversionError) as error:
    convert(checkpoint, tmp_path / "out_api")
  message = str(error.value)
  assert message.startswith(f"{checkpoint}: NaN or inf in ")
  assert "audnet.layer3.1.bn2.running_var (1 of 16 values)" in message
  assert "audnet.avgpool.centroids (2 of 512 values)" in message
  result = _run_cli("--input", checkpoint, "--output", tmp_path / "out_cli")
  assert result.returncode == 1 and result.stderr.count("\n") == 1
  assert "audnet.layer3.1.bn2.running_var" in result.stderr
  assert sorted(p.name for p in tmp_path.iterdir()) == [checkpoint.name]  # nothing written


def test_debug_shows_the_traceback_and_verbosity_the_logs(tmp_path, tiny_checkpoint):
  result = _run_cli("--input", tmp_path / "missing.pth", "--output", tmp_path / "out", "--debug")
  assert result.returncode != 0 and "Traceback" in result.stderr and "missing.pth: no such file" in result.stderr
  result = _run_cli("--input", tiny_checkpoint, "--output", tmp_path / "out", "--verbosity", "0")
  assert result.returncode == 0, result.stderr
  assert "INFO" in result.stderr  # what the quiet default hides
