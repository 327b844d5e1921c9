//! The daemon part of `cargo xtask bench`: starts `execbox serve` with a temp config and
//! measures it from raw HTTP clients (no client process per job) and through
//! `execbox run --socket`.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::project_root;

pub struct Daemon {
    pub dir: PathBuf,
    pub sock: PathBuf,
    child: Child,
}

impl Daemon {
    /// A daemon serving one profile, `bench`: policies/default.toml with the output cap raised
    /// to `output` bytes (the throughput run needs more than 64 MiB).
    pub fn start(exe: &str, output: u64) -> Result<Daemon> {
        let dir = std::env::temp_dir().join(format!("execbox-bench-daemon-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("profiles"))?;
        let default = std::fs::read_to_string(project_root().join("policies/default.toml"))?;
        std::fs::write(
            dir.join("profiles/bench.toml"),
            default.replace("output = \"64MiB\"", &format!("output = {output}")),
        )?;
        let uid = String::from_utf8(Command::new("id").arg("-u").output()?.stdout)?;
        let cgroup = std::env::var("EXECBOX_CGROUP_PARENT")
            .map(|c| format!("cgroup_parent = {c:?}\n"))
            .unwrap_or_default();
        let d = dir.display();
        std::fs::write(
            dir.join("execbox.toml"),
            format!(
                "[sockets]\nagent = \"{d}/agent.sock\"\noperator = \"{d}/operator.sock\"\n\
                 [allow]\nuids = [{}]\n[paths]\nstate_dir = \"{d}/state\"\nprofiles_dir = \"{d}/profiles\"\n\
                 default_profile = \"bench\"\n{cgroup}[limits]\npeer_rate = 1000000\nsession_rate = 1000000\n\
                 max_sessions = 100000\nmax_jobs = 256\n[audit]\npath = \"{d}/audit.jsonl\"\n",
                uid.trim()
            ),
        )?;
        let child = Command::new(exe)
            .args(["serve", "--config"])
            .arg(dir.join("execbox.toml"))
            .env("EXECBOX_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()?;
        let sock = dir.join("agent.sock");
        let deadline = Instant::now() + Duration::from_secs(10);
        while UnixStream::connect(&sock).is_err() {
            if Instant::now() > deadline {
                bail!("the daemon did not start");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(Daemon { dir, sock, child })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One request with `Connection: close`; returns (status, body, chunked-encoded or not).
fn request(
    sock: &Path,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> Result<(u16, String)> {
    let mut s = UnixStream::connect(sock)?;
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("bad reply")?;
    Ok((status, raw))
}

fn session(sock: &Path) -> Result<String> {
    let (status, raw) = request(sock, "POST", "/v1/sessions", None, "")?;
    if status != 201 {
        bail!("session: {raw}");
    }
    let t = raw
        .split("\"token\":\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .context("no token")?;
    Ok(t.to_string())
}

/// Sandboxed `/bin/true` per second with `clients` concurrent raw-HTTP clients, for `secs`.
pub fn jobs_per_second(sock: &Path, clients: usize, secs: f64) -> Result<f64> {
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let start = Instant::now();
    let handles: Vec<_> = (0..clients)
        .map(|_| {
            let sock = sock.to_path_buf();
            std::thread::spawn(move || -> Result<u64> {
                let token = session(&sock)?;
                let mut n = 0;
                while Instant::now() < deadline {
                    let (status, raw) = request(
                        &sock,
                        "POST",
                        "/v1/exec",
                        Some(&token),
                        r#"{"argv":["/bin/true"]}"#,
                    )?;
                    if status != 200
                        || !raw.contains("\"reason\":\"exited\"")
                        || !raw.contains("\"code\":0")
                    {
                        bail!("job failed: {raw}");
                    }
                    n += 1;
                }
                Ok(n)
            })
        })
        .collect();
    let mut total = 0;
    for h in handles {
        total += h.join().map_err(|_| anyhow::anyhow!("client panicked"))??;
    }
    Ok(total as f64 / start.elapsed().as_secs_f64())
}

/// Resident memory (KiB) of a process, from /proc.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Daemon RSS idle, and its growth per running job with `n` jobs sleeping.
pub fn memory(d: &Daemon, n: usize) -> Result<(u64, f64)> {
    let idle = rss_kib(d.pid()).context("daemon rss")?;
    let token = session(&d.sock)?;
    let mut streams = vec![];
    for _ in 0..n {
        let mut s = UnixStream::connect(&d.sock)?;
        let body = r#"{"argv":["/bin/sleep","30"]}"#;
        write!(
            s,
            "POST /v1/exec HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )?;
        streams.push(s);
    }
    std::thread::sleep(Duration::from_millis(1500));
    let busy = rss_kib(d.pid()).context("daemon rss")?;
    drop(streams); // disconnecting kills the jobs
    Ok((idle, (busy.saturating_sub(idle)) as f64 / n as f64))
}
