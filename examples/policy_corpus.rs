//! Policy check time per command, in process: every line of `tests/corpus/policy.tsv` (the
//! dangerous and benign commands the detection rates are measured on) against the embedded
//! default profile. Run by `cargo xtask bench` (release build); the criterion bench
//! (`cargo bench --bench policy`) has the per-command and adversarial-input figures.

use std::time::{Duration, Instant};

use execbox::policy::{Command, Context};
use execbox::profile::Profile;

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let corpus = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/policy.tsv"),
    )?;
    let commands: Vec<String> = corpus
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split_once('\t').map(|(_, c)| c.replace('⏎', "\n")))
        .collect();
    let policy = Profile::embedded_default()?.policy;
    let ctx = Context {
        workspace: "/workspace".into(),
        home: Some("/home/agent".into()),
    };
    // Per command: the best of a few runs of 20 checks (noise only ever adds time).
    let mut per_command: Vec<Duration> = commands
        .iter()
        .map(|c| {
            (0..5)
                .map(|_| {
                    let t = Instant::now();
                    for _ in 0..20 {
                        std::hint::black_box(policy.check(Command::Shell(c), &ctx));
                    }
                    t.elapsed() / 20
                })
                .min()
                .unwrap_or_default()
        })
        .collect();
    let us = |d: Duration| format!("{:.1} µs", d.as_secs_f64() * 1e6);
    let max = per_command.iter().max().copied().unwrap_or_default();
    println!(
        "\n## Policy check per command ({} corpus commands)\n",
        commands.len()
    );
    println!("| median | p90 | p99 | max |");
    println!("|---|---|---|---|");
    println!(
        "| {} | {} | {} | {} |",
        us(pct(&mut per_command, 0.5)),
        us(pct(&mut per_command, 0.9)),
        us(pct(&mut per_command, 0.99)),
        us(max)
    );
    Ok(())
}
