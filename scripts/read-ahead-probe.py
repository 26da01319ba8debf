#!/usr/bin/env python3
"""Cold sequential preads of a file: the kernel's read-ahead alone against WILLNEED windows.

What `FileStore`'s read-ahead thread (src/store/file_ahead.rs) was sized with. Each run
drops the file's page cache, opens the file anew (its own read-ahead state), reads it in
order REQ bytes at a time, and, with DEPTH > 0, keeps DEPTH windows of 2 MiB asked ahead
with posix_fadvise(WILLNEED), as the thread does. Runs alternate their order; prints ns a
4 KiB page, min to max, per mode.

Usage: scripts/read-ahead-probe.py [FILE [SIZE_MIB [REQ_KIB...]]]
  (default /var/tmp/read-ahead-probe.bin, 1024 MiB, reads of 2048, 64 and 4 KiB; the file is
  filled with random bytes if it is not SIZE long. Needs no root; what it measures is the
  disk under FILE.)
"""
import os
import sys
import time

WINDOW = 2 << 20
DEPTHS = [0, 1, 4]


def fill(path, size):
    if os.path.exists(path) and os.path.getsize(path) == size:
        return
    with open(path, "wb") as f:
        for _ in range(size // (16 << 20)):
            f.write(os.urandom(16 << 20))
        f.flush()
        os.fsync(f.fileno())


def run(path, size, req, depth):
    with open(path, "rb") as f:
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    fd = os.open(path, os.O_RDONLY)
    try:
        start, ahead_end, offset = time.perf_counter(), 0, 0
        while offset < size:
            os.pread(fd, req, offset)
            offset += req
            while depth and ahead_end - offset <= depth * WINDOW and ahead_end < size:
                at = max(ahead_end, offset)
                os.posix_fadvise(fd, at, WINDOW, os.POSIX_FADV_WILLNEED)
                ahead_end = at + WINDOW
        return (time.perf_counter() - start) / (size / 4096) * 1e9
    finally:
        os.close(fd)


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else "/var/tmp/read-ahead-probe.bin"
    size = (int(sys.argv[2]) if len(sys.argv) > 2 else 1024) << 20
    reqs = [int(a) << 10 for a in sys.argv[3:]] or [2 << 20, 64 << 10, 4 << 10]
    fill(path, size)
    for req in reqs:
        times = {depth: [] for depth in DEPTHS}
        for round_ in range(4):
            for depth in DEPTHS if round_ % 2 == 0 else DEPTHS[::-1]:
                times[depth].append(run(path, size, req, depth))
        row = "  ".join(
            f"{'kernel alone' if d == 0 else f'{d} windows ahead'} "
            f"{min(t):,.0f}-{max(t):,.0f}"
            for d, t in times.items()
        )
        print(f"reads of {req >> 10} KiB, ns a page: {row}", flush=True)


if __name__ == "__main__":
    main()
