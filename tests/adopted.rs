//! An adopted region: memory another process reserved, registered with its own
//! userfaultfd (missing faults only, as a Firecracker VMM does) and handed over a Unix
//! socket with SCM_RIGHTS, is served by udax's engine: holes are zero pages (no memory),
//! data comes from the store at the right offsets, kernel-side accesses are served, and a
//! page the store cannot read gets SIGBUS in the other process and an error from `close`.

mod common;

use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{FaultyStore, PAGE, child_case, peek, poke, say};
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, recvmsg, sendmsg,
};
use udax::{Adopted, AdoptedRange, Error, MemStore, Options, Store, StoreError};

/// The child's two ranges, as (pages, first store page): laid back to back in the store,
/// as a VMM lays its memory regions in a snapshot file.
const RANGES: [(usize, usize); 2] = [(1024, 0), (512, 1024)];
/// Store pages that hold data (the rest are holes).
const DATA: [usize; 13] = [10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 700, 1024, 1025];
/// A data page the store fails to read (range 1, page 6).
const FAILING: usize = 1030;
/// How long the parent waits for the child at each step.
const PATIENCE: Duration = Duration::from_secs(30);

const SOCKET_ENV: &str = "UDAX_ADOPT_SOCKET";

/// The byte at `offset` of a data page of the store (page number in the low bits).
fn pattern(page: usize, offset: usize) -> u8 {
    (page as u8) ^ (offset as u8) ^ 0x5a
}

/// The store: data pages hold the pattern, the failing page is data too.
fn store() -> Arc<FaultyStore<MemStore>> {
    let pages: usize = RANGES.iter().map(|(pages, _)| pages).sum();
    let inner = MemStore::new((pages * PAGE) as u64);
    for page in DATA.into_iter().chain([FAILING]) {
        let bytes: Vec<u8> = (0..PAGE).map(|offset| pattern(page, offset)).collect();
        inner
            .write_at((page * PAGE) as u64, &bytes)
            .expect("seeding a data page");
    }
    let store = FaultyStore::new(inner);
    store.fail_read.page(FAILING as u64);
    Arc::new(store)
}

#[test]
fn an_adopted_region_serves_another_process() {
    if let Some(case) = child_case() {
        assert_eq!(case, "adopted");
        return child();
    }
    if !common::require_uffd() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("uffd.sock");
    let listener = UnixListener::bind(&socket).expect("bind the handler's socket");
    let child = spawn_child("an_adopted_region_serves_another_process", &socket);
    let (child, stream) = accept(&listener, child);
    let (uffd, ranges) = receive(&stream);
    let store = store();
    let served: Arc<dyn Store> = store.clone();
    // SAFETY: the uffd and its ranges are the child's memory, handed over for serving.
    let adopted = unsafe { Adopted::new(uffd, &ranges, served, Options::default()) }
        .unwrap_or_else(|e| panic!("adopting the child's ranges: {e}"));
    assert_eq!(adopted.ranges().len(), 2);
    (&stream).write_all(b"g").expect("telling the child to go");
    let output = wait(child);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("CHECKS PASSED"),
        "the child's checks failed: {}",
        common::describe(&output)
    );
    assert_eq!(
        output.status.signal(),
        Some(libc::SIGBUS),
        "the unreadable page must kill the child with SIGBUS: {}",
        common::describe(&output)
    );
    let stats = adopted.stats();
    // Range 0: 1,013 holes read (zero pages) and 11 data pages; range 1: one hole written
    // (the zero page, then the kernel's own copy-on-write), one data page read by the
    // kernel (write(2) from it), one that failed.
    assert_eq!(
        (stats.zero_faults, stats.read_faults, stats.sigbus_delivered),
        (1013 + 1, 11 + 1, 1),
        "{stats:?}"
    );
    assert_eq!(stats.bytes_read, 12 * PAGE as u64, "{stats:?}");
    assert_eq!(
        (
            stats.write_faults,
            stats.mkwrite_faults,
            stats.pages_written_back
        ),
        (0, 0, 0),
        "another process's writes are its own: {stats:?}"
    );
    match adopted.close() {
        Err(Error::FaultFailed {
            offset,
            source: StoreError::Io { op: "read", .. },
        }) => assert_eq!(offset, (FAILING * PAGE) as u64, "the store offset"),
        other => panic!("close must report the failed read: {other:?}"),
    }
}

