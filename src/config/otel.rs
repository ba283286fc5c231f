//! The `tracing:` section: where and how OpenTelemetry traces are exported. Each key falls back
//! to the standard `OTEL_*` environment variable (the OpenTelemetry operator and most platforms
//! set those on the pod), then to the specification's default, so one ConfigMap can steer the
//! fleet while a pod can still name itself.

use std::time::Duration;

use http::Uri;
use http::header::{HeaderName, HeaderValue};

use super::raw::RawTracing;
use super::validate::Validator;

/// OTLP's transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// OTLP/gRPC: `TraceService/Export` over HTTP/2 (port 4317 by convention).
    Grpc,
    /// OTLP/HTTP with protobuf bodies: `POST /v1/traces` (port 4318 by convention).
    HttpProtobuf,
}

impl OtlpProtocol {
    pub(crate) fn label(self) -> &'static str {
        match self {
            OtlpProtocol::Grpc => "grpc",
            OtlpProtocol::HttpProtobuf => "http/protobuf",
        }
    }
}

/// Which requests are recorded. The OpenTelemetry samplers, reduced to what they decide:
/// a root request is kept with probability `ratio`; with `parent_based`, a request whose
/// `traceparent` carries a decision follows it instead.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplerConfig {
    pub(crate) ratio: f64,
    pub(crate) parent_based: bool,
}

#[derive(Clone, PartialEq)]
pub struct TracingConfig {
    pub(crate) protocol: OtlpProtocol,
    /// Gzip the export bodies (most collectors and vendors accept it; saves ~80 % of the bytes).
    pub(crate) gzip: bool,
    /// For gRPC, the collector's scheme and authority; for HTTP, the full `/v1/traces` URL.
    pub(crate) endpoint: Uri,
    /// Sent with every export (API keys: never logged).
    pub(crate) headers: Vec<(HeaderName, HeaderValue)>,
    pub(crate) timeout: Duration,
    pub(crate) sampler: SamplerConfig,
    /// Resource attributes, `service.name` first.
    pub resource: Vec<(String, String)>,
    /// Spans waiting for export beyond this are dropped (and counted), never blocking a request.
    pub(crate) max_queue: usize,
    pub(crate) batch_size: usize,
    /// The longest a finished span waits before it is exported.
    pub(crate) interval: Duration,
}

impl std::fmt::Debug for TracingConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TracingConfig")
            .field("protocol", &self.protocol)
            .field("gzip", &self.gzip)
            .field("endpoint", &self.endpoint)
            .field("headers", &self.headers.iter().map(|(k, _)| k).collect::<Vec<_>>())
            .field("timeout", &self.timeout)
            .field("sampler", &self.sampler)
            .field("resource", &self.resource)
            .finish_non_exhaustive()
    }
}

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// The batch span processor's defaults (OTEL_BSP_*), except the delay: 5 s is long for a
/// dashboard-driven team and a sidecar's batches are small, so spans go out within a second.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);
const DEFAULT_MAX_QUEUE: u64 = 2048;
const DEFAULT_BATCH: u64 = 512;

