//! Config sanity: the daemon's config loads (through [`crate::config`], so every rule the daemon
//! enforces at start is enforced here too: an empty allowlist, bad modes, unknown keys,
//! profiles whose rule examples fail), and the settings that load but weaken the daemon
//! (`open = true`, root sessions without a pairing code) are warned about.
//!
//! Tokens are not in the config: sessions get 256-bit tokens from `getrandom(2)` at creation,
//! so there is nothing to check for weak or reused tokens here.

use super::{Check, Context, Loaded};

pub fn checks(cx: &Context) -> Vec<Check> {
    const ID: &str = "config.load";
    const TITLE: &str = "config loads";
    let result = match cx.config {
        Loaded::Valid(c) => Ok(c),
        Loaded::Invalid(e) => Err(e),
        Loaded::Missing => {
            return vec![Check::warn(
                ID,
                TITLE,
                "no config file found at /etc/execbox/execbox.toml; config and file checks skipped",
                "install the package (it ships /etc/execbox/execbox.toml) or pass --config FILE",
            )];
        }
    };
    let file = cx
        .config_path
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let c = match result {
        Ok(c) => c,
        Err(e) => {
            // The error names the file, the key and the fix; the fix is repeated on its own.
            let msg = crate::cli::chain(e);
            let fix = msg
                .split_once("; fix: ")
                .map(|(_, f)| f.to_string())
                .unwrap_or_else(|| {
                    format!("edit {file} (see packaging/execbox.toml for every key)")
                });
            return vec![Check::fail(ID, TITLE, msg, fix)];
        }
    };
    let mut out = vec![Check::ok(
        ID,
        TITLE,
        format!(
            "{}: {} profile(s) loaded and their rule examples pass ({}); default {:?}",
            c.file,
            c.profiles.len(),
            c.profiles.keys().cloned().collect::<Vec<_>>().join(", "),
            c.default_profile
        ),
    )];
    out.push(allow_check(c));
    out.push(pairing_check(c));
    out
}

fn pairing_check(c: &crate::config::Config) -> Check {
    const ID: &str = "config.pairing";
    const TITLE: &str = "root sessions need a pairing code";
    if !c.sessions.require_pairing {
        return Check::warn(
            ID,
            TITLE,
            "[sessions] require_pairing = false: any allowlisted peer can open a root session \
             (its own workspace and the default profile) without an operator's pairing code",
            format!(
                "in {}: set [sessions] require_pairing = true and hand agents codes from `execbox pair` (docs/pairing.md)",
                c.file
            ),
        );
    }
    Check::ok(
        ID,
        TITLE,
        "root sessions are opened only with a code from `execbox pair`",
    )
}

fn allow_check(c: &crate::config::Config) -> Check {
    const ID: &str = "config.allow";
    const TITLE: &str = "agent socket allowlist";
    if c.allow.open {
        return Check::warn(
            ID,
            TITLE,
            format!(
                "[allow] open = true: every local user who can reach {} may run commands",
                c.agent_socket.display()
            ),
            format!(
                "in {}: set open = false and list the agents' users: [allow] uids = [...] or gids = [...]",
                c.file
            ),
        );
    }
    Check::ok(
        ID,
        TITLE,
        format!("uids {:?}, gids {:?}", c.allow.uids, c.allow.gids),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::{Mode, Status};

    fn run(text: &str) -> Vec<Check> {
        let loaded = crate::config::Config::parse(text, "test.toml");
        let cx = Context {
            config: (&loaded).into(),
            config_path: None,
            mode: Mode::Cli { fix: false },
            euid: 0,
        };
        checks(&cx)
    }

    #[test]
    fn open_allowlist_is_a_warning() {
        let c = run("[allow]\nopen = true\n");
        assert_eq!(c[0].status, Status::Ok);
        assert_eq!(c[1].id, "config.allow");
        assert_eq!(c[1].status, Status::Warn);
    }

    #[test]
    fn empty_allowlist_is_a_failure_with_the_config_fix() {
        let c = run("");
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].status, Status::Fail);
        assert!(c[0].evidence.contains("key `allow`"), "{:?}", c[0]);
        assert!(
            c[0].fix.as_deref().unwrap().contains("[allow] uids"),
            "{:?}",
            c[0]
        );
    }

    #[test]
    fn a_listed_uid_with_pairing_is_ok() {
        let c = run("[allow]\nuids = [1000]\n[sessions]\nrequire_pairing = true\n");
        assert!(c.iter().all(|c| c.status == Status::Ok), "{c:?}");
    }

    #[test]
    fn sessions_without_pairing_are_a_warning_naming_the_key() {
        let c = run("[allow]\nuids = [1000]\n");
        let p = c.iter().find(|c| c.id == "config.pairing").unwrap();
        assert_eq!(p.status, Status::Warn);
        assert!(
            p.fix.as_deref().unwrap().contains("require_pairing = true"),
            "{p:?}"
        );
    }
}
