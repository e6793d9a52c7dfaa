"""Reed-Solomon FEC checked against an independent GF(2^8) implementation written here.

The reference below shares no code with moonhowl.protocol.fec: bitwise carry-less multiplication
modulo 0x11D, inverses by exhaustive search, the full systematic generator matrix
[I; P] with nanors' rows P[j][i] = inv((n_parity + i) XOR j), and plain Gauss-Jordan elimination.
"""

from __future__ import annotations

import random

import pytest

from moonhowl.protocol import fec
from moonhowl.protocol.errors import ProtocolError

pytestmark = pytest.mark.unit

POLY = 0x11D  # x^8 + x^4 + x^3 + x^2 + 1, "285" in the oblas generator behind nanors' tables


def ref_mul(a: int, b: int) -> int:
    result = 0
    while b:
        if b & 1:
            result ^= a
        a <<= 1
        if a & 0x100:
            a ^= POLY
        b >>= 1
    return result


REF_INV = {a: next(b for b in range(1, 256) if ref_mul(a, b) == 1) for a in range(1, 256)}


def generator(n_data: int, n_parity: int) -> list[list[int]]:
    identity = [[1 if c == r else 0 for c in range(n_data)] for r in range(n_data)]
    parity = [[REF_INV[(n_parity + i) ^ j] for i in range(n_data)] for j in range(n_parity)]
    return identity + parity


def ref_invert(matrix: list[list[int]]) -> list[list[int]]:
    n = len(matrix)
    aug = [list(row) + [1 if c == r else 0 for c in range(n)] for r, row in enumerate(matrix)]
    for col in range(n):
        pivot = next(r for r in range(col, n) if aug[r][col])
        aug[col], aug[pivot] = aug[pivot], aug[col]
        scale = REF_INV[aug[col][col]]
        aug[col] = [ref_mul(scale, v) for v in aug[col]]
        for r in range(n):
            if r != col and aug[r][col]:
                f = aug[r][col]
                aug[r] = [v ^ ref_mul(f, w) for v, w in zip(aug[r], aug[col], strict=True)]
    return [row[n:] for row in aug]


def ref_apply(matrix: list[list[int]], shards: list[bytes]) -> list[bytes]:
    size = len(shards[0])
    out = []
    for row in matrix:
        acc = bytearray(size)
        for c, shard in zip(row, shards, strict=True):
            if c:
                for k in range(size):
                    acc[k] ^= ref_mul(c, shard[k])
        out.append(bytes(acc))
    return out


def ref_encode(data: list[bytes], n_parity: int) -> list[bytes]:
    return ref_apply(generator(len(data), n_parity), data)[len(data) :]


def ref_decode(shards: list[bytes | None], n_data: int, n_parity: int) -> list[bytes]:
    g = generator(n_data, n_parity)
    rows = [i for i, s in enumerate(shards) if s is not None][:n_data]
    received = [s for s in (shards[i] for i in rows) if s is not None]
    return ref_apply(ref_invert([g[r] for r in rows]), received)


def random_shards(rng: random.Random, n: int, size: int) -> list[bytes]:
    return [rng.randbytes(size) for _ in range(n)]


def test_field_is_0x11d() -> None:
    assert fec.gf_mul(0x80, 2) == 0x1D
    for a in range(256):
        for b in (0, 1, 2, 3, 0x1D, 0x8E, 0xFF, a):
            assert fec.gf_mul(a, b) == ref_mul(a, b)
    for a in range(1, 256):
        assert fec.gf_inv(a) == REF_INV[a]


