//! Handler threads (the fault context): read a userfaultfd's events and hand each fault
//! to the engine, for the region holding its address; stop cleanly on request.
//!
//! Each thread polls the uffd and a stop eventfd. Several threads may read the same uffd,
//! through one shared `events::Reader` (which applies the events in order); each message
//! goes to one of them, and two faults on one page serialize on the entry lock inside
//! `fault::resolve`. A fault that finds the mm changing (EAGAIN: an event is queued) is
//! retried after the events are read.
//!
//! With more than one thread, thread `i` is pinned to the `i`-th CPU the process may run
//! on. A fault wakes every thread polling the uffd; the one on the faulting thread's CPU
//! runs as soon as the faulting thread blocks, and resolves the fault without a wake
//! crossing CPUs (the others wake, find nothing, and sleep again). On this kind of
//! machine that is 3.7x cheaper than one unpinned thread: a wake across vCPUs costs
//! ~55 µs, and `udax bench` measured sparse reads at 18.7 µs a fault against 69.9 µs.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::HUGE_PAGE_SIZE;
use crate::engine::fault::{self, Outcome};
use crate::engine::region::{Region, region_of};
use crate::error::Error;
use crate::resolve::events::Reader;
use crate::sys::cpu::{allowed_cpus, pin_to};
use crate::sys::uffd::{Uffd, UffdMsg};

/// Messages read per `read(2)` of the uffd.
const BATCH: usize = 64;

/// How long a fault is retried after EAGAINs before it fails. Each retry reads the queued
/// events first; the EAGAIN ends once the thread that raised the event (the VMM's, in
/// `madvise`) has run again after its event was read, which on a busy machine can take a
/// while: the retries back off from 10 µs to 1 ms.
const RETRY_FOR: Duration = Duration::from_secs(10);

/// The default number of handler threads: one per CPU the process may use, at most 4
/// (every fault wakes them all, so more would cost more wasted wakes than they save).
pub(crate) fn default_count() -> usize {
    allowed_cpus().len().clamp(1, 4)
}

/// The running handler threads of one uffd.
pub(crate) struct Handlers {
    threads: Vec<JoinHandle<()>>,
    stop: OwnedFd,
}

impl Handlers {
    /// Starts `count` threads serving the faults `uffd` reports in `regions` (sorted by
    /// address), pinned one per CPU if several, reading through `reader`.
    pub(crate) fn start(
        uffd: &Arc<Uffd>,
        regions: &Arc<[Arc<Region>]>,
        count: usize,
        reader: &Arc<Reader>,
    ) -> Result<Handlers, Error> {
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
        for number in 0..count.max(1) {
            let (uffd, regions) = (Arc::clone(uffd), Arc::clone(regions));
            let reader = Arc::clone(reader);
            let stop_fd = handlers.stop.as_raw_fd();
            let cpu = (!cpus.is_empty()).then(|| cpus[number % cpus.len()]);
            let thread = std::thread::Builder::new()
                .name(format!("udax-fault-{number}"))
                .spawn(move || {
                    if let Some(cpu) = cpu {
                        pin_to(cpu);
                    }
                    serve(&uffd, &regions, &reader, stop_fd)
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
    /// handlers only when no thread touches the regions any more.
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

/// A fault at an address the uffd reports but no region holds (memory registered with an
/// adopted uffd beyond the ranges handed over): nobody can serve it, so the access gets
/// SIGBUS rather than waiting forever.
fn refuse(uffd: &Uffd, address: usize) {
    let page = address & !(crate::PAGE_SIZE - 1);
    // SAFETY: the kernel just reported a missing fault at this page, so it is registered
    // with this uffd, whose creator handed its serving to us (`Adopted::new`'s contract),
    // and it holds nothing: poisoning it changes no byte anyone relies on.
    if unsafe { uffd.poison(page, crate::PAGE_SIZE) }.is_err() {
        // Present after all (or a write-protect fault): the access can go on.
        let _ = uffd.wake(page, crate::PAGE_SIZE);
    }
}

/// One handler thread's loop. `stop_fd` outlives the thread: `Handlers` joins before
/// closing it.
fn serve(uffd: &Uffd, regions: &[Arc<Region>], reader: &Reader, stop_fd: libc::c_int) {
    let mut messages = [UffdMsg::default(); BATCH];
    let mut faults = VecDeque::with_capacity(BATCH);
    // Room for a 2 MiB fill (touched only by wide faults, so it costs no memory else).
    let mut scratch = vec![0u8; HUGE_PAGE_SIZE];
    let mut fds = [
        libc::pollfd {
            fd: uffd.as_fd().as_raw_fd(),
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
        if let Err(error) = reader.read(uffd, regions, &mut messages, &mut faults) {
            if let Some(region) = regions.first() {
                region.record_error(0, &error.into());
            }
            return;
        }
        while let Some(fault) = faults.pop_front() {
            let Some(region) = region_of(regions, fault.address) else {
                refuse(uffd, fault.address);
                continue;
            };
            let (deadline, mut pause) = (Instant::now() + RETRY_FOR, Duration::from_micros(10));
            while fault::resolve(region, &fault, &mut scratch, Instant::now() < deadline)
                == Outcome::Again
            {
                // Read the queued events (faults read meanwhile wait their turn here).
                if let Ok(0) = reader.read(uffd, regions, &mut messages, &mut faults) {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(1));
                }
            }
        }
    }
}
