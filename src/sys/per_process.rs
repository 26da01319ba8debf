//! A value made once per process: a child of `fork` makes its own. The process-wide
//! pieces (the pagemap descriptor, the huge-page staging slots, the huge zero source)
//! hold things a child must not use: a pagemap descriptor opened by the parent reads the
//! parent's page tables, claims copied mid-flight were the parent's threads', and memory
//! marked MADV_DONTFORK is not mapped in the child at all.

use std::sync::Mutex;

/// `T` made by the first caller in each process.
pub(crate) struct PerProcess<T> {
    /// (the pid that made it, the value).
    made: Mutex<Option<(u32, T)>>,
}

impl<T: Clone> PerProcess<T> {
    pub(crate) const fn new() -> Self {
        PerProcess {
            made: Mutex::new(None),
        }
    }

    /// This process's value, made with `make` by the first caller here (an error is not
    /// kept: the next caller tries again). A parent's value is forgotten, never dropped:
    /// dropping it could close or unmap what the child now uses under the same number.
    pub(crate) fn get_or_make<E>(&self, make: impl FnOnce() -> Result<T, E>) -> Result<T, E> {
        let pid = std::process::id();
        let mut made = self.made.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((owner, value)) = &*made
            && *owner == pid
        {
            return Ok(value.clone());
        }
        let value = make()?;
        std::mem::forget(made.replace((pid, value.clone())));
        Ok(value)
    }
}
