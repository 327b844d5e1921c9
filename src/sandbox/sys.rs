//! Raw Linux syscalls behind safe, minimal wrappers: the only module in execbox allowed to
//! contain `unsafe`.
//!
//! Every wrapper here is async-signal-safe: no allocation, no locks, no logging, no panics on the
//! success or error path. They are what the code between `clone` and `execve` (see `child.rs`)
//! is made of. Errors are a bare errno ([`Errno`]); callers attach the step.
//!
//! Soundness contract of the one dangerous entry point, [`clone_sandbox`]: it refuses to fork a
//! process that has more than one thread, and the child runs a `FnOnce() -> !` that can only end
//! in `execve` or `_exit` (a panic is caught by an exit guard).
#![allow(unsafe_code)]

use std::ffi::CStr;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// A raw errno value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Errno(pub i32);

impl Errno {
    fn last() -> Errno {
        // SAFETY: __errno_location has no preconditions.
        let slot = unsafe { libc::__errno_location() };
        // SAFETY: it returns the calling thread's errno slot, always valid to read.
        Errno(unsafe { *slot })
    }

    /// The symbolic name and description, for messages (allocation is fine: parent side only).
    pub fn describe(self) -> String {
        format!("{}", std::io::Error::from_raw_os_error(self.0))
    }
}

pub type SysResult<T> = Result<T, Errno>;

fn check(ret: libc::c_long) -> SysResult<libc::c_long> {
    if ret < 0 { Err(Errno::last()) } else { Ok(ret) }
}

fn check_int(ret: libc::c_int) -> SysResult<libc::c_int> {
    if ret < 0 { Err(Errno::last()) } else { Ok(ret) }
}

/// Retries a call interrupted by a signal.
fn retry<T>(mut f: impl FnMut() -> SysResult<T>) -> SysResult<T> {
    loop {
        match f() {
            Err(Errno(libc::EINTR)) => continue,
            other => return other,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Process creation and waiting
// ---------------------------------------------------------------------------------------------

/// Number of threads of this process, from `/proc/self/task` (parent side; allocates).
pub fn thread_count() -> std::io::Result<usize> {
    Ok(std::fs::read_dir("/proc/self/task")?.count())
}

/// Result of [`clone_sandbox`] in the parent.
#[derive(Debug)]
pub struct Child {
    pub pid: libc::pid_t,
    pub pidfd: OwnedFd,
}

/// Aborts the process with `_exit(code)` if dropped: put one on the child's stack so a panic
/// can never unwind back into the parent's code in the child.
struct ExitGuard;
impl Drop for ExitGuard {
    fn drop(&mut self) {
        exit(126);
    }
}

/// `clone(2)` into new namespaces (`flags` holds `CLONE_NEW*`), returning a pidfd in the parent.
/// The child runs `child`, which can only end in `execve` or [`exit`] (it returns `Infallible`).
///
/// Refuses (EAGAIN... reported as `Err(Errno(libc::EDEADLK))`) when the calling process has more
/// than one thread: a child of a multithreaded parent can inherit a lock held by another thread
/// (a malloc-lock deadlock was reproduced on the target hosts).
pub fn clone_sandbox<F: FnOnce() -> std::convert::Infallible>(
    flags: libc::c_int,
    child: F,
) -> SysResult<Child> {
    match thread_count() {
        Ok(1) => {}
        _ => return Err(Errno(libc::EDEADLK)),
    }
    let mut pidfd: libc::c_int = -1;
    let flags = (flags as libc::c_ulong)
        | libc::CLONE_PIDFD as libc::c_ulong
        | libc::SIGCHLD as libc::c_ulong;
    // Raw clone with a null stack behaves like fork: the child continues on a copy of this
    // process's stack; the child-tid and tls arguments are unused for these flags.
    // SAFETY: single-threaded (checked above); `pidfd` is a valid out-pointer for CLONE_PIDFD.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone,
            flags,
            std::ptr::null_mut::<libc::c_void>(),
            &mut pidfd as *mut libc::c_int,
            std::ptr::null_mut::<libc::c_int>(),
            0 as libc::c_ulong,
        )
    };
    let pid = check(ret)?;
    if pid == 0 {
        let _guard = ExitGuard;
        #[allow(unreachable_code)]
        match child() {}
    }
    // SAFETY: CLONE_PIDFD stored a fresh pidfd that nothing else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    Ok(Child {
        pid: pid as libc::pid_t,
        pidfd,
    })
}

/// Plain `fork(2)` for single-threaded processes (the sandbox init, the daemon's spawner via
/// [`fork_single_threaded`]); `child` never returns.
pub fn fork<F: FnOnce() -> std::convert::Infallible>(child: F) -> SysResult<libc::pid_t> {
    // SAFETY: called only from single-threaded processes (the sandbox init, or after
    // `fork_single_threaded`'s thread check); the child runs code that ends in execve or _exit.
    let pid = check_int(unsafe { libc::fork() })?;
    if pid == 0 {
        let _guard = ExitGuard;
        #[allow(unreachable_code)]
        match child() {}
    }
    Ok(pid)
}

/// CPU time the calling thread has used (`CLOCK_THREAD_CPUTIME_ID`): unlike the wall clock,
/// it does not grow while the thread waits for a busy machine. `Duration::MAX` if unreadable
/// (it never is on Linux), so a budget checked against it fails closed.
pub fn thread_cpu_time() -> std::time::Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid, writable timespec.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if r != 0 {
        return std::time::Duration::MAX;
    }
    std::time::Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// `_exit(2)`: leaves without running destructors or atexit handlers.
pub fn exit(code: i32) -> ! {
    // SAFETY: _exit is always safe to call and does not return.
    unsafe { libc::_exit(code) }
}

