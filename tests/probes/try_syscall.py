#!/usr/bin/env python3
"""Try syscalls a seccomp filter may block; print one line per syscall.

    python3 try_syscall.py NAME [NAME...]      ->  "NAME errno=EFAULT" (or errno=0)
    python3 try_syscall.py --list              ->  every probe name
    python3 try_syscall.py --self-test         ->  run every probe, fail if one looks filtered

Each probe passes deliberately invalid arguments (fd -1, the pointer 1, unknown flags) so
that a call the filter lets through fails with an ordinary error (EBADF, EFAULT, EINVAL,
ESRCH) *before* the kernel does anything, while the filter answers EPERM or ENOSYS. That
is what makes the two distinguishable; bubblewrap's tests/try-syscall.c does the same.

Some syscalls check a capability before looking at any argument; without that capability
they answer EPERM whatever the filter says. Those probes are marked with the capability
(see CAP_FIRST) and `--self-test` accepts EPERM from them when the caller lacks it. In the
sandbox (all capabilities dropped) their EPERM therefore proves nothing on its own.

x86_64 only (syscall numbers below). Python 3.11 standard library only.
"""

from __future__ import annotations

import ctypes
import errno
import os
import sys
import tempfile

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long

# Pointer the kernel cannot read: copy_from_user fails with EFAULT, nothing happens.
BAD_PTR = 1
BAD_FD = -1
AT_FDCWD = -100

# x86_64 syscall numbers (arch/x86/entry/syscalls/syscall_64.tbl).
NR = {
    "open": 2, "ioctl": 16, "clone": 56, "chmod": 90, "creat": 85, "mkdir": 83,
    "mknod": 133, "personality": 135, "ptrace": 101, "syslog": 103, "uselib": 134,
    "iopl": 172, "ioperm": 173, "pivot_root": 155, "adjtimex": 159, "chroot": 161,
    "acct": 163, "settimeofday": 164, "mount": 165, "umount2": 166, "swapon": 167,
    "swapoff": 168, "reboot": 169, "init_module": 175, "delete_module": 176,
    "quotactl": 179, "nfsservctl": 180, "lookup_dcookie": 212, "clock_settime": 227,
    "openat": 257, "mkdirat": 258, "mknodat": 259, "fchmodat": 268, "unshare": 272,
    "perf_event_open": 298, "name_to_handle_at": 303, "open_by_handle_at": 304,
    "clock_adjtime": 305, "setns": 308, "process_vm_readv": 310, "process_vm_writev": 311,
    "kcmp": 312, "finit_module": 313, "bpf": 321, "userfaultfd": 323, "kexec_file_load": 320,
    "kexec_load": 246, "add_key": 248, "request_key": 249, "keyctl": 250,
    "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
    "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432,
    "fspick": 433, "clone3": 435, "openat2": 437, "pidfd_getfd": 438,
    "mount_setattr": 442, "quotactl_fd": 443, "fchmodat2": 452, "open_tree_attr": 467,
}

CLONE_FS = 0x00000200
CLONE_NEWUSER = 0x10000000
SIGCHLD = 17
TIOCSTI = 0x5412
TIOCLINUX = 0x541C
S_IFCHR = 0o020000
S_IFBLK = 0o060000
O_WRONLY, O_CREAT, O_EXCL = 0o1, 0o100, 0o200
ADDR_NO_RANDOMIZE = 0x0040000
PER_QUERY = 0xFFFFFFFF

# Capability checked before any argument (kernel source order), by probe name:
# CAP_SYS_ADMIN 21, CAP_SYS_BOOT 22, CAP_SYS_MODULE 16, CAP_SYS_PACCT 20, CAP_SYSLOG 34.
CAP_FIRST = {
    "fsopen": 21, "fsmount": 21, "fspick": 21, "move_mount": 21, "pivot_root": 21, "swapoff": 21, "reboot": 22, "init_module": 16,
    "finit_module": 16, "delete_module": 16, "acct": 20, "syslog": 34, "kexec_load": 22,
    "kexec_file_load": 22, "open_by_handle_at": 2,  # CAP_DAC_READ_SEARCH
    "open_tree_attr": 21,
}

# What the default filter answers for a probe; anything not listed gets EPERM.
SECCOMP_ERRNO = {"clone3": errno.ENOSYS, "openat2": errno.ENOSYS}

# Probes that change state when permitted (a file in PROBE_DIR), reported with its mode.
FILE_PROBES = {"chmod_setuid", "chmod_setgid", "chmod_plain", "open_setuid"}


