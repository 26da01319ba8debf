//! The library's error type, shared by every floor.

use crate::store::StoreError;
use crate::sys::uffd::UffdError;

/// Errors of mapping, flushing and closing.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A mapping of zero bytes was asked for.
    #[error(
        "cannot map 0 bytes: the store (or the requested length) must hold at least one 4096-byte page"
    )]
    EmptyMapping,
    /// The requested length is not a whole number of pages.
    #[error("length {len} is not a multiple of 4096: map a page-aligned length")]
    UnalignedLength {
        /// The requested length.
        len: u64,
    },
    /// The store is shorter than the requested mapping.
    #[error("store holds {store_len} bytes but {len} were requested: grow the store or map less")]
    StoreTooShort {
        /// Bytes requested.
        len: u64,
        /// Bytes the store holds.
        store_len: u64,
    },
    /// Options that cannot work together.
    #[error("incompatible options: {reason}")]
    IncompatibleOptions {
        /// Why.
        reason: &'static str,
    },
    /// A range handed to an adopted region cannot be served.
    #[error("range {address:#x}+{len} at store offset {offset} cannot be served: {reason}")]
    BadRange {
        /// Its address, in the memory of the process that owns it.
        address: usize,
        /// Its length.
        len: usize,
        /// Where it starts in the store.
        offset: u64,
        /// Why.
        reason: &'static str,
    },
    /// A range outside the mapping was passed to `read_at`/`write_at`.
    #[error("range {offset}+{len} lies outside the mapping of {mapping_len} bytes")]
    OutOfRange {
        /// Start of the range.
        offset: usize,
        /// Its length.
        len: usize,
        /// The mapping's length.
        mapping_len: usize,
    },
    /// A store operation failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A userfaultfd operation failed (or userfaultfd is unavailable).
    #[error(transparent)]
    Uffd(#[from] UffdError),
    /// A fault could not be served; the access got SIGBUS. Reported by the next flush.
    #[error(
        "a fault at store offset {offset} could not be served (the access got SIGBUS): {source}"
    )]
    FaultFailed {
        /// Byte offset in the store of the failed page (for a `Mapping`, its offset in
        /// the mapping too).
        offset: u64,
        /// What the store said.
        #[source]
        source: StoreError,
    },
    /// The store shrank underneath the mapping (another process truncated its file): the
    /// dirty pages at or past its new end were dropped, as the kernel drops a truncated
    /// file's pages, and every access there now gets SIGBUS. Reported once, by the flush
    /// that dropped them (or the next one, if eviction did).
    #[error(
        "the store shrank to {size} bytes while mapped (truncated by something outside udax): \
         {pages} dirty pages at or past its new end were dropped, and accesses there get \
         SIGBUS; grow the store back before writing there, or map less"
    )]
    Truncated {
        /// The store's size now.
        size: u64,
        /// Dirty pages dropped.
        pages: u64,
    },
    /// A store sync failed after written-back pages had left memory (evicted): the store
    /// may have lost them, and udax has no copy to write again. Sticks: every later flush
    /// of the mapping returns it.
    #[error(
        "a sync of the store failed ({source}) after {pages} written-back pages had left \
         memory: the store may have lost them and they cannot be written again; every \
         flush of this mapping fails from now on (check the store, then map it again)"
    )]
    WritebackLost {
        /// Pages that may be lost.
        pages: u64,
        /// What the failed sync said.
        #[source]
        source: std::io::Error,
    },
    /// The handler threads could no longer read the mapping's faults from its
    /// userfaultfd and gave up on it: pages not present now raise SIGBUS (never a hang),
    /// writes are no longer tracked, and every flush writes back every resident page and
    /// returns this error.
    #[error(
        "the handler threads could not read faults from the userfaultfd ({source}) and \
         gave up: pages not yet present now raise SIGBUS, and every flush writes back all \
         resident pages and fails; close the mapping and map the store again"
    )]
    HandlerFailed {
        /// What poll(2) or read(2) of the userfaultfd said.
        #[source]
        source: std::io::Error,
    },
    /// A write was asked of a read-only mapping.
    #[error("the mapping is read-only: map it without Options::read_only to write")]
    ReadOnly,
    /// The resident budget is too small to make progress.
    #[error(
        "a budget of {budget} bytes is too small: give at least {minimum} bytes (a single \
         instruction may need several pages resident at once)"
    )]
    BudgetTooSmall {
        /// The budget asked for.
        budget: u64,
        /// The smallest budget accepted.
        minimum: u64,
    },
    /// The process ran out of a resource with a limit: memory maps, file descriptors,
    /// memory, threads. The message names the limit and how to raise it.
    #[error("{op} failed: out of {limit} ({source}): {fix}")]
    ResourceLimit {
        /// The call that failed.
        op: &'static str,
        /// The limit, by name (`vm.max_map_count`, `RLIMIT_NOFILE`, ...), with its value.
        limit: String,
        /// How to get more.
        fix: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A mapping inherited over fork: it belongs to the parent, and the child may not
    /// flush or close it (its memory is not mapped in the child: MADV_DONTFORK).
    #[error(
        "this mapping belongs to process {owner} (this is its forked child): only the parent \
         can flush or close it; the child's copy does nothing"
    )]
    ForeignProcess {
        /// The process that made the mapping.
        owner: u32,
    },
    /// A memory-management call (mmap, madvise, thread spawn) failed.
    #[error("{op} failed: {source}")]
    Os {
        /// The call.
        op: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// An OS error of `op`, as [`Error::ResourceLimit`] when it says a limit was hit
    /// (ENOMEM, EMFILE, ENFILE, EAGAIN), else [`Error::Os`].
    pub(crate) fn os(op: &'static str, source: std::io::Error) -> Error {
        let (limit, fix) = match source.raw_os_error() {
            Some(libc::EMFILE) => (
                format!(
                    "file descriptors (RLIMIT_NOFILE = {})",
                    rlimit(libc::RLIMIT_NOFILE)
                ),
                "raise the limit (ulimit -n, setrlimit) or close files or mappings",
            ),
            Some(libc::ENFILE) => (
                "file descriptors of the whole system (fs.file-max)".to_string(),
                "raise fs.file-max or close files",
            ),
            Some(libc::ENOMEM) => match map_count() {
                Some((used, max)) if used + 16 >= max => (
                    format!("memory maps (vm.max_map_count = {max}, {used} in use)"),
                    "raise vm.max_map_count (sysctl -w vm.max_map_count=N) or close mappings",
                ),
                _ => (
                    format!("memory (RLIMIT_AS = {} bytes)", rlimit(libc::RLIMIT_AS)),
                    "free memory, raise the address-space limit (ulimit -v) or map less",
                ),
            },
            Some(libc::EAGAIN) if op.contains("thread") => (
                format!(
                    "threads (RLIMIT_NPROC = {}, kernel.threads-max)",
                    rlimit(libc::RLIMIT_NPROC)
                ),
                "raise the limit (ulimit -u) or run fewer threads",
            ),
            _ => return Error::Os { op, source },
        };
        Error::ResourceLimit {
            op,
            limit,
            fix,
            source,
        }
    }

    /// A failed userfaultfd open: out of file descriptors is a limit to raise, not a
    /// missing permission (the syscall and the device both fail with EMFILE then).
    pub(crate) fn uffd_open(error: UffdError) -> Error {
        match error {
            UffdError::Unavailable { syscall, .. }
                if matches!(syscall.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) =>
            {
                Error::os("userfaultfd", syscall)
            }
            other => Error::Uffd(other),
        }
    }

    /// A handler thread that could not be started.
    pub(crate) fn thread_spawn(source: std::io::Error) -> Error {
        Error::os("spawn handler thread", source)
    }
}

