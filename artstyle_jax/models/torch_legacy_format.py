"""Tensors of a file in torch.save's legacy format, read without torch and without running any
of the file's code.

The legacy format (torch.save with `_use_new_zipfile_serialization=False`, and every torch
before 1.6) is five pickles and the raw storages, one after another:

  1. the magic number 0x1950a86a20f9469cfc6c,   2. the protocol version 1001,
  3. the saver's system info ({'little_endian': ..., 'type_sizes': ...}),
  4. the saved object, where each tensor is `torch._utils._rebuild_tensor_v2(storage, offset,
     size, stride, requires_grad, backward_hooks[, metadata])` and each storage a persistent id
     ('storage', torch.<Type>Storage, key, location, numel, view),
  5. the storage keys in the order their data follows,
  then for each key: its number of elements (int64, little-endian) and its bytes.

`load` unpickles with `RestrictedUnpickler`, whose `find_class` gives only the names above
(`_rebuild_tensor_v2`, `_rebuild_parameter`, the storage types, `collections.OrderedDict`) and
maps each to a NumPy stand-in: nothing in the file is imported or executed. The tensors come
back as NumPy arrays of their dtypes, with the values torch.load gives.
"""
import collections
import dataclasses
import pickle
import struct
from typing import Any, BinaryIO

import ml_dtypes
import numpy as np

from artstyle_jax.models.torch_weights import CheckpointError

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001
_ZIP_MAGIC = b"PK\x03\x04"

STORAGE_DTYPES = {
    "FloatStorage": np.dtype(np.float32),
    "DoubleStorage": np.dtype(np.float64),
    "HalfStorage": np.dtype(np.float16),
    "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
    "LongStorage": np.dtype(np.int64),
    "IntStorage": np.dtype(np.int32),
    "ShortStorage": np.dtype(np.int16),
    "CharStorage": np.dtype(np.int8),
    "ByteStorage": np.dtype(np.uint8),
    "BoolStorage": np.dtype(np.bool_),
}


@dataclasses.dataclass(frozen=True)
class _StorageType:
  """A torch.<Type>Storage class named in the pickle: only its element dtype."""
  dtype: np.dtype


@dataclasses.dataclass
class _Storage:
  """A storage the pickle refers to; `data` is filled from the bytes after the pickle."""
  key: str
  dtype: np.dtype
  numel: int
  data: np.ndarray | None = None


@dataclasses.dataclass(frozen=True)
class _Tensor:
  """A tensor the pickle rebuilds, made an array once its storage is read."""
  storage: _Storage
  offset: int
  size: tuple[int, ...]
  stride: tuple[int, ...]

  def array(self) -> np.ndarray:
    """The tensor's values, a copy of its elements in C order."""
    itemsize = self.storage.dtype.itemsize
    end = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride)) + 1
    if 0 in self.size:
      return np.zeros(self.size, self.storage.dtype)
    if self.offset < 0 or min(self.stride, default=0) < 0 or end > self.storage.numel:
      raise CheckpointError(f"a tensor of size {self.size}, stride {self.stride} at offset {self.offset} "
                            f"reaches past its storage of {self.storage.numel} elements")
    view = np.lib.stride_tricks.as_strided(self.storage.data[self.offset:], self.size,
                                           tuple(s * itemsize for s in self.stride), writeable=False)
    return np.array(view)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None) -> _Tensor:
  del requires_grad, backward_hooks
  if metadata:
    raise CheckpointError(f"a tensor carries metadata {metadata!r} (a conjugate or negative view), "
                          "which this reader does not apply")
  if not isinstance(storage, _Storage):
    raise CheckpointError(f"a tensor is rebuilt from a {type(storage).__name__}, not a storage")
  return _Tensor(storage, int(storage_offset), tuple(int(n) for n in size), tuple(int(s) for s in stride))


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None) -> _Tensor:
  del requires_grad, backward_hooks
  return data


_ALLOWED = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
    **{("torch", name): _StorageType(dtype) for name, dtype in STORAGE_DTYPES.items()},
}


