#!/usr/bin/env python3
"""Writes the Grafana dashboard (charts/llm-sidecar/files/grafana-dashboard.json) from the panel
list below, so every panel's query is reviewed in one place. Run after changing it; CI checks
the committed file is current (scripts/k8s-check)."""
import json, os, sys

DS = {"type": "prometheus", "uid": "${datasource}"}
SEL = 'namespace=~"$namespace", pod=~"$pod"'

def ts(title, exprs, unit="short", x=0, y=0, w=12, h=8, stack=False):
    return {
        "type": "timeseries", "title": title, "datasource": DS,
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "fieldConfig": {"defaults": {"unit": unit, "custom": {"stacking": {"mode": "normal" if stack else "none"}}}, "overrides": []},
        "targets": [{"datasource": DS, "expr": e, "legendFormat": l, "refId": chr(65 + i)} for i, (e, l) in enumerate(exprs)],
    }

def stat(title, expr, unit="short", x=0, y=0, w=6, h=4, thresholds=None):
    return {
        "type": "stat", "title": title, "datasource": DS,
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "fieldConfig": {"defaults": {"unit": unit, "thresholds": {"mode": "absolute", "steps": thresholds or [{"color": "green", "value": None}]}}, "overrides": []},
        "targets": [{"datasource": DS, "expr": expr, "refId": "A"}],
    }

panels = [
    stat("Requests / s", f"sum(rate(llm_sidecar_requests_total{{{SEL}}}[5m]))", "reqps", 0, 0),
    stat("Error ratio (5xx)", f'sum(rate(llm_sidecar_requests_total{{{SEL}, status=~"5.."}}[5m])) / clamp_min(sum(rate(llm_sidecar_requests_total{{{SEL}}}[5m])), 1e-9)', "percentunit", 6, 0,
         [{"color": "green", "value": None}, {"color": "orange", "value": 0.01}, {"color": "red", "value": 0.05}]),
    stat("Cache hit rate", f'sum(rate(llm_sidecar_cache_lookups_total{{{SEL}, result=~"hit_.*"}}[15m])) / clamp_min(sum(rate(llm_sidecar_cache_lookups_total{{{SEL}}}[15m])), 1e-9)', "percentunit", 12, 0),
    stat("Spend / hour (USD)", f"sum(rate(llm_sidecar_cost_usd_total{{{SEL}}}[1h])) * 3600", "currencyUSD", 18, 0),
    ts("Requests by route and model", [(f"sum by (route, model) (rate(llm_sidecar_requests_total{{{SEL}}}[5m]))", "{{route}} → {{model}}")], "reqps", 0, 4, stack=True),
    ts("Latency (p50, p99) and time to first token (p50)", [
        (f"histogram_quantile(0.5, sum by (le) (rate(gen_ai_client_operation_duration_seconds_bucket{{{SEL}}}[5m])))", "p50"),
        (f"histogram_quantile(0.99, sum by (le) (rate(gen_ai_client_operation_duration_seconds_bucket{{{SEL}}}[5m])))", "p99"),
        (f"histogram_quantile(0.5, sum by (le) (rate(gen_ai_server_time_to_first_token_seconds_bucket{{{SEL}}}[5m])))", "TTFT p50"),
    ], "s", 12, 4),
    ts("Cache lookups by result", [(f"sum by (result) (rate(llm_sidecar_cache_lookups_total{{{SEL}}}[5m]))", "{{result}}")], "reqps", 0, 12, stack=True),
    ts("Cost burn by tenant (USD / hour)", [(f"sum by (tenant) (rate(llm_sidecar_cost_usd_total{{{SEL}}}[15m])) * 3600", "{{tenant}}")], "currencyUSD", 12, 12, stack=True),
    ts("Budget spent today by tenant", [(f'max by (tenant) (llm_sidecar_budget_spent_usd{{{SEL}, period="daily"}})', "{{tenant}}")], "currencyUSD", 0, 20),
    ts("Limit rejections", [(f"sum by (tenant, reason) (rate(llm_sidecar_limit_rejections_total{{{SEL}}}[5m]))", "{{tenant}} {{reason}}")], "reqps", 12, 20),
    ts("Circuit state (0 closed, 1 open, 2 half-open)", [(f"max by (provider, model) (llm_sidecar_circuit_state{{{SEL}}})", "{{provider}}/{{model}}")], "short", 0, 28),
    ts("Upstream errors and retries", [
        (f"sum by (provider, kind) (rate(llm_sidecar_upstream_errors_total{{{SEL}}}[5m]))", "{{provider}} {{kind}}"),
        (f"sum by (provider) (rate(llm_sidecar_retries_total{{{SEL}}}[5m]))", "retries {{provider}}"),
    ], "reqps", 12, 28),
    ts("Queue depth by priority", [(f"sum by (provider, priority) (llm_sidecar_queue_depth{{{SEL}}})", "{{provider}} {{priority}}")], "short", 0, 36),
    ts("Tokens / s", [(f"sum by (gen_ai_token_type) (rate(llm_sidecar_tokens_total{{{SEL}}}[5m]))", "{{gen_ai_token_type}}")], "short", 12, 36),
    ts("Config reloads", [(f"sum by (outcome) (increase(llm_sidecar_config_reloads_total{{{SEL}}}[15m]))", "{{outcome}}")], "short", 0, 44),
    ts("Redis (fleet mode) and embedder", [
        (f"min(llm_sidecar_redis_up{{{SEL}}})", "redis up (min over pods)"),
        (f"min(llm_sidecar_embedder_available{{{SEL}}})", "embedder loaded (min over pods)"),
    ], "short", 12, 44),
    ts("Trace spans by fate (OpenTelemetry export)", [(f"sum by (result) (rate(llm_sidecar_trace_spans_total{{{SEL}}}[5m]))", "{{result}}")], "short", 0, 52),
]
for i, p in enumerate(panels):
    p["id"] = i + 1

dashboard = {
    "title": "llm-sidecar",
    "uid": "llm-sidecar",
    "tags": ["llm", "llm-sidecar"],
    "timezone": "utc",
    "schemaVersion": 39,
    "version": 1,
    "refresh": "30s",
    "time": {"from": "now-6h", "to": "now"},
    "templating": {"list": [
        {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Prometheus"},
        {"name": "namespace", "type": "query", "datasource": DS, "query": "label_values(llm_sidecar_requests_total, namespace)", "includeAll": True, "multi": True, "current": {"text": "All", "value": "$__all"}, "allValue": ".*"},
        {"name": "pod", "type": "query", "datasource": DS, "query": 'label_values(llm_sidecar_requests_total{namespace=~"$namespace"}, pod)', "includeAll": True, "multi": True, "current": {"text": "All", "value": "$__all"}, "allValue": ".*"},
    ]},
    "panels": panels,
}
out = os.path.join(os.path.dirname(__file__), "..", "charts", "llm-sidecar", "files", "grafana-dashboard.json")
text = json.dumps(dashboard, indent=2) + "\n"
if len(sys.argv) > 1 and sys.argv[1] == "--check":
    sys.exit(0 if open(out).read() == text else "grafana-dashboard.json is stale: run scripts/gen-dashboard.py")
open(out, "w").write(text)
print("wrote", os.path.relpath(out))
