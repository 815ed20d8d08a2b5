"""vggsound_jax.conversion.torch_pickle: files written by torch.save, in both formats, read back without
torch as numpy, equal to what torch itself loads; anything that could run code is refused."""

import collections
import io
import os
import pickle
import struct
import time
import tracemalloc
import zipfile

import numpy as np
import pytest
import torch

from vggsound_jax.conversion import torch_pickle
from vggsound_jax.conversion.torch_pickle import TorchCheckpointError, load_torch_checkpoint

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


# ---------------------------------------------------------------------------------------
# Fuzzing: damaged and hostile files written on the fly from real torch.save output. Every
# outcome is either a result or one TorchCheckpointError line naming the file; nothing runs;
# memory stays bounded whatever sizes a file declares.

FUZZ_SEED = 0
FUZZ_CASES_PER_FORMAT = 150
# Far below what any of the absurd sizes below would take if they were believed.
MAX_TRACED_BYTES = 80 * 2**20
MAX_SECONDS_PER_CASE = 2.0


def _fuzz_sources(legacy, tmp_path, marker):
  """Two small checkpoints with views and a parameter; the second hides a live code payload."""
  g = torch.Generator().manual_seed(1)
  base = torch.randn(6, 5, generator=g)
  state = collections.OrderedDict(w=base, t=base.t(), b=torch.arange(3.0), i=torch.arange(5))
  clean = {"epoch": 3, "model_state_dict": state, "p": torch.nn.Parameter(torch.ones(2))}
  evil = {**clean, "x": _System(marker)}
  return [
    _save(obj, tmp_path / f"{name}_{legacy}.pt", legacy).read_bytes()
    for name, obj in (("clean", clean), ("evil", evil))
  ]


def _mutate(data, rng):
  if not data:
    return data
  data = bytearray(data)
  kind = rng.integers(4)
  if kind == 0:  # a few random bytes
    for _ in range(rng.integers(1, 5)):
      data[rng.integers(len(data))] = rng.integers(256)
  elif kind == 1:  # truncation
    data = data[: rng.integers(len(data))]
  elif kind == 2:  # 8 random bytes: lengths, sizes and memo indices get absurd
    i = rng.integers(len(data))
    data[i : i + 8] = rng.bytes(8)
  else:  # a byte inserted or deleted shifts everything after it
    i = rng.integers(len(data))
    data[i : i + 1] = rng.bytes(int(rng.integers(2)))
  return bytes(data)


def _mutate_member(data, rng):
  """A zip checkpoint with one member (the pickle, a storage, the byte order) mutated, and
  valid CRCs: what reaches the unpickler and the storage checks, not just zipfile's."""
  out = io.BytesIO()
  with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(out, "w") as dst:
    names = src.namelist()
    victim = names[rng.integers(len(names))]
    for name in names:
      member = src.read(name)
      dst.writestr(name, _mutate(member, rng) if name == victim else member)
  return out.getvalue()


def _load_outcome(path):
  """None when the file loaded, else the error message; anything but TorchCheckpointError fails."""
  start = time.perf_counter()
  tracemalloc.start()
  try:
    load_torch_checkpoint(path)
    message = None
  except TorchCheckpointError as e:
    message = str(e)
  finally:
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
  assert peak < MAX_TRACED_BYTES, (path, peak)
  assert time.perf_counter() - start < MAX_SECONDS_PER_CASE, path
  if message is not None:
    assert message.startswith(f"{path}: ") and "\n" not in message, message
    assert "MemoryError" not in message, message  # a bound was checked, not hit
  return message


@FORMATS
def test_fuzzed_checkpoints_fail_cleanly_and_never_run_code(tmp_path, legacy):
  marker = tmp_path / "payload_ran"
  sources = _fuzz_sources(legacy, tmp_path, marker)
  rng = np.random.default_rng(FUZZ_SEED + legacy)
  path = tmp_path / "mutated.pt"
  outcomes = collections.Counter()
  for _ in range(FUZZ_CASES_PER_FORMAT):
    evil = rng.integers(2)
    mutate = _mutate_member if not legacy and rng.integers(2) else _mutate
    path.write_bytes(mutate(sources[evil], rng))
    message = _load_outcome(path)
    outcomes[("evil" if evil else "clean", "refused" if message else "loaded")] += 1
    assert not marker.exists()
  # Both paths were exercised: damaged files that still load, and refusals.
  assert outcomes[("clean", "loaded")] > 0 and outcomes[("clean", "refused")] > 0, outcomes
  assert outcomes[("evil", "refused")] > 0, outcomes
  # The payload was live all along.
  (tmp_path / "live.pt").write_bytes(sources[1])
  torch.load(tmp_path / "live.pt", weights_only=False)
  assert marker.exists()


def _binput_huge_memo_index():
  # LONG_BINPUT 2**31 - 1: the C unpickler grows its memo array to that length (16 GB).
  return b"\x80\x02]r\xff\xff\xff\x7f."


