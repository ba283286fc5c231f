//! The mutating admission webhook's decision: an `AdmissionReview` for a Pod in, an
//! `AdmissionReview` response out, with a JSON patch that adds the sidecar. Pure functions of
//! the review and the [`Settings`], so golden files pin the exact patch; `server` serves them
//! over HTTPS.
//!
//! What an injected pod gets: the sidecar as a native sidecar (an init container with
//! `restartPolicy: Always`, started and ready before the app, stopped after it) or, where the
//! cluster lacks native sidecars, a plain container; its config (a watch on one ConfigMap
//! through the API, or a mounted ConfigMap); probes on the admin port; Prometheus scrape
//! annotations; and `OPENAI_BASE_URL` in every app container that does not set it. A pod it
//! does not understand is admitted unchanged — the webhook never blocks a pod.

pub mod server;

use base64::Engine;
use serde_json::{Value, json};

/// The pod annotation that asks for injection (`"true"`) or opts out (`"false"`).
pub(crate) const ANNOTATION_INJECT: &str = "llm-sidecar.io/inject";
/// Set on injected pods; a pod carrying it is left alone (idempotence).
pub(crate) const ANNOTATION_STATUS: &str = "llm-sidecar.io/status";
pub(crate) const ANNOTATION_IMAGE: &str = "llm-sidecar.io/image";
pub(crate) const ANNOTATION_CONFIG_MAP: &str = "llm-sidecar.io/config-map";
pub(crate) const ANNOTATION_CONFIG_SOURCE: &str = "llm-sidecar.io/config-source";
pub(crate) const ANNOTATION_LOG_LEVEL: &str = "llm-sidecar.io/log-level";
pub(crate) const ANNOTATION_CPU_REQUEST: &str = "llm-sidecar.io/cpu-request";
pub(crate) const ANNOTATION_MEMORY_REQUEST: &str = "llm-sidecar.io/memory-request";
pub(crate) const ANNOTATION_CPU_LIMIT: &str = "llm-sidecar.io/cpu-limit";
pub(crate) const ANNOTATION_MEMORY_LIMIT: &str = "llm-sidecar.io/memory-limit";
pub(crate) const ANNOTATION_NATIVE: &str = "llm-sidecar.io/native-sidecar";
/// Added to injected pods so monitors can select them.
pub(crate) const LABEL_INJECTED: &str = "llm-sidecar.io/injected";
pub(crate) const CONTAINER_NAME: &str = "llm-sidecar";
pub(crate) const ADMIN_PORT: u16 = 9901;
pub(crate) const APP_PORT: u16 = 8080;
/// Where the image keeps the model and ONNX Runtime (see the Dockerfile).
pub(crate) const ASSETS_DIR: &str = "/opt/llm-sidecar/assets";
const CONFIG_MOUNT: &str = "/etc/llm-sidecar";
const CONFIG_VOLUME: &str = "llm-sidecar-config";
const TMP_VOLUME: &str = "llm-sidecar-tmp";

/// How the injected sidecar gets its config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigSource {
    /// Watch one ConfigMap through the API (`namespace/name`): edits apply in about a second,
    /// and one ConfigMap can serve every namespace.
    Kube,
    /// Mount a ConfigMap of the pod's own namespace (kubelet syncs edits within ~a minute).
    Mount,
}

impl ConfigSource {
    /// `kube` or `mount`, as the command line and the pod annotation spell them.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "kube" => Some(ConfigSource::Kube),
            "mount" => Some(ConfigSource::Mount),
            _ => None,
        }
    }
}

