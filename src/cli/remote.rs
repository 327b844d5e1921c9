//! `execbox run --socket PATH`: the same command line, through the daemon. A minimal blocking
//! HTTP/1.1 client over the agent socket (no runtime to start: this path is on the latency
//! budget). Creates a session (fresh, or from a pairing code) or uses a saved token, streams
//! `POST /v1/exec`, ends a session it made for this command only; prints output as it arrives
//! and exits like the in-process path (the command's code, 124, 125, 126, 137).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;

use crate::sandbox::Stream;

/// Which session runs the command.
pub enum SessionSource {
    /// A new session for this command, ended after it (`POST /v1/sessions` without a body).
    Fresh,
    /// Redeem an operator's pairing code. With `save`, the token is written there (a new file,
    /// 0600) and the session kept; without, it ends with the command.
    Pairing {
        code: String,
        save: Option<std::path::PathBuf>,
    },
    /// An existing session's token (`--token-file`, `EXECBOX_TOKEN`): used, never ended.
    Token(String),
}

/// What to run, already validated by `run.rs`.
pub struct Remote<'a> {
    pub socket: &'a Path,
    pub session: SessionSource,
    pub argv: &'a [String],
    pub shell: Option<&'a str>,
    pub env: &'a [String],
    pub timeout: Option<std::time::Duration>,
    pub memory: Option<u64>,
    pub pids: Option<u64>,
    pub stdin: Option<Vec<u8>>,
    pub json: bool,
}

pub(super) struct Reply {
    pub(super) status: u16,
    reader: BufReader<UnixStream>,
    chunked: bool,
    length: Option<usize>,
}

pub(super) fn request(
    socket: &Path,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> Result<Reply> {
    let mut s = UnixStream::connect(socket)
        .with_context(|| format!("cannot connect to the daemon at {}", socket.display()))?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: execbox\r\nConnection: close\r\n");
    if let Some(t) = token {
        head.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    let body = body.unwrap_or("");
    if !body.is_empty() {
        head.push_str("Content-Type: application/json\r\n");
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    s.write_all(head.as_bytes())?;
    s.write_all(body.as_bytes())?;
    let mut reader = BufReader::new(s);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("not an HTTP reply: {line:?}"))?;
    let (mut chunked, mut length) = (false, None);
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
        let l = line.to_ascii_lowercase();
        if l.starts_with("transfer-encoding:") && l.contains("chunked") {
            chunked = true;
        } else if let Some(v) = l.strip_prefix("content-length:") {
            length = v.trim().parse().ok();
        }
    }
    Ok(Reply {
        status,
        reader,
        chunked,
        length,
    })
}

impl Reply {
    /// The whole body (small replies only).
    pub(super) fn body(mut self) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        if self.chunked {
            while let Some(c) = self.chunk()? {
                out.extend_from_slice(&c);
            }
        } else if let Some(n) = self.length {
            out.resize(n, 0);
            self.reader.read_exact(&mut out)?;
        } else {
            self.reader.read_to_end(&mut out)?;
        }
        Ok(out)
    }

    /// The next chunk of a chunked body; `None` at the end.
    pub(super) fn chunk(&mut self) -> Result<Option<Vec<u8>>> {
        let mut line = String::new();
        self.reader.read_line(&mut line)?;
        let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
            .with_context(|| format!("bad chunk header {line:?}"))?;
        let mut data = vec![0u8; size + 2];
        self.reader.read_exact(&mut data)?;
        data.truncate(size);
        Ok((size > 0).then_some(data))
    }
}

pub(super) fn error_text(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            let e = v.get("error")?;
            Some(format!(
                "{} ({})",
                e.get("message")?.as_str()?,
                e.get("code")?.as_str()?
            ))
        })
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned())
}

pub fn run(r: Remote<'_>) -> ExitCode {
    match go(&r) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("execbox: {e:#}");
            ExitCode::from(super::run::EXIT_SETUP)
        }
    }
}