def _zip_checkpoint(path, pickle_bytes, members=None):
  with zipfile.ZipFile(path, "w") as z:
    z.writestr("archive/data.pkl", pickle_bytes)
    for name, data in (members or {}).items():
      z.writestr(f"archive/{name}", data)
  return path


def _storage_pickle(numel, size, stride):
  """A zip-style data.pkl with one FloatStorage of `numel` elements and one tensor view of it."""

  class Pickler(pickle.Pickler):
    def persistent_id(self, obj):
      return ("storage", torch.FloatStorage, "0", "cpu", numel) if isinstance(obj, _StorageRef) else None

    def reducer_override(self, obj):
      if isinstance(obj, _TensorRef):
        return (torch._utils._rebuild_tensor_v2, (_StorageRef(), 0, size, stride, False, collections.OrderedDict()))
      return NotImplemented

  buffer = io.BytesIO()
  Pickler(buffer, protocol=2).dump({"w": _TensorRef()})
  return buffer.getvalue()


def _legacy_with_declared_numel(tmp_path, numel):
  """A torch-written legacy file whose first storage's element count says `numel`."""
  path = _save({"w": torch.randn(10)}, tmp_path / "legacy.pt", legacy=True)
  data = bytearray(path.read_bytes())
  header = struct.pack("<q", 10)
  at = data.rindex(header, 0, len(data) - 40)  # the count just before the 40 bytes of data
  data[at : at + 8] = struct.pack("<q", numel)
  path.write_bytes(bytes(data))
  return path


def test_absurd_declared_sizes_fail_fast_without_allocating(tmp_path):
  huge = 2**40
  # A valid pickle, but the C unpickler would allocate 16 GB for it.
  assert load_torch_checkpoint(_zip_checkpoint(tmp_path / "memo.pt", _binput_huge_memo_index())) == []
  assert _load_outcome(tmp_path / "memo.pt") is None
  cases = {
    # BINBYTES8 / BINUNICODE8 / FRAME claiming 2**40 bytes that are not there.
    "bytes8": _zip_checkpoint(tmp_path / "bytes8.pt", b"\x80\x04\x8e" + struct.pack("<Q", huge) + b"abc."),
    "unicode8": _zip_checkpoint(tmp_path / "unicode8.pt", b"\x80\x04\x8d" + struct.pack("<Q", huge) + b"abc."),
    "frame": _zip_checkpoint(tmp_path / "frame.pt", b"\x80\x04\x95" + struct.pack("<Q", huge) + b"]."),
    # pickle's own BYTEARRAY8 allocates and zeroes the declared length first (found by the fuzzer).
    "bytearray8": _zip_checkpoint(tmp_path / "bytearray8.pt", b"\x80\x05\x96" + struct.pack("<Q", 2**34) + b"abc."),
    "long4": _zip_checkpoint(tmp_path / "long4.pt", b"\x80\x02\x8b\xff\xff\xff\x7f" + b"\x01" * 16 + b"."),
    # A storage declared 2**40 elements long, with a small data member.
    "zip storage": _zip_checkpoint(
      tmp_path / "zip_storage.pt", _storage_pickle(huge, (huge,), (1,)), {"data/0": np.zeros(4, np.float32).tobytes()}
    ),
    # A one-element storage viewed as 2**40 elements with stride 0.
    "expanded": _zip_checkpoint(
      tmp_path / "expanded.pt",
      _storage_pickle(1, (2**20, 2**20), (0, 0)),
      {"data/0": np.zeros(1, np.float32).tobytes()},
    ),
    "legacy storage": _legacy_with_declared_numel(tmp_path, huge),
  }
  outcomes = {name: _load_outcome(path) for name, path in cases.items()}  # each bounded and fast
  # A short frame is read as far as it goes (the pickle in it is whole); the rest are refused.
  assert outcomes.pop("frame") is None
  assert all(message is not None for message in outcomes.values()), outcomes
  assert "more than a file of" in _load_outcome(cases["expanded"])
  assert "holds 16 bytes, expected" in _load_outcome(cases["zip storage"])
  assert "truncated" in _load_outcome(cases["legacy storage"]) or "elements" in _load_outcome(cases["legacy storage"])


