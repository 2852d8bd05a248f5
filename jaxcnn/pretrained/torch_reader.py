"""Read PyTorch checkpoints (``.pth`` / ``.pt``) into numpy arrays, without torch.

PyTorch saves a checkpoint with :mod:`pickle`, and a pickle may name any importable callable
(``os.system`` included) and ask for it to be called on load. This reader therefore unpickles
with a *restricted* :class:`pickle.Unpickler`: ``find_class`` resolves only the handful of names a
state dict needs (``collections.OrderedDict``, torch's tensor-rebuild helpers and storage types),
replacing each torch name by a local numpy implementation; any other global raises
:class:`pickle.UnpicklingError` naming it. Nothing from the file is ever executed.

Two on-disk formats exist:

* **zip** (torch >= 1.6, the default): a zip archive ``<prefix>/data.pkl`` (the pickled object,
  whose tensors point at storages through ``persistent_id`` tuples
  ``("storage", StorageType, key, location, numel)``), the raw bytes of each storage in
  ``<prefix>/data/<key>``, and optionally ``<prefix>/byteorder`` ("little" or "big").
* **legacy** (``torch.save(..., _use_new_zipfile_serialization=False)`` and torch < 1.6): five
  consecutive pickles and raw bytes in one stream: the magic number ``0x1950a86a20f9469cfc6c``,
  the protocol version ``1001``, a sys-info dict (``little_endian``, ``type_sizes``), the object
  (``persistent_id`` tuples ``("storage", StorageType, key, location, numel, view_metadata)``),
  the list of storage keys; then for each key in that order an 8-byte little-endian element
  count followed by the storage's raw bytes.

A tensor is rebuilt from its storage as a flat array, the tensor's ``(storage_offset, size,
stride)`` view taken with :func:`numpy.lib.stride_tricks.as_strided` and copied, so every
returned array owns its (C-contiguous) memory.

Example::

    from jaxcnn.pretrained.torch_reader import load_torch_checkpoint
    state = load_torch_checkpoint("model.pth")   # OrderedDict name -> np.ndarray
    state["_conv_stem.weight"].shape             # (32, 3, 3, 3): torch OIHW

This module imports only the standard library and numpy (``ml_dtypes`` for bfloat16 storages,
when present), so it can be used outside jaxcnn's jax environment as well.
"""

from __future__ import annotations

import collections
import functools
import io
import os
import pickle
import struct
import zipfile
from collections.abc import Mapping
from typing import Any, BinaryIO

import numpy as np

__all__ = ["LEGACY_MAGIC", "load_torch_checkpoint", "state_dict_from"]

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001


def _bfloat16():
    try:
        import ml_dtypes
    except ImportError:  # pragma: no cover - ml_dtypes ships with jax
        raise pickle.UnpicklingError(
            "the checkpoint holds bfloat16 tensors; install ml_dtypes to read them"
        ) from None
    return np.dtype(ml_dtypes.bfloat16)


# torch storage class name -> numpy dtype (a callable for dtypes numpy lacks).
_STORAGE_DTYPES: dict[str, Any] = {
    "DoubleStorage": np.dtype(np.float64),
    "FloatStorage": np.dtype(np.float32),
    "HalfStorage": np.dtype(np.float16),
    "BFloat16Storage": _bfloat16,
    "LongStorage": np.dtype(np.int64),
    "IntStorage": np.dtype(np.int32),
    "ShortStorage": np.dtype(np.int16),
    "CharStorage": np.dtype(np.int8),
    "ByteStorage": np.dtype(np.uint8),
    "BoolStorage": np.dtype(np.bool_),
}


class _StorageType:
    """Stands in for a ``torch.<X>Storage`` class: only its element dtype matters."""

    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name

    def __setstate__(self, state):
        raise pickle.UnpicklingError(f"checkpoint tries to modify torch.{self.name}")

    @property
    def dtype(self) -> np.dtype:
        dt = _STORAGE_DTYPES[self.name]
        return dt() if callable(dt) and not isinstance(dt, np.dtype) else dt

    def __repr__(self) -> str:
        return f"torch.{self.name}"


