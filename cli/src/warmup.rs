//! Touching and freeing memory right before each timed run.
//!
//! On this project's virtual machines, memory the guest gave back to the hypervisor costs
//! ~25 µs per page on its next first touch (measured there), and memory freed by one run
//! is taken back again within ~2 s: a warm-up once at the start left the first repeats of
//! a workload up to 3.6x slower. So before every run the bench maps anonymous memory of the
//! size the run will use, asks for transparent huge pages (the host takes memory back in
//! 2 MiB blocks, so 4 KiB touches leave most of each block cold), writes one byte every
//! 4 KiB (every page backed, huge or not), and unmaps it: that much memory is then backed
//! and free for the run.

use std::io;

use crate::engine::PAGE;

/// Maps `bytes` of anonymous MADV_HUGEPAGE memory, writes one byte per 4 KiB, unmaps it.
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
    // Huge pages are a hint: where THP is off (or no 2 MiB block is free) the touches
    // below back the memory 4 KiB at a time, as before. The error is ignored for that
    // reason.
    // SAFETY: advises exactly the mapping made above.
    unsafe { libc::madvise(ptr, bytes, libc::MADV_HUGEPAGE) };
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
