"""Reads PyTorch checkpoint files (legacy and zip formats) without PyTorch, and without running
code from them (docs/original_pipeline.md#released-checkpoints).

Invariants: the restricted unpickler resolves only the globals that rebuild tensors, storages and
plain containers; a damaged or hostile file gets one TorchCheckpointError, never another
exception, and never makes the reader allocate more than `MAX_BYTES_PER_FILE_BYTE` times its
own size (plus `BYTES_SLACK`), whatever sizes it declares. Zip member names are only looked up,
never used as paths.
"""

from __future__ import annotations

import _compat_pickle
import collections
import io
import os
import pickle
import re
import struct
import zipfile
import zlib
from collections.abc import Callable
from typing import IO, Any, NoReturn

import ml_dtypes
import numpy as np

from vggsound_jax.errors import PathError

# The first pickle of a legacy file, and the format version that follows it.
LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001
# A zip-format checkpoint starts with a local file header.
ZIP_MAGIC = b"PK\x03\x04"
# What one file may make the reader hold: every storage read and every tensor built counts.
# Real checkpoints need about 2x (the storages, then their tensors); shared storages, tied
# weights and compressed zip members a little more.
MAX_BYTES_PER_FILE_BYTE = 8
BYTES_SLACK = 64 * 2**20
# torch names storages by decimal numbers; anything else is refused rather than looked up.
_STORAGE_KEY = re.compile(r"[A-Za-z0-9_]{1,64}")

# torch.<Name>Storage -> element dtype (little-endian on disk unless `byteorder` says otherwise).
STORAGE_DTYPES = {
  "DoubleStorage": np.dtype(np.float64),
  "FloatStorage": np.dtype(np.float32),
  "HalfStorage": np.dtype(np.float16),
  "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
  "LongStorage": np.dtype(np.int64),
  "IntStorage": np.dtype(np.int32),
  "ShortStorage": np.dtype(np.int16),
  "CharStorage": np.dtype(np.int8),
  "ByteStorage": np.dtype(np.uint8),
  "BoolStorage": np.dtype(np.bool_),
  "ComplexFloatStorage": np.dtype(np.complex64),
  "ComplexDoubleStorage": np.dtype(np.complex128),
  "UntypedStorage": np.dtype(np.uint8),
}


class TorchCheckpointError(PathError):
  """A file that cannot be read as a PyTorch checkpoint."""


class _Problem(Exception):
  """Raised inside the reader; turned into a TorchCheckpointError naming the file."""


class _Budget:
  """The bytes one file may make the reader hold (see MAX_BYTES_PER_FILE_BYTE)."""

  def __init__(self, file_size: int) -> None:
    self.file_size = file_size
    self.left = MAX_BYTES_PER_FILE_BYTE * file_size + BYTES_SLACK

  def spend(self, nbytes: int, what: str) -> None:
    if nbytes > self.left:
      raise _Problem(f"{what} declares {nbytes} bytes, more than a file of {self.file_size} bytes can hold")
    self.left -= nbytes


class _Inert:
  """Base of the reader's own placeholders: a pickle may not overwrite their fields (BUILD)."""

  def __setstate__(self, state: object) -> NoReturn:
    raise _Problem(f"refused to set the state of a {type(self).__name__.lstrip('_')}")


class _StorageType(_Inert):
  """Stands for a `torch.<Name>Storage` class: only its element dtype matters here."""

  def __init__(self, name: str) -> None:
    self.name = name
    self.dtype = STORAGE_DTYPES[name]


class _Storage(_Inert):
  """A storage named by a persistent id; its bytes are attached once they have been read."""

  def __init__(self, key: str, dtype: np.dtype, numel: int) -> None:
    self.key = key
    self.dtype = dtype
    self.numel = numel
    self.data: np.ndarray | None = None
    # A legacy view: (root storage, element offset) whose data is a slice of the root's.
    self.view_of: tuple[_Storage, int] | None = None

  def array(self) -> np.ndarray:
    if self.view_of is not None:
      root, offset = self.view_of
      return root.array()[offset : offset + self.numel]
    if self.data is None:
      raise _Problem(f"storage {self.key} is referenced but not stored")
    return self.data


