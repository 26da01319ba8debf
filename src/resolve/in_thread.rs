//! In-thread fault resolution: with UFFD_FEATURE_SIGBUS the kernel raises SIGBUS in the
//! faulting thread instead of queueing an event, and this module's handler serves the
//! fault right there through the same `fault::resolve`, then returns so the access
//! retries. No thread wakes another, which is the whole cost on this kind of machine
//! (measured: 5.7 µs per fault here against 10–155 µs through a handler thread), except
//! the region's read-ahead thread (`ahead_thread`), woken by a fault that continues a
//! sequential run of data faults, once a run (a futex wake), and waited for by a fault
//! on a range it is reading (`engine::read_ahead`).
//!
//! What runs in the handler must be async-signal-safe: the fault path uses futexes
//! (entries, grace windows), atomics (counters, dirty index, error slot), ioctls and the
//! store's syscalls, and allocates nothing; only stores that say `is_signal_safe` get here.
//! The interrupted code is user code touching a mapping, which never holds udax's entry
//! locks (udax never touches mapping memory from user space while holding one).
//!
//! A region whose faults may fill more than a page (2 MiB, fault-around) has a staging
//! buffer of 2 MiB in its slot, reserved when it registers: the handler has no heap and
//! its stack is the program's. One faulting thread at a time claims it (an atomic flag);
//! another, meanwhile, gets a page of scratch on its stack, and its wide data faults
//! fall back to 4 KiB, as every one did before (holes need no buffer).
//!
//! Regions are found through a fixed table of slots, read without locks. A signal that
//! is not for a registered region (another address, a poisoned page, a `kill`) goes to
//! the handler the program had installed before, or to the default action.
//!
//! The read/write direction comes from the x86-64 page-fault error code in the signal
//! context; other architectures use handler threads.

use std::mem::MaybeUninit;
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, Ordering::SeqCst};
use std::sync::{Arc, Mutex, OnceLock};

use crate::engine::config::Granularity;
use crate::engine::region::Region;
use crate::engine::{fault, read_ahead};
use crate::error::Error;
use crate::resolve::ahead_thread::AheadThread;
use crate::sys::memory::Reservation;
use crate::sys::uffd::Fault;
use crate::{HUGE_PAGE_SIZE, PAGE_SIZE};

/// How many in-thread regions may exist at once.
pub(crate) const SLOTS: usize = 64;

struct Slot {
    /// The region, or null. Set by `register`, cleared by `Registration::drop`.
    region: AtomicPtr<Region>,
    /// Signal handlers currently using `region`; unregistering waits for zero.
    users: AtomicU32,
    /// The region's staging buffer ([`STAGING`] bytes) or null. Set before `region` and
    /// cleared after `users` drops to zero, so a handler counted in `users` that saw the
    /// region sees its buffer, alive.
    staging: AtomicPtr<u8>,
    /// Whether a handler holds `staging` (one at a time).
    staging_busy: AtomicBool,
}

/// Bytes of a staging buffer: the widest fill, a 2 MiB range.
const STAGING: usize = HUGE_PAGE_SIZE;

static TABLE: [Slot; SLOTS] = [const {
    Slot {
        region: AtomicPtr::new(ptr::null_mut()),
        users: AtomicU32::new(0),
        staging: AtomicPtr::new(ptr::null_mut()),
        staging_busy: AtomicBool::new(false),
    }
}; SLOTS];

/// The SIGBUS action that was installed before ours (set once, before ours goes in).
static PREVIOUS: OnceLock<libc::sigaction> = OnceLock::new();
/// Serializes slot claims and the one-time install.
static REGISTER: Mutex<()> = Mutex::new(());

/// A region's place in the table; dropping it removes the region and waits until no
/// signal handler still uses it.
pub(crate) struct Registration {
    slot: usize,
    /// Keeps the region alive while the table points at it.
    _region: Arc<Region>,
    /// The memory of the slot's staging buffer, if the region has one; unmapped after
    /// the slot lets go of it.
    _staging: Option<Reservation>,
    /// The region's read-ahead thread, if its runs are read ahead (stopped first on drop).
    reader: Option<AheadThread>,
}