/// `pidfd_send_signal(2)`.
pub fn pidfd_kill(pidfd: BorrowedFd<'_>, sig: libc::c_int) -> SysResult<()> {
    // SAFETY: plain syscall with an fd we borrow and a null siginfo.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    check(r).map(drop)
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

impl Exit {
    /// From a `waitpid` status word.
    pub fn from_wait_status(status: libc::c_int) -> Exit {
        if libc::WIFSIGNALED(status) {
            Exit::Signal(libc::WTERMSIG(status))
        } else {
            Exit::Code(libc::WEXITSTATUS(status))
        }
    }
}

/// `waitid(P_PIDFD, …, WEXITED)`: reaps the child behind `pidfd`.
pub fn wait_pidfd(pidfd: BorrowedFd<'_>) -> SysResult<Exit> {
    retry(|| {
        // SAFETY: zeroed siginfo_t is a valid out-buffer.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: valid pointer to `info`, pidfd borrowed for the call.
        let r = unsafe {
            libc::waitid(
                libc::P_PIDFD,
                pidfd.as_raw_fd() as libc::id_t,
                &mut info,
                libc::WEXITED,
            )
        };
        check_int(r)?;
        // SAFETY: waitid filled a SIGCHLD siginfo, for which si_status is the valid field.
        let status = unsafe { info.si_status() };
        Ok(if info.si_code == libc::CLD_EXITED {
            Exit::Code(status)
        } else {
            Exit::Signal(status)
        })
    })
}

/// `waitpid(pid, WNOHANG)`: `Ok(None)` when no child changed state.
pub fn waitpid_nohang(pid: libc::pid_t) -> SysResult<Option<(libc::pid_t, libc::c_int)>> {
    let mut status = 0;
    // SAFETY: valid pointer to a local.
    let r = check_int(unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) })?;
    Ok((r != 0).then_some((r, status)))
}

/// Blocking `waitpid(pid, 0)`, retried on EINTR (the doctor's probe children).
pub fn waitpid(pid: libc::pid_t) -> SysResult<Exit> {
    retry(|| {
        let mut status = 0;
        // SAFETY: valid pointer to a local.
        check_int(unsafe { libc::waitpid(pid, &mut status, 0) })?;
        Ok(Exit::from_wait_status(status))
    })
}

/// `pidfd_open(2)`: a pidfd for `pid` (ENOSYS before Linux 5.3).
pub fn pidfd_open(pid: libc::pid_t) -> SysResult<OwnedFd> {
    // SAFETY: plain syscall on integers.
    let fd = check(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0u32) })?;
    // SAFETY: the kernel just returned this fd and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Whether `clone3(2)` exists, without creating a process: a null `clone_args` of size 0 is
/// refused with EINVAL by a kernel that has the call and ENOSYS by one that does not.
pub fn clone3_probe() -> Errno {
    // SAFETY: size 0 makes the kernel reject the arguments before it reads the null pointer.
    let r = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            std::ptr::null_mut::<libc::c_void>(),
            0usize,
        )
    };
    if r < 0 { Errno::last() } else { Errno(0) }
}

/// `kill(2)`.
pub fn kill(pid: libc::pid_t, sig: libc::c_int) -> SysResult<()> {
    // SAFETY: plain syscall.
    check_int(unsafe { libc::kill(pid, sig) }).map(drop)
}

pub fn getppid() -> libc::pid_t {
    // SAFETY: always succeeds.
    unsafe { libc::getppid() }
}

pub fn geteuid() -> u32 {
    // SAFETY: always succeeds.
    unsafe { libc::geteuid() }
}

pub fn getegid() -> u32 {
    // SAFETY: always succeeds.
    unsafe { libc::getegid() }
}

// ---------------------------------------------------------------------------------------------
// File descriptors and I/O
// ---------------------------------------------------------------------------------------------

/// `read(2)`, retried on EINTR.
pub fn read(fd: RawFd, buf: &mut [u8]) -> SysResult<usize> {
    retry(|| {
        // SAFETY: buf is valid for buf.len() bytes.
        let r = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        check(r as libc::c_long).map(|n| n as usize)
    })
}

/// `write(2)` of the whole buffer, retried on EINTR and short writes.
pub fn write_all(fd: RawFd, mut buf: &[u8]) -> SysResult<()> {
    while !buf.is_empty() {
        let n = retry(|| {
            // SAFETY: buf is valid for buf.len() bytes.
            let r = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
            check(r as libc::c_long).map(|n| n as usize)
        })?;
        buf = &buf[n..];
    }
    Ok(())
}

/// `splice(2)` from a pipe to `fd_out`, moving at most `len` bytes.
pub fn splice(fd_in: RawFd, fd_out: RawFd, len: usize) -> SysResult<usize> {
    retry(|| {
        // SAFETY: null offsets mean "use and update the file position"; fds are borrowed.
        let r = unsafe {
            libc::splice(
                fd_in,
                std::ptr::null_mut(),
                fd_out,
                std::ptr::null_mut(),
                len,
                libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
            )
        };
        check(r as libc::c_long).map(|n| n as usize)
    })
}

/// `dup2(2)` (clears close-on-exec on `new`).
pub fn dup2(old: RawFd, new: RawFd) -> SysResult<()> {
    // SAFETY: plain syscall on integers.
    check_int(unsafe { libc::dup2(old, new) }).map(drop)
}

/// `dup3(old, new, O_CLOEXEC)`.
pub fn dup3_cloexec(old: RawFd, new: RawFd) -> SysResult<()> {
    // SAFETY: plain syscall on integers.
    check_int(unsafe { libc::dup3(old, new, libc::O_CLOEXEC) }).map(drop)
}

/// `close_range(first, last, flags)`.
pub fn close_range(first: u32, last: u32, flags: u32) -> SysResult<()> {
    // SAFETY: plain syscall on integers; closing fds we own in this (child) process.
    check(unsafe { libc::syscall(libc::SYS_close_range, first, last, flags) }).map(drop)
}

/// `close(2)`, ignoring the result (nothing useful can be done about it in the child).
pub fn close(fd: RawFd) {
    // SAFETY: the caller owns `fd` (an inherited descriptor in the child).
    unsafe { libc::close(fd) };
}

