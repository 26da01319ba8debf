//! The benchmark workloads: what each one does to a mapped store, and which part is timed.
//!
//! A workload runs against any [`Engine`] (udax or the kernel baseline) through its
//! [`Region`]: one-byte volatile loads and eight-byte volatile stores, one per 4 KiB page,
//! split over the application threads in contiguous shares. To add a workload: add a
//! variant, its name and description in [`Workload::ALL`]/[`Workload::name`]/[`Workload::about`],
//! the store it starts from in [`Workload::start`], and its phases in [`Workload::run`].
//!
//! Two workloads exist to exercise the resident budget (their udax runs get a budget of a
//! quarter of SIZE unless `--budget` says otherwise; the kernel baseline has none):
//! `sort` (LLNL UMap's `umapsort`: seeded pseudo-random u64 sorted in place by rayon's
//! parallel sort, then checked by reading the file) and `rand-read-budget` (random 4 KiB
//! reads, with replacement, over a written store four times the budget).

use std::fs::File;
use std::hint::black_box;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use rayon::slice::ParallelSliceMut;

use udax::DirtyTracking;

use crate::engine::{Engine, PAGE, Region};
use crate::error::CliError;
use crate::page_cache;
use crate::prng::{SplitMix64, permutation};
use crate::smaps;

/// What the store must hold when a workload starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// Every page a hole.
    Holes,
    /// Every page written (allocated, non-zero), and the file's page cache dropped.
    Written,
    /// Every u64 a pseudo-random value from the run's seed ([`random_words`]), written
    /// afresh before every run, and the file's page cache dropped.
    RandomWords,
}

/// One benchmark workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// Read one byte of every page of an all-hole store.
    SparseRead,
    /// Read every page of a written store, in order, from a cold page cache.
    SeqRead,
    /// Read every page of a written store, in random order, from a cold page cache.
    RandRead,
    /// Write every page of an all-hole store in order, then flush.
    SeqWrite,
    /// Write every page of an all-hole store in random order, then flush.
    RandWrite,
    /// Read every page of an all-hole store, then write every page, then flush.
    WriteAfterRead,
    /// Read every page of a written store, then write every page.
    Mkwrite,
    /// On a written store read in full, dirty 1% of the pages at random; time the flush.
    Flush,
    /// Sort the store's pseudo-random u64 in place with a parallel sort, flush; the file
    /// is then checked (sorted, same sum and xor), untimed.
    Sort,
    /// Random 4 KiB reads (with replacement, one per page of the store) of a written store
    /// four times the udax budget.
    RandReadBudget,
}

/// The order pages are visited in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Order {
    Seq,
    Rand,
}

/// What one run of a workload measured.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// Time of the timed phases, added up.
    pub timed: Duration,
    /// Every phase in order: name, time, whether it counts in `timed`.
    pub phases: Vec<(&'static str, Duration, bool)>,
    /// Highest Rss of the mapping seen at the end of a phase.
    pub rss_peak: u64,
    /// Highest page cache of the store file seen at the end of a phase (0 if not measured).
    pub cache_peak: u64,
    /// Highest memory the mapping cost the machine at the end of a phase: its Rss plus the
    /// store file's page cache (for the kernel, whose Rss is that page cache, the larger
    /// of the two).
    pub cost_peak: u64,
}

impl Workload {
    /// Every workload, in the order `udax bench` runs them.
    pub const ALL: [Workload; 10] = [
        Workload::SparseRead,
        Workload::SeqRead,
        Workload::RandRead,
        Workload::SeqWrite,
        Workload::RandWrite,
        Workload::WriteAfterRead,
        Workload::Mkwrite,
        Workload::Flush,
        Workload::Sort,
        Workload::RandReadBudget,
    ];

