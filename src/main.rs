//! The `llm-sidecar` binary: parse the command line and hand over to the library.

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use llm_sidecar::app::{ConfigInput, Options, Sidecar, run_until_signal};
use llm_sidecar::config::{Config, Env, LoggingSettings, VarLookup};
use llm_sidecar::mock::MockUpstream;
use llm_sidecar::telemetry::init_logging;

#[derive(Parser)]
#[command(
    name = "llm-sidecar",
    version,
    about = "OpenAI-compatible sidecar proxy: cache, routing, limits, metrics"
)]
struct Cli {
    /// Threads serving requests. One (the default) runs a single-threaded event loop: as a
    /// sidecar it should not compete with the app for cores, and on a shared CPU it avoids
    /// cross-thread wake-ups (measured: ~20% less CPU per request than two threads). The
    /// embedder and config reloads run on their own threads either way.
    #[arg(long, global = true, env = "LLM_SIDECAR_THREADS", default_value_t = DEFAULT_THREADS)]
    threads: usize,
    #[command(subcommand)]
    command: Command,
}

/// One event-loop thread per sidecar; see `--threads`.
const DEFAULT_THREADS: usize = 1;

#[derive(Subcommand)]
enum Command {
    /// Serve with a config file (watched and hot-reloaded, also on SIGHUP) or a ConfigMap
    /// watched through the Kubernetes API.
    Serve {
        #[arg(
            long,
            short,
            env = "LLM_SIDECAR_CONFIG",
            required_unless_present = "kube_configmap",
            conflicts_with = "kube_configmap"
        )]
        config: Option<PathBuf>,
        /// `NAMESPACE/NAME` (or `NAME` in the pod's namespace) of a ConfigMap to read and watch
        /// through the Kubernetes API (in-cluster credentials or kubeconfig).
        #[arg(long, env = "LLM_SIDECAR_KUBE_CONFIGMAP")]
        kube_configmap: Option<String>,
        /// The ConfigMap key holding the config.
        #[arg(long, env = "LLM_SIDECAR_KUBE_KEY", default_value = "config.yaml")]
        kube_key: String,
        /// Override `listen`.
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Override `admin_listen`.
        #[arg(long)]
        admin_listen: Option<SocketAddr>,
    },
    /// Validate a config file; prints every problem with its key path. Exit 0 when valid.
    CheckConfig { file: PathBuf },
    /// Serve the built-in demo config in front of a built-in mock upstream (no network, no keys).
    Demo {
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin_listen: SocketAddr,
        /// Print the embedded demo config and exit.
        #[arg(long)]
        print_config: bool,
    },
    /// Report precision, recall and false-hit rate of the semantic cache per threshold, with the
    /// guard on and off, from labelled pairs (JSON lines {"a","b","label"}; label 1 = same answer).
    Calibrate {
        #[arg(long)]
        pairs: PathBuf,
        /// Also list, at this threshold, the wrong answers that would be served and the
        /// same-answer pairs the guard turns down (with its reason).
        #[arg(long)]
        explain: Option<f32>,
        /// The share of served hits that may be wrong (0.01 = 1 %): a threshold is suggested for
        /// it, with how far the pairs can vouch for it.
        #[arg(long, default_value_t = 0.01)]
        max_false_hit_rate: f64,
        /// Instead of the report, write each pair's signals (label, cosine, guard verdict,
        /// token alignment) as tab-separated lines to this file, for scripts/fit-combiner.
        #[arg(long)]
        features: Option<PathBuf>,
        /// Folder with libonnxruntime.so, model(-q8).onnx and tokenizer.json.
        #[arg(long, env = "LLM_SIDECAR_ASSETS", default_value = "assets")]
        assets: PathBuf,
    },
    /// Serve the mutating admission webhook that injects the sidecar into annotated pods
    /// (HTTPS; the certificate files are re-read when they change).
    Inject(Box<InjectArgs>),
    /// Run only the mock OpenAI-compatible upstream (for load tests and experiments).
    MockUpstream {
        #[arg(long, default_value = "127.0.0.1:9000")]
        listen: SocketAddr,
        /// Answer chat requests with this many words of prose instead of echoing the question.
        #[arg(long, default_value_t = 0)]
        prose_words: usize,
    },
}