/// The webhook's defaults (from its command line; the chart sets them).
#[derive(Debug, Clone)]
pub struct Settings {
    pub image: String,
    pub image_pull_policy: String,
    pub config_source: ConfigSource,
    /// `NAME` (mount: in the pod's namespace) or `NAMESPACE/NAME` (kube).
    pub config_map: String,
    pub config_key: String,
    /// A Secret whose keys become the sidecar's environment (provider keys); optional.
    pub secret: Option<String>,
    pub log_level: String,
    pub cpu_request: String,
    pub memory_request: String,
    pub cpu_limit: Option<String>,
    pub memory_limit: String,
    pub native_sidecar: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            image: "ghcr.io/llm-sidecar/llm-sidecar:latest".into(),
            image_pull_policy: "IfNotPresent".into(),
            config_source: ConfigSource::Kube,
            config_map: "llm-sidecar/llm-sidecar-config".into(),
            config_key: "config.yaml".into(),
            secret: Some("llm-sidecar-keys".into()),
            log_level: "info".into(),
            cpu_request: "50m".into(),
            // The quantized model (~60 MiB) plus runtime and a warm cache.
            memory_request: "160Mi".into(),
            cpu_limit: None,
            memory_limit: "512Mi".into(),
            native_sidecar: true,
        }
    }
}

/// Which webhook entry sent the review: the namespace-label entry injects unless the pod opts
/// out; the annotation entry injects only pods that ask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Annotation,
    Namespace,
}

/// What happened to one review, for the log and the metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Injected,
    NotRequested,
    OptedOut,
    AlreadyInjected,
    NotAPod,
    /// The pod could not be understood; admitted unchanged.
    Unreadable,
}

impl Outcome {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Outcome::Injected => "injected",
            Outcome::NotRequested => "skipped_not_requested",
            Outcome::OptedOut => "skipped_opted_out",
            Outcome::AlreadyInjected => "skipped_already_injected",
            Outcome::NotAPod => "skipped_not_a_pod",
            Outcome::Unreadable => "error_unreadable_pod",
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ReviewError {
    #[error("the body is not an AdmissionReview: {0}")]
    Malformed(String),
}

/// Answers one AdmissionReview (the HTTP body). Always admits; adds a patch when injecting.
pub fn review(body: &[u8], settings: &Settings, mode: Mode) -> Result<(Value, Outcome), ReviewError> {
    let review: Value = serde_json::from_slice(body).map_err(|e| ReviewError::Malformed(e.to_string()))?;
    let request = review
        .get("request")
        .filter(|r| r.is_object())
        .ok_or_else(|| ReviewError::Malformed("no `request` object".into()))?;
    let uid = request
        .get("uid")
        .and_then(Value::as_str)
        .ok_or_else(|| ReviewError::Malformed("no `request.uid`".into()))?;
    let api_version = review
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("admission.k8s.io/v1");
    let is_pod = request["kind"]["kind"] == "Pod" && request.get("subResource").is_none_or(Value::is_null);
    let (patch, outcome) = if !is_pod {
        (None, Outcome::NotAPod)
    } else {
        match request.get("object").filter(|o| o.is_object()) {
            Some(pod) => match plan(pod, settings, mode) {
                Ok(ops) => (Some(ops), Outcome::Injected),
                Err(skip) => (None, skip),
            },
            None => (None, Outcome::Unreadable),
        }
    };
    let mut response = json!({"uid": uid, "allowed": true});
    if let Some(ops) = patch {
        let bytes = serde_json::to_vec(&Value::Array(ops)).unwrap_or_default();
        // The API server wants the patch base64-encoded (a byte array in the Go types).
        response["patchType"] = json!("JSONPatch");
        response["patch"] = json!(base64::engine::general_purpose::STANDARD.encode(&bytes));
    }
    if outcome == Outcome::Unreadable {
        response["warnings"] = json!(["llm-sidecar: the pod could not be read; admitted without the sidecar"]);
    }
    Ok((
        json!({"apiVersion": api_version, "kind": "AdmissionReview", "response": response}),
        outcome,
    ))
}

fn annotation<'a>(pod: &'a Value, key: &str) -> Option<&'a str> {
    pod["metadata"]["annotations"].get(key).and_then(Value::as_str)
}

