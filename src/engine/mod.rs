//! The engine floor: a [`region::Region`] (an address range registered with a userfaultfd,
//! the store behind it, its entries, counters and configuration) and what acts on it.
//!
//! It knows nothing of who reserved the memory, which thread serves a fault, or who called.
//! Its files, bottom to top (each imports only files above it in this list, and `sys`,
//! `store` and `error`; `tests/layers.rs` checks it):
//!
//! - `shared_budget`: a budget several regions hold (below `config`, which carries it);
//! - `config`: what a region's faults do (granularity, dirty tracking, 2 MiB choices);
//! - `zero`: telling zero bytes;
//! - `stats`, `error_slot`, `unsynced`, `window`, `entries`, `budget`, `huge_slots`,
//!   `streams`, `ahead`: the state a region holds (counters, the first fault-time error,
//!   the pages written since the last good sync, zero-page windows, the entry table, the
//!   resident budget, huge-page staging buffers, the recent faults' ranges, the 2 MiB run
//!   read ahead of);
//! - `region`: the context itself, and the only door from the engine to the memory;
//! - `policy`: the fault table, a pure function;
//! - `run`: runs of locked entries (the span a wide fault serves);
//! - `install`: the one insert routine, and the windows it closes;
//! - `fill`: the one fill routine (allocate, read, count, insert);
//! - `around`, `huge`: which run a wide fault fills (fault-around window, 2 MiB range);
//! - `hugetlb`: filling another process's hugetlbfs memory in 2 MiB units;
//! - `prefetch`: installing pages before they fault; `read_ahead`: installing the 2 MiB
//!   ranges ahead of a sequential run; `remove`: a balloon's removes;
//! - `writeback`: flush; `evict`: the budget's clock;
//! - `fault`: serving one fault, from decision to eviction;
//! - `abandon`: a region whose faults can no longer be read answers every access without them.

pub(crate) mod abandon;
pub(crate) mod ahead;
pub(crate) mod around;
pub(crate) mod budget;
pub(crate) mod config;
pub(crate) mod entries;
pub(crate) mod error_slot;
pub(crate) mod evict;
pub(crate) mod fault;
pub(crate) mod fill;
pub(crate) mod huge;
pub(crate) mod huge_slots;
pub(crate) mod hugetlb;
pub(crate) mod install;
pub(crate) mod policy;
pub(crate) mod prefetch;
pub(crate) mod read_ahead;
pub(crate) mod region;
pub(crate) mod remove;
pub(crate) mod run;
pub(crate) mod shared_budget;
pub(crate) mod stats;
pub(crate) mod streams;
pub(crate) mod unsynced;
pub(crate) mod window;
pub(crate) mod writeback;
pub(crate) mod zero;
