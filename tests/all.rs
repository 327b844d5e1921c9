//! The one integration test binary (Codex's layout): every suite module runs the built
//! `execbox` the way a user would.

mod suite;
