#!/usr/bin/env python3
"""Cold random 4 KiB reads from several files at the same moments (used by fuse_bench.sh and
random_reads_interleaved.sh; a benchmark helper, not a timed test).

This VM's speed drifts within seconds and stalls for 0.1-0.4 s now and then (seen in plain
directories as much as in FUSE mounts), so runs taken one after the other compare different
moments, and a whole run's total moves with the stalls it happened to meet. Reading every file
in turns of short batches, and comparing the batches taken side by side, does not.

  interleaved_reads.py read ROUND READS OUT FILE...
      Reads READS random 4 KiB-aligned blocks of each FILE (different blocks, the same
      distribution; seeded by ROUND), in batches of 250 preads per file, the files in a new
      random order for every batch. Prints each file's reads/s (over all its batches) on one
      line, and appends to OUT one line per batch: ROUND, then each file's batch time in s.

  interleaved_reads.py ratio OUT A B
      Compares files A and B (0-based columns of the read command's FILE list) batch by
      batch: each batch's ratio is time(B) / time(A), so > 1 means A read faster. Prints
      the median of those ratios over all rounds with a 95% bootstrap confidence interval
      of that median: "1.08 [1.05, 1.11]".

  interleaved_reads.py each OUT A B
      The same ratios' median for each round, in round order: "1.07, 1.01, 1.04".
"""
import os
import random
import statistics
import sys
import time

BATCH = 250


def read(round_no, reads, out, files):
    fds = [os.open(f, os.O_RDONLY) for f in files]
    blocks = min(os.fstat(fd).st_size for fd in fds) // 4096
    rnd = random.Random(round_no)
    offsets = [[rnd.randrange(blocks) * 4096 for _ in range(reads)] for _ in files]
    took = [0.0] * len(files)
    with open(out, "a") as log:
        for b in range(0, reads, BATCH):
            order = list(range(len(files)))
            rnd.shuffle(order)
            batch = [0.0] * len(files)
            for i in order:
                fd, t = fds[i], time.perf_counter()
                for o in offsets[i][b : b + BATCH]:
                    os.pread(fd, 4096, o)
                batch[i] = time.perf_counter() - t
                took[i] += batch[i]
            log.write(f"{round_no} " + " ".join(f"{t:.6f}" for t in batch) + "\n")
    print(" ".join(f"{reads / t:.0f}" for t in took))


def batch_ratios(out, a, b):
    """Each round's batch ratios time(B) / time(A), by round in the order met."""
    rounds = {}
    for line in open(out):
        cols = line.split()
        rounds.setdefault(cols[0], []).append(float(cols[1 + b]) / float(cols[1 + a]))
    return rounds


def ratio(out, a, b):
    ratios = [r for rs in batch_ratios(out, a, b).values() for r in rs]
    rnd = random.Random(0)
    boot = sorted(
        statistics.median(rnd.choices(ratios, k=len(ratios))) for _ in range(2000)
    )
    print(f"{statistics.median(ratios):.2f} [{boot[50]:.2f}, {boot[1949]:.2f}]")


def each(out, a, b):
    medians = (statistics.median(rs) for rs in batch_ratios(out, a, b).values())
    print(", ".join(f"{m:.2f}" for m in medians))


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "read":
        read(int(args[0]), int(args[1]), args[2], args[3:])
    elif cmd in ("ratio", "each"):
        (ratio if cmd == "ratio" else each)(args[0], int(args[1]), int(args[2]))
    else:
        sys.exit(__doc__)
