// Test helpers may unwrap (a failed assumption is a failed test) and spawn freely.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::disallowed_methods)]
//! The `llm-sidecar` binary itself: exit codes, `check-config`, and the signals (SIGHUP
//! reloads, SIGTERM drains and exits 0).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_llm-sidecar");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `llm-sidecar serve --config cfg`, and its stdout (its JSON log) line by line.
fn serve(cfg: &std::path::Path) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    let mut child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(cfg)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let rx = stdout_lines(&mut child);
    (child, rx)
}

/// The first log line containing `needle` within 10 s.
fn line_containing(rx: &std::sync::mpsc::Receiver<String>, needle: &str) -> String {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(100))
            && line.contains(needle)
        {
            return line;
        }
    }
    panic!("no log line containing {needle:?}");
}

/// The child's stdout (its JSON log), line by line, as they come.
fn stdout_lines(child: &mut std::process::Child) -> std::sync::mpsc::Receiver<String> {
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    rx
}

#[test]
fn check_config_reports_every_problem_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "listen: nowhere\nmodels:\n  m: { provider: ghost }\nroutes:\n  - { name: r, targets: [] }\n",
    )
    .unwrap();
    let out = Command::new(BIN).arg("check-config").arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    for path in ["listen:", "models.m.provider:", "routes[0].targets:"] {
        assert!(err.contains(path), "{path} missing in:\n{err}");
    }
    let good = dir.path().join("good.yaml");
    std::fs::write(
        &good,
        "providers: { p: { base_url: \"http://127.0.0.1:1/v1\" } }\nmodels: { m: { provider: p } }\n",
    )
    .unwrap();
    let out = Command::new(BIN).arg("check-config").arg(&good).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    // A provider whose key is missing is reported, not fatal, while another provider serves.
    let partial = dir.path().join("partial.yaml");
    std::fs::write(
        &partial,
        "providers:\n  p: { base_url: \"http://127.0.0.1:1/v1\" }\n  q: { base_url: \"http://127.0.0.1:2/v1\", auth: { key_env: LLM_SIDECAR_TEST_UNSET_KEY } }\nmodels: { m: { provider: p }, n: { provider: q } }\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .arg("check-config")
        .arg(&partial)
        .env_remove("LLM_SIDECAR_TEST_UNSET_KEY")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("providers.q.auth.key_env"), "{err}");
    // A file whose only provider has no key serves nothing (exit 1), unless checked --no-env,
    // as a shipped example is, without the real keys.
    let keyless = dir.path().join("keyless.yaml");
    std::fs::write(
        &keyless,
        "providers:\n  q: { base_url: \"http://127.0.0.1:2/v1\", auth: { key_env: LLM_SIDECAR_TEST_UNSET_KEY } }\nmodels: { n: { provider: q } }\n",
    )
    .unwrap();
    let check = |no_env: bool| {
        let mut c = Command::new(BIN);
        c.arg("check-config")
            .arg(&keyless)
            .env_remove("LLM_SIDECAR_TEST_UNSET_KEY");
        if no_env {
            c.arg("--no-env");
        }
        c.output().unwrap()
    };
    assert_eq!(check(false).status.code(), Some(1));
    let out = check(true);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    // An empty or comment-only file parses, and serves nothing: invalid.
    for text in ["", "# nothing here yet\n"] {
        let empty = dir.path().join("empty.yaml");
        std::fs::write(&empty, text).unwrap();
        let out = Command::new(BIN).arg("check-config").arg(&empty).output().unwrap();
        assert_eq!(out.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&out.stderr).contains("models:"));
    }
}

#[test]
fn serve_refuses_a_bad_config_with_exit_64_before_binding() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "providers: { p: { base_url: 12 } }\n").unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("providers.p.base_url"));
}

#[test]
fn sighup_reloads_and_sigterm_drains_and_exits_zero() {
    let (app, admin) = (free_port(), free_port());
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.yaml");
    let text = |version: &str| {
        format!(
            "version: {version}\nlisten: 127.0.0.1:{app}\nadmin_listen: 127.0.0.1:{admin}\nlogging: {{ format: json }}\n\
             providers: {{ p: {{ base_url: \"http://127.0.0.1:1/v1\" }} }}\nmodels: {{ m: {{ provider: p }} }}\n"
        )
    };
    std::fs::write(&cfg, text("one")).unwrap();
    let (mut child, rx) = serve(&cfg);
    let wait_for = |needle: &str| line_containing(&rx, needle);
    let line = wait_for("llm-sidecar serving");
    let v: serde_json::Value = serde_json::from_str(&line).expect("logs are JSON lines");
    assert_eq!(v["level"], "INFO");

    // The folder watch would catch this edit too; the SIGHUP path must work on its own.
    std::fs::write(&cfg, text("two")).unwrap();
    Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    let line = wait_for("config reloaded");
    assert!(line.contains("\"version\":\"two\""), "{line}");

    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    wait_for("shutdown complete");
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
}

