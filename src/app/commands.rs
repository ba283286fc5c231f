//! What each subcommand of the binary does once its arguments are parsed: `main.rs` owns the
//! command line (clap), this file owns the work and the exit status of each command, so the
//! binary stays a table of arguments and every command can be read next to the code it runs.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use super::{ConfigInput, Options, Sidecar, exit, run_until_signal};
use crate::config::{Config, Env, LogFormat, LoggingSettings, VarLookup};
use crate::mock::MockUpstream;
use crate::telemetry::init_logging;

/// Logging for commands that have no config to read it from.
pub fn default_logging() -> LoggingSettings {
    LoggingSettings {
        format: LogFormat::Auto,
        level: "info".into(),
    }
}

/// `serve`: a config file (watched, reloaded on change and SIGHUP) or a ConfigMap watched
/// through the Kubernetes API.
pub async fn serve(
    config: Option<PathBuf>,
    kube_configmap: Option<String>,
    kube_key: &str,
    listen: Option<SocketAddr>,
    admin_listen: Option<SocketAddr>,
) -> ExitCode {
    // Logging settings come from the config itself; read a file once for them (a ConfigMap is
    // read by the sidecar itself: defaults and RUST_LOG apply).
    let logging = config
        .as_ref()
        .and_then(|c| std::fs::read_to_string(c).ok())
        .and_then(|t| Config::load(&t, &Env).ok())
        .map(|c| c.logging)
        .unwrap_or_else(default_logging);
    let _log = init_logging(&logging);
    let input = match (config, kube_configmap) {
        (Some(path), _) => ConfigInput::File(path),
        (None, Some(spec)) => match crate::config::kube::KubeSource::new(&spec, kube_key, None).await {
            Ok(k) => ConfigInput::Kube(Box::new(k)),
            Err(e) => {
                eprintln!("llm-sidecar: {e}");
                return ExitCode::from(exit::UNAVAILABLE);
            }
        },
        (None, None) => {
            eprintln!("llm-sidecar: give --config FILE or --kube-configmap NAMESPACE/NAME");
            return ExitCode::from(exit::CONFIG);
        }
    };
    let opts = Options {
        listen,
        admin_listen,
        ..Options::new(input)
    };
    start_and_run(opts, |_| {}).await
}

/// `demo`: the embedded demo config against a built-in mock upstream.
pub async fn demo(listen: SocketAddr, admin_listen: SocketAddr, print_config: bool) -> ExitCode {
    if print_config {
        print!("{}", crate::DEMO_CONFIG);
        return ExitCode::SUCCESS;
    }
    let _log = init_logging(&LoggingSettings {
        format: LogFormat::Text,
        level: "info".into(),
    });
    let mock = match MockUpstream::start().await {
        Ok(m) => m,
        Err(e) => {
            eprintln!("llm-sidecar demo: cannot start the mock upstream: {e}");
            return ExitCode::from(exit::OS);
        }
    };
    let upstream = mock.base_url();
    let vars = move |name: &str| {
        if name == "DEMO_UPSTREAM" {
            Some(upstream.clone())
        } else {
            Env.var(name)
        }
    };
    let opts = Options {
        vars: Arc::new(vars),
        listen: Some(listen),
        admin_listen: Some(admin_listen),
        ..Options::new(ConfigInput::Text(crate::DEMO_CONFIG.to_owned()))
    };
    let mock_url = mock.base_url();
    let code = start_and_run(opts, move |sidecar| {
        let app = sidecar.app_addr();
        println!(
            "llm-sidecar demo: OpenAI API on http://{app}/v1 (mock upstream at {mock_url}), admin on http://{}\n\
             try: curl -s http://{app}/v1/chat/completions -H 'content-type: application/json' \
             -d '{{\"model\":\"auto\",\"messages\":[{{\"role\":\"user\",\"content\":\"hello\"}}]}}'",
            sidecar.admin_addr()
        );
    })
    .await;
    drop(mock);
    code
}

/// `mock-upstream`: the test provider on its own, until Ctrl-C.
pub async fn mock_upstream(listen: SocketAddr, prose_words: usize) -> ExitCode {
    let _log = init_logging(&default_logging());
    match MockUpstream::start_on(listen).await {
        Ok(mock) => {
            mock.set_prose(prose_words);
            println!("mock upstream on {}", mock.base_url());
            let _ = tokio::signal::ctrl_c().await;
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("mock-upstream: cannot listen on {listen}: {e}");
            ExitCode::from(exit::OS)
        }
    }
}