#[derive(clap::Args)]
struct InjectArgs {
    #[arg(long, env = "LLM_SIDECAR_WEBHOOK_LISTEN", default_value = "0.0.0.0:8443")]
    listen: SocketAddr,
    /// `/metrics`, `/healthz`, `/readyz` of the webhook.
    #[arg(long, env = "LLM_SIDECAR_WEBHOOK_ADMIN_LISTEN", default_value = "0.0.0.0:9902")]
    admin_listen: SocketAddr,
    #[arg(long, env = "LLM_SIDECAR_TLS_CERT", default_value = "/tls/tls.crt")]
    tls_cert: PathBuf,
    #[arg(long, env = "LLM_SIDECAR_TLS_KEY", default_value = "/tls/tls.key")]
    tls_key: PathBuf,
    /// The sidecar image injected into pods.
    #[arg(long, env = "LLM_SIDECAR_IMAGE")]
    image: String,
    #[arg(long, env = "LLM_SIDECAR_IMAGE_PULL_POLICY", default_value = "IfNotPresent")]
    image_pull_policy: String,
    /// `kube`: the sidecar watches `--config-map` (NAMESPACE/NAME) through the API;
    /// `mount`: the ConfigMap NAME of the pod's namespace is mounted.
    #[arg(long, env = "LLM_SIDECAR_CONFIG_SOURCE", default_value = "kube")]
    config_source: String,
    #[arg(
        long,
        env = "LLM_SIDECAR_CONFIG_MAP",
        default_value = "llm-sidecar/llm-sidecar-config"
    )]
    config_map: String,
    #[arg(long, env = "LLM_SIDECAR_CONFIG_KEY", default_value = "config.yaml")]
    config_key: String,
    /// A Secret whose keys become the sidecar's environment (provider API keys); "" for none.
    #[arg(long, env = "LLM_SIDECAR_SECRET", default_value = "llm-sidecar-keys")]
    secret: String,
    #[arg(long, env = "LLM_SIDECAR_LOG_LEVEL", default_value = "info")]
    log_level: String,
    #[arg(long, env = "LLM_SIDECAR_CPU_REQUEST", default_value = "50m")]
    cpu_request: String,
    #[arg(long, env = "LLM_SIDECAR_MEMORY_REQUEST", default_value = "160Mi")]
    memory_request: String,
    #[arg(long, env = "LLM_SIDECAR_CPU_LIMIT")]
    cpu_limit: Option<String>,
    #[arg(long, env = "LLM_SIDECAR_MEMORY_LIMIT", default_value = "512Mi")]
    memory_limit: String,
    /// `false` for clusters older than Kubernetes 1.29 (no native sidecars): the sidecar is
    /// added as a plain container instead.
    #[arg(long, env = "LLM_SIDECAR_NATIVE_SIDECAR", default_value_t = true, action = clap::ArgAction::Set)]
    native_sidecar: bool,
}

use llm_sidecar::app::exit::{
    CONFIG as EXIT_CONFIG, FAILED as EXIT_FAILED, OS as EXIT_OS, UNAVAILABLE as EXIT_UNAVAILABLE,
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut builder = if cli.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(cli.threads);
        b
    };
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("llm-sidecar: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_OS);
        }
    };
    rt.block_on(run(cli.command))
}

