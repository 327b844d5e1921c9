//! The `[network]` contract of a profile: which names (and ports) a job may reach, static
//! answers, and per-job limits. Parsed from raw TOML values into types that cannot be invalid;
//! the caller ([`crate::profile`]) turns a [`Invalid`] into an error naming file, key and fix.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::Duration;

use serde::Deserialize;

/// Ports an entry without `:port` allows: HTTP and HTTPS.
pub const DEFAULT_PORTS: [u16; 2] = [80, 443];
/// Distinct ports a profile may name: each is one listening socket in every job's namespace.
pub const MAX_PORTS: usize = 6;
const DEFAULT_MAX_CONNECTIONS: usize = 64;
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// The raw `[network]` table.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawNetwork {
    #[serde(default)]
    allow: Vec<String>,
    #[serde(default)]
    hosts: BTreeMap<String, String>,
    on_unknown: Option<String>,
    max_connections: Option<usize>,
    idle_timeout: Option<String>,
}

/// A validated allowlist.
#[derive(Debug, Clone, PartialEq)]
pub struct Egress {
    pub allow: Vec<AllowEntry>,
    /// Static answers (tried before the host's resolver); each name is also allowed.
    pub hosts: BTreeMap<String, Ipv4Addr>,
    /// Connections open at once; more are refused (and counted).
    pub max_connections: usize,
    /// A connection with no traffic either way for this long is closed.
    pub idle_timeout: Duration,
}

/// One `allow` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowEntry {
    /// As written in the profile (named in records and denials).
    pub text: String,
    pub pattern: Pattern,
    /// `Some` when the entry names its port: opaque TCP (SSH, git://) is allowed there.
    pub port: Option<u16>,
}

/// A host name, or `*.suffix` (any name ending in `.suffix`; never `suffix` itself and never a
/// look-alike such as `evilsuffix`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pattern {
    Exact(String),
    /// Stored with its leading dot: `.crates.io`.
    Suffix(String),
}

/// Why a `[network]` value is not valid: the key, the message and the fix.
#[derive(Debug, PartialEq)]
pub struct Invalid {
    pub key: &'static str,
    pub message: String,
    pub fix: &'static str,
}

fn invalid(key: &'static str, message: String, fix: &'static str) -> Invalid {
    Invalid { key, message, fix }
}

/// A DNS name as the job's resolver sends it: lower case, no trailing dot. `None` when it is
/// not a plain host name (letters, digits, `-`, `_` in labels of 1–63, at most 253 bytes).
pub fn normalize(name: &str) -> Option<String> {
    let n = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    let ok = !n.is_empty()
        && n.len() <= 253
        && n.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    ok.then_some(n)
}

impl Pattern {
    pub fn matches(&self, name: &str) -> bool {
        match self {
            Pattern::Exact(n) => n == name,
            Pattern::Suffix(s) => name.len() > s.len() && name.ends_with(s.as_str()),
        }
    }
}

impl AllowEntry {
    /// Whether this entry lets `name` be reached on `port`.
    pub fn allows(&self, name: &str, port: u16) -> bool {
        self.pattern.matches(name)
            && match self.port {
                Some(p) => p == port,
                None => DEFAULT_PORTS.contains(&port),
            }
    }
}

