//! Handler threads (the fault context): read a userfaultfd's events and hand each fault
//! to the engine, for the region holding its address; stop cleanly on request.
//!
//! Each thread polls the uffd and a stop eventfd, or, if its threads live as long as the
//! process (a pool's: [`Lives::WithProcess`]) and the uffd blocks, sleeps in read(2): one
//! syscall a fault instead of a poll and a read (see [`Uffd::wait_events`]). Several threads may read the same uffd,
//! through one shared `events::Reader` (which applies the events in order); each message
//! goes to one of them, and two faults on one page serialize on the entry lock inside
//! `fault::resolve`. A fault that finds the mm changing (EAGAIN: an event is queued) is
//! retried after the events are read.
//!
//! With more than one thread, thread `i` is pinned to the `i`-th CPU the process may run
//! on. A fault wakes every thread waiting on the uffd; the one on the faulting thread's CPU
//! runs as soon as the faulting thread blocks, and resolves the fault without a wake
//! crossing CPUs (the others wake, find nothing, and sleep again: back in poll(2) after
//! a read that finds nothing, or, sleeping in read(2), without leaving the kernel). On this kind of
//! machine that is 3.7x cheaper than one unpinned thread: a wake across vCPUs costs
//! ~55 µs, and `udax bench` measured sparse reads at 18.7 µs a fault against 69.9 µs.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::engine::fault::{self, Outcome};
use crate::engine::read_ahead;
use crate::engine::region::{Region, region_of};
use crate::error::Error;
use crate::resolve::events::Reader;
use crate::resolve::failure::{self, Next};
use crate::resolve::scratch::Scratch;
use crate::sys::cpu::{allowed_cpus, pin_to};
use crate::sys::uffd::{Fault, Uffd, UffdMsg};

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

/// What handler threads do with a fault at an address no region of their table holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Unknown {
    /// Poison the page: the access gets SIGBUS. For an adopted uffd, whose creator may
    /// have registered more memory than it handed over: nobody will ever serve it.
    Poison,
    /// Wake the faulting thread, which retries. For the process's shared uffd, where such
    /// a fault can only be one that raced the close of its mapping (the caller's bug): the
    /// retry finds the range unmapped (SIGSEGV), or mapped again by a new mapping, which
    /// serves it. Poisoning would hit that new mapping's page.
    Wake,
}

/// The regions a set of handler threads serves, sorted by address; regions come and go
/// while the threads run (mappings of the process-wide pool).
pub(crate) struct Table {
    regions: RwLock<Vec<Arc<Region>>>,
    unknown: Unknown,
    /// Set once a thread gave up on the uffd (`failure::give_up`): no region may join,
    /// since nobody would serve it.
    closed: AtomicBool,
}

impl Table {
    /// A table of `regions` (any order).
    pub(crate) fn new(mut regions: Vec<Arc<Region>>, unknown: Unknown) -> Table {
        regions.sort_by_key(|region| region.base());
        Table {
            regions: RwLock::new(regions),
            unknown,
            closed: AtomicBool::new(false),
        }
    }

    /// Adds a region (whose range overlaps no other's); refused (false) once the table
    /// is closed.
    pub(crate) fn insert(&self, region: Arc<Region>) -> bool {
        let mut regions = self.regions.write().unwrap_or_else(|e| e.into_inner());
        // Checked under the lock that `close` takes: no region joins after it.
        if self.closed.load(Ordering::Relaxed) {
            return false;
        }
        let at = regions.partition_point(|r| r.base() < region.base());
        regions.insert(at, region);
        true
    }

    /// Whether a thread gave up on the table's uffd.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    /// Closes the table (no region joins from now on) and returns its regions.
    fn close(&self) -> Vec<Arc<Region>> {
        let regions = self.regions.write().unwrap_or_else(|e| e.into_inner());
        self.closed.store(true, Ordering::Relaxed);
        regions.clone()
    }

    /// The regions now.
    fn snapshot(&self) -> Vec<Arc<Region>> {
        self.regions
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Removes the region (by identity); faults on its range are then `unknown`.
    pub(crate) fn remove(&self, region: &Arc<Region>) {
        let mut regions = self.regions.write().unwrap_or_else(|e| e.into_inner());
        regions.retain(|r| !Arc::ptr_eq(r, region));
    }

    /// The regions, read-locked (see `serve`).
    fn read(&self) -> RwLockReadGuard<'_, Vec<Arc<Region>>> {
        self.regions.read().unwrap_or_else(|e| e.into_inner())
    }
}

/// How long a set of handler threads runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Lives {
    /// Until [`Handlers::stop`] (or drop).
    UntilStopped,
    /// As long as the process (a pool's): the threads may sleep in read(2), where no stop
    /// reaches them, and `stop` leaves them running.
    WithProcess,
}

