//! The admin port: Prometheus metrics, liveness, readiness, a read-only view of the config
//! in service (never its secrets) and of routing state (circuits, latencies, canaries, queues). Kept off the app port so a NetworkPolicy can expose it to
//! Prometheus and the kubelet without exposing the API.

use std::sync::Arc;
use std::time::UNIX_EPOCH;

use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;

use super::body::Body;
use crate::state::Shared;

const BUDGET_STATES: [&str; 3] = ["ok", "soft", "exhausted"];

/// The live dashboard: one self-contained page (no CDN), fed by `/admin/events`.
const DASHBOARD: &str = include_str!("dashboard.html");
/// How often `/admin/events` sends a snapshot, and the window it summarises.
const EVENTS_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
const EVENTS_WINDOW_MS: u64 = 60_000;

/// With `server.admin_token` set, everything but metrics and probes needs it, as a bearer
/// token or a `token` query parameter (an EventSource cannot send headers).
fn authorized(shared: &Shared, req: &Request<Incoming>) -> bool {
    let rt = shared.runtime.load();
    let Some(token) = &rt.config.server.admin_token else {
        return true;
    };
    let want = token.0.as_bytes();
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "));
    let query = req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .find_map(|kv| kv.strip_prefix("token="));
    let given = bearer.or(query.map(str::as_bytes));
    // Constant-time comparison: the token guards the tenants' usage and prompts.
    given.is_some_and(|g| g.len() == want.len() && g.iter().zip(want).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0)
}

/// Without `server.admin_token`, an admin port reachable from outside the pod still serves
/// metrics, probes and read-only figures, but not what changes the sidecar's state (a cache
/// purge) nor prompt content (`server.dashboard_prompts`): anyone on the pod network could.
fn needs_token(shared: &Shared, req: &Request<Incoming>) -> Option<Response<Body>> {
    let rt = shared.runtime.load();
    let local = shared.admin_addr.get().is_none_or(|a| a.ip().is_loopback());
    if rt.config.server.admin_token.is_some() || local {
        return None;
    }
    let path = req.uri().path();
    let mutating = req.method() != Method::GET && path.starts_with("/admin/");
    let prompts = rt.config.server.dashboard_prompts && (path == "/admin/events" || path == "/dashboard");
    if !(mutating || prompts) {
        return None;
    }
    let what = if mutating {
        "changes the sidecar's state"
    } else {
        "shows prompt content"
    };
    Some(text(
        StatusCode::FORBIDDEN,
        "text/plain",
        format!(
            "{} {path} {what}: with the admin port off loopback it needs a token; set server.admin_token (from a Secret, e.g. ${{LLM_SIDECAR_ADMIN_TOKEN}})\n",
            req.method()
        ),
    ))
}

/// One dashboard snapshot: the live ring's figures plus circuits and queues.
fn snapshot(shared: &Shared) -> serde_json::Value {
    let rt = shared.runtime.load();
    let mut s = shared.live.snapshot(crate::limits::ledger::now_ms(), EVENTS_WINDOW_MS);
    let mut circuits: Vec<_> = rt.health.iter().collect();
    circuits.sort_by(|a, b| (&a.provider, &a.model).cmp(&(&b.provider, &b.model)));
    s["circuits"] = circuits
        .iter()
        .map(|h| serde_json::json!({"provider": &*h.provider, "model": &*h.model, "state": h.state().label(), "latency_ewma_ms": h.latency().map(|l| l.as_secs_f64() * 1e3)}))
        .collect();
    let mut providers: Vec<_> = rt.providers.values().collect();
    providers.sort_by(|a, b| a.name().cmp(b.name()));
    s["providers"] = providers
        .iter()
        .map(|p| {
            let (in_use, queued) = p.scheduler.load();
            serde_json::json!({"name": &**p.name(), "limit": p.scheduler.limit(), "in_use": in_use, "queued": queued})
        })
        .collect();
    s["version"] = serde_json::json!(rt.config.version);
    s
}

