//! Tidy checks (rust-analyzer's habit): rules about the source tree that are cheap to state and
//! easy to forget, run as tests so they cannot drift.

use super::harness::source_path;

/// Every top-level module and every file of the directories below is named in the codemap of
/// docs/ARCHITECTURE.md: a module nobody documented is a map that lies.
#[test]
fn the_architecture_codemap_names_every_module() {
    let doc = std::fs::read_to_string(source_path("docs/ARCHITECTURE.md")).unwrap();
    let src = source_path("src");
    let mut missing = vec![];
    for entry in std::fs::read_dir(&src).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let is_dir = entry.file_type().unwrap().is_dir();
        let shown = if is_dir {
            format!("src/{name}/")
        } else {
            format!("src/{name}")
        };
        if !doc.contains(&shown) {
            missing.push(shown.clone());
        }
        if is_dir {
            for f in std::fs::read_dir(entry.path()).unwrap().flatten() {
                let f = f.file_name().to_string_lossy().to_string();
                if f == "mod.rs" {
                    continue;
                }
                // Either the full path or the file name in the directory's codemap line.
                let full = format!("src/{name}/{f}");
                if !doc.contains(&full)
                    && !doc.contains(&format!("`{f}`"))
                    && !doc.contains(&format!("{name}/{f}"))
                {
                    missing.push(full);
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "docs/ARCHITECTURE.md codemap does not mention: {missing:?}"
    );
}

/// `unsafe` appears only in src/sandbox/sys.rs (the compiler's `unsafe_code = "deny"` enforces it
/// for code; this also catches `#[allow(unsafe_code)]` added elsewhere).
#[test]
fn unsafe_is_allowed_in_one_file_only() {
    let mut offenders = vec![];
    let mut stack = vec![source_path("src")];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let text = std::fs::read_to_string(&p).unwrap();
                if text.contains("allow(unsafe_code)") && !p.ends_with("src/sandbox/sys.rs") {
                    offenders.push(p.display().to_string());
                }
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "allow(unsafe_code) outside src/sandbox/sys.rs: {offenders:?}"
    );
}

/// docs/openapi.yaml is valid YAML with an OpenAPI header (the route-sync unit test in
/// src/server scans its lines, which a syntax error would not stop).
#[test]
fn the_openapi_spec_parses() {
    let text = std::fs::read_to_string(source_path("docs/openapi.yaml")).unwrap();
    let o = std::process::Command::new("/usr/bin/python3")
        .arg("-c")
        .arg("import sys, yaml; d = yaml.safe_load(sys.stdin); assert d['openapi'].startswith('3'); print(len(d['paths']))")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(text.as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    assert!(
        o.status.success(),
        "docs/openapi.yaml: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}