    /// The name on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Workload::SparseRead => "sparse-read",
            Workload::SeqRead => "seq-read",
            Workload::RandRead => "rand-read",
            Workload::SeqWrite => "seq-write",
            Workload::RandWrite => "rand-write",
            Workload::WriteAfterRead => "write-after-read",
            Workload::Mkwrite => "mkwrite",
            Workload::Flush => "flush",
            Workload::Sort => "sort",
            Workload::RandReadBudget => "rand-read-budget",
        }
    }

    /// One line for `--help`: what the workload does and what is timed.
    pub fn about(self) -> &'static str {
        match self {
            Workload::SparseRead => "read one byte of every page of an all-hole store",
            Workload::SeqRead => {
                "read every page in order of a written store, page cache dropped first"
            }
            Workload::RandRead => {
                "read every page in random order of a written store, page cache dropped first"
            }
            Workload::SeqWrite => "write every page in order of an all-hole store, then flush",
            Workload::RandWrite => {
                "write every page in random order of an all-hole store, then flush"
            }
            Workload::WriteAfterRead => {
                "read every page of an all-hole store, write every page, then flush"
            }
            Workload::Mkwrite => "read every page of a written store, then write every page",
            Workload::Flush => {
                "read a written store in full, dirty 1% of pages at random; only the flush is timed"
            }
            Workload::Sort => {
                "sort a store of seeded random u64 in place (rayon, --threads), then flush; \
                 checked after"
            }
            Workload::RandReadBudget => {
                "random 4 KiB reads of a written store four times the budget (SIZE/4 by default)"
            }
        }
    }

    /// The workload called `name`, if any.
    pub fn parse(name: &str) -> Option<Workload> {
        Workload::ALL.into_iter().find(|w| w.name() == name)
    }

    /// The store this workload starts from.
    pub fn start(self) -> Start {
        match self {
            Workload::SparseRead
            | Workload::SeqWrite
            | Workload::RandWrite
            | Workload::WriteAfterRead => Start::Holes,
            Workload::SeqRead
            | Workload::RandRead
            | Workload::Mkwrite
            | Workload::Flush
            | Workload::RandReadBudget => Start::Written,
            Workload::Sort => Start::RandomWords,
        }
    }

    /// Whether the workload writes to the store (and so may overwrite a `--store` file).
    pub fn writes(self) -> bool {
        !matches!(
            self,
            Workload::SparseRead
                | Workload::SeqRead
                | Workload::RandRead
                | Workload::RandReadBudget
        )
    }

    /// The resident budget of this workload's udax runs over a store of `size` bytes with
    /// dirty tracking `tracking`: `--budget` if given; else a quarter of `size` for the workloads made to
    /// run under a budget (at least 64 KiB, the library's minimum), none for the others
    /// and none with asynchronous dirty tracking, which cannot run under a budget (the
    /// command line refuses `--budget` with it).
    pub fn budget(self, size: u64, given: Option<u64>, tracking: DirtyTracking) -> Option<u64> {
        const MIN: u64 = 64 << 10;
        match self {
            _ if tracking == DirtyTracking::Async => None,
            _ if given.is_some() => given,
            Workload::Sort | Workload::RandReadBudget => {
                Some((size / 4 / PAGE as u64 * PAGE as u64).max(MIN))
            }
            _ => None,
        }
    }

    /// Checks the store after a run whose mapping has been flushed (and closed): for
    /// `sort`, that `file`'s first `size` bytes are sorted and hold the values the run
    /// started from (same wrapping sum and xor of the words of `seed`). Untimed.
    pub fn verify(self, file: &File, size: u64, seed: u64) -> Result<(), CliError> {
        if self != Workload::Sort {
            return Ok(());
        }
        let expected = checksum(random_words(seed).take((size / 8) as usize));
        let mut chunk = vec![0u8; 1 << 20];
        let (mut previous, mut found) = (0u64, (0u64, 0u64));
        let mut offset = 0;
        while offset < size {
            let len = (chunk.len() as u64).min(size - offset) as usize;
            file.read_exact_at(&mut chunk[..len], offset)
                .map_err(|e| CliError::failed("reading the sorted store back", e))?;
            for (i, word) in chunk[..len].chunks_exact(8).enumerate() {
                let value = u64::from_ne_bytes(word.try_into().expect("8 bytes"));
                if value < previous {
                    let at = offset + 8 * i as u64;
                    return Err(CliError::failed(
                        "checking the sort",
                        format!("the store is not sorted at byte {at}"),
                    ));
                }
                previous = value;
                found = (found.0.wrapping_add(value), found.1 ^ value);
            }
            offset += len as u64;
        }
        if found != expected {
            return Err(CliError::failed(
                "checking the sort",
                "the sorted store does not hold the values it started with (sum or xor differ)",
            ));
        }
        Ok(())
    }

    /// Runs the workload once on `engine` with `threads` application threads; `seed` fixes
    /// the random orders (pass the same seed to both engines). `store` is the file whose
    /// page cache counts in the run's memory cost (None: a remote store, not measured).
    pub fn run(
        self,
        engine: &dyn Engine,
        threads: usize,
        seed: u64,
        store: Option<&File>,
    ) -> Result<Outcome, CliError> {
        let mut run = Run::new(engine, threads, seed, store);
        match self {
            Workload::SparseRead => run.read(Order::Seq, true)?,
            Workload::SeqRead => run.read(Order::Seq, true)?,
            Workload::RandRead => run.read(Order::Rand, true)?,
            Workload::SeqWrite => {
                run.write(Order::Seq, true)?;
                run.flush(true)?;
            }
            Workload::RandWrite => {
                run.write(Order::Rand, true)?;
                run.flush(true)?;
            }
            Workload::WriteAfterRead => {
                run.read(Order::Seq, true)?;
                run.write(Order::Seq, true)?;
                run.flush(true)?;
            }
            Workload::Mkwrite => {
                run.read(Order::Seq, true)?;
                run.write(Order::Seq, true)?;
            }
            Workload::Flush => {
                run.read(Order::Seq, false)?;
                run.dirty_fraction(100)?;
                run.flush(true)?;
            }
            Workload::Sort => {
                run.sort(threads)?;
                run.flush(true)?;
            }
            Workload::RandReadBudget => run.read_random_pages()?,
        }
        Ok(run.outcome)
    }
}