/// Sets `O_NONBLOCK` on an fd.
pub fn set_nonblocking(fd: BorrowedFd<'_>) -> SysResult<()> {
    // SAFETY: fcntl on a borrowed fd.
    let flags = check_int(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) })?;
    // SAFETY: fcntl on a borrowed fd.
    check_int(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) })
        .map(drop)
}

/// True when `fd` can take a write right now (zero-timeout poll for POLLOUT).
pub fn writable_now(fd: RawFd) -> bool {
    let mut p = [libc::pollfd {
        fd,
        events: libc::POLLOUT,
        revents: 0,
    }];
    poll(&mut p, 0).is_ok_and(|n| n == 1 && p[0].revents & libc::POLLOUT != 0)
}

/// `fcntl(F_SETPIPE_SZ)`: grows a pipe's buffer (best effort; capped by fs.pipe-max-size).
pub fn set_pipe_size(fd: BorrowedFd<'_>, bytes: libc::c_int) -> SysResult<()> {
    // SAFETY: fcntl on a borrowed fd with an integer argument.
    check_int(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETPIPE_SZ, bytes) }).map(drop)
}

/// `poll(2)` over `fds`; returns the number ready (0 on timeout). EINTR is reported as 0 ready.
pub fn poll(fds: &mut [libc::pollfd], timeout_ms: libc::c_int) -> SysResult<usize> {
    // SAFETY: fds points to fds.len() initialised pollfd structs.
    let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
    match check_int(r) {
        Ok(n) => Ok(n as usize),
        Err(Errno(libc::EINTR)) => Ok(0),
        Err(e) => Err(e),
    }
}

/// Takes ownership of a raw fd returned by one of the wrappers here.
pub fn owned(fd: RawFd) -> OwnedFd {
    // SAFETY: callers pass a fresh fd from a successful syscall that nothing else owns.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// `open(2)` returning a raw fd (child side: the fd is closed on exec or kept deliberately).
pub fn open(path: &CStr, flags: libc::c_int, mode: libc::mode_t) -> SysResult<RawFd> {
    // SAFETY: path is NUL-terminated.
    check_int(unsafe { libc::open(path.as_ptr(), flags, mode as libc::c_uint) })
}

/// Sends one byte and, optionally, one fd over a Unix socket (SCM_RIGHTS).
pub fn send_byte_with_fd(
    sock: BorrowedFd<'_>,
    byte: u8,
    fd: Option<BorrowedFd<'_>>,
) -> SysResult<()> {
    let raw = [fd.map_or(-1, |f| f.as_raw_fd())];
    let fds: &[RawFd] = if fd.is_some() { &raw } else { &[] };
    sendmsg_fds(sock.as_raw_fd(), &[byte], fds).map(drop)
}

/// Receives one byte and at most one fd (close-on-exec; any extra fd is closed). `Ok(None)` on
/// EOF. Does not allocate (it runs in the sandbox child).
pub fn recv_byte_with_fd(sock: RawFd) -> SysResult<Option<(u8, Option<RawFd>)>> {
    let mut data = [0u8];
    let mut first = None;
    let n = recvmsg_fds(sock, &mut data, &mut |fd| match first {
        None => first = Some(fd),
        Some(_) => close(fd),
    })?;
    Ok((n != 0).then_some((data[0], first)))
}

/// One `sendmsg(2)` of `data` with `fds` attached (SCM_RIGHTS, at most
/// [`MAX_FDS_PER_MESSAGE`]); returns the bytes sent. Does not allocate.
fn sendmsg_fds(sock: RawFd, data: &[u8], fds: &[RawFd]) -> SysResult<usize> {
    if fds.len() > MAX_FDS_PER_MESSAGE || data.is_empty() {
        return Err(Errno(libc::EINVAL));
    }
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // Room for MAX_FDS_PER_MESSAGE fds, aligned like cmsghdr.
    let mut cbuf = [0u64; 8];
    // SAFETY: a zeroed msghdr is valid; fields set below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        let payload = size_of_val(fds) as u32;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        // SAFETY: CMSG_SPACE is a pure computation.
        msg.msg_controllen = unsafe { libc::CMSG_SPACE(payload) } as usize;
        // SAFETY: msg_control points to a buffer of at least msg_controllen bytes (8 fds need
        // 48 of its 64), so the first header is in bounds.
        let first = unsafe { libc::CMSG_FIRSTHDR(&msg) };
        // SAFETY: non-null (the buffer holds at least one header) and exclusively ours.
        let cmsg = unsafe { &mut *first };
        cmsg.cmsg_level = libc::SOL_SOCKET;
        cmsg.cmsg_type = libc::SCM_RIGHTS;
        // SAFETY: pure computation.
        cmsg.cmsg_len = unsafe { libc::CMSG_LEN(payload) } as usize;
        // SAFETY: CMSG_DATA of an in-bounds header has room for `fds.len()` RawFds.
        let data_ptr = unsafe { libc::CMSG_DATA(cmsg) } as *mut RawFd;
        for (i, fd) in fds.iter().enumerate() {
            // SAFETY: i < fds.len(), within the payload reserved above.
            let slot = unsafe { data_ptr.add(i) };
            // SAFETY: `slot` is in bounds of the control buffer; it may be unaligned.
            unsafe { slot.write_unaligned(*fd) };
        }
    }
    retry(|| {
        // SAFETY: msg and everything it points to live across the call.
        let r = unsafe { libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL) };
        check(r as libc::c_long).map(|n| n as usize)
    })
}

