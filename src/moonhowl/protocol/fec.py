"""Reed-Solomon erasure code over GF(2^8), bit-compatible with nanors (what Moonlight clients decode with).

Field and matrix, as nanors builds them:

* GF(2^8) with the primitive polynomial x^8 + x^4 + x^3 + x^2 + 1 (0x11D, "285" in the oblas table
  generator that produced nanors' ``GF2_8_LOG/EXP/INV`` tables), generator 2.
* Systematic code: the first ``n_data`` shards are the data itself; parity row ``j`` (0-based) over data
  column ``i`` is ``P[j][i] = inv((n_parity + i) XOR j)`` (nanors ``rs.c`` ``reed_solomon_new_static``,
  row-major ``p[j * ds + i]``), and parity shard ``j`` = XOR over i of ``P[j][i] * data[i]``
  (nanors ``gemm``). ``(n_parity + i) XOR j`` is never 0 because ``j < n_parity``, and the x/y sets
  {n_parity + i} and {j} are disjoint, so P is a Cauchy matrix: every square submatrix is invertible,
  which makes any ``n_data`` received shards enough to rebuild the data.

Speed without numpy: multiplying a whole shard by a constant is one ``bytes.translate`` with that
constant's 256-byte product table, and adding shards is XOR of ``int.from_bytes`` values, so the inner
loops run in C.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

from moonhowl.protocol.errors import ProtocolError

__all__ = ["MAX_SHARDS", "FecError", "decode", "encode", "gf_inv", "gf_mul", "parity_matrix"]

# nanors DATA_SHARDS_MAX: data + parity shards of one block.
MAX_SHARDS = 255

_POLY = 0x11D


class FecError(ProtocolError):
    """Shards that cannot be encoded or repaired: too many missing, unequal lengths, bad counts."""


def _build_tables() -> tuple[list[int], list[int]]:
    exp = [0] * 510
    log = [0] * 256
    x = 1
    for i in range(255):
        exp[i] = x
        log[x] = i
        x <<= 1
        if x & 0x100:
            x ^= _POLY
    # A doubled exp table lets mul index exp[log a + log b] without a modulo.
    for i in range(255, 510):
        exp[i] = exp[i - 255]
    return exp, log


_EXP, _LOG = _build_tables()


def _build_mul_tables() -> tuple[bytes, ...]:
    tables = [bytes(256)]
    log = _LOG
    exp = _EXP
    for c in range(1, 256):
        lc = log[c]
        tables.append(bytes([0, *(exp[lc + log[x]] for x in range(1, 256))]))
    return tuple(tables)


# _MUL[c] is the translate table for "multiply every byte by c".
_MUL = _build_mul_tables()


def gf_mul(a: int, b: int) -> int:
    """Product of two field elements."""
    if a == 0 or b == 0:
        return 0
    return _EXP[_LOG[a] + _LOG[b]]


def gf_inv(a: int) -> int:
    """Multiplicative inverse; 0 has none."""
    if a == 0:
        raise ZeroDivisionError("0 has no inverse in GF(2^8)")
    return _EXP[255 - _LOG[a]]


@lru_cache(maxsize=512)
def parity_matrix(n_data: int, n_parity: int) -> tuple[tuple[int, ...], ...]:
    """nanors' parity rows: ``P[j][i] = inv((n_parity + i) ^ j)``, ``n_parity`` rows of ``n_data``."""
    _check_counts(n_data, n_parity)
    return tuple(tuple(gf_inv((n_parity + i) ^ j) for i in range(n_data)) for j in range(n_parity))


def _check_counts(n_data: int, n_parity: int) -> None:
    if n_data < 1 or n_parity < 0 or n_data + n_parity > MAX_SHARDS:
        raise FecError(f"need 1 <= data, 0 <= parity, data + parity <= {MAX_SHARDS}: {n_data}+{n_parity}")


def _combine(coefficients: Sequence[int], shards: Sequence[bytes], acc: int = 0) -> int:
    """XOR of coefficient * shard over all pairs, as a little-endian int of the shard length."""
    mul = _MUL
    from_bytes = int.from_bytes
    for c, shard in zip(coefficients, shards, strict=True):
        if c == 1:
            acc ^= from_bytes(shard, "little")
        elif c:
            acc ^= from_bytes(shard.translate(mul[c]), "little")
    return acc


