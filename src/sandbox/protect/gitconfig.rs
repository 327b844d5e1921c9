//! Is a git config a job wrote (in a repository the job created) plain — only the keys `git
//! init`, `git remote add` and `git branch` write? Deliberately strict and hand-written: it
//! accepts a small line grammar and an allowlist of keys, and calls anything else not plain
//! (continuation lines, a key on a section line, includes, unknown keys), so a config that git
//! and this parser might read differently is never taken for plain. A config that is not plain
//! is quarantined, never partially accepted. (No config crate is a dependency, and a full
//! parser would have to agree with git on every corner; an allowlist over a strict subset
//! only has to refuse.)

/// Keys allowed in a job-written config: `section.key` or `section.*.key` (any subsection).
const PLAIN_KEYS: &[&str] = &[
    "core.repositoryformatversion",
    "core.filemode",
    "core.bare",
    "core.logallrefupdates",
    "core.ignorecase",
    "core.precomposeunicode",
    "core.symlinks",
    "extensions.objectformat",
    "extensions.refstorage",
    "init.defaultbranch",
    "user.name",
    "user.email",
    "remote.*.url",
    "remote.*.pushurl",
    "remote.*.fetch",
    "branch.*.remote",
    "branch.*.merge",
    "submodule.*.url",
    "submodule.*.active",
];

/// Why a config is not plain (the first reason found).
pub fn not_plain(text: &[u8]) -> Option<String> {
    let Ok(text) = std::str::from_utf8(text) else {
        return Some("not UTF-8".into());
    };
    let mut section: Option<(String, bool)> = None; // (name, has subsection)
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        let n = i + 1;
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if line.ends_with('\\') {
            return Some(format!("line {n}: continuation line"));
        }
        if let Some(rest) = line.strip_prefix('[') {
            let Some(inner) = rest.strip_suffix(']') else {
                return Some(format!("line {n}: text after a section header"));
            };
            match parse_header(inner) {
                Some(h) => section = Some(h),
                None => return Some(format!("line {n}: unusual section header")),
            }
            continue;
        }
        let Some((name, has_sub)) = &section else {
            return Some(format!("line {n}: key outside a section"));
        };
        let (key, value) = match line.split_once('=') {
            Some((k, v)) => (k.trim(), v.trim()),
            None => (line, ""),
        };
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Some(format!("line {n}: unusual key"));
        }
        let key = key.to_ascii_lowercase();
        let full = if *has_sub {
            format!("{name}.*.{key}")
        } else {
            format!("{name}.{key}")
        };
        if !PLAIN_KEYS.contains(&full.as_str()) {
            return Some(format!(
                "key {full} is not one git init/remote/branch writes"
            ));
        }
        // Transport helpers (`ext::…`, `fd::…`, `helper::addr`) run programs.
        if full.ends_with("url") && value.contains("::") {
            return Some(format!("{full} uses a transport helper"));
        }
    }
    None
}

/// `core` → ("core", false); `remote "origin"` → ("remote", true). Anything else: None.
fn parse_header(inner: &str) -> Option<(String, bool)> {
    let inner = inner.trim();
    let ok_name =
        |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    match inner.split_once(char::is_whitespace) {
        None => ok_name(inner).then(|| (inner.to_ascii_lowercase(), false)),
        Some((name, sub)) => {
            let sub = sub.trim();
            let body = sub.strip_prefix('"').and_then(|s| s.strip_suffix('"'))?;
            (ok_name(name) && !body.contains(['"', '\\']))
                .then(|| (name.to_ascii_lowercase(), true))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_git_init_and_remote_add_write_is_plain() {
        let cfg = "[core]\n\trepositoryformatversion = 0\n\tfilemode = true\n\tbare = false\n\tlogallrefupdates = true\n[remote \"origin\"]\n\turl = https://example.com/r.git\n\tfetch = +refs/heads/*:refs/remotes/origin/*\n[branch \"main\"]\n\tremote = origin\n\tmerge = refs/heads/main\n";
        assert_eq!(not_plain(cfg.as_bytes()), None);
    }

    #[test]
    fn code_running_or_unusual_configs_are_not_plain() {
        for cfg in [
            "[core]\n\tfsmonitor = ./evil\n",
            "[core]\n\thooksPath = h\n",
            "[core] fsmonitor = x\n",
            "[include]\n\tpath = other\n",
            "[core]\n\tbare = false \\\n\tfsmonitor = x\n",
            "[remote \"o\"]\n\turl = ext::sh -c evil\n",
            "[alias]\n\tst = !evil\n",
            "[filter \"x\"]\n\tclean = evil\n",
            "[core.sub]\n\tbare = true\n",
            "fsmonitor = x\n",
        ] {
            assert!(not_plain(cfg.as_bytes()).is_some(), "{cfg:?}");
        }
    }
}
