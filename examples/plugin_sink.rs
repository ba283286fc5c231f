// An example: a failed assumption should stop it loudly.
#![allow(clippy::unwrap_used, clippy::expect_used)]
//! A request sink of your own (`llm_sidecar::plugin::RequestSink`): told about every request
//! once it has ended, to feed the host's own metrics, logs or billing. Here, spend and tokens
//! per tenant, kept in memory.
//!
//!   cargo run --example plugin_sink

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use llm_sidecar::app::{Options, Sidecar};
use llm_sidecar::mock::MockUpstream;
use llm_sidecar::plugin::{RequestEvent, RequestSink};

/// Per tenant: requests, output tokens, USD.
pub type Totals = BTreeMap<String, (u64, u64, f64)>;

#[derive(Clone, Default)]
struct Spend(Arc<Mutex<Totals>>);

impl RequestSink for Spend {
    fn record(&self, event: &RequestEvent<'_>) {
        // Called as each request ends, on the runtime's thread: a map update, nothing slow.
        let mut m = self.0.lock().unwrap();
        let row = m.entry(event.tenant.unwrap_or("unknown").to_owned()).or_default();
        row.0 += 1;
        row.1 += event.output_tokens.unwrap_or(0);
        row.2 += event.cost_usd;
    }
}

/// Three requests by two tenants: returns what the sink counted.
pub async fn run() -> Totals {
    let mock = MockUpstream::start().await.unwrap();
    let config = format!(
        "providers: {{ mock: {{ base_url: \"{}\" }} }}\nmodels: {{ m: {{ provider: mock, pricing: {{ input: 1, output: 2 }} }} }}\ntenants: {{ header: x-tenant, list: {{ a: {{}}, b: {{}} }} }}\n",
        mock.base_url()
    );
    let spend = Spend::default();
    let any = "127.0.0.1:0".parse().unwrap();
    let sidecar = Sidecar::start(
        Options::from_yaml(config)
            .listen(any)
            .admin_listen(any)
            .sink(spend.clone()),
    )
    .await
    .unwrap();
    let client = reqwest::Client::new();
    for tenant in ["a", "a", "b"] {
        let r = client
            .post(format!("http://{}/v1/chat/completions", sidecar.app_addr()))
            .header("x-tenant", tenant)
            .json(&serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "Name three rivers"}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
    }
    // Shutdown drains every request, so every one has been told.
    sidecar.shutdown().await;
    spend.0.lock().unwrap().clone()
}

#[tokio::main]
async fn main() {
    for (tenant, (requests, tokens, usd)) in run().await {
        println!("{tenant}: {requests} requests, {tokens} output tokens, ${usd:.6}");
    }
}
