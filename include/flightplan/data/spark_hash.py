"""Spark's ``xxhash64`` on Arrow columns, vectorized with NumPy: the local engine draws a row's split side, and
fingerprints a split, from the same 64-bit hash as Spark, so that both engines give the same sides and manifests.

Spark hashes each column in turn, the previous column's hash as the seed (42 for the first; a null leaves the
hash as it is): an integer, a date or a boolean as XXH64 of its 4 bytes, a long or a timestamp (microseconds) as
XXH64 of its 8, a float or a double by the bits of its value (-0.0 as 0.0, every NaN as Java's one NaN), a string
by its UTF-8 bytes."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

SEED = 42
P1, P2, P3, P4, P5 = (
    np.uint64(value)
    for value in (
        0x9E3779B185EBCA87,
        0xC2B2AE3D27D4EB4F,
        0x165667B19E3779F9,
        0x85EBCA77C2B2AE63,
        0x27D4EB2F165667C5,
    )
)
JAVA_FLOAT_NAN, JAVA_DOUBLE_NAN = 0x7FC00000, 0x7FF8000000000000
MASK_32 = np.uint64(0xFFFFFFFF)


class UnhashableColumn(ValueError):
    """A column of a type this module does not hash as Spark does."""


def xxhash64(columns: Sequence[pa.Array | pa.ChunkedArray | int], rows: int) -> np.ndarray:
    """Spark's ``xxhash64(*columns)`` of each of ``rows`` rows, as signed 64-bit integers; an ``int`` stands for a
    literal integer column (``F.lit(seed)``)."""
    hashes = np.full(rows, SEED, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for column in columns:
            hashes = _hash_column(column, hashes, rows)
    return hashes.view(np.int64)


def _hash_column(column: pa.Array | pa.ChunkedArray | int, seeds: np.ndarray, rows: int) -> np.ndarray:
    if isinstance(column, int):
        return _hash_int(np.full(rows, column & 0xFFFFFFFF, dtype=np.uint64), seeds)
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    hashed = _hash_values(array, seeds)
    if array.null_count:
        return np.where(array.is_null().to_numpy(zero_copy_only=False), seeds, hashed)
    return hashed


def _hash_values(array: pa.Array, seeds: np.ndarray) -> np.ndarray:
    kind = array.type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return _hash_strings(array, seeds)
    if pa.types.is_boolean(kind):
        return _hash_int(_filled(array.cast(pa.int8()), 0).astype(np.uint64), seeds)
    if (pa.types.is_integer(kind) and kind.bit_width <= 32) or pa.types.is_date32(kind):
        values = _filled(array.cast(pa.int32()) if pa.types.is_date32(kind) else array, 0)
        return _hash_int(values.astype(np.int64).astype(np.uint64) & MASK_32, seeds)
    if pa.types.is_int64(kind) or pa.types.is_timestamp(kind):
        micros = array.cast(pa.timestamp("us", kind.tz)) if pa.types.is_timestamp(kind) else array
        return _hash_long(_filled(micros.cast(pa.int64()), 0).astype(np.uint64), seeds)
    if pa.types.is_float32(kind):
        values = _filled(array, 0.0) + np.float32(0.0)  # -0.0 + 0.0 is 0.0
        bits = values.view(np.uint32).astype(np.uint64)
        return _hash_int(np.where(np.isnan(values), np.uint64(JAVA_FLOAT_NAN), bits), seeds)
    if pa.types.is_float64(kind):
        values = _filled(array, 0.0) + 0.0
        bits = values.view(np.uint64)
        return _hash_long(np.where(np.isnan(values), np.uint64(JAVA_DOUBLE_NAN), bits), seeds)
    raise UnhashableColumn(f"no Spark-compatible xxhash64 for a column of type {kind}")


def _filled(array: pa.Array, value: object) -> np.ndarray:
    """The values as NumPy, nulls as ``value`` (their hash is discarded)."""
    return pc.fill_null(array, value).to_numpy(zero_copy_only=False)


def _rotl(value: np.ndarray, bits: int) -> np.ndarray:
    return (value << np.uint64(bits)) | (value >> np.uint64(64 - bits))


def _round(accumulator: np.ndarray, lane: np.ndarray) -> np.ndarray:
    return _rotl(accumulator + lane * P2, 31) * P1


def _avalanche(value: np.ndarray) -> np.ndarray:
    value = value ^ (value >> np.uint64(33))
    value = value * P2
    value = value ^ (value >> np.uint64(29))
    value = value * P3
    return value ^ (value >> np.uint64(32))


def _hash_int(values: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """XXH64 of 4 bytes: ``values`` the unsigned 32-bit words, as uint64."""
    return _avalanche(_mix_word(seeds + P5 + np.uint64(4), values))


def _hash_long(values: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """XXH64 of 8 bytes: ``values`` the 64-bit words."""
    return _avalanche(_mix_long(seeds + P5 + np.uint64(8), values))


def _mix_long(hashed: np.ndarray, word: np.ndarray) -> np.ndarray:
    return _rotl(hashed ^ _round(np.zeros_like(word), word), 27) * P1 + P4


def _mix_word(hashed: np.ndarray, word: np.ndarray) -> np.ndarray:
    return _rotl(hashed ^ (word * P1), 23) * P2 + P3


def _hash_strings(array: pa.Array, seeds: np.ndarray) -> np.ndarray:
    """XXH64 of each string's UTF-8 bytes, the strings of one length at a time (XXH64's steps depend on the length
    only)."""
    strings = pc.fill_null(array.cast(pa.large_string()), "")
    offsets = np.frombuffer(strings.buffers()[1], dtype=np.int64)[strings.offset : strings.offset + len(strings) + 1]
    data = np.frombuffer(strings.buffers()[2] or b"", dtype=np.uint8)
    lengths = np.diff(offsets)
    hashed = np.empty(len(strings), dtype=np.uint64)
    for length in np.unique(lengths):
        rows = np.flatnonzero(lengths == length)
        matrix = data[offsets[rows][:, None] + np.arange(length)] if length else np.zeros((len(rows), 0), np.uint8)
        hashed[rows] = _hash_bytes(matrix, seeds[rows])
    return hashed


def _words(matrix: np.ndarray, start: int, size: int) -> np.ndarray:
    """The little-endian words of ``size`` bytes at ``start`` of each row, as uint64."""
    dtype = np.dtype("<u8") if size == 8 else np.dtype("<u4")
    return np.ascontiguousarray(matrix[:, start : start + size]).view(dtype)[:, 0].astype(np.uint64)


def _hash_bytes(matrix: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """XXH64 of each row of ``matrix`` (rows of one length) with its seed."""
    length = matrix.shape[1]
    place = 0
    if length >= 32:
        lanes = [seeds + P1 + P2, seeds + P2, seeds.copy(), seeds - P1]
        while place + 32 <= length:
            lanes = [_round(lane, _words(matrix, place + 8 * i, 8)) for i, lane in enumerate(lanes)]
            place += 32
        hashed = _rotl(lanes[0], 1) + _rotl(lanes[1], 7) + _rotl(lanes[2], 12) + _rotl(lanes[3], 18)
        for lane in lanes:
            hashed = (hashed ^ _round(np.zeros_like(lane), lane)) * P1 + P4
    else:
        hashed = seeds + P5
    hashed = hashed + np.uint64(length)
    while place + 8 <= length:
        hashed = _mix_long(hashed, _words(matrix, place, 8))
        place += 8
    if place + 4 <= length:
        hashed = _mix_word(hashed, _words(matrix, place, 4))
        place += 4
    while place < length:
        hashed = _rotl(hashed ^ (matrix[:, place].astype(np.uint64) * P5), 11) * P1
        place += 1
    return _avalanche(hashed)
