"""Write and read the ``.pt`` files of a features folder without importing torch.

``torch.save`` of ``{"features": float32 matrix, "generation": str}`` is a zip archive
holding a protocol-2 pickle that names ``torch._utils._rebuild_tensor_v2`` and one raw
storage. Writing those bytes directly keeps torch (3 s and 650 MB of shared libraries)
out of indexing; ``torch.load(weights_only=True)`` reads the result like any other
``.pt``, and a test holds the two byte-for-byte compatible in what they carry.
"""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path

import numpy as np

ARCHIVE = "archive"
ALIGNMENT = 64  # torch aligns storages so they can be memory-mapped


def _str(text: str) -> bytes:
    data = text.encode("utf-8")
    return b"X" + struct.pack("<I", len(data)) + data


def _int(value: int) -> bytes:
    if 0 <= value < 256:
        return b"K" + bytes([value])
    if -(2 ** 31) <= value < 2 ** 31:
        return b"J" + struct.pack("<i", value)
    data = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(data)]) + data


def _tuple(items: list[bytes]) -> bytes:
    return b"(" + b"".join(items) + b"t"


def _pickle(entries: dict[str, np.ndarray | str]) -> bytes:
    """Protocol-2 pickle of a dict of float32 matrices and strings, as torch.save writes it."""
    body, key = [], 0
    for name, value in entries.items():
        body.append(_str(name))
        if isinstance(value, str):
            body.append(_str(value))
            continue
        storage = _tuple([_str("storage"), b"ctorch\nFloatStorage\n", _str(str(key)), _str("cpu"), _int(value.size)])
        strides = [int(s // value.itemsize) for s in value.strides] if value.size else [1] * value.ndim
        args = [storage + b"Q", _int(0), _tuple([_int(d) for d in value.shape]), _tuple([_int(s) for s in strides]),
                b"\x89", b"ccollections\nOrderedDict\n)R"]
        body.append(b"ctorch._utils\n_rebuild_tensor_v2\n" + _tuple(args) + b"R")
        key += 1
    return b"\x80\x02}(" + b"".join(body) + b"u."


def write(path: str | Path, entries: dict[str, np.ndarray | str]) -> None:
    """Write ``entries`` (float32 arrays and strings) as a ``.pt`` file torch can load."""
    arrays = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in entries.items() if not isinstance(v, str)}
    entries = {k: arrays.get(k, v) for k, v in entries.items()}
    with open(path, "wb") as fh, zipfile.ZipFile(fh, "w", zipfile.ZIP_STORED) as archive:
        def put(name: str, data: bytes, align: bool = False) -> None:
            info = zipfile.ZipInfo(f"{ARCHIVE}/{name}", date_time=(1980, 1, 1, 0, 0, 0))
            if align:
                start = fh.tell() + 30 + len(info.filename.encode()) + 4
                info.extra = struct.pack("<HH", 0xCAFE, (-start) % ALIGNMENT) + b"Z" * ((-start) % ALIGNMENT)
            archive.writestr(info, data)

        put("data.pkl", _pickle(entries))
        put("byteorder", b"little")
        for key, value in enumerate(arrays.values()):
            put(f"data/{key}", value.astype("<f4", copy=False).tobytes(), align=True)
        put("version", b"3\n")


def read(path: str | Path) -> dict[str, np.ndarray | str]:
    """Read a ``.pt`` of float32 tensors and strings without torch; the tensors are memory-mapped.

    torch stores every storage uncompressed, so each one is a plain run of bytes in the file.
    """
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        prefix = names[0].split("/", 1)[0]
        pkl = archive.read(f"{prefix}/data.pkl")
        offsets = {}
        with open(path, "rb") as fh:
            for info in archive.infolist():
                if "/data/" in info.filename and not info.filename.endswith(".pkl"):
                    if info.compress_type != zipfile.ZIP_STORED:
                        raise ValueError(f"{path}: compressed storage {info.filename}")
                    fh.seek(info.header_offset + 26)
                    name_len, extra_len = struct.unpack("<HH", fh.read(4))
                    offsets[info.filename.rsplit("/", 1)[1]] = (info.header_offset + 30 + name_len + extra_len,
                                                                info.file_size // 4)

    def storage(key: str) -> np.ndarray:
        offset, count = offsets[key]
        if count == 0:
            return np.empty(0, dtype="<f4")
        return np.memmap(path, dtype="<f4", mode="r", offset=offset, shape=(count,))

    return _unpickle(pkl, storage)


def _rebuild(storage: np.ndarray, offset: int, shape: tuple, strides: tuple, *_) -> np.ndarray:
    count = int(np.prod(shape)) if shape else 1
    flat = storage[offset:offset + count]
    contiguous = tuple(int(np.prod(shape[i + 1:])) for i in range(len(shape)))
    if tuple(strides) == contiguous or count == 0:
        return flat.reshape(shape)
    return np.lib.stride_tricks.as_strided(storage[offset:], shape=shape, strides=[s * 4 for s in strides]).copy()


def _unpickle(data: bytes, storage) -> dict[str, np.ndarray | str]:
    import io
    import pickle

    class Reader(pickle.Unpickler):
        def find_class(self, module: str, name: str):
            if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
                return _rebuild
            if (module, name) == ("torch", "FloatStorage"):
                return "float32"
            if (module, name) == ("collections", "OrderedDict"):
                return dict
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a features file")

        def persistent_load(self, pid):
            if pid[1] != "float32":
                raise pickle.UnpicklingError(f"unsupported storage {pid[1]!r}")
            return storage(pid[2])

    return Reader(io.BytesIO(data)).load()