class RestrictedUnpickler(pickle.Unpickler):
  """Unpickles a legacy torch file's object: the only globals are `_ALLOWED`'s stand-ins, and
  persistent ids make `_Storage` placeholders (`storages` maps each key to its one placeholder)."""

  def __init__(self, file: BinaryIO):
    super().__init__(file)
    self.storages: dict[str, _Storage] = {}

  def find_class(self, module: str, name: str) -> Any:
    try:
      return _ALLOWED[(module, name)]
    except KeyError:
      raise CheckpointError(f"the pickle names {module}.{name}, which a file of tensors does not need; "
                            "nothing of it was run") from None

  def persistent_load(self, saved_id: Any) -> _Storage:
    if not (isinstance(saved_id, tuple) and len(saved_id) == 6 and saved_id[0] == "storage"):
      raise CheckpointError(f"an unknown persistent id {str(saved_id)[:80]!r}")
    _, storage_type, key, _, numel, view = saved_id
    if not isinstance(storage_type, _StorageType):
      raise CheckpointError(f"a storage of type {storage_type!r}")
    if view is not None:
      raise CheckpointError("the file holds views of storages, which this reader does not read")
    key = str(key)
    if key not in self.storages:
      self.storages[key] = _Storage(key, storage_type.dtype, int(numel))
    return self.storages[key]


def _restricted_load(file: BinaryIO) -> Any:
  """One of the plain pickles (magic number, version, system info, storage keys): no globals."""
  return RestrictedUnpickler(file).load()


def _resolve(value: Any) -> Any:
  """`value` with every `_Tensor` replaced by its array, through dicts, lists and tuples."""
  if isinstance(value, _Tensor):
    return value.array()
  if isinstance(value, dict):
    return type(value)((k, _resolve(v)) for k, v in value.items())
  if isinstance(value, (list, tuple)):
    return type(value)(_resolve(v) for v in value)
  return value


def _read_storage(file: BinaryIO, storage: _Storage) -> None:
  header = file.read(8)
  if len(header) != 8:
    raise CheckpointError(f"the file ends before storage {storage.key}")
  (numel,) = struct.unpack("<q", header)
  if numel != storage.numel:
    raise CheckpointError(f"storage {storage.key} holds {numel} elements, the pickle says {storage.numel}")
  nbytes = numel * storage.dtype.itemsize
  data = file.read(nbytes)
  if len(data) != nbytes:
    raise CheckpointError(f"the file ends inside storage {storage.key}")
  storage.data = np.frombuffer(data, storage.dtype)


def read(file: BinaryIO) -> Any:
  """The object torch.save wrote to the seekable binary `file` (legacy format), its tensors
  NumPy arrays.

  Raises:
    CheckpointError: not the legacy format (a zip-format torch file says so), or a file that
      needs more than tensors, plain values and OrderedDicts.
  """
  start = file.read(4)
  if start == _ZIP_MAGIC:
    raise CheckpointError("a zip-format torch file (torch.save's default since torch 1.6); this reader takes the "
                          "legacy format only")
  file.seek(0)
  try:
    magic = _restricted_load(file)
    if magic != MAGIC_NUMBER:
      raise CheckpointError("not a torch.save file of the legacy format (no magic number)")
    version = _restricted_load(file)
    if version != PROTOCOL_VERSION:
      raise CheckpointError(f"legacy torch format of protocol {version}, not {PROTOCOL_VERSION}")
    system = _restricted_load(file)
    if not (isinstance(system, dict) and system.get("little_endian")):
      raise CheckpointError("saved on a big-endian machine, which this reader does not read")
    unpickler = RestrictedUnpickler(file)
    saved = unpickler.load()
    keys = _restricted_load(file)
  except CheckpointError:
    raise
  except (pickle.UnpicklingError, EOFError, ValueError, TypeError, struct.error) as e:
    raise CheckpointError(f"not a torch.save file of the legacy format ({type(e).__name__}: {e})") from e
  if not isinstance(keys, list) or sorted(map(str, keys)) != sorted(unpickler.storages):
    raise CheckpointError("the storage keys after the pickle are not the storages it refers to")
  for key in keys:
    _read_storage(file, unpickler.storages[str(key)])
  return _resolve(saved)


def is_legacy_file(path: str) -> bool:
  """Whether the local file at `path` starts with the legacy format's magic number."""
  with open(path, "rb") as file:
    try:
      return _restricted_load(file) == MAGIC_NUMBER
    except (pickle.UnpicklingError, EOFError, ValueError, IndexError, KeyError, struct.error):
      return False


def load(path: str) -> Any:
  """`read` of the file at `path` (local; FileNotFoundError if there is none)."""
  with open(path, "rb") as file:
    return read(file)