class _Storage:
    """A storage named in the pickle; ``data`` (1-D numpy array) is filled in when read."""

    def __init__(self, key: str, dtype: np.dtype, numel: int | None):
        self.key = key
        self.dtype = dtype
        self.numel = numel
        self.data: np.ndarray | None = None


class _StorageView:
    """A legacy view into a larger storage: elements ``[offset, offset + size)`` of ``base``."""

    def __init__(self, base: _Storage, offset: int, size: int):
        self.base = base
        self.offset = offset
        self.size = size


class _TensorStub:
    """A tensor whose storage bytes may not be read yet (legacy files store them last)."""

    def __init__(self, storage, storage_offset: int, size, stride):
        self.storage = storage
        self.storage_offset = int(storage_offset)
        self.size = tuple(int(s) for s in size)
        self.stride = tuple(int(s) for s in stride)

    def materialize(self) -> np.ndarray:
        storage, offset = self.storage, self.storage_offset
        if isinstance(storage, _StorageView):
            offset += storage.offset
            storage = storage.base
        flat = storage.data
        if flat is None:
            raise pickle.UnpicklingError(f"storage {storage.key!r} has no data in the file")
        if len(self.size) != len(self.stride):
            raise pickle.UnpicklingError(
                f"tensor size {self.size} and stride {self.stride} differ in length"
            )
        if any(s < 0 for s in self.size) or any(s < 0 for s in self.stride) or offset < 0:
            raise pickle.UnpicklingError(
                f"tensor with negative size/stride/offset: size {self.size}, "
                f"stride {self.stride}, offset {offset}"
            )
        if 0 in self.size:
            return np.zeros(self.size, dtype=flat.dtype)
        last = offset + sum((n - 1) * st for n, st in zip(self.size, self.stride, strict=True))
        if last >= flat.size:
            raise pickle.UnpicklingError(
                f"tensor of size {self.size}, stride {self.stride}, offset {offset} reads "
                f"element {last} of storage {storage.key!r} which holds {flat.size} elements"
            )
        item = flat.itemsize
        view = np.lib.stride_tricks.as_strided(
            flat[offset:],
            shape=self.size,
            strides=tuple(st * item for st in self.stride),
            writeable=False,
        )
        return np.array(view, copy=True, order="C")


def _rebuild_tensor(storage, storage_offset, size, stride, *_ignored):
    """``torch._utils._rebuild_tensor[_v2](storage, offset, size, stride, requires_grad,
    backward_hooks, metadata=None)`` -> a stub (the storage may not be read yet)."""
    return _TensorStub(storage, storage_offset, size, stride)


def _rebuild_parameter(data, *_ignored):
    """``torch._utils._rebuild_parameter(data, requires_grad, backward_hooks)``: a Parameter is
    just its tensor here."""
    return data


def _rebuild_parameter_with_state(data, requires_grad, backward_hooks, state=None):
    return data