/// The running handler threads of one uffd.
pub(crate) struct Handlers {
    threads: Vec<JoinHandle<()>>,
    stop: OwnedFd,
    /// The threads sleep in read(2) (see [`Lives::WithProcess`]): they cannot be stopped.
    sleep_in_read: bool,
    /// The process that started the threads. A forked child inherits this value but not
    /// the threads, and shares the stop eventfd with the parent: it must never signal it.
    owner: u32,
}

impl Handlers {
    /// Starts `count` threads serving the faults `uffd` reports in the regions of
    /// `table`, pinned one per CPU if several, reading through `reader`, for as long as
    /// `lives` says.
    pub(crate) fn start(
        uffd: &Arc<Uffd>,
        table: &Arc<Table>,
        count: usize,
        reader: &Arc<Reader>,
        lives: Lives,
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
        // Sleeping in read(2) needs a blocking uffd, and a reader that takes no lock (one
        // with events holds its lock while it reads: a sleeper would hold it for good).
        let sleep_in_read = lives == Lives::WithProcess && uffd.blocks() && !reader.is_ordered();
        let mut handlers = Handlers {
            threads: Vec::new(),
            stop,
            sleep_in_read,
            owner: std::process::id(),
        };
        // Each thread says when it runs: std sets a new thread up (its signal stack) only
        // once it is scheduled, so returning before that would leave the setup, and its
        // failure, to some later moment, under whatever limits the program set by then.
        let (started, running) = std::sync::mpsc::channel();
        for number in 0..count.max(1) {
            let (uffd, table) = (Arc::clone(uffd), Arc::clone(table));
            let (reader, started) = (Arc::clone(reader), started.clone());
            let stop_fd = handlers.stop.as_raw_fd();
            let cpu = (!cpus.is_empty()).then(|| cpus[number % cpus.len()]);
            let thread = std::thread::Builder::new()
                .name(format!("udax-fault-{number}"))
                .spawn(move || {
                    if let Some(cpu) = cpu {
                        pin_to(cpu);
                    }
                    let _ = started.send(());
                    serve(&uffd, &table, &reader, stop_fd, sleep_in_read)
                })
                .map_err(Error::thread_spawn)?;
            handlers.threads.push(thread);
        }
        drop(started);
        for _ in 0..handlers.threads.len() {
            // An error means a thread ended before saying so (it cannot: it would abort).
            let _ = running.recv();
        }
        Ok(handlers)
    }

