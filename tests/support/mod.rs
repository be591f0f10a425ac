//! Paths shared by the test crates (included with `#[path = ...] mod support;`): the repository,
//! its fixtures, the `../shared` folder beside the checkout, and models fetched into `models/`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// The repository root (every crate is two levels down).
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `tests/fixtures/<name>` (fixtures generated for this project, committed).
pub fn fixture(name: &str) -> PathBuf {
    repo().join("tests/fixtures").join(name)
}

/// `../shared/<rel>` (public downloads that must not be copied into the repo), or `None` with a
/// printed reason where the shared folder is absent; a failure when `DIJIANG_REQUIRE_SHARED` is set
/// (CI), so that no test passes silently without its data.
pub fn shared(rel: &str) -> Option<PathBuf> {
    let path = repo().join("../shared").join(rel);
    if path.exists() {
        return Some(path);
    }
    let reason = format!("{} is absent (the shared data folder is not beside this checkout)", path.display());
    assert!(std::env::var_os("DIJIANG_REQUIRE_SHARED").is_none(), "{reason} (DIJIANG_REQUIRE_SHARED is set)");
    eprintln!("SKIPPED: {reason}");
    None
}

/// The real SmolLM2-135M-Instruct Q4_1 GGUF that `just fetch-smollm2` brings; `None` with a printed
/// reason where absent, a failure when `DIJIANG_REQUIRE_MODELS` is set (CI).
pub fn smollm2_gguf() -> Option<PathBuf> {
    let path = repo().join("models/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf");
    if path.exists() {
        return Some(path);
    }
    let reason = format!("{} is absent: run `just fetch-smollm2`", path.display());
    assert!(std::env::var_os("DIJIANG_REQUIRE_MODELS").is_none(), "{reason} (DIJIANG_REQUIRE_MODELS is set)");
    eprintln!("SKIPPED: {reason}");
    None
}

/// `../shared/evaldata` (the zero-shot evaluation splits and lm-eval's own requests for them);
/// `None` with a printed reason where absent, a failure when `DIJIANG_REQUIRE_EVALDATA` is set (CI).
pub fn evaldata() -> Option<PathBuf> {
    let path = repo().join("../shared/evaldata");
    if path.join("MANIFEST.tsv").exists() {
        return Some(path);
    }
    let reason = format!("{} is absent (the shared data folder is not beside this checkout)", path.display());
    assert!(std::env::var_os("DIJIANG_REQUIRE_EVALDATA").is_none(), "{reason} (DIJIANG_REQUIRE_EVALDATA is set)");
    eprintln!("SKIPPED: {reason}");
    None
}
