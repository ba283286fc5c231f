// Test helpers may unwrap (a failed assumption is a failed test) and spawn freely.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::disallowed_methods)]
//! The official OpenAI Python SDK, pointed at an in-process sidecar, must work unchanged.
//! `scripts/test` installs the SDK into a venv and sets `LLM_SIDECAR_PYTHON`; with
//! `LLM_SIDECAR_REQUIRE_SDK=1` (as in CI) a missing SDK is a failure, not a skip.

mod common;

use common::*;

#[tokio::test]
async fn the_official_python_sdk_works_unchanged() {
    let python = std::env::var("LLM_SIDECAR_PYTHON").unwrap_or_else(|_| "python3".into());
    let has_sdk = std::process::Command::new(&python)
        .args(["-c", "import openai"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !has_sdk {
        assert!(
            std::env::var("LLM_SIDECAR_REQUIRE_SDK").is_err(),
            "the openai Python package is not importable by {python}: run ./scripts/test, which installs it"
        );
        eprintln!("SKIPPED: the openai Python package is not installed (./scripts/test installs it)");
        return;
    }
    let h = Harness::start().await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/openai_sdk_smoke.py");
    let base = h.url("/v1");
    let out = tokio::process::Command::new(&python)
        .arg(script)
        .arg(&base)
        .output()
        .await
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "SDK smoke test failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("all checks passed"), "{stdout}");
}
