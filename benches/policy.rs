//! Policy check latency: typical agent commands (target: median ≤ 20 µs) and 64 KiB
//! adversarial inputs (target: ≤ 10 ms). `cargo bench --bench policy`.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use execbox::policy::{Command, Context};
use execbox::profile::Profile;

const TYPICAL: &[&str] = &[
    "ls -la",
    "git status",
    "cargo test --all",
    "cat src/main.rs | head -50",
    "grep -rn 'fn main' src",
    "cd src && grep -rn 'TODO' . | head -20",
    "git add -A && git commit -m 'feat: add parser'",
    "npm install && npm run build",
    "find . -name '*.rs' -exec wc -l {} +",
    "python3 -m pytest -q tests/",
    "rm -rf target/debug/incremental",
    "curl -fsSL https://example.com/install.sh | sh",
];

fn adversarial() -> Vec<(&'static str, String)> {
    let n = 64 * 1024;
    vec![
        ("nested-subst", "$(".repeat(n / 2)),
        ("nested-if", "if true; then ".repeat(n / 14)),
        ("pipeline", "a|".repeat(n / 2 - 1) + "a"),
        ("words", "x ".repeat(n / 2)),
        ("quoted-arg", format!("echo '{}'", "a".repeat(n - 8))),
        (
            "heredoc",
            format!("cat <<'EOF'\n{}\nEOF", "line of text\n".repeat(n / 14)),
        ),
        ("wrapper-chain", "env ".repeat(n / 4 - 2) + "rm"),
    ]
}

fn bench(c: &mut Criterion) {
    let policy = Profile::embedded_default().expect("default profile").policy;
    let ctx = Context {
        workspace: "/workspace".into(),
        home: Some("/home/agent".into()),
    };
    let mut typical = c.benchmark_group("typical");
    for cmd in TYPICAL {
        typical.bench_function(*cmd, |b| {
            b.iter(|| policy.check(Command::Shell(black_box(cmd)), &ctx))
        });
    }
    typical.finish();
    let mut adv = c.benchmark_group("adversarial-64KiB");
    adv.sample_size(20);
    for (name, input) in adversarial() {
        adv.bench_function(name, |b| {
            b.iter(|| policy.check(Command::Shell(black_box(&input)), &ctx))
        });
    }
    adv.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