def encode(data_shards: Sequence[bytes], n_parity: int) -> list[bytes]:
    """The ``n_parity`` parity shards for equal-length ``data_shards`` (nanors ``reed_solomon_encode``)."""
    n_data = len(data_shards)
    _check_counts(n_data, n_parity)
    size = len(data_shards[0])
    if any(len(s) != size for s in data_shards):
        raise FecError("data shards differ in length")
    if n_parity == 0:
        return []
    # bytes() once so translate works for bytearray/memoryview input too.
    shards = [bytes(s) for s in data_shards]
    return [_combine(row, shards).to_bytes(size, "little") for row in parity_matrix(n_data, n_parity)]


def _invert(matrix: list[list[int]]) -> list[list[int]]:
    """Gauss-Jordan inverse of a square matrix over GF(2^8).

    Rows are bytes so that "row -= factor * pivot row" is one translate and one int XOR, which keeps
    a 60x60 inversion (the largest a 255-shard block needs at 30 %) to a few milliseconds.
    """
    n = len(matrix)
    width = 2 * n
    rows = [bytes([*row, *(1 if k == r else 0 for k in range(n))]) for r, row in enumerate(matrix)]
    for col in range(n):
        pivot = next((r for r in range(col, n) if rows[r][col]), None)
        if pivot is None:
            # Cannot happen for Cauchy submatrices; kept so corrupt input fails loudly, not silently.
            raise FecError("singular decode matrix")
        rows[col], rows[pivot] = rows[pivot], rows[col]
        prow = rows[col].translate(_MUL[gf_inv(rows[col][col])])
        rows[col] = prow
        for r in range(n):
            factor = rows[r][col]
            if r != col and factor:
                scaled = int.from_bytes(prow.translate(_MUL[factor]), "little")
                rows[r] = (int.from_bytes(rows[r], "little") ^ scaled).to_bytes(width, "little")
    return [list(row[n:]) for row in rows]


def decode(shards: list[bytes | None], n_data: int, n_parity: int) -> list[bytes]:
    """Rebuild the data shards from any ``n_data`` of the ``n_data + n_parity`` shards (None = lost).

    Returns the ``n_data`` data shards (received ones as given). Raises FecError when more data shards
    are missing than parity shards arrived, or the shards are inconsistent.
    """
    _check_counts(n_data, n_parity)
    if len(shards) != n_data + n_parity:
        raise FecError(f"expected {n_data + n_parity} shard slots, got {len(shards)}")
    present = [s for s in shards if s is not None]
    if not present:
        raise FecError("no shards received")
    size = len(present[0])
    if any(len(s) != size for s in present):
        raise FecError("shards differ in length")

    data = shards[:n_data]
    missing = [i for i, s in enumerate(data) if s is None]
    if not missing:
        return [bytes(s) for s in data if s is not None]
    parity_rows = [j for j in range(n_parity) if shards[n_data + j] is not None][: len(missing)]
    if len(parity_rows) < len(missing):
        raise FecError(f"{len(missing)} data shards lost but only {len(parity_rows)} parity shards received")

    p = parity_matrix(n_data, n_parity)
    known = [i for i in range(n_data) if data[i] is not None]
    known_shards = [bytes(s) for s in data if s is not None]
    # For each used parity row r: parity_r + sum over known i of P[r][i]*d_i = sum over lost e of P[r][e]*d_e.
    syndromes: list[bytes] = []
    for r in parity_rows:
        parity = shards[n_data + r]
        assert parity is not None
        acc = _combine([p[r][i] for i in known], known_shards, int.from_bytes(parity, "little"))
        syndromes.append(acc.to_bytes(size, "little"))
    inverse = _invert([[p[r][e] for e in missing] for r in parity_rows])

    out: list[bytes] = [bytes(s) if s is not None else b"" for s in data]
    for k, e in enumerate(missing):
        out[e] = _combine(inverse[k], syndromes).to_bytes(size, "little")
    return out