/// One `recvmsg(2)` into `buf`; every received fd (close-on-exec) is handed to `on_fd`.
/// Returns the bytes read (0 on EOF). Does not allocate.
fn recvmsg_fds(sock: RawFd, buf: &mut [u8], on_fd: &mut dyn FnMut(RawFd)) -> SysResult<usize> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut cbuf = [0u64; 8];
    // SAFETY: a zeroed msghdr is valid; fields set below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = size_of_val(&cbuf);
    let n = retry(|| {
        // SAFETY: msg points to live buffers of the sizes given.
        let r = unsafe { libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC) };
        check(r as libc::c_long)
    })?;
    // SAFETY: msg was filled by recvmsg; CMSG_FIRSTHDR checks controllen.
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    while !cmsg.is_null() {
        // SAFETY: non-null header within the buffer recvmsg filled.
        let c = unsafe { &*cmsg };
        if c.cmsg_level == libc::SOL_SOCKET && c.cmsg_type == libc::SCM_RIGHTS {
            // SAFETY: pure computation.
            let header = unsafe { libc::CMSG_LEN(0) } as usize;
            let count = (c.cmsg_len as usize).saturating_sub(header) / size_of::<RawFd>();
            // SAFETY: an SCM_RIGHTS header is followed by `count` fds.
            let p = unsafe { libc::CMSG_DATA(cmsg) } as *const RawFd;
            for i in 0..count {
                // SAFETY: i < count, within this header's payload.
                let slot = unsafe { p.add(i) };
                // SAFETY: in bounds, possibly unaligned.
                on_fd(unsafe { slot.read_unaligned() });
            }
        }
        // SAFETY: msg and the current header are valid; returns null past the end.
        cmsg = unsafe { libc::CMSG_NXTHDR(&msg, cmsg) };
    }
    Ok(n as usize)
}

// ---------------------------------------------------------------------------------------------
// Credentials, namespaces, process attributes
// ---------------------------------------------------------------------------------------------

pub fn setresuid(uid: u32) -> SysResult<()> {
    // SAFETY: plain syscall.
    check_int(unsafe { libc::setresuid(uid, uid, uid) }).map(drop)
}

pub fn setresgid(gid: u32) -> SysResult<()> {
    // SAFETY: plain syscall.
    check_int(unsafe { libc::setresgid(gid, gid, gid) }).map(drop)
}

pub fn unshare(flags: libc::c_int) -> SysResult<()> {
    // SAFETY: plain syscall.
    check_int(unsafe { libc::unshare(flags) }).map(drop)
}

/// Moves the calling thread into the namespace `fd` refers to (`nstype`: one CLONE_NEW* flag).
pub fn setns(fd: BorrowedFd<'_>, nstype: libc::c_int) -> SysResult<()> {
    // SAFETY: plain syscall on a borrowed, open descriptor.
    check_int(unsafe { libc::setns(fd.as_raw_fd(), nstype) }).map(drop)
}

pub fn setsid() -> SysResult<()> {
    // SAFETY: plain syscall.
    check_int(unsafe { libc::setsid() }).map(drop)
}

pub fn sethostname(name: &[u8]) -> SysResult<()> {
    // SAFETY: name is valid for name.len() bytes.
    check_int(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) }).map(drop)
}

/// `prctl(2)` with integer arguments.
pub fn prctl(option: libc::c_int, a2: libc::c_ulong, a3: libc::c_ulong) -> SysResult<libc::c_int> {
    // SAFETY: every option used by execbox takes integer arguments only.
    check_int(unsafe { libc::prctl(option, a2, a3, 0 as libc::c_ulong, 0 as libc::c_ulong) })
}

pub fn setrlimit(resource: libc::__rlimit_resource_t, value: u64) -> SysResult<()> {
    let lim = libc::rlimit {
        rlim_cur: value,
        rlim_max: value,
    };
    // SAFETY: valid pointer to a local.
    check_int(unsafe { libc::setrlimit(resource, &lim) }).map(drop)
}

/// Raises the soft RLIMIT_NOFILE to the hard limit; returns the new soft limit.
pub fn raise_nofile_to_hard() -> SysResult<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid pointer to a local.
    check_int(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) })?;
    lim.rlim_cur = lim.rlim_max;
    // SAFETY: valid pointer to a local.
    check_int(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) })?;
    Ok(lim.rlim_cur)
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// Clears the effective, permitted and inheritable capability sets (`capset(2)`).
pub fn clear_capabilities() -> SysResult<()> {
    set_capabilities(0, 0, 0)
}

/// Sets the effective, permitted and inheritable capability sets of the calling thread to
/// these masks (bit N = capability N; `capset(2)`, version 3). Async-signal-safe.
pub fn set_capabilities(effective: u64, permitted: u64, inheritable: u64) -> SysResult<()> {
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let half = |m: u64, hi: bool| if hi { (m >> 32) as u32 } else { m as u32 };
    let data = [false, true].map(|hi| CapData {
        effective: half(effective, hi),
        permitted: half(permitted, hi),
        inheritable: half(inheritable, hi),
    });
    // SAFETY: header and two data structs, as capset v3 expects.
    check(unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) }).map(drop)
}

/// `sigprocmask(SIG_SETMASK)` to the given set.
pub fn set_signal_mask(set: &libc::sigset_t) -> SysResult<()> {
    // SAFETY: valid pointer; null old-set.
    check_int(unsafe { libc::sigprocmask(libc::SIG_SETMASK, set, std::ptr::null_mut()) }).map(drop)
}

/// A signal set from a list.
pub fn sigset(signals: &[libc::c_int]) -> libc::sigset_t {
    // SAFETY: zeroed sigset_t is valid storage; sigemptyset initialises it.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer.
    unsafe { libc::sigemptyset(&mut set) };
    for &s in signals {
        // SAFETY: valid pointer; invalid numbers only return EINVAL.
        unsafe { libc::sigaddset(&mut set, s) };
    }
    set
}

extern "C" fn ignore_signal(_: libc::c_int) {}

