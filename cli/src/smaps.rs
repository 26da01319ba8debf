//! Resident memory of one address range, read from /proc/self/smaps.
//!
//! The benchmark samples this at the end of each phase of a run and keeps the highest
//! value as the run's "peak Rss of the mapping". It sums the `Rss:` lines of every VMA
//! that overlaps the range (whole VMAs: a VMA that sticks out of the range counts in
//! full). Zero pages, shared or huge, are not counted by the kernel, so reading holes
//! through udax shows 0 here. Between two samples the Rss may have been higher: this is a
//! peak over phase ends, good enough to tell "no memory" from "all of it".

use std::io;

/// Bytes resident in the VMAs overlapping `addr..addr + len` of this process.
pub fn rss_of_range(addr: usize, len: usize) -> io::Result<u64> {
    let smaps = std::fs::read_to_string("/proc/self/smaps")?;
    Ok(rss_in(&smaps, addr, addr + len))
}

/// Sums the `Rss:` kB of the VMAs in `smaps` that overlap `start..end`, in bytes.
fn rss_in(smaps: &str, start: usize, end: usize) -> u64 {
    let mut inside = false;
    let mut total_kb = 0;
    for line in smaps.lines() {
        if let Some((vma_start, vma_end)) = vma_header(line) {
            inside = vma_start < end && start < vma_end;
        } else if inside {
            if let Some(rest) = line.strip_prefix("Rss:") {
                let kb = rest.trim().trim_end_matches("kB").trim();
                total_kb += kb.parse::<u64>().unwrap_or(0);
            }
        }
    }
    total_kb * 1024
}

/// The address range of a VMA header line (`start-end perms offset dev inode [path]`).
fn vma_header(line: &str) -> Option<(usize, usize)> {
    let first = line.split_whitespace().next()?;
    let (start, end) = first.split_once('-')?;
    let start = usize::from_str_radix(start, 16).ok()?;
    let end = usize::from_str_radix(end, 16).ok()?;
    Some((start, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
1000-3000 rw-p 00000000 00:00 0
Size:                  8 kB
Rss:                   4 kB
VmFlags: rd wr mr mw me ac
3000-5000 rw-s 00000000 fd:00 12 /tmp/x
Size:                  8 kB
Rss:                   8 kB
5000-6000 r--p 00000000 00:00 0
Rss:                 100 kB
";

    #[test]
    fn sums_overlapping_vmas_only() {
        assert_eq!(rss_in(SAMPLE, 0x1000, 0x3000), 4096);
        assert_eq!(rss_in(SAMPLE, 0x2000, 0x4000), 12 * 1024);
        assert_eq!(rss_in(SAMPLE, 0x6000, 0x7000), 0);
    }

    #[test]
    fn reads_this_process() {
        let buf = vec![1u8; 1 << 20];
        let rss = rss_of_range(buf.as_ptr() as usize, buf.len()).expect("smaps");
        assert!(rss > 0);
    }
}