fn go(r: &Remote<'_>) -> Result<u8> {
    let (body, save) = match &r.session {
        SessionSource::Token(t) => return exec(r, t),
        SessionSource::Fresh => (None, None),
        SessionSource::Pairing { code, save } => (
            Some(serde_json::json!({ "pairing_code": code }).to_string()),
            save.as_deref(),
        ),
    };
    let reply = request(r.socket, "POST", "/v1/sessions", None, body.as_deref())?;
    let status = reply.status;
    let body = reply.body()?;
    if status != 201 {
        let mut why = error_text(&body);
        if why.contains("pairing_required") {
            why.push_str(
                "; with `execbox run`: --pairing-code CODE (and --token-file PATH to keep the session), or --token-file / EXECBOX_TOKEN with a saved token",
            );
        }
        bail!("the daemon refused a session: {why}");
    }
    let v: serde_json::Value = serde_json::from_slice(&body)?;
    let token = v["token"]
        .as_str()
        .context("no token in the reply")?
        .to_string();
    let session = v["session"].as_str().unwrap_or_default().to_string();
    let end = || {
        let _ = request(
            r.socket,
            "DELETE",
            &format!("/v1/sessions/{session}"),
            Some(&token),
            None,
        )
        .and_then(Reply::body);
    };
    if let Some(path) = save {
        // Saved before the command runs: the session outlives this process. A token that
        // cannot be saved would be a session nobody can use: end it.
        if let Err(e) = save_token(path, &token) {
            end();
            return Err(e);
        }
        return exec(r, &token);
    }
    let result = exec(r, &token);
    // The session was only for this command: end it (and its workspace).
    end();
    result
}

/// Writes `token` to a new file only its owner can read.
fn save_token(path: &Path, token: &str) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create --token-file {}", path.display()))?;
    f.write_all(format!("{token}\n").as_bytes())
        .with_context(|| format!("cannot write --token-file {}", path.display()))?;
    Ok(())
}

fn exec(r: &Remote<'_>, token: &str) -> Result<u8> {
    let mut body = serde_json::Map::new();
    match r.shell {
        Some(s) => body.insert("command".into(), s.into()),
        None => body.insert("argv".into(), r.argv.into()),
    };
    let mut env = serde_json::Map::new();
    for kv in r.env {
        if let Some((k, v)) = kv.split_once('=') {
            env.insert(k.into(), v.into());
        }
    }
    body.insert("env".into(), env.into());
    if let Some(t) = r.timeout {
        body.insert("timeout".into(), t.as_secs_f64().into());
    }
    let mut limits = serde_json::Map::new();
    if let Some(m) = r.memory {
        limits.insert("memory".into(), m.into());
    }
    if let Some(p) = r.pids {
        limits.insert("pids".into(), p.into());
    }
    body.insert("limits".into(), limits.into());
    if let Some(data) = &r.stdin {
        body.insert("stdin_b64".into(), B64.encode(data).into());
    }
    let text = serde_json::Value::Object(body).to_string();
    let mut reply = request(r.socket, "POST", "/v1/exec", Some(token), Some(&text))?;
    if reply.status != 200 {
        let status = reply.status;
        let b = reply.body()?;
        eprintln!(
            "execbox: the daemon refused the command: {}",
            error_text(&b)
        );
        return Ok(if status == 400 || status == 413 || status == 415 {
            super::run::EXIT_REFUSED
        } else {
            super::run::EXIT_SETUP
        });
    }
    // Output goes straight to our stdout's descriptor: `Stdout` is line-buffered and scans
    // every chunk for its last newline, a visible cost at high output rates. (No descriptor
    // to duplicate, e.g. a closed stdout: `Stdout`, which fails only if there is output.)
    let mut out: Box<dyn Write> = match std::io::stdout().as_fd().try_clone_to_owned() {
        Ok(fd) => Box::new(std::fs::File::from(fd)),
        Err(_) => Box::new(std::io::stdout()),
    };
    let mut err = std::io::stderr();
    // NDJSON lines may span chunks. `pending[..scan]` is known to hold no newline, so each
    // byte is searched once however long the line (a 1 MiB output event spans many chunks).
    let mut pending = Vec::new();
    let mut scan = 0;
    let mut data = Vec::new();
    while let Some(c) = reply.chunk()? {
        pending.extend_from_slice(&c);
        let mut from = 0;
        while let Some(p) = memchr::memchr(b'\n', &pending[scan..]) {
            let line = &pending[from..scan + p];
            (from, scan) = (scan + p + 1, scan + p + 1);
            data.clear();
            let stream = match output_line(line) {
                Some((stream, b64))
                    if base64_simd::STANDARD.decode_append(b64, &mut data).is_ok() =>
                {
                    stream
                }
                _ => {
                    let ev: serde_json::Value = serde_json::from_slice(line)?;
                    let stream = match ev["event"].as_str() {
                        Some("stdout") => Stream::Stdout,
                        Some("stderr") => Stream::Stderr,
                        Some("exit") => return Ok(finish(r.json, &ev)),
                        _ => continue,
                    };
                    data = B64.decode(ev["data_b64"].as_str().unwrap_or(""))?;
                    stream
                }
            };
            match stream {
                Stream::Stdout => out.write_all(&data)?,
                Stream::Stderr => err.write_all(&data)?,
            }
        }
        pending.drain(..from);
        scan = pending.len();
    }
    bail!("the daemon closed the stream before the job's exit")
}

