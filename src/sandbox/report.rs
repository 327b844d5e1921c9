//! The child → parent report channel: fixed-size records on a pipe (atomic writes, no
//! allocation), naming the setup step that failed with its errno, or the command's end.

/// A setup step of the sandbox child, in execution order. The number is the wire value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Step {
    ArrangeFds = 1,
    SetGid,
    SetUid,
    ParentDeathSignal,
    UnshareCgroupNs,
    MakeMountsPrivate,
    /// Index into the plan's mount ops.
    Mount,
    Hostname,
    LoopbackUp,
    Chdir,
    Rlimit,
    NotDumpable,
    LandlockRuleset,
    /// Index into the plan's landlock rules.
    LandlockRule,
    LandlockRestrict,
    Securebits,
    DropBoundingSet,
    ClearAmbient,
    ClearCapabilities,
    NoNewPrivs,
    /// Index into the plan's seccomp filters.
    Seccomp,
    Signals,
    ForkCommand,
    Setsid,
    CloseFds,
    Exec,
    /// Index into the plan's capture sockets (`network = "allowlist"`).
    CaptureSockets,
}

impl Step {
    const ALL: [Step; 27] = [
        Step::ArrangeFds,
        Step::SetGid,
        Step::SetUid,
        Step::ParentDeathSignal,
        Step::UnshareCgroupNs,
        Step::MakeMountsPrivate,
        Step::Mount,
        Step::Hostname,
        Step::LoopbackUp,
        Step::Chdir,
        Step::Rlimit,
        Step::NotDumpable,
        Step::LandlockRuleset,
        Step::LandlockRule,
        Step::LandlockRestrict,
        Step::Securebits,
        Step::DropBoundingSet,
        Step::ClearAmbient,
        Step::ClearCapabilities,
        Step::NoNewPrivs,
        Step::Seccomp,
        Step::Signals,
        Step::ForkCommand,
        Step::Setsid,
        Step::CloseFds,
        Step::Exec,
        Step::CaptureSockets,
    ];

    pub fn from_wire(v: u32) -> Option<Step> {
        Step::ALL.iter().copied().find(|s| *s as u32 == v)
    }

    /// Stable kebab-case name, used in messages and `--json`.
    pub fn name(self) -> &'static str {
        match self {
            Step::ArrangeFds => "arrange-fds",
            Step::SetGid => "setresgid",
            Step::SetUid => "setresuid",
            Step::ParentDeathSignal => "parent-death-signal",
            Step::UnshareCgroupNs => "unshare-cgroup-namespace",
            Step::MakeMountsPrivate => "make-mounts-private",
            Step::Mount => "mount",
            Step::Hostname => "sethostname",
            Step::LoopbackUp => "loopback-up",
            Step::Chdir => "chdir",
            Step::Rlimit => "setrlimit",
            Step::NotDumpable => "set-not-dumpable",
            Step::LandlockRuleset => "landlock-create-ruleset",
            Step::LandlockRule => "landlock-add-rule",
            Step::LandlockRestrict => "landlock-restrict-self",
            Step::Securebits => "lock-securebits",
            Step::DropBoundingSet => "drop-bounding-set",
            Step::ClearAmbient => "clear-ambient-capabilities",
            Step::ClearCapabilities => "clear-capabilities",
            Step::NoNewPrivs => "no-new-privs",
            Step::Seccomp => "seccomp",
            Step::Signals => "signals",
            Step::ForkCommand => "fork-command",
            Step::Setsid => "setsid",
            Step::CloseFds => "close-fds",
            Step::Exec => "exec",
            Step::CaptureSockets => "network-capture-sockets",
        }
    }
}

/// What a record says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Record {
    /// A setup step failed; nothing was run.
    Failed { step: Step, index: u32, errno: i32 },
    /// The command ended with this raw wait status.
    Exited { status: i32 },
}

const KIND_FAILED: u32 = 1;
const KIND_EXITED: u32 = 2;
pub const RECORD_LEN: usize = 16;

impl Record {
    pub fn encode(self) -> [u8; RECORD_LEN] {
        let (kind, a, b, c) = match self {
            Record::Failed { step, index, errno } => (KIND_FAILED, step as u32, index, errno),
            Record::Exited { status } => (KIND_EXITED, 0, 0, status),
        };
        let mut out = [0u8; RECORD_LEN];
        out[0..4].copy_from_slice(&kind.to_ne_bytes());
        out[4..8].copy_from_slice(&a.to_ne_bytes());
        out[8..12].copy_from_slice(&b.to_ne_bytes());
        out[12..16].copy_from_slice(&c.to_ne_bytes());
        out
    }

    pub fn decode(buf: &[u8; RECORD_LEN]) -> Option<Record> {
        let word = |i: usize| u32::from_ne_bytes([buf[i], buf[i + 1], buf[i + 2], buf[i + 3]]);
        match word(0) {
            KIND_FAILED => Some(Record::Failed {
                step: Step::from_wire(word(4))?,
                index: word(8),
                errno: word(12) as i32,
            }),
            KIND_EXITED => Some(Record::Exited {
                status: word(12) as i32,
            }),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_garbage_is_rejected() {
        for r in [
            Record::Failed {
                step: Step::Exec,
                index: 3,
                errno: libc::ENOENT,
            },
            Record::Failed {
                step: Step::ArrangeFds,
                index: 0,
                errno: 1,
            },
            Record::Exited { status: 0x0900 },
        ] {
            assert_eq!(Record::decode(&r.encode()), Some(r));
        }
        assert_eq!(Record::decode(&[0xff; RECORD_LEN]), None);
        for s in Step::ALL {
            assert_eq!(Step::from_wire(s as u32), Some(s));
        }
    }
}