/// Installs a no-op handler: a pid-namespace init only receives signals it has a handler for;
/// with the signal blocked, it then waits in [`sigwait`].
pub fn install_noop_handler(sig: libc::c_int) -> SysResult<()> {
    // SAFETY: zeroed sigaction is valid; the handler is an extern "C" fn doing nothing.
    let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
    act.sa_sigaction = ignore_signal as *const () as libc::sighandler_t;
    act.sa_flags = libc::SA_RESTART;
    // SAFETY: valid pointer, null old action.
    check_int(unsafe { libc::sigaction(sig, &act, std::ptr::null_mut()) }).map(drop)
}

/// `sigwaitinfo(2)` returning the signal number.
pub fn sigwait(set: &libc::sigset_t) -> SysResult<libc::c_int> {
    retry(|| {
        // SAFETY: valid set; null info.
        check_int(unsafe { libc::sigwaitinfo(set, std::ptr::null_mut()) })
    })
}

/// A `signalfd` for `set` (the caller blocks those signals first).
pub fn signalfd(set: &libc::sigset_t) -> SysResult<OwnedFd> {
    // SAFETY: valid set pointer; -1 creates a new fd.
    let fd = check_int(unsafe { libc::signalfd(-1, set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) })?;
    // SAFETY: fresh fd owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Blocks `set` in the calling thread, returning the previous mask.
pub fn block_signals(set: &libc::sigset_t) -> SysResult<libc::sigset_t> {
    // SAFETY: zeroed sigset_t is valid storage for the old mask.
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointers.
    check_int(unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, set, &mut old) })?;
    Ok(old)
}

/// Reads one `signalfd_siginfo` and returns its signal number (`Ok(None)` if none pending).
pub fn read_signalfd(fd: BorrowedFd<'_>) -> SysResult<Option<i32>> {
    let mut buf = [0u8; 128];
    match read(fd.as_raw_fd(), &mut buf) {
        Ok(n) if n >= 4 => Ok(Some(
            u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as i32
        )),
        Ok(_) => Ok(None),
        Err(Errno(libc::EAGAIN)) => Ok(None),
        Err(e) => Err(e),
    }
}

// ---------------------------------------------------------------------------------------------
// Mounts
// ---------------------------------------------------------------------------------------------

/// `mount(2)`.
pub fn mount(
    source: Option<&CStr>,
    target: &CStr,
    fstype: Option<&CStr>,
    flags: libc::c_ulong,
    data: Option<&CStr>,
) -> SysResult<()> {
    let p = |s: Option<&CStr>| s.map_or(std::ptr::null(), |s| s.as_ptr());
    // SAFETY: all strings are NUL-terminated or null where mount(2) allows it.
    check_int(unsafe { libc::mount(p(source), target.as_ptr(), p(fstype), flags, p(data).cast()) })
        .map(drop)
}

pub fn umount2(target: &CStr, flags: libc::c_int) -> SysResult<()> {
    // SAFETY: NUL-terminated path.
    check_int(unsafe { libc::umount2(target.as_ptr(), flags) }).map(drop)
}

/// `open_tree(AT_FDCWD, path, flags)`: with OPEN_TREE_CLONE, a detached copy of the mount tree.
pub fn open_tree(path: &CStr, flags: libc::c_uint) -> SysResult<RawFd> {
    // SAFETY: NUL-terminated path.
    let r = unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, path.as_ptr(), flags) };
    check(r).map(|fd| fd as RawFd)
}

/// `mount_setattr(fd, "", AT_EMPTY_PATH | extra_flags, {set, clr, userns_fd})`.
pub fn mount_setattr_fd(
    fd: RawFd,
    recursive: bool,
    attr_set: u64,
    attr_clr: u64,
    userns_fd: Option<RawFd>,
) -> SysResult<()> {
    let mut attr = libc::mount_attr {
        attr_set,
        attr_clr,
        propagation: 0,
        userns_fd: userns_fd.map_or(0, |f| f as u64),
    };
    let flags = libc::AT_EMPTY_PATH as libc::c_uint
        | if recursive {
            libc::AT_RECURSIVE as libc::c_uint
        } else {
            0
        };
    // SAFETY: empty NUL-terminated path with AT_EMPTY_PATH; attr pointer and size are valid.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd,
            c"".as_ptr(),
            flags,
            &mut attr as *mut libc::mount_attr,
            size_of::<libc::mount_attr>(),
        )
    };
    check(r).map(drop)
}

/// `move_mount(fd, "", AT_FDCWD, target, MOVE_MOUNT_F_EMPTY_PATH)`: attaches a detached mount.
pub fn move_mount_fd(fd: RawFd, target: &CStr) -> SysResult<()> {
    // SAFETY: NUL-terminated paths.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            fd,
            c"".as_ptr(),
            libc::AT_FDCWD,
            target.as_ptr(),
            libc::MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    check(r).map(drop)
}

/// `fsopen(fstype)` + `fsconfig(CREATE)` + `fsmount`: a detached new mount of `fstype`.
pub fn new_detached_mount(fstype: &CStr, mount_attrs: u64) -> SysResult<RawFd> {
    // SAFETY: NUL-terminated fs type.
    let fs =
        check(unsafe { libc::syscall(libc::SYS_fsopen, fstype.as_ptr(), libc::FSOPEN_CLOEXEC) })?
            as RawFd;
    // SAFETY: FSCONFIG_CMD_CREATE takes no key or value.
    let created = check(unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fs,
            libc::FSCONFIG_CMD_CREATE,
            std::ptr::null::<libc::c_char>(),
            std::ptr::null::<libc::c_void>(),
            0,
        )
    });
    let mounted = created.and_then(|_| {
        // SAFETY: fs is a configured fs context.
        check(unsafe { libc::syscall(libc::SYS_fsmount, fs, libc::FSMOUNT_CLOEXEC, mount_attrs) })
    });
    close(fs);
    mounted.map(|fd| fd as RawFd)
}

