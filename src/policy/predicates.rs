//! Argument predicates (`root`, `home`, `outside_workspace`, `secret` …) and the small glob
//! matcher rules use. Paths are normalised lexically (`..`, `.`, `//`, `~`, the tracked
//! working directory); nothing here touches the filesystem, so symlinks are NOT resolved.

use std::path::Path;

use super::Context;
use super::model::Word;

/// The context's paths, normalised once per check rather than once per predicate.
#[derive(Debug, Clone)]
pub struct Paths {
    workspace: String,
    home: Option<String>,
}

impl Paths {
    pub fn new(ctx: &Context) -> Paths {
        Paths {
            workspace: normalise_abs(&ctx.workspace.to_string_lossy()),
            home: ctx
                .home
                .as_ref()
                .map(|h| normalise_abs(&h.to_string_lossy())),
        }
    }
}

/// A named test on one argument word.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Predicate {
    Root,
    RootChild,
    Home,
    OutsideWorkspace,
    WorkspaceRoot,
    BlockDevice,
    NetDevice,
    RemoteUrl,
    Secret,
    ForceRefspec,
    DeleteRefspec,
    Dynamic,
    /// `glob:PATTERN` on the word's text.
    Glob(String),
    /// `iglob:PATTERN`: case-insensitive, runs of white space and `/*…*/` comments count as one
    /// space (SQL: `DROP  DATABASE`, `drop/**/database`).
    IGlob(String),
}

pub const PREDICATE_NAMES: &[&str] = &[
    "root",
    "root_child",
    "home",
    "outside_workspace",
    "workspace_root",
    "block_device",
    "net_device",
    "remote_url",
    "secret",
    "force_refspec",
    "delete_refspec",
    "dynamic",
    "glob:PATTERN",
    "iglob:PATTERN",
];

impl Predicate {
    pub fn parse(s: &str) -> Result<Predicate, String> {
        Ok(match s {
            "root" => Predicate::Root,
            "root_child" => Predicate::RootChild,
            "home" => Predicate::Home,
            "outside_workspace" => Predicate::OutsideWorkspace,
            "workspace_root" => Predicate::WorkspaceRoot,
            "block_device" => Predicate::BlockDevice,
            "net_device" => Predicate::NetDevice,
            "remote_url" => Predicate::RemoteUrl,
            "secret" => Predicate::Secret,
            "force_refspec" => Predicate::ForceRefspec,
            "delete_refspec" => Predicate::DeleteRefspec,
            "dynamic" => Predicate::Dynamic,
            _ => match (s.strip_prefix("glob:"), s.strip_prefix("iglob:")) {
                (Some(p), _) if !p.is_empty() => Predicate::Glob(p.to_string()),
                (_, Some(p)) if !p.is_empty() => Predicate::IGlob(squash(p)),
                _ => return Err(format!("unknown predicate {s:?}")),
            },
        })
    }

    pub fn test(&self, w: &Word, cwd: Option<&str>, ctx: &Paths) -> bool {
        match self {
            Predicate::Dynamic => w.dynamic,
            Predicate::Glob(p) => glob_match(p, &w.text),
            Predicate::IGlob(p) => glob_match(p, &squash(&w.text)),
            Predicate::ForceRefspec => w.text.len() > 1 && w.text.starts_with('+'),
            Predicate::DeleteRefspec => w.text.len() > 1 && w.text.starts_with(':'),
            Predicate::RemoteUrl => is_remote_url(&w.text),
            Predicate::Secret => path_candidates(w).any(|t| is_secret(t, cwd, ctx)),
            Predicate::BlockDevice if w.glob => path_candidates(w).any(|t| {
                normalise(t, cwd, ctx).is_some_and(|p| {
                    DEVICE_SAMPLES
                        .iter()
                        .any(|d| glob_match(&p, d) && is_block_device(d))
                })
            }),
            _ => {
                if w.dynamic && !w.text.starts_with('~') && !w.text.starts_with('/') {
                    return false;
                }
                path_candidates(w).any(|t| self.test_path(t, cwd, ctx))
            }
        }
    }

