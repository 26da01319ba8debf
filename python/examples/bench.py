"""numpy over udax beside np.memmap: a sequential sum and an in-place sort + flush of a
file of uint64, each run on a cold page cache (the file's pages dropped with
posix_fadvise(DONTNEED) first).

    python3 python/examples/bench.py [--size-mib 128] [--granularity 4k 64k 2m] [--rounds 2]

Prints one line per (workload, mapper); rounds alternate the order of the mappers.
"""

import argparse
import os
import tempfile
import time

import numpy as np
import udax


def drop_cache(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def make_file(path, words):
    rng = np.random.default_rng(7)
    rng.integers(0, 2**63, size=words, dtype=np.uint64).tofile(path)


def run_memmap(path, workload):
    a = np.memmap(path, dtype=np.uint64, mode="r+")
    start = time.perf_counter()
    if workload == "sum":
        a.sum()
    else:
        a.sort()
        a.flush()
    elapsed = time.perf_counter() - start
    del a
    return elapsed


def run_udax(path, workload, granularity):
    with udax.map_file(path, granularity=granularity) as m:
        a = np.frombuffer(m, dtype=np.uint64)
        start = time.perf_counter()
        if workload == "sum":
            a.sum()
        else:
            a.sort()
            m.flush()
        elapsed = time.perf_counter() - start
        del a
    return elapsed


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=128)
    parser.add_argument("--granularity", nargs="+", default=["4k", "64k", "2m"])
    parser.add_argument("--workload", nargs="+", default=["sum", "sort"])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    words = args.size_mib << 20 >> 3
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR", "/var/tmp")) as d:
        path = os.path.join(d, "bench.u64")
        mappers = [("np.memmap", None)] + [(f"udax {g}", g) for g in args.granularity]
        for workload in args.workload:
            times = {name: [] for name, _ in mappers}
            for round_ in range(args.rounds):
                order = mappers if round_ % 2 == 0 else mappers[::-1]
                for name, g in order:
                    make_file(path, words)  # the sort needs fresh data each time
                    drop_cache(path)
                    t = run_memmap(path, workload) if g is None else run_udax(path, workload, g)
                    times[name].append(t)
            for name, _ in mappers:
                best = min(times[name])
                print(f"{workload:5} {args.size_mib} MiB  {name:10} best {best:.3f} s  "
                      f"(runs: {', '.join(f'{t:.3f}' for t in times[name])})")


if __name__ == "__main__":
    main()