/// `pivot_root(new, old)`.
pub fn pivot_root(new_root: &CStr, put_old: &CStr) -> SysResult<()> {
    // SAFETY: NUL-terminated paths.
    check(unsafe { libc::syscall(libc::SYS_pivot_root, new_root.as_ptr(), put_old.as_ptr()) })
        .map(drop)
}

pub fn chdir(path: &CStr) -> SysResult<()> {
    // SAFETY: NUL-terminated path.
    check_int(unsafe { libc::chdir(path.as_ptr()) }).map(drop)
}

/// `mkdir(2)`; an existing entry is not an error.
pub fn mkdir_exist_ok(path: &CStr, mode: libc::mode_t) -> SysResult<()> {
    // SAFETY: NUL-terminated path.
    match check_int(unsafe { libc::mkdir(path.as_ptr(), mode) }) {
        Ok(_) | Err(Errno(libc::EEXIST)) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Creates an empty regular file to bind a file onto; an existing entry is not an error.
pub fn touch(path: &CStr) -> SysResult<()> {
    let fd = open(
        path,
        libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC | libc::O_NOFOLLOW,
        0o444,
    );
    match fd {
        Ok(fd) => {
            close(fd);
            Ok(())
        }
        Err(Errno(libc::EEXIST)) => Ok(()),
        Err(e) => Err(e),
    }
}

pub fn symlink(target: &CStr, link: &CStr) -> SysResult<()> {
    // SAFETY: NUL-terminated paths.
    match check_int(unsafe { libc::symlink(target.as_ptr(), link.as_ptr()) }) {
        Ok(_) | Err(Errno(libc::EEXIST)) => Ok(()),
        Err(e) => Err(e),
    }
}

// ---------------------------------------------------------------------------------------------
// Network
// ---------------------------------------------------------------------------------------------

/// Brings the loopback interface up (`SIOCSIFFLAGS` on "lo"); the kernel assigns 127.0.0.1.
pub fn loopback_up() -> SysResult<()> {
    // SAFETY: plain syscall.
    let sock = check_int(unsafe {
        libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0)
    })?;
    // SAFETY: zeroed ifreq is valid; the name is set below.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS fills ifr_flags of a valid ifreq.
    let got = check_int(unsafe { libc::ioctl(sock, libc::SIOCGIFFLAGS, &mut req) });
    let set = got.and_then(|_| {
        // SAFETY: ifru_flags is the active field after SIOCGIFFLAGS.
        unsafe { req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short };
        // SAFETY: valid ifreq.
        check_int(unsafe { libc::ioctl(sock, libc::SIOCSIFFLAGS, &req) })
    });
    close(sock);
    set.map(drop)
}

/// A socket for the network supervisor (child side, no allocation): a TCP listener or a bound
/// UDP socket on `addr:port` (IPv4), close-on-exec, with `SO_REUSEADDR`.
pub fn capture_socket(tcp: bool, addr: [u8; 4], port: u16) -> SysResult<RawFd> {
    let ty = if tcp {
        libc::SOCK_STREAM
    } else {
        libc::SOCK_DGRAM
    };
    // SAFETY: plain syscall.
    let fd = check_int(unsafe { libc::socket(libc::AF_INET, ty | libc::SOCK_CLOEXEC, 0) })?;
    let one: libc::c_int = 1;
    let sa = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(addr),
        },
        sin_zero: [0; 8],
    };
    let r = check_int(
        // SAFETY: `one` is a valid c_int of the size passed.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_REUSEADDR,
                (&one as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        },
    )
    .and_then(|_| {
        // SAFETY: `sa` is a valid sockaddr_in of the size passed.
        check_int(unsafe {
            libc::bind(
                fd,
                (&sa as *const libc::sockaddr_in).cast(),
                size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        })
    })
    .and_then(|_| {
        if tcp {
            // SAFETY: plain syscall on our socket.
            check_int(unsafe { libc::listen(fd, 128) })
        } else {
            Ok(0)
        }
    });
    match r {
        Ok(_) => Ok(fd),
        Err(e) => {
            close(fd);
            Err(e)
        }
    }
}

/// Sends one byte with `fds` attached (child side, no allocation; at most
/// [`MAX_FDS_PER_MESSAGE`]).
pub fn send_fds(sock: RawFd, byte: u8, fds: &[RawFd]) -> SysResult<()> {
    sendmsg_fds(sock, &[byte], fds).map(drop)
}

/// Creates `path` (mode 0644, failing if it exists) holding `content` (child side).
pub fn write_new_file(path: &CStr, content: &[u8]) -> SysResult<()> {
    let fd = open(
        path,
        libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC,
        0o644,
    )?;
    let r = write_all(fd, content);
    close(fd);
    r
}

// ---------------------------------------------------------------------------------------------
// Landlock
// ---------------------------------------------------------------------------------------------

#[repr(C)]
struct RulesetAttr {
    handled_access_fs: u64,
    handled_access_net: u64,
    scoped: u64,
}

#[repr(C, packed)]
struct PathBeneathAttr {
    allowed_access: u64,
    parent_fd: i32,
}

const LANDLOCK_CREATE_RULESET_VERSION: u32 = 1;
const LANDLOCK_RULE_PATH_BENEATH: u32 = 1;

/// The landlock ABI version of the running kernel, or the errno (EOPNOTSUPP: disabled at boot;
/// ENOSYS: not built in).
pub fn landlock_abi() -> SysResult<u32> {
    // SAFETY: the version query takes a null attr and size 0.
    let r = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<RulesetAttr>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    check(r).map(|v| v as u32)
}

/// Creates a ruleset. `attr_size` lets older ABIs (no `scoped` field before v6, no net before v4)
/// receive a struct of the size they know.
pub fn landlock_create_ruleset(fs: u64, net: u64, scoped: u64, abi: u32) -> SysResult<RawFd> {
    let attr = RulesetAttr {
        handled_access_fs: fs,
        handled_access_net: net,
        scoped,
    };
    let size = match abi {
        0..=3 => 8,
        4 | 5 => 16,
        _ => size_of::<RulesetAttr>(),
    };
    // SAFETY: attr is valid for `size` bytes (size never exceeds the struct).
    let r = unsafe { libc::syscall(libc::SYS_landlock_create_ruleset, &attr, size, 0u32) };
    check(r).map(|fd| fd as RawFd)
}

