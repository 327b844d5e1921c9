//! `execbox run`'s side of judging a whole request (`policy::request`): the stdin a command
//! reads as its program is read first and judged, then handed to the job from a private file;
//! what the terminal prompt shows besides the command (the variables set with `--env`, the
//! stdin that is code).

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::OwnedFd;

use crate::audit::tail::escape;
use crate::policy::Explanation;

/// Stdin read for judgement, at most (the daemon's default body limit).
pub const MAX_CODE_STDIN: usize = 1 << 20;

/// Reads all of our stdin (it is the program of a command): at most [`MAX_CODE_STDIN`].
pub fn read_code_stdin(mut input: impl Read) -> Result<Vec<u8>, String> {
    let mut data = Vec::new();
    input
        .by_ref()
        .take(MAX_CODE_STDIN as u64 + 1)
        .read_to_end(&mut data)
        .map_err(|e| format!("reading stdin, which the command runs as its program: {e}"))?;
    if data.len() > MAX_CODE_STDIN {
        return Err(format!(
            "stdin is the program the command runs and is larger than {MAX_CODE_STDIN} bytes, \
             too large to judge; fix: write it to a file in the workspace and run that file"
        ));
    }
    Ok(data)
}

/// A private, unlinked file holding `data`, positioned at its start: the job's stdin after
/// judgement (exactly the bytes judged; nothing else can write to it).
pub fn stdin_file(data: &[u8]) -> std::io::Result<OwnedFd> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = std::env::temp_dir();
    let mut f = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_TMPFILE)
        .open(&dir)
    {
        Ok(f) => f,
        // A file system without O_TMPFILE: a named file, unlinked at once.
        Err(_) => {
            let name = dir.join(format!(".execbox-stdin-{}", std::process::id()));
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&name)?;
            std::fs::remove_file(&name)?;
            f
        }
    };
    f.write_all(data)?;
    f.seek(SeekFrom::Start(0))?;
    Ok(f.into())
}

/// The prompt's lines about the request beyond its command, every agent string escaped.
pub fn prompt_details(e: &Explanation, env: &[(String, String)]) -> String {
    let mut out = String::new();
    for (k, v) in env {
        out.push_str(&format!("  env:     {}={}\n", escape(k), escape(v)));
    }
    if let Some(s) = &e.stdin {
        let what = if s.code_for.is_empty() {
            "data".to_string()
        } else {
            format!("the program of: {}", escape(&s.code_for.join("; ")))
        };
        out.push_str(&format!(
            "  stdin:   {} bytes, sha256 {} — {what}\n",
            s.bytes, s.sha256
        ));
        for l in s.excerpt.split('\n').take(40) {
            out.push_str(&format!("  │ {}\n", escape(l)));
        }
        if s.omitted > 0 || s.excerpt.split('\n').count() > 40 {
            out.push_str(&format!("  │ … ({} bytes not shown)\n", s.omitted));
        }
    }
    for f in &e.fail_closed {
        out.push_str(&format!(
            "  analysis: failed closed: {}: {}\n",
            f.code,
            escape(&f.detail)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_stdin_is_bounded_and_kept_exactly() {
        assert_eq!(read_code_stdin(&b"echo hi\n"[..]).unwrap(), b"echo hi\n");
        let big = vec![b'x'; MAX_CODE_STDIN + 1];
        assert!(read_code_stdin(&big[..]).unwrap_err().contains("fix:"));
        let fd = stdin_file(b"rm -rf ./*").unwrap();
        let mut back = String::new();
        std::fs::File::from(fd).read_to_string(&mut back).unwrap();
        assert_eq!(back, "rm -rf ./*");
    }
}
