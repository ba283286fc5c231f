use super::*;
use crate::openai::RequestHead;

fn router(text: &str) -> (Config, Router) {
    let config = Config::load(text, &|_: &str| None).unwrap();
    let health = HealthRegistry::carry(config.models.values(), None, |_| true);
    let r = Router::new(&config, &health, None, &crate::plugin::Plugins::default());
    (config, r)
}

const BASE: &str = r#"
providers: { p: { base_url: "http://127.0.0.1:1/v1" } }
models:
  a: { provider: p, pricing: { input: 5, output: 15 } }
  b: { provider: p, pricing: { input: 0.15, output: 0.6 }, context_window: 1000, capabilities: [json] }
  c: { provider: p, pricing: { input: 1, output: 2 } }
"#;

struct Req {
    body: String,
    headers: HeaderMap,
    tenant: &'static str,
}

impl Req {
    fn new(model: &str, text: &str) -> Self {
        Req {
            body: serde_json::json!({"model": model, "messages": [{"role": "user", "content": text}]}).to_string(),
            headers: HeaderMap::new(),
            tenant: "default",
        }
    }

    fn decide(&self, r: &Router) -> Result<Step, RouteError> {
        let head = RequestHead::parse(self.body.as_bytes()).unwrap();
        let signals = Signals::read(&head, self.body.len(), r.needs_text());
        let req = Request {
            model: &head.model,
            tenant: self.tenant,
            headers: &self.headers,
            signals: &signals,
            budget_soft: false,
        };
        r.decide(&req, 0)
    }

    fn decided(&self, r: &Router) -> Decision {
        match self.decide(r).unwrap() {
            Step::Decided(d) => d,
            Step::NeedsEmbedding(r) => panic!("route {} needs an embedding", r.name),
        }
    }
}

fn names(d: &Decision) -> Vec<&str> {
    d.candidates.iter().map(|t| &*t.model.name).collect()
}

#[test]
fn aliases_win_over_catalogue_names_and_globs_match() {
    let (_, r) = router(&format!(
        "{BASE}routes:\n  - {{ name: chat, models: [auto, a], targets: [{{ model: b }}, {{ model: a }}] }}\n  - {{ name: gpt, models: [\"gpt-4*\"], targets: [{{ model: c }}] }}\ndefault_route: chat\n"
    ));
    let d = Req::new("a", "hi").decided(&r);
    assert_eq!((&*d.route.name, names(&d)), ("chat", vec!["b", "a"]));
    assert_eq!(Req::new("b", "hi").decided(&r).reason, Reason::Catalogue);
    assert_eq!(&*Req::new("gpt-4o-mini", "hi").decided(&r).route.name, "gpt");
    assert!(matches!(
        Req::new("gpt-5", "hi").decide(&r),
        Err(RouteError::UnknownModel { .. })
    ));
    assert_eq!(
        r.model_ids.iter().map(|s| &**s).collect::<Vec<_>>(),
        ["a", "auto", "b", "c"]
    );
    assert!(glob("gpt-4*", "gpt-4") && glob("g?t-*o", "gpt-4o") && !glob("gpt-4*", "gpt-3.5"));
}

#[test]
fn conditions_on_tenant_header_keywords_and_regex() {
    let (_, r) = router(&format!(
        r#"{BASE}routes:
  - {{ name: vip, models: [auto], match: {{ tenants: [acme] }}, targets: [{{ model: a }}] }}
  - {{ name: sql, models: [auto], match: {{ regex: "(?i)\\bselect\\b.*\\bfrom\\b" }}, targets: [{{ model: c }}] }}
  - {{ name: translate, match: {{ keywords: [translate, traduis] }}, targets: [{{ model: b }}] }}
  - {{ name: beta, models: [auto], match: {{ header: {{ name: x-beta, values: ["1"] }} }}, targets: [{{ model: b }}] }}
  - {{ name: rest, models: [auto], targets: [{{ model: c }}, {{ model: a }}] }}
routing: {{ allow_route_header: true }}
"#
    ));
    let mut q = Req::new("auto", "hello");
    assert_eq!(&*q.decided(&r).route.name, "rest");
    q.tenant = "acme";
    assert_eq!(&*q.decided(&r).route.name, "vip");
    assert_eq!(
        &*Req::new("auto", "Select name FROM users").decided(&r).route.name,
        "sql"
    );
    // No `models`: keywords alone select, whatever the model asked for.
    assert_eq!(
        &*Req::new("a", "Please TRANSLATE this").decided(&r).route.name,
        "translate"
    );
    let mut q = Req::new("auto", "hello");
    q.headers.insert("x-beta", "1".parse().unwrap());
    assert_eq!(&*q.decided(&r).route.name, "beta");
    q.headers.insert("x-beta", "2".parse().unwrap());
    assert_eq!(&*q.decided(&r).route.name, "rest");
    q.headers.insert(ROUTE_HEADER, "vip".parse().unwrap());
    let d = q.decided(&r);
    assert!(d.forced);
    assert_eq!(&*d.route.name, "vip");
    q.headers.insert(ROUTE_HEADER, "nope".parse().unwrap());
    assert!(matches!(q.decide(&r), Err(RouteError::UnknownRoute { .. })));
}

