//! One integration test binary (the Codex layout): every suite is a module under `tests/suite/`.

mod suite;
