//! `cargo xtask policy-report`: per-class recall and false-flag rates of the embedded default
//! profile on the coverage corpus (`tests/corpus/coverage.tsv`), and the lines it gets wrong.
//! Commands are judged by the policy engine, never run.

use anyhow::{Context as _, Result, anyhow};
use execbox::policy::{Context, corpus};
use execbox::profile::Profile;

pub fn run() -> Result<()> {
    let path = crate::project_root().join("tests/corpus/coverage.tsv");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let cases = corpus::parse(&text).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    let profile = Profile::embedded_default().context("loading the default profile")?;
    let report = corpus::evaluate(&profile.policy, &cases, &Context::examples());
    println!(
        "## Policy coverage ({} commands, default profile)\n",
        cases.len()
    );
    println!("{}", report.table());
    for w in &report.wrong {
        println!("{w}");
    }
    Ok(())
}