def _arg(v: int) -> ctypes.c_long | ctypes.c_ulong:
    # ctypes would pass a bare int as a 32-bit C int to the variadic syscall(): widen it.
    return ctypes.c_ulong(v) if v > 0x7FFF_FFFF_FFFF_FFFF else ctypes.c_long(v)


def sys_call(name: str, *args: int) -> int:
    """Raw syscall; returns 0 on success or the errno."""
    ctypes.set_errno(0)
    rc = _libc.syscall(ctypes.c_long(NR[name]), *(_arg(a) for a in args))
    return ctypes.get_errno() if rc == -1 else 0


class SetupError(Exception):
    """The probe could not prepare its test file; the syscall was not tried."""


def _probe_dir() -> str:
    return os.environ.get("PROBE_DIR") or tempfile.gettempdir()


def _file_probe(name: str) -> tuple[int, str]:
    """Create a file in PROBE_DIR, try the mode, report errno and the mode that stuck."""
    try:
        fd, path = tempfile.mkstemp(prefix="try_syscall.", dir=_probe_dir())
    except OSError as e:
        raise SetupError(f"{name}: cannot create a file in PROBE_DIR {_probe_dir()}: {e}") from e
    os.close(fd)
    try:
        os.chmod(path, 0o644)
        if name == "open_setuid":
            os.unlink(path)
            cpath = path.encode()
            ctypes.set_errno(0)
            rc = _libc.syscall(
                ctypes.c_long(NR["openat"]), ctypes.c_long(AT_FDCWD), ctypes.c_char_p(cpath),
                ctypes.c_long(O_WRONLY | O_CREAT | O_EXCL), ctypes.c_long(0o4755),
            )
            err = ctypes.get_errno() if rc == -1 else 0
            if rc >= 0:
                os.close(rc)
            if not os.path.exists(path):
                return err, "mode=absent"
        else:
            mode = {"chmod_setuid": 0o4755, "chmod_setgid": 0o2755, "chmod_plain": 0o755}[name]
            ctypes.set_errno(0)
            rc = _libc.syscall(
                ctypes.c_long(NR["chmod"]), ctypes.c_char_p(path.encode()), ctypes.c_long(mode)
            )
            err = ctypes.get_errno() if rc == -1 else 0
        return err, f"mode={os.stat(path).st_mode & 0o7777:04o}"
    finally:
        if os.path.exists(path):
            os.unlink(path)


def _clone_newuser() -> int:
    # CLONE_NEWUSER together with CLONE_FS is refused by copy_process with EINVAL before any
    # child exists. Should a kernel ever accept it, the child leaves at once.
    ctypes.set_errno(0)
    flags = CLONE_NEWUSER | CLONE_FS | SIGCHLD
    rc = _libc.syscall(ctypes.c_long(NR["clone"]), *(_arg(a) for a in (flags, 0, 0, 0, 0)))
    if rc == 0:
        os._exit(0)  # the child: never run Python code here
    if rc > 0:
        os.waitpid(rc, 0)
        return 0
    return ctypes.get_errno()


def _personality() -> int:
    # Setting ADDR_NO_RANDOMIZE when permitted returns the old value; restore it.
    ctypes.set_errno(0)
    old = _libc.syscall(ctypes.c_long(NR["personality"]), ctypes.c_ulong(PER_QUERY))
    err = sys_call("personality", ADDR_NO_RANDOMIZE)
    if err == 0:
        sys_call("personality", old)
    return err


