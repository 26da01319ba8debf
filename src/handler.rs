//! Handler threads (the fault context): read userfaultfd events and hand each to the
//! fault policy; stop cleanly on request.
//!
//! Each thread polls the uffd and a stop eventfd. Several threads may read the same uffd;
//! each message goes to one of them, and two faults on one page serialize on the entry
//! lock inside `fault::resolve`.
//!
//! With more than one thread, thread `i` is pinned to the `i`-th CPU the process may run
//! on. A fault wakes every thread polling the uffd; the one on the faulting thread's CPU
//! runs as soon as the faulting thread blocks, and resolves the fault without a wake
//! crossing CPUs (the others wake, find nothing, and sleep again). On this kind of
//! machine that is 3.7x cheaper than one unpinned thread: a wake across vCPUs costs
//! ~55 us (PERF-NOTES.md), and `udax bench` measured sparse reads at 18.7 us a fault
//! against 69.9 us.

use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::error::Error;
use crate::fault;
use crate::mapping::Shared;
use crate::uffd::{Fault, UffdMsg};

/// Messages read per `read(2)` of the uffd.
const BATCH: usize = 64;

/// The running handler threads of one mapping.
pub(crate) struct Handlers {
    threads: Vec<JoinHandle<()>>,
    stop: OwnedFd,
}

impl Handlers {
    /// Starts `count` threads serving faults of `shared` (pinned one per CPU if several).
    pub(crate) fn start(shared: &Arc<Shared>, count: usize) -> Result<Handlers, Error> {
        let cpus = if count > 1 {
            allowed_cpus()
        } else {
            Vec::new()
        };
        // SAFETY: eventfd(2) takes an initial value and flags, returns a new fd or -1.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            let source = io::Error::last_os_error();
            return Err(Error::Os {
                op: "eventfd",
                source,
            });
        }
        // SAFETY: eventfd just returned this fd; nothing else owns it.
        let stop = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut handlers = Handlers {
            threads: Vec::new(),
            stop,
        };
        for number in 0..count {
            let shared = Arc::clone(shared);
            let stop_fd = handlers.stop.as_raw_fd();
            let cpu = (!cpus.is_empty()).then(|| cpus[number % cpus.len()]);
            let thread = std::thread::Builder::new()
                .name(format!("udax-fault-{number}"))
                .spawn(move || {
                    if let Some(cpu) = cpu {
                        pin_to(cpu);
                    }
                    serve(&shared, stop_fd)
                })
                .map_err(|source| Error::Os {
                    op: "spawn handler thread",
                    source,
                })?;
            handlers.threads.push(thread);
        }
        Ok(handlers)
    }

    /// Tells every thread to stop and waits for them. Faults still queued are served
    /// first by the poll loop only if they arrive before the stop is seen; callers stop
    /// handlers only when no thread touches the mapping any more.
    pub(crate) fn stop(&mut self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from `one` to the eventfd we own.
        unsafe { libc::write(self.stop.as_raw_fd(), (&one as *const u64).cast(), 8) };
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

impl Drop for Handlers {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The CPUs this process may run on (empty if that cannot be read).
pub(crate) fn allowed_cpus() -> Vec<usize> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; sched_getaffinity fills it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a writable cpu_set_t of the size passed.
    if unsafe { libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set) } != 0 {
        return Vec::new();
    }
    (0..libc::CPU_SETSIZE as usize)
        // SAFETY: `cpu` is below CPU_SETSIZE, inside `set`.
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect()
}

/// Pins the calling thread to `cpu` (best effort: unpinned is only slower).
fn pin_to(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes inside it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `cpu` came from `allowed_cpus`, below CPU_SETSIZE.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: `set` is a valid cpu_set_t of the size passed; 0 is the calling thread.
    unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) };
}

/// One handler thread's loop. `stop_fd` outlives the thread: `Handlers` joins before
/// closing it.
fn serve(shared: &Shared, stop_fd: libc::c_int) {
    let mut messages = [UffdMsg::default(); BATCH];
    // Room for a 2 MiB fill (touched only by wide faults, so it costs no memory else).
    let mut scratch = vec![0u8; crate::HUGE_PAGE_SIZE];
    let mut fds = [
        libc::pollfd {
            fd: shared.uffd.as_fd().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: stop_fd,
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    loop {
        // SAFETY: `fds` is an array of two initialised pollfd structs.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if ready < 0 {
            if io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return;
        }
        if fds[1].revents != 0 {
            return;
        }
        let count = match shared.uffd.read_events(&mut messages) {
            Ok(count) => count,
            Err(error) => {
                shared.record_error(0, &error.into());
                return;
            }
        };
        for message in &messages[..count] {
            if let Some(fault) = Fault::from_msg(message) {
                fault::resolve(shared, &fault, &mut scratch);
            }
        }
    }
}
