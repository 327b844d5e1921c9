//! The command model: what will actually execute, as the rules see it. Pure data; building it
//! is `parse.rs` (shell text → simple commands) and `unwrap.rs` (wrappers and nested shells).
//!
//! A value here never claims more certainty than the parser had: a word the shell would expand
//! at run time is `dynamic`, and anything that could not be analysed is a [`FailClosed`] entry
//! instead of a guess.

use serde::Serialize;

/// One shell word after quote removal. `text` is what the shell would pass when `dynamic` is
/// false; otherwise it holds the literal parts with `$…` placeholders for display.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Word {
    pub text: String,
    /// Contains an expansion the shell resolves at run time (`$x`, `$(…)`, `$((…))`).
    pub dynamic: bool,
    /// Contains an unquoted glob character (`*`, `?`, `[…]`) that pathname expansion would use.
    pub glob: bool,
    /// Indices (into [`Analysis::commands`]) of the direct commands of substitutions in this
    /// word: their output becomes part of it.
    #[serde(skip)]
    pub from: Vec<usize>,
}

impl Word {
    pub fn literal(text: impl Into<String>) -> Word {
        Word {
            text: text.into(),
            dynamic: false,
            glob: false,
            from: Vec::new(),
        }
    }

    /// A word whose value is only known at run time; `text` is for display.
    pub fn opaque(text: impl Into<String>) -> Word {
        Word {
            dynamic: true,
            ..Word::literal(text)
        }
    }
}

/// Where a simple command's standard input comes from, when it is code for a shell.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Redirect {
    /// `< file`, `<> file`.
    Read(Word),
    /// `> file`, `>> file`, `>| file`, `&> file`.
    Write(Word),
    /// `<<EOF` or `<<<word`: the text, when literal.
    Here(Word),
}

/// A simple command that would run, after wrappers have been peeled off.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SimpleCommand {
    /// The program as written after quote removal (`/bin/rm`).
    pub program_path: String,
    /// The basename the rules match (`rm`).
    pub program: String,
    /// `argv[1..]`.
    pub args: Vec<Word>,
    pub redirects: Vec<Redirect>,
    /// Programs of every earlier pipeline stage (empty when stdin is not a pipe).
    pub stdin_from: Vec<String>,
    /// Positional arguments and input files of every earlier pipeline stage: what may be
    /// flowing into this command.
    pub upstream_inputs: Vec<Word>,
    /// Programs of the next pipeline stage, or the shell that runs this command's output
    /// (`source <(…)`, `bash <(…)`).
    pub stdout_to: Vec<String>,
    /// Programs that run this command's output as code through a substitution (`bash <(…)`,
    /// `sh -c "$(…)"`); a subset of `stdout_to`.
    pub substituted_into: Vec<String>,
    /// The working directory relative to the workspace when known (`None` after a `cd` to a
    /// dynamic place); absolute when the command changed to an absolute directory.
    pub cwd: Option<String>,
    /// How this command was reached: `env`, `sudo`, `bash -c`, `$(…)` …, outermost first.
    pub via: Vec<String>,
    /// It calls the function whose body it is in (`:(){ :|:& };:`).
    pub self_recursive: bool,
    /// It runs a file that an earlier network command in the same input wrote.
    pub runs_download: bool,
}

impl SimpleCommand {
    /// A command with no pipeline context, as given by an argv.
    pub fn from_argv(program: &Word, args: Vec<Word>) -> SimpleCommand {
        SimpleCommand {
            program_path: program.text.clone(),
            program: basename(&program.text).to_string(),
            args,
            redirects: Vec::new(),
            stdin_from: Vec::new(),
            upstream_inputs: Vec::new(),
            stdout_to: Vec::new(),
            substituted_into: Vec::new(),
            cwd: Some(String::new()),
            via: Vec::new(),
            self_recursive: false,
            runs_download: false,
        }
    }

    /// The command as a shell-ish line for messages.
    pub fn display(&self) -> String {
        let mut s = self.program_path.clone();
        for a in &self.args {
            s.push(' ');
            if a.text.is_empty() || a.text.contains([' ', '\t', '\n', '\'', '"']) {
                s.push_str(&format!("{:?}", a.text));
            } else {
                s.push_str(&a.text);
            }
        }
        s
    }
}

/// Why analysis gave up on part of the input; each one makes the verdict at least `approve`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FailClosed {
    /// A stable short code (`non-literal-program`, `parse-error`, …).
    pub code: &'static str,
    pub detail: String,
}

/// Everything the analysis found in one input.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Analysis {
    pub commands: Vec<SimpleCommand>,
    pub fail_closed: Vec<FailClosed>,
}

/// The last path component of a program name; `rm` for `/bin/rm` and `./rm`.
pub fn basename(path: &str) -> &str {
    let trimmed = path.trim_end_matches('/');
    match trimmed.rsplit('/').next() {
        Some(b) if !b.is_empty() => b,
        _ => path,
    }
}
