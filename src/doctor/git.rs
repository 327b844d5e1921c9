//! Host git in agent workspaces (`docs/threat-model.md`, "Host git in agent workspaces"): the
//! git config of whoever runs `execbox doctor` should keep git's owner check
//! (`safe.directory` never `*`) and refuse embedded bare repositories
//! (`safe.bareRepository = explicit`). Reads the config files; never runs git.

use std::path::PathBuf;

use super::{Check, Context, Mode};

const ID: &str = "host.git";
const TITLE: &str = "host git in agent workspaces";

pub fn checks(cx: &Context) -> Vec<Check> {
    // Advice for the operator running the CLI; the daemon's own start has no use for it.
    if !matches!(cx.mode, Mode::Cli { .. }) {
        return Vec::new();
    }
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let xdg = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| home.as_ref().map(|h| h.join(".config")));
    let mut files = vec![PathBuf::from("/etc/gitconfig")];
    files.extend(xdg.map(|x| x.join("git/config")));
    files.extend(home.map(|h| h.join(".gitconfig")));
    let read: Vec<(String, String)> = files
        .into_iter()
        .filter_map(|f| {
            let text = std::fs::read_to_string(&f).ok()?;
            Some((f.display().to_string(), text))
        })
        .collect();
    vec![judge(&read)]
}

/// The `safe.*` values of git config text, in order: `(key, value)` with the key lowercased.
fn safe_values(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut in_safe = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.starts_with(';') || line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix('[') {
            let name = rest.split([']', ' ', '"']).next().unwrap_or("");
            in_safe = name.eq_ignore_ascii_case("safe");
            continue;
        }
        if !in_safe {
            continue;
        }
        let (k, v) = line.split_once('=').unwrap_or((line, "true"));
        let v = v
            .split([';', '#'])
            .next()
            .unwrap_or("")
            .trim()
            .trim_matches('"');
        out.push((k.trim().to_ascii_lowercase(), v.to_string()));
    }
    out
}

/// Judges the config files `(path, text)` in git's order (system, XDG, global).
pub fn judge(files: &[(String, String)]) -> Check {
    let mut star = None;
    let mut bare: Option<(String, String)> = None;
    for (file, text) in files {
        for (k, v) in safe_values(text) {
            match k.as_str() {
                // An empty value resets the list.
                "directory" if v.is_empty() => star = None,
                "directory" if v == "*" => star = Some(file.clone()),
                "barerepository" => bare = Some((file.clone(), v)),
                _ => {}
            }
        }
    }
    if let Some(file) = star {
        return Check::warn(
            ID,
            TITLE,
            format!(
                "safe.directory = * in {file}: git trusts repositories owned by anyone, including agent workspaces"
            ),
            "remove it (git config --global --unset-all safe.directory) and run git on agent workspaces inside `execbox run` (docs/threat-model.md)",
        );
    }
    match bare {
        Some((_, v)) if v.eq_ignore_ascii_case("explicit") => Check::ok(
            ID,
            TITLE,
            "safe.directory is not `*`; safe.bareRepository = explicit",
        ),
        other => Check::warn(
            ID,
            TITLE,
            format!(
                "safe.bareRepository is {}: a bare repository inside an agent workspace can hand host git a config the agent wrote",
                other
                    .map(|(f, v)| format!("{v:?} (in {f})"))
                    .unwrap_or_else(|| "not set (git's default: all)".into())
            ),
            "git config --global safe.bareRepository explicit (and run git on agent workspaces inside `execbox run`; docs/threat-model.md)",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::Status;

    fn j(files: &[(&str, &str)]) -> Check {
        let v: Vec<_> = files
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        judge(&v)
    }

    #[test]
    fn explicit_bare_repositories_and_no_wildcard_is_ok() {
        let c = j(&[("~/.gitconfig", "[safe]\n\tbareRepository = explicit\n")]);
        assert_eq!(c.status, Status::Ok, "{c:?}");
    }

    #[test]
    fn a_wildcard_safe_directory_is_a_warning_naming_the_file() {
        let c = j(&[
            ("/etc/gitconfig", "[safe]\n\tdirectory = *\n"),
            ("~/.gitconfig", "[safe]\n\tbareRepository = explicit\n"),
        ]);
        assert_eq!(c.status, Status::Warn);
        assert!(c.evidence.contains("/etc/gitconfig"), "{c:?}");
        // An empty value later resets the list.
        let c = j(&[
            ("/etc/gitconfig", "[safe]\n\tdirectory = *\n"),
            (
                "~/.gitconfig",
                "[safe]\n\tdirectory =\n\tbareRepository = explicit\n",
            ),
        ]);
        assert_eq!(c.status, Status::Ok, "{c:?}");
    }

    #[test]
    fn the_default_bare_repository_setting_is_a_warning_with_the_command() {
        let c = j(&[]);
        assert_eq!(c.status, Status::Warn);
        assert!(c.fix.unwrap().contains("safe.bareRepository explicit"));
    }
}
