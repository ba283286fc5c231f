//! The `llm-sidecar` binary: the command line (clap) and the async runtime; each command's work
//! lives in the library (`app::commands`, `inject::server::run`).

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use llm_sidecar::app::init_logging;
use llm_sidecar::app::{commands, exit};
use llm_sidecar::inject::{self, ConfigSource, Settings};

#[derive(Parser)]
#[command(
    name = "llm-sidecar",
    version,
    about = "OpenAI-compatible sidecar proxy: cache, routing, limits, metrics",
    long_about = "OpenAI-compatible sidecar proxy: cache, routing, limits, metrics.\n\n\
        One thread serves requests by default (--threads): as a sidecar it should not compete with \
        the app for cores, and on a shared CPU it avoids cross-thread wake-ups (measured: ~20% less \
        CPU per request than two threads). The embedder and config reloads run on their own threads \
        either way."
)]
struct Cli {
    /// Threads serving requests (one event loop by default; `llm-sidecar --help` says why).
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
    /// watched through the Kubernetes API. The semantic cache's model and ONNX Runtime are read
    /// from `cache.semantic.assets_dir`, else `$LLM_SIDECAR_ASSETS`, else the first of
    /// `./assets`, `assets` beside the binary, `../share/llm-sidecar/assets` beside it
    /// (`scripts/install`), `/opt/llm-sidecar/assets` (the image), `/usr/share/llm-sidecar/assets`
    /// that holds them (see docs/config.md).
    Serve {
        /// The config file (YAML; `check-config` validates one without serving).
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
    CheckConfig {
        /// The config file to check.
        file: PathBuf,
        /// Count every environment variable the config names as set (to a stand-in), to check
        /// a file without its real keys; values built from `${VAR}` are not checked then.
        #[arg(long)]
        no_env: bool,
    },
    /// Serve the built-in demo config in front of a built-in mock upstream (no network, no keys).
    Demo {
        /// Where the OpenAI API answers.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Where metrics, probes, /admin and /dashboard answer.
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin_listen: SocketAddr,
        /// Print the embedded demo config and exit.
        #[arg(long)]
        print_config: bool,
    },
    /// Report precision, recall and false-hit rate of the semantic cache per threshold, with the
    /// guard on and off, from labelled pairs (JSON lines {"a","b","label"}; label 1 = same answer).
    Calibrate {
        /// Labelled pairs, one JSON object per line (see data/paraphrases*.jsonl).
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
        /// Where the mock answers (OpenAI paths under /v1, Anthropic's /v1/messages).
        #[arg(long, default_value = "127.0.0.1:9000")]
        listen: SocketAddr,
        /// Answer chat requests with this many words of prose instead of echoing the question.
        #[arg(long, default_value_t = 0)]
        prose_words: usize,
    },
}

#[derive(clap::Args)]
struct InjectArgs {
    /// Where the API server sends admission reviews (HTTPS).
    #[arg(long, env = "LLM_SIDECAR_WEBHOOK_LISTEN", default_value = "0.0.0.0:8443")]
    listen: SocketAddr,
    /// `/metrics`, `/healthz`, `/readyz` of the webhook.
    #[arg(long, env = "LLM_SIDECAR_WEBHOOK_ADMIN_LISTEN", default_value = "0.0.0.0:9902")]
    admin_listen: SocketAddr,
    /// The serving certificate (PEM), re-read when it changes.
    #[arg(long, env = "LLM_SIDECAR_TLS_CERT", default_value = "/tls/tls.crt")]
    tls_cert: PathBuf,
    /// The certificate's private key (PEM), re-read when it changes.
    #[arg(long, env = "LLM_SIDECAR_TLS_KEY", default_value = "/tls/tls.key")]
    tls_key: PathBuf,
    /// The sidecar image injected into pods.
    #[arg(long, env = "LLM_SIDECAR_IMAGE")]
    image: String,
    /// The injected container's imagePullPolicy.
    #[arg(long, env = "LLM_SIDECAR_IMAGE_PULL_POLICY", default_value = "IfNotPresent")]
    image_pull_policy: String,
    /// `kube`: the sidecar watches `--config-map` (NAMESPACE/NAME) through the API;
    /// `mount`: the ConfigMap NAME of the pod's namespace is mounted.
    #[arg(long, env = "LLM_SIDECAR_CONFIG_SOURCE", default_value = "kube")]
    config_source: String,
    /// The ConfigMap the injected sidecar reads (see --config-source).
    #[arg(
        long,
        env = "LLM_SIDECAR_CONFIG_MAP",
        default_value = "llm-sidecar/llm-sidecar-config"
    )]
    config_map: String,
    /// The ConfigMap key holding the config.
    #[arg(long, env = "LLM_SIDECAR_CONFIG_KEY", default_value = "config.yaml")]
    config_key: String,
    /// A Secret whose keys become the sidecar's environment (provider API keys); "" for none.
    #[arg(long, env = "LLM_SIDECAR_SECRET", default_value = "llm-sidecar-keys")]
    secret: String,
    /// The injected sidecar's log level (a pod annotation may override it, as the others).
    #[arg(long, env = "LLM_SIDECAR_LOG_LEVEL", default_value = "info")]
    log_level: String,
    /// The injected container's CPU request.
    #[arg(long, env = "LLM_SIDECAR_CPU_REQUEST", default_value = "50m")]
    cpu_request: String,
    /// The injected container's memory request (the model and a full cache fit in it).
    #[arg(long, env = "LLM_SIDECAR_MEMORY_REQUEST", default_value = "160Mi")]
    memory_request: String,
    /// The injected container's CPU limit; none by default (throttling adds latency).
    #[arg(long, env = "LLM_SIDECAR_CPU_LIMIT")]
    cpu_limit: Option<String>,
    /// The injected container's memory limit.
    #[arg(long, env = "LLM_SIDECAR_MEMORY_LIMIT", default_value = "512Mi")]
    memory_limit: String,
    /// `false` for clusters older than Kubernetes 1.29 (no native sidecars): the sidecar is
    /// added as a plain container instead.
    #[arg(long, env = "LLM_SIDECAR_NATIVE_SIDECAR", default_value_t = true, action = clap::ArgAction::Set)]
    native_sidecar: bool,
}

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
            return ExitCode::from(exit::OS);
        }
    };
    rt.block_on(run(cli.command))
}