#[test]
fn weighted_splits_by_weight_and_sticks_per_tenant() {
    let (_, r) = router(&format!(
        "{BASE}routes:\n  - {{ name: ab, models: [auto], strategy: weighted, targets: [{{ model: a, weight: 80 }}, {{ model: c, weight: 20 }}] }}\n  - {{ name: sticky, models: [s], strategy: weighted, sticky: tenant, targets: [{{ model: a, weight: 50 }}, {{ model: c, weight: 50 }}] }}\n"
    ));
    let q = Req::new("auto", "hi");
    let a = (0..2000).filter(|_| names(&q.decided(&r))[0] == "a").count();
    assert!((1500..1700).contains(&a), "80 % of 2000 → {a}");
    assert_eq!(names(&q.decided(&r)).len(), 2, "the other arm stays as a fallback");
    let mut firsts = std::collections::BTreeSet::new();
    for t in ["t1", "t2", "t3", "t4", "t5", "t6", "t7", "t8"] {
        let mut q = Req::new("s", "hi");
        q.tenant = t;
        let first = names(&q.decided(&r))[0].to_owned();
        for _ in 0..20 {
            assert_eq!(names(&q.decided(&r))[0], first, "tenant {t} sticks");
        }
        firsts.insert(first);
    }
    assert_eq!(firsts.len(), 2, "tenants spread over both arms");
}

#[test]
fn cheapest_respects_capabilities_and_context_windows() {
    let (_, r) = router(&format!(
        "{BASE}routes:\n  - {{ name: cheap, models: [auto], strategy: cheapest, targets: [{{ model: a }}, {{ model: c }}, {{ model: b }}] }}\n  - {{ name: only-b, models: [ob], targets: [{{ model: b }}] }}\n"
    ));
    let d = Req::new("auto", "hi").decided(&r);
    assert_eq!(names(&d), ["b", "c", "a"]);
    assert!(matches!(d.reason, Reason::Cheapest { usd } if usd > 0.0));
    // b declares only json: a tools request skips it.
    let mut q = Req::new("auto", "hi");
    q.body = r#"{"model":"auto","messages":[{"role":"user","content":"hi"}],"tools":[{"type":"function","function":{"name":"f"}}]}"#.into();
    let d = q.decided(&r);
    assert_eq!((names(&d), d.filtered), (vec!["c", "a"], 1));
    // b's 1000-token window cannot take a long prompt.
    let long = "word ".repeat(2000);
    assert_eq!(names(&Req::new("auto", &long).decided(&r)), ["c", "a"]);
    let e = Req::new("ob", &long).decide(&r).unwrap_err();
    assert!(e.to_string().contains("b: json, 1000 tokens"), "{e}");
}

#[test]
fn fastest_prefers_low_latency_within_budget() {
    let (_, r) = router(&format!(
        "{BASE}routes:\n  - {{ name: fast, models: [auto], strategy: fastest, latency_budget: 500ms, targets: [{{ model: a }}, {{ model: c }}] }}\n"
    ));
    let route = &r.routes()[0];
    route.targets[0].health.observe_latency(Duration::from_millis(900));
    route.targets[1].health.observe_latency(Duration::from_millis(100));
    for _ in 0..50 {
        let d = Req::new("auto", "hi").decided(&r);
        assert_eq!(names(&d), ["c", "a"]);
        assert!(matches!(d.reason, Reason::Fastest { latency: Some(l) } if l == Duration::from_millis(100)));
    }
}

#[test]
fn complexity_picks_a_tier() {
    let (_, r) = router(&format!(
        "{BASE}routes:\n  - {{ name: tiered, models: [auto], strategy: complexity, targets: [{{ model: c, tier: light }}, {{ model: a, tier: strong }}] }}\n"
    ));
    let d = Req::new("auto", "What is the capital of France?").decided(&r);
    assert_eq!(names(&d), ["c", "a"]);
    let d = Req::new(
        "auto",
        "Prove that the integral of x^2 from 0 to 1 is 1/3, step by step.",
    )
    .decided(&r);
    assert_eq!(names(&d), ["a", "c"]);
    assert!(matches!(d.reason, Reason::Complexity { tier: Tier::Strong, .. }));
}