/// Bad input is an error naming it, never a panic or a hang.
#[test]
fn adopting_something_that_cannot_be_served_is_a_clear_error() {
    let store: Arc<dyn Store> = Arc::new(MemStore::new(1 << 20));
    let range = |address: usize, len: usize, offset: u64| AdoptedRange {
        address,
        len,
        offset,
        page_size: PAGE,
    };
    let adopt = |fd: OwnedFd, ranges: &[AdoptedRange], options: Options| {
        // SAFETY: nothing is ever served: each call fails before a region exists (asserted).
        unsafe { Adopted::new(fd, ranges, store.clone(), options) }.map(|_| ())
    };
    let file = || OwnedFd::from(std::fs::File::open("/proc/self/status").expect("a file"));
    let fine = [range(0x7000_0000_0000, 8 * PAGE, 0)];
    match adopt(file(), &fine, Options::default()) {
        Err(Error::Uffd(error)) => {
            assert!(error.to_string().contains("not a userfaultfd"), "{error}")
        }
        other => panic!("a plain file is not a userfaultfd: {other:?}"),
    }
    let cases: [(&[AdoptedRange], Options, &str); 5] = [
        (
            &[range(0x7000_0000_0000, 4 * PAGE, 1 << 20)],
            Options::default(),
            "past the end",
        ),
        (
            &[range(0x7000_0000_0100, PAGE, 0)],
            Options::default(),
            "multiples of 4096",
        ),
        (
            &[
                range(0x7000_0000_0000, 4 * PAGE, 0),
                range(0x7000_0000_2000, PAGE, 0),
            ],
            Options::default(),
            "overlaps",
        ),
        (&[], Options::default(), "no range"),
        (&fine, Options::default().budget(1 << 20), "budget"),
    ];
    for (ranges, options, needle) in cases {
        let error = adopt(file(), ranges, options).expect_err(needle);
        assert!(
            error.to_string().contains(needle),
            "{needle:?} not in {error}"
        );
    }
}

/// The child: a VMM's part. Reserves two ranges, opens a userfaultfd (EVENT_REMOVE only,
/// as Firecracker does), registers them for missing faults, sends the uffd and the ranges,
/// waits for the go, then checks what it reads; last, touches the unreadable page.
fn child() {
    common::no_core_dumps();
    let socket = std::env::var(SOCKET_ENV).expect("the socket path");
    let mut stream = UnixStream::connect(socket).expect("connecting to the handler");
    let bases: Vec<usize> = RANGES
        .iter()
        .map(|(pages, _)| reserve(pages * PAGE))
        .collect();
    let uffd = open_uffd();
    for (base, (pages, _)) in bases.iter().zip(RANGES) {
        register(&uffd, *base, pages * PAGE);
    }
    let message: String = bases
        .iter()
        .zip(RANGES)
        .map(|(base, (pages, first))| format!("{base} {} {}\n", pages * PAGE, first * PAGE))
        .collect();
    send(&stream, message.as_bytes(), &uffd);
    let mut go = [0u8; 1];
    stream.read_exact(&mut go).expect("waiting for the go");
    check_range_0(bases[0] as *mut u8);
    check_range_1(bases[1] as *mut u8);
    say("CHECKS PASSED");
    // Range 1, page 6: the store fails; the access must die of SIGBUS, not hang.
    // SAFETY: inside range 1, which this process reserved.
    let byte = unsafe { peek(bases[1] as *const u8, (FAILING - RANGES[1].1) * PAGE) };
    say(&format!("SURVIVED reading {byte}"));
}

