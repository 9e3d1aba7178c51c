//! The Grafana dashboards in `dashboards/` stay usable: every panel queries through the
//! dashboard's Prometheus data-source variable, has queries, and only names metrics that
//! overlayd (or its process collector) really exports.

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::Value;

fn dashboards() -> Vec<(String, Value)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("dashboards");
    let mut out = Vec::new();
    for e in std::fs::read_dir(&dir).expect("dashboards/ exists") {
        let p = e.expect("readable dashboards/ entry").path();
        if p.extension().and_then(|x| x.to_str()) == Some("json") {
            let text = std::fs::read_to_string(&p).expect("readable dashboard");
            let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: not JSON: {e}", p.display()));
            out.push((p.display().to_string(), v));
        }
    }
    assert!(!out.is_empty(), "no dashboard found in {}", dir.display());
    out
}

/// Every panel, rows' nested panels included.
fn panels(d: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().map(Vec::as_slice).unwrap_or_default() {
        out.push(p);
        for q in p["panels"].as_array().map(Vec::as_slice).unwrap_or_default() {
            out.push(q);
        }
    }
    out
}

fn uses_datasource_variable(ds: &Value, var: &str) -> bool {
    let uid = ds["uid"].as_str().or(ds.as_str()).unwrap_or("");
    uid == format!("${{{var}}}") || uid == format!("${var}")
}

/// Metric names in a PromQL expression: identifiers that start like an exported family.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let b = expr.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
        if word(b[i]) && (i == 0 || !word(b[i - 1])) {
            let start = i;
            while i < b.len() && word(b[i]) {
                i += 1;
            }
            let w = &expr[start..i];
            if w.starts_with("overlayd_") || w.starts_with("process_") {
                out.insert(w.to_string());
            }
        } else {
            i += 1;
        }
    }
    out
}

#[test]
fn dashboards_query_through_the_datasource_variable_and_every_panel_has_queries() {
    for (path, d) in dashboards() {
        let vars = d["templating"]["list"].as_array().unwrap_or_else(|| panic!("{path}: no templating.list"));
        let ds = vars
            .iter()
            .find(|v| v["type"] == "datasource" && v["query"] == "prometheus")
            .unwrap_or_else(|| panic!("{path}: no Prometheus data-source variable"));
        let ds_name = ds["name"].as_str().expect("variable name");
        let net = vars.iter().find(|v| v["name"] == "network").unwrap_or_else(|| panic!("{path}: no network variable"));
        assert!(uses_datasource_variable(&net["datasource"], ds_name), "{path}: the network variable does not query ${ds_name}");

        let mut ids = BTreeSet::new();
        let mut queries = 0;
        for p in panels(&d) {
            let title = p["title"].as_str().unwrap_or("?");
            assert!(ids.insert(p["id"].as_i64().unwrap_or_else(|| panic!("{path}: panel {title:?} has no id"))), "{path}: duplicate panel id in {title:?}");
            if p["type"] == "row" {
                continue;
            }
            assert!(uses_datasource_variable(&p["datasource"], ds_name), "{path}: panel {title:?} does not use ${ds_name}");
            let targets = p["targets"].as_array().filter(|t| !t.is_empty()).unwrap_or_else(|| panic!("{path}: panel {title:?} has no targets"));
            for t in targets {
                let expr = t["expr"].as_str().unwrap_or("");
                assert!(!expr.trim().is_empty(), "{path}: panel {title:?} has an empty query");
                assert!(uses_datasource_variable(&t["datasource"], ds_name), "{path}: a query of {title:?} does not use ${ds_name}");
                queries += 1;
            }
        }
        assert!(queries >= 10, "{path}: only {queries} queries");
    }
}

#[test]
fn dashboards_name_only_metrics_that_overlayd_exports() {
    let exported = overlayd::metrics::Metrics::new(common::one_network).expect("registry").render();
    let families: BTreeSet<&str> = exported.lines().filter_map(|l| l.strip_prefix("# TYPE ")).filter_map(|l| l.split(' ').next()).collect();
    for name in overlayd::metrics::names() {
        assert!(families.contains(name.as_str()), "metrics::names() lists {name}, which is not exported");
    }
    for (path, d) in dashboards() {
        let mut used = BTreeSet::new();
        for p in panels(&d) {
            for t in p["targets"].as_array().map(Vec::as_slice).unwrap_or_default() {
                let expr = t["expr"].as_str().unwrap_or("");
                let names = metric_names(expr);
                assert!(!names.is_empty(), "{path}: {expr:?} names no overlayd metric");
                for n in &names {
                    assert!(families.contains(n.as_str()), "{path}: {n} is not an exported metric (in {expr:?})");
                }
                // per-network panels must follow the network selector
                if names.iter().any(|n| n.starts_with("overlayd_") && n != "overlayd_build_info") {
                    assert!(expr.contains("$network"), "{path}: {expr:?} ignores $network");
                }
                used.extend(names);
            }
        }
        for must in [
            "overlayd_tap_bytes_total",
            "overlayd_tunnel_bytes_total",
            "overlayd_drops_total",
            "overlayd_flooded_frames_total",
            "overlayd_fdb_entries",
            "overlayd_fdb_events_total",
            "overlayd_peer_last_seen_seconds",
            "overlayd_peer_up",
            "overlayd_cluster_connected",
            "overlayd_cluster_members",
            "overlayd_cluster_events_total",
            "overlayd_cluster_resyncs_total",
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
        ] {
            assert!(used.contains(must), "{path}: no panel shows {must}");
        }
    }
}