async fn run(command: Command) -> ExitCode {
    match command {
        Command::CheckConfig { file, no_env } => commands::check_config(&file, no_env),
        Command::Serve {
            config,
            kube_configmap,
            kube_key,
            listen,
            admin_listen,
        } => commands::serve(config, kube_configmap, &kube_key, listen, admin_listen).await,
        Command::Demo {
            listen,
            admin_listen,
            print_config,
        } => commands::demo(listen, admin_listen, print_config).await,
        Command::Calibrate {
            pairs,
            assets,
            explain,
            max_false_hit_rate,
            features,
        } => commands::calibrate(commands::CalibrateArgs {
            pairs: &pairs,
            assets: &assets,
            explain,
            max_rate: max_false_hit_rate,
            features: features.as_deref(),
        }),
        Command::Inject(args) => inject(*args).await,
        Command::MockUpstream { listen, prose_words } => commands::mock_upstream(listen, prose_words).await,
    }
}

async fn inject(a: InjectArgs) -> ExitCode {
    let _log = init_logging(&commands::default_logging());
    let Some(config_source) = ConfigSource::parse(&a.config_source) else {
        eprintln!(
            "llm-sidecar inject: --config-source {:?}: use kube or mount",
            a.config_source
        );
        return ExitCode::from(exit::CONFIG);
    };
    let settings = Settings {
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
    };
    inject::server::run(settings, a.tls_cert, a.tls_key, a.listen, a.admin_listen).await
}
