//! Egress by allowlist (`network = "allowlist"`, `docs/network.md`): the job's network
//! namespace keeps only `lo`; the supervisor, outside the sandbox, answers the job's DNS and
//! relays the TCP connections it allows.
//!
//! The job's pid 1 creates the capture sockets in its own namespace before it drops its
//! privileges (a DNS socket on 127.0.0.53:53, one TCP listener per allowed port) and hands
//! them to the supervisor over the sync socket; it keeps no copy. A socket keeps the namespace
//! it was made in, so the supervisor serves the job's namespace without being in it, and
//! connects upstream from the host's. Nothing of ours runs inside the sandbox.
//!
//! Must never: forward a DNS query, look up a name that is not allowed, connect anywhere but
//! the address it checked, or outlive the job (the service stops when the job ends, and every
//! connection with it).

pub mod allow;
mod dns;
mod ranges;
mod service;
mod sniff;

use std::collections::HashMap;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

pub use service::{Running, start};

/// Synthetic addresses are `127.<this>.x.y`: routed to `lo` inside every namespace without
/// any configuration, and never used for anything else there.
pub const POOL_SECOND_OCTET: u8 = 100;
/// Names one job may resolve (the bound of the wildcard channel, see `docs/network.md`).
pub const POOL_SIZE: usize = 4096;
/// The job's resolver (`/etc/resolv.conf` inside).
pub const DNS_ADDR: [u8; 4] = [127, 0, 0, 53];
/// Records kept per job (the counters go on past it).
const MAX_EVENTS: usize = 256;

/// One capture socket the job's pid 1 creates (in this order; see [`capture_sockets`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CaptureSocket {
    pub tcp: bool,
    pub addr: [u8; 4],
    pub port: u16,
}

/// The sockets for `egress`: DNS over UDP and TCP, then one listener per allowed port on every
/// address (so connections to any pool address arrive; the port is then taken in the job).
pub fn capture_sockets(egress: &allow::Egress) -> Vec<CaptureSocket> {
    let mut v = vec![
        CaptureSocket {
            tcp: false,
            addr: DNS_ADDR,
            port: 53,
        },
        CaptureSocket {
            tcp: true,
            addr: DNS_ADDR,
            port: 53,
        },
    ];
    v.extend(egress.ports().into_iter().map(|port| CaptureSocket {
        tcp: true,
        addr: [0, 0, 0, 0],
        port,
    }));
    v
}

/// The job's resolver configuration.
pub const RESOLV_CONF: &str = "nameserver 127.0.0.53\noptions edns0 trust-ad\n";

/// Names handed out to the job, both ways. Bounded; never shrinks during the job.
#[derive(Debug)]
pub struct Pool {
    by_name: HashMap<String, Ipv4Addr>,
    by_ip: HashMap<Ipv4Addr, String>,
    cap: usize,
}

impl Pool {
    pub fn new(cap: usize) -> Pool {
        Pool {
            by_name: HashMap::new(),
            by_ip: HashMap::new(),
            cap: cap.min(65_000),
        }
    }

    /// The address of `name`, handing out the next one the first time.
    pub fn address_for(&mut self, name: &str) -> Option<Ipv4Addr> {
        if let Some(ip) = self.by_name.get(name) {
            return Some(*ip);
        }
        if self.by_name.len() >= self.cap {
            return None;
        }
        let i = self.by_name.len() as u32 + 1;
        let ip = Ipv4Addr::new(127, POOL_SECOND_OCTET, (i >> 8) as u8, i as u8);
        self.by_name.insert(name.to_string(), ip);
        self.by_ip.insert(ip, name.to_string());
        Some(ip)
    }

    pub fn name_of(&self, ip: Ipv4Addr) -> Option<&str> {
        self.by_ip.get(&ip).map(String::as_str)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Allowed,
    #[default]
    Denied,
}

/// One DNS answer or connection, as recorded.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct NetEvent {
    /// `dns` or `connect`.
    pub kind: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qtype: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// The pool address the job used or was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synthetic: Option<String>,
    /// The address connected to upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    pub verdict: Verdict,
    /// The `network.allow` entry that allowed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// Why it was refused (or a note on an allowed answer).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub duration_ms: u64,
}

impl NetEvent {
    fn dns() -> NetEvent {
        NetEvent {
            kind: "dns".into(),
            ..Default::default()
        }
    }
    fn connect(port: u16) -> NetEvent {
        NetEvent {
            kind: "connect".into(),
            port: Some(port),
            ..Default::default()
        }
    }
}

/// What the network supervisor saw during one job (part of the exit report).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct NetReport {
    pub dns_answered: u64,
    pub dns_refused: u64,
    pub connections_allowed: u64,
    pub connections_denied: u64,
    pub bytes_up: u64,
    pub bytes_down: u64,
    /// The first records of the job, in order.
    pub events: Vec<NetEvent>,
    /// Records past the first ones that were only counted.
    pub events_dropped: u64,
}

impl NetReport {
    fn record(&mut self, ev: NetEvent) {
        match (ev.kind.as_str(), ev.verdict) {
            ("dns", Verdict::Allowed) => self.dns_answered += 1,
            ("dns", Verdict::Denied) => self.dns_refused += 1,
            (_, Verdict::Allowed) => self.connections_allowed += 1,
            (_, Verdict::Denied) => self.connections_denied += 1,
        }
        self.bytes_up += ev.bytes_up;
        self.bytes_down += ev.bytes_down;
        match ev.verdict {
            Verdict::Allowed => tracing::info!(
                kind = %ev.kind,
                name = %ev.name,
                port = ev.port,
                upstream = ev.upstream.as_deref(),
                rule = ev.rule.as_deref(),
                bytes_up = ev.bytes_up,
                bytes_down = ev.bytes_down,
                "network: allowed"
            ),
            Verdict::Denied => tracing::warn!(
                kind = %ev.kind,
                name = %ev.name,
                port = ev.port,
                reason = %ev.reason,
                "network: denied"
            ),
        }
        if self.events.len() < MAX_EVENTS {
            self.events.push(ev);
        } else {
            self.events_dropped += 1;
        }
    }
}