class _LazyTensor(_Inert):
  """A tensor whose storage bytes may not have been read yet (legacy files store them last)."""

  def __init__(self, storage: _Storage, offset: int, size: tuple[int, ...], stride: tuple[int, ...]) -> None:
    self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

  def materialize(self, budget: _Budget) -> np.ndarray:
    data = self.storage.array()
    # Views may overlap (stride 0) or share one storage: the copy, not the storage, is bounded.
    budget.spend(int(np.prod(self.size, dtype=object)) * data.dtype.itemsize, "a tensor")
    if not self.size:
      return np.array(data[self.offset])  # 0-d array, not a numpy scalar
    if 0 in self.size:
      return np.zeros(self.size, data.dtype)
    # Checked at rebuild time already; again here, since as_strided trusts its arguments.
    if self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride)) >= data.size:
      raise _Problem(f"malformed tensor: overruns its storage of {data.size} elements")
    itemsize = data.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
      data[self.offset :], shape=self.size, strides=[s * itemsize for s in self.stride], writeable=False
    )
    return np.array(view, order="C")  # a C-contiguous copy that owns its memory


def _int(value: object, what: str) -> int:
  if not isinstance(value, int) or isinstance(value, bool) or value < 0:
    raise _Problem(f"malformed tensor: {what} {value!r}")
  return value


def _rebuild_tensor(
  storage: object, storage_offset: object, size: object, stride: object, *unused: object
) -> _LazyTensor:
  """torch._utils._rebuild_tensor(_v2): checks the view lies inside its storage."""
  del unused  # requires_grad, backward hooks, metadata: meaningless for numpy
  if not isinstance(storage, _Storage):
    raise _Problem(f"malformed tensor: storage is a {type(storage).__name__}")
  if not isinstance(size, tuple) or not isinstance(stride, tuple) or len(size) != len(stride):
    raise _Problem(f"malformed tensor: size {size!r}, stride {stride!r}")
  offset = _int(storage_offset, "offset")
  size = tuple(_int(s, "size") for s in size)
  stride = tuple(_int(s, "stride") for s in stride)
  if 0 not in size:
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= storage.numel:
      raise _Problem(
        f"malformed tensor: size {size} stride {stride} offset {offset} overruns "
        f"its storage of {storage.numel} elements"
      )
  return _LazyTensor(storage, offset, size, stride)


def _rebuild_parameter(data: object, requires_grad: object, backward_hooks: object, *unused: object) -> _LazyTensor:
  """torch._utils._rebuild_parameter(_with_state): a Parameter is just its tensor here."""
  del requires_grad, backward_hooks, unused
  if not isinstance(data, _LazyTensor):
    raise _Problem(f"malformed parameter: data is a {type(data).__name__}")
  return data


class _TensorType(_Inert):
  """Stands for the class `torch.Tensor` or `torch.nn.Parameter` (rebuilt as numpy anyway)."""

  def __init__(self, name: str) -> None:
    self.name = name


class _Function(_Inert):
  """An allowed function, behind an object a pickle cannot modify (BUILD on a plain function
  could set its `__defaults__`, for every later load in the process)."""

  def __init__(self, function: Callable[..., Any]) -> None:
    self._function = function

  def __call__(self, *args: object) -> Any:
    return self._function(*args)


_REBUILD_TENSOR = _Function(_rebuild_tensor)
_REBUILD_PARAMETER = _Function(_rebuild_parameter)


def _rebuild_from_type_v2(func: object, new_type: object, args: object, state: object) -> _LazyTensor:
  """torch._tensor._rebuild_from_type_v2, for plain tensors and parameters without state."""
  if func not in (_REBUILD_TENSOR, _REBUILD_PARAMETER) or not isinstance(new_type, _TensorType):
    raise _Problem("malformed tensor: unsupported _rebuild_from_type_v2 arguments")
  if not isinstance(args, tuple):
    raise _Problem(f"malformed tensor: arguments {type(args).__name__}")
  if state:
    raise _Problem(f"refused tensor with Python state {type(state).__name__}")
  return func(*args)