pub(crate) async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path();
    if (path == "/dashboard" || path.starts_with("/admin/")) && !authorized(&shared, &req) {
        let mut r = text(
            StatusCode::UNAUTHORIZED,
            "text/plain",
            "admin token required (server.admin_token)\n".into(),
        );
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return r;
    }
    if let Some(refused) = needs_token(&shared, &req) {
        return refused;
    }
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/dashboard") => text(StatusCode::OK, "text/html; charset=utf-8", DASHBOARD.into()),
        (&Method::GET, "/admin/events") => events(&shared),
        (&Method::GET, "/metrics") => text(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            shared.metrics.encode(),
        ),
        (&Method::GET, "/healthz") => text(StatusCode::OK, "text/plain", "ok\n".into()),
        (&Method::GET, "/readyz") => {
            if shared.health.is_ready() {
                // Ready with what it can serve; a provider without its key is named, not fatal.
                let rt = shared.runtime.load();
                let mut body = String::from("ready\n");
                for p in rt.config.providers.values() {
                    if let Some(why) = &p.unusable {
                        body.push_str(&format!("provider {} unusable: {why}\n", p.name));
                    }
                }
                text(StatusCode::OK, "text/plain", body)
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "not ready: shutting down\n".into(),
                )
            }
        }
        (&Method::GET, "/admin/config") => config(&shared),
        (&Method::POST, "/admin/cache/purge") => purge(&shared, &req),
        (&Method::GET, "/admin/cache") => {
            let rt = shared.runtime.load();
            let body = shared.cache.report(rt.router.routes(), &rt.config.cache);
            json(&body)
        }
        (&Method::GET, "/admin/usage") => usage(&shared),
        (&Method::GET, "/admin/advice") => {
            let rt = shared.runtime.load();
            let body = shared.advisor.report(&rt.config);
            json(&body)
        }
        (&Method::GET, "/admin/routing") => routing(&shared),
        _ => text(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /metrics, /healthz, /readyz, /admin/config, /dashboard, /admin/routing, /admin/cache, /admin/usage, /admin/advice, /admin/events, POST /admin/cache/purge\n"
                .into(),
        ),
    }
}