/// The pages one thread visits.
enum Share {
    InOrder(Range<u32>),
    Shuffled(Vec<u32>),
}

impl Share {
    fn for_each(&self, mut f: impl FnMut(usize)) {
        match self {
            Share::InOrder(range) => range.clone().for_each(|p| f(p as usize)),
            Share::Shuffled(pages) => pages.iter().for_each(|&p| f(p as usize)),
        }
    }
}

/// One run in progress: the engine, the thread shares, and what was measured so far.
struct Run<'a> {
    engine: &'a dyn Engine,
    region: Region,
    shares: Vec<Range<u32>>,
    seed: u64,
    store: Option<&'a File>,
    outcome: Outcome,
}

impl<'a> Run<'a> {
    fn new(engine: &'a dyn Engine, threads: usize, seed: u64, store: Option<&'a File>) -> Self {
        let region = engine.region();
        let pages = u32::try_from(region.pages()).expect("page count checked by the plan");
        let threads = threads.clamp(1, pages.max(1) as usize) as u32;
        let shares = (0..threads)
            .map(|t| {
                let share = |t: u32| (pages as u64 * t as u64 / threads as u64) as u32;
                share(t)..share(t + 1)
            })
            .collect();
        Run {
            engine,
            region,
            shares,
            seed,
            store,
            outcome: Outcome::default(),
        }
    }

    /// Builds the visiting lists (outside any timing).
    fn lists(&self, order: Order) -> Vec<Share> {
        self.shares
            .iter()
            .enumerate()
            .map(|(i, range)| match order {
                Order::Seq => Share::InOrder(range.clone()),
                Order::Rand => {
                    let seed = self.seed ^ (i as u64).wrapping_mul(0xA076_1D64_78BD_642F);
                    Share::Shuffled(permutation(range.start, range.end, seed))
                }
            })
            .collect()
    }