#[tokio::test(start_paused = true)]
async fn canary_splits_then_reverts_on_errors_and_survives_reload() {
    let text = format!(
        "{BASE}routes:\n  - {{ name: can, models: [auto], strategy: canary, canary: {{ model: b, percent: 25, min_requests: 10, max_error_rate: 0.2 }}, targets: [{{ model: a }}] }}\n"
    );
    let (config, r) = router(&text);
    let q = Req::new("auto", "hi");
    let to_b = (0..4000).filter(|_| names(&q.decided(&r))[0] == "b").count();
    assert!((800..1200).contains(&to_b), "25 % of 4000 → {to_b}");
    let route = r.routes()[0].clone();
    let mut reverted = None;
    for i in 0..10 {
        reverted = reverted.or(route.canary_report("b", i % 2 == 0, || Duration::from_millis(50)));
    }
    let rev = reverted.expect("50 % errors over 10 requests reverts");
    assert_eq!((&*rev.model, rev.requests), ("b", 10));
    for _ in 0..200 {
        let d = q.decided(&r);
        assert_eq!(names(&d), ["a"]);
        assert_eq!(
            d.reason,
            Reason::Canary {
                to_canary: false,
                reverted: true
            }
        );
    }
    // A reload with the same canary keeps it reverted; a changed canary starts afresh.
    let health = HealthRegistry::carry(config.models.values(), None, |_| true);
    let r2 = Router::new(&config, &health, Some(&r), &Default::default());
    assert_eq!(r2.routes()[0].canary_status().map(|(_, rev)| rev), Some(true));
    let changed = Config::load(&text.replace("percent: 25", "percent: 5"), &|_: &str| None).unwrap();
    let r3 = Router::new(&changed, &health, Some(&r2), &Default::default());
    assert_eq!(r3.routes()[0].canary_status().map(|(_, rev)| rev), Some(false));
}

#[test]
fn semantic_routes_ask_for_an_embedding_and_fall_through() {
    let (_, r) = router(&format!(
        "{BASE}routes:\n  - {{ name: sem, models: [auto], strategy: semantic, semantic_threshold: 0.8, targets: [{{ model: a, examples: [\"write code\"] }}, {{ model: c, examples: [\"tell a joke\"] }}] }}\n  - {{ name: rest, models: [auto], targets: [{{ model: b }}] }}\n"
    ));
    let q = Req::new("auto", "please write some code");
    let Step::NeedsEmbedding(route) = q.decide(&r).unwrap() else {
        panic!("needs an embedding")
    };
    route
        .example_vectors
        .set(vec![(0, vec![1.0, 0.0]), (1, vec![0.0, 1.0])])
        .unwrap();
    let head = RequestHead::parse(q.body.as_bytes()).unwrap();
    let signals = Signals::read(&head, q.body.len(), true);
    let req = Request {
        model: "auto",
        tenant: "t",
        headers: &q.headers,
        signals: &signals,
        budget_soft: false,
    };
    let Step::Decided(d) = r.decide_semantic(&route, &req, Some(&[0.9, 0.1])).unwrap() else {
        panic!()
    };
    assert_eq!(names(&d), ["a", "c"]);
    assert!(matches!(d.reason, Reason::Semantic { similarity } if similarity >= 0.89));
    // Nothing close enough, or no embedding: the next route decides.
    let Step::Decided(d) = r.decide_semantic(&route, &req, Some(&[0.6, 0.6])).unwrap() else {
        panic!()
    };
    assert_eq!(&*d.route.name, "rest");
    let Step::Decided(d) = r.decide_semantic(&route, &req, None).unwrap() else {
        panic!()
    };
    assert_eq!(&*d.route.name, "rest");
}

/// A registered strategy: puts the candidates named in `order` first, in that order, and drops
/// the rest (an empty or repeating order is the strategy's mistake).
struct Fixed(Vec<&'static str>);

impl crate::plugin::RoutingStrategy for Fixed {
    fn order(&self, request: &crate::plugin::RouteRequest<'_>, candidates: &mut Vec<crate::plugin::Candidate>) {
        assert_eq!(
            (request.route, request.model, request.text),
            ("r", "auto", Some("hi there"))
        );
        let all = std::mem::take(candidates);
        for name in &self.0 {
            if let Some(c) = all.iter().find(|c| &*c.model == *name) {
                candidates.push(c.clone());
            }
        }
    }
}

#[test]
fn a_plugin_strategy_orders_and_an_unusable_order_keeps_the_routes() {
    let config = Config::load(
        &format!("{BASE}routes:\n  - {{ name: r, models: [auto], strategy: plugin, plugin: fixed, targets: [{{ model: a }}, {{ model: b }}, {{ model: c }}] }}\n"),
        &|_: &str| None,
    )
    .unwrap();
    let health = HealthRegistry::carry(config.models.values(), None, |_| true);
    for (order, want, applied) in [
        (vec!["c", "a"], vec!["c", "a"], true),
        (vec![], vec!["a", "b", "c"], false),
        (vec!["b", "b"], vec!["a", "b", "c"], false),
    ] {
        let mut plugins = crate::plugin::Plugins::default();
        plugins.strategies.insert("fixed".into(), Arc::new(Fixed(order)));
        assert_eq!(Router::missing_plugin(&config, &plugins), None);
        let r = Router::new(&config, &health, None, &plugins);
        let d = Req::new("auto", "hi there").decided(&r);
        assert_eq!((names(&d), d.reason), (want, Reason::Plugin { applied }));
    }
    assert_eq!(Router::missing_plugin(&config, &Default::default()), Some((0, "fixed")));
}
