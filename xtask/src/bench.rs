//! `cargo xtask bench`: the published comparison, measured, never asserted in tests.
//!
//! 1. Latency of `/bin/true` through `execbox run`, through the daemon (`execbox run --socket`),
//!    `bwrap --unshare-all`, `unshare` and bare, **interleaved** in one run (one round = one run
//!    of each, in rotating order) so that machine noise hits all of them alike. Reports median,
//!    p90, p99 and the ratios to bwrap.
//! 2. Daemon launches per second at 1/2/4/8 concurrent raw-HTTP clients; daemon RSS idle and
//!    per running job.
//! 3. Throughput of 1 GiB of stdout through `execbox run` and the daemon vs the same producer
//!    into a plain pipe.
//! 4. Policy check time per command over the detection corpus.
//! 5. `network = "allowlist"` against `"none"`: start latency and a download (`bench_net.rs`).
//!
//! Options: `--rounds N` (default 300), `--bytes N` (default 1 GiB), `--workspace DIR`,
//! `--only network` (section 5 alone).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::{project_root, run_cmd};

struct Subject {
    name: &'static str,
    argv: Vec<String>,
    samples: Vec<Duration>,
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

pub fn run(args: &[String]) -> Result<()> {
    let mut rounds = 300usize;
    let mut bytes: u64 = 1 << 30;
    let mut workspace: Option<PathBuf> = None;
    let mut only_network = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--rounds" => rounds = it.next().context("--rounds N")?.parse()?,
            "--bytes" => bytes = it.next().context("--bytes N")?.parse()?,
            "--workspace" => workspace = Some(it.next().context("--workspace DIR")?.into()),
            "--only" if it.next().map(String::as_str) == Some("network") => only_network = true,
            other => {
                bail!(
                    "unknown option {other}; options: --rounds N, --bytes N, --workspace DIR, --only network"
                )
            }
        }
    }
    run_cmd(Command::new("cargo").args(["build", "--release", "--bin", "execbox"]))?;
    let execbox = project_root().join("target/release/execbox");
    let tmp = std::env::temp_dir().join(format!("execbox-bench-{}", std::process::id()));
    let ws = workspace.unwrap_or_else(|| tmp.clone());
    std::fs::create_dir_all(&ws)?;
    let ws_s = ws.display().to_string();
    let exe = execbox.display().to_string();

    describe_machine();
    if only_network {
        crate::bench_net::run(&exe, &ws_s, bytes, rounds)?;
        let _ = std::fs::remove_dir_all(&tmp);
        return Ok(());
    }
    let daemon = crate::daemon::Daemon::start(&exe, bytes * 2)?;
    let sock_s = daemon.sock.display().to_string();
    let mut subjects = vec![
        Subject {
            name: "execbox run",
            argv: strings(&[&exe, "run", "--workspace", &ws_s, "--", "/bin/true"]),
            samples: vec![],
        },
        Subject {
            name: "execbox run --socket (daemon)",
            argv: strings(&[&exe, "run", "--socket", &sock_s, "--", "/bin/true"]),
            samples: vec![],
        },
        Subject {
            name: "bwrap --unshare-all",
            argv: strings(&[
                "bwrap",
                "--unshare-all",
                "--die-with-parent",
                "--ro-bind",
                "/usr",
                "/usr",
                "--symlink",
                "usr/lib64",
                "/lib64",
                "--symlink",
                "usr/lib",
                "/lib",
                "--symlink",
                "usr/bin",
                "/bin",
                "--proc",
                "/proc",
                "--dev",
                "/dev",
                "--bind",
                &ws_s,
                &ws_s,
                "--chdir",
                &ws_s,
                "/bin/true",
            ]),
            samples: vec![],
        },
        Subject {
            name: "unshare -Urmnpf",
            argv: strings(&["unshare", "-Urmnpf", "/bin/true"]),
            samples: vec![],
        },
        Subject {
            name: "bare /bin/true",
            argv: strings(&["/bin/true"]),
            samples: vec![],
        },
    ];
    let available: Vec<bool> = subjects.iter().map(|s| runs(&s.argv)).collect();
    for (s, ok) in subjects.iter().zip(&available) {
        if !ok {
            eprintln!("note: {} does not run here; it is left out", s.name);
        }
    }
    if !available[0] {
        bail!("execbox run -- /bin/true fails here; run `cargo xtask ci` first");
    }
    // Warm-up, then interleaved rounds in rotating order.
    for _ in 0..20 {
        for (s, ok) in subjects.iter().zip(&available) {
            if *ok {
                time_once(&s.argv)?;
            }
        }
    }
    let n = subjects.len();
    for round in 0..rounds {
        for k in 0..n {
            let i = (round + k) % n;
            if available[i] {
                let d = time_once(&subjects[i].argv)?;
                subjects[i].samples.push(d);
            }
        }
    }

    println!("\n## Latency of /bin/true ({rounds} interleaved rounds)\n");
    println!("| subject | median | p90 | p99 | median ÷ bwrap |");
    println!("|---|---|---|---|---|");
    let bwrap_median = median(&mut subjects[2].samples.clone());
    for s in &mut subjects {
        if s.samples.is_empty() {
            continue;
        }
        let (m, p90, p99) = (
            median(&mut s.samples),
            pct(&mut s.samples, 0.90),
            pct(&mut s.samples, 0.99),
        );
        let ratio = bwrap_median.map_or("n/a".to_string(), |b| {
            format!("{:.2}×", m.unwrap().as_secs_f64() / b.as_secs_f64())
        });
        println!(
            "| {} | {} | {} | {} | {} |",
            s.name,
            ms(m.unwrap()),
            ms(p90),
            ms(p99),
            ratio
        );
    }

    println!("\n## Daemon: sandboxed /bin/true per second, raw HTTP clients (3 s each)\n");
    println!("| concurrent clients | jobs/s |");
    println!("|---|---|");
    for c in [1, 2, 4, 8] {
        let r = crate::daemon::jobs_per_second(&daemon.sock, c, 3.0)?;
        println!("| {c} | {r:.0} |");
    }
    let (idle, per_job) = crate::daemon::memory(&daemon, 32)?;
    println!("\n## Daemon memory\n");
    println!(
        "idle RSS {idle} KiB (after the runs above: their sessions' finished jobs are kept); \
         growth per running job (32 sleeping jobs) {per_job:.0} KiB"
    );
    println!("(per job, the forked supervisor's private memory is extra; see docs/benchmarks.md)");

    throughput(&exe, &ws_s, bytes, &sock_s)?;
    drop(daemon);
    policy_latency()?;
    crate::bench_net::run(&exe, &ws_s, bytes, rounds)?;
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}

