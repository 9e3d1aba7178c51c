//! The Prometheus rules in `dashboards/alerts.yml` stay true to the daemon and to their users:
//! - `promtool check rules` accepts them and `promtool test rules dashboards/alerts.test.yml`
//!   passes (promtool is required: install Debian's `prometheus`, or point `PROMTOOL` at one);
//! - every alert has a severity, a summary that names the network and peer when its series carry
//!   them, a description, and a `runbook_url` whose anchor is a section of `docs/runbook.md`;
//! - every alert has unit tests in which it fires and in which it stays quiet;
//! - every metric a rule names is one overlayd exports, and every `reason`, `event` or
//!   `direction` it selects is a label value overlayd exports for that metric.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

mod common;

use serde_yaml_ng::Value;

/// Labels whose values the rules may only select from what overlayd exports.
const CHECKED_LABELS: &[&str] = &["reason", "event", "direction"];

const SEVERITIES: &[&str] = &["critical", "warning", "info"];

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn yaml(rel: &str) -> Value {
    let path = repo().join(rel);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{}: not YAML: {e}", path.display()))
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

fn rules() -> Vec<Value> {
    let doc = yaml("dashboards/alerts.yml");
    let groups = doc["groups"].as_sequence().expect("alerts.yml: groups");
    groups.iter().flat_map(|g| g["rules"].as_sequence().cloned().unwrap_or_default()).collect()
}

fn alerts() -> Vec<Value> {
    let a: Vec<Value> = rules().into_iter().filter(|r| r.get("alert").is_some()).collect();
    assert!(a.len() >= 10, "only {} alerts in dashboards/alerts.yml", a.len());
    a
}

fn promtool() -> PathBuf {
    let p = std::env::var_os("PROMTOOL").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("promtool"));
    match Command::new(&p).arg("--version").output() {
        Ok(o) if o.status.success() => p,
        _ => panic!(
            "promtool not found ({}): the alert rules cannot be checked without it. Install Debian's \
             `prometheus` package (`.ci/run` does), or set PROMTOOL to a promtool binary.",
            p.display()
        ),
    }
}