def test_compressed_member_bigger_than_the_file_allows(tmp_path):
  # 100 MB of zeros deflate to ~100 KB: the declared size is refused before decompressing.
  numel = 25 * 2**20
  path = tmp_path / "bomb.pt"
  with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
    z.writestr("archive/data.pkl", _storage_pickle(numel, (numel,), (1,)))
    with z.open("archive/data/0", "w") as member:
      chunk = bytes(2**20)
      for _ in range(numel * 4 // len(chunk)):
        member.write(chunk)
  assert path.stat().st_size < 2**20
  assert "more than a file of" in _load_outcome(path)


def test_shared_references_do_not_explode(tmp_path):
  # Each list holds its predecessor twice: 60 levels are 2**60 leaves if walked naively.
  data = b"\x80\x02]q\x00"
  for i in range(60):
    data += b"(h" + bytes([i]) + b"h" + bytes([i]) + b"lq" + bytes([i + 1])
  path = _zip_checkpoint(tmp_path / "laughs.pt", data + b".")
  loaded = load_torch_checkpoint(path)
  assert loaded[0] is loaded[1]


def test_zip_member_names_cannot_escape(tmp_path):
  source = _save({"w": torch.arange(4.0)}, tmp_path / "good.pt", legacy=False)
  work = tmp_path / "work"
  work.mkdir()
  # The archive's folder "good/" renamed to names that would leave the folder if used as paths.
  for archive in ("../", "../../escaped/", "/abs/", "./", "..\\good/", "good/../../"):
    path = work / "escape.pt"
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(path, "w") as dst:
      for info in src.infolist():
        dst.writestr(archive + info.filename.removeprefix("good/"), src.read(info))
    before = sorted(p.name for p in tmp_path.rglob("*"))
    with pytest.raises(TorchCheckpointError) as error:
      load_torch_checkpoint(path)
    assert str(error.value).startswith(f"{path}: ") and "\n" not in str(error.value)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before
  assert not (tmp_path / "escaped").exists() and not os.path.exists("/abs")


class _Gadget:
  """Pickles as `module.name(*args)`, the shape of every code-running pickle."""

  def __init__(self, function, *args):
    self.function, self.args = function, args

  def __reduce__(self):
    return (self.function, self.args)


@pytest.mark.parametrize("protocol", [0, 2, 4])
def test_code_gadgets_are_refused(tmp_path, protocol):
  import builtins
  import subprocess

  marker = tmp_path / "ran"
  gadgets = [
    _Gadget(os.system, f"touch {marker}"),
    _Gadget(builtins.eval, f"open({str(marker)!r}, 'w')"),
    _Gadget(builtins.getattr, _Gadget(builtins.__import__, "os"), "system"),
    _Gadget(subprocess.call, ["touch", str(marker)]),
    _Gadget(collections.OrderedDict.fromkeys, [1]),  # an allowed class, but not this attribute
  ]
  for gadget in gadgets:
    path = _zip_checkpoint(tmp_path / "gadget.pt", pickle.dumps({"w": gadget}, protocol=protocol))
    with pytest.raises(TorchCheckpointError, match="refused to load global"):
      load_torch_checkpoint(path)
  # Through the copyreg extension registry (EXT1), which names no module in the pickle.
  import copyreg

  copyreg.add_extension("posix", "system", 240)
  try:
    data = pickle.dumps(_Gadget(os.system, f"touch {marker}"), protocol=2)
    assert b"\x82\xf0" in data  # EXT1 240
    with pytest.raises(TorchCheckpointError, match="refused to load global 'posix.system'"):
      load_torch_checkpoint(_zip_checkpoint(tmp_path / "ext.pt", data))
  finally:
    copyreg.remove_extension("posix", "system", 240)
  assert not marker.exists()


def test_allowed_functions_cannot_be_modified_by_a_pickle(tmp_path):
  # GLOBAL _codecs.encode, then BUILD (None, {"__defaults__": ("evil",)}): setattr on a plain function.
  data = b"\x80\x02c_codecs\nencode\nN}" + _unicode("__defaults__") + b"(" + _unicode("evil") + b"ts\x86b."
  path = _zip_checkpoint(tmp_path / "build_function.pt", data)
  with pytest.raises(TorchCheckpointError, match="refused to set the state"):
    load_torch_checkpoint(path)
  # Loading still works afterwards: nothing of the reader was changed.
  good = _save({"w": torch.arange(3.0)}, tmp_path / "good.pt", legacy=False)
  np.testing.assert_array_equal(load_torch_checkpoint(good)["w"], np.arange(3.0, dtype=np.float32))


def test_encrypted_members_are_refused(tmp_path):
  # Found by the fuzzer: zipfile raises RuntimeError for a member flagged as encrypted.
  path = _save({"w": torch.arange(4.0)}, tmp_path / "flagged.pt", legacy=False)
  data = bytearray(path.read_bytes())
  name = b"flagged/data.pkl"
  entry = next(
    i for i in range(len(data)) if data[i : i + 4] == b"PK\x01\x02" and data[i + 46 : i + 46 + len(name)] == name
  )
  data[entry + 8] |= 0x1  # the central directory's general purpose flags: encrypted
  path.write_bytes(bytes(data))
  with pytest.raises(TorchCheckpointError, match="flagged/data.pkl is encrypted") as error:
    load_torch_checkpoint(path)
  assert str(error.value).startswith(f"{path}: ")