fn runs(argv: &[String]) -> bool {
    Command::new(&argv[0])
        .args(&argv[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn time_once(argv: &[String]) -> Result<Duration> {
    let t = Instant::now();
    let st = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    let d = t.elapsed();
    if !st.success() {
        bail!("{argv:?} failed: {st}");
    }
    Ok(d)
}

fn median(v: &mut [Duration]) -> Option<Duration> {
    if v.is_empty() {
        None
    } else {
        Some(pct(v, 0.5))
    }
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// 1 GiB from `head -c N /dev/zero` through execbox's relay vs through a plain pipe, both read
/// by the same consumer (`cat > /dev/null` reading a pipe).
fn throughput(exe: &str, ws: &str, bytes: u64, sock: &str) -> Result<()> {
    let plain = format!("head -c {bytes} /dev/zero | cat > /dev/null");
    let boxed = format!(
        "{exe} run --workspace {ws} -- /usr/bin/head -c {bytes} /dev/zero | cat > /dev/null"
    );
    // The default profile caps output at 64 MiB: the bench uses a profile without that cap.
    let profile =
        std::env::temp_dir().join(format!("execbox-bench-profile-{}.toml", std::process::id()));
    let default = std::fs::read_to_string(project_root().join("policies/default.toml"))?;
    std::fs::write(
        &profile,
        default.replace("output = \"64MiB\"", &format!("output = {}", bytes * 2)),
    )?;
    let boxed = boxed.replacen(" run ", &format!(" run --policy {} ", profile.display()), 1);
    let daemon = format!(
        "{exe} run --socket {sock} -- /usr/bin/head -c {bytes} /dev/zero | cat > /dev/null"
    );
    let mut best = [f64::MAX; 3];
    for _ in 0..3 {
        for (i, cmd) in [&plain, &boxed, &daemon].iter().enumerate() {
            let t = Instant::now();
            let st = Command::new("/bin/sh").arg("-c").arg(cmd).status()?;
            if !st.success() {
                bail!("{cmd} failed");
            }
            best[i] = best[i].min(t.elapsed().as_secs_f64());
        }
    }
    let _ = std::fs::remove_file(&profile);
    let gib = bytes as f64 / (1u64 << 30) as f64;
    println!("\n## stdout throughput ({gib:.2} GiB, best of 3)\n");
    println!("| path | time | GiB/s | ÷ plain pipe |");
    println!("|---|---|---|---|");
    println!(
        "| plain pipe | {:.3} s | {:.2} | 1.00× |",
        best[0],
        gib / best[0]
    );
    println!(
        "| execbox run | {:.3} s | {:.2} | {:.2}× |",
        best[1],
        gib / best[1],
        best[0] / best[1]
    );
    println!(
        "| execbox run --socket (daemon) | {:.3} s | {:.2} | {:.2}× |",
        best[2],
        gib / best[2],
        best[0] / best[2]
    );
    Ok(())
}

/// Policy check time per command over the detection corpus: `examples/policy_corpus.rs`, built
/// in release like the binary (xtask itself is a debug build).
fn policy_latency() -> Result<()> {
    crate::run_cmd(Command::new("cargo").args([
        "run",
        "--quiet",
        "--release",
        "--example",
        "policy_corpus",
    ]))
}

fn describe_machine() {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let kernel = Command::new("uname")
        .arg("-r")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let cgroup2_opts = std::fs::read_to_string("/proc/self/mountinfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.contains(" - cgroup2 "))
                .map(|l| l.split_whitespace().last().unwrap_or("").to_string())
        })
        .unwrap_or_else(|| "none".into());
    println!(
        "machine: {cpu}, {cores} cores, kernel {kernel}, cgroup2 super options: {cgroup2_opts}"
    );
}