/// Every page of range 0 read once: holes are zeros and take no memory, data pages hold
/// the store's bytes of their own store page.
fn check_range_0(base: *mut u8) {
    let (pages, first) = RANGES[0];
    for page in 0..pages {
        for offset in [0, PAGE - 1] {
            // SAFETY: inside range 0, which this process reserved.
            let byte = unsafe { peek(base, page * PAGE + offset) };
            let store_page = first + page;
            let expected = if DATA.contains(&store_page) {
                pattern(store_page, offset)
            } else {
                0
            };
            assert_eq!(byte, expected, "range 0, page {page}, offset {offset}");
        }
    }
    let data_pages = DATA.iter().filter(|&&page| page < pages).count() as u64;
    let rss = common::mapping_rss_kib(base, pages * PAGE);
    assert_eq!(rss, data_pages * 4, "only the data pages hold memory");
    // A store to a zero page is the kernel's own copy-on-write: the handler sees nothing.
    // SAFETY: inside range 0; this thread is its only user.
    unsafe { poke(base, 100 * PAGE + 5, 7) };
    // SAFETY: as above.
    assert_eq!(unsafe { peek(base, 100 * PAGE + 5) }, 7);
}

/// Range 1: a store to a never-touched hole, and a kernel-side read of a data page.
fn check_range_1(base: *mut u8) {
    let first = RANGES[1].1;
    // SAFETY: inside range 1; this thread is its only user.
    unsafe { poke(base, 10 * PAGE, 9) };
    // SAFETY: as above.
    assert_eq!(unsafe { peek(base, 10 * PAGE) }, 9);
    // write(2) from a data page this process never touched: the kernel faults on it, and
    // a handler thread must serve that fault too (the uffd is not user-mode-only).
    let (read_end, write_end) = pipe();
    // SAFETY: page 1 of range 1 lies inside the reservation; write(2) only reads it.
    let wrote = unsafe { libc::write(write_end.as_raw_fd(), base.add(PAGE).cast(), PAGE) };
    assert_eq!(
        wrote,
        PAGE as isize,
        "write(2) from the range: {}",
        last_error()
    );
    let mut bytes = vec![0u8; PAGE];
    std::fs::File::from(read_end)
        .read_exact(&mut bytes)
        .expect("reading the pipe");
    let expected: Vec<u8> = (0..PAGE).map(|offset| pattern(first + 1, offset)).collect();
    assert!(bytes == expected, "the kernel read the store's bytes");
}

fn reserve(len: usize) -> usize {
    // SAFETY: a new private anonymous mapping at an address of the kernel's choosing,
    // checked against MAP_FAILED; nothing else refers to it.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    assert_ne!(base, libc::MAP_FAILED, "mmap: {}", last_error());
    base as usize
}

/// UFFDIO_API and UFFDIO_REGISTER (linux/userfaultfd.h), as a VMM would issue them.
const UFFD_API: u64 = 0xAA;
const UFFDIO_API: u64 = 0xc018_aa3f;
const UFFDIO_REGISTER: u64 = 0xc020_aa00;
const UFFD_FEATURE_EVENT_REMOVE: u64 = 1 << 3;
const UFFDIO_REGISTER_MODE_MISSING: u64 = 1;

fn open_uffd() -> OwnedFd {
    // SAFETY: userfaultfd(2) takes only its flags; the result is checked.
    let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | libc::O_NONBLOCK) };
    assert!(fd >= 0, "userfaultfd: {}", last_error());
    // SAFETY: the syscall just returned this fd and nothing else owns it.
    let uffd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let mut api = [UFFD_API, UFFD_FEATURE_EVENT_REMOVE, 0];
    // SAFETY: UFFDIO_API reads and writes a struct uffdio_api: three u64 fields.
    let ret = unsafe { libc::ioctl(uffd.as_raw_fd(), UFFDIO_API, api.as_mut_ptr()) };
    assert_eq!(ret, 0, "UFFDIO_API: {}", last_error());
    uffd
}

