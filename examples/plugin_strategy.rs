// An example: a failed assumption should stop it loudly.
#![allow(clippy::unwrap_used, clippy::expect_used)]
//! A routing strategy of your own (`llm_sidecar::plugin::RoutingStrategy`): premium tenants
//! get the strongest (most expensive) model first, everyone else the cheapest, and questions
//! that mention code go to the strongest for all. Routes use it with `strategy: plugin` and
//! `plugin: by-tenant-tier`.
//!
//!   cargo run --example plugin_strategy

use llm_sidecar::app::{Options, Sidecar};
use llm_sidecar::mock::MockUpstream;
use llm_sidecar::plugin::{Candidate, RouteRequest, RoutingStrategy};

struct ByTenantTier {
    premium: Vec<String>,
}

impl RoutingStrategy for ByTenantTier {
    fn order(&self, request: &RouteRequest<'_>, candidates: &mut Vec<Candidate>) {
        let strongest_first =
            self.premium.iter().any(|t| t == request.tenant) || request.text.is_some_and(|t| t.contains("code"));
        candidates.sort_by(|a, b| a.output_price.total_cmp(&b.output_price));
        if strongest_first {
            candidates.reverse();
        }
    }
}

/// Starts a sidecar with the strategy in front of a mock provider, asks as three callers, and
/// returns which model answered each.
pub async fn run() -> Vec<(String, String)> {
    let mock = MockUpstream::start().await.unwrap();
    let config = format!(
        r#"
providers: {{ mock: {{ base_url: "{}" }} }}
models:
  small: {{ provider: mock, pricing: {{ input: 0.15, output: 0.6 }} }}
  large: {{ provider: mock, pricing: {{ input: 2.5, output: 10 }} }}
tenants:
  header: x-tenant
  list: {{ gold: {{}}, free: {{}} }}
routes:
  - name: chat
    models: [chat]
    strategy: plugin
    plugin: by-tenant-tier
    targets: [{{ model: small }}, {{ model: large }}]
"#,
        mock.base_url()
    );
    let any = "127.0.0.1:0".parse().unwrap();
    let sidecar = Sidecar::start(Options::from_yaml(config).listen(any).admin_listen(any).strategy(
        "by-tenant-tier",
        ByTenantTier {
            premium: vec!["gold".into()],
        },
    ))
    .await
    .unwrap();
    let client = reqwest::Client::new();
    let mut answered = Vec::new();
    for (tenant, question) in [
        ("gold", "Summarise this paragraph"),
        ("free", "Summarise this paragraph"),
        ("free", "Why does this code not compile?"),
    ] {
        let r = client
            .post(format!("http://{}/v1/chat/completions", sidecar.app_addr()))
            .header("x-tenant", tenant)
            .json(&serde_json::json!({"model": "chat", "messages": [{"role": "user", "content": question}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let model = r.headers()["x-llm-sidecar-model"].to_str().unwrap().to_owned();
        answered.push((format!("{tenant}: {question}"), model));
    }
    sidecar.shutdown().await;
    answered
}

#[tokio::main]
async fn main() {
    for (who, model) in run().await {
        println!("{who:45} → {model}");
    }
}
