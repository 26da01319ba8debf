//! The handler's end of Firecracker's page-fault handler socket (a Unix stream socket):
//! listen, accept the VMM, receive a message with the file descriptors attached to it
//! (SCM_RIGHTS, in the same `recvmsg`), find the VMM's pid (SO_PEERCRED) and, as a last
//! resort, kill it. Nothing here knows the message's format (`firecracker` parses it).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::Duration;

use crate::error::CliError;

/// Bytes read per `recvmsg` (Firecracker's message must fit in 4 KiB or more).
const MESSAGE_BYTES: usize = 64 << 10;
/// File descriptors one message may carry (Firecracker sends one).
const MAX_FDS: usize = 8;

/// Binds and listens on `path`. A stale socket left there is replaced; any other file
/// is refused (bad input).
pub fn listen(path: &Path) -> Result<UnixListener, CliError> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(CliError::bad(
                format!("{} exists and is not a socket", path.display()),
                "pass --socket a path where the socket can be created",
            ));
        }
        let _ = std::fs::remove_file(path);
    }
    UnixListener::bind(path).map_err(|e| {
        CliError::bad(
            format!("cannot listen on {} ({e})", path.display()),
            "pass --socket a path in a writable directory",
        )
    })
}

/// The VMM, connected.
pub struct Peer {
    /// The stream it connected on.
    pub stream: UnixStream,
    /// Its process id, from SO_PEERCRED (`None` if the kernel would not say).
    pub pid: Option<libc::pid_t>,
}

/// One message: its bytes and the descriptors attached to it.
pub struct Message {
    /// The bytes read (possibly only the first part of a long message).
    pub bytes: Vec<u8>,
    /// The descriptors that came with it (SCM_RIGHTS), owned now.
    pub fds: Vec<OwnedFd>,
}

/// Accepts one connection on `listener`.
pub fn accept(listener: &UnixListener) -> Result<Peer, CliError> {
    let (stream, _) = listener
        .accept()
        .map_err(|e| CliError::failed("accepting the VMM's connection", e))?;
    let pid = peer_pid(&stream);
    Ok(Peer { stream, pid })
}

/// The pid of the process at the other end of `stream`.
fn peer_pid(stream: &UnixStream) -> Option<libc::pid_t> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`, a ucred, and sets `len`.
    let ret = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    (ret == 0 && cred.pid > 0).then_some(cred.pid)
}

impl Peer {
    /// Waits up to `patience` (forever if `None`) for the stream to be readable; `false`
    /// on timeout. Hang-up counts as readable (the read then returns end of stream).
    pub fn wait_readable(&self, patience: Option<Duration>) -> io::Result<bool> {
        let mut fds = [libc::pollfd {
            fd: self.stream.as_raw_fd(),
            events: libc::POLLIN | libc::POLLRDHUP,
            revents: 0,
        }];
        let timeout = patience.map_or(-1, |d| d.as_millis().min(i32::MAX as u128) as i32);
        loop {
            // SAFETY: `fds` is one initialised pollfd.
            let ready = unsafe { libc::poll(fds.as_mut_ptr(), 1, timeout) };
            if ready >= 0 {
                return Ok(ready > 0);
            }
            let error = io::Error::last_os_error();
            if error.kind() != io::ErrorKind::Interrupted {
                return Err(error);
            }
        }
    }

    /// Receives one message with its descriptors; `None` at the end of the stream (the
    /// VMM closed it, or exited).
    pub fn receive(&self) -> io::Result<Option<Message>> {
        let mut bytes = vec![0u8; MESSAGE_BYTES];
        // SAFETY: CMSG_SPACE only computes a size.
        let space = unsafe { libc::CMSG_SPACE((MAX_FDS * size_of::<libc::c_int>()) as u32) };
        // u64s, so the control buffer is aligned for cmsghdr.
        let mut control = vec![0u64; (space as usize).div_ceil(8)];
        let mut iov = libc::iovec {
            iov_base: bytes.as_mut_ptr().cast(),
            iov_len: bytes.len(),
        };
        // SAFETY: a zeroed msghdr is valid (null pointers, zero lengths); filled below.
        let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
        header.msg_iov = &mut iov;
        header.msg_iovlen = 1;
        header.msg_control = control.as_mut_ptr().cast();
        header.msg_controllen = control.len() * 8;
        let read = loop {
            // SAFETY: `header` points at `iov` (into `bytes`) and `control`, both alive
            // and as long as it says.
            let read = unsafe {
                libc::recvmsg(self.stream.as_raw_fd(), &mut header, libc::MSG_CMSG_CLOEXEC)
            };
            if read >= 0 {
                break read as usize;
            }
            let error = io::Error::last_os_error();
            if error.kind() != io::ErrorKind::Interrupted {
                return Err(error);
            }
        };
        let fds = attached_fds(&header);
        if header.msg_flags & libc::MSG_CTRUNC != 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("more than {MAX_FDS} file descriptors came with one message"),
            ));
        }
        if read == 0 && fds.is_empty() {
            return Ok(None);
        }
        bytes.truncate(read);
        Ok(Some(Message { bytes, fds }))
    }

    /// Kills the VMM (SIGKILL), so that it does not wait forever on faults nobody will
    /// serve; returns its pid if it could.
    pub fn kill(&self) -> Option<libc::pid_t> {
        let pid = self.pid?;
        // SAFETY: kill(2) takes a pid and a signal number.
        (unsafe { libc::kill(pid, libc::SIGKILL) } == 0).then_some(pid)
    }
}

/// Takes ownership of the descriptors in the SCM_RIGHTS messages of `header`.
fn attached_fds(header: &libc::msghdr) -> Vec<OwnedFd> {
    let mut fds = Vec::new();
    // SAFETY: `header` was filled by recvmsg; the CMSG_* walk stays inside its control
    // buffer, and each SCM_RIGHTS payload is an array of fds the kernel just installed
    // in this process, owned by nobody else yet.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(header);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg).cast::<libc::c_int>();
                let payload = (*cmsg).cmsg_len - libc::CMSG_LEN(0) as usize;
                for i in 0..payload / size_of::<libc::c_int>() {
                    fds.push(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                }
            }
            cmsg = libc::CMSG_NXTHDR(header, cmsg);
        }
    }
    fds
}