/// Enters `region` in the table (installing the handler on first use), with a staging
/// buffer if its faults may fill more than a page. `None` when the table is full.
pub(crate) fn register(region: &Arc<Region>) -> Result<Option<Registration>, Error> {
    let _serial = REGISTER.lock().unwrap_or_else(|e| e.into_inner());
    install().map_err(|source| Error::Os {
        op: "sigaction(SIGBUS)",
        source,
    })?;
    // Only `register` fills slots, under `REGISTER`: a free slot stays free until we fill it.
    let Some(index) = TABLE
        .iter()
        .position(|slot| slot.region.load(SeqCst).is_null())
    else {
        return Ok(None);
    };
    let slot = &TABLE[index];
    // Address space only until a wide fill touches it (huge pages: a few faults, not 512).
    let staging = match region.config.granularity {
        Granularity::Page => None,
        _ => Some(Reservation::new(STAGING, true).map_err(|source| Error::Os {
            op: "mmap of the in-thread staging buffer",
            source,
        })?),
    };
    let buffer = staging
        .as_ref()
        .map_or(ptr::null_mut(), |r| r.base() as *mut u8);
    slot.staging.store(buffer, SeqCst);
    slot.region.store(Arc::as_ptr(region).cast_mut(), SeqCst);
    Ok(Some(Registration {
        slot: index,
        _region: Arc::clone(region),
        _staging: staging,
        reader: AheadThread::start(region),
    }))
}

impl Drop for Registration {
    fn drop(&mut self) {
        // No read-ahead from here on (the thread finishes the range it is reading).
        drop(self.reader.take());
        // Under `REGISTER`, so that the slot is not filled again before we let go of its
        // buffer (a registration in between would lose its own).
        let _serial = REGISTER.lock().unwrap_or_else(|e| e.into_inner());
        let slot = &TABLE[self.slot];
        slot.region.store(ptr::null_mut(), SeqCst);
        // A handler that loaded the pointer before we cleared it counted itself in
        // `users` first: wait it out. (It can only be a stray access racing the unmap.)
        while slot.users.load(SeqCst) != 0 {
            std::thread::yield_now();
        }
        // No handler holds the buffer now (one that did was counted in `users`).
        slot.staging.store(ptr::null_mut(), SeqCst);
    }
}

/// Installs the handler once, keeping the previous action for chaining.
fn install() -> Result<(), std::io::Error> {
    if PREVIOUS.get().is_some() {
        return Ok(());
    }
    // SAFETY: sigaction is plain old data; all-zero is a valid empty value.
    let mut action: libc::sigaction = unsafe { MaybeUninit::zeroed().assume_init() };
    action.sa_sigaction = on_sigbus as *const () as libc::sighandler_t;
    // No SA_ONSTACK: Rust's alternate stacks are small, and the handler needs a page of
    // scratch; it runs on the faulting thread's own stack.
    action.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
    // SAFETY: `sa_mask` is a valid sigset_t inside `action`.
    unsafe { libc::sigemptyset(&mut action.sa_mask) };
    // SAFETY: as above.
    let mut previous: libc::sigaction = unsafe { MaybeUninit::zeroed().assume_init() };
    // SAFETY: both pointers are valid sigaction structs; SIGBUS is a valid signal.
    if unsafe { libc::sigaction(libc::SIGBUS, &action, &mut previous) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let _ = PREVIOUS.set(previous);
    Ok(())
}

/// The SIGBUS handler.
extern "C" fn on_sigbus(
    signal: libc::c_int,
    info: *mut libc::siginfo_t,
    context: *mut libc::c_void,
) {
    // SAFETY: errno is thread-local; the interrupted code must find it unchanged.
    let saved_errno = unsafe { *libc::__errno_location() };
    if !serve(info, context) {
        chain(signal, info, context);
    }
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = saved_errno };
}

/// Serves the fault if it is a userfaultfd SIGBUS in a registered region.
fn serve(info: *mut libc::siginfo_t, context: *mut libc::c_void) -> bool {
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers.
    let info = unsafe { &*info };
    // userfaultfd's VM_FAULT_SIGBUS is BUS_ADRERR; a poisoned page is BUS_MCEERR_AR
    // (that one must reach the program), and a `kill` has si_code <= 0.
    if info.si_code != libc::BUS_ADRERR {
        return false;
    }
    // SAFETY: for a fault-raised SIGBUS, si_addr is the faulting address.
    let address = unsafe { info.si_addr() } as usize;
    let Some((write, present)) = fault_direction(context) else {
        return false;
    };
    for slot in TABLE.iter() {
        slot.users.fetch_add(1, SeqCst);
        let region = slot.region.load(SeqCst);
        // SAFETY: a non-null pointer stays valid while `users` counts us (Registration
        // waits for zero after clearing it, and holds an Arc until then).
        let served =
            !region.is_null() && unsafe { serve_in(slot, &*region, address, write, present) };
        slot.users.fetch_sub(1, SeqCst);
        if served {
            return true;
        }
    }
    false
}