# (module, name) -> factory of the local replacement. Everything else is forbidden. Each
# lookup returns a fresh object, so a pickle's BUILD opcode cannot alter shared state.
_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): lambda: collections.OrderedDict,  # a builtin type: immutable
    ("torch._utils", "_rebuild_tensor"): lambda: functools.partial(_rebuild_tensor),
    ("torch._utils", "_rebuild_tensor_v2"): lambda: functools.partial(_rebuild_tensor),
    ("torch._utils", "_rebuild_parameter"): lambda: functools.partial(_rebuild_parameter),
    ("torch._utils", "_rebuild_parameter_with_state"): lambda: functools.partial(
        _rebuild_parameter_with_state
    ),
}
_ALLOWED.update(
    {("torch", name): (lambda name=name: _StorageType(name)) for name in _STORAGE_DTYPES}
)


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals of a tensor state dict.

    ``storage_loader(key, dtype, numel) -> _Storage`` provides the storage objects that
    ``persistent_id`` tuples refer to (each key gives one shared object).
    """

    def __init__(self, file: BinaryIO, storage_loader, legacy: bool):
        super().__init__(file, encoding="latin1")
        self._storage_loader = storage_loader
        self._legacy = legacy

    def find_class(self, module: str, name: str):
        try:
            factory = _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"forbidden global {module}.{name} in checkpoint: this reader only rebuilds "
                "tensors (allowed: "
                + ", ".join(sorted(f"{m}.{n}" for m, n in _ALLOWED if m != "torch"))
                + ", torch.<Type>Storage); refusing to load it"
            ) from None
        return factory()

    def persistent_load(self, pid):
        if not isinstance(pid, tuple) or not pid:
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        kind = pid[0].decode("ascii") if isinstance(pid[0], bytes) else pid[0]
        if kind != "storage":
            raise pickle.UnpicklingError(
                f"unsupported persistent id of kind {kind!r} (only 'storage' is supported)"
            )
        if len(pid) < 5:
            raise pickle.UnpicklingError(f"malformed storage persistent id {pid!r}")
        storage_type, key, _location, numel = pid[1:5]
        if not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError(
                f"storage type {storage_type!r} is not a supported torch storage type"
            )
        key = key.decode("ascii") if isinstance(key, bytes) else str(key)
        storage = self._storage_loader(key, storage_type.dtype, int(numel))
        view = pid[5] if self._legacy and len(pid) > 5 else None
        if view is not None:
            _view_key, offset, size = view
            return _StorageView(storage, int(offset), int(size))
        return storage


def _materialize(obj):
    """Replace every tensor stub in a (nested) container by its numpy array."""
    if isinstance(obj, _TensorStub):
        return obj.materialize()
    if isinstance(obj, collections.OrderedDict):
        return collections.OrderedDict((k, _materialize(v)) for k, v in obj.items())
    if isinstance(obj, dict):
        return {k: _materialize(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_materialize(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_materialize(v) for v in obj)
    return obj


def _load_zip(path: str | os.PathLike) -> Any:
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        pkl = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
        if not pkl:
            raise pickle.UnpicklingError(
                f"{path}: a zip file without '<prefix>/data.pkl'; not a torch checkpoint"
            )
        prefix = pkl[0][: -len("data.pkl")]
        byteorder = "little"
        if prefix + "byteorder" in names:
            byteorder = zf.read(prefix + "byteorder").decode("ascii").strip()
        if byteorder not in ("little", "big"):
            raise pickle.UnpicklingError(f"{path}: unknown byteorder {byteorder!r}")
        storages: dict[str, _Storage] = {}

        def storage_loader(key: str, dtype: np.dtype, numel: int) -> _Storage:
            if key not in storages:
                entry = f"{prefix}data/{key}"
                if entry not in names:
                    raise pickle.UnpicklingError(f"{path}: storage {entry!r} missing")
                raw = zf.read(entry)
                dt = dtype.newbyteorder("<" if byteorder == "little" else ">")
                if len(raw) % dt.itemsize:
                    raise pickle.UnpicklingError(
                        f"{path}: storage {key!r} holds {len(raw)} bytes, not a multiple of "
                        f"{dt.itemsize} ({dtype})"
                    )
                st = _Storage(key, dtype, numel)
                st.data = np.frombuffer(raw, dtype=dt).astype(dtype, copy=False)
                storages[key] = st
            return storages[key]

        with zf.open(pkl[0]) as f:
            obj = RestrictedUnpickler(io.BytesIO(f.read()), storage_loader, legacy=False).load()
    return _materialize(obj)


def _load_legacy(f: BinaryIO, path) -> Any:
    def header_unpickler():
        return RestrictedUnpickler(f, _no_storage, legacy=True)

    def _no_storage(key, dtype, numel):
        raise pickle.UnpicklingError(f"{path}: storage reference in a header record")

    magic = header_unpickler().load()
    if magic != LEGACY_MAGIC:
        raise pickle.UnpicklingError(
            f"{path}: not a torch checkpoint (legacy magic number {LEGACY_MAGIC:#x} expected, "
            f"got {magic!r})"
        )
    version = header_unpickler().load()
    if version != LEGACY_PROTOCOL_VERSION:
        raise pickle.UnpicklingError(
            f"{path}: legacy protocol version {version!r} unsupported "
            f"(expected {LEGACY_PROTOCOL_VERSION})"
        )
    sys_info = header_unpickler().load()
    little = sys_info.get("little_endian", True) if isinstance(sys_info, dict) else True

    storages: dict[str, _Storage] = {}

    def storage_loader(key: str, dtype: np.dtype, numel: int) -> _Storage:
        if key not in storages:
            storages[key] = _Storage(key, dtype, numel)
        return storages[key]

    obj = RestrictedUnpickler(f, storage_loader, legacy=True).load()
    keys = header_unpickler().load()
    if not isinstance(keys, list):
        raise pickle.UnpicklingError(f"{path}: storage key list expected, got {type(keys)}")
    order = "<" if little else ">"
    for key in keys:
        key = key.decode("ascii") if isinstance(key, bytes) else str(key)
        if key not in storages:
            raise pickle.UnpicklingError(f"{path}: storage {key!r} not referenced by the object")
        st = storages[key]
        head = f.read(8)
        if len(head) != 8:
            raise pickle.UnpicklingError(f"{path}: truncated before storage {key!r}")
        (numel,) = struct.unpack(order + "q", head)
        nbytes = numel * st.dtype.itemsize
        raw = f.read(nbytes)
        if len(raw) != nbytes:
            raise pickle.UnpicklingError(
                f"{path}: storage {key!r} truncated ({len(raw)} of {nbytes} bytes)"
            )
        st.data = np.frombuffer(raw, dtype=st.dtype.newbyteorder(order)).astype(
            st.dtype, copy=False
        )
    return _materialize(obj)


def load_torch_checkpoint(path: str | os.PathLike) -> Any:
    """Load a PyTorch checkpoint file without torch, tensors as numpy arrays.

    Args:
      path: a file written by ``torch.save`` (zip or legacy format).

    Returns:
      The saved object with every tensor (and ``nn.Parameter``) replaced by a C-contiguous
      ``np.ndarray`` of the tensor's shape and dtype; for a ``state_dict`` an
      ``OrderedDict[str, np.ndarray]`` in the saved order.

    Raises:
      FileNotFoundError: no file at ``path``.
      pickle.UnpicklingError: the file is not a torch checkpoint, is damaged, or names a global
        other than the tensor-rebuild helpers (the message names the forbidden global).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint file at {path!r}")
    if zipfile.is_zipfile(path):
        return _load_zip(path)
    with open(path, "rb") as f:
        if f.read(1) != b"\x80":
            raise pickle.UnpicklingError(
                f"{path}: neither a zip archive nor a pickle stream; not a torch checkpoint"
            )
        f.seek(0)
        try:
            return _load_legacy(f, path)
        except (EOFError, struct.error, ValueError, TypeError, AttributeError, IndexError) as e:
            raise pickle.UnpicklingError(f"{path}: damaged legacy torch checkpoint ({e})") from e


def state_dict_from(obj: Any) -> collections.OrderedDict:
    """The ``name -> np.ndarray`` state dict inside a loaded checkpoint.

    Accepts a state dict itself or a dict holding one under ``"state_dict"`` or ``"model"``
    (common training-checkpoint layouts).
    """
    if isinstance(obj, Mapping):
        if obj and all(isinstance(v, np.ndarray) for v in obj.values()):
            return collections.OrderedDict(obj)
        for key in ("state_dict", "model", "model_state_dict"):
            if key in obj and isinstance(obj[key], Mapping):
                return state_dict_from(obj[key])
    raise ValueError(
        "expected a state dict (a mapping of names to tensors) or a dict holding one under "
        f"'state_dict'/'model'; got {type(obj).__name__}"
    )
