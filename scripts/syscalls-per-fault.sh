#!/usr/bin/env bash
# Syscalls per 4 KiB page of udax bench workloads, counted with `strace -c -f`.
#
# Each row runs one workload once (--repeat 1) at 64 MiB (16,384 pages) and at 4 KiB, and
# prints (calls at 64 MiB - calls at 4 KiB) / 16,383: the fixed costs (start-up, warmup,
# the kernel baseline's mmap/msync, which make no per-page syscalls for faults) cancel,
# what is left is per page. Per-page setup the bench does itself (filling a data store
# with pwrite in big chunks, flush at the end of the writing workloads) stays in.
#
# Rows: read-hole (sparse-read: one zero fault a page), read-data (seq-read: one data
# fault a page), write-hole (seq-write: one first-write fault a page, plus its flush),
# wp-on-clean (mkwrite: a read fault and a write-protect fault a page), each in handler
# mode and in-thread, sync tracking; and read-hole with async tracking.
#
# Usage: scripts/syscalls-per-fault.sh [UDAX_BINARY]   (default target/release/udax)
set -euo pipefail

udax=${1:-target/release/udax}
big=64MiB
pages=16384
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

# Total syscalls of one bench run under strace.
calls() {
    local size=$1
    shift
    strace -c -f -o "$out/strace" "$udax" bench --size "$size" --repeat 1 "$@" >/dev/null 2>&1
    awk '$NF == "total" { print $4 }' "$out/strace"
}

# One row: name, then the bench flags.
row() {
    local name=$1
    shift
    local large small
    large=$(calls "$big" "$@")
    small=$(calls 4096 "$@")
    awk -v n="$name" -v l="$large" -v s="$small" -v p="$pages" \
        'BEGIN { printf "%-28s %8.2f   (%d - %d calls)\n", n, (l - s) / (p - 1), l, s }'
}

printf "%-28s %8s\n" "row" "per page"
for resolution in handler in-thread; do
    row "read-hole $resolution" --workload sparse-read --resolution "$resolution"
    row "read-data $resolution" --workload seq-read --resolution "$resolution"
    row "write-hole $resolution" --workload seq-write --resolution "$resolution"
    row "wp-on-clean $resolution" --workload mkwrite --resolution "$resolution"
    row "read-hole async $resolution" --workload sparse-read --resolution "$resolution" \
        --dirty-tracking async
done
