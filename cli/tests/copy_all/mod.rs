//! A copy-everything page-fault handler, for the figures only: the strategy of
//! Firecracker's fault-all example handler. At the first fault it copies every page of
//! every region from the memory file (mapped privately), zeros included, in one
//! UFFDIO_COPY per region; then it waits for the VMM to hang up. It runs in a thread of
//! the test process, the fake VMM in a child.
#![allow(dead_code)]

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::time::{Duration, Instant};

const fn iowr(nr: u64, size: u64) -> u64 {
    (3 << 30) | (size << 16) | (0xAA << 8) | nr
}
const UFFDIO_COPY: u64 = iowr(0x03, 40);
const UFFD_EVENT_PAGEFAULT: u8 = 0x12;

/// What the handler measured.
#[derive(Debug)]
pub struct Served {
    /// From the first fault until every page was copied (the first fault's wait).
    pub first_fault_to_all: Duration,
    /// Bytes copied.
    pub bytes: u64,
}

/// Listens on `socket`, serves one VMM from `mem`, returns when it hangs up.
pub fn serve(listener: UnixListener, mem: &Path) -> Served {
    let file = std::fs::File::open(mem).expect("the memory file");
    let len = file.metadata().expect("metadata").len() as usize;
    // SAFETY: a private read-only mapping of the whole file.
    let source = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_PRIVATE,
            file.as_raw_fd(),
            0,
        )
    };
    assert!(source != libc::MAP_FAILED, "mmap the memory file");
    let (stream, _) = listener.accept().expect("accept the VMM");
    let (regions, uffd) = receive(stream.as_raw_fd());
    let mut served = Served {
        first_fault_to_all: Duration::ZERO,
        bytes: 0,
    };
    let mut message = [0u8; 32];
    let mut copied = false;
    loop {
        let mut fds = [
            libc::pollfd {
                fd: uffd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: stream.as_raw_fd(),
                events: libc::POLLIN | libc::POLLRDHUP,
                revents: 0,
            },
        ];
        // SAFETY: two initialised pollfds.
        unsafe { libc::poll(fds.as_mut_ptr(), 2, 1000) };
        if fds[1].revents != 0 {
            break;
        }
        // SAFETY: reads one 32-byte uffd_msg into `message`.
        let read = unsafe { libc::read(uffd.as_raw_fd(), message.as_mut_ptr().cast(), 32) };
        if read != 32 || message[0] != UFFD_EVENT_PAGEFAULT || copied {
            continue;
        }
        let start = Instant::now();
        for &(base, size, offset) in &regions {
            served.bytes += copy(&uffd, base, source as u64 + offset, size);
        }
        served.first_fault_to_all = start.elapsed();
        copied = true;
    }
    served
}

/// Copies `len` bytes from `src` to `dst` in the VMM, retrying after EAGAIN; returns the
/// bytes copied.
fn copy(uffd: &OwnedFd, dst: u64, src: u64, len: u64) -> u64 {
    let mut done = 0;
    while done < len {
        let mut arg = [dst + done, src + done, len - done, 0u64, 0u64];
        // SAFETY: UFFDIO_COPY reads and writes a 40-byte uffdio_copy.
        let ret = unsafe { libc::ioctl(uffd.as_raw_fd(), UFFDIO_COPY as _, arg.as_mut_ptr()) };
        let copied = arg[4] as i64;
        if copied > 0 {
            done += copied as u64;
        } else if ret < 0 {
            let error = std::io::Error::last_os_error();
            match error.raw_os_error() {
                Some(libc::EAGAIN) => std::thread::sleep(Duration::from_micros(50)),
                Some(libc::EEXIST) => done += 4096,
                _ => panic!("UFFDIO_COPY: {error}"),
            }
        }
    }
    done
}

/// Receives the region list and the uffd from the VMM.
fn receive(fd: i32) -> (Vec<(u64, u64, u64)>, OwnedFd) {
    let mut bytes = vec![0u8; 65536];
    let mut control = vec![0u64; 8];
    let mut iov = libc::iovec {
        iov_base: bytes.as_mut_ptr().cast(),
        iov_len: bytes.len(),
    };
    // SAFETY: a zeroed msghdr is valid; filled below.
    let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
    header.msg_iov = &mut iov;
    header.msg_iovlen = 1;
    header.msg_control = control.as_mut_ptr().cast();
    header.msg_controllen = 64;
    // SAFETY: `header` points at live buffers of the lengths it gives.
    let read = unsafe { libc::recvmsg(fd, &mut header, 0) };
    assert!(read > 0, "recvmsg: {}", std::io::Error::last_os_error());
    // SAFETY: recvmsg filled the control buffer; the first message carries one fd.
    let uffd = unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&header);
        assert!(!cmsg.is_null(), "no uffd came");
        OwnedFd::from_raw_fd(libc::CMSG_DATA(cmsg).cast::<libc::c_int>().read_unaligned())
    };
    let list: Vec<serde_json::Value> =
        serde_json::from_slice(&bytes[..read as usize]).expect("json");
    let regions = list
        .iter()
        .map(|r| {
            let field = |name: &str| r[name].as_u64().expect("a number");
            (field("base_host_virt_addr"), field("size"), field("offset"))
        })
        .collect();
    (regions, uffd)
}
