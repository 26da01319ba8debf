//! Touching and freeing memory before the timed runs.
//!
//! On this project's virtual machines, memory the guest gave back to the hypervisor costs
//! ~25 µs per page on its next first touch (measured there): without a warm-up every
//! allocating figure of the first runs is noise. Touching an anonymous region page by page
//! and unmapping it leaves that much memory backed and free for the runs.

use std::io;

use crate::engine::PAGE;

/// Maps `bytes` of anonymous memory, writes one byte per page, and unmaps it.
pub fn touch_and_free(bytes: usize) -> io::Result<()> {
    if bytes == 0 {
        return Ok(());
    }
    // SAFETY: a fresh private anonymous mapping chosen by the kernel aliases nothing; the
    // result is checked against MAP_FAILED before use.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            bytes,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    let base = ptr.cast::<u8>();
    for offset in (0..bytes).step_by(PAGE) {
        // SAFETY: offset < bytes, inside the read-write mapping made above.
        unsafe { std::ptr::write_volatile(base.add(offset), 1) };
    }
    // SAFETY: unmaps exactly the mapping made above; nothing refers to it any more.
    if unsafe { libc::munmap(ptr, bytes) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