/// `/admin/events`: a dashboard snapshot every second, as server-sent events, until the browser goes away.
fn events(shared: &Arc<Shared>) -> Response<Body> {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let s = shared.clone();
    shared.background.spawn(async move {
        let mut tick = tokio::time::interval(EVENTS_EVERY);
        loop {
            tick.tick().await;
            let event = format!("data: {}\n\n", snapshot(&s));
            // The browser went away: stop.
            if tx.send(bytes::Bytes::from(event)).await.is_err() {
                return;
            }
        }
    });
    let mut r = Response::new(Body::Channel(rx));
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

/// `/admin/config`: the config in force, secrets left out.
fn config(shared: &Shared) -> Response<Body> {
    let rt = shared.runtime.load();
    let c = &rt.config;
    let body = serde_json::json!({
        "generation": rt.generation,
        "version": c.version,
        "digest": c.digest,
        "loaded_at_unix": rt.loaded_at.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        "providers": c.providers.values().map(|p| serde_json::json!({
            "name": &*p.name,
            "base_url": p.base_url.to_string(),
            "auth": p.auth.as_ref().map(|(h, _)| h.as_str()),
            "max_connections": p.max_connections,
            "usable": p.unusable.is_none(),
            "unusable_reason": p.unusable.as_deref(),
        })).collect::<Vec<_>>(),
        "models": c.models.values().map(|m| serde_json::json!({
            "name": &*m.name,
            "provider": &*m.provider,
            "upstream_model": &*m.upstream_model,
            "pricing_usd_per_million": {"input": m.pricing.input, "output": m.pricing.output, "cached_input": m.pricing.cached_input},
        })).collect::<Vec<_>>(),
        "routes": c.routes.iter().map(|r| serde_json::json!({
            "name": &*r.name, "models": r.models, "strategy": r.strategy.label(), "targets": r.targets.iter().map(|t| &*t.model).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "default_route": c.default_route,
        "tenants": c.tenants.names.iter().map(|t| &**t).collect::<Vec<_>>(),
        // The effective settings after the OTEL_* fallbacks; header values are secrets.
        "tracing": c.tracing.as_ref().map(|t| serde_json::json!({
            "endpoint": t.endpoint.to_string(),
            "protocol": t.protocol.label(),
            "compression": if t.gzip { "gzip" } else { "none" },
            "headers": t.headers.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
            "sample_ratio": t.sampler.ratio,
            "parent_based": t.sampler.parent_based,
            "resource": t.resource.iter().cloned().collect::<std::collections::BTreeMap<_, _>>(),
        })),
    });
    json(&body)
}

/// `POST /admin/cache/purge?tenant=&route=`.
fn purge(shared: &Shared, req: &Request<Incoming>) -> Response<Body> {
    let query = req.uri().query().unwrap_or("");
    let param = |name: &str| {
        query
            .split('&')
            .find_map(|kv| kv.strip_prefix(name).and_then(|v| v.strip_prefix('=')))
            .map(str::to_owned)
    };
    let (tenant, route) = (param("tenant"), param("route"));
    let removed = shared.cache.purge(tenant.as_deref(), route.as_deref());
    tracing::info!(
        removed,
        tenant = tenant.as_deref().unwrap_or("*"),
        route = route.as_deref().unwrap_or("*"),
        "cache purged"
    );
    let body = serde_json::json!({"removed": removed, "tenant": tenant, "route": route});
    text(StatusCode::OK, "application/json", body.to_string())
}

/// `/admin/usage`: spend and limits per tenant and model since start.
fn usage(shared: &Shared) -> Response<Body> {
    let rt = shared.runtime.load();
    let now = crate::limits::ledger::now_ms();
    let rows = shared.ledger.usage();
    let mut tenants: Vec<Arc<str>> = rt.config.tenants.names.clone();
    for (t, _, _) in &rows {
        if !tenants.contains(t) {
            tenants.push(t.clone());
        }
    }
    let body = serde_json::json!({
        "since_unix": shared.started_unix,
        "fleet": rt.config.redis.is_some(),
        "tenants": tenants.iter().map(|t| {
            let (today, month) = shared.ledger.spent(t, now);
            let budget = rt.config.tenants.budget_of(t).map(|b| serde_json::json!({
                "daily_usd": b.daily_usd,
                "monthly_usd": b.monthly_usd,
                "soft_ratio": b.soft_ratio,
                "remaining_today_usd": b.daily_usd.map(|d| (d - today).max(0.0)),
                "remaining_month_usd": b.monthly_usd.map(|m| (m - month).max(0.0)),
                "state": BUDGET_STATES[crate::limits::ledger::budget_state(b, today, month) as usize],
            }));
            let limits = rt.config.tenants.limits_of(t).map(|l| serde_json::json!({
                "requests_per_minute": l.requests_per_minute,
                "tokens_per_minute": l.tokens_per_minute,
                "models": l.models.iter().map(|(m, ml)| (m.to_string(), serde_json::json!({
                    "requests_per_minute": ml.requests_per_minute, "tokens_per_minute": ml.tokens_per_minute,
                }))).collect::<serde_json::Map<_, _>>(),
            }));
            let models: Vec<_> = rows.iter().filter(|(rt_, _, _)| rt_ == t).map(|(_, m, r)| serde_json::json!({
                "model": &**m,
                "requests": r.requests,
                "prompt_tokens": r.prompt_tokens,
                "completion_tokens": r.completion_tokens,
                "cached_tokens": r.cached_tokens,
                "cost_usd": r.cost_usd,
            })).collect();
            let total: f64 = rows.iter().filter(|(rt_, _, _)| rt_ == t).map(|(_, _, r)| r.cost_usd).sum();
            serde_json::json!({
                "tenant": &**t,
                "spent_today_usd": today,
                "spent_month_usd": month,
                "cost_since_start_usd": total,
                "budget": budget,
                "limits": limits,
                "models": models,
            })
        }).collect::<Vec<_>>(),
    });
    json(&body)
}

/// `/admin/routing`: routes, circuits, provider slots and priority classes.
fn routing(shared: &Shared) -> Response<Body> {
    let rt = shared.runtime.load();
    let circuits: Vec<_> = {
        let mut v: Vec<_> = rt.health.iter().collect();
        v.sort_by(|a, b| (&a.provider, &a.model).cmp(&(&b.provider, &b.model)));
        v.into_iter()
            .map(|h| {
                serde_json::json!({
                    "provider": &*h.provider,
                    "model": &*h.model,
                    "state": h.state().label(),
                    "latency_ewma_ms": h.latency().map(|l| l.as_secs_f64() * 1e3),
                })
            })
            .collect()
    };
    let mut providers: Vec<_> = rt.providers.values().collect();
    providers.sort_by(|a, b| a.name().cmp(b.name()));
    let body = serde_json::json!({
        "routes": rt.router.routes().iter().map(|r| serde_json::json!({
            "name": &*r.name,
            "strategy": r.strategy.label(),
            "targets": r.targets.iter().map(|t| &*t.model.name).collect::<Vec<_>>(),
            "canary": r.canary_status().map(|(m, reverted)| serde_json::json!({"model": &*m, "reverted": reverted})),
        })).collect::<Vec<_>>(),
        "circuits": circuits,
        "providers": providers.iter().map(|p| {
            let (in_use, queued) = p.scheduler.load();
            serde_json::json!({"name": &**p.name(), "limit": p.scheduler.limit(), "in_use": in_use, "queued": queued})
        }).collect::<Vec<_>>(),
        "priority_classes": rt.config.scheduling.classes.iter().map(|(n, w)| serde_json::json!({"name": &**n, "weight": w})).collect::<Vec<_>>(),
    });
    json(&body)
}

/// A pretty-printed JSON answer (admin endpoints are read by people as often as by tools).
fn json(body: &serde_json::Value) -> Response<Body> {
    text(
        StatusCode::OK,
        "application/json",
        serde_json::to_string_pretty(body).unwrap_or_default(),
    )
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Body> {
    let mut resp = Response::new(Body::full(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}
