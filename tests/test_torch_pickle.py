"""vggsound_jax.torch_pickle: files written by torch.save, in both formats, read back without
torch as numpy, equal to what torch itself loads; anything that could run code is refused."""

import collections
import io
import os
import pickle
import zipfile

import numpy as np
import pytest
import torch

from vggsound_jax import torch_pickle
from vggsound_jax.torch_pickle import TorchCheckpointError, load_torch_checkpoint

FORMATS = pytest.mark.parametrize("legacy", [True, False], ids=["legacy", "zip"])


def _save(obj, path, legacy):
  torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
  return path


def _assert_same(ours, theirs):
  """Walks torch.load's result and ours side by side."""
  if isinstance(theirs, torch.Tensor):
    assert isinstance(ours, np.ndarray), type(ours)
    expected = theirs.detach()
    if expected.dtype == torch.bfloat16:
      expected = expected.float()
      ours = ours.astype(np.float32)
    expected = expected.numpy()
    assert ours.shape == expected.shape and ours.dtype == expected.dtype
    np.testing.assert_array_equal(ours, expected)
  elif isinstance(theirs, dict):
    assert type(ours) is dict and list(ours) == list(theirs)
    for key in theirs:
      _assert_same(ours[key], theirs[key])
  elif isinstance(theirs, (list, tuple)):
    assert type(ours) is type(theirs) and len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
      _assert_same(a, b)
  else:
    assert ours == theirs


def _everything():
  g = torch.Generator().manual_seed(0)
  base = torch.randn(6, 5, generator=g)
  return {
    "epoch": 7,
    "name": "run",
    "floats": [0.5, float("inf")],
    "flags": (True, None),
    "blob": b"\x00\xffbytes",
    "groups": {1, 2},
    "state": collections.OrderedDict(
      [
        ("f32", base),
        ("f64", torch.randn(3, generator=g, dtype=torch.float64)),
        ("f16", torch.randn(4, 2, generator=g).half()),
        ("bf16", torch.randn(3, 3, generator=g).bfloat16()),
        ("i64", torch.arange(-3, 9).reshape(3, 4)),
        ("i32", torch.arange(5, dtype=torch.int32)),
        ("i16", torch.arange(5, dtype=torch.int16) - 2),
        ("i8", torch.arange(5, dtype=torch.int8) - 2),
        ("u8", torch.arange(250, 256, dtype=torch.uint8)),
        ("bool", torch.tensor([True, False, True])),
        ("scalar", torch.tensor(42)),
        ("empty", torch.zeros(0, 3)),
        # Views sharing one storage: offsets and strides must be honoured.
        ("transposed", base.t()),
        ("row", base[2]),
        ("column", base[1:, 3]),
        ("strided", base[::2, ::3]),
        ("conv", torch.randn(8, 3, 7, 7, generator=g)),
      ]
    ),
    "param": torch.nn.Parameter(torch.ones(2, 2)),
  }


@FORMATS
def test_reads_what_torch_reads(tmp_path, legacy):
  obj = _everything()
  path = _save(obj, tmp_path / "everything.pt", legacy)
  ours = load_torch_checkpoint(path)
  theirs = torch.load(path, weights_only=False)
  assert ours["groups"] == {1, 2}
  del ours["groups"], theirs["groups"]
  _assert_same(ours, theirs)
  assert ours["state"]["transposed"].flags["C_CONTIGUOUS"]  # a copy, not a view into the file
  assert ours["state"]["scalar"].shape == () and ours["state"]["scalar"] == 42


@FORMATS
def test_cuda_location_tags(tmp_path, legacy, monkeypatch):
  # Pretend the tensors lived on a GPU, as in the released files.
  monkeypatch.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
  state = {"w": torch.randn(4, 3), "b": torch.arange(3.0)}
  path = _save({"model_state_dict": state}, tmp_path / "cuda.pt", legacy)
  monkeypatch.undo()
  raw = path.read_bytes() if legacy else zipfile.ZipFile(path).read("cuda/data.pkl")
  assert b"cuda:0" in raw
  loaded = load_torch_checkpoint(path)["model_state_dict"]
  np.testing.assert_array_equal(loaded["w"], state["w"].numpy())
  np.testing.assert_array_equal(loaded["b"], state["b"].numpy())


def test_big_endian_zip(tmp_path):
  path = _save({"w": torch.arange(6.0).reshape(2, 3), "i": torch.arange(4)}, tmp_path / "le.pt", legacy=False)
  swapped = tmp_path / "be.pt"
  with zipfile.ZipFile(path) as src, zipfile.ZipFile(swapped, "w") as dst:
    for info in src.infolist():
      data = src.read(info)
      if info.filename == "le/byteorder":
        data = b"big"
      elif info.filename == "le/data/0":
        data = np.frombuffer(data, "<f4").astype(">f4").tobytes()
      elif info.filename == "le/data/1":
        data = np.frombuffer(data, "<i8").astype(">i8").tobytes()
      dst.writestr(info.filename, data)
  loaded = load_torch_checkpoint(swapped)
  np.testing.assert_array_equal(loaded["w"], np.arange(6.0, dtype=np.float32).reshape(2, 3))
  np.testing.assert_array_equal(loaded["i"], np.arange(4))