    /// Tells every thread to stop and waits for them. Faults still queued are served
    /// first by the poll loop only if they arrive before the stop is seen; callers stop
    /// handlers only when no thread touches the regions any more.
    pub(crate) fn stop(&mut self) {
        if self.owner != std::process::id() || self.sleep_in_read {
            // A forked child's copy: the threads are the parent's, and so is the eventfd.
            // Or threads asleep in read(2), which live with the process.
            return;
        }
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

/// A fault at an address the uffd reports but no region holds: see [`Unknown`].
fn refuse(uffd: &Uffd, address: usize, unknown: Unknown) {
    let page = address & !(crate::PAGE_SIZE - 1);
    if unknown == Unknown::Wake {
        let _ = uffd.wake(page, crate::PAGE_SIZE);
        return;
    }
    // SAFETY: the kernel just reported a missing fault at this page, so it is registered
    // with this uffd, whose creator handed its serving to us (`Adopted::new`'s contract),
    // and it holds nothing: poisoning it changes no byte anyone relies on.
    if unsafe { uffd.poison(page, crate::PAGE_SIZE) }.is_err() {
        // Present after all (or a write-protect fault): the access can go on.
        let _ = uffd.wake(page, crate::PAGE_SIZE);
    }
}

/// One handler thread's loop, waiting in read(2) if `sleep_in_read`, else in poll(2).
/// `stop_fd` outlives the thread: `Handlers` joins before closing it. A failure of the
/// loop itself is handled by `failure::on_serve_error`: the thread retries, or gives up
/// on the uffd so that no access waits for it.
fn serve(uffd: &Uffd, table: &Table, reader: &Reader, stop_fd: libc::c_int, sleep_in_read: bool) {
    let mut messages = [UffdMsg::default(); BATCH];
    let mut faults = VecDeque::with_capacity(BATCH);
    let mut scratch = Scratch::new();
    let scratch = scratch.bytes();
    let mut failures = 0;
    loop {
        let read = if sleep_in_read {
            serve_waited(uffd, table, reader, &mut messages, &mut faults, scratch)
        } else {
            match wait_for_events(uffd, stop_fd) {
                Ok(false) => return,
                // The table is read-locked while its faults are served: a region stays in it
                // (and alive) for its faults, and joining or leaving waits for them, not the
                // other way round (serving a fault never takes the table's lock).
                Ok(true) => {
                    let regions = table.read();
                    serve_batch(
                        uffd,
                        &regions,
                        table.unknown,
                        reader,
                        &mut messages,
                        &mut faults,
                        scratch,
                    )
                }
                Err(error) => Err(error),
            }
        };
        let Err(error) = read else {
            failures = 0;
            continue;
        };
        failures += 1;
        match failure::on_serve_error(&table.snapshot(), &error, failures) {
            Next::Retry(delay) if !failure::wait_for_stop(stop_fd, Some(delay)) => {}
            Next::Retry(_) => return,
            Next::GiveUp => {
                failure::give_up(&table.close(), &error);
                failure::wait_for_stop(stop_fd, None);
                return;
            }
        }
    }
}

/// Reads the pending messages through `reader` (which applies the events among them) and
/// serves the faults, retrying one that finds the memory changing (EAGAIN: an event is
/// queued) after reading the events again.
fn serve_batch(
    uffd: &Uffd,
    regions: &[Arc<Region>],
    unknown: Unknown,
    reader: &Reader,
    messages: &mut [UffdMsg],
    faults: &mut VecDeque<Fault>,
    scratch: &mut [u8],
) -> Result<(), Error> {
    if let Some(error) = failure::injected() {
        return Err(error);
    }
    reader.read(uffd, regions, messages, faults)?;
    serve_faults(uffd, regions, unknown, reader, messages, faults, scratch);
    Ok(())
}

/// Sleeps in read(2) until the uffd has messages, then serves their faults as
/// `serve_batch` does. The table is read-locked only after the read: a region joins or
/// leaves without waiting for a sleeping thread. Faults read before a failure (injected
/// after the read, as a poll's thread fails before its read) are kept, and served first
/// on the next turn instead of waiting.
fn serve_waited(
    uffd: &Uffd,
    table: &Table,
    reader: &Reader,
    messages: &mut [UffdMsg],
    faults: &mut VecDeque<Fault>,
    scratch: &mut [u8],
) -> Result<(), Error> {
    if faults.is_empty() {
        let count = uffd.wait_events(messages)?;
        reader.take_waited(&table.read(), &messages[..count], faults);
    }
    if let Some(error) = failure::injected() {
        return Err(error);
    }
    serve_faults(
        uffd,
        &table.read(),
        table.unknown,
        reader,
        messages,
        faults,
        scratch,
    );
    Ok(())
}

/// Serves the `faults` read, retrying one that finds the memory changing (EAGAIN: an
/// event is queued) after reading the events again; a fault on a range being read ahead
/// is left to its reader. Then, if a fault continued a sequential run of 2 MiB faults,
/// reads ahead of it (`engine::read_ahead`): the other handler threads serve the faults
/// that come meanwhile.
fn serve_faults(
    uffd: &Uffd,
    regions: &[Arc<Region>],
    unknown: Unknown,
    reader: &Reader,
    messages: &mut [UffdMsg],
    faults: &mut VecDeque<Fault>,
    scratch: &mut [u8],
) {
    // The region whose sequential run a fault continued: read ahead of it once the
    // queue is empty (the faults queued first are served first).
    let mut run = None;
    while let Some(fault) = faults.pop_front() {
        let Some(region) = region_of(regions, fault.address) else {
            refuse(uffd, fault.address, unknown);
            continue;
        };
        if read_ahead::continues_run(region, &fault) {
            run = Some(region);
        }
        if read_ahead::is_being_read(region, &fault) {
            continue; // its reader wakes it
        }
        let (deadline, mut pause) = (Instant::now() + RETRY_FOR, Duration::from_micros(10));
        while fault::resolve(region, &fault, scratch, Instant::now() < deadline) == Outcome::Again {
            // Read the queued events (faults read meanwhile wait their turn here).
            if let Ok(0) = reader.read(uffd, regions, messages, faults) {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(1));
            }
        }
    }
    if let Some(region) = run {
        read_ahead::read_ahead(region, scratch);
    }
}

/// Waits until `uffd` has events (true; also when interrupted, to read nothing) or
/// `stop_fd` is readable (false), or poll fails.
fn wait_for_events(uffd: &Uffd, stop_fd: libc::c_int) -> Result<bool, Error> {
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
    // SAFETY: `fds` is an array of two initialised pollfd structs.
    let ready = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
    if ready < 0 {
        let source = io::Error::last_os_error();
        if source.raw_os_error() == Some(libc::EINTR) {
            return Ok(true);
        }
        return Err(Error::Os {
            op: "poll(userfaultfd)",
            source,
        });
    }
    Ok(fds[1].revents == 0)
}