/// An output event in the exact form the daemon writes (`{"event":"stdout","data_b64":"…"}`):
/// its payload is decoded without building a JSON value. Any other form returns `None` and
/// goes through the JSON parser. The payload is not searched for a stray `"` (a second scan of
/// every line): the base64 decoder rejects it, and the caller then parses the line as JSON.
fn output_line(line: &[u8]) -> Option<(Stream, &[u8])> {
    let rest = line.strip_prefix(b"{\"event\":\"")?;
    let (stream, rest) = match rest.strip_prefix(b"stdout") {
        Some(r) => (Stream::Stdout, r),
        None => (Stream::Stderr, rest.strip_prefix(b"stderr")?),
    };
    rest.strip_prefix(b"\",\"data_b64\":\"")?
        .strip_suffix(b"\"}")
        .map(|b64| (stream, b64))
}

fn finish(json: bool, ev: &serde_json::Value) -> u8 {
    let reason = ev["reason"].as_str().unwrap_or("");
    let code = match reason {
        "refused" => super::run::EXIT_REFUSED,
        "setup_failed" => super::run::EXIT_SETUP,
        _ => ev["code"].as_i64().unwrap_or(126).clamp(0, 255) as u8,
    };
    let message = ev["message"]
        .as_str()
        .or_else(|| ev["error"]["message"].as_str())
        .unwrap_or("");
    if json {
        let mut v = ev.clone();
        if let Some(o) = v.as_object_mut() {
            o.insert("exit_code".into(), code.into());
        }
        eprintln!("{v}");
    } else if reason != "exited" || ev["signal"].is_number() {
        eprintln!("execbox: {message}");
    }
    code
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_events_in_the_daemons_form_are_read_without_a_json_value() {
        let line = br#"{"event":"stderr","data_b64":"aGk="}"#;
        assert_eq!(output_line(line), Some((Stream::Stderr, &b"aGk="[..])));
        let line = br#"{"event":"stdout","data_b64":""}"#;
        assert_eq!(output_line(line), Some((Stream::Stdout, &b""[..])));
        // Any other form (key order, spacing, extra keys, other events) is left to serde.
        for other in [
            &br#"{"data_b64":"aGk=","event":"stdout"}"#[..],
            br#"{"event": "stdout","data_b64":"aGk="}"#,
            br#"{"event":"started","job":"j_1"}"#,
        ] {
            assert_eq!(
                output_line(other),
                None,
                "{}",
                String::from_utf8_lossy(other)
            );
        }
        // A key after the payload is caught by the decoder, and the line goes to serde.
        let (_, b64) = output_line(br#"{"event":"stdout","data_b64":"aGk=","x":"y"}"#).unwrap();
        assert!(base64_simd::STANDARD.decode_to_vec(b64).is_err());
    }
}