impl Validator<'_> {
    pub(super) fn tracing(&mut self, raw: RawTracing) -> Option<std::sync::Arc<TracingConfig>> {
        let start = self.issues.len();
        let endpoint_env = self
            .env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .map(|e| (e, true, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
            .or_else(|| {
                self.env("OTEL_EXPORTER_OTLP_ENDPOINT")
                    .map(|e| (e, false, "OTEL_EXPORTER_OTLP_ENDPOINT"))
            });
        let sdk_disabled = self
            .env("OTEL_SDK_DISABLED")
            .is_some_and(|v| v.eq_ignore_ascii_case("true"))
            || self
                .env("OTEL_TRACES_EXPORTER")
                .is_some_and(|v| v.eq_ignore_ascii_case("none"));
        let enabled = match raw.enabled {
            Some(e) => e,
            None => (raw.endpoint.is_some() || endpoint_env.is_some()) && !sdk_disabled,
        };
        if !enabled {
            return None;
        }

        let (protocol, protocol_at) = self.setting(
            &raw.protocol,
            "tracing.protocol",
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        );
        let protocol = match protocol.as_deref() {
            None | Some("http/protobuf") => OtlpProtocol::HttpProtobuf,
            Some("grpc") => OtlpProtocol::Grpc,
            Some("http/json") => {
                self.issue(
                    protocol_at,
                    "http/json is not supported: use http/protobuf (the default) or grpc; every collector takes both",
                );
                OtlpProtocol::HttpProtobuf
            }
            Some(other) => {
                self.issue(
                    protocol_at,
                    format!("{other:?} is not an OTLP protocol: use grpc or http/protobuf"),
                );
                OtlpProtocol::HttpProtobuf
            }
        };

        let (compression, compression_at) = self.setting(
            &raw.compression,
            "tracing.compression",
            "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION",
            "OTEL_EXPORTER_OTLP_COMPRESSION",
        );
        let gzip = match compression.as_deref() {
            None | Some("none") => false,
            Some("gzip") => true,
            Some(other) => {
                self.issue(
                    compression_at,
                    format!("{other:?} is not an OTLP compression: use gzip or none"),
                );
                false
            }
        };

        // A configured or generic endpoint is a base URL; the traces-specific variable is used as is.
        let (text, as_is, at) = match &raw.endpoint {
            Some(e) => (e.trim().to_owned(), false, "tracing.endpoint"),
            None => endpoint_env.unwrap_or_else(|| {
                let default = match protocol {
                    OtlpProtocol::Grpc => "http://localhost:4317",
                    OtlpProtocol::HttpProtobuf => "http://localhost:4318",
                };
                (default.to_owned(), false, "tracing.endpoint")
            }),
        };
        let endpoint = self.otlp_endpoint(at, &text, as_is, protocol);

        let mut headers = Vec::new();
        for var in ["OTEL_EXPORTER_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_TRACES_HEADERS"] {
            if let Some(list) = self.env(var) {
                for (k, v) in parse_pairs(&list) {
                    self.header(&mut headers, var, &k, &v);
                }
            }
        }
        for (k, v) in &raw.headers {
            self.header(&mut headers, &format!("tracing.headers.{k}"), k, v);
        }

        let timeout = match (
            &raw.timeout,
            self.env("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT")
                .or_else(|| self.env("OTEL_EXPORTER_OTLP_TIMEOUT")),
        ) {
            (Some(t), _) => self.duration("tracing.timeout", Some(t), DEFAULT_TIMEOUT),
            (None, Some(ms)) => self.millis("OTEL_EXPORTER_OTLP_TIMEOUT", &ms, DEFAULT_TIMEOUT),
            (None, None) => DEFAULT_TIMEOUT,
        };
        if timeout.is_zero() {
            self.issue("tracing.timeout", "must be greater than zero");
        }
        let interval = match (&raw.interval, self.env("OTEL_BSP_SCHEDULE_DELAY")) {
            (Some(t), _) => self.duration("tracing.interval", Some(t), DEFAULT_INTERVAL),
            (None, Some(ms)) => self.millis("OTEL_BSP_SCHEDULE_DELAY", &ms, DEFAULT_INTERVAL),
            (None, None) => DEFAULT_INTERVAL,
        };
        if interval < Duration::from_millis(10) {
            self.issue("tracing.interval", "must be at least 10ms");
        }
        let max_queue = self.count(
            "tracing.max_queue",
            raw.max_queue,
            "OTEL_BSP_MAX_QUEUE_SIZE",
            DEFAULT_MAX_QUEUE,
        );
        let batch_size = self.count(
            "tracing.batch_size",
            raw.batch_size,
            "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
            DEFAULT_BATCH,
        );
        let sampler = self.sampler(&raw);

        let mut resource: Vec<(String, String)> = Vec::new();
        let mut set = |k: &str, v: String| match resource.iter_mut().find(|(key, _)| key == k) {
            Some(slot) => slot.1 = v,
            None => resource.push((k.to_owned(), v)),
        };
        set("service.name", "llm-sidecar".into());
        set("service.version", env!("CARGO_PKG_VERSION").into());
        if let Some(pod) = self.env("POD_NAME").or_else(|| self.env("HOSTNAME")) {
            set("service.instance.id", pod.clone());
            set("k8s.pod.name", pod);
        }
        if let Some(ns) = self.env("POD_NAMESPACE") {
            set("k8s.namespace.name", ns);
        }
        if let Some(list) = self.env("OTEL_RESOURCE_ATTRIBUTES") {
            for (k, v) in parse_pairs(&list) {
                set(&k, v);
            }
        }
        for (k, v) in &raw.resource_attributes {
            set(k, v.clone());
        }
        if let Some(name) = raw.service_name.clone().or_else(|| self.env("OTEL_SERVICE_NAME")) {
            set("service.name", name);
        }

        (self.issues.len() == start).then(|| {
            std::sync::Arc::new(TracingConfig {
                protocol,
                gzip,
                endpoint,
                headers,
                timeout,
                sampler,
                resource,
                max_queue,
                batch_size: batch_size.min(max_queue),
                interval,
            })
        })
    }

    /// An environment variable, trimmed; set but empty counts as unset.
    fn env(&self, name: &str) -> Option<String> {
        self.vars
            .var(name)
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
    }

    /// A key's value: configured, else the traces-specific variable, else the generic one;
    /// with where it came from, for error messages.
    fn setting(
        &self,
        configured: &Option<String>,
        key: &'static str,
        specific: &'static str,
        generic: &'static str,
    ) -> (Option<String>, &'static str) {
        match configured {
            Some(v) => (Some(v.clone()), key),
            None => match self.env(specific) {
                Some(v) => (Some(v), specific),
                None => (self.env(generic), generic),
            },
        }
    }

    fn otlp_endpoint(&mut self, at: &str, text: &str, as_is: bool, protocol: OtlpProtocol) -> Uri {
        let parsed = match text.parse::<Uri>() {
            Ok(u) if matches!(u.scheme_str(), Some("http" | "https")) && u.authority().is_some() => u,
            _ => {
                self.issue(
                    at,
                    format!("{text:?} is not a collector URL: write http://HOST:PORT or https://HOST:PORT"),
                );
                return Uri::from_static("http://localhost:4318/v1/traces");
            }
        };
        let path = match protocol {
            // gRPC's path is the service method; only where to connect matters.
            OtlpProtocol::Grpc => return rebuild(&parsed, "/"),
            OtlpProtocol::HttpProtobuf if as_is => parsed.path().to_owned(),
            OtlpProtocol::HttpProtobuf => {
                let base = parsed.path().trim_end_matches('/');
                if base.ends_with("/v1/traces") {
                    base.to_owned()
                } else {
                    format!("{base}/v1/traces")
                }
            }
        };
        rebuild(&parsed, &path)
    }

    fn header(&mut self, headers: &mut Vec<(HeaderName, HeaderValue)>, at: &str, k: &str, v: &str) {
        match (HeaderName::try_from(k), HeaderValue::try_from(v)) {
            (Ok(name), Ok(mut value)) => {
                value.set_sensitive(true);
                headers.retain(|(n, _)| *n != name);
                headers.push((name, value));
            }
            _ => self.issue(at, format!("{k:?} is not a valid header name and value")),
        }
    }

    fn millis(&mut self, var: &str, ms: &str, default: Duration) -> Duration {
        match ms.parse::<u64>() {
            Ok(n) => Duration::from_millis(n),
            Err(_) => {
                self.issue(var, format!("{ms:?} is not a number of milliseconds"));
                default
            }
        }
    }

    fn count(&mut self, at: &str, configured: Option<u64>, var: &str, default: u64) -> usize {
        let n = match configured {
            Some(n) => n,
            None => match self
                .vars
                .var(var)
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
            {
                Some(s) => s.parse::<u64>().unwrap_or_else(|_| {
                    self.issue(var, format!("{s:?} is not a whole number"));
                    default
                }),
                None => default,
            },
        };
        if n == 0 || n > 1 << 20 {
            self.issue(at, "must be between 1 and 1048576 spans");
        }
        usize::try_from(n).unwrap_or(usize::MAX)
    }

    fn sampler(&mut self, raw: &RawTracing) -> SamplerConfig {
        let (name, name_at) = match &raw.sampler {
            Some(s) => (Some(s.clone()), "tracing.sampler"),
            None => (self.env("OTEL_TRACES_SAMPLER"), "OTEL_TRACES_SAMPLER"),
        };
        let (arg, arg_at) = match raw.sample_ratio {
            Some(r) => (Some(r), "tracing.sample_ratio"),
            None => match self.env("OTEL_TRACES_SAMPLER_ARG") {
                Some(s) => match s.parse::<f64>() {
                    Ok(r) => (Some(r), "OTEL_TRACES_SAMPLER_ARG"),
                    Err(_) => {
                        self.issue(
                            "OTEL_TRACES_SAMPLER_ARG",
                            format!("{s:?} is not a ratio between 0 and 1"),
                        );
                        (None, "")
                    }
                },
                None => (None, ""),
            },
        };
        if let Some(r) = arg
            && !(0.0..=1.0).contains(&r)
        {
            self.issue(arg_at, "must be a ratio between 0 and 1");
        }
        let ratio = arg.unwrap_or(1.0).clamp(0.0, 1.0);
        let (ratio, parent_based) = match name.as_deref().filter(|s| !s.is_empty()) {
            // A ratio alone means "this share of new traces, following the app's decision".
            None | Some("parentbased_traceidratio") => (ratio, true),
            Some("parentbased_always_on") => (1.0, true),
            Some("parentbased_always_off") => (0.0, true),
            Some("traceidratio") => (ratio, false),
            Some("always_on") => (1.0, false),
            Some("always_off") => (0.0, false),
            Some(other) => {
                self.issue(
                    name_at,
                    format!(
                        "{other:?} is not a sampler: use parentbased_traceidratio (the default), traceidratio, parentbased_always_on, parentbased_always_off, always_on or always_off"
                    ),
                );
                (ratio, true)
            }
        };
        SamplerConfig { ratio, parent_based }
    }
}

fn rebuild(u: &Uri, path: &str) -> Uri {
    let mut parts = u.clone().into_parts();
    parts.path_and_query = path.parse().ok();
    Uri::from_parts(parts).unwrap_or_else(|_| u.clone())
}

/// `key1=value1,key2=value2` with percent-encoded values (the W3C baggage form the `OTEL_*`
/// header and resource variables use).
pub(crate) fn parse_pairs(list: &str) -> Vec<(String, String)> {
    list.split(',')
        .filter_map(|item| {
            let (k, v) = item.split_once('=')?;
            let k = percent_decode(k.trim());
            (!k.is_empty()).then(|| (k, percent_decode(v.trim())))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::config::Config;

    struct Vars(HashMap<&'static str, &'static str>);
    impl crate::config::VarLookup for Vars {
        fn var(&self, name: &str) -> Option<String> {
            self.0.get(name).map(|s| (*s).to_owned())
        }
    }

    fn load(yaml: &str, env: &[(&'static str, &'static str)]) -> Result<Config, crate::config::ConfigErrors> {
        Config::load(yaml, &Vars(env.iter().copied().collect()))
    }

    #[test]
    fn off_without_an_endpoint_or_when_disabled() {
        assert!(load("", &[]).unwrap().tracing.is_none());
        let env = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")];
        assert!(load("", &env).unwrap().tracing.is_some());
        assert!(load("tracing: {enabled: false}", &env).unwrap().tracing.is_none());
        let off = [env[0], ("OTEL_SDK_DISABLED", "true")];
        assert!(load("", &off).unwrap().tracing.is_none());
    }

    #[test]
    fn environment_fills_what_the_config_leaves_out() {
        let env = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317/ignored"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "api-key=se%3Dcret, x-team = ml"),
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
            ("OTEL_SERVICE_NAME", "checkout"),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "deployment.environment=prod,service.name=ignored",
            ),
            ("POD_NAME", "checkout-7d9f"),
            ("POD_NAMESPACE", "shop"),
            ("OTEL_BSP_SCHEDULE_DELAY", "250"),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
        ];
        let t = load("tracing: {headers: {x-team: platform}}", &env)
            .unwrap()
            .tracing
            .unwrap();
        assert_eq!(t.protocol, OtlpProtocol::Grpc);
        assert_eq!(t.endpoint.to_string(), "http://collector:4317/");
        let h: Vec<_> = t
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.to_str().unwrap()))
            .collect();
        assert_eq!(h, [("api-key", "se=cret"), ("x-team", "platform")]);
        assert_eq!(
            t.sampler,
            SamplerConfig {
                ratio: 0.25,
                parent_based: false
            }
        );
        let r: HashMap<_, _> = t.resource.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(r["service.name"], "checkout");
        assert_eq!(r["deployment.environment"], "prod");
        assert_eq!(r["k8s.pod.name"], "checkout-7d9f");
        assert_eq!(r["k8s.namespace.name"], "shop");
        assert_eq!(t.interval, Duration::from_millis(250));
        assert!(t.gzip);
        assert!(!format!("{t:?}").contains("cret"), "header values are secrets");

        let http = load(
            "tracing: {endpoint: 'https://otel.example:4318/base/', sample_ratio: 0.5}",
            &[],
        )
        .unwrap()
        .tracing
        .unwrap();
        assert_eq!(http.endpoint.to_string(), "https://otel.example:4318/base/v1/traces");
        assert_eq!(
            http.sampler,
            SamplerConfig {
                ratio: 0.5,
                parent_based: true
            }
        );
        let exact = [("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://c:4318/custom/path")];
        assert_eq!(
            load("", &exact).unwrap().tracing.unwrap().endpoint.to_string(),
            "http://c:4318/custom/path"
        );
    }

    #[test]
    fn mistakes_name_the_key_or_variable() {
        let e = load(
            "tracing: {endpoint: 'collector:4317', protocol: thrift, sampler: sometimes, sample_ratio: 2, interval: 1ms, compression: zstd}",
            &[],
        )
        .unwrap_err()
        .to_string();
        for needle in [
            "tracing.endpoint",
            "tracing.protocol",
            "tracing.sampler",
            "tracing.sample_ratio",
            "tracing.interval",
            "tracing.compression",
        ] {
            assert!(e.contains(needle), "{needle} missing from {e}");
        }
        let e = load(
            "",
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                ("OTEL_EXPORTER_OTLP_TIMEOUT", "soon"),
            ],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("OTEL_EXPORTER_OTLP_TIMEOUT"), "{e}");
        let e = load("tracing: {enabled: true, unknown: 1}", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field"), "{e}");
    }
}