def _codecs_encode(text: object, encoding: str = "utf-8") -> bytes:
  """How protocol-2 pickles store bytes: `_codecs.encode(str, 'latin1')`."""
  if not isinstance(text, str) or encoding != "latin1":
    raise _Problem(f"refused _codecs.encode with encoding {encoding!r}")
  return text.encode("latin1")


_ALLOWED_GLOBALS = {
  ("collections", "OrderedDict"): collections.OrderedDict,
  ("builtins", "set"): set,
  ("builtins", "frozenset"): frozenset,
  ("_codecs", "encode"): _Function(_codecs_encode),
  ("torch._utils", "_rebuild_tensor"): _REBUILD_TENSOR,
  ("torch._utils", "_rebuild_tensor_v2"): _REBUILD_TENSOR,
  ("torch._utils", "_rebuild_parameter"): _REBUILD_PARAMETER,
  ("torch._utils", "_rebuild_parameter_with_state"): _REBUILD_PARAMETER,
  ("torch._tensor", "_rebuild_from_type_v2"): _Function(_rebuild_from_type_v2),
  ("torch", "Tensor"): _TensorType("torch.Tensor"),
  ("torch.nn.parameter", "Parameter"): _TensorType("torch.nn.parameter.Parameter"),
  **{("torch", name): _StorageType(name) for name in STORAGE_DTYPES},
}


# The pure-Python unpickler on purpose: the C one (pickle.Unpickler) keeps its memo in an array
# and grows it to the largest index a pickle names, so 8 flipped bytes make it allocate and
# zero gigabytes. Checkpoint pickles are small (the tensor data lies outside them).
class _RestrictedUnpickler(pickle._Unpickler):  # noqa: SLF001
  """Resolves only `_ALLOWED_GLOBALS`; storages come back as `_Storage` placeholders."""

  def __init__(self, file: IO[bytes], storages: dict[str, _Storage]) -> None:
    super().__init__(file, encoding="utf-8")
    self._storages = storages

  def _load_bytearray8(self) -> None:
    # pickle's own allocates (and zeroes) the declared length before reading: read, then copy.
    (length,) = struct.unpack("<Q", self.read(8))
    data = self.read(length)  # never more than the file holds
    if len(data) != length:
      raise _Problem(f"truncated: a bytearray of {length} bytes has {len(data)}")
    self.append(bytearray(data))

  dispatch = {**pickle._Unpickler.dispatch, pickle.BYTEARRAY8[0]: _load_bytearray8}  # noqa: SLF001

  def find_class(self, module: str, name: str) -> Any:
    # Protocol-2 pickles name Python 2 modules (`__builtin__`); map them as pickle itself does.
    if (module, name) in _compat_pickle.NAME_MAPPING:
      module, name = _compat_pickle.NAME_MAPPING[(module, name)]
    elif module in _compat_pickle.IMPORT_MAPPING:
      module = _compat_pickle.IMPORT_MAPPING[module]
    try:
      return _ALLOWED_GLOBALS[(module, name)]
    except KeyError:
      raise _Problem(
        f"refused to load global '{module}.{name}': the checkpoint may only hold "
        "tensors and plain containers (it could run code)"
      ) from None

  def persistent_load(self, pid: object) -> _Storage:
    if not isinstance(pid, tuple) or not pid or pid[0] != "storage":
      kind = pid[0] if isinstance(pid, tuple) and pid else type(pid).__name__
      raise _Problem(f"refused persistent object of kind {kind!r}: only storages are allowed")
    if len(pid) not in (5, 6) or not isinstance(pid[1], _StorageType):
      raise _Problem(f"malformed storage id {pid[:5]!r}")
    _, storage_type, key, _location, numel, *view = pid
    if not isinstance(key, str) or not _STORAGE_KEY.fullmatch(key):
      raise _Problem(f"malformed storage key {key!r}")
    numel = _int(numel, "storage size")
    storage = self._storages.get(key)
    if storage is None:
      storage = self._storages[key] = _Storage(key, storage_type.dtype, numel)
    elif storage.dtype != storage_type.dtype or storage.numel != numel:
      raise _Problem(f"storage {key} is used with two different types or sizes")
    if view and view[0] is not None:
      # Legacy views (PyTorch < 1.0): (view key, element offset, view size) into the root storage.
      if not isinstance(view[0], tuple) or len(view[0]) != 3:
        raise _Problem(f"malformed storage view {view[0]!r}")
      view_key, offset, size = view[0]
      if not isinstance(view_key, str) or not _STORAGE_KEY.fullmatch(view_key):
        raise _Problem(f"malformed storage view key {view_key!r}")
      offset, size = _int(offset, "view offset"), _int(size, "view size")
      if offset + size > numel:
        raise _Problem(f"storage view {view_key} overruns storage {key}")
      if view_key not in self._storages:
        child = _Storage(view_key, storage_type.dtype, size)
        child.view_of = (storage, offset)
        self._storages[view_key] = child
      return self._storages[view_key]
    return storage