/// The soft limit `resource`, as text ("unlimited" or the number).
fn rlimit(resource: libc::__rlimit_resource_t) -> String {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one `struct rlimit`, which `limit` is.
    if unsafe { libc::getrlimit(resource, &mut limit) } != 0 {
        return "?".to_string();
    }
    match limit.rlim_cur {
        libc::RLIM_INFINITY => "unlimited".to_string(),
        n => n.to_string(),
    }
}

/// The process's memory maps and `vm.max_map_count`, if /proc says.
fn map_count() -> Option<(usize, usize)> {
    let max = std::fs::read_to_string("/proc/sys/vm/max_map_count").ok()?;
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    Some((maps.lines().count(), max.trim().parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_named_with_their_fix() {
        let text = |op, errno| Error::os(op, std::io::Error::from_raw_os_error(errno)).to_string();
        assert!(text("mmap", libc::EMFILE).contains("RLIMIT_NOFILE"));
        assert!(text("mmap", libc::ENFILE).contains("fs.file-max"));
        assert!(text("mmap", libc::ENOMEM).contains("RLIMIT_AS"));
        assert!(text("spawn handler thread", libc::EAGAIN).contains("RLIMIT_NPROC"));
        assert!(matches!(
            Error::os("mmap", std::io::Error::from_raw_os_error(libc::EINVAL)),
            Error::Os { .. }
        ));
        let emfile = UffdError::Unavailable {
            syscall: std::io::Error::from_raw_os_error(libc::EMFILE),
            device: std::io::Error::from_raw_os_error(libc::EMFILE),
        };
        let text = Error::uffd_open(emfile).to_string();
        assert!(
            text.contains("RLIMIT_NOFILE") && !text.contains("root"),
            "{text}"
        );
    }
}
