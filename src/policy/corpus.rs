//! Scoring a labelled command corpus (`tests/corpus/coverage.tsv`): per class, how many
//! dangerous commands are flagged (recall) and how many ordinary ones are flagged (false
//! flags). Shared by the CI test and `cargo xtask policy-report`. Commands are only judged.

use std::collections::BTreeMap;

use super::{Command, Context, Policy, Verdict};

/// One corpus line.
#[derive(Debug, Clone)]
pub struct Case {
    pub class: String,
    /// The command must not be allowed (`flag`) or must be allowed (`allow`).
    pub dangerous: bool,
    pub command: String,
    pub line: usize,
}

/// Parses `class<TAB>flag|allow<TAB>command` lines; `#` comments, `⏎` for a newline.
pub fn parse(text: &str) -> Result<Vec<Case>, String> {
    let mut out = Vec::new();
    for (n, l) in text.lines().enumerate() {
        if l.starts_with('#') || l.trim().is_empty() {
            continue;
        }
        let mut parts = l.splitn(3, '\t');
        let (Some(class), Some(expect), Some(command)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(format!(
                "line {}: expected class<TAB>flag|allow<TAB>command",
                n + 1
            ));
        };
        let dangerous = match expect {
            "flag" => true,
            "allow" => false,
            other => return Err(format!("line {}: {other:?} is not flag or allow", n + 1)),
        };
        out.push(Case {
            class: class.to_string(),
            dangerous,
            command: command.replace('⏎', "\n"),
            line: n + 1,
        });
    }
    Ok(out)
}

/// Counts of one class.
#[derive(Debug, Clone, Default)]
pub struct ClassFigures {
    pub dangerous: usize,
    pub flagged: usize,
    pub ordinary: usize,
    pub false_flags: usize,
}

impl ClassFigures {
    pub fn recall(&self) -> f64 {
        ratio(self.flagged, self.dangerous, 1.0)
    }
    pub fn false_flag_rate(&self) -> f64 {
        ratio(self.false_flags, self.ordinary, 0.0)
    }
}

fn ratio(a: usize, b: usize, empty: f64) -> f64 {
    if b == 0 { empty } else { a as f64 / b as f64 }
}

/// The figures per class and overall, with every wrong line.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub classes: BTreeMap<String, ClassFigures>,
    pub total: ClassFigures,
    /// `line N [class] missed|false flag (verdict, rule): command`.
    pub wrong: Vec<String>,
}

pub fn evaluate(policy: &Policy, cases: &[Case], ctx: &Context) -> Report {
    let mut r = Report::default();
    for c in cases {
        let d = policy.check(Command::Shell(&c.command), ctx);
        let flagged = d.verdict != Verdict::Allow;
        let f = r.classes.entry(c.class.clone()).or_default();
        for f in [f, &mut r.total] {
            if c.dangerous {
                f.dangerous += 1;
                f.flagged += usize::from(flagged);
            } else {
                f.ordinary += 1;
                f.false_flags += usize::from(flagged);
            }
        }
        if flagged != c.dangerous {
            r.wrong.push(format!(
                "line {} [{}] {} ({}, {}): {:?}",
                c.line,
                c.class,
                if c.dangerous { "missed" } else { "false flag" },
                d.verdict.as_str(),
                d.rule.as_deref().or(d.fail_closed).unwrap_or("default"),
                c.command
            ));
        }
    }
    r
}

impl Report {
    /// A Markdown table: class, recall, false flags.
    pub fn table(&self) -> String {
        let mut s = String::from(
            "| class | dangerous flagged | recall | ordinary flagged | false flags |\n|---|---|---|---|---|\n",
        );
        let row = |name: &str, f: &ClassFigures| {
            format!(
                "| {name} | {}/{} | {:.1} % | {}/{} | {:.1} % |\n",
                f.flagged,
                f.dangerous,
                f.recall() * 100.0,
                f.false_flags,
                f.ordinary,
                f.false_flag_rate() * 100.0
            )
        };
        for (name, f) in &self.classes {
            s.push_str(&row(name, f));
        }
        s.push_str(&row("**all**", &self.total));
        s
    }
}