def test_known_answer_nanors_matrix_4_2() -> None:
    # nanors rs.c reed_solomon_new_static(): p[j*ds + i] = GF2_8_INV[(ps + i) ^ j], tables generated
    # with polynomial 285 (oblas table generator). For ds=4, ps=2 the rows are
    # inv(2) inv(3) inv(4) inv(5) / inv(3) inv(2) inv(5) inv(4); the inverses in GF(2^8)/0x11D are
    # 0x8e 0xf4 0x47 0xa7 (0x02*0x8e = 0x11c -> 0x01). Encoding the unit vectors reads the columns out.
    expected = [[0x8E, 0xF4, 0x47, 0xA7], [0xF4, 0x8E, 0xA7, 0x47]]
    assert [list(r) for r in fec.parity_matrix(4, 2)] == expected
    for i in range(4):
        unit = [b"\x01" if k == i else b"\x00" for k in range(4)]
        assert fec.encode(unit, 2) == [bytes([expected[0][i]]), bytes([expected[1][i]])]
    # Two-byte shards: parity is computed bytewise, so 0x01/0x02 in column 0 scale that column.
    data = [b"\x01\x02", b"\x00\x00", b"\x00\x00", b"\x00\x00"]
    assert fec.encode(data, 2) == [bytes([0x8E, ref_mul(0x8E, 2)]), bytes([0xF4, ref_mul(0xF4, 2)])]
    assert ref_mul(0x8E, 2) == 0x01 and ref_mul(0xF4, 2) == 0xF5


@pytest.mark.parametrize(
    ("n_data", "n_parity", "size"),
    [(1, 1, 7), (1, 2, 16), (4, 2, 33), (10, 3, 16), (30, 6, 24), (212, 43, 4), (254, 1, 3), (128, 127, 2)],
)
def test_encode_matches_reference(n_data: int, n_parity: int, size: int) -> None:
    rng = random.Random(n_data * 1000 + n_parity)
    data = random_shards(rng, n_data, size)
    assert fec.encode(data, n_parity) == ref_encode(data, n_parity)


@pytest.mark.parametrize(("n_data", "n_parity"), [(1, 2), (3, 2), (8, 4), (30, 6), (100, 20), (212, 43)])
def test_random_erasures_up_to_parity_recover(n_data: int, n_parity: int) -> None:
    rng = random.Random(n_data + 7 * n_parity)
    size = 40 if n_data < 100 else 6
    for _ in range(6):
        data = random_shards(rng, n_data, size)
        shards: list[bytes | None] = [*data, *fec.encode(data, n_parity)]
        for k in rng.sample(range(n_data + n_parity), rng.randint(1, n_parity)):
            shards[k] = None
        got = fec.decode(list(shards), n_data, n_parity)
        assert got == data
        assert ref_decode(shards, n_data, n_parity) == data


def test_decode_of_full_size_shards_matches_reference() -> None:
    rng = random.Random(5)
    data = random_shards(rng, 12, 1408)
    parity = fec.encode(data, 3)
    shards: list[bytes | None] = [*data, *parity]
    shards[0] = shards[5] = shards[11] = None
    assert fec.decode(shards, 12, 3) == data


def test_too_many_erasures_raise() -> None:
    rng = random.Random(9)
    for n_data, n_parity in [(1, 2), (5, 2), (30, 6), (200, 40)]:
        data = random_shards(rng, n_data, 8)
        shards: list[bytes | None] = [*data, *fec.encode(data, n_parity)]
        for k in rng.sample(range(n_data + n_parity), n_parity + 1):
            shards[k] = None
        with pytest.raises(fec.FecError):
            fec.decode(shards, n_data, n_parity)


def test_no_data_missing_needs_no_parity() -> None:
    data = [b"ab", b"cd"]
    assert fec.decode([b"ab", b"cd", None, None], 2, 2) == data
    assert fec.decode([b"ab", b"cd"], 2, 0) == data


def test_fec_error_is_protocol_error() -> None:
    assert issubclass(fec.FecError, ProtocolError)


@pytest.mark.parametrize(
    ("shards", "n_data", "n_parity"),
    [
        ([b"a", None, b"bb", None], 2, 2),  # unequal lengths
        ([b"a", None, b"b"], 2, 2),  # wrong slot count
        ([None, None, None], 1, 2),  # nothing received
        ([b"a"] * 256, 200, 56),  # over 255 shards
        ([], 0, 0),
    ],
)
def test_decode_rejects_bad_input(shards: list[bytes | None], n_data: int, n_parity: int) -> None:
    with pytest.raises(fec.FecError):
        fec.decode(shards, n_data, n_parity)


def test_encode_rejects_bad_input() -> None:
    with pytest.raises(fec.FecError):
        fec.encode([b"a", b"bc"], 1)
    with pytest.raises(fec.FecError):
        fec.encode([b"a"] * 250, 6)
    with pytest.raises(fec.FecError):
        fec.encode([], 2)
    assert fec.encode([b"abc"], 0) == []