    fn test_path(&self, text: &str, cwd: Option<&str>, ctx: &Paths) -> bool {
        let Some(p) = normalise(text, cwd, ctx) else {
            // Relative to an unknown directory: only "could be anywhere" predicates hold.
            return matches!(self, Predicate::OutsideWorkspace) && !text.starts_with('-');
        };
        let ws = ctx.workspace.as_str();
        match self {
            Predicate::Root => p == "/",
            Predicate::RootChild => p != "/" && p.matches('/').count() == 1,
            Predicate::Home => match &ctx.home {
                Some(h) => p == *h || p == format!("{h}/*") || p == format!("{h}/.*"),
                None => false,
            },
            Predicate::WorkspaceRoot => {
                p == ws || p == format!("{ws}/*") || p == format!("{ws}/.*")
            }
            Predicate::OutsideWorkspace => {
                if text.starts_with('-') {
                    return false;
                }
                let inside = p == ws || p.starts_with(&format!("{ws}/"));
                !inside && !private_temp(&p, ws) && !is_harmless_device(&p)
            }
            Predicate::BlockDevice => is_block_device(&p),
            Predicate::NetDevice => p.starts_with("/dev/tcp/") || p.starts_with("/dev/udp/"),
            _ => false,
        }
    }
}

/// A path in the sandbox's private temporary directories (its own tmpfs): deleting there
/// touches nothing of the host's. Not when the path is the workspace's parent or another
/// ancestor (a workspace under `/tmp` is mounted there, over the tmpfs), nor a glob that could
/// name the workspace or one of its ancestors (`/tmp/*` with the workspace `/tmp/ws`).
fn private_temp(p: &str, ws: &str) -> bool {
    let under_temp = ["/tmp/", "/var/tmp/", "/dev/shm/"]
        .iter()
        .any(|t| p.starts_with(t) && p.len() > t.len());
    if !under_temp {
        return false;
    }
    let ancestor = ws.starts_with(&format!("{p}/"));
    // The workspace and each of its ancestors, for globs.
    let covers = p.contains(['*', '?', '['])
        && std::iter::successors(Some(ws), |a| a.rsplit_once('/').map(|(head, _)| head))
            .take_while(|a| !a.is_empty())
            .any(|a| glob_match(p, a));
    !ancestor && !covers
}

/// Device names a glob such as `/dev/s?a` is tested against.
const DEVICE_SAMPLES: &[&str] = &[
    "/dev/sda",
    "/dev/sdb",
    "/dev/sda1",
    "/dev/hda",
    "/dev/vda",
    "/dev/vda1",
    "/dev/xvda",
    "/dev/nvme0n1",
    "/dev/nvme0n1p1",
    "/dev/mmcblk0",
    "/dev/dm-0",
    "/dev/md0",
    "/dev/loop0",
    "/dev/mapper/root",
    "/dev/sr0",
    "/dev/mem",
    "/dev/kmem",
    "/dev/port",
    "/dev/nbd0",
];

/// Device files that are not storage: writing or naming them changes nothing outside.
fn is_harmless_device(p: &str) -> bool {
    matches!(
        p,
        "/dev/null"
            | "/dev/zero"
            | "/dev/full"
            | "/dev/stdout"
            | "/dev/stderr"
            | "/dev/stdin"
            | "/dev/tty"
            | "/dev/random"
            | "/dev/urandom"
    ) || ["/dev/fd/", "/proc/self/fd/", "/dev/pts/"].iter().any(|d| {
        p.strip_prefix(d)
            .is_some_and(|n| !n.is_empty() && !n.contains('/'))
    })
}

/// The texts of a word that may name a path: itself, the value of `key=value`, `@file`,
/// `<file` (curl `-F name=<file` reads the file into the form).
fn path_candidates(w: &Word) -> impl Iterator<Item = &str> {
    let t = w.text.as_str();
    let after_eq = t
        .split_once('=')
        .filter(|(k, _)| !k.is_empty() && !k.contains('/'))
        .map(|(_, v)| v);
    let after_at = t
        .strip_prefix('@')
        .or_else(|| t.split_once("=@").map(|(_, v)| v))
        .or_else(|| t.strip_prefix('<'))
        .or_else(|| t.split_once("=<").map(|(_, v)| v));
    std::iter::once(t).chain(after_eq).chain(after_at)
}

/// Lower case, white space runs and `/*…*/` comments as one space, trimmed.
fn squash(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    let mut space = false;
    while let Some(c) = rest.chars().next() {
        if let Some(after) = rest.strip_prefix("/*") {
            rest = after.split_once("*/").map_or("", |(_, r)| r);
            space = true;
            continue;
        }
        rest = &rest[c.len_utf8()..];
        if c.is_whitespace() {
            space = true;
            continue;
        }
        if space && !out.is_empty() {
            out.push(' ');
        }
        space = false;
        out.extend(c.to_lowercase());
    }
    out
}