async fn start_and_run(opts: Options, on_start: impl FnOnce(&Sidecar)) -> ExitCode {
    match Sidecar::start(opts).await {
        Ok(sidecar) => {
            on_start(&sidecar);
            match run_until_signal(sidecar).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("llm-sidecar: signal handling failed: {e}");
                    ExitCode::from(exit::OS)
                }
            }
        }
        Err(e) => {
            eprintln!("llm-sidecar: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// What `--no-env` puts in every `${VAR}` and `key_env`: long enough for the keys that have a
/// minimum length (`server.admin_token`), obviously not a real value.
const NO_ENV_STAND_IN: &str = "stand-in-value-for-check-config";

/// `check-config`: everything `serve` would check before binding a port, without binding one.
/// `no_env`: every environment variable the config names counts as set (to a stand-in), so a
/// shipped example or a ConfigMap is checked without the real keys at hand.
pub fn check_config(file: &Path, no_env: bool) -> ExitCode {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{}: cannot read: {e}", file.display());
            return ExitCode::from(exit::CONFIG);
        }
    };
    // The standard OTEL_* variables the tracing section reads on its own stay as they are.
    let stand_in = |name: &str| {
        if name.starts_with("OTEL_") {
            Env.var(name)
        } else {
            Some(NO_ENV_STAND_IN.to_owned())
        }
    };
    let vars: &dyn VarLookup = if no_env { &stand_in } else { &Env };
    match Config::load(&text, vars)
        .map_err(|e| e.0)
        .and_then(|c| crate::state::Runtime::build(c, None, 1, &crate::plugin::Plugins::default()).map_err(|e| e.0))
    {
        Ok(rt) => {
            let c = &rt.config;
            println!(
                "{}: valid ({} providers, {} models, {} routes, {} tenants)",
                file.display(),
                c.providers.len(),
                c.models.len(),
                c.routes.len(),
                c.tenants.names.len()
            );
            for w in &c.warnings {
                eprintln!("  ! {w} (its models answer 503 provider_unavailable until then; the rest serves)");
            }
            ExitCode::SUCCESS
        }
        Err(issues) => {
            eprintln!("{}: {} problem(s):", file.display(), issues.len());
            for i in issues {
                eprintln!("  - {i}");
            }
            ExitCode::from(exit::FAILED)
        }
    }
}

/// What `calibrate` was asked to do.
pub struct CalibrateArgs<'a> {
    pub pairs: &'a Path,
    pub assets: &'a Path,
    /// Print the pairs that decide the threshold around this similarity.
    pub explain: Option<f32>,
    /// The false-hit share the suggested threshold must stay under.
    pub max_rate: f64,
    /// Write one row of features per pair here instead of the report.
    pub features: Option<&'a Path>,
}

/// `calibrate`: the similarity distribution of labelled pairs and the threshold it suggests.
pub fn calibrate(a: CalibrateArgs<'_>) -> ExitCode {
    use crate::cache::calibrate;
    if !(0.0..1.0).contains(&a.max_rate) {
        eprintln!(
            "--max-false-hit-rate {}: use a share from 0 to below 1 (e.g. 0.01 for 1 %)",
            a.max_rate
        );
        return ExitCode::from(exit::CONFIG);
    }
    let text = match std::fs::read_to_string(a.pairs) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{}: cannot read: {e}", a.pairs.display());
            return ExitCode::from(exit::CONFIG);
        }
    };
    let pairs = match calibrate::parse_pairs(&text) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{}: {e}", a.pairs.display());
            return ExitCode::from(exit::CONFIG);
        }
    };
    let mut model = match crate::embed::Model::load(a.assets, 1) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("calibrate: {e}");
            return ExitCode::from(exit::CONFIG);
        }
    };
    if let Some(out) = a.features {
        let rows = match calibrate::features(&pairs, &mut model) {
            Ok(rows) => rows,
            Err(e) => {
                eprintln!("calibrate: {e}");
                return ExitCode::from(exit::FAILED);
            }
        };
        return match std::fs::write(out, calibrate::render_features(&rows)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("{}: cannot write: {e}", out.display());
                ExitCode::from(exit::FAILED)
            }
        };
    }
    match calibrate::run(&pairs, &mut model, calibrate::Band::default()) {
        Ok(report) => {
            print!("{}", report.render());
            print!("{}", report.render_suggestion(a.max_rate));
            if let Some(t) = a.explain {
                print!("{}", calibrate::explain(&pairs, &report, t));
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("calibrate: {e}");
            ExitCode::from(exit::FAILED)
        }
    }
}
