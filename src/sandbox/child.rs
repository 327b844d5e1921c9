//! Code that runs in the cloned child: the sandbox's pid 1 (`init_main`) and the command it
//! forks. Everything here is async-signal-safe — only `sys` wrappers over a [`Plan`] prepared
//! before the clone; no allocation, no locks, no logging. A failure writes one fixed-size
//! record (step, index, errno) to the report pipe and exits.
//!
//! Order (DESIGN.md): ids → mounts → pivot_root → hostname/lo → rlimits → landlock →
//! capabilities + no_new_privs → seccomp → fork the command → reap until it exits.

use std::os::fd::RawFd;

use super::plan::{CHILD_REPORT_FD, CHILD_SYNC_FD, MountOp, Plan};
use super::report::{Record, Step};
use super::sys::{self, Errno};

/// Signals pid 1 forwards to the command; SIGCHLD tells it to reap.
const FORWARDED: [libc::c_int; 6] = [
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
];

const SECUREBITS_LOCKED: libc::c_ulong = (1 << 0) // SECBIT_NOROOT
    | (1 << 1) // SECBIT_NOROOT_LOCKED
    | (1 << 2) // SECBIT_NO_SETUID_FIXUP
    | (1 << 3) // SECBIT_NO_SETUID_FIXUP_LOCKED
    | (1 << 5) // SECBIT_KEEP_CAPS_LOCKED (KEEP_CAPS itself off)
    | (1 << 6) // SECBIT_NO_CAP_AMBIENT_RAISE
    | (1 << 7); // SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED

/// Reports a failed step and leaves. Never returns.
fn fail(step: Step, index: usize, e: Errno) -> ! {
    let rec = Record::Failed {
        step,
        index: index as u32,
        errno: e.0,
    };
    let _ = sys::write_all(CHILD_REPORT_FD, &rec.encode());
    sys::exit(126)
}

trait OrFail<T> {
    fn or_fail(self, step: Step, index: usize) -> T;
}

impl<T> OrFail<T> for Result<T, Errno> {
    fn or_fail(self, step: Step, index: usize) -> T {
        match self {
            Ok(v) => v,
            Err(e) => fail(step, index, e),
        }
    }
}

/// Puts stdio on 0–2 and the report/sync channels on 3/4, then closes every other inherited fd
/// (the parent may be a daemon with sockets open). Before this, errors cannot be reported on
/// the usual fd, so they go to wherever the report fd currently is.
fn arrange_fds(plan: &Plan) {
    // Move all five out of the way first so a target number never clobbers a source.
    let mut high = [0 as RawFd; 5];
    let sources = [
        plan.stdio[0],
        plan.stdio[1],
        plan.stdio[2],
        plan.report_fd,
        plan.sync_fd,
    ];
    for (h, &src) in high.iter_mut().zip(sources.iter()) {
        match sys::dup_cloexec_above(src, 10) {
            Ok(fd) => *h = fd,
            Err(e) => {
                let rec = Record::Failed {
                    step: Step::ArrangeFds,
                    index: 0,
                    errno: e.0,
                };
                let _ = sys::write_all(plan.report_fd, &rec.encode());
                sys::exit(126);
            }
        }
    }
    for (target, &h) in high.iter().enumerate() {
        let r = if target < 3 {
            sys::dup2(h, target as RawFd)
        } else {
            sys::dup3_cloexec(h, target as RawFd)
        };
        if let Err(e) = r {
            let rec = Record::Failed {
                step: Step::ArrangeFds,
                index: target as u32,
                errno: e.0,
            };
            let _ = sys::write_all(high[3], &rec.encode());
            sys::exit(126);
        }
    }
    sys::close_range(5, u32::MAX, 0).or_fail(Step::ArrangeFds, 5);
}