PROBES = {
    # Mount family and root changes.
    "mount": lambda: sys_call("mount", BAD_PTR, BAD_PTR, BAD_PTR, 0, 0),  # EFAULT copying type
    "umount2": lambda: sys_call("umount2", BAD_PTR, 0x100),  # EINVAL: unknown flag
    "open_tree": lambda: sys_call("open_tree", BAD_FD, BAD_PTR, 0xFFFFFFFF),  # EINVAL flags
    "open_tree_attr": lambda: sys_call("open_tree_attr", BAD_FD, BAD_PTR, 0xFFFFFFFF, 0, 0),
    "move_mount": lambda: sys_call("move_mount", BAD_FD, BAD_PTR, BAD_FD, BAD_PTR, 0xFFFFFFFF),
    "fsopen": lambda: sys_call("fsopen", BAD_PTR, 0xFFFFFFFF),
    "fsconfig": lambda: sys_call("fsconfig", BAD_FD, 0xFFFF, 0, 0, 0),
    "fsmount": lambda: sys_call("fsmount", BAD_FD, 0xFFFFFFFF, 0),
    "fspick": lambda: sys_call("fspick", BAD_FD, BAD_PTR, 0xFFFFFFFF),
    "mount_setattr": lambda: sys_call("mount_setattr", BAD_FD, BAD_PTR, 0xFFFFFFFF, 0, 0),
    "pivot_root": lambda: sys_call("pivot_root", BAD_PTR, BAD_PTR),
    "chroot": lambda: sys_call("chroot", BAD_PTR),  # EFAULT: path lookup precedes the cap check
    # Other processes.
    "ptrace": lambda: sys_call("ptrace", 2, 0, 0, 0),  # PEEKDATA on pid 0: ESRCH
    "process_vm_readv": lambda: sys_call("process_vm_readv", 0, 0, 0, 0, 0, 1),  # EINVAL flags
    "process_vm_writev": lambda: sys_call("process_vm_writev", 0, 0, 0, 0, 0, 1),
    "kcmp": lambda: sys_call("kcmp", 0, 0, 0xFFFF, 0, 0),
    "pidfd_getfd": lambda: sys_call("pidfd_getfd", BAD_FD, BAD_FD, 0),  # EBADF
    # Kernel code.
    "kexec_load": lambda: sys_call("kexec_load", 0, 0, 0, 0xFFFFFFFF),
    "kexec_file_load": lambda: sys_call("kexec_file_load", BAD_FD, BAD_FD, 0, 0, 0xFFFFFFFF),
    "init_module": lambda: sys_call("init_module", 0, 0, BAD_PTR),
    "finit_module": lambda: sys_call("finit_module", BAD_FD, BAD_PTR, 0),
    "delete_module": lambda: sys_call("delete_module", BAD_PTR, 0),
    "bpf": lambda: sys_call("bpf", 0xFFFF, 0, 0),  # EINVAL: unknown command
    "perf_event_open": lambda: sys_call("perf_event_open", BAD_PTR, 0, -1, -1, 0xFFFFFFFF),
    # Keyrings, userfaultfd, io_uring.
    "keyctl": lambda: sys_call("keyctl", 0xFFFF, 0, 0, 0, 0),  # EOPNOTSUPP: unknown command
    "add_key": lambda: sys_call("add_key", BAD_PTR, BAD_PTR, 0, 0, 0),  # EFAULT
    "request_key": lambda: sys_call("request_key", BAD_PTR, BAD_PTR, 0, 0),
    "userfaultfd": lambda: sys_call("userfaultfd", 1 | 2),  # USER_MODE_ONLY + unknown: EINVAL
    "io_uring_setup": lambda: sys_call("io_uring_setup", 1, BAD_PTR),  # EFAULT
    "io_uring_enter": lambda: sys_call("io_uring_enter", BAD_FD, 0, 0, 0, 0, 0),  # EBADF
    "io_uring_register": lambda: sys_call("io_uring_register", BAD_FD, 0, 0, 0),  # EBADF
    # Namespaces.
    "unshare": lambda: sys_call("unshare", 0x1),  # EINVAL: CSIGNAL bits are not unshare flags
    "setns": lambda: sys_call("setns", BAD_FD, 0),  # EBADF
    "clone_newuser": _clone_newuser,
    "clone3": lambda: sys_call("clone3", BAD_PTR, 88),  # EFAULT
    # Terminal injection.
    "ioctl_tiocsti": lambda: sys_call("ioctl", BAD_FD, TIOCSTI, BAD_PTR),  # EBADF
    "ioctl_tiocsti_high": lambda: sys_call("ioctl", BAD_FD, (0x123 << 32) | TIOCSTI, BAD_PTR),
    "ioctl_tioclinux": lambda: sys_call("ioctl", BAD_FD, TIOCLINUX, BAD_PTR),
    # File handles, host administration, clocks, hardware.
    "open_by_handle_at": lambda: sys_call("open_by_handle_at", BAD_FD, BAD_PTR, 0),
    "name_to_handle_at": lambda: sys_call("name_to_handle_at", BAD_FD, BAD_PTR, BAD_PTR, BAD_PTR, 0xFFFF),
    "reboot": lambda: sys_call("reboot", 0, 0, 0, 0),  # bad magic: EINVAL when permitted
    "swapon": lambda: sys_call("swapon", BAD_PTR, 0xFFFFFFFF),  # EINVAL: unknown flags
    "swapoff": lambda: sys_call("swapoff", BAD_PTR),
    "acct": lambda: sys_call("acct", BAD_PTR),
    "quotactl": lambda: sys_call("quotactl", 0xFF, 0, 0, 0),  # EINVAL: quota type 255
    "quotactl_fd": lambda: sys_call("quotactl_fd", BAD_FD, 0xFF, 0, 0),
    "syslog": lambda: sys_call("syslog", 2, 0, 0),  # SYSLOG_ACTION_READ, NULL buffer: EINVAL
    "settimeofday": lambda: sys_call("settimeofday", BAD_PTR, 0),  # EFAULT
    "clock_settime": lambda: sys_call("clock_settime", 0, BAD_PTR),  # EFAULT
    "clock_adjtime": lambda: sys_call("clock_adjtime", 0, BAD_PTR),  # EFAULT
    "adjtimex": lambda: sys_call("adjtimex", BAD_PTR),  # EFAULT
    "iopl": lambda: sys_call("iopl", 4),  # EINVAL: level > 3
    "ioperm": lambda: sys_call("ioperm", 0, 0, 1),  # EINVAL: empty range
    "uselib": lambda: sys_call("uselib", BAD_PTR),
    "lookup_dcookie": lambda: sys_call("lookup_dcookie", 0, 0, 0),
    "nfsservctl": lambda: sys_call("nfsservctl", 0, 0, 0),
    "personality": _personality,
    # The two syscalls whose arguments live in structs: ENOSYS from the filter.
    "openat2": lambda: sys_call("openat2", BAD_FD, BAD_PTR, BAD_PTR, 24),
    # Privilege-raising modes, on a bad path (EFAULT when permitted) ...
    "chmod_setuid_badpath": lambda: sys_call("chmod", BAD_PTR, 0o4755),
    "fchmodat_setuid": lambda: sys_call("fchmodat", AT_FDCWD, BAD_PTR, 0o4755, 0),
    "fchmodat2_setuid": lambda: sys_call("fchmodat2", AT_FDCWD, BAD_PTR, 0o4755, 0),
    "openat_setuid": lambda: sys_call("openat", AT_FDCWD, BAD_PTR, O_CREAT | O_WRONLY, 0o4755),
    "creat_setgid": lambda: sys_call("creat", BAD_PTR, 0o2755),
    "mkdir_setgid": lambda: sys_call("mkdir", BAD_PTR, 0o2755),
    "mknod_chr": lambda: sys_call("mknod", BAD_PTR, S_IFCHR | 0o600, 0x103),  # EFAULT
    "mknodat_blk": lambda: sys_call("mknodat", AT_FDCWD, BAD_PTR, S_IFBLK | 0o600, 0x800),
    # ... and on a real file in PROBE_DIR, reporting the mode that stuck.
    "chmod_setuid": lambda: _file_probe("chmod_setuid"),
    "chmod_setgid": lambda: _file_probe("chmod_setgid"),
    "open_setuid": lambda: _file_probe("open_setuid"),
    "chmod_plain": lambda: _file_probe("chmod_plain"),  # positive control: errno=0 mode=0755
}

