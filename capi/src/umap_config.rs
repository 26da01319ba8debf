//! The UMap configuration: the `UMAP_*` environment variables, read once on the first
//! call of any `umap*` function (as UMap reads them when its singleton is first touched),
//! parsed as UMap parses them (an unsigned integer; 0 or garbage means "use the default").
//!
//! | variable | udax |
//! |---|---|
//! | `UMAP_PAGESIZE` | the unit `umap` checks lengths and addresses against; 4096: 4 KiB faults, 2 MiB: 2 MiB faults, other multiples of 4096: fault-around of that many bytes (dirty tracking stays 4 KiB) |
//! | `UMAP_BUFSIZE` | pages (of `UMAP_PAGESIZE`) of the one budget all regions share (default 90 % of MemFree, as UMap; at least 64 KiB) |
//! | `UMAP_PAGE_FILLERS` | handler threads per region (default udax's: one per CPU, at most 4) |
//! | `UMAP_PAGE_EVICTORS`, `UMAP_EVICT_HIGH_WATER_THRESHOLD`, `UMAP_EVICT_LOW_WATER_THRESHOLD`, `UMAP_MAX_FAULT_EVENTS`, `UMAP_READ_AHEAD` | accepted and reported by the getters; udax evicts in the thread that served the fault, at the budget |
//! | `UMAP_LOG_LEVEL`, `UMAP_MONITOR_FREQ`, ... | ignored |

use std::sync::OnceLock;

use udax_core::{Granularity, HUGE_PAGE_SIZE, Options, PAGE_SIZE, SharedBudget};

/// The configuration every `umap` region uses.
#[derive(Debug)]
pub struct UmapConfig {
    /// `UMAP_PAGESIZE` (bytes).
    pub page_size: u64,
    /// `UMAP_BUFSIZE` (pages of `page_size`).
    pub buffer_pages: u64,
    /// `UMAP_PAGE_FILLERS`: handler threads per region.
    pub fillers: u64,
    /// `UMAP_PAGE_EVICTORS` (reported only).
    pub evictors: u64,
    /// `UMAP_EVICT_HIGH_WATER_THRESHOLD` (%, reported only).
    pub high_water: i32,
    /// `UMAP_EVICT_LOW_WATER_THRESHOLD` (%, reported only).
    pub low_water: i32,
    /// `UMAP_MAX_FAULT_EVENTS` (reported only).
    pub max_fault_events: u64,
    /// `UMAP_READ_AHEAD` (pages, reported only).
    pub read_ahead: u64,
    /// Why `umap` must refuse every region, if the variables are invalid (UMap aborts).
    pub invalid: Option<String>,
    /// The budget all regions share (`UMAP_BUFSIZE` x `UMAP_PAGESIZE`).
    pub budget: Option<SharedBudget>,
}

/// The configuration, read from the environment on the first call.
pub fn config() -> &'static UmapConfig {
    static CONFIG: OnceLock<UmapConfig> = OnceLock::new();
    CONFIG.get_or_init(|| UmapConfig::from_lookup(|name| std::env::var(name).ok()))
}

