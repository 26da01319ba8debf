//! A fake Firecracker VMM, run as a child process (the test binary re-executed with
//! `UDAX_FC_PLAN` naming its plan), doing what Firecracker does on a snapshot restore
//! with a Uffd memory backend: guest memory as private anonymous `MAP_NORESERVE`
//! mappings (one per region; `MAP_HUGETLB|MAP_HUGE_2MB` for 2 MiB pages), a userfaultfd
//! opened `O_NONBLOCK|O_CLOEXEC` with `UFFD_FEATURE_EVENT_REMOVE` only, every region
//! registered for missing faults only, then ONE `sendmsg` of the JSON region list with
//! the uffd attached (SCM_RIGHTS). Then it plays a guest: touches pages from several
//! threads, including kernel-side accesses (`write(2)` from guest memory, `read(2)` into
//! it), checks every byte against the expected image, inflates a balloon
//! (`MADV_DONTNEED`, also while other threads fault) and checks those pages read zeros,
//! and exits.
#![allow(dead_code)]

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// The environment variable naming the file of the child's [`Plan`] (JSON).
pub const PLAN_ENV: &str = "UDAX_FC_PLAN";
/// What the child prints when every check passed.
pub const PASSED: &str = "VMM CHECKS PASSED";

/// What the fake VMM does.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Plan {
    /// The handler's socket.
    pub socket: String,
    /// The guest memory as it must read (a dense image, region by region at their offsets).
    pub expected: String,
    /// Region lengths in bytes, laid back to back in the memory file.
    pub regions: Vec<usize>,
    /// 2 MiB hugetlbfs pages instead of 4 KiB.
    pub huge: bool,
    /// What to touch.
    pub touch: Touch,
    /// A bad message to send instead of the right one (then wait to be killed).
    pub bad: Option<Bad>,
    /// Guest threads.
    pub threads: usize,
    /// Store offsets that must become resident without faulting (a prefetch) before
    /// anything is touched.
    pub wait_resident: Vec<u64>,
    /// One more region of this length, after the others in the file, sent with a uffd of
    /// its own in a second message on the same stream once the rest is checked.
    pub later: Option<usize>,
}

/// What the guest touches.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub enum Touch {
    /// Every page, with kernel-side accesses and the balloon.
    #[default]
    All,
    /// Every page once, reporting Rss and time (no balloon): for the figures.
    AllTimed,
    /// These store offsets, in this order, on one thread.
    Pages(Vec<u64>),
}

/// Bad input for the handler.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Bad {
    /// These bytes instead of the JSON (with the uffd).
    Text(String),
    /// The right JSON without the uffd.
    NoFd,
    /// Region 0 runs past the end of the file (its offset is the file's length).
    PastTheEnd,
    /// Region 1 claims region 0's addresses.
    OverlapInMemory,
    /// Region 1 claims region 0's bytes of the file.
    OverlapInFile,
    /// This page size for every region.
    PageSize(usize),
}

// The uffd UAPI (include/uapi/linux/userfaultfd.h).
const UFFD_API: u64 = 0xAA;
const UFFD_FEATURE_EVENT_REMOVE: u64 = 1 << 3;
const UFFDIO_REGISTER_MODE_MISSING: u64 = 1;
const fn iowr(nr: u64, size: u64) -> u64 {
    (3 << 30) | (size << 16) | (0xAA << 8) | nr
}
const UFFDIO_API: u64 = iowr(0x3F, 24);
const UFFDIO_REGISTER: u64 = iowr(0x00, 32);