/// Lexical normalisation to an absolute path; `None` when relative to an unknown directory.
pub fn normalise(text: &str, cwd: Option<&str>, ctx: &Paths) -> Option<String> {
    let home = ctx.home.as_deref().unwrap_or("/nonexistent-home");
    let expand = |t: &str| -> Option<String> {
        if t == "~" || t.starts_with("~/") {
            Some(format!("{home}{}", &t[1..]))
        } else if let Some(rest) = t.strip_prefix('~') {
            // `~user`: another account's home directory.
            Some(format!("/home/{rest}"))
        } else if t.starts_with('/') {
            Some(t.to_string())
        } else {
            None
        }
    };
    if let Some(abs) = expand(text) {
        return Some(normalise_abs(&abs));
    }
    let base = match cwd? {
        "" => ctx.workspace.clone(),
        c => match expand(c) {
            Some(abs) => abs,
            None => format!("{}/{c}", ctx.workspace),
        },
    };
    Some(normalise_abs(&format!("{base}/{text}")))
}

fn normalise_abs(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
        // `/proc/self/root/…` (and `/proc/PID/root`) is `/…`.
        if parts.len() == 3
            && parts[0] == "proc"
            && parts[2] == "root"
            && (matches!(parts[1], "self" | "thread-self" | "1")
                || parts[1].chars().all(|c| c.is_ascii_digit()))
        {
            parts.clear();
        }
    }
    format!("/{}", parts.join("/"))
}

fn is_block_device(p: &str) -> bool {
    let Some(dev) = p.strip_prefix("/dev/") else {
        return false;
    };
    [
        "sd", "hd", "vd", "xvd", "nvme", "mmcblk", "dm-", "md", "loop", "mapper/", "disk/", "sr",
        "mem", "kmem", "port", "nbd", "rbd", "zd",
    ]
    .iter()
    .any(|prefix| dev.starts_with(prefix))
}

fn is_remote_url(t: &str) -> bool {
    if let Some((scheme, rest)) = t.split_once("://") {
        return !scheme.is_empty()
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+.-".contains(c))
            && !rest.is_empty()
            && scheme != "file";
    }
    // scp-like `host:path` or `user@host:path`.
    match t.split_once(':') {
        Some((host, _)) => {
            !host.is_empty()
                && !host.contains('/')
                && !host.starts_with('-')
                && host.contains(['@', '.'])
        }
        None => false,
    }
}

const SECRET_SUFFIXES: &[&str] = &[
    "/.ssh",
    "/.aws",
    "/.gnupg",
    "/.kube/config",
    "/.docker/config.json",
    "/.netrc",
    "/.git-credentials",
    "/.npmrc",
    "/.pypirc",
    "/.config/gh",
    "/etc/shadow",
    "/etc/gshadow",
    "/etc/sudoers",
    "/.vault-token",
    "/.config/gcloud",
    "/.azure",
];

fn is_secret(text: &str, cwd: Option<&str>, ctx: &Paths) -> bool {
    let name = Path::new(text)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Public keys are meant to be shared.
    if name.ends_with(".pub") {
        return false;
    }
    if name == ".env"
        || (name.starts_with(".env.") && !name.ends_with(".example") && !name.ends_with(".sample"))
        || (name.starts_with("id_rsa")
            || name.starts_with("id_ed25519")
            || name.starts_with("id_ecdsa")
            || name.starts_with("id_dsa"))
            && !name.ends_with(".pub")
        || name.ends_with(".pem")
        || name == "credentials"
    {
        return true;
    }
    let Some(p) = normalise(text, cwd, ctx) else {
        return false;
    };
    SECRET_SUFFIXES
        .iter()
        .any(|s| p.ends_with(s) || p.contains(&format!("{s}/")))
}