    /// Runs `f` on every share, one thread each (inline when there is one share).
    fn on_shares(lists: &[Share], f: impl Fn(&Share) + Sync) {
        if let [only] = lists {
            f(only);
            return;
        }
        std::thread::scope(|scope| {
            for share in lists {
                let f = &f;
                scope.spawn(move || f(share));
            }
        });
    }

    fn read(&mut self, order: Order, timed: bool) -> Result<(), CliError> {
        let lists = self.lists(order);
        let region = self.region;
        self.phase("read", timed, || {
            Self::on_shares(&lists, |share| {
                let mut sum = 0u8;
                share.for_each(|page| sum = sum.wrapping_add(region.read_page(page)));
                black_box(sum);
            });
            Ok(())
        })
    }

    fn write(&mut self, order: Order, timed: bool) -> Result<(), CliError> {
        let lists = self.lists(order);
        let region = self.region;
        let salt = self.seed & !1;
        self.phase("write", timed, || {
            Self::on_shares(&lists, |share| {
                share.for_each(|page| region.write_page(page, page_value(page, salt)));
            });
            Ok(())
        })
    }

    /// Writes `1/divisor` of the pages (at least one), chosen at random, from this thread.
    fn dirty_fraction(&mut self, divisor: usize) -> Result<(), CliError> {
        let pages = self.region.pages();
        let count = (pages / divisor).max(1);
        let mut rng = SplitMix64::new(self.seed);
        let all = permutation(0, pages as u32, rng.next_u64());
        let region = self.region;
        let salt = self.seed & !1;
        self.phase("dirty", false, || {
            all[..count]
                .iter()
                .for_each(|&p| region.write_page(p as usize, page_value(p as usize, salt)));
            Ok(())
        })
    }

    /// Reads whole pages chosen at random (with replacement), as many as the share has
    /// pages, in every share; the pages come from the whole region.
    fn read_random_pages(&mut self) -> Result<(), CliError> {
        let pages = self.region.pages() as u64;
        let lists: Vec<Share> = self
            .shares
            .iter()
            .enumerate()
            .map(|(i, range)| {
                let seed = self.seed ^ (i as u64).wrapping_mul(0xE703_7ED1_A0B4_28DB);
                let mut rng = SplitMix64::new(seed);
                let picks = (0..range.len()).map(|_| rng.below(pages) as u32).collect();
                Share::Shuffled(picks)
            })
            .collect();
        let region = self.region;
        self.phase("read", true, || {
            Self::on_shares(&lists, |share| {
                let mut sum = 0u64;
                share.for_each(|page| sum ^= region.read_whole_page(page));
                black_box(sum);
            });
            Ok(())
        })
    }

    /// Sorts the region's u64 in place with rayon's `par_sort_unstable` on a pool of
    /// `threads` threads (built before the timing).
    fn sort(&mut self, threads: usize) -> Result<(), CliError> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("udax-sort-{i}"))
            .build()
            .map_err(|e| CliError::failed("starting the sort's threads", e))?;
        let region = self.region;
        self.phase("sort", true, || {
            // SAFETY: the region is mapped read-write, page-aligned (so u64-aligned) and
            // len() bytes long while the engine is borrowed (Region's invariant), and
            // nothing else touches it during the sort; any bit pattern is a valid u64.
            let words = unsafe {
                std::slice::from_raw_parts_mut(region.addr() as *mut u64, region.len() / 8)
            };
            pool.install(|| words.par_sort_unstable());
            Ok(())
        })
    }

    fn flush(&mut self, timed: bool) -> Result<(), CliError> {
        let engine = self.engine;
        self.phase("flush", timed, || engine.flush())
    }

    /// Runs one phase, adds its time if `timed`, then samples the mapping's Rss and the
    /// store's page cache.
    fn phase(
        &mut self,
        name: &'static str,
        timed: bool,
        body: impl FnOnce() -> Result<(), CliError>,
    ) -> Result<(), CliError> {
        let start = Instant::now();
        body()?;
        let took = start.elapsed();
        if timed {
            self.outcome.timed += took;
        }
        self.outcome.phases.push((name, took, timed));
        self.sample_memory()
    }

    /// Takes the mapping's Rss and the store's page cache into the peaks.
    fn sample_memory(&mut self) -> Result<(), CliError> {
        let len = self.region.len();
        let rss = smaps::rss_of_range(self.region.addr(), len)
            .map_err(|e| CliError::failed("reading /proc/self/smaps", e))?;
        let cache = match self.store {
            Some(file) => page_cache::cached_bytes(file, len as u64)
                .map_err(|e| CliError::failed("counting the store's cached pages", e))?,
            None => 0,
        };
        // The kernel's resident pages are cached pages of the file: counted once.
        let cost = match self.engine.maps_page_cache() {
            true => rss.max(cache),
            false => rss + cache,
        };
        let peaks = &mut self.outcome;
        peaks.rss_peak = peaks.rss_peak.max(rss);
        peaks.cache_peak = peaks.cache_peak.max(cache);
        peaks.cost_peak = peaks.cost_peak.max(cost);
        Ok(())
    }
}