/// Opens a userfaultfd as Firecracker does; `Err` with the reason if it cannot.
pub fn open_uffd() -> Result<OwnedFd, String> {
    // SAFETY: userfaultfd(2) takes only flags.
    let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_NONBLOCK | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(format!("userfaultfd: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: the syscall just returned this fd.
    let uffd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let mut api = [UFFD_API, UFFD_FEATURE_EVENT_REMOVE, 0u64];
    // SAFETY: UFFDIO_API reads and writes a 24-byte uffdio_api.
    if unsafe { libc::ioctl(uffd.as_raw_fd(), UFFDIO_API as _, api.as_mut_ptr()) } < 0 {
        return Err(format!("UFFDIO_API: {}", std::io::Error::last_os_error()));
    }
    Ok(uffd)
}

fn register(uffd: &OwnedFd, start: usize, len: usize) {
    let mut arg = [start as u64, len as u64, UFFDIO_REGISTER_MODE_MISSING, 0u64];
    // SAFETY: UFFDIO_REGISTER reads and writes a 32-byte uffdio_register.
    let ret = unsafe { libc::ioctl(uffd.as_raw_fd(), UFFDIO_REGISTER as _, arg.as_mut_ptr()) };
    assert!(
        ret == 0,
        "UFFDIO_REGISTER: {}",
        std::io::Error::last_os_error()
    );
}

/// One mapped region of guest memory.
#[derive(Clone, Copy)]
struct Region {
    base: usize,
    len: usize,
    offset: u64,
}

impl Region {
    fn bytes(&self, at: usize, len: usize) -> &'static [u8] {
        assert!(at + len <= self.len);
        // SAFETY: inside our own mapping, which lives until the process exits; its pages
        // are filled by the handler on first access.
        unsafe { std::slice::from_raw_parts((self.base + at) as *const u8, len) }
    }
}

fn map(len: usize, huge: bool) -> usize {
    let mut flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
    if huge {
        flags |= libc::MAP_HUGETLB | (21 << libc::MAP_HUGE_SHIFT);
    }
    // SAFETY: a new anonymous mapping, no address hint.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            flags,
            -1,
            0,
        )
    };
    assert!(
        ptr != libc::MAP_FAILED,
        "mmap: {}",
        std::io::Error::last_os_error()
    );
    ptr as usize
}

fn connect(path: &str) -> UnixStream {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match UnixStream::connect(path) {
            Ok(stream) => return stream,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("connecting to {path}: {e}"),
        }
    }
}

fn send(stream: &UnixStream, bytes: &[u8], fd: Option<&OwnedFd>) {
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut _,
        iov_len: bytes.len(),
    };
    // SAFETY: CMSG_SPACE computes a size.
    let space = unsafe { libc::CMSG_SPACE(size_of::<libc::c_int>() as u32) } as usize;
    let mut control = vec![0u64; space.div_ceil(8)];
    // SAFETY: a zeroed msghdr is valid; filled below.
    let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
    header.msg_iov = &mut iov;
    header.msg_iovlen = 1;
    if let Some(fd) = fd {
        header.msg_control = control.as_mut_ptr().cast();
        header.msg_controllen = space;
        // SAFETY: the control buffer holds one cmsghdr with one int.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&header);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<libc::c_int>() as u32) as usize;
            libc::CMSG_DATA(cmsg)
                .cast::<libc::c_int>()
                .write_unaligned(fd.as_raw_fd());
        }
    }
    // SAFETY: `header` points at live buffers of the lengths it gives.
    let sent = unsafe { libc::sendmsg(stream.as_raw_fd(), &header, 0) };
    assert!(
        sent == bytes.len() as isize,
        "sendmsg: {}",
        std::io::Error::last_os_error()
    );
}

/// The message for `regions`, spoiled as `bad` says.
fn message(regions: &[Region], page_size: usize, bad: Option<&Bad>, file_len: u64) -> Vec<u8> {
    let mut list: Vec<serde_json::Value> = regions
        .iter()
        .map(|r| {
            serde_json::json!({
                "base_host_virt_addr": r.base as u64,
                "size": r.len,
                "offset": r.offset,
                "page_size": page_size,
                "page_size_kib": page_size,
            })
        })
        .collect();
    match bad {
        Some(Bad::Text(text)) => return text.clone().into_bytes(),
        Some(Bad::PastTheEnd) => list[0]["offset"] = file_len.into(),
        Some(Bad::OverlapInMemory) => {
            list[1]["base_host_virt_addr"] = (regions[0].base as u64).into()
        }
        Some(Bad::OverlapInFile) => list[1]["offset"] = 0.into(),
        Some(Bad::PageSize(size)) => {
            for region in &mut list {
                region["page_size"] = (*size).into();
                region["page_size_kib"] = (*size).into();
            }
        }
        Some(Bad::NoFd) | None => {}
    }
    serde_json::to_vec(&list).expect("json")
}