/// Runs the mount plan: detached copies of host trees, pivot into a fresh tmpfs, then
/// attach everything at its place. Returns nothing; any failure ends the process.
fn mounts(plan: &mut Plan, received: Option<RawFd>) {
    sys::mount(None, c"/", None, libc::MS_REC | libc::MS_PRIVATE, None)
        .or_fail(Step::MakeMountsPrivate, 0);
    let attach_flags = libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NODEV;
    for i in 0..plan.mounts.len() {
        let r = match &plan.mounts[i] {
            MountOp::CloneTree {
                src, slot, attrs, ..
            } => {
                let flags = (libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC) as libc::c_uint
                    | libc::AT_RECURSIVE as libc::c_uint;
                sys::open_tree(src, flags).and_then(|fd| {
                    plan.slots[*slot] = fd;
                    sys::mount_setattr_fd(fd, true, *attrs, 0, None)
                })
            }
            MountOp::NewProc { slot } => {
                let attrs = attach_flags | libc::MOUNT_ATTR_NOEXEC;
                sys::new_detached_mount(c"proc", attrs).map(|fd| plan.slots[*slot] = fd)
            }
            MountOp::PivotIntoTmpfs { base } => {
                sys::mount(
                    Some(c"execbox"),
                    base,
                    Some(c"tmpfs"),
                    libc::MS_NOSUID | libc::MS_NODEV,
                    Some(c"mode=0755,size=1m,nr_inodes=4096"),
                )
                .and_then(|_| sys::chdir(base))
                // pivot_root(".", "."): the old root ends up stacked on the new one and is
                // detached right away (pivot_root(2), "new_root and put_old may be the same").
                .and_then(|_| sys::pivot_root(c".", c"."))
                .and_then(|_| sys::umount2(c".", libc::MNT_DETACH))
                .and_then(|_| sys::chdir(c"/"))
            }
            MountOp::Mkdir { path } => sys::mkdir_exist_ok(path, 0o755),
            MountOp::Touch { path } => sys::touch(path),
            MountOp::Symlink { target, path } => sys::symlink(target, path),
            MountOp::Attach { slot, target, .. } => {
                let fd = plan.slots[*slot];
                let r = sys::move_mount_fd(fd, target);
                sys::close(fd);
                r
            }
            MountOp::AttachReceived { target, .. } => match received {
                Some(fd) => {
                    let r = sys::move_mount_fd(fd, target);
                    sys::close(fd);
                    r
                }
                None => Err(Errno(libc::EBADF)),
            },
            MountOp::Tmpfs {
                target,
                data,
                flags,
            } => sys::mount(Some(c"execbox"), target, Some(c"tmpfs"), *flags, Some(data)),
            MountOp::Rebind {
                src, target, attrs, ..
            } => rebind(src, target, *attrs),
            MountOp::HideFile { target, .. } => rebind(
                c"/dev/null",
                target,
                libc::MOUNT_ATTR_RDONLY | libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NOEXEC,
            ),
            MountOp::WriteFile { path, content } => sys::write_new_file(path, content.as_bytes()),
            MountOp::RemountReadOnly { target } => sys::mount(
                None,
                target,
                None,
                libc::MS_REMOUNT
                    | libc::MS_BIND
                    | libc::MS_RDONLY
                    | libc::MS_NOSUID
                    | libc::MS_NODEV,
                None,
            ),
        };
        r.or_fail(Step::Mount, i);
    }
}

/// Binds `src` onto `target` with `attrs` through a detached copy.
fn rebind(src: &std::ffi::CStr, target: &std::ffi::CStr, attrs: u64) -> Result<(), Errno> {
    let flags = (libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC) as libc::c_uint
        | libc::AT_RECURSIVE as libc::c_uint;
    let fd = sys::open_tree(src, flags)?;
    let r = sys::mount_setattr_fd(fd, true, attrs, 0, None)
        .and_then(|_| sys::move_mount_fd(fd, target));
    sys::close(fd);
    r
}

fn landlock(plan: &Plan) {
    let Some(ll) = &plan.landlock else { return };
    let ruleset = sys::landlock_create_ruleset(ll.handled_fs, ll.handled_net, ll.scoped, ll.abi)
        .or_fail(Step::LandlockRuleset, 0);
    for (i, rule) in ll.rules.iter().enumerate() {
        let fd =
            sys::open(&rule.path, libc::O_PATH | libc::O_CLOEXEC, 0).or_fail(Step::LandlockRule, i);
        sys::landlock_add_path_rule(ruleset, fd, rule.access).or_fail(Step::LandlockRule, i);
        sys::close(fd);
    }
    sys::landlock_restrict_self(ruleset).or_fail(Step::LandlockRestrict, 0);
    sys::close(ruleset);
}

/// `network = "allowlist"`: creates the capture sockets in this (the job's) network namespace
/// and hands them to the supervisor, in plan order, at most a message's worth at a time; keeps
/// no copy. Done while pid 1 still holds its capabilities in its own namespace (ports < 1024).
fn capture_sockets(plan: &Plan) {
    let mut batch = [-1 as RawFd; sys::MAX_FDS_PER_MESSAGE];
    let mut filled = 0;
    let total = plan.capture.len();
    for (i, s) in plan.capture.iter().enumerate() {
        batch[filled] = sys::capture_socket(s.tcp, s.addr, s.port).or_fail(Step::CaptureSockets, i);
        filled += 1;
        if filled == batch.len() || i + 1 == total {
            sys::send_fds(CHILD_SYNC_FD, b'N', &batch[..filled]).or_fail(Step::CaptureSockets, i);
            for fd in &batch[..filled] {
                sys::close(*fd);
            }
            filled = 0;
        }
    }
}

fn drop_privileges(plan: &Plan) {
    sys::prctl(libc::PR_SET_SECUREBITS, SECUREBITS_LOCKED, 0).or_fail(Step::Securebits, 0);
    for cap in 0..=plan.cap_last {
        sys::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0)
            .or_fail(Step::DropBoundingSet, cap as usize);
    }
    sys::prctl(
        libc::PR_CAP_AMBIENT,
        libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
        0,
    )
    .or_fail(Step::ClearAmbient, 0);
    sys::clear_capabilities().or_fail(Step::ClearCapabilities, 0);
    sys::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0).or_fail(Step::NoNewPrivs, 0);
}

