"""Read a PyTorch ``.pth`` state dict as numpy arrays without torch and without running
anything from the file.

Published ImageNet weights for small backbones (torchvision's MobileNetV2) come as
PyTorch's legacy serialisation: five pickles (magic number, protocol version, system
info, the state dict, the storage keys) followed by each storage's raw bytes. A pickle can
call any importable function; this reader's unpickler resolves exactly the names a state
dict of float and integer tensors needs (``OrderedDict``, ``torch._utils._rebuild_tensor_v2``
and the storage types) to stand-ins of its own, and refuses the file on any other name.
Nothing of torch is imported.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001
STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
}


class UnsafeWeights(ValueError):
    """The file is not a plain state dict of tensors, or not the legacy format."""


@dataclass(frozen=True)
class _Storage:
    dtype: type


@dataclass(frozen=True)
class _TensorRef:
    """A tensor waiting for its storage's bytes (they follow the pickles)."""

    key: str
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor_v2(storage, offset, shape, stride, *_ignored):
    key, _dtype = storage
    return _TensorRef(key, int(offset), tuple(shape), tuple(stride))


class _StateDictUnpickler(pickle.Unpickler):
    def __init__(self, stream, storages: dict[str, type]) -> None:
        super().__init__(stream)
        self.storages = storages

    def find_class(self, module: str, name: str):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if module == "torch" and name in STORAGE_DTYPES:
            return _Storage(STORAGE_DTYPES[name])
        raise UnsafeWeights(f"refuses to load {module}.{name}: not part of a plain state dict")

    def persistent_load(self, pid):
        # ('storage', storage type, key, location, size, view metadata)
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage"):
            raise UnsafeWeights(f"unexpected persistent id {pid!r}")
        _, kind, key, _location, _size, view = pid
        if not isinstance(kind, _Storage) or view is not None:
            raise UnsafeWeights(f"unsupported storage {pid!r}")
        self.storages[str(key)] = kind.dtype
        return str(key), kind.dtype


def read_state_dict(path: Path) -> dict[str, np.ndarray]:
    """The tensors of a legacy-format PyTorch state dict, by name, as numpy arrays.

    Raises:
        UnsafeWeights: the file calls anything but tensor rebuilding, is a zip (PyTorch >= 1.6
            format, not supported here), or is truncated.
    """
    data = Path(path).read_bytes()
    if data[:2] == b"PK":
        raise UnsafeWeights(f"{path}: a zip-format checkpoint; only the legacy format is read")
    stream = io.BytesIO(data)
    storages: dict[str, type] = {}
    try:
        header = [_StateDictUnpickler(stream, storages).load() for _ in range(3)]
        if header[0] != MAGIC_NUMBER or header[1] != PROTOCOL_VERSION:
            raise UnsafeWeights(f"{path}: not a PyTorch legacy checkpoint")
        if not header[2].get("little_endian", False):
            raise UnsafeWeights(f"{path}: written on a big-endian machine")
        state = _StateDictUnpickler(stream, storages).load()
        keys = _StateDictUnpickler(stream, storages).load()
        arrays = {}
        for key in keys:
            (count,) = struct.unpack("<q", stream.read(8))
            dtype = np.dtype(storages[str(key)])
            raw = stream.read(count * dtype.itemsize)
            if len(raw) != count * dtype.itemsize:
                raise UnsafeWeights(f"{path}: truncated in storage {key}")
            arrays[str(key)] = np.frombuffer(raw, dtype=dtype)
    except (pickle.UnpicklingError, EOFError, struct.error, KeyError, AttributeError) as e:
        raise UnsafeWeights(f"{path}: not a readable state dict ({e})") from e
    if not isinstance(state, dict):
        raise UnsafeWeights(f"{path}: holds a {type(state).__name__}, not a state dict")
    tensors = {}
    for name, ref in state.items():
        if not isinstance(ref, _TensorRef):
            raise UnsafeWeights(f"{path}: entry {name!r} is not a tensor")
        storage = arrays[ref.key]
        item = storage.itemsize
        tensors[name] = np.lib.stride_tricks.as_strided(
            storage[ref.offset :],
            shape=ref.shape,
            strides=tuple(s * item for s in ref.stride),
            writeable=False,
        ).copy()
    return tensors