def _materialize(obj: Any, budget: _Budget, done: dict[int, Any] | None = None) -> Any:
  """Replaces lazy tensors with numpy arrays; OrderedDicts become plain dicts.

  An object referenced many times is converted once (`done`, by id): a pickle can nest
  references to references so that a walk without it takes exponential time.
  """
  done = {} if done is None else done
  if id(obj) in done:
    return done[id(obj)]
  if isinstance(obj, _LazyTensor):
    result = obj.materialize(budget)
  elif isinstance(obj, dict):
    if any(isinstance(k, _Inert) for k in obj):
      raise _Problem("unexpected tensor or storage used as a dictionary key")
    result = {k: _materialize(v, budget, done) for k, v in obj.items()}
  elif isinstance(obj, list):
    result = [_materialize(v, budget, done) for v in obj]
  elif isinstance(obj, tuple):
    result = tuple(_materialize(v, budget, done) for v in obj)
  elif isinstance(obj, (set, frozenset)):
    result = type(obj)(_materialize(v, budget, done) for v in obj)
  elif isinstance(obj, _Inert) or callable(obj):
    raise _Problem(f"unexpected {type(obj).__name__.lstrip('_')} object outside a tensor")
  else:
    return obj
  done[id(obj)] = result
  return result


def _read_member(archive: zipfile.ZipFile, name: str, budget: _Budget, expected: int | None = None) -> bytes:
  """One zip member, its declared size checked (against `expected`, and the budget) before reading."""
  try:
    info = archive.getinfo(name)
  except KeyError:
    raise _Problem(f"{name} missing from the archive") from None
  if info.flag_bits & 0x1:
    raise _Problem(f"{name} is encrypted")
  if expected is not None and info.file_size != expected:
    raise _Problem(f"{name} holds {info.file_size} bytes, expected {expected}")
  budget.spend(info.file_size, name)
  return archive.read(info)


def _read_zip(archive: zipfile.ZipFile, budget: _Budget) -> Any:
  pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
  if len(pickles) != 1:
    raise _Problem("zip file without exactly one '<archive>/data.pkl': not a PyTorch checkpoint")
  prefix = pickles[0][: -len("data.pkl")]
  if prefix in ("/", "./", "../") or "\\" in prefix:
    raise _Problem(f"unsafe archive name {prefix!r}")
  byteorder = "little"
  if prefix + "byteorder" in archive.namelist():
    byteorder = _read_member(archive, prefix + "byteorder", budget).decode("ascii", "replace").strip()
    if byteorder not in ("little", "big"):
      raise _Problem(f"unknown byte order {byteorder!r}")
  storages: dict[str, _Storage] = {}
  obj = _RestrictedUnpickler(io.BytesIO(_read_member(archive, pickles[0], budget)), storages).load()
  for key, storage in storages.items():
    if storage.view_of is not None:
      continue
    raw = _read_member(archive, f"{prefix}data/{key}", budget, storage.numel * storage.dtype.itemsize)
    dtype = storage.dtype.newbyteorder("<" if byteorder == "little" else ">")
    storage.data = np.frombuffer(raw, dtype).astype(storage.dtype, copy=False)
  return obj


class _FileReader:
  """A binary file whose reads never ask for more than is left in it (a buffered read of n
  bytes allocates n first, and pickles declare their lengths)."""

  def __init__(self, f: IO[bytes], size: int) -> None:
    self._f, self._size = f, size

  def left(self) -> int:
    return max(0, self._size - self._f.tell())

  def read(self, n: int = -1) -> bytes:
    left = self.left()
    return self._f.read(left if n is None or n < 0 or n > left else n)

  def readline(self, limit: int = -1) -> bytes:
    return self._f.readline(limit)


