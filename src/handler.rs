//! Handler threads (the fault context): read userfaultfd events and hand each to the
//! fault policy; stop cleanly on request.
//!
//! Each thread polls the uffd and a stop eventfd. Several threads may read the same uffd;
//! each message goes to one of them, and two faults on one page serialize on the entry
//! lock inside `fault::resolve`.

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
    /// Starts `count` threads serving faults of `shared`.
    pub(crate) fn start(shared: &Arc<Shared>, count: usize) -> Result<Handlers, Error> {
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
            let thread = std::thread::Builder::new()
                .name(format!("udax-fault-{number}"))
                .spawn(move || serve(&shared, stop_fd))
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