fn parse_entry(text: &str) -> Result<AllowEntry, Invalid> {
    const KEY: &str = "network.allow";
    const FIX: &str = "write a host name such as \"pypi.org\", a suffix such as \"*.crates.io\", optionally with \":port\"";
    let (host, port) = match text.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => {
            let port: u16 = p
                .parse()
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| invalid(KEY, format!("{text:?}: {p:?} is not a port"), FIX))?;
            (h, Some(port))
        }
        Some(_) => {
            return Err(invalid(
                KEY,
                format!("{text:?}: IPv6 is not supported"),
                "name an IPv4 host; IPv6 is refused inside the job",
            ));
        }
        None => (text, None),
    };
    if port == Some(53) {
        return Err(invalid(
            KEY,
            format!("{text:?}: port 53 is the job's own DNS, answered by the supervisor"),
            "remove the entry; allowed names are answered without it",
        ));
    }
    if host.parse::<Ipv4Addr>().is_ok() {
        return Err(invalid(
            KEY,
            format!("{text:?} is an IP address"),
            "give the address a name in [network] hosts and allow that name",
        ));
    }
    let pattern = match host.strip_prefix("*.") {
        Some(suffix) => {
            let s = normalize(suffix)
                .ok_or_else(|| invalid(KEY, format!("{text:?} is not a host name"), FIX))?;
            if !s.contains('.') {
                return Err(invalid(
                    KEY,
                    format!("{text:?} would allow a whole top-level domain"),
                    "name a registrable domain, e.g. \"*.crates.io\"",
                ));
            }
            Pattern::Suffix(format!(".{s}"))
        }
        None => Pattern::Exact(
            normalize(host)
                .filter(|_| !host.contains('*'))
                .ok_or_else(|| invalid(KEY, format!("{text:?} is not a host name"), FIX))?,
        ),
    };
    Ok(AllowEntry {
        text: text.to_string(),
        pattern,
        port,
    })
}