/// Resolves a fault at `address` if it lies in `region` (in `slot`, which counts us in
/// its users) and is a userfaultfd fault.
fn serve_in(slot: &Slot, region: &Region, address: usize, write: bool, present: bool) -> bool {
    if region.page_index(address).is_none() {
        return false;
    }
    if region.is_poison_marker(address) {
        // A page udax poisoned after a store failure: the program's SIGBUS. (Serving it
        // would fail, poison and re-raise forever.) Returning false chains it.
        return false;
    }
    let fault = Fault {
        address: address & !(PAGE_SIZE - 1),
        write,
        write_protect: present && write,
    };
    // A range being read ahead: wait for it (before taking the staging buffer, which
    // another thread's fault may need meanwhile), then serve as usual (a wake, if it is in).
    let continues = read_ahead::continues_run(region, &fault);
    read_ahead::wait_for_reader(region, &fault);
    let mut page = [0u8; PAGE_SIZE];
    let mut staged = Staged::claim(slot);
    let scratch = match staged.as_mut() {
        Some(staged) => staged.bytes(),
        None => &mut page[..],
    };
    // No events are read in-thread: an EAGAIN fails the fault (nothing retries it).
    let _ = fault::resolve(region, &fault, scratch, false);
    if continues {
        // After the fault: the thread reads ahead of it, not into it.
        read_ahead::ask_after(region, &fault);
    }
    true
}

/// A slot's staging buffer, held by this handler until dropped.
struct Staged<'a> {
    slot: &'a Slot,
    buffer: *mut u8,
}

impl<'a> Staged<'a> {
    /// The buffer of `slot` (whose users count us), unless it has none or another
    /// handler holds it (another thread's fault, or this thread's, interrupted by a
    /// fault on another region: lock-free, so never a deadlock).
    fn claim(slot: &'a Slot) -> Option<Staged<'a>> {
        let buffer = slot.staging.load(SeqCst);
        if buffer.is_null() || slot.staging_busy.swap(true, SeqCst) {
            return None;
        }
        Some(Staged { slot, buffer })
    }

    /// The buffer's bytes.
    fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: `buffer` is the base of a live, writable reservation of STAGING bytes
        // (it stays mapped while the slot's users count us, and the registration drops
        // it only after clearing the slot), and the busy flag we set makes this the only
        // reference to it until we drop.
        unsafe { std::slice::from_raw_parts_mut(self.buffer, STAGING) }
    }
}

impl Drop for Staged<'_> {
    fn drop(&mut self) {
        self.slot.staging_busy.store(false, SeqCst);
    }
}

/// (write, page present) from the x86-64 page-fault error code (bit 1: write; bit 0:
/// protection violation on a present page).
#[cfg(target_arch = "x86_64")]
fn fault_direction(context: *mut libc::c_void) -> Option<(bool, bool)> {
    if context.is_null() {
        return None;
    }
    // SAFETY: for SA_SIGINFO handlers the third argument is the thread's ucontext_t.
    let context = unsafe { &*(context as *const libc::ucontext_t) };
    let code = context.uc_mcontext.gregs[libc::REG_ERR as usize];
    Some((code & 2 != 0, code & 1 != 0))
}

#[cfg(not(target_arch = "x86_64"))]
fn fault_direction(_context: *mut libc::c_void) -> Option<(bool, bool)> {
    None
}

/// Hands the signal to the program's previous handler, or to the default action.
fn chain(signal: libc::c_int, info: *mut libc::siginfo_t, context: *mut libc::c_void) {
    let Some(previous) = PREVIOUS.get() else {
        return;
    };
    let handler = previous.sa_sigaction;
    if handler == libc::SIG_DFL || handler == libc::SIG_IGN {
        // Restore the default and return: a fault re-executes and dies of SIGBUS, as it
        // would have without udax; a sent signal is raised again once we return.
        // SAFETY: sigaction and raise are async-signal-safe; `previous` is valid.
        unsafe {
            let mut default: libc::sigaction = MaybeUninit::zeroed().assume_init();
            default.sa_sigaction = libc::SIG_DFL;
            libc::sigaction(signal, &default, ptr::null_mut());
            // SAFETY: `info` is the valid siginfo of this signal.
            if (*info).si_code <= 0 {
                libc::raise(signal);
            }
        }
        return;
    }
    if previous.sa_flags & libc::SA_SIGINFO != 0 {
        // SAFETY: the program installed this function as an SA_SIGINFO handler.
        let function: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
            unsafe { std::mem::transmute(handler) };
        function(signal, info, context);
    } else {
        // SAFETY: the program installed this function as a plain handler.
        let function: extern "C" fn(libc::c_int) = unsafe { std::mem::transmute(handler) };
        function(signal);
    }
}
