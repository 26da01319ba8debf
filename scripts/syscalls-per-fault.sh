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
# Every run is `--engine udax --granularity 4k --no-read-ahead`: one engine (the kernel
# baseline's run would add its own calls), and one 4 KiB fault a page (the library's
# default granularity is 2 MiB, where 64 MiB is 32 faults and the quotient says nothing
# about a 4 KiB fault; and read-ahead installs most pages of a sequential run without a
# fault). READ_AHEAD=1 keeps the read-ahead: the rows are then per page, not per fault.
# With PER_CALL=1 each row is followed by its per-page count per syscall (strace -c's rows).
#
# Usage: [PER_CALL=1] [READ_AHEAD=1] scripts/syscalls-per-fault.sh [UDAX_BINARY]   (default target/release/udax)
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
    local ahead=--no-read-ahead
    [[ ${READ_AHEAD:-0} == 1 ]] && ahead=
    strace -c -f -o "$out/strace.$size" "$udax" bench --size "$size" --repeat 1 \
        --engine udax --granularity 4k $ahead "$@" >/dev/null 2>&1
    awk '$NF == "total" { print $4 }' "$out/strace.$size"
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
    if [[ ${PER_CALL:-0} == 1 ]]; then
        # strace -c's rows: calls is column 4, the syscall the last column.
        awk -v p="$pages" '$4 ~ /^[0-9]+$/ && $NF != "total" {
                if (FNR == NR) { small[$NF] = $4; next }
                large[$NF] = $4
            }
            END {
                for (call in large) {
                    per = (large[call] - small[call]) / (p - 1)
                    if (per >= 0.01) printf "    %-24s %8.2f\n", call, per
                }
            }' "$out/strace.4096" "$out/strace.$big" | sort -k2 -rn
    fi
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
