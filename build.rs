//! Build script: compiles every `seccomp/*.json` (seccompiler's JSON form) into BPF for the
//! target architecture and writes `$OUT_DIR/seccomp_filters.rs`, which
//! `src/sandbox/seccomp.rs` includes.
//!
//! One file is one profile, named after the file stem; its named filters are all installed,
//! sorted by filter name. On x86_64 the generated list starts with the hand-built
//! `X86_64_EXTRA` program defined in `src/sandbox/seccomp.rs` (x32 kill), because seccompiler
//! cannot express it.
//!
//! Fails closed: a malformed or unreviewed file (unknown syscall, missing `comment`, a rule
//! seccompiler would silently reinterpret) stops the build with a message naming the file.
//! Unlike Firecracker's build script, there is no fallback to an empty filter.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::{self, Write as _};
use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value;

const SECCOMP_DIR: &str = "seccomp";
const OUT_FILE: &str = "seccomp_filters.rs";

/// Why the build stopped. Every variant names the file the operator has to fix.
#[derive(Debug)]
enum BuildError {
    Env(&'static str),
    ReadDir(PathBuf, std::io::Error),
    ReadFile(PathBuf, std::io::Error),
    ProfileName(PathBuf),
    NoProfiles(PathBuf),
    Json(PathBuf, serde_json::Error),
    Shape(PathBuf, String),
    Unreviewed(PathBuf, String),
    Compile(PathBuf, seccompiler::Error),
    Arch(String, seccompiler::BackendError),
    Write(PathBuf, std::io::Error),
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Env(var) => write!(f, "cargo did not set {var}"),
            Self::ReadDir(p, e) => write!(f, "cannot list {}: {e}", p.display()),
            Self::ReadFile(p, e) => write!(f, "cannot read {}: {e}", p.display()),
            Self::ProfileName(p) => write!(
                f,
                "{}: a profile file name must be [a-z0-9_-]+.json",
                p.display()
            ),
            Self::NoProfiles(p) => write!(f, "{}: no *.json seccomp profile found", p.display()),
            Self::Json(p, e) => write!(f, "{}: malformed JSON: {e}", p.display()),
            Self::Shape(p, msg) => write!(f, "{}: {msg}", p.display()),
            Self::Unreviewed(p, msg) => write!(f, "{}: {msg}", p.display()),
            Self::Compile(p, e) => write!(f, "{}: seccompiler rejected the file: {e}", p.display()),
            Self::Arch(arch, e) => write!(
                f,
                "seccomp filters cannot be compiled for target arch {arch}: {e}"
            ),
            Self::Write(p, e) => write!(f, "cannot write {}: {e}", p.display()),
        }
    }
}

/// One JSON rule as operators read it: which filter, what it matches, and why.
struct Entry {
    filter: String,
    action: String,
    syscall: String,
    args: String,
    comment: String,
}