/// Adds a path-beneath rule for the object behind `parent_fd` (an O_PATH fd).
pub fn landlock_add_path_rule(ruleset: RawFd, parent_fd: RawFd, access: u64) -> SysResult<()> {
    let attr = PathBeneathAttr {
        allowed_access: access,
        parent_fd,
    };
    // SAFETY: attr is a valid landlock_path_beneath_attr.
    let r = unsafe {
        libc::syscall(
            libc::SYS_landlock_add_rule,
            ruleset,
            LANDLOCK_RULE_PATH_BENEATH,
            &attr as *const PathBeneathAttr,
            0u32,
        )
    };
    check(r).map(drop)
}

pub fn landlock_restrict_self(ruleset: RawFd) -> SysResult<()> {
    // SAFETY: plain syscall on an fd.
    check(unsafe { libc::syscall(libc::SYS_landlock_restrict_self, ruleset, 0u32) }).map(drop)
}

// ---------------------------------------------------------------------------------------------
// Seccomp
// ---------------------------------------------------------------------------------------------

/// Installs one BPF filter (`seccomp(SECCOMP_SET_MODE_FILTER)`); needs no_new_privs first.
pub fn seccomp_install(program: &[libc::sock_filter]) -> SysResult<()> {
    let prog = libc::sock_fprog {
        len: program.len() as libc::c_ushort,
        filter: program.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: prog points to `len` valid instructions that outlive the call (the kernel copies).
    let r = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0u32,
            &prog as *const libc::sock_fprog,
        )
    };
    check(r).map(drop)
}

// ---------------------------------------------------------------------------------------------
// Exec
// ---------------------------------------------------------------------------------------------

/// `execve(2)`; returns only on failure. `argv` and `envp` are null-terminated pointer arrays
/// built before the fork.
pub fn execve(path: &CStr, argv: &[*const libc::c_char], envp: &[*const libc::c_char]) -> Errno {
    debug_assert!(argv.last().is_some_and(|p| p.is_null()));
    debug_assert!(envp.last().is_some_and(|p| p.is_null()));
    // SAFETY: path is NUL-terminated; argv/envp are null-terminated arrays of pointers to
    // NUL-terminated strings owned by the caller's prepared plan, alive for the call.
    unsafe { libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    Errno::last()
}

/// `fcntl(F_DUPFD_CLOEXEC, min)`: a close-on-exec duplicate numbered `min` or above.
pub fn dup_cloexec_above(fd: RawFd, min: RawFd) -> SysResult<RawFd> {
    // SAFETY: fcntl on integers.
    check_int(unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, min) })
}

/// True when the peer of a stream socket has closed it (non-blocking peek).
pub fn peer_closed(sock: RawFd) -> bool {
    let mut b = [0u8; 1];
    // SAFETY: b is valid for one byte.
    let r = unsafe {
        libc::recv(
            sock,
            b.as_mut_ptr().cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    r == 0
}

// ---------------------------------------------------------------------------------------------
// The daemon's spawner (src/server/spawner.rs): a single-threaded process that forks one
// supervisor per job, fed over a Unix socket with the job's descriptors attached.
// ---------------------------------------------------------------------------------------------

/// Most descriptors one spawner message carries.
pub const MAX_FDS_PER_MESSAGE: usize = 8;

/// `fork(2)` that refuses (EDEADLK) when this process has more than one thread, like
/// [`clone_sandbox`]: the spawner and its per-job supervisors must stay single-threaded. The
/// child runs `child`, which ends in [`exit`] (a panic is caught by an exit guard).
pub fn fork_single_threaded<F: FnOnce() -> std::convert::Infallible>(
    child: F,
) -> SysResult<libc::pid_t> {
    match thread_count() {
        Ok(1) => {}
        _ => return Err(Errno(libc::EDEADLK)),
    }
    fork(child)
}

pub fn getpid() -> libc::pid_t {
    // SAFETY: always succeeds.
    unsafe { libc::getpid() }
}

/// One `sendmsg(2)` of `data` with `fds` attached (SCM_RIGHTS); returns the bytes sent (the
/// caller sends any rest with plain writes: the fds travel with the first byte).
pub fn send_with_fds(
    sock: BorrowedFd<'_>,
    data: &[u8],
    fds: &[BorrowedFd<'_>],
) -> SysResult<usize> {
    if fds.len() > MAX_FDS_PER_MESSAGE {
        return Err(Errno(libc::EINVAL));
    }
    let mut raw = [-1; MAX_FDS_PER_MESSAGE];
    for (slot, fd) in raw.iter_mut().zip(fds) {
        *slot = fd.as_raw_fd();
    }
    sendmsg_fds(sock.as_raw_fd(), data, &raw[..fds.len()])
}

/// One `recvmsg(2)` into `buf`; the fds that arrive (close-on-exec) are appended to `fds`.
/// Returns the bytes read (0 on EOF).
pub fn recv_with_fds(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
) -> SysResult<usize> {
    recvmsg_fds(sock.as_raw_fd(), buf, &mut |fd| fds.push(owned(fd)))
}

/// `umask(2)`; returns the previous mask.
pub fn umask(mask: libc::mode_t) -> libc::mode_t {
    // SAFETY: umask always succeeds and only changes this process's file-creation mask.
    unsafe { libc::umask(mask) }
}

/// Takes ownership of a descriptor inherited at exec (systemd socket activation: fds 3…),
/// after checking it is open, and marks it close-on-exec.
pub fn adopt_inherited_fd(fd: RawFd) -> SysResult<OwnedFd> {
    // SAFETY: fcntl on an integer; fails with EBADF when nothing is open there.
    let flags = check_int(unsafe { libc::fcntl(fd, libc::F_GETFD) })?;
    // SAFETY: fcntl on an fd just checked to be open.
    check_int(unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) })?;
    // SAFETY: the service manager passed this fd to us and nothing else in this process owns it
    // (the caller adopts each LISTEN_FDS fd exactly once, at start).
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

// ---------------------------------------------------------------------------------------------
// Files strictly beneath a directory (artifacts; daemon side)
// ---------------------------------------------------------------------------------------------

/// Resolution that cannot leave the starting directory: no `..` above it, no absolute paths, no
/// symlinks of any kind on any component, no `/proc` magic links.
pub const RESOLVE_STRICT: u64 =
    libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;

/// `struct open_how` of `linux/openat2.h` (libc's is `#[non_exhaustive]`, so we cannot build it).
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

/// `openat2(2)`: opens `path` relative to `dir` with `flags | O_CLOEXEC`, resolved under
/// `resolve` (e.g. [`RESOLVE_STRICT`]). Never creates files (no mode is passed).
pub fn openat2(
    dir: BorrowedFd<'_>,
    path: &CStr,
    flags: libc::c_int,
    resolve: u64,
) -> SysResult<OwnedFd> {
    let how = OpenHow {
        flags: (flags | libc::O_CLOEXEC) as u64,
        mode: 0,
        resolve,
    };
    let fd = retry(|| {
        // SAFETY: path is NUL-terminated, `how` is a valid open_how of the size passed, and the
        // kernel only reads both during the call.
        check(unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dir.as_raw_fd(),
                path.as_ptr(),
                &how as *const OpenHow,
                std::mem::size_of::<OpenHow>(),
            )
        })
    })?;
    Ok(owned(fd as RawFd))
}