/// The child's main: runs the plan, prints [`PASSED`] and exits 0, or panics.
pub fn run(plan: Plan) -> ! {
    let page_size = if plan.huge { 2 << 20 } else { 4096 };
    let expected = File::open(&plan.expected).expect("the expected image");
    let file_len = expected.metadata().expect("metadata").len();
    let mut offset = 0;
    let regions: Vec<Region> = plan
        .regions
        .iter()
        .map(|&len| {
            let region = Region {
                base: map(len, plan.huge),
                len,
                offset,
            };
            offset += len as u64;
            region
        })
        .collect();
    let uffd = open_uffd().expect("a userfaultfd");
    for region in &regions {
        register(&uffd, region.base, region.len);
    }
    let stream = connect(&plan.socket);
    let fd = (!matches!(plan.bad, Some(Bad::NoFd))).then_some(&uffd);
    let start = Instant::now();
    send(
        &stream,
        &message(&regions, page_size, plan.bad.as_ref(), file_len),
        fd,
    );
    if plan.bad.is_some() {
        // The handler must refuse, and kill us rather than leave us hanging.
        std::thread::sleep(Duration::from_secs(60));
        println!("NOT KILLED");
        std::process::exit(3);
    }
    wait_resident(&regions, &plan.wait_resident);
    let guest = Guest {
        regions: &regions,
        expected: &expected,
        page_size,
        threads: plan.threads.max(1),
    };
    match &plan.touch {
        Touch::All => guest.everything(),
        Touch::AllTimed => guest.timed(start),
        Touch::Pages(offsets) => {
            let begin = Instant::now();
            offsets.iter().for_each(|&o| guest.check_offset(o));
            let elapsed = begin.elapsed().as_secs_f64() * 1e3;
            println!("FIGURES touch_pages_ms={elapsed:.1}");
        }
    }
    if let Some(len) = plan.later {
        let region = Region {
            base: map(len, plan.huge),
            len,
            offset,
        };
        let uffd = open_uffd().expect("a second userfaultfd");
        register(&uffd, region.base, region.len);
        send(
            &stream,
            &message(&[region], page_size, None, file_len),
            Some(&uffd),
        );
        guest.check_units(&region, &|_| true, &|_| false);
    }
    println!("{PASSED}");
    let _ = std::io::stdout().flush();
    drop(stream);
    std::process::exit(0);
}