/// JSON pointer escaping of one path segment (RFC 6901).
fn pointer(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

/// The patch operations that inject the sidecar, or why not.
pub(crate) fn plan(pod: &Value, s: &Settings, mode: Mode) -> Result<Vec<Value>, Outcome> {
    let spec = pod.get("spec").filter(|v| v.is_object()).ok_or(Outcome::Unreadable)?;
    let containers = spec["containers"].as_array().ok_or(Outcome::Unreadable)?;
    let init = spec.get("initContainers").and_then(Value::as_array);
    let named = |list: Option<&Vec<Value>>| list.is_some_and(|l| l.iter().any(|c| c["name"] == CONTAINER_NAME));
    if annotation(pod, ANNOTATION_STATUS).is_some() || named(Some(containers)) || named(init) {
        return Err(Outcome::AlreadyInjected);
    }
    match (mode, annotation(pod, ANNOTATION_INJECT)) {
        (_, Some("false" | "disabled")) => return Err(Outcome::OptedOut),
        (Mode::Annotation, Some("true" | "enabled")) | (Mode::Namespace, _) => {}
        (Mode::Annotation, _) => return Err(Outcome::NotRequested),
    }
    let native = match annotation(pod, ANNOTATION_NATIVE) {
        Some("false") => false,
        Some("true") => true,
        _ => s.native_sidecar,
    };
    let source = annotation(pod, ANNOTATION_CONFIG_SOURCE)
        .and_then(ConfigSource::parse)
        .unwrap_or(s.config_source);
    // Without a service account token the sidecar cannot read the ConfigMap through the API.
    let source = if spec["automountServiceAccountToken"] == false {
        ConfigSource::Mount
    } else {
        source
    };
    let config_map = annotation(pod, ANNOTATION_CONFIG_MAP).unwrap_or(&s.config_map);
    let sidecar = container(pod, s, source, config_map, native);

    let mut ops = Vec::new();
    if native {
        match init {
            None => ops.push(json!({"op": "add", "path": "/spec/initContainers", "value": [sidecar]})),
            // First, so that app init containers can already call it.
            Some(_) => ops.push(json!({"op": "add", "path": "/spec/initContainers/0", "value": sidecar})),
        }
    } else {
        ops.push(json!({"op": "add", "path": "/spec/containers/-", "value": sidecar}));
    }
    let mut volumes = vec![json!({"name": TMP_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}})];
    if source == ConfigSource::Mount {
        let name = config_map.rsplit('/').next().unwrap_or(config_map);
        volumes.push(json!({"name": CONFIG_VOLUME, "configMap": {"name": name}}));
    }
    match spec.get("volumes").and_then(Value::as_array) {
        None => ops.push(json!({"op": "add", "path": "/spec/volumes", "value": volumes})),
        Some(_) => ops.extend(
            volumes
                .into_iter()
                .map(|v| json!({"op": "add", "path": "/spec/volumes/-", "value": v})),
        ),
    }
    let base_url = json!({"name": "OPENAI_BASE_URL", "value": format!("http://127.0.0.1:{APP_PORT}/v1")});
    for (i, c) in containers.iter().enumerate() {
        match c.get("env").and_then(Value::as_array) {
            Some(env) if env.iter().any(|e| e["name"] == "OPENAI_BASE_URL") => {}
            Some(_) => ops.push(json!({"op": "add", "path": format!("/spec/containers/{i}/env/-"), "value": base_url})),
            None => ops.push(json!({"op": "add", "path": format!("/spec/containers/{i}/env"), "value": [base_url]})),
        }
    }
    let mut annotations = vec![(ANNOTATION_STATUS, "injected".to_owned())];
    // Never override the app's own scrape settings.
    if annotation(pod, "prometheus.io/scrape").is_none() {
        annotations.push(("prometheus.io/scrape", "true".into()));
        annotations.push(("prometheus.io/port", ADMIN_PORT.to_string()));
        annotations.push(("prometheus.io/path", "/metrics".into()));
    }
    // A label, unlike an annotation, can select injected pods (the chart's PodMonitor).
    match pod["metadata"].get("labels").and_then(Value::as_object) {
        None => ops.push(json!({"op": "add", "path": "/metadata/labels", "value": {LABEL_INJECTED: "true"}})),
        Some(_) => ops.push(
            json!({"op": "add", "path": format!("/metadata/labels/{}", pointer(LABEL_INJECTED)), "value": "true"}),
        ),
    }
    if pod["metadata"].get("annotations").and_then(Value::as_object).is_none() {
        let map: serde_json::Map<String, Value> = annotations
            .into_iter()
            .map(|(k, v)| (k.to_owned(), Value::String(v)))
            .collect();
        ops.push(json!({"op": "add", "path": "/metadata/annotations", "value": map}));
    } else {
        for (k, v) in annotations {
            ops.push(json!({"op": "add", "path": format!("/metadata/annotations/{}", pointer(k)), "value": v}));
        }
    }
    Ok(ops)
}