fn run(args: &[&str]) {
    let out = Command::new(promtool()).args(args).current_dir(repo()).output().expect("promtool runs");
    assert!(
        out.status.success(),
        "promtool {} failed:\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn promtool_checks_the_rules_and_their_unit_tests_pass() {
    run(&["check", "rules", "dashboards/alerts.yml"]);
    run(&["test", "rules", "dashboards/alerts.test.yml"]);
}

/// GitHub's anchor of a Markdown heading.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

fn runbook_anchors() -> BTreeSet<String> {
    let text = std::fs::read_to_string(repo().join("docs/runbook.md")).expect("docs/runbook.md");
    text.lines().filter_map(|l| l.strip_prefix("## ")).map(anchor).collect()
}

#[test]
fn every_alert_has_severity_summary_description_and_a_runbook_section() {
    let anchors = runbook_anchors();
    let exported = Exported::new();
    let recorded = recorded();
    let mut names = BTreeSet::new();
    for a in alerts() {
        let name = s(&a["alert"]);
        assert!(names.insert(name.to_string()), "alert {name} is defined twice");
        let sev = s(&a["labels"]["severity"]);
        assert!(SEVERITIES.contains(&sev), "{name}: severity {sev:?} is not one of {SEVERITIES:?}");
        let ann = &a["annotations"];
        let summary = s(&ann["summary"]);
        assert!(!summary.trim().is_empty(), "{name}: no summary");
        assert!(!s(&ann["description"]).trim().is_empty(), "{name}: no description");
        // the summary names where: every per-network or per-peer label the series carry
        let labels = exported.labels_of_expr(s(&a["expr"]), &recorded);
        for l in ["instance", "network", "peer"] {
            if labels.contains(l) {
                assert!(summary.contains(&format!("$labels.{l}")), "{name}: the summary does not name the {l}: {summary:?}");
            }
        }
        let url = s(&ann["runbook_url"]);
        let frag = url
            .strip_prefix("docs/runbook.md#")
            .unwrap_or_else(|| panic!("{name}: runbook_url {url:?} does not point into docs/runbook.md"));
        assert_eq!(frag, name.to_lowercase(), "{name}: the runbook section should be named after the alert");
        assert!(anchors.contains(frag), "{name}: docs/runbook.md has no section #{frag}");
    }
    for a in &anchors {
        assert!(names.iter().any(|n| n.to_lowercase() == *a), "docs/runbook.md has a section #{a} for no alert");
    }
}

#[test]
fn every_alert_has_unit_tests_where_it_fires_and_where_it_stays_quiet() {
    let doc = yaml("dashboards/alerts.test.yml");
    let files: Vec<&str> = doc["rule_files"].as_sequence().expect("rule_files").iter().map(s).collect();
    assert_eq!(files, ["alerts.yml"], "alerts.test.yml must test dashboards/alerts.yml");
    let (mut fires, mut quiet) = (BTreeSet::new(), BTreeSet::new());
    for t in doc["tests"].as_sequence().expect("tests") {
        for c in t["alert_rule_test"].as_sequence().map(Vec::as_slice).unwrap_or_default() {
            let name = s(&c["alertname"]).to_string();
            match c["exp_alerts"].as_sequence() {
                Some(e) if !e.is_empty() => fires.insert(name),
                _ => quiet.insert(name),
            };
        }
    }
    let names: BTreeSet<String> = alerts().iter().map(|a| s(&a["alert"]).to_string()).collect();
    for n in &names {
        assert!(fires.contains(n), "no unit test in which {n} fires");
        assert!(quiet.contains(n), "no unit test in which {n} stays quiet");
    }
    // a test of a misspelt alert expects silence and passes whatever the rules do
    for n in fires.union(&quiet) {
        assert!(names.contains(n), "alerts.test.yml tests {n}, which is no alert of alerts.yml");
    }
}

/// A metric selector in a PromQL expression: the metric name and its matchers
/// (label, operator, value).
#[derive(Debug)]
struct Selector {
    name: String,
    matchers: Vec<(String, String, String)>,
}

/// Every identifier that names a series (metric or recorded rule) and its matchers. Strings,
/// range and subquery brackets are skipped; function names and keywords are returned too and
/// are ignored by the callers (they neither start with `overlayd_` nor hold a colon).
fn selectors(expr: &str) -> Vec<Selector> {
    let b = expr.as_bytes();
    let ident_start = |c: u8| c.is_ascii_alphabetic() || c == b'_' || c == b':';
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b':';
    let skip_string = |mut i: usize| {
        let q = b[i];
        i += 1;
        while i < b.len() && b[i] != q {
            i += if b[i] == b'\\' { 2 } else { 1 };
        }
        i + 1
    };
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'"' | b'\'' | b'`' => i = skip_string(i),
            b'[' => i = expr[i..].find(']').map_or(b.len(), |j| i + j + 1),
            c if ident_start(c) && (i == 0 || !ident(b[i - 1])) => {
                let start = i;
                while i < b.len() && ident(b[i]) {
                    i += 1;
                }
                let name = expr[start..i].to_string();
                let mut matchers = Vec::new();
                let mut j = i;
                while j < b.len() && b[j] == b' ' {
                    j += 1;
                }
                if j < b.len() && b[j] == b'{' {
                    let end = expr[j..].find('}').map_or(b.len(), |k| j + k);
                    for m in expr[j + 1..end].split(',').filter(|m| !m.trim().is_empty()) {
                        let op_at = m.find(['=', '!']).unwrap_or_else(|| panic!("cannot read the matcher {m:?} in {expr:?}"));
                        let op_len = if m[op_at + 1..].starts_with(['=', '~']) { 2 } else { 1 };
                        let label = m[..op_at].trim().to_string();
                        let op = m[op_at..op_at + op_len].to_string();
                        let value = m[op_at + op_len..].trim().trim_matches('"').to_string();
                        matchers.push((label, op, value));
                    }
                    i = end + 1;
                }
                out.push(Selector { name, matchers });
            }
            _ => i += 1,
        }
    }
    out
}

/// Recorded series of alerts.yml: name -> the expression that records it.
fn recorded() -> BTreeMap<String, String> {
    rules().iter().filter(|r| r.get("record").is_some()).map(|r| (s(&r["record"]).to_string(), s(&r["expr"]).to_string())).collect()
}