/// The command process: own session, only fds 0–2 survive exec, then exec.
fn command_main(plan: &Plan) -> ! {
    sys::set_signal_mask(&sys::sigset(&[])).or_fail(Step::Signals, 1);
    sys::setsid().or_fail(Step::Setsid, 0);
    // CLOEXEC rather than close: the report pipe must stay usable until exec succeeds.
    sys::close_range(3, u32::MAX, libc::CLOSE_RANGE_CLOEXEC).or_fail(Step::CloseFds, 0);
    let mut err = Errno(libc::ENOENT);
    for path in &plan.exec_candidates {
        let e = sys::execve(path, &plan.argv_ptrs, &plan.envp_ptrs);
        // Like execvp: remember a permission problem over "not here"; keep trying the PATH.
        if e.0 != libc::ENOENT && e.0 != libc::ENOTDIR {
            err = e;
        }
    }
    let rec = Record::Failed {
        step: Step::Exec,
        index: 0,
        errno: err.0,
    };
    let _ = sys::write_all(CHILD_REPORT_FD, &rec.encode());
    sys::exit(127)
}

/// Entry point of the cloned child (pid 1 of the new pid namespace).
pub fn init_main(plan: &mut Plan) -> ! {
    // Die with the parent. Set again after setresuid, which clears it.
    let _ = sys::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0);
    arrange_fds(plan);

    // Wait for the parent to write our id maps and put us in the job cgroup.
    let received = match sys::recv_byte_with_fd(CHILD_SYNC_FD) {
        Ok(Some((b'G', fd))) => fd,
        // The parent gave up (or died): leave quietly.
        _ => sys::exit(126),
    };

    sys::setresgid(plan.gid_inside).or_fail(Step::SetGid, 0);
    sys::setresuid(plan.uid_inside).or_fail(Step::SetUid, 0);
    sys::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0)
        .or_fail(Step::ParentDeathSignal, 0);
    // If the parent died before the line above, the death signal was missed: check.
    if sys::peer_closed(CHILD_SYNC_FD) {
        sys::exit(126);
    }
    // Now inside the job cgroup: make it our cgroup root.
    sys::unshare(libc::CLONE_NEWCGROUP).or_fail(Step::UnshareCgroupNs, 0);

    mounts(plan, received);
    sys::sethostname(plan.hostname).or_fail(Step::Hostname, 0);
    if plan.loopback_up {
        sys::loopback_up().or_fail(Step::LoopbackUp, 0);
    }
    capture_sockets(plan);
    sys::chdir(&plan.cwd).or_fail(Step::Chdir, 0);
    sys::setrlimit(libc::RLIMIT_CORE, 0).or_fail(Step::Rlimit, 0);
    sys::setrlimit(libc::RLIMIT_NOFILE, plan.nofile).or_fail(Step::Rlimit, 1);
    // Keep the command (same uid) out of our /proc/1/fd and away from ptrace.
    sys::prctl(libc::PR_SET_DUMPABLE, 0, 0).or_fail(Step::NotDumpable, 0);

    landlock(plan);
    drop_privileges(plan);
    for (i, filter) in plan.seccomp.iter().enumerate() {
        sys::seccomp_install(filter).or_fail(Step::Seccomp, i);
    }

    // Block what we wait for before forking, so no SIGCHLD is lost; the command unblocks.
    let mut waited = [0; FORWARDED.len() + 1];
    waited[..FORWARDED.len()].copy_from_slice(&FORWARDED);
    waited[FORWARDED.len()] = libc::SIGCHLD;
    let set = sys::sigset(&waited);
    sys::set_signal_mask(&set).or_fail(Step::Signals, 0);
    for sig in FORWARDED {
        sys::install_noop_handler(sig).or_fail(Step::Signals, sig as usize);
    }

    let command = sys::fork(|| command_main(plan)).or_fail(Step::ForkCommand, 0);
    sys::close(CHILD_SYNC_FD);
    loop {
        let sig = match sys::sigwait(&set) {
            Ok(s) => s,
            Err(_) => continue,
        };
        if sig != libc::SIGCHLD {
            let _ = sys::kill(command, sig);
            continue;
        }
        // Reap everything; zombies of orphaned grandchildren land here too.
        while let Ok(Some((pid, status))) = sys::waitpid_nohang(-1) {
            if pid == command {
                let rec = Record::Exited { status };
                let _ = sys::write_all(CHILD_REPORT_FD, &rec.encode());
                // Leaving kills every other process in the namespace.
                let code = match sys::Exit::from_wait_status(status) {
                    sys::Exit::Code(c) => c,
                    sys::Exit::Signal(s) => 128 + s,
                };
                sys::exit(code);
            }
        }
    }
}