fn register(uffd: &OwnedFd, base: usize, len: usize) {
    // struct uffdio_register { struct uffdio_range { start, len }, mode, ioctls }
    let mut arg = [base as u64, len as u64, UFFDIO_REGISTER_MODE_MISSING, 0];
    // SAFETY: UFFDIO_REGISTER reads and writes a struct uffdio_register (four u64s); the
    // range is this process's own reservation, served from now on by the parent.
    let ret = unsafe { libc::ioctl(uffd.as_raw_fd(), UFFDIO_REGISTER, arg.as_mut_ptr()) };
    assert_eq!(ret, 0, "UFFDIO_REGISTER: {}", last_error());
}

fn send(stream: &UnixStream, message: &[u8], uffd: &OwnedFd) {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    let fds = [uffd.as_fd()];
    assert!(control.push(SendAncillaryMessage::ScmRights(&fds)));
    let sent = sendmsg(
        stream,
        &[IoSlice::new(message)],
        &mut control,
        SendFlags::empty(),
    );
    assert_eq!(sent.expect("sendmsg"), message.len());
}

/// The parent's side of the handshake: the uffd and the ranges, in one message.
fn receive(stream: &UnixStream) -> (OwnedFd, Vec<AdoptedRange>) {
    let mut bytes = [0u8; 4096];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut buffers = [IoSliceMut::new(&mut bytes)];
    let received = recvmsg(stream, &mut buffers, &mut control, RecvFlags::empty())
        .expect("recvmsg")
        .bytes;
    let uffd = control
        .drain()
        .find_map(|message| match message {
            RecvAncillaryMessage::ScmRights(mut fds) => fds.next(),
            _ => None,
        })
        .expect("the uffd came with the message");
    let text = std::str::from_utf8(&bytes[..received]).expect("text");
    let ranges = text
        .lines()
        .map(|line| {
            let fields: Vec<u64> = line
                .split(' ')
                .map(|field| field.parse().expect("a number"))
                .collect();
            AdoptedRange {
                address: fields[0] as usize,
                len: fields[1] as usize,
                offset: fields[2],
                page_size: PAGE,
            }
        })
        .collect();
    (uffd, ranges)
}

fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two fds into the array; checked below.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: pipe2 just returned both fds; nothing else owns them.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

fn last_error() -> std::io::Error {
    std::io::Error::last_os_error()
}

fn spawn_child(test_name: &str, socket: &std::path::Path) -> Child {
    let exe = std::env::current_exe().expect("current_exe of the test binary");
    Command::new(exe)
        .args(["--exact", test_name, "--nocapture", "--test-threads=1"])
        .env(common::CHILD_ENV, "adopted")
        .env(SOCKET_ENV, socket)
        .env("RUST_BACKTRACE", "0")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning the child")
}

/// Accepts the child's connection, giving up (and killing it) after `PATIENCE`.
fn accept(listener: &UnixListener, mut child: Child) -> (Child, UnixStream) {
    listener.set_nonblocking(true).expect("non-blocking accept");
    let deadline = Instant::now() + PATIENCE;
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false).expect("blocking stream");
                return (child, stream);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("accept: {e}"),
        }
        if Instant::now() > deadline || child.try_wait().ok().flatten().is_some() {
            let _ = child.kill();
            let output = child.wait_with_output().expect("output");
            panic!("the child never connected: {}", common::describe(&output));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Waits for the child to end, killing it after `PATIENCE` (a hang fails the test).
fn wait(mut child: Child) -> std::process::Output {
    let deadline = Instant::now() + PATIENCE;
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let output = child.wait_with_output().expect("output");
            panic!("the child hung: {}", common::describe(&output));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().expect("the child's output")
}