/// What a daemon with one network and one peer exports: family -> label -> values.
struct Exported {
    families: BTreeMap<String, BTreeMap<String, BTreeSet<String>>>,
}

impl Exported {
    fn new() -> Exported {
        let text = overlayd::metrics::Metrics::new(common::one_network).expect("registry").render();
        let mut families: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            let series = l.rsplit_once(' ').map_or(l, |(s, _)| s);
            let (name, labels) = series.split_once('{').unwrap_or((series, "}"));
            let fam = families.entry(name.to_string()).or_default();
            for kv in labels.trim_end_matches('}').split("\",").filter(|kv| !kv.is_empty()) {
                if let Some((k, v)) = kv.split_once('=') {
                    fam.entry(k.to_string()).or_default().insert(v.trim_matches('"').to_string());
                }
            }
        }
        for name in overlayd::metrics::names() {
            assert!(families.contains_key(&name), "metrics::names() lists {name}, which is not exported");
        }
        Exported { families }
    }

    /// Labels of the series an expression selects: the scrape's `job` and `instance` plus the
    /// labels of every metric it names (recorded series: those of the expression they record).
    fn labels_of_expr(&self, expr: &str, recorded: &BTreeMap<String, String>) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        for sel in selectors(expr) {
            if let Some(src) = recorded.get(&sel.name) {
                out.extend(self.labels_of_expr(src, recorded));
            } else if let Some(f) = self.families.get(&sel.name) {
                out.extend(["instance".to_string(), "job".to_string()]);
                out.extend(f.keys().cloned());
            }
        }
        out
    }
}

#[test]
fn rules_name_only_metrics_and_label_values_that_overlayd_exports() {
    let exported = Exported::new();
    let recorded = recorded();
    let mut checked = 0;
    for r in rules() {
        let what = s(r.get("alert").unwrap_or(&r["record"])).to_string();
        let expr = s(&r["expr"]);
        let sels = selectors(expr);
        assert!(
            sels.iter().any(|x| x.name.starts_with("overlayd_") || x.name.contains(':') || x.name == "up"),
            "{what}: {expr:?} names no overlayd metric"
        );
        for sel in sels {
            let name = sel.name.as_str();
            // resolve a recorded series to the metrics it is computed from
            let sources: Vec<String> = if name.contains(':') {
                let src = recorded.get(name).unwrap_or_else(|| panic!("{what}: {name} is recorded by no rule of alerts.yml"));
                selectors(src).into_iter().map(|x| x.name).filter(|n| n.starts_with("overlayd_")).collect()
            } else if name.starts_with("overlayd_") {
                vec![name.to_string()]
            } else {
                continue;
            };
            for src in sources {
                let fam = exported.families.get(&src).unwrap_or_else(|| panic!("{what}: {src} is not a metric overlayd exports (in {expr:?})"));
                for (label, op, value) in &sel.matchers {
                    if !CHECKED_LABELS.contains(&label.as_str()) {
                        continue;
                    }
                    let values = fam.get(label).unwrap_or_else(|| panic!("{what}: {src} has no label {label} (in {expr:?})"));
                    assert!(op == "=" || op == "=~", "{what}: only = and =~ are checked, not {op} (in {expr:?})");
                    for v in value.split('|') {
                        assert!(values.contains(v), "{what}: {src} never has {label}={v:?} (exported: {values:?})");
                        checked += 1;
                    }
                }
            }
        }
    }
    assert!(checked >= 15, "only {checked} label values checked: is the matcher parser still reading the rules?");
}

#[test]
fn the_selector_reader_finds_metrics_and_matchers() {
    let sel = selectors(r#"rate(overlayd_drops_total{network="-", reason=~"a|b"}[1m]) > 0 and on (x) up{job="overlayd"} or a:b:c"#);
    let names: Vec<&str> = sel.iter().map(|x| x.name.as_str()).collect();
    assert_eq!(names, ["rate", "overlayd_drops_total", "and", "on", "x", "up", "or", "a:b:c"]);
    assert_eq!(sel[1].matchers, [("network".into(), "=".into(), "-".into()), ("reason".into(), "=~".into(), "a|b".into())]);
    assert_eq!(sel[5].matchers, [("job".into(), "=".into(), "overlayd".into())]);
}