def _read_legacy(f: _FileReader, budget: _Budget) -> Any:
  storages: dict[str, _Storage] = {}

  def load():
    return _RestrictedUnpickler(f, storages).load()

  try:
    magic = load()
  except _Problem:
    raise
  except Exception:
    raise _Problem("not a PyTorch checkpoint (neither a zip archive nor a legacy pickle)") from None
  if magic != LEGACY_MAGIC_NUMBER:
    raise _Problem("not a PyTorch checkpoint (no legacy magic number)")
  protocol = load()
  if protocol != LEGACY_PROTOCOL_VERSION:
    raise _Problem(f"unsupported legacy protocol version {protocol!r}")
  sys_info = load()
  if isinstance(sys_info, dict) and sys_info.get("little_endian") is False:
    raise _Problem("big-endian legacy checkpoints are not supported")
  obj = load()
  keys = load()
  if not isinstance(keys, list) or any(k not in storages for k in keys):
    raise _Problem("malformed storage key list")
  for key in keys:
    storage = storages[key]
    header = f.read(8)
    if len(header) != 8:
      raise _Problem(f"truncated: storage {key} is missing")
    (numel,) = struct.unpack("<q", header)
    if numel != storage.numel:
      raise _Problem(f"storage {key} holds {numel} elements, expected {storage.numel}")
    nbytes = numel * storage.dtype.itemsize
    if nbytes > f.left():
      raise _Problem(f"truncated: storage {key} declares {nbytes} bytes, {f.left()} are left in the file")
    budget.spend(nbytes, f"storage {key}")
    raw = f.read(nbytes)
    if len(raw) != nbytes:
      raise _Problem(f"truncated: storage {key} has {len(raw)} of its {nbytes} bytes")
    storage.data = np.frombuffer(raw, storage.dtype.newbyteorder("<")).astype(storage.dtype, copy=False)
  missing = [k for k, s in storages.items() if s.view_of is None and s.data is None]
  if missing:
    raise _Problem(f"storages {missing[:5]} are referenced but not stored")
  return obj


def load_torch_checkpoint(path: str | os.PathLike) -> Any:
  """Loads a file written by `torch.save` as nested dicts/lists/tuples of numpy arrays.

  Raises TorchCheckpointError ("PATH: problem") for a missing, truncated or foreign file and
  for a pickle that refers to anything but tensors, storages and plain containers.
  """
  try:
    with open(path, "rb") as f:
      size = os.fstat(f.fileno()).st_size
      budget = _Budget(size)
      if zipfile.is_zipfile(f):
        f.seek(0)
        with zipfile.ZipFile(f) as archive:
          obj = _read_zip(archive, budget)
      else:
        f.seek(0)
        if f.read(len(ZIP_MAGIC)) == ZIP_MAGIC:
          raise _Problem("truncated or corrupt zip archive (no central directory)")
        f.seek(0)
        obj = _read_legacy(_FileReader(f, size), budget)
      return _materialize(obj, budget)
  except _Problem as e:
    raise TorchCheckpointError(path, str(e)) from None
  except FileNotFoundError:
    raise TorchCheckpointError(path, "no such file") from None
  except IsADirectoryError:
    raise TorchCheckpointError(path, "is a directory, not a checkpoint file") from None
  except OSError as e:
    raise TorchCheckpointError(path, f"cannot read: {e.strerror or e}") from None
  except EOFError:
    raise TorchCheckpointError(path, "truncated: the pickle ends early") from None
  except (
    pickle.UnpicklingError,
    zipfile.BadZipFile,
    zlib.error,
    NotImplementedError,  # zipfile: an unknown compression method
    OverflowError,
    ValueError,
    TypeError,
    AttributeError,
    IndexError,
    KeyError,
    struct.error,
    UnicodeDecodeError,
    MemoryError,
    RuntimeError,  # also RecursionError; zipfile's for other oddities of a damaged archive
  ) as e:
    raise TorchCheckpointError(path, f"corrupt or truncated checkpoint ({type(e).__name__}: {e})") from None