/// Waits (bounded) until the pages at `offsets` are resident, without touching them.
fn wait_resident(regions: &[Region], offsets: &[u64]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    for &offset in offsets {
        let region = regions
            .iter()
            .find(|r| offset >= r.offset && offset < r.offset + r.len as u64)
            .expect("an offset of the regions");
        let address = region.base + (offset - region.offset) as usize;
        let mut vec = [0u8; 1];
        loop {
            // SAFETY: mincore reads the page tables of one page of our mapping into `vec`.
            let ret = unsafe { libc::mincore(address as *mut _, 4096, vec.as_mut_ptr()) };
            assert_eq!(ret, 0, "mincore: {}", std::io::Error::last_os_error());
            if vec[0] & 1 != 0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "offset {offset} never became resident"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// The guest's accesses.
struct Guest<'a> {
    regions: &'a [Region],
    expected: &'a File,
    page_size: usize,
    threads: usize,
}

impl Guest<'_> {
    /// Checks the unit at `at` of `region` against the expected image (or zeros).
    fn check(&self, region: &Region, at: usize, len: usize, zero: bool) {
        let mut want = vec![0u8; len];
        if !zero {
            self.expected
                .read_exact_at(&mut want, region.offset + at as u64)
                .expect("reading the expected image");
        }
        let got = region.bytes(at, len);
        if got != &want[..] {
            let first = got.iter().zip(&want).position(|(a, b)| a != b).unwrap_or(0);
            panic!(
                "guest memory at file offset {} differs: {:#x} where {:#x} is expected{}",
                region.offset + (at + first) as u64,
                got[first],
                want[first],
                if zero {
                    " (a removed page must read as zeros)"
                } else {
                    ""
                }
            );
        }
    }

    fn check_offset(&self, offset: u64) {
        let region = self
            .regions
            .iter()
            .find(|r| offset >= r.offset && offset < r.offset + r.len as u64)
            .expect("an offset of the regions");
        self.check(region, (offset - region.offset) as usize, 4096, false);
    }

    /// Checks the units of `region` for which `pick(unit)` holds, on the guest threads
    /// (interleaved), `zero` telling which must read zeros.
    fn check_units(
        &self,
        region: &Region,
        pick: &(dyn Fn(usize) -> bool + Sync),
        zero: &(dyn Fn(usize) -> bool + Sync),
    ) {
        let units = region.len / self.page_size;
        std::thread::scope(|scope| {
            for thread in 0..self.threads {
                scope.spawn(move || {
                    for unit in (thread..units).step_by(self.threads) {
                        if pick(unit) {
                            self.check(region, unit * self.page_size, self.page_size, zero(unit));
                        }
                    }
                });
            }
        });
    }

    fn drop_units(&self, region: &Region, unit: usize, units: usize) {
        let address = region.base + unit * self.page_size;
        // SAFETY: drops pages of our own mapping (the balloon's inflate).
        let ret = unsafe {
            libc::madvise(
                address as *mut _,
                units * self.page_size,
                libc::MADV_DONTNEED,
            )
        };
        assert_eq!(ret, 0, "madvise: {}", std::io::Error::last_os_error());
    }

    /// Balloon units of region 0: every eighth from unit 1.
    fn ballooned(unit: usize) -> bool {
        unit % 8 == 1
    }

    fn everything(&self) {
        let (r0, rest) = self.regions.split_first().expect("two regions");
        let unit = self.page_size;
        // A kernel-side read of guest memory (write(2) from it) faults like any access.
        let mut sink = tempfile::tempfile().expect("a temporary file");
        sink.write_all(r0.bytes(0, unit))
            .expect("write(2) from guest memory");
        let mut written = vec![0u8; unit];
        sink.read_exact_at(&mut written, 0)
            .expect("reading it back");
        let mut want = vec![0u8; unit];
        self.expected
            .read_exact_at(&mut want, r0.offset)
            .expect("expected");
        assert!(
            written == want,
            "write(2) from guest memory wrote the wrong bytes"
        );
        // The balloon inflates in region 0 while other threads fault elsewhere: the
        // removes queue, fills meet EAGAIN, and must be retried, not failed.
        let units0 = r0.len / unit;
        std::thread::scope(|scope| {
            scope.spawn(|| {
                for u in (0..units0).filter(|&u| Self::ballooned(u)) {
                    self.drop_units(r0, u, 1);
                }
            });
            for region in rest {
                self.check_units(region, &|_| true, &|_| false);
            }
            self.check_units(
                r0,
                &|u| !Self::ballooned(u) && u != 0 && u % 8 != 2,
                &|_| false,
            );
        });
        // Removed pages read zeros, never the file; the rest reads the file.
        self.check_units(r0, &|_| true, &|u| Self::ballooned(u));
        // Pages dropped after they were served come back as zeros too.
        let (first, count) = (2, (units0 / 4).max(1));
        self.drop_units(r0, first, count);
        self.check_units(r0, &|u| u >= first && u < first + count, &|_| true);
        // A kernel-side write into guest memory (read(2) into it) on a removed page.
        self.drop_units(r0, first, 1);
        let source = tempfile::tempfile().expect("a temporary file");
        source.write_all_at(&vec![0xab; 4096], 0).expect("seeding");
        // SAFETY: reads 4096 bytes into our own mapping at a removed (missing) page.
        let read = unsafe {
            libc::pread(
                source.as_raw_fd(),
                (r0.base + first * unit) as *mut _,
                4096,
                0,
            )
        };
        assert_eq!(
            read,
            4096,
            "read(2) into guest memory: {}",
            std::io::Error::last_os_error()
        );
        assert!(
            r0.bytes(first * unit, 4096).iter().all(|&b| b == 0xab),
            "read(2) into guest memory"
        );
        assert!(
            r0.bytes(first * unit + 4096, unit - 4096)
                .iter()
                .all(|&b| b == 0),
            "the rest of the removed unit"
        );
    }

    fn timed(&self, start: Instant) {
        let begin = Instant::now();
        // The first access alone: how long the guest waits at its first fault.
        self.check(&self.regions[0], 0, 4096, false);
        let first = begin.elapsed();
        for region in self.regions {
            self.check_units(region, &|_| true, &|_| false);
        }
        let touched = begin.elapsed();
        let status = std::fs::read_to_string("/proc/self/status").expect("status");
        let rss = status
            .lines()
            .find(|l| l.starts_with("RssAnon:"))
            .unwrap_or("RssAnon: ?");
        println!(
            "FIGURES first_access_us={:.0} touch_all_ms={:.1} since_handshake_ms={:.1} {}",
            first.as_secs_f64() * 1e6,
            touched.as_secs_f64() * 1e3,
            start.elapsed().as_secs_f64() * 1e3,
            rss.split_whitespace().collect::<Vec<_>>().join("=")
        );
    }
}