#[test]
fn the_webhook_refuses_to_start_without_its_certificate_and_serve_needs_a_config() {
    let out = Command::new(BIN)
        .args([
            "inject",
            "--image",
            "x",
            "--tls-cert",
            "/nonexistent/tls.crt",
            "--tls-key",
            "/nonexistent/tls.key",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/tls.crt"));
    let out = Command::new(BIN)
        .args(["inject", "--image", "x", "--config-source", "nfs"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("use kube or mount"));
    // Neither --config nor --kube-configmap: a usage error from the parser.
    let out = Command::new(BIN)
        .env_remove("LLM_SIDECAR_CONFIG")
        .arg("serve")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// Started outside the checkout, with no `LLM_SIDECAR_ASSETS`, the sidecar finds the model in
/// `assets` beside its binary instead of turning the semantic cache off.
#[test]
fn the_assets_are_found_beside_the_binary() {
    let assets = std::env::var_os("LLM_SIDECAR_ASSETS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets"));
    if !assets.join("tokenizer.json").is_file() {
        eprintln!("SKIPPED: no assets (scripts/fetch-assets); the cache tests need them too");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let bin_dir = dir.path().join("bin");
    std::fs::create_dir(&bin_dir).unwrap();
    let bin = bin_dir.join("llm-sidecar");
    if std::fs::hard_link(BIN, &bin).is_err() {
        std::fs::copy(BIN, &bin).unwrap();
    }
    std::os::unix::fs::symlink(std::fs::canonicalize(&assets).unwrap(), bin_dir.join("assets")).unwrap();
    let (app, admin) = (free_port(), free_port());
    let cfg = dir.path().join("config.yaml");
    std::fs::write(
        &cfg,
        format!(
            "listen: 127.0.0.1:{app}\nadmin_listen: 127.0.0.1:{admin}\nlogging: {{ format: json }}\n\
             providers: {{ p: {{ base_url: \"http://127.0.0.1:1/v1\" }} }}\nmodels: {{ m: {{ provider: p }} }}\n\
             cache: {{ semantic: {{ enabled: true }} }}\n"
        ),
    )
    .unwrap();
    let mut child = Command::new(&bin)
        .args(["serve", "--config"])
        .arg(&cfg)
        .current_dir(dir.path())
        .env_remove("LLM_SIDECAR_ASSETS")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let rx = stdout_lines(&mut child);
    let deadline = Instant::now() + Duration::from_secs(60);
    let verdict = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains("semantic cache") => break line,
            Ok(_) => {}
            Err(_) => break String::from("no semantic cache line within 60 s"),
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(verdict.contains("semantic cache on"), "{verdict}");
}

/// One request through the binary, its JSON log on: the request line carries every field, in
/// order (written without `tracing` in JSON mode, so this is the test that it is written).
#[test]
fn each_request_is_one_json_line_with_its_fields() {
    use std::io::{Read, Write};
    let (up, app, admin) = (free_port(), free_port(), free_port());
    let mut mock = Command::new(BIN)
        .args(["mock-upstream", "--listen", &format!("127.0.0.1:{up}")])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.yaml");
    std::fs::write(
        &cfg,
        format!(
            "listen: 127.0.0.1:{app}\nadmin_listen: 127.0.0.1:{admin}\nlogging: {{ format: json }}\n\
             providers: {{ p: {{ base_url: \"http://127.0.0.1:{up}/v1\" }}, down: {{ base_url: \"http://127.0.0.1:1/v1\" }} }}\n\
             models: {{ m: {{ provider: p, pricing: {{ input: 1.0, output: 2.0 }} }}, gone: {{ provider: down }} }}\n"
        ),
    )
    .unwrap();
    let (mut child, rx) = serve(&cfg);
    let request_line = |model: &str| {
        let body = format!(r#"{{"model":"{model}","messages":[{{"role":"user","content":"hi \"there\""}}]}}"#);
        let start = Instant::now();
        let mut answer = String::new();
        while start.elapsed() < Duration::from_secs(10) {
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", app)) {
                write!(
                    s,
                    "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
                     x-request-id: id-{model}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                )
                .unwrap();
                s.read_to_string(&mut answer).unwrap();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(answer.starts_with("HTTP/1.1"), "{answer}");
        line_containing(&rx, &format!("\"request_id\":\"id-{model}\""))
    };

    let ok = request_line("m");
    let v: serde_json::Value = serde_json::from_str(&ok).unwrap();
    assert_eq!(v["level"], "INFO");
    assert_eq!(v["message"], "request");
    assert_eq!(v["endpoint"], "chat");
    assert_eq!(v["model"], "m");
    assert_eq!(v["provider"], "p");
    assert_eq!(v["status"], 200);
    assert_eq!(v["stream"], false);
    assert_eq!(v["attempts"], 1);
    assert!(v["duration_ms"].as_f64().unwrap() > 0.0);
    assert!(v["prompt_tokens"].as_u64().unwrap() > 0);
    assert!(v["cost_usd"].as_f64().unwrap() > 0.0);
    let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    let order = [
        "timestamp",
        "level",
        "message",
        "request_id",
        "endpoint",
        "tenant",
        "route",
        "model",
        "provider",
        "status",
        "outcome",
        "cache",
        "stream",
        "attempts",
        "retries",
    ];
    let at = |k: &str| {
        ok.find(&format!("\"{k}\":"))
            .unwrap_or_else(|| panic!("no {k} in {ok}"))
    };
    for pair in order.windows(2) {
        assert!(at(pair[0]) < at(pair[1]), "{} before {} in {ok}", pair[0], pair[1]);
    }
    for k in [
        "duration_ms",
        "prompt_tokens",
        "completion_tokens",
        "cached_tokens",
        "cost_usd",
    ] {
        assert!(keys.contains(&k), "{k} in {ok}");
    }

    // The provider refuses the connection: a warning, with what the app got.
    let failed = request_line("gone");
    let v: serde_json::Value = serde_json::from_str(&failed).unwrap();
    assert_eq!(v["level"], "WARN");
    assert_eq!(v["provider"], "down");
    assert!(v["status"].as_u64().unwrap() >= 500, "{failed}");
    assert_eq!(v["cost_usd"], 0.0);

    let _ = child.kill();
    let _ = child.wait();
    let _ = mock.kill();
    let _ = mock.wait();
}
