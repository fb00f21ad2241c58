"""A numpy reader for TensorFlow's tensor-bundle checkpoints (no TensorFlow, no protobuf package).

Not part of the MeLoDy paper: it exists so that the project's "ears" (the pretrained musicnn tagger in
`melody.ears.musicnn`) can load the weights that the `musicnn` package ships as a TF1 checkpoint.

The format, as written by TensorFlow's `BundleWriter`:

- `PREFIX.index` is a LevelDB-format table (SSTable). Its last 48 bytes are the footer: two block
  handles (metaindex, index; each a pair of varints offset, size), zero padding to 40 bytes, and the
  8-byte magic 0xdb4775248b80fb57. Every block is followed by a 5-byte trailer: a compression byte
  (TF writes 0 = none) and the masked CRC-32C of the block and that byte. A block holds
  prefix-compressed entries `varint shared, varint unshared, varint value_len, key suffix, value`,
  then a uint32 array of restart offsets and their uint32 count. The index block maps keys to the
  handles of the data blocks.
- In the data blocks the key "" holds a `BundleHeaderProto` (num_shards, endianness) and every other
  key is a tensor name whose value is a `BundleEntryProto`: dtype (1), shape (2: TensorShapeProto with
  repeated dim (2) {size (1)}), shard_id (3), offset (4), size (5), crc32c (6, fixed32, masked),
  slices (7).
- `PREFIX.data-SSSSS-of-NNNNN` holds the raw little-endian tensor bytes at those offsets.

Checks made here: footer magic, block CRCs, every protobuf field in bounds, each tensor's byte count
equal to prod(shape) x itemsize, the tensors of a shard tiling its data file exactly (no gaps, no
overlaps, nothing past the end), and (by default) each tensor's CRC-32C. Any failure is a
`MelodyError` with a one-line message. Not supported (refused with a MelodyError): string/variant
tensors, partitioned (sliced) variables, big-endian bundles, compressed blocks.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from melody.errors import MelodyError

_TABLE_MAGIC = 0xDB4775248B80FB57
_FOOTER_LEN = 48
_BLOCK_TRAILER_LEN = 5

# tensorflow/core/framework/types.proto: DataType enum -> numpy dtype (little endian).
_DTYPES: dict[int, np.dtype] = {
    1: np.dtype("<f4"),  # DT_FLOAT
    2: np.dtype("<f8"),  # DT_DOUBLE
    3: np.dtype("<i4"),  # DT_INT32
    4: np.dtype("u1"),  # DT_UINT8
    5: np.dtype("<i2"),  # DT_INT16
    6: np.dtype("i1"),  # DT_INT8
    8: np.dtype("<c8"),  # DT_COMPLEX64
    9: np.dtype("<i8"),  # DT_INT64
    10: np.dtype("?"),  # DT_BOOL
    17: np.dtype("<u2"),  # DT_UINT16
    18: np.dtype("<c16"),  # DT_COMPLEX128
    19: np.dtype("<f2"),  # DT_HALF
    22: np.dtype("<u4"),  # DT_UINT32
    23: np.dtype("<u8"),  # DT_UINT64
}


@dataclass(frozen=True)
class BundleEntry:
    """Where one tensor lives: a decoded `BundleEntryProto`."""

    dtype: int
    shape: tuple[int, ...]
    shard_id: int
    offset: int
    size: int
    crc32c: int | None  # unmasked CRC-32C of the tensor bytes, when recorded


def read_tf_checkpoint(
    prefix: Path | str, include: Callable[[str], bool] | None = None, verify_crc: bool = True
) -> dict[str, np.ndarray]:
    """The tensors of the checkpoint at `prefix` (the path without `.index`), by variable name.

    `include(name)` picks which tensors to decode (default: all); the layout checks always cover
    every entry. CRC checking costs about 0.1 s per MB decoded.

    A prefix that is a directory means the files `DIR/.index` and `DIR/.data-*` (how the musicnn
    package saved its checkpoints: `saver.save(sess, "DIR/")`).
    """
    index_path = _index_path(prefix)
    header, entries = read_bundle_index(index_path)
    num_shards = header["num_shards"]
    data_paths = [index_path.with_name(_data_name(index_path, s, num_shards)) for s in range(num_shards)]
    for path in data_paths:
        if not path.is_file():
            raise MelodyError(f"checkpoint data file missing: {path}")
    shard_sizes = {s: path.stat().st_size for s, path in enumerate(data_paths)}
    _check_layout(entries, shard_sizes, index_path)

    tensors: dict[str, np.ndarray] = {}
    for shard, path in enumerate(data_paths):
        blob = path.read_bytes()
        if len(blob) != shard_sizes[shard]:
            raise MelodyError(f"checkpoint data file changed while reading: {path}")
        for name, e in entries.items():
            if e.shard_id != shard or (include is not None and not include(name)):
                continue
            raw = blob[e.offset : e.offset + e.size]
            if verify_crc and e.crc32c is not None and crc32c(raw) != e.crc32c:
                raise MelodyError(f"corrupt checkpoint data: CRC mismatch for tensor {name!r} in {path}")
            tensors[name] = np.frombuffer(raw, dtype=_DTYPES[e.dtype]).reshape(e.shape).copy()
    return tensors


def read_bundle_index(index_path: Path) -> tuple[dict[str, int], dict[str, BundleEntry]]:
    """Decode a bundle's `.index` table into (header fields, tensor name -> entry)."""
    try:
        buf = index_path.read_bytes()
    except OSError as err:
        raise MelodyError(f"cannot read checkpoint index {index_path}: {err.strerror}") from None
    where = f"checkpoint index {index_path}"
    if len(buf) < _FOOTER_LEN:
        raise MelodyError(f"corrupt {where}: {len(buf)} bytes, shorter than a table footer")
    (magic,) = struct.unpack_from("<Q", buf, len(buf) - 8)
    if magic != _TABLE_MAGIC:
        raise MelodyError(f"corrupt {where}: bad table magic (truncated or not a TF checkpoint)")
    footer = _Reader(buf[len(buf) - _FOOTER_LEN : len(buf) - 8], where)
    footer.varint(), footer.varint()  # metaindex handle: TF writes an empty one; unused
    index_handle = (footer.varint(), footer.varint())

    header: dict[str, int] = {}
    entries: dict[str, BundleEntry] = {}
    for _, handle_bytes in _block_items(buf, index_handle, where):
        r = _Reader(handle_bytes, where)
        data_handle = (r.varint(), r.varint())
        for key, value in _block_items(buf, data_handle, where):
            if key == b"":
                header = _decode_header(value, where)
            else:
                name = key.decode("utf-8", errors="replace")
                entries[name] = _decode_entry(value, f"{where}, tensor {name!r}")
    if not header:
        raise MelodyError(f"corrupt {where}: no bundle header entry")
    if header.get("endianness", 0) != 0:
        raise MelodyError(f"unsupported {where}: big-endian bundles are not supported")
    return header, entries


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli) of `data`, table-driven (about 0.1 s per MB in pure Python)."""
    c = 0xFFFFFFFF
    table = _CRC_TABLE
    for byte in data:
        c = table[(c ^ byte) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def _make_crc_table() -> tuple[int, ...]:
    poly = 0x82F63B78  # reversed Castagnoli polynomial
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ poly if c & 1 else c >> 1
        table.append(c)
    return tuple(table)


_CRC_TABLE = _make_crc_table()


def _unmask_crc(masked: int) -> int:
    """LevelDB/TF store `rot17(crc) + 0xa282ead8`; undo it."""
    rot = (masked - 0xA282EAD8) & 0xFFFFFFFF
    return ((rot >> 17) | (rot << 15)) & 0xFFFFFFFF


def _index_path(prefix: Path | str) -> Path:
    prefix = Path(prefix)
    index = prefix / ".index" if prefix.is_dir() else prefix.with_name(prefix.name + ".index")
    if not index.is_file():
        raise MelodyError(f"checkpoint index not found: {index}")
    return index


def _data_name(index_path: Path, shard: int, num_shards: int) -> str:
    stem = index_path.name[: -len(".index")]
    return f"{stem}.data-{shard:05d}-of-{num_shards:05d}"


def _check_layout(entries: dict[str, BundleEntry], shard_sizes: dict[int, int], where: Path) -> None:
    """Each tensor's bytes = shape x dtype, and the tensors tile each data file exactly."""
    spans: dict[int, list[tuple[int, int, str]]] = {s: [] for s in shard_sizes}
    for name, e in entries.items():
        if e.shard_id not in shard_sizes:
            raise MelodyError(f"corrupt checkpoint index {where}: tensor {name!r} in missing shard {e.shard_id}")
        expected = int(np.prod(e.shape, dtype=np.int64)) * _DTYPES[e.dtype].itemsize
        if e.size != expected:
            raise MelodyError(
                f"corrupt checkpoint index {where}: tensor {name!r} has {e.size} bytes, "
                f"shape {e.shape} needs {expected}"
            )
        spans[e.shard_id].append((e.offset, e.size, name))
    for shard, shard_spans in spans.items():
        end = 0
        for offset, size, name in sorted(shard_spans):
            if offset != end:
                kind = "overlaps the previous tensor" if offset < end else f"leaves a gap of {offset - end} bytes"
                raise MelodyError(f"corrupt checkpoint {where}: tensor {name!r} {kind}")
            end = offset + size
        if end != shard_sizes[shard]:
            raise MelodyError(
                f"corrupt checkpoint {where}: tensors of shard {shard} cover {end} bytes but its data file "
                f"has {shard_sizes[shard]} (truncated or padded)"
            )


