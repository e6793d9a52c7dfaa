"""Video FEC cost per frame: pure-Python Reed-Solomon encode/decode and the whole packetizer.

Run: PYTHONPATH=src python3 bench/fec.py [--packet-size 1392] [--fec 20]

Decode erases as many data shards as each block has parity shards (the most it can repair), which is
the expensive case. A 1080p60 stream at 20 Mbit/s averages about 41.7 KB per frame.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time
from collections.abc import Callable

from moonhowl.protocol import fec
from moonhowl.protocol.video import Depacketizer, Packetizer, VideoPacket


def best_ms(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    # The median is robust against scheduler hiccups on a shared machine.
    return statistics.median(times) * 1e3


def bench_size(size: int, packet_size: int, pct: int, repeat: int) -> tuple[str, ...]:
    frame = os.urandom(size)
    datagrams = Packetizer(packet_size, pct).packetize(frame, 1, 0, True, 0)
    blocks: dict[int, list[bytes]] = {}
    for d in datagrams:
        blocks.setdefault(VideoPacket.parse(d).block_index, []).append(d)
    shapes = []
    for shards in blocks.values():
        n_data = VideoPacket.parse(shards[0]).data_shards
        shapes.append((shards[:n_data], len(shards) - n_data, shards))

    def encode() -> None:
        for data, n_parity, _ in shapes:
            fec.encode(data, n_parity)

    rng = random.Random(size)
    erased = []
    for data, n_parity, shards in shapes:
        lost = set(rng.sample(range(len(data)), min(n_parity, len(data))))
        erased.append(([None if k in lost else s for k, s in enumerate(shards)], len(data), n_parity))

    def decode() -> None:
        for slots, n_data, n_parity in erased:
            fec.decode(list(slots), n_data, n_parity)

    def packetize() -> None:
        Packetizer(packet_size, pct).packetize(frame, 1, 0, True, 0)

    survivors = [s for slots, _, _ in erased for s in slots if s is not None]

    def depacketize() -> None:
        dp = Depacketizer()
        for d in survivors:
            dp.push(d)
        assert dp.stats.frames == 1

    n_data = sum(len(d) for d, _, _ in shapes)
    n_parity = sum(p for _, p, _ in shapes)
    return (
        f"{size / 1000:.0f} KB",
        str(len(shapes)),
        str(n_data),
        str(n_parity),
        f"{best_ms(encode, repeat):.2f}",
        f"{best_ms(packetize, repeat):.2f}",
        f"{best_ms(decode, repeat):.2f}",
        f"{best_ms(depacketize, repeat):.2f}",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packet-size", type=int, default=1392)
    parser.add_argument("--fec", type=int, default=20, help="FEC percentage")
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--sizes", default="5000,20000,40000,100000,200000,400000")
    args = parser.parse_args()
    header = ("frame", "blocks", "data", "parity", "encode ms", "packetize ms", "decode ms", "depacketize ms")
    rows: list[tuple[str, ...]] = [header]
    for size in (int(s) for s in args.sizes.split(",")):
        rows.append(bench_size(size, args.packet_size, args.fec, args.repeat))
    widths = [max(len(r[c]) for r in rows) for c in range(len(header))]
    print(f"packetSize {args.packet_size}, FEC {args.fec}%, median of {args.repeat}; decode = max erasures")
    for row in rows:
        print("  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)))


if __name__ == "__main__":
    main()