class _Exec:
  def __init__(self, marker):
    self.marker = str(marker)

  def __reduce__(self):
    return (exec, (f"open({self.marker!r}, 'w').close()",))


class _System:
  def __init__(self, marker):
    self.marker = str(marker)

  def __reduce__(self):
    return (os.system, (f"touch {self.marker}",))


@FORMATS
@pytest.mark.parametrize("payload,refused", [(_Exec, "builtins.exec"), (_System, "posix.system")])
def test_code_is_refused_before_it_runs(tmp_path, legacy, payload, refused):
  marker = tmp_path / "ran"
  path = _save({"model_state_dict": {"w": torch.ones(2)}, "x": payload(marker)}, tmp_path / "evil.pt", legacy)
  with pytest.raises(TorchCheckpointError) as error:
    load_torch_checkpoint(path)
  message = str(error.value)
  assert message.startswith(f"{path}: ") and f"'{refused}'" in message and len(message.splitlines()) == 1
  assert not marker.exists()
  torch.load(path, weights_only=False)  # the payload is live: plain unpickling runs it
  assert marker.exists()


def test_foreign_persistent_ids_are_refused(tmp_path):
  class Pickler(pickle.Pickler):
    def persistent_id(self, obj):
      return ("module", "os", "source") if obj == "hook" else None

  path = tmp_path / "legacy_module.pt"
  with open(path, "wb") as f:
    for header in (torch_pickle.LEGACY_MAGIC_NUMBER, torch_pickle.LEGACY_PROTOCOL_VERSION, {}):
      pickle.dump(header, f, protocol=2)
    Pickler(f, protocol=2).dump({"a": "hook"})
  with pytest.raises(TorchCheckpointError, match="refused persistent object of kind 'module'"):
    load_torch_checkpoint(path)


@FORMATS
def test_truncated_files(tmp_path, legacy):
  path = _save({"w": torch.randn(100, 100)}, tmp_path / "full.pt", legacy)
  data = path.read_bytes()
  for fraction in (0.05, 0.5, 0.99):
    cut = tmp_path / f"cut{fraction}.pt"
    cut.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(TorchCheckpointError, match="truncated") as error:
      load_torch_checkpoint(cut)
    assert str(error.value).startswith(f"{cut}: ")


def test_not_checkpoints(tmp_path):
  cases = {
    "empty.pt": b"",
    "text.pt": b"just some text\n",
    "plain.pkl": pickle.dumps([1, 2, 3], protocol=2),
    "random.bin": np.random.default_rng(0).bytes(1000),
  }
  for name, data in cases.items():
    (tmp_path / name).write_bytes(data)
    with pytest.raises(TorchCheckpointError, match="not a PyTorch checkpoint|truncated"):
      load_torch_checkpoint(tmp_path / name)
  other_zip = tmp_path / "other.zip"
  with zipfile.ZipFile(other_zip, "w") as z:
    z.writestr("readme.txt", "hi")
  with pytest.raises(TorchCheckpointError, match="not a PyTorch checkpoint"):
    load_torch_checkpoint(other_zip)
  with pytest.raises(TorchCheckpointError, match="no such file"):
    load_torch_checkpoint(tmp_path / "absent.pt")
  with pytest.raises(TorchCheckpointError, match="directory"):
    load_torch_checkpoint(tmp_path)


class _StorageRef:
  pass


class _TensorRef:
  pass


def test_tensor_overrunning_its_storage_is_refused(tmp_path):
  # A hand-made zip checkpoint whose tensor claims more elements than its storage holds.
  class Pickler(pickle.Pickler):
    def persistent_id(self, obj):
      return ("storage", torch.FloatStorage, "0", "cpu", 4) if isinstance(obj, _StorageRef) else None

    def reducer_override(self, obj):
      if isinstance(obj, _TensorRef):
        return (torch._utils._rebuild_tensor_v2, (_StorageRef(), 0, (10,), (1,), False, collections.OrderedDict()))
      return NotImplemented

  buffer = io.BytesIO()
  Pickler(buffer, protocol=2).dump({"w": _TensorRef()})
  path = tmp_path / "overrun.pt"
  with zipfile.ZipFile(path, "w") as z:
    z.writestr("overrun/data.pkl", buffer.getvalue())
    z.writestr("overrun/data/0", np.zeros(4, np.float32).tobytes())
  with pytest.raises(TorchCheckpointError, match="overruns its storage of 4 elements"):
    load_torch_checkpoint(path)


def _unicode(text):
  data = text.encode()
  return b"X" + len(data).to_bytes(4, "little") + data


def test_pickle_cannot_rewrite_a_storage(tmp_path):
  # Hand-assembled: a storage, then BUILD with {"numel": 100} to defeat the bounds checks.
  data = (
    b"\x80\x02("
    + _unicode("storage")
    + b"ctorch\nFloatStorage\n"
    + _unicode("0")
    + _unicode("cpu")
    + b"K\x04tQ}"
    + _unicode("numel")
    + b"K\x64sb."
  )
  path = tmp_path / "build.pt"
  with zipfile.ZipFile(path, "w") as z:
    z.writestr("build/data.pkl", data)
    z.writestr("build/data/0", np.zeros(4, np.float32).tobytes())
  with pytest.raises(TorchCheckpointError, match="refused to set the state of a Storage"):
    load_torch_checkpoint(path)
