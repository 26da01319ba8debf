//! Process exit: the dirty pages of every live mapping are written back when the process
//! exits normally (`std::process::exit`, returning from `main` with a leaked or static
//! mapping), as a kernel MAP_SHARED mapping loses none then.
//!
//! Every mapping that tracks writes enters a process-wide list when made and leaves it
//! when closed or dropped; the first one installs an atexit(3) hook that flushes the
//! mappings still listed. SIGKILL and `_exit` run no hook: they lose what was written
//! since the last flush (the kernel's page cache would keep it), never what a flush
//! already wrote.

use std::sync::{Arc, Mutex, Once, Weak};

use crate::engine::region::Region;
use crate::engine::writeback;

/// The live mappings, with the process that made each (a forked child inherits the
/// list, whose regions it must not touch).
static LIVE: Mutex<Vec<(u32, Weak<Region>)>> = Mutex::new(Vec::new());

/// Puts `region` on the list flushed at exit, installing the hook on first use.
pub(crate) fn flush_at_exit(region: &Arc<Region>) {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        // SAFETY: atexit(3) takes a function pointer to an `extern "C" fn()`, which
        // `flush_live` is; it stays valid for the life of the process. If it cannot be
        // installed (the table is full), exit merely loses the hook's help.
        unsafe { libc::atexit(flush_live) };
    });
    let mut live = LIVE.lock().unwrap_or_else(|e| e.into_inner());
    live.retain(|(_, weak)| weak.strong_count() > 0);
    live.push((std::process::id(), Arc::downgrade(region)));
}

/// Takes `region` off the list (it is being closed, and its close flushes it).
pub(crate) fn forget(region: &Arc<Region>) {
    let mut live = LIVE.lock().unwrap_or_else(|e| e.into_inner());
    live.retain(|(_, weak)| !std::ptr::eq(weak.as_ptr(), Arc::as_ptr(region)));
}

/// The atexit hook: flushes every mapping of this process still on the list. Errors have
/// no one to go to at exit; a panic must not cross into C.
extern "C" fn flush_live() {
    let _ = std::panic::catch_unwind(|| {
        let pid = std::process::id();
        let regions: Vec<Arc<Region>> = {
            let live = LIVE.lock().unwrap_or_else(|e| e.into_inner());
            live.iter()
                .filter(|(owner, _)| *owner == pid)
                .filter_map(|(_, weak)| weak.upgrade())
                .collect()
        };
        for region in regions {
            let _ = writeback::flush(&region);
        }
    });
}