struct Profile {
    name: String,
    /// (filter name, BPF program), sorted by filter name: the install order.
    programs: Vec<(String, Vec<seccompiler::sock_filter>)>,
    entries: Vec<Entry>,
}

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), BuildError> {
    let manifest =
        std::env::var_os("CARGO_MANIFEST_DIR").ok_or(BuildError::Env("CARGO_MANIFEST_DIR"))?;
    let out_dir = std::env::var_os("OUT_DIR").ok_or(BuildError::Env("OUT_DIR"))?;
    let target_arch = std::env::var("CARGO_CFG_TARGET_ARCH")
        .map_err(|_| BuildError::Env("CARGO_CFG_TARGET_ARCH"))?;
    let arch = seccompiler::TargetArch::try_from(target_arch.as_str())
        .map_err(|e| BuildError::Arch(target_arch.clone(), e))?;

    let dir = Path::new(&manifest).join(SECCOMP_DIR);
    // The directory itself, so that adding or removing a profile reruns the build.
    println!("cargo:rerun-if-changed={}", dir.display());
    println!("cargo:rerun-if-changed=build.rs");

    let mut files = Vec::new();
    for item in fs::read_dir(&dir).map_err(|e| BuildError::ReadDir(dir.clone(), e))? {
        let path = item
            .map_err(|e| BuildError::ReadDir(dir.clone(), e))?
            .path();
        if path.extension().is_some_and(|x| x == "json") {
            files.push(path);
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(BuildError::NoProfiles(dir));
    }

    let mut profiles = Vec::new();
    for path in files {
        println!("cargo:rerun-if-changed={}", path.display());
        profiles.push(compile_profile(&path, arch)?);
    }

    let code = render(&profiles, &target_arch);
    let out = Path::new(&out_dir).join(OUT_FILE);
    fs::write(&out, code).map_err(|e| BuildError::Write(out.clone(), e))
}

fn compile_profile(path: &Path, arch: seccompiler::TargetArch) -> Result<Profile, BuildError> {
    let name = path
        .file_stem()
        .and_then(|s| s.to_str())
        .filter(|s| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        })
        .ok_or_else(|| BuildError::ProfileName(path.to_path_buf()))?
        .to_owned();
    let bytes = fs::read(path).map_err(|e| BuildError::ReadFile(path.to_path_buf(), e))?;

    // Our own pass first, for the review rules seccompiler does not enforce and for the
    // entry list `doctor` and the docs show.
    let json: Value =
        serde_json::from_slice(&bytes).map_err(|e| BuildError::Json(path.to_path_buf(), e))?;
    let entries = review(path, &json)?;

    let compiled = seccompiler::compile_from_json(bytes.as_slice(), arch)
        .map_err(|e| BuildError::Compile(path.to_path_buf(), e))?;
    // BpfMap is a HashMap: sort so the install order is stable and documented.
    let programs: BTreeMap<String, Vec<seccompiler::sock_filter>> = compiled.into_iter().collect();
    Ok(Profile {
        name,
        programs: programs.into_iter().collect(),
        entries,
    })
}

/// Checks the rules that make a file reviewable and returns its entries in file order.
fn review(path: &Path, json: &Value) -> Result<Vec<Entry>, BuildError> {
    let shape = |msg: String| BuildError::Shape(path.to_path_buf(), msg);
    let unreviewed = |msg: String| BuildError::Unreviewed(path.to_path_buf(), msg);

    let filters = json
        .as_object()
        .ok_or_else(|| shape("the top level must be an object of named filters".into()))?;
    if filters.is_empty() {
        return Err(shape("the file defines no filter".into()));
    }
    let mut entries = Vec::new();
    for (filter, body) in filters {
        let action = body
            .get("match_action")
            .map(describe_action)
            .ok_or_else(|| shape(format!("filter {filter:?} has no match_action")))?;
        let rules = body
            .get("filter")
            .and_then(Value::as_array)
            .ok_or_else(|| shape(format!("filter {filter:?} has no \"filter\" array")))?;
        let mut unconditional = BTreeSet::new();
        let mut conditional = BTreeSet::new();
        for rule in rules {
            let syscall = rule
                .get("syscall")
                .and_then(Value::as_str)
                .ok_or_else(|| shape(format!("filter {filter:?}: a rule has no syscall name")))?;
            let comment = rule
                .get("comment")
                .and_then(Value::as_str)
                .unwrap_or("")
                .trim();
            if comment.is_empty() {
                return Err(unreviewed(format!(
                    "filter {filter:?}: rule for {syscall:?} has no \"comment\"; every entry needs a one-line reason"
                )));
            }
            if comment.contains('\n') {
                return Err(unreviewed(format!(
                    "filter {filter:?}: the comment of {syscall:?} must be one line"
                )));
            }
            let args = match rule.get("args") {
                None => {
                    unconditional.insert(syscall);
                    String::new()
                }
                Some(args) => {
                    conditional.insert(syscall);
                    describe_args(args).ok_or_else(|| {
                        shape(format!("filter {filter:?}: bad args for {syscall:?}"))
                    })?
                }
            };
            entries.push(Entry {
                filter: filter.clone(),
                action: action.clone(),
                syscall: syscall.to_owned(),
                args,
                comment: comment.to_owned(),
            });
        }
        // seccompiler merges rules per syscall: once a syscall has any argument rule, its
        // argument-less entry stops matching unconditionally. Refuse the ambiguity.
        if let Some(both) = unconditional.intersection(&conditional).next() {
            return Err(unreviewed(format!(
                "filter {filter:?}: {both:?} has both an unconditional rule and argument rules; \
                 seccompiler would apply only the argument rules"
            )));
        }
    }
    Ok(entries)
}