def errno_name(err: int) -> str:
    return "0" if err == 0 else errno.errorcode.get(err, str(err))


def run(name: str) -> tuple[int, str]:
    result = PROBES[name]()
    return result if isinstance(result, tuple) else (result, "")


def line(name: str, err: int, extra: str) -> str:
    return f"{name} errno={errno_name(err)}" + (f" {extra}" if extra else "")


def _cap_eff() -> int:
    with open("/proc/self/status") as f:
        for row in f:
            if row.startswith("CapEff:"):
                return int(row.split()[1], 16)
    return 0


def self_test() -> int:
    """On a host without seccomp: no probe may return what the filter would return."""
    caps = _cap_eff()
    failures = 0
    for name in PROBES:
        err, extra = run(name)
        filtered = SECCOMP_ERRNO.get(name, errno.EPERM)
        cap = CAP_FIRST.get(name)
        excused = err == errno.EPERM and cap is not None and not caps & (1 << cap)
        if name == "chmod_plain":
            ok = err == 0 and extra == "mode=0755"
        elif name in FILE_PROBES:
            ok = err != filtered
        else:
            ok = err != filtered or excused
        print(line(name, err, extra) + ("" if ok else "   <-- looks filtered"))
        failures += not ok
    return 1 if failures else 0


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv else 2
    if argv == ["--list"]:
        print("\n".join(PROBES))
        return 0
    unknown = [a for a in argv if a not in PROBES and a != "--self-test"]
    if unknown:
        print(f"unknown probe(s): {' '.join(unknown)}; see --list", file=sys.stderr)
        return 2
    try:
        if argv == ["--self-test"]:
            return self_test()
        for name in argv:
            print(line(name, *run(name)), flush=True)
    except SetupError as e:
        print(f"try_syscall: {e}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
