//! `cargo xtask dist` (man pages and shell completions from the clap definitions) and
//! `cargo xtask deb` (the Debian package).
//!
//! The package's contents are `[package.metadata.deb]` in the root `Cargo.toml`, cargo-deb's
//! format, so `cargo deb` builds the same package. This task does not need cargo-deb: it stages
//! the assets itself and runs `dpkg-deb --build`, which every Debian host has (installing
//! cargo-deb from source costs CI ~3 minutes of its 90 and a crates.io round trip).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use clap_complete::Shell;

use crate::{project_root, run_cmd};

/// Renders `target/dist/man/*.1` and `target/dist/completions/*`.
pub fn dist() -> Result<PathBuf> {
    let out = project_root().join("target/dist");
    let man = out.join("man");
    let completions = out.join("completions");
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&man)?;
    std::fs::create_dir_all(&completions)?;
    clap_mangen::generate_to(execbox::cli::command(), &man).context("render the man pages")?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let mut cmd = execbox::cli::command();
        clap_complete::generate_to(shell, &mut cmd, "execbox", &completions)
            .with_context(|| format!("render the {shell} completions"))?;
    }
    eprintln!("xtask dist: man pages and completions in {}", out.display());
    Ok(out)
}

/// Builds `target/debian/execbox_<version>_<arch>.deb`; returns its path.
pub fn deb() -> Result<PathBuf> {
    run_cmd(Command::new("cargo").args(["build", "--release", "--package", "execbox"]))?;
    dist()?;
    let root = project_root();
    let manifest: toml::Table = std::fs::read_to_string(root.join("Cargo.toml"))?.parse()?;
    let package = manifest["package"]
        .as_table()
        .context("Cargo.toml has no [package]")?;
    let meta = package
        .get("metadata")
        .and_then(|m| m.get("deb"))
        .and_then(|d| d.as_table())
        .context("Cargo.toml has no [package.metadata.deb]")?;
    let text = |key: &str| -> Result<String> {
        meta.get(key)
            .or_else(|| package.get(key))
            .and_then(|v| v.as_str())
            .map(str::to_string)
            .with_context(|| format!("[package.metadata.deb] needs {key}"))
    };
    let name = package["name"].as_str().unwrap_or("execbox").to_string();
    let version = text("version")?;
    let arch = String::from_utf8(
        Command::new("dpkg")
            .arg("--print-architecture")
            .output()
            .context("dpkg --print-architecture")?
            .stdout,
    )?
    .trim()
    .to_string();

    let stage = root.join("target/debian/stage");
    let _ = std::fs::remove_dir_all(&stage);
    std::fs::create_dir_all(stage.join("DEBIAN"))?;
    for asset in meta["assets"].as_array().context("assets")? {
        let a: Vec<&str> = asset
            .as_array()
            .context("an asset is [source, dest, mode]")?
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        let [src, dest, mode] = a[..] else {
            bail!("asset {asset} is not [source, dest, mode]");
        };
        let mode = u32::from_str_radix(mode, 8).with_context(|| format!("mode of {src}"))?;
        let sources = expand(&root, src)?;
        if sources.is_empty() {
            bail!("asset {src} matches no file (run `cargo xtask dist` first?)");
        }
        for from in sources {
            let to = if dest.ends_with('/') {
                stage
                    .join(dest)
                    .join(from.file_name().context("file name")?)
            } else {
                stage.join(dest)
            };
            install(&from, &to, mode)?;
        }
    }
    // Man pages are shipped compressed (Debian policy 12.1).
    for e in std::fs::read_dir(stage.join("usr/share/man/man1"))? {
        run_cmd(Command::new("gzip").args(["-9nf"]).arg(e?.path()))?;
    }
    for script in ["postinst", "prerm", "postrm"] {
        let from = root.join(text("maintainer-scripts")?).join(script);
        if from.exists() {
            install(&from, &stage.join("DEBIAN").join(script), 0o755)?;
        }
    }
    let conffiles: Vec<&str> = meta["conf-files"]
        .as_array()
        .context("conf-files")?
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    std::fs::write(stage.join("DEBIAN/conffiles"), conffiles.join("\n") + "\n")?;
    let depends = text("depends")?.replace("$auto", &shlib_depends(&stage)?);
    let description = text("description")?;
    let extended = text("extended-description")?;
    let control = format!(
        "Package: {name}\nVersion: {version}\nArchitecture: {arch}\nMaintainer: {}\n\
         Installed-Size: {}\nDepends: {depends}\nSection: {}\nPriority: {}\n\
         Description: {description}\n {}\n",
        text("maintainer")?,
        du_kib(&stage)?,
        text("section")?,
        text("priority")?,
        extended.trim().replace('\n', "\n "),
    );
    std::fs::write(stage.join("DEBIAN/control"), control)?;

    let deb = root.join(format!("target/debian/{name}_{version}_{arch}.deb"));
    run_cmd(
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "-Zxz", "--build"])
            .arg(&stage)
            .arg(&deb),
    )?;
    eprintln!("xtask deb: {}", deb.display());
    Ok(deb)
}

/// `dir/*.ext`-style globs (a `*` in the last component only), else the path itself.
fn expand(root: &Path, pattern: &str) -> Result<Vec<PathBuf>> {
    let path = root.join(pattern);
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_string();
    let Some((prefix, suffix)) = name.split_once('*') else {
        return Ok(if path.exists() { vec![path] } else { vec![] });
    };
    let dir = path.parent().context("glob without a directory")?;
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("list {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(prefix) && n.ends_with(suffix))
        })
        .collect();
    out.sort();
    Ok(out)
}

fn install(from: &Path, to: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(p) = to.parent() {
        std::fs::create_dir_all(p)?;
    }
    std::fs::copy(from, to).with_context(|| format!("copy {}", from.display()))?;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// What `$auto` stands for: the shared-library packages of the binary, from dpkg-shlibdeps
/// when dpkg-dev is installed, else libc6 at the version built against.
fn shlib_depends(stage: &Path) -> Result<String> {
    let bin = stage.join("usr/bin/execbox");
    let tmp = stage.parent().context("stage parent")?.join("shlibdeps");
    std::fs::create_dir_all(tmp.join("debian"))?;
    std::fs::write(tmp.join("debian/control"), "")?;
    let out = Command::new("dpkg-shlibdeps")
        .arg("-O")
        .arg(&bin)
        .current_dir(&tmp)
        .output();
    if let Ok(o) = out
        && o.status.success()
    {
        let s = String::from_utf8_lossy(&o.stdout);
        if let Some(deps) = s.trim().strip_prefix("shlibs:Depends=") {
            return Ok(deps.to_string());
        }
    }
    let v = Command::new("dpkg-query")
        .args(["-W", "-f", "${Version}", "libc6"])
        .output()?;
    let v = String::from_utf8_lossy(&v.stdout);
    let upstream = v.split('-').next().unwrap_or("2.31");
    Ok(format!("libc6 (>= {upstream}), libgcc-s1"))
}

fn du_kib(dir: &Path) -> Result<u64> {
    fn walk(p: &Path) -> u64 {
        let Ok(m) = std::fs::symlink_metadata(p) else {
            return 0;
        };
        if m.is_dir() {
            std::fs::read_dir(p)
                .map(|es| es.flatten().map(|e| walk(&e.path())).sum())
                .unwrap_or(0)
        } else {
            m.len().div_ceil(1024)
        }
    }
    Ok(walk(dir))
}