fn describe_action(action: &Value) -> String {
    match action {
        Value::String(s) => s.clone(),
        Value::Object(map) => match map.iter().next() {
            Some((k, v)) if k == "errno" => match v.as_u64() {
                Some(1) => "errno EPERM".into(),
                Some(38) => "errno ENOSYS".into(),
                Some(n) => format!("errno {n}"),
                None => format!("errno {v}"),
            },
            Some((k, v)) => format!("{k} {v}"),
            None => "?".into(),
        },
        other => other.to_string(),
    }
}

/// Renders the and-bound conditions of a rule, e.g. `arg1 & 0x800 == 0x800 (S_ISUID)`.
fn describe_args(args: &Value) -> Option<String> {
    let mut parts = Vec::new();
    for cond in args.as_array()? {
        let index = cond.get("index")?.as_u64()?;
        let val = cond.get("val")?.as_u64()?;
        let width = cond.get("type")?.as_str()?;
        let op = cond.get("op")?;
        let mut text = match op {
            Value::String(op) => {
                let sym = match op.as_str() {
                    "eq" => "==",
                    "ne" => "!=",
                    "ge" => ">=",
                    "gt" => ">",
                    "le" => "<=",
                    "lt" => "<",
                    other => other,
                };
                format!("arg{index} {sym} {val:#x}")
            }
            Value::Object(map) => {
                let mask = map.get("masked_eq")?.as_u64()?;
                format!("arg{index} & {mask:#x} == {:#x}", val & mask)
            }
            _ => return None,
        };
        if width == "dword" {
            text.push_str(" (low 32 bits)");
        }
        if let Some(c) = cond.get("comment").and_then(Value::as_str) {
            let _ = write!(text, " [{c}]");
        }
        parts.push(text);
    }
    Some(parts.join(" && "))
}

fn render(profiles: &[Profile], target_arch: &str) -> String {
    let mut out = String::new();
    out.push_str("// @generated by build.rs from seccomp/*.json. Do not edit.\n\n");
    out.push_str("static PROFILES: &[Profile] = &[\n");
    for p in profiles {
        let _ = writeln!(
            out,
            "    Profile {{\n        name: {:?},\n        filters: &[",
            p.name
        );
        if target_arch == "x86_64" {
            out.push_str("            Filter { name: \"x86_64\", program: &X86_64_EXTRA },\n");
        }
        for (name, program) in &p.programs {
            let _ = writeln!(
                out,
                "            Filter {{\n                name: {name:?},\n                program: &["
            );
            for ins in program {
                let _ = writeln!(
                    out,
                    "                    libc::sock_filter {{ code: {:#06x}, jt: {}, jf: {}, k: {:#010x} }},",
                    ins.code, ins.jt, ins.jf, ins.k
                );
            }
            out.push_str("                ],\n            },\n");
        }
        out.push_str("        ],\n        entries: &[\n");
        for e in &p.entries {
            let _ = writeln!(
                out,
                "            Entry {{ filter: {:?}, action: {:?}, syscall: {:?}, args: {:?}, comment: {:?} }},",
                e.filter, e.action, e.syscall, e.args, e.comment
            );
        }
        out.push_str("        ],\n    },\n");
    }
    out.push_str("];\n");
    out
}