/// `*` any run, `?` one character, `[…]` a class; linear-time, no backtracking blow-up.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    if !pattern.contains(['*', '?', '[']) {
        return pattern == text;
    }
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() {
            match p[pi] {
                '*' => {
                    star = Some((pi, ti));
                    pi += 1;
                    continue;
                }
                '?' => {
                    pi += 1;
                    ti += 1;
                    continue;
                }
                '[' => {
                    if let Some((matched, next)) = class_match(&p, pi, t[ti])
                        && matched
                    {
                        pi = next;
                        ti += 1;
                        continue;
                    }
                }
                c if c == t[ti] => {
                    pi += 1;
                    ti += 1;
                    continue;
                }
                _ => {}
            }
        }
        match star {
            Some((sp, st)) => {
                pi = sp + 1;
                ti = st + 1;
                star = Some((sp, st + 1));
            }
            None => return false,
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

fn class_match(p: &[char], start: usize, c: char) -> Option<(bool, usize)> {
    let mut i = start + 1;
    let negate = p.get(i) == Some(&'!') || p.get(i) == Some(&'^');
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    while i < p.len() && (first || p[i] != ']') {
        first = false;
        if i + 2 < p.len() && p[i + 1] == '-' && p[i + 2] != ']' {
            matched |= p[i] <= c && c <= p[i + 2];
            i += 3;
        } else {
            matched |= p[i] == c;
            i += 1;
        }
    }
    (i < p.len()).then_some((matched != negate, i + 1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn ctx() -> Context {
        Context {
            workspace: PathBuf::from("/work/ws"),
            home: Some(PathBuf::from("/home/agent")),
        }
    }

    fn holds(p: &str, arg: &str, cwd: Option<&str>) -> bool {
        Predicate::parse(p)
            .unwrap()
            .test(&Word::literal(arg), cwd, &Paths::new(&ctx()))
    }

    #[test]
    fn normalises_dot_dot_before_judging_paths() {
        assert!(holds("root", "/usr/..", Some("")));
        assert!(holds("root", "//", Some("")));
        assert!(holds("root", "../../..", Some("")));
        assert!(holds("outside_workspace", "../x", Some("")));
        assert!(!holds("outside_workspace", "src/../target", Some("")));
        assert!(holds("workspace_root", ".", Some("")));
        assert!(holds("workspace_root", "*", Some("")));
        assert!(holds("workspace_root", "sub/..", Some("")));
        assert!(holds("home", "~", Some("")));
        assert!(holds("home", "/home/agent/", Some("")));
        assert!(!holds("home", "~/project", Some("")));
    }

    #[test]
    fn unknown_working_directory_counts_as_outside() {
        assert!(holds("outside_workspace", "build", None));
        assert!(!holds("workspace_root", "build", None));
    }

    #[test]
    fn temp_directories_are_not_outside_but_root_is() {
        assert!(!holds("outside_workspace", "/tmp/build", Some("")));
        assert!(holds("outside_workspace", "/tmp", Some("")));
        assert!(holds("outside_workspace", "/etc", Some("")));
    }

    /// Issue 15 item 16: with the workspace under a temporary directory, its parent and the
    /// globs that name it are outside; the rest of the private tmpfs is not.
    #[test]
    fn a_workspace_under_tmp_keeps_its_parent_outside() {
        for ws in ["/tmp/ws", "/tmp/t.1/ws", "/var/tmp/a/ws", "/dev/shm/ws"] {
            let ctx = Paths::new(&Context {
                workspace: PathBuf::from(ws),
                home: None,
            });
            let out =
                |arg: &str| Predicate::OutsideWorkspace.test(&Word::literal(arg), Some(""), &ctx);
            assert!(out(".."), "{ws}: ..");
            assert!(out("../*"), "{ws}: ../*");
            assert!(out("../.."), "{ws}: ../..");
            assert!(out("../../*"), "{ws}: ../../*");
            assert!(!out("."), "{ws}: .");
            assert!(!out("sub/x"), "{ws}: sub/x");
        }
        let ctx = Paths::new(&Context {
            workspace: PathBuf::from("/tmp/t.1/ws"),
            home: None,
        });
        let out = |arg: &str| Predicate::OutsideWorkspace.test(&Word::literal(arg), Some(""), &ctx);
        // Positive control: a sibling in the private tmpfs is not the host's.
        assert!(!out("/tmp/other"));
        assert!(!out("../other"));
        assert!(!out("/tmp/t.1/x*"));
    }

    #[test]
    fn recognises_devices_urls_secrets_and_refspecs() {
        assert!(holds("block_device", "of=/dev/sda", Some("")));
        assert!(!holds("block_device", "of=/dev/null", Some("")));
        assert!(holds("net_device", "/dev/tcp/1.2.3.4/80", Some("")));
        assert!(holds("remote_url", "https://x.io/a", Some("")));
        assert!(holds("remote_url", "git@github.com:a/b", Some("")));
        assert!(!holds("remote_url", "src/main.rs", Some("")));
        assert!(holds("secret", "@/home/agent/.ssh/id_rsa", Some("")));
        assert!(holds("secret", "~/.aws/credentials", Some("")));
        assert!(holds("secret", ".env", Some("")));
        assert!(!holds("secret", ".env.example", Some("")));
        assert!(holds("force_refspec", "+main", Some("")));
        assert!(holds("delete_refspec", ":feature", Some("")));
    }

    #[test]
    fn glob_matches_without_backtracking_blowup() {
        assert!(glob_match("mkfs*", "mkfs.ext4"));
        assert!(glob_match("[Ee][Xx][Ee][Cc]:*", "EXEC:/bin/sh"));
        assert!(!glob_match("a*b", "aaaa"));
        let long = "a".repeat(10_000);
        assert!(!glob_match("*a*a*a*a*a*b", &long));
    }
}
