#!/usr/bin/env python3
"""Cold 2 MiB preads and pwrites of a file, through the page cache against around it (O_DIRECT).

What `FileStore`'s direct I/O (src/store/file_direct.rs) was chosen with. Each read run
drops the file's page cache, opens the file anew (with O_DIRECT or without), and reads all
of it 2 MiB at a time into one page-aligned buffer, in a fixed random order and then in
order. Each write run writes as much into a new sparse file beside FILE, 2 MiB at a time in
order from one page-aligned buffer (as a flush writes runs back), then fdatasyncs it. Runs
alternate their order; prints ns a 4 KiB page, wall and CPU (user + system), per mode.

Usage: scripts/direct-io-probe.py [FILE [SIZE_MIB]]
  (default /var/tmp/read-ahead-probe.bin, 1024 MiB; the file is filled with random bytes
  if it is not SIZE long. Needs no root; what it measures is the disk under FILE.)
"""
import importlib.util
import mmap
import os
import random
import sys
import time
from pathlib import Path

REQ = 2 << 20

# The same test file as the read-ahead probe, filled the same way.
_spec = importlib.util.spec_from_file_location(
    "read_ahead_probe", Path(__file__).with_name("read-ahead-probe.py")
)
_probe = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_probe)
fill = _probe.fill


def run(path, order, buf, direct):
    with open(path, "rb") as f:
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECT if direct else 0))
    try:
        start, cpu = time.perf_counter(), os.times()
        for i in order:
            os.preadv(fd, [buf], i * REQ)
        wall, after = time.perf_counter() - start, os.times()
    finally:
        os.close(fd)
    pages = len(order) * REQ / 4096
    used = after.user + after.system - cpu.user - cpu.system
    return wall / pages * 1e9, used / pages * 1e9


def write(path, size, buf, direct):
    out = path + ".write-probe"
    fd = os.open(out, os.O_RDWR | os.O_CREAT | os.O_TRUNC | (os.O_DIRECT if direct else 0))
    try:
        os.ftruncate(fd, size)
        start, cpu = time.perf_counter(), os.times()
        for offset in range(0, size, REQ):
            os.pwrite(fd, buf, offset)
        os.fdatasync(fd)
        wall, after = time.perf_counter() - start, os.times()
    finally:
        os.close(fd)
        os.unlink(out)
    pages = size / 4096
    used = after.user + after.system - cpu.user - cpu.system
    return wall / pages * 1e9, used / pages * 1e9


def report(name, times):
    for direct in (False, True):
        wall = [round(w) for w, _ in times[direct]]
        cpu = [round(c) for _, c in times[direct]]
        mode = "direct" if direct else "buffered"
        print(f"{name:8} {mode:8} wall {min(wall):,}-{max(wall):,}  cpu {min(cpu):,}-{max(cpu):,} ns/page")


def alternated(measure):
    times = {False: [], True: []}
    for round_ in range(4):
        for direct in (False, True) if round_ % 2 == 0 else (True, False):
            times[direct].append(measure(direct))
    return times


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else "/var/tmp/read-ahead-probe.bin"
    size = (int(sys.argv[2]) if len(sys.argv) > 2 else 1024) << 20
    fill(path, size)
    buf = mmap.mmap(-1, REQ)  # page-aligned, as O_DIRECT wants
    shuffled = list(range(size // REQ))
    random.Random(7).shuffle(shuffled)
    for name, order in (("random", shuffled), ("in order", sorted(shuffled))):
        report(name, alternated(lambda direct: run(path, order, buf, direct)))
    buf[:] = os.urandom(REQ)
    report("write", alternated(lambda direct: write(path, size, buf, direct)))

if __name__ == "__main__":
    main()