def _block_items(buf: bytes, handle: tuple[int, int], where: str):
    """Yield (key, value) of the table block at `handle` = (offset, size), after checking its CRC."""
    offset, size = handle
    if offset + size + _BLOCK_TRAILER_LEN > len(buf) - _FOOTER_LEN:
        raise MelodyError(f"corrupt {where}: block at {offset}+{size} runs past the end of the table")
    block = buf[offset : offset + size]
    compression = buf[offset + size]
    (masked,) = struct.unpack_from("<I", buf, offset + size + 1)
    if _unmask_crc(masked) != crc32c(block + bytes([compression])):
        raise MelodyError(f"corrupt {where}: CRC mismatch in the block at byte {offset}")
    if compression != 0:
        raise MelodyError(f"unsupported {where}: compressed table blocks (type {compression})")
    if size < 4:
        raise MelodyError(f"corrupt {where}: block at byte {offset} too short")
    (num_restarts,) = struct.unpack_from("<I", block, size - 4)
    entries_end = size - 4 - 4 * num_restarts
    if entries_end < 0:
        raise MelodyError(f"corrupt {where}: bad restart count in the block at byte {offset}")
    r = _Reader(block[:entries_end], where)
    key = b""
    while not r.done():
        shared, unshared, value_len = r.varint(), r.varint(), r.varint()
        if shared > len(key):
            raise MelodyError(f"corrupt {where}: bad key prefix in the block at byte {offset}")
        key = key[:shared] + r.take(unshared)
        yield key, r.take(value_len)