fn container(pod: &Value, s: &Settings, source: ConfigSource, config_map: &str, native: bool) -> Value {
    let ann = |key: &str, default: &str| annotation(pod, key).unwrap_or(default).to_owned();
    let mut args = vec!["serve".to_owned()];
    let mut mounts = vec![json!({"name": TMP_VOLUME, "mountPath": "/tmp"})];
    match source {
        ConfigSource::Kube => {
            // `NAME` alone means the pod's own namespace.
            args.extend(["--kube-configmap".into(), config_map.to_owned()]);
            args.extend(["--kube-key".into(), s.config_key.clone()]);
        }
        ConfigSource::Mount => {
            args.extend(["--config".into(), format!("{CONFIG_MOUNT}/{}", s.config_key)]);
            mounts.push(json!({"name": CONFIG_VOLUME, "mountPath": CONFIG_MOUNT, "readOnly": true}));
        }
    }
    args.extend(["--admin-listen".into(), format!("0.0.0.0:{ADMIN_PORT}")]);
    let mut requests = json!({"cpu": ann(ANNOTATION_CPU_REQUEST, &s.cpu_request), "memory": ann(ANNOTATION_MEMORY_REQUEST, &s.memory_request)});
    let mut limits = json!({"memory": ann(ANNOTATION_MEMORY_LIMIT, &s.memory_limit)});
    if let Some(cpu) = annotation(pod, ANNOTATION_CPU_LIMIT)
        .map(str::to_owned)
        .or_else(|| s.cpu_limit.clone())
    {
        limits["cpu"] = json!(cpu);
    }
    if requests["cpu"] == "" {
        requests.as_object_mut().map(|r| r.remove("cpu"));
    }
    let mut env = vec![
        json!({"name": "LLM_SIDECAR_ASSETS", "value": ASSETS_DIR}),
        json!({"name": "RUST_LOG", "value": ann(ANNOTATION_LOG_LEVEL, &s.log_level)}),
        json!({"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}),
        json!({"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}),
    ];
    env.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    let probe = |path: &str, period: u32, failures: u32| json!({"httpGet": {"path": path, "port": "llm-admin"}, "periodSeconds": period, "failureThreshold": failures, "timeoutSeconds": 1});
    let mut c = json!({
        "name": CONTAINER_NAME,
        "image": ann(ANNOTATION_IMAGE, &s.image),
        "imagePullPolicy": s.image_pull_policy,
        "args": args,
        "env": env,
        "ports": [{"name": "llm-admin", "containerPort": ADMIN_PORT, "protocol": "TCP"}],
        // The app starts only once this passes (native sidecars), so its first call is served.
        "startupProbe": probe("/readyz", 1, 60),
        "readinessProbe": probe("/readyz", 2, 2),
        "livenessProbe": probe("/healthz", 10, 3),
        "resources": {"requests": requests, "limits": limits},
        "securityContext": {
            "runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532,
            "allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
            "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": mounts,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    });
    if let Some(secret) = &s.secret {
        c["envFrom"] = json!([{"secretRef": {"name": secret, "optional": true}}]);
    }
    if native {
        c["restartPolicy"] = json!("Always");
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointer_segments_are_escaped() {
        assert_eq!(pointer("prometheus.io/scrape"), "prometheus.io~1scrape");
        assert_eq!(pointer("a~b"), "a~0b");
    }
}