/// The u64 a `sort` store starts with, word by word, for `seed`.
pub fn random_words(seed: u64) -> impl Iterator<Item = u64> {
    let mut rng = SplitMix64::new(seed);
    std::iter::repeat_with(move || rng.next_u64())
}

/// The wrapping sum and the xor of `words`: equal for any two orders of the same values.
fn checksum(words: impl Iterator<Item = u64>) -> (u64, u64) {
    words.fold((0, 0), |(sum, xor), w| (sum.wrapping_add(w), xor ^ w))
}

/// The non-zero value written to `page`: distinct for every page of a run.
fn page_value(page: usize, salt: u64) -> u64 {
    ((page as u64) << 1 | 1) ^ salt
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for w in Workload::ALL {
            assert_eq!(Workload::parse(w.name()), Some(w));
        }
        assert_eq!(Workload::parse("bogus"), None);
    }

    #[test]
    fn budget_workloads_default_to_a_quarter_of_the_store() {
        let sync = DirtyTracking::Sync;
        let size = 1 << 30;
        let budget = |w: Workload, given| w.budget(size, given, sync);
        assert_eq!(budget(Workload::Sort, None), Some(256 << 20));
        assert_eq!(budget(Workload::RandReadBudget, None), Some(256 << 20));
        assert_eq!(
            budget(Workload::RandReadBudget, Some(1 << 20)),
            Some(1 << 20)
        );
        assert_eq!(budget(Workload::RandRead, None), None);
        assert_eq!(budget(Workload::SeqRead, Some(1 << 20)), Some(1 << 20));
        assert_eq!(Workload::Sort.budget(64 << 10, None, sync), Some(64 << 10));
        let asynchronous = DirtyTracking::Async;
        assert_eq!(Workload::Sort.budget(size, None, asynchronous), None);
    }

    #[test]
    fn sort_verification_accepts_sorted_values_and_rejects_the_rest() {
        let seed = 42;
        let size = 64 << 10;
        let mut words: Vec<u64> = random_words(seed).take(size / 8).collect();
        let write = |words: &[u64]| {
            let file = tempfile::tempfile().expect("temporary file");
            let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
            file.write_all_at(&bytes, 0).expect("write");
            file
        };
        let unsorted = write(&words);
        assert!(Workload::Sort.verify(&unsorted, size as u64, seed).is_err());
        words.sort_unstable();
        let sorted = write(&words);
        Workload::Sort
            .verify(&sorted, size as u64, seed)
            .expect("sorted");
        words[0] = 0;
        let changed = write(&words);
        assert!(Workload::Sort.verify(&changed, size as u64, seed).is_err());
        assert!(
            Workload::Sort
                .verify(&sorted, size as u64, seed + 1)
                .is_err()
        );
    }

    #[test]
    fn page_values_are_distinct_and_non_zero() {
        let salt = 0x1234_5678_9abc_def0 & !1;
        assert_ne!(page_value(0, salt), 0);
        assert_ne!(page_value(1, salt), page_value(2, salt));
    }
}
