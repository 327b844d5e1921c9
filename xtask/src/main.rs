//! Project automation (`cargo xtask …`), matklad's pattern.

fn main() -> anyhow::Result<()> {
    Ok(())
}