def _decode_header(value: bytes, where: str) -> dict[str, int]:
    header = {"num_shards": 1, "endianness": 0}
    for field, wire, v in _Reader(value, where).fields():
        if field == 1 and wire == 0:
            header["num_shards"] = v
        elif field == 2 and wire == 0:
            header["endianness"] = v
    return header


def _decode_entry(value: bytes, where: str) -> BundleEntry:
    dtype, shape, shard_id, offset, size, crc = 0, (), 0, 0, 0, None
    for field, wire, v in _Reader(value, where).fields():
        if field == 1 and wire == 0:
            dtype = v
        elif field == 2 and wire == 2:
            shape = _decode_shape(v, where)
        elif field == 3 and wire == 0:
            shard_id = v
        elif field == 4 and wire == 0:
            offset = v
        elif field == 5 and wire == 0:
            size = v
        elif field == 6 and wire == 5:
            crc = _unmask_crc(v)
        elif field == 7:
            raise MelodyError(f"unsupported {where}: partitioned (sliced) variables are not supported")
    if dtype not in _DTYPES:
        raise MelodyError(f"unsupported {where}: TF dtype enum {dtype} (only numeric tensors are read)")
    return BundleEntry(dtype, shape, shard_id, offset, size, crc)


def _decode_shape(value: bytes, where: str) -> tuple[int, ...]:
    dims = []
    for field, wire, v in _Reader(value, where).fields():
        if field == 2 and wire == 2:  # Dim {int64 size = 1; string name = 2;}
            size = 0
            for f, w, x in _Reader(v, where).fields():
                if f == 1 and w == 0:
                    size = x
            if size < 0 or size >= 1 << 62:
                raise MelodyError(f"unsupported {where}: unknown or negative dimension")
            dims.append(size)
        elif field == 3 and wire == 0 and v:
            raise MelodyError(f"unsupported {where}: tensor of unknown rank")
    return tuple(dims)


class _Reader:
    """A cursor over bytes: protobuf varints, length-delimited fields, raw slices."""

    def __init__(self, buf: bytes, where: str):
        self.buf, self.pos, self.where = buf, 0, where

    def done(self) -> bool:
        return self.pos >= len(self.buf)

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.buf):
            raise MelodyError(f"corrupt {self.where}: a field runs past its record")
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out

    def varint(self) -> int:
        result, shift = 0, 0
        while True:
            if self.pos >= len(self.buf) or shift > 63:
                raise MelodyError(f"corrupt {self.where}: truncated or overlong varint")
            byte = self.buf[self.pos]
            self.pos += 1
            result |= (byte & 0x7F) << shift
            if byte < 0x80:
                return result
            shift += 7

    def fields(self):
        """Yield (field number, wire type, value): int for varint/fixed, bytes for length-delimited."""
        while not self.done():
            tag = self.varint()
            field, wire = tag >> 3, tag & 7
            if wire == 0:
                v = self.varint()
                yield field, wire, v - (1 << 64) if v >= 1 << 63 else v  # int64 two's complement
            elif wire == 1:
                yield field, wire, struct.unpack("<Q", self.take(8))[0]
            elif wire == 2:
                yield field, wire, self.take(self.varint())
            elif wire == 5:
                yield field, wire, struct.unpack("<I", self.take(4))[0]
            else:
                raise MelodyError(f"corrupt {self.where}: unknown protobuf wire type {wire}")