/// `fstat(2)`.
pub fn fstat(fd: BorrowedFd<'_>) -> SysResult<libc::stat> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: st is valid for writing one `struct stat`.
    check_int(unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) })?;
    // SAFETY: fstat succeeded, so it filled the whole struct.
    Ok(unsafe { st.assume_init() })
}

/// `getdents64(2)`: raw `linux_dirent64` records of the directory `fd` into `buf`; returns the
/// bytes filled (0 at the end). Parsing is the caller's (safe code over bytes).
pub fn getdents64(fd: BorrowedFd<'_>, buf: &mut [u8]) -> SysResult<usize> {
    retry(|| {
        // SAFETY: buf is valid for writing buf.len() bytes.
        let r = unsafe {
            libc::syscall(
                libc::SYS_getdents64,
                fd.as_raw_fd(),
                buf.as_mut_ptr(),
                buf.len(),
            )
        };
        check(r).map(|n| n as usize)
    })
}

/// `renameat2(dir, old, dir, new, RENAME_NOREPLACE)`: renames one entry of `dir` without
/// replacing an existing `new` (host side: quarantining a file a job planted, `protect`).
pub fn rename_noreplace(dir: BorrowedFd<'_>, old: &CStr, new: &CStr) -> SysResult<()> {
    retry(|| {
        // SAFETY: both names are NUL-terminated and only read during the call; the fd is open.
        check_int(unsafe {
            libc::renameat2(
                dir.as_raw_fd(),
                old.as_ptr(),
                dir.as_raw_fd(),
                new.as_ptr(),
                libc::RENAME_NOREPLACE,
            )
        })
    })
    .map(|_| ())
}

/// `openat2(2)` that may create: like [`openat2`], with `mode` for `O_CREAT` (and `O_TMPFILE`).
pub fn openat2_create(
    dir: BorrowedFd<'_>,
    path: &CStr,
    flags: libc::c_int,
    mode: libc::mode_t,
    resolve: u64,
) -> SysResult<OwnedFd> {
    let how = OpenHow {
        flags: (flags | libc::O_CLOEXEC) as u64,
        mode: mode as u64,
        resolve,
    };
    let fd = retry(|| {
        // SAFETY: as in `openat2`: a NUL-terminated path and a valid open_how of the size passed.
        check(unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dir.as_raw_fd(),
                path.as_ptr(),
                &how as *const OpenHow,
                std::mem::size_of::<OpenHow>(),
            )
        })
    })?;
    Ok(owned(fd as RawFd))
}

/// `mkdirat(2)`: `name` is one entry of `dir` (the caller resolved `dir` strictly).
pub fn mkdirat(dir: BorrowedFd<'_>, name: &CStr, mode: libc::mode_t) -> SysResult<()> {
    // SAFETY: NUL-terminated name; dir is a live fd.
    check_int(unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode) }).map(drop)
}

/// `unlinkat(2)`: removes the entry `name` of `dir` itself (a symlink is not followed);
/// `flags` is 0 or `AT_REMOVEDIR`.
pub fn unlinkat(dir: BorrowedFd<'_>, name: &CStr, flags: libc::c_int) -> SysResult<()> {
    // SAFETY: NUL-terminated name; dir is a live fd.
    check_int(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), flags) }).map(drop)
}

/// `renameat(2)` of one entry of `dir` onto another entry of the same `dir`.
pub fn renameat(dir: BorrowedFd<'_>, from: &CStr, to: &CStr) -> SysResult<()> {
    // SAFETY: NUL-terminated names; dir is a live fd, used for both.
    check_int(unsafe {
        libc::renameat(dir.as_raw_fd(), from.as_ptr(), dir.as_raw_fd(), to.as_ptr())
    })
    .map(drop)
}

/// `fstatat(2)` with `AT_SYMLINK_NOFOLLOW`: the entry `name` of `dir` itself.
pub fn lstatat(dir: BorrowedFd<'_>, name: &CStr) -> SysResult<libc::stat> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: NUL-terminated name; st is valid for writing one `struct stat`.
    check_int(unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            st.as_mut_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    // SAFETY: fstatat succeeded, so it filled the whole struct.
    Ok(unsafe { st.assume_init() })
}