impl Egress {
    /// Validates the raw table.
    pub fn from_raw(raw: RawNetwork) -> Result<Egress, Invalid> {
        let allow = raw
            .allow
            .iter()
            .map(|t| parse_entry(t))
            .collect::<Result<Vec<_>, _>>()?;
        if allow.is_empty() {
            return Err(invalid(
                "network.allow",
                "is empty: network = \"allowlist\" with nothing allowed".into(),
                "list the hosts the jobs need, or use network = \"none\"",
            ));
        }
        let mut hosts = BTreeMap::new();
        for (name, addr) in raw.hosts {
            let n = normalize(&name)
                .filter(|_| !name.contains('*'))
                .ok_or_else(|| {
                    invalid(
                        "network.hosts",
                        format!("{name:?} is not a host name"),
                        "write a plain name such as \"mirror.internal\"",
                    )
                })?;
            let ip: Ipv4Addr = addr.parse().map_err(|_| {
                invalid(
                    "network.hosts",
                    format!("{name:?} = {addr:?} is not an IPv4 address"),
                    "write an address such as \"10.1.2.3\"",
                )
            })?;
            if !allow.iter().any(|e| e.pattern.matches(&n)) {
                return Err(invalid(
                    "network.hosts",
                    format!("{name:?} is not allowed by any network.allow entry"),
                    "add the name (with its port) to network.allow",
                ));
            }
            hosts.insert(n, ip);
        }
        match raw.on_unknown.as_deref() {
            None | Some("deny") => {}
            Some("approve") => {
                return Err(invalid(
                    "network.on_unknown",
                    "\"approve\" is not available yet in this version".into(),
                    "use \"deny\" and list the hosts in network.allow",
                ));
            }
            Some(other) => {
                return Err(invalid(
                    "network.on_unknown",
                    format!("{other:?} is not \"deny\""),
                    "write on_unknown = \"deny\"",
                ));
            }
        }
        let max_connections = raw.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS);
        if !(1..=4096).contains(&max_connections) {
            return Err(invalid(
                "network.max_connections",
                format!("{max_connections} is outside 1..=4096"),
                "use e.g. 64",
            ));
        }
        let idle_timeout = match raw.idle_timeout {
            None => DEFAULT_IDLE_TIMEOUT,
            Some(t) => crate::units::parse_duration(&t)
                .ok()
                .filter(|d| !d.is_zero())
                .ok_or_else(|| {
                    invalid(
                        "network.idle_timeout",
                        format!("{t:?} is not a positive duration"),
                        "write e.g. \"5m\"",
                    )
                })?,
        };
        let e = Egress {
            allow,
            hosts,
            max_connections,
            idle_timeout,
        };
        if e.ports().len() > MAX_PORTS {
            return Err(invalid(
                "network.allow",
                format!(
                    "names {} distinct ports; at most {MAX_PORTS} are supported",
                    e.ports().len()
                ),
                "drop entries for ports the jobs do not need",
            ));
        }
        Ok(e)
    }

    /// The first entry that lets `name` be reached on `port`.
    pub fn rule_for(&self, name: &str, port: u16) -> Option<&AllowEntry> {
        self.allow.iter().find(|e| e.allows(name, port))
    }

    /// Whether any entry names `name` (on any port): the job's DNS answers it.
    pub fn name_allowed(&self, name: &str) -> bool {
        self.allow.iter().any(|e| e.pattern.matches(name))
    }

    /// Every port some entry allows: one capture listener each in the job's namespace.
    pub fn ports(&self) -> BTreeSet<u16> {
        let mut ports = BTreeSet::new();
        for e in &self.allow {
            match e.port {
                Some(p) => {
                    ports.insert(p);
                }
                None => ports.extend(DEFAULT_PORTS),
            }
        }
        ports
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn egress(allow: &[&str]) -> Result<Egress, Invalid> {
        Egress::from_raw(RawNetwork {
            allow: allow.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        })
    }

    #[test]
    fn suffixes_never_match_look_alikes_or_the_bare_domain() {
        let e = egress(&["*.pypi.org", "github.com:22", "files.pythonhosted.org"]).unwrap();
        assert!(e.rule_for("a.pypi.org", 443).is_some());
        assert!(e.rule_for("x.y.pypi.org", 80).is_some());
        for bad in ["evilpypi.org", "pypi.org", "pypi.org.evil.com", "apypi.org"] {
            assert!(e.rule_for(bad, 443).is_none(), "{bad}");
            assert!(!e.name_allowed(bad), "{bad}");
        }
        assert!(e.rule_for("github.com", 22).is_some());
        assert!(
            e.rule_for("github.com", 443).is_none(),
            "only the port named"
        );
        assert!(e.rule_for("files.pythonhosted.org", 8080).is_none());
        assert_eq!(e.ports(), BTreeSet::from([22, 80, 443]));
    }

    #[test]
    fn names_are_compared_lower_case_without_the_root_dot() {
        assert_eq!(normalize("PyPI.Org.").as_deref(), Some("pypi.org"));
        assert_eq!(normalize("a..b"), None);
        assert_eq!(normalize("-a.b"), None);
        assert_eq!(normalize("a b"), None);
        let e = egress(&["PyPI.org"]).unwrap();
        assert!(e.name_allowed("pypi.org"));
    }

    #[test]
    fn bad_entries_name_the_key_and_a_fix() {
        for (allow, key) in [
            (vec!["1.2.3.4"], "network.allow"),
            (vec!["*.com"], "network.allow"),
            (vec!["*"], "network.allow"),
            (vec!["a*.b.com"], "network.allow"),
            (vec!["pypi.org:0"], "network.allow"),
            (vec!["pypi.org:http"], "network.allow"),
            (vec!["dns.example:53"], "network.allow"),
            (vec!["[::1]:443"], "network.allow"),
            (vec![], "network.allow"),
            (
                vec![
                    "a.com:1", "a.com:2", "a.com:3", "a.com:4", "a.com:5", "a.com:6", "a.com:7",
                ],
                "network.allow",
            ),
        ] {
            let e = egress(&allow).unwrap_err();
            assert_eq!(e.key, key, "{allow:?}");
            assert!(!e.fix.is_empty());
        }
        let raw = |hosts: &[(&str, &str)], on_unknown: Option<&str>| RawNetwork {
            allow: vec!["mirror.internal".into()],
            hosts: hosts
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
            on_unknown: on_unknown.map(String::from),
            ..Default::default()
        };
        let e = Egress::from_raw(raw(&[("mirror.internal", "10.1.2.3")], Some("deny"))).unwrap();
        assert_eq!(e.hosts["mirror.internal"], Ipv4Addr::new(10, 1, 2, 3));
        for (r, key) in [
            (
                raw(&[("other.internal", "10.1.2.3")], None),
                "network.hosts",
            ),
            (raw(&[("mirror.internal", "::1")], None), "network.hosts"),
            (raw(&[("mirror.internal", "x")], None), "network.hosts"),
            (raw(&[], Some("maybe")), "network.on_unknown"),
            (raw(&[], Some("approve")), "network.on_unknown"),
        ] {
            assert_eq!(Egress::from_raw(r).unwrap_err().key, key);
        }
    }
}
