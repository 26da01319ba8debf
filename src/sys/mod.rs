//! The system floor: userfaultfd, PAGEMAP_SCAN, futex, anonymous memory and CPU affinity,
//! each a thin typed wrapper over its system calls. Kernel results are decoded here, once.
//!
//! Nothing here knows about entry states, stores or policy. Every call that changes what
//! memory an address maps (installing, protecting, poisoning, moving or dropping pages, and
//! registering a range) is an `unsafe fn`: the caller states in a `// SAFETY:` comment why
//! the range is its own to change. The only safe address-taking calls are the ones that
//! cannot change memory (waking a faulting thread, read-only page-table queries).
//!
//! Floors above: `engine` (the fault policy over a region), `resolve` (who serves faults),
//! and the front-ends. This floor imports nothing from them.

pub(crate) mod cpu;
pub(crate) mod futex;
pub(crate) mod huge_zero;
pub(crate) mod memory;
pub(crate) mod pagemap;
pub(crate) mod per_process;
pub(crate) mod uffd;
mod uffd_abi;