impl UmapConfig {
    /// The configuration the variables `lookup` finds describe.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> UmapConfig {
        // UMap: `std::stringstream >> uint64_t`; 0 (or nothing parsed) is unset.
        let number = |name: &str| {
            lookup(name)
                .and_then(|v| leading_u64(&v))
                .filter(|&v| v != 0)
        };
        let page_size = number("UMAP_PAGESIZE").unwrap_or(PAGE_SIZE as u64);
        let buffer_pages =
            number("UMAP_BUFSIZE").unwrap_or_else(|| mem_free_bytes() / 10 * 9 / page_size.max(1));
        let cpus = std::thread::available_parallelism().map_or(16, |n| n.get() as u64);
        let fillers = number("UMAP_PAGE_FILLERS")
            .unwrap_or_else(|| Options::default().handler_thread_count() as u64);
        let percent = |name, default| number(name).map_or(default, |v| v.min(1000) as i32);
        let high_water = percent("UMAP_EVICT_HIGH_WATER_THRESHOLD", 90);
        let low_water = percent("UMAP_EVICT_LOW_WATER_THRESHOLD", 70);
        let invalid = if page_size % PAGE_SIZE as u64 != 0 {
            Some(format!(
                "UMAP_PAGESIZE={page_size} is not a multiple of the system page size (4096)"
            ))
        } else if high_water > 100 || low_water > 100 || low_water > high_water {
            Some(format!(
                "UMAP_EVICT_LOW_WATER_THRESHOLD={low_water} and UMAP_EVICT_HIGH_WATER_THRESHOLD={high_water} \
                 must be percentages, low <= high"
            ))
        } else {
            None
        };
        // At least udax's smallest budget, 64 KiB.
        let budget_bytes = buffer_pages.saturating_mul(page_size).max(64 << 10);
        UmapConfig {
            page_size,
            buffer_pages,
            fillers,
            evictors: number("UMAP_PAGE_EVICTORS").unwrap_or(cpus),
            high_water,
            low_water,
            max_fault_events: number("UMAP_MAX_FAULT_EVENTS").unwrap_or(256),
            read_ahead: number("UMAP_READ_AHEAD").unwrap_or(0),
            invalid,
            budget: SharedBudget::new(budget_bytes).ok(),
        }
    }

    /// The fault granularity of a region at `address` (2 MiB faults need a 2 MiB-aligned
    /// address; elsewhere a 2 MiB page size reads 2 MiB around a miss instead).
    pub fn granularity(&self, address: usize) -> Granularity {
        match self.page_size as usize {
            PAGE_SIZE => Granularity::Page,
            HUGE_PAGE_SIZE if address % HUGE_PAGE_SIZE == 0 => Granularity::Huge,
            bytes => Granularity::FaultAround(bytes.min(HUGE_PAGE_SIZE)),
        }
    }
}

/// The unsigned integer `text` starts with (after blanks), as `operator>>` reads it.
fn leading_u64(text: &str) -> Option<u64> {
    let text = text.trim_start();
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    text[..digits].parse().ok()
}

/// MemFree from /proc/meminfo, in bytes (0 if unreadable).
fn mem_free_bytes() -> u64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemFree:"))
        .and_then(leading_u64_kib)
        .unwrap_or(0)
}

/// "  1234 kB" in bytes.
fn leading_u64_kib(text: &str) -> Option<u64> {
    leading_u64(text).map(|kib| kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(vars: &[(&str, &str)]) -> UmapConfig {
        UmapConfig::from_lookup(|name| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.to_string())
        })
    }

    #[test]
    fn variables_parse_as_umap_reads_them() {
        let c = with(&[
            ("UMAP_PAGESIZE", "65536"),
            ("UMAP_BUFSIZE", "32 pages"),
            ("UMAP_PAGE_FILLERS", "3"),
            ("UMAP_PAGE_EVICTORS", "0"),
            ("UMAP_EVICT_HIGH_WATER_THRESHOLD", "junk"),
        ]);
        assert_eq!((c.page_size, c.buffer_pages, c.fillers), (65536, 32, 3));
        assert!(c.evictors > 0, "0 means the default");
        assert_eq!((c.high_water, c.low_water), (90, 70));
        assert!(c.invalid.is_none());
        assert_eq!(c.budget.as_ref().map(SharedBudget::bytes), Some(32 * 65536));
        assert_eq!(c.granularity(0), Granularity::FaultAround(65536));
    }

    #[test]
    fn bad_values_make_umap_refuse_not_abort() {
        assert!(with(&[("UMAP_PAGESIZE", "1000")]).invalid.is_some());
        let inverted = [
            ("UMAP_EVICT_HIGH_WATER_THRESHOLD", "50"),
            ("UMAP_EVICT_LOW_WATER_THRESHOLD", "60"),
        ];
        assert!(with(&inverted).invalid.is_some());
        // A tiny buffer is clamped up to udax's smallest budget.
        let tiny = with(&[("UMAP_BUFSIZE", "1")]);
        assert_eq!(
            tiny.budget.as_ref().map(SharedBudget::bytes),
            Some(64 << 10)
        );
        let huge = with(&[("UMAP_PAGESIZE", "2097152")]);
        assert_eq!(huge.granularity(0), Granularity::Huge);
        assert_eq!(huge.granularity(4096), Granularity::FaultAround(2 << 20));
    }
}
