//! `cargo xtask bench` (or `cargo xtask bench --only network`): what `network = "allowlist"`
//! costs against `network = "none"` (docs/network.md, docs/benchmarks.md).
//!
//! 1. Start latency of `/bin/true` through `execbox run` with the same profile in both modes,
//!    interleaved rounds.
//! 2. One download of N bytes (default 1 GiB) from a server on this host's loopback by `curl`:
//!    directly on the host, and inside the sandbox through the allowlist path (the name given
//!    in `[network] hosts`). Best of 3 each.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Result, bail};

use crate::project_root;

/// Serves `bytes` zero bytes as one HTTP response to every request, on 127.0.0.1.
fn zero_server(bytes: u64) -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let port = l.local_addr()?.port();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut s = s;
                let mut req = [0u8; 4096];
                let _ = s.read(&mut req);
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {bytes}\r\nConnection: close\r\n\r\n"
                );
                if s.write_all(head.as_bytes()).is_err() {
                    return;
                }
                let chunk = vec![0u8; 1 << 20];
                let mut left = bytes;
                while left > 0 {
                    let n = left.min(chunk.len() as u64) as usize;
                    if s.write_all(&chunk[..n]).is_err() {
                        return;
                    }
                    left -= n as u64;
                }
            });
        }
    });
    Ok(port)
}

/// The default profile's sandbox without its command rules (whose examples are checked at
/// every load and would only add noise), in one network mode or the other.
fn profile(network: bool, port: u16) -> Result<String> {
    let base = std::fs::read_to_string(project_root().join("policies/default.toml"))?;
    let rules = base.find("[[rule]]").unwrap_or(base.len());
    let mut text = base[..rules].replace("output = \"64MiB\"", "output = \"1MiB\"");
    if network {
        text = text.replacen("network = \"none\"", "network = \"allowlist\"", 1);
        text.push_str(&format!(
            "\n[network]\nallow = [\"dl.test:{port}\"]\nhosts = {{ \"dl.test\" = \"127.0.0.1\" }}\n"
        ));
    }
    let path = std::env::temp_dir().join(format!(
        "execbox-bench-net-{}-{}.toml",
        if network { "allowlist" } else { "none" },
        std::process::id()
    ));
    std::fs::write(&path, text)?;
    Ok(path.display().to_string())
}

fn time(argv: &[&str]) -> Result<f64> {
    let t = Instant::now();
    let st = Command::new(argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    let d = t.elapsed().as_secs_f64();
    if !st.success() {
        bail!("{argv:?} failed: {st}");
    }
    Ok(d)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub fn run(exe: &str, ws: &str, bytes: u64, rounds: usize) -> Result<()> {
    let port = zero_server(bytes)?;
    let none = profile(false, port)?;
    let allow = profile(true, port)?;
    let none_s = [
        exe,
        "run",
        "--policy",
        &none,
        "--workspace",
        ws,
        "--",
        "/bin/true",
    ];
    let allow_s = [
        exe,
        "run",
        "--policy",
        &allow,
        "--workspace",
        ws,
        "--",
        "/bin/true",
    ];
    for _ in 0..20 {
        time(&none_s)?;
        time(&allow_s)?;
    }
    let (mut t_none, mut t_allow) = (vec![], vec![]);
    for r in 0..rounds {
        if r % 2 == 0 {
            t_none.push(time(&none_s)?);
            t_allow.push(time(&allow_s)?);
        } else {
            t_allow.push(time(&allow_s)?);
            t_none.push(time(&none_s)?);
        }
    }
    let (m_none, m_allow) = (median(&mut t_none), median(&mut t_allow));
    println!(
        "\n## network = \"allowlist\": start latency of /bin/true ({rounds} interleaved rounds)\n"
    );
    println!("| profile | median |");
    println!("|---|---|");
    println!("| network = \"none\" | {:.2} ms |", m_none * 1e3);
    println!(
        "| network = \"allowlist\" (1 entry) | {:.2} ms |",
        m_allow * 1e3
    );
    println!(
        "| difference | {:+.2} ms (target ≤ +0.50 ms) |",
        (m_allow - m_none) * 1e3
    );

    let url_host = format!("http://127.0.0.1:{port}/");
    let url_box = format!("http://dl.test:{port}/");
    let inside = format!("curl -sS -o /dev/null {url_box}");
    let (mut host, mut boxed) = (f64::MAX, f64::MAX);
    for _ in 0..3 {
        host = host.min(time(&["curl", "-sS", "-o", "/dev/null", &url_host])?);
        boxed = boxed.min(time(&[
            exe,
            "run",
            "--policy",
            &allow,
            "--workspace",
            ws,
            "--",
            "/bin/sh",
            "-c",
            &inside,
        ])?);
    }
    let gib = bytes as f64 / (1u64 << 30) as f64;
    println!(
        "\n## network = \"allowlist\": download of {gib:.2} GiB from loopback with curl (best of 3)\n"
    );
    println!("| path | time | GiB/s | ÷ direct |");
    println!("|---|---|---|---|");
    println!(
        "| curl on the host, direct | {host:.3} s | {:.2} | 1.00× |",
        gib / host
    );
    println!(
        "| curl in execbox run, through the allowlist relay (incl. job start) | {boxed:.3} s | {:.2} | {:.2}× (target ≥ 0.80×) |",
        gib / boxed,
        host / boxed
    );
    let _ = std::fs::remove_file(none);
    let _ = std::fs::remove_file(allow);
    Ok(())
}
