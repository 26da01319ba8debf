//! Scale: memory for page state follows the pages touched, not the size mapped (1, 16,
//! 64 TiB sparse stores); the eviction clock's work follows resident pages; ten thousand
//! mappings live at once in one process, at a fixed number of threads and fds.
//!
//! Each case runs in a re-executed child process (its Rss, fds and threads are its own)
//! with a time limit, so an abort or a hang fails the test.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use udax::{Error, Mapping, MemStore, Options};

const TIB: u64 = 1 << 40;

/// A field of /proc/self/status, in KiB (VmRSS) or as a count (Threads).
fn status_field(name: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("status");
    let line = status
        .lines()
        .find(|line| line.starts_with(name))
        .unwrap_or_else(|| panic!("{name} in /proc/self/status"));
    let value = line[name.len()..]
        .trim_start_matches(':')
        .split_whitespace()
        .next();
    value.and_then(|v| v.parse().ok()).expect("a number")
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").expect("fd dir").count()
}

fn vmas() -> usize {
    let maps = std::fs::read_to_string("/proc/self/maps").expect("maps");
    maps.lines().count()
}

/// Maps `size` bytes of an all-hole store, touches a few pages far apart, and reports the
/// time and Rss that `Mapping::new` cost.
fn map_sparse(size: u64) -> Result<(Duration, u64), Error> {
    let store = Arc::new(MemStore::new(size));
    let rss_before = status_field("VmRSS");
    let started = Instant::now();
    let mapping = Mapping::new(store, Options::default())?;
    let took = started.elapsed();
    let grew = status_field("VmRSS").saturating_sub(rss_before);
    // A few pages across the whole range, written and read back.
    for step in 0..8u64 {
        let offset = ((size / 8) * step) as usize;
        mapping.write_at(offset, b"far").expect("write");
        let mut back = [0u8; 3];
        mapping.read_at(offset, &mut back).expect("read");
        assert_eq!(&back, b"far");
    }
    mapping.flush().expect("flush");
    mapping.close().expect("close");
    Ok((took, grew))
}

fn child(case: &str, test_name: &str, body: fn()) {
    run_case(case, test_name, Duration::from_secs(180), body);
}

/// 1 TiB maps with under 4 MiB of Rss growth; 16 and 64 TiB map too, or fail with a
/// typed error, never an abort.
#[test]
fn terabytes_of_holes_cost_address_space_not_memory() {
    child(
        "sparse",
        "terabytes_of_holes_cost_address_space_not_memory",
        || {
            let (took, grew) = map_sparse(TIB).expect("1 TiB maps");
            say(&format!("1 TiB: new() {took:?}, Rss +{grew} KiB"));
            assert!(
                grew < 4 << 10,
                "Mapping::new of 1 TiB grew Rss by {grew} KiB"
            );
            for tib in [16, 64] {
                match map_sparse(tib * TIB) {
                    Ok((took, grew)) => {
                        say(&format!("{tib} TiB: new() {took:?}, Rss +{grew} KiB"));
                        assert!(grew < 4 << 10, "{tib} TiB grew Rss by {grew} KiB");
                    }
                    Err(error @ (Error::ResourceLimit { .. } | Error::Os { .. })) => {
                        say(&format!("{tib} TiB: refused: {error}"));
                    }
                    Err(error) => panic!("{tib} TiB: unexpected error {error}"),
                }
            }
        },
    );
}

/// Under a 16-page budget, 512 pages touched 2 GiB apart in a 1 TiB mapping: the clock
/// looks at a step of entries around resident pages only, not at the millions of empty
/// entries between them.
#[test]
fn the_eviction_clock_follows_resident_pages() {
    child("clock", "the_eviction_clock_follows_resident_pages", || {
        let store = Arc::new(MemStore::new(TIB));
        let options = Options::default().budget(16 * PAGE as u64);
        let mapping = Mapping::new(store, options).expect("map");
        let touched = 512u64;
        let stride = (TIB / touched) as usize;
        for page in 0..touched as usize {
            mapping.write_at(page * stride, &[1]).expect("write");
        }
        let stats = mapping.stats();
        say(&format!("clock: {stats:?}"));
        assert!(stats.evictions >= touched - 32, "{stats:?}");
        // Each step covers at most 64 entries around a resident page; the old clock
        // walked every entry between pages (stride / 4096 = 524,288 each).
        assert!(
            stats.evict_scanned <= 64 * 4 * touched,
            "the clock looked at {} entries for {touched} pages",
            stats.evict_scanned
        );
        mapping.close().expect("close");
    });
}

/// 10,000 mappings of 64 KiB live at once, each touched, flushed and closed, on a fixed
/// number of handler threads and fds, with a bounded number of VMAs each.
#[test]
fn ten_thousand_mappings_live_at_once() {
    child("many", "ten_thousand_mappings_live_at_once", || {
        const COUNT: usize = 10_000;
        const LEN: usize = 64 << 10;
        let (fds, vmas_before) = (open_fds(), vmas());
        let threads = status_field("Threads");
        let stores: Vec<Arc<MemStore>> = (0..COUNT)
            .map(|_| Arc::new(MemStore::new(LEN as u64)))
            .collect();
        let mut mappings = Vec::with_capacity(COUNT);
        for (number, store) in stores.iter().enumerate() {
            let mapping = Mapping::new(store.clone(), Options::default())
                .unwrap_or_else(|e| panic!("mapping {number}: {e}"));
            mapping.write_at(number % LEN, &[7]).expect("touch");
            mappings.push(mapping);
        }
        let (fds_live, vmas_live) = (open_fds() - fds, vmas() - vmas_before);
        let threads_live = status_field("Threads") - threads;
        say(&format!(
            "{COUNT} mappings: +{fds_live} fds, +{vmas_live} VMAs ({:.2} a mapping), \
             +{threads_live} threads",
            vmas_live as f64 / COUNT as f64
        ));
        assert!(fds_live <= 4, "fds grew by {fds_live}");
        assert!(threads_live <= 8, "threads grew by {threads_live}");
        assert!(vmas_live <= COUNT + 64, "VMAs grew by {vmas_live}");
        for mapping in &mappings {
            mapping.flush().expect("flush");
        }
        for (number, mapping) in mappings.into_iter().enumerate() {
            mapping.close().expect("close");
            let mut byte = [0u8];
            udax::Store::read_at(&*stores[number], (number % LEN) as u64, &mut byte)
                .expect("read store");
            assert_eq!(byte, [7], "mapping {number}'s write reached its store");
        }
    });
}
