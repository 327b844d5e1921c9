//! HTTP requests (request line, headers, bodies, pipelining) through the real router: the
//! daemon's hyper connection and `api::handle`, in-process over an in-memory pipe
//! (`execbox::server::inproc`), with a spawner that runs nothing (`Spawner::disconnected`):
//! a request that passes policy ends as `setup_failed`, no job is forked.
//!
//! Input: the first byte picks the socket (even: agent, odd: operator); the rest is written
//! as-is to one connection, after `@TOKEN@` and `@SESSION@` are replaced by a live session's
//! token and id (so the fuzzer reaches the authenticated routes), and a long poll's `wait=`
//! is cut to 0 (a 300 s wait is not a hang). Each input gets a fresh
//! daemon state. Properties: no panic; no reply is a 5xx; the exchange ends within 10 s;
//! afterwards another client (other uid, other session) is still served (`GET /v1/jobs` 200).
//! Run: `cargo xtask fuzz --target http` (docs/fuzzing.md).

#![no_main]

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use execbox::server::Server;
use execbox::server::api::{Peer, Socket};
use execbox::server::inproc::{disconnected_server, exchange};
use libfuzzer_sys::fuzz_target;

#[path = "scratch.rs"]
mod scratch;

const AGENT: Peer = Peer {
    uid: 4242,
    gid: 4242,
    pid: None,
};
const OTHER: Peer = Peer {
    uid: 4243,
    gid: 4243,
    pid: None,
};
const OPERATOR: Peer = Peer {
    uid: 0,
    gid: 0,
    pid: None,
};

struct Fixture {
    rt: tokio::runtime::Runtime,
    dir: PathBuf,
    config: String,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = scratch::dir("http");
        // Limits that keep one input's requests from throttling its own follow-ups; a short
        // approval expiry so an exec that needs approval ends instead of waiting 10 minutes.
        let config = format!(
            "[allow]\nuids = [4242, 4243]\n\
             [paths]\nstate_dir = \"{d}\"\nworkspace_root = \"{d}/ws\"\n\
             [audit]\npath = \"{d}/audit/audit.jsonl\"\n\
             [limits]\npeer_rate = 1000000\nsession_rate = 1000000\nheader_timeout = \"1s\"\n\
             [approvals]\nexpiry = \"50ms\"\n",
            d = dir.display()
        );
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        Fixture { rt, dir, config }
    })
}

async fn session(srv: &Arc<Server>, peer: Peer) -> (String, String) {
    let req = b"POST /v1/sessions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
    let reply = exchange(srv.clone(), Socket::Agent, peer, req).await;
    assert_eq!(reply.statuses, [http::StatusCode::CREATED]);
    let text = String::from_utf8_lossy(&reply.bytes).into_owned();
    let body: serde_json::Value =
        serde_json::from_str(text.split_once("\r\n\r\n").expect("a body").1).expect("json");
    (
        body["token"].as_str().expect("token").to_string(),
        body["session"].as_str().expect("session").to_string(),
    )
}

fn replace(data: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    let mut i = 0;
    while i < data.len() {
        if data[i..].starts_with(from) {
            out.extend_from_slice(to);
            i += from.len();
        } else {
            out.push(data[i]);
            i += 1;
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, request)) = data.split_first() else {
        return;
    };
    let f = fixture();
    let _ = std::fs::remove_dir_all(&f.dir);
    let srv = Arc::new(disconnected_server(&f.config, "fuzz.toml").expect("fuzz server"));
    f.rt.block_on(async {
        let (token, id) = session(&srv, AGENT).await;
        let (other, _) = session(&srv, OTHER).await;
        let request = replace(request, b"@TOKEN@", token.as_bytes());
        let request = replace(&request, b"@SESSION@", id.as_bytes());
        // `GET /v1/approvals?wait=N` is a long poll that rightly holds its reply up to 300 s,
        // which the hang bound below cannot tell from a hang: every wait is cut to 0 (the
        // value the fuzzer wrote is kept as another parameter). Found by CI's first run.
        let request = replace(&request, b"wait=", b"wait=0&was=");
        let (socket, peer) = match which % 2 {
            0 => (Socket::Agent, AGENT),
            _ => (Socket::Operator, OPERATOR),
        };
        let reply = tokio::time::timeout(
            Duration::from_secs(10),
            exchange(srv.clone(), socket, peer, &request),
        )
        .await
        .expect("the exchange hung");
        for s in &reply.statuses {
            assert!(
                !s.is_server_error(),
                "{s}: {}",
                String::from_utf8_lossy(&reply.bytes)
            );
        }
        // The daemon still serves someone else.
        let probe =
            format!("GET /v1/jobs HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {other}\r\n\r\n");
        let after = exchange(srv.clone(), Socket::Agent, OTHER, probe.as_bytes()).await;
        assert_eq!(
            after.statuses,
            [http::StatusCode::OK],
            "another client is no longer served"
        );
        srv.jobs.close();
        tokio::time::timeout(Duration::from_secs(10), srv.jobs.wait())
            .await
            .expect("jobs or approval waits did not end");
    });
});