async fn run(command: Command) -> ExitCode {
    match command {
        Command::CheckConfig { file } => check_config(&file),
        Command::Serve {
            config,
            kube_configmap,
            kube_key,
            listen,
            admin_listen,
        } => {
            // Logging settings come from the config itself; read a file once for them (a
            // ConfigMap is read by the sidecar itself: defaults and RUST_LOG apply).
            let logging = config
                .as_ref()
                .and_then(|c| std::fs::read_to_string(c).ok())
                .and_then(|t| Config::load(&t, &Env).ok())
                .map(|c| c.logging)
                .unwrap_or_else(default_logging);
            let _log = init_logging(&logging);
            let input = match (config, kube_configmap) {
                (Some(path), _) => ConfigInput::File(path),
                (None, Some(spec)) => match llm_sidecar::config::kube::KubeSource::new(&spec, &kube_key, None).await {
                    Ok(k) => ConfigInput::Kube(Box::new(k)),
                    Err(e) => {
                        eprintln!("llm-sidecar: {e}");
                        return ExitCode::from(EXIT_UNAVAILABLE);
                    }
                },
                (None, None) => {
                    eprintln!("llm-sidecar: give --config FILE or --kube-configmap NAMESPACE/NAME");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            let opts = Options {
                listen,
                admin_listen,
                ..Options::new(input)
            };
            start_and_run(opts).await
        }
        Command::Demo {
            listen,
            admin_listen,
            print_config,
        } => {
            if print_config {
                print!("{}", llm_sidecar::DEMO_CONFIG);
                return ExitCode::SUCCESS;
            }
            let _log = init_logging(&LoggingSettings {
                format: llm_sidecar::config::LogFormat::Text,
                level: "info".into(),
            });
            let mock = match MockUpstream::start().await {
                Ok(m) => m,
                Err(e) => {
                    eprintln!("llm-sidecar demo: cannot start the mock upstream: {e}");
                    return ExitCode::from(EXIT_OS);
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
                ..Options::new(ConfigInput::Text(llm_sidecar::DEMO_CONFIG.to_owned()))
            };
            let mock_url = mock.base_url();
            let code = start_and_run_with(opts, move |sidecar| {
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
        Command::Calibrate {
            pairs,
            assets,
            explain,
            max_false_hit_rate,
            features,
        } => calibrate(&pairs, &assets, explain, max_false_hit_rate, features.as_deref()),
        Command::Inject(args) => inject(*args).await,
        Command::MockUpstream { listen, prose_words } => {
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
                    ExitCode::from(EXIT_OS)
                }
            }
        }
    }
}

async fn inject(a: InjectArgs) -> ExitCode {
    use llm_sidecar::inject::{ConfigSource, Settings, server};
    let _log = init_logging(&default_logging());
    let config_source = match a.config_source.as_str() {
        "kube" => ConfigSource::Kube,
        "mount" => ConfigSource::Mount,
        other => {
            eprintln!("llm-sidecar inject: --config-source {other:?}: use kube or mount");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let settings = Arc::new(Settings {
        image: a.image,
        image_pull_policy: a.image_pull_policy,
        config_source,
        config_map: a.config_map,
        config_key: a.config_key,
        secret: Some(a.secret).filter(|s| !s.is_empty()),
        log_level: a.log_level,
        cpu_request: a.cpu_request,
        memory_request: a.memory_request,
        cpu_limit: a.cpu_limit.filter(|s| !s.is_empty()),
        memory_limit: a.memory_limit,
        native_sidecar: a.native_sidecar,
    });
    let tls = server::ReloadingCert::new(a.tls_cert, a.tls_key)
        .map(Arc::new)
        .and_then(server::tls_config);
    let tls = match tls {
        Ok(t) => t,
        Err(e) => {
            eprintln!("llm-sidecar inject: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let (listener, admin) = match server::bind(a.listen, a.admin_listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("llm-sidecar inject: cannot listen: {e}");
            return ExitCode::from(EXIT_OS);
        }
    };
    let metrics = Arc::new(llm_sidecar::telemetry::Metrics::new());
    tracing::info!(listen = %a.listen, admin = %a.admin_listen, image = &*settings.image, "injection webhook serving");
    let stop = tokio_util::sync::CancellationToken::new();
    // Both handles are awaited (the webhook drains) or aborted below.
    #[allow(clippy::disallowed_methods)]
    let webhook = tokio::spawn(server::serve(listener, tls, settings, metrics.clone(), stop.clone()));
    #[allow(clippy::disallowed_methods)]
    let admin = tokio::spawn(server::serve_admin(admin, metrics));
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("llm-sidecar inject: cannot handle SIGTERM: {e}");
            return ExitCode::from(EXIT_OS);
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    // Reviews in flight finish (bounded by server::DRAIN); then the admin port goes.
    stop.cancel();
    let _ = webhook.await;
    admin.abort();
    ExitCode::SUCCESS
}

fn calibrate(
    pairs: &std::path::Path,
    assets: &std::path::Path,
    explain: Option<f32>,
    max_rate: f64,
    features: Option<&std::path::Path>,
) -> ExitCode {
    use llm_sidecar::cache::calibrate;
    if !(0.0..1.0).contains(&max_rate) {
        eprintln!("--max-false-hit-rate {max_rate}: use a share from 0 to below 1 (e.g. 0.01 for 1 %)");
        return ExitCode::from(EXIT_CONFIG);
    }
    let text = match std::fs::read_to_string(pairs) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{}: cannot read: {e}", pairs.display());
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let pairs = match calibrate::parse_pairs(&text) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{}: {e}", pairs.display());
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let mut model = match llm_sidecar::embed::Model::load(assets, 1) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("calibrate: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if let Some(out) = features {
        return match calibrate::features(&pairs, &mut model) {
            Ok(rows) => match std::fs::write(out, calibrate::render_features(&rows)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("{}: cannot write: {e}", out.display());
                    ExitCode::from(EXIT_FAILED)
                }
            },
            Err(e) => {
                eprintln!("calibrate: {e}");
                ExitCode::from(EXIT_FAILED)
            }
        };
    }
    match calibrate::run(&pairs, &mut model, calibrate::Band::default()) {
        Ok(report) => {
            print!("{}", report.render());
            print!("{}", report.render_suggestion(max_rate));
            if let Some(t) = explain {
                print!("{}", calibrate::explain(&pairs, &report, t));
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("calibrate: {e}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}

fn default_logging() -> LoggingSettings {
    LoggingSettings {
        format: llm_sidecar::config::LogFormat::Auto,
        level: "info".into(),
    }
}

async fn start_and_run(opts: Options) -> ExitCode {
    start_and_run_with(opts, |_| {}).await
}

async fn start_and_run_with(opts: Options, on_start: impl FnOnce(&Sidecar)) -> ExitCode {
    match Sidecar::start(opts).await {
        Ok(sidecar) => {
            on_start(&sidecar);
            match run_until_signal(sidecar).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("llm-sidecar: signal handling failed: {e}");
                    ExitCode::from(EXIT_OS)
                }
            }
        }
        Err(e) => {
            eprintln!("llm-sidecar: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn check_config(file: &PathBuf) -> ExitCode {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{}: cannot read: {e}", file.display());
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match Config::load(&text, &Env)
        .map_err(|e| e.0)
        .and_then(|c| llm_sidecar::state::Runtime::build(c, None, 1).map_err(|e| e.0))
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
            ExitCode::SUCCESS
        }
        Err(issues) => {
            eprintln!("{}: {} problem(s):", file.display(), issues.len());
            for i in issues {
                eprintln!("  - {i}");
            }
            ExitCode::from(EXIT_FAILED)
        }
    }
}
