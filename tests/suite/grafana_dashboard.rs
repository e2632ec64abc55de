//! The Grafana dashboard the chart ships (`charts/ortserve/dashboards/ortserve.json`).
//! No Grafana runs here, so it is checked two ways instead:
//!
//! * its structure, as Grafana's dashboard schema (version 39) requires: title,
//!   uid, template variables, panels with unique ids, known types, grid
//!   positions inside the 24-column grid that do not overlap, the data source
//!   variable on every panel and query, and targets with a refId and an expr;
//! * every PromQL query (panels, annotations, variables) against a real
//!   server's `/metrics` after traffic that makes every family appear: each
//!   metric it names is exported, with each label it selects, groups by or
//!   puts in a legend; and every ortserve family is charted somewhere.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use crate::common::*;

/// Labels Prometheus adds to every series it scrapes; the server never writes them.
const TARGET_LABELS: [&str; 2] = ["job", "instance"];
/// Grafana's own variables a query may use.
const GRAFANA_VARIABLES: [&str; 3] = ["__rate_interval", "__interval", "__range"];
/// Panel types Grafana ships (the dashboard uses a few of them).
const PANEL_TYPES: [&str; 12] = [
    "row",
    "timeseries",
    "stat",
    "gauge",
    "bargauge",
    "barchart",
    "table",
    "heatmap",
    "histogram",
    "state-timeline",
    "status-history",
    "text",
];
/// Families exported but left off the dashboard on purpose: TorchServe's
/// cumulative counters, which ortserve's histograms chart better.
const NOT_CHARTED: [&str; 3] = [
    "ts_inference_requests_total",
    "ts_inference_latency_microseconds",
    "ts_queue_latency_microseconds",
];

fn dashboard() -> Value {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("charts/ortserve/dashboards/ortserve.json");
    let text = std::fs::read_to_string(&path).expect("the dashboard JSON");
    serde_json::from_str(&text).expect("the dashboard is JSON")
}

fn list<'a>(value: &'a Value, what: &str) -> &'a Vec<Value> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("{what} is not a list"))
}

/// How every panel and query names its data source: the `datasource` variable.
fn datasource_variable() -> Value {
    json!({"type": "prometheus", "uid": "${datasource}"})
}

#[test]
fn the_dashboard_has_the_structure_grafana_loads() {
    let d = dashboard();
    assert!(d["title"].as_str().is_some_and(|t| !t.is_empty()));
    let uid = d["uid"].as_str().unwrap_or_default();
    let uid_chars = uid
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    assert!(
        !uid.is_empty() && uid.len() <= 40 && uid_chars,
        "uid {uid:?}"
    );
    // 36 made data sources references ({type, uid}) rather than names.
    assert!(d["schemaVersion"].as_u64().is_some_and(|v| v >= 36));
    // No id: Grafana assigns one when the sidecar or an import adds it.
    assert!(d["id"].is_null());

    let variables = variables(&d);
    let panels = list(&d["panels"], "panels");
    let mut ids = BTreeSet::new();
    for panel in panels {
        let id = panel["id"].as_u64();
        assert!(id.is_some_and(|id| ids.insert(id)), "id of {panel}");
        well_formed(panel);
    }
    no_overlaps(panels);
    for annotation in list(&d["annotations"]["list"], "annotations") {
        if annotation["builtIn"] != 1 {
            assert_eq!(
                annotation["datasource"],
                datasource_variable(),
                "{annotation}"
            );
            let target = &annotation["target"];
            assert!(
                target["refId"].is_string() && target["expr"].is_string(),
                "{annotation}"
            );
        }
    }
    // Every `$name` in a query is a variable the dashboard defines, or Grafana's.
    for query in queries(&d) {
        for used in query.expr.split('$').skip(1) {
            let name: String = used.chars().take_while(|c| is_word(*c)).collect();
            let known = variables.contains(&name) || GRAFANA_VARIABLES.contains(&name.as_str());
            assert!(known, "{}: ${name} is not defined", query.place);
        }
    }
}

/// The template variables' names, after checking them: the data source
/// variable first (Prometheus), then queries through it.
fn variables(d: &Value) -> Vec<String> {
    let variables = list(&d["templating"]["list"], "templating.list");
    let source = &variables[0];
    assert_eq!(
        [&source["name"], &source["type"], &source["query"]],
        [
            &json!("datasource"),
            &json!("datasource"),
            &json!("prometheus")
        ]
    );
    for variable in &variables[1..] {
        assert_eq!(variable["type"], "query", "{variable}");
        assert_eq!(variable["datasource"], datasource_variable(), "{variable}");
    }
    let names: BTreeSet<String> = variables
        .iter()
        .map(|v| v["name"].as_str().expect("a variable's name").to_string())
        .collect();
    assert_eq!(names.len(), variables.len(), "two variables share a name");
    names.into_iter().collect()
}

/// A panel of a known type inside the grid; a row holds nothing (its panels
/// follow it at the top level); any other panel reads the data source
/// variable through targets that each have a refId and an expr.
fn well_formed(panel: &Value) {
    let title = panel["title"].as_str().expect("every panel has a title");
    let kind = panel["type"].as_str().unwrap_or_default();
    assert!(PANEL_TYPES.contains(&kind), "{title}: type {kind:?}");
    grid_position(panel);
    if kind == "row" {
        assert_eq!(panel["collapsed"], false, "{title}");
        assert_eq!(panel["panels"], json!([]), "{title}");
        return;
    }
    assert_eq!(panel["datasource"], datasource_variable(), "{title}");
    let targets = list(&panel["targets"], title);
    assert!(!targets.is_empty(), "{title}: no query");
    let mut ref_ids = BTreeSet::new();
    for target in targets {
        let ref_id = target["refId"].as_str().unwrap_or_default();
        assert!(
            !ref_id.is_empty() && ref_ids.insert(ref_id),
            "{title}: refId {ref_id:?}"
        );
        assert!(
            target["expr"].as_str().is_some_and(|e| !e.is_empty()),
            "{title}"
        );
        assert_eq!(target["datasource"], datasource_variable(), "{title}");
    }
}

/// x, y, w, h are whole numbers inside the 24-column grid.
fn grid_position(panel: &Value) -> [u64; 4] {
    let grid = &panel["gridPos"];
    let [x, y, w, h] = ["x", "y", "w", "h"].map(|k| {
        grid[k]
            .as_u64()
            .unwrap_or_else(|| panic!("{}: gridPos.{k} in {grid}", panel["title"]))
    });
    assert!(
        w >= 1 && h >= 1 && x + w <= 24,
        "{}: {grid}",
        panel["title"]
    );
    [x, y, w, h]
}

/// Grafana pushes overlapping panels down, so an overlap is a layout mistake.
fn no_overlaps(panels: &[Value]) {
    let boxes: Vec<_> = panels
        .iter()
        .map(|p| (p["title"].clone(), grid_position(p)))
        .collect();
    for (i, (a, [ax, ay, aw, ah])) in boxes.iter().enumerate() {
        for (b, [bx, by, bw, bh]) in &boxes[i + 1..] {
            let apart = ax + aw <= *bx || bx + bw <= *ax || ay + ah <= *by || by + bh <= *ay;
            assert!(apart, "{a} overlaps {b}");
        }
    }
}

/// A PromQL query of the dashboard, where it is, and the labels its legend
/// (or a variable) reads from the result.
struct Query {
    place: String,
    expr: String,
    result_labels: Vec<String>,
}

/// Every query: panel targets, annotations, and the variables' `label_values`.
fn queries(d: &Value) -> Vec<Query> {
    let mut out = Vec::new();
    for panel in list(&d["panels"], "panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            out.push(Query {
                place: format!("panel {} {}", panel["title"], target["refId"]),
                expr: target["expr"].as_str().unwrap_or_default().to_string(),
                result_labels: legend_labels(target["legendFormat"].as_str()),
            });
        }
    }
    // Prometheus annotations keep their query in `target`, as the plugin saves them.
    for annotation in list(&d["annotations"]["list"], "annotations") {
        if let Some(expr) = annotation["target"]["expr"].as_str() {
            let tags = annotation["tagKeys"].as_str().unwrap_or_default();
            let mut result_labels = legend_labels(annotation["titleFormat"].as_str());
            result_labels.extend(tags.split(',').filter(|t| !t.is_empty()).map(String::from));
            out.push(Query {
                place: format!("annotation {}", annotation["name"]),
                expr: expr.to_string(),
                result_labels,
            });
        }
    }
    let variables = list(&d["templating"]["list"], "templating.list");
    for variable in variables.iter().filter(|v| v["type"] == "query") {
        let query = variable["query"]["query"].as_str().unwrap_or_default();
        // label_values(SELECTOR, LABEL): the selector is PromQL, the label is read.
        let inner = query
            .strip_prefix("label_values(")
            .and_then(|q| q.strip_suffix(')'))
            .unwrap_or_else(|| panic!("variable query {query:?} is not label_values"));
        let (selector, label) = inner
            .rsplit_once(',')
            .expect("label_values(SELECTOR, LABEL)");
        out.push(Query {
            place: format!("variable {}", variable["name"]),
            expr: selector.to_string(),
            result_labels: vec![label.trim().to_string()],
        });
    }
    out
}

/// The `{{label}}`s of a legend or title format.
fn legend_labels(format: Option<&str>) -> Vec<String> {
    let format = format.unwrap_or_default();
    format
        .split("{{")
        .skip(1)
        .filter_map(|rest| rest.split_once("}}"))
        .map(|(label, _)| label.trim().to_string())
        .collect()
}

fn is_word(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// The metric names and label names a PromQL expression uses.
#[derive(Debug, Default, PartialEq)]
struct References {
    metrics: BTreeSet<String>,
    labels: BTreeSet<String>,
}

/// Enough of PromQL for dashboards: selectors `{...}`, range brackets,
/// strings, Grafana's `$variables`, numbers, function calls and aggregations
/// (a word followed by `(`), and `by`/`without`/`on`/`ignoring` label lists.
/// Any other word is a metric name.
fn references(expr: &str) -> References {
    let mut refs = References::default();
    let mut rest = expr;
    let mut label_list_next = false;
    while let Some(c) = rest.chars().next() {
        rest = match c {
            '{' => {
                let (inside, after) = until(&rest[1..], '}');
                refs.labels.extend(matcher_labels(inside));
                after
            }
            '(' if label_list_next => {
                let (inside, after) = until(&rest[1..], ')');
                let labels = inside.split(',').map(str::trim).filter(|l| !l.is_empty());
                refs.labels.extend(labels.map(String::from));
                label_list_next = false;
                after
            }
            '[' => until(&rest[1..], ']').1,
            '"' => after_string(rest),
            // A variable, or a number (0.99, 1e3): never a name.
            c if c == '$' || c.is_ascii_digit() => {
                rest[1..].trim_start_matches(|c: char| is_word(c) || c == '.')
            }
            c if is_word(c) => {
                let end = rest.find(|c: char| !is_word(c)).unwrap_or(rest.len());
                let (word, after) = rest.split_at(end);
                let called = is_call(after);
                match word {
                    "by" | "without" | "on" | "ignoring" | "group_left" | "group_right" => {
                        label_list_next = called;
                    }
                    "and" | "or" | "unless" | "bool" | "offset" => {}
                    _ if called => {}
                    _ => {
                        refs.metrics.insert(word.to_string());
                    }
                }
                after
            }
            c => &rest[c.len_utf8()..],
        };
    }
    refs
}

/// Whether the word before `after` is a function or an aggregation: its
/// arguments follow, or its grouping does (`sum by (model) (...)`).
fn is_call(after: &str) -> bool {
    let after = after.trim_start();
    let next_word = after
        .split(|c: char| !is_word(c))
        .next()
        .unwrap_or_default();
    after.starts_with('(') || next_word == "by" || next_word == "without"
}

/// Splits at the first `close` outside a string: (before it, after it).
fn until(text: &str, close: char) -> (&str, &str) {
    let mut rest = text;
    loop {
        let at = rest
            .find([close, '"'])
            .unwrap_or_else(|| panic!("no {close:?} closes {text:?}"));
        if rest[at..].starts_with(close) {
            let end = text.len() - rest.len() + at;
            return (&text[..end], &text[end + 1..]);
        }
        rest = after_string(&rest[at..]);
    }
}

/// The text after the string literal `text` starts with (backslash escapes honoured).
fn after_string(text: &str) -> &str {
    let mut escaped = false;
    for (i, c) in text.char_indices().skip(1) {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => return &text[i + 1..],
            _ => {}
        }
    }
    panic!("unterminated string in {text:?}")
}

/// The label names of `name="v", other=~"w"` (a selector's matchers, or a
/// sample's labels in the exposition format).
fn matcher_labels(mut inside: &str) -> Vec<String> {
    let mut labels = Vec::new();
    loop {
        inside = inside.trim_start_matches([' ', ',']);
        let Some(op) = inside.find(['=', '!']) else {
            return labels;
        };
        labels.push(inside[..op].trim().to_string());
        let value = inside.find('"').expect("a quoted label value");
        inside = after_string(&inside[value..]);
    }
}

/// What `/metrics` exports: each sample name with the label names it carries,
/// and each family's name and type.
struct Exported {
    samples: BTreeMap<String, BTreeSet<String>>,
    families: BTreeMap<String, String>,
}

fn exported(text: &str) -> Exported {
    let mut out = Exported {
        samples: BTreeMap::new(),
        families: BTreeMap::new(),
    };
    for line in text.lines() {
        if let Some(family) = line.strip_prefix("# TYPE ") {
            let (name, kind) = family.split_once(' ').expect("# TYPE NAME KIND");
            out.families.insert(name.to_string(), kind.to_string());
        } else if !line.starts_with('#') && !line.is_empty() {
            let end = line.find(['{', ' ']).expect("a sample line");
            let labels = out.samples.entry(line[..end].to_string()).or_default();
            if line[end..].starts_with('{') {
                labels.extend(matcher_labels(until(&line[end + 1..], '}').0));
            }
        }
    }
    out
}

/// What a query names that the scrape lacks: metrics, or labels on a metric.
fn missing(query: &Query, exported: &Exported) -> Vec<String> {
    let refs = references(&query.expr);
    if refs.metrics.is_empty() {
        return vec![format!("{}: names no metric: {}", query.place, query.expr)];
    }
    let labels = refs.labels.iter().chain(&query.result_labels);
    let labels: Vec<&String> = labels
        .filter(|l| !TARGET_LABELS.contains(&l.as_str()))
        .collect();
    let mut problems = Vec::new();
    for metric in &refs.metrics {
        let Some(has) = exported.samples.get(metric) else {
            problems.push(format!("{}: {metric} is not exported", query.place));
            continue;
        };
        for label in labels.iter().filter(|l| !has.contains(**l)) {
            problems.push(format!("{}: {metric} has no label {label}", query.place));
        }
    }
    problems
}

/// The families no query reads (a histogram is read through its `_bucket`,
/// `_sum` or `_count` series).
fn not_charted<'a>(exported: &'a Exported, queries: &[Query]) -> Vec<&'a str> {
    let read: BTreeSet<String> = queries
        .iter()
        .flat_map(|q| references(&q.expr).metrics)
        .collect();
    let charted = |family: &str, kind: &str| {
        let suffixes: &[&str] = match kind {
            "histogram" => &["_bucket", "_sum", "_count"],
            _ => &[""],
        };
        suffixes
            .iter()
            .any(|s| read.contains(&format!("{family}{s}")))
    };
    let families = exported.families.iter();
    families
        .filter(|(family, kind)| !charted(family, kind) && !NOT_CHARTED.contains(&family.as_str()))
        .map(|(family, _)| family.as_str())
        .collect()
}

#[test]
fn references_finds_metrics_and_labels_but_not_functions_or_variables() {
    let expr = r#"histogram_quantile(0.99, sum by (model, le) (rate(a_bucket{job=~"$job", s!="{x,y}"}[$__rate_interval]))) / on (model) b > 0 or max(c) without (version)"#;
    let refs = references(expr);
    let set = |names: &[&str]| names.iter().map(|n| n.to_string()).collect();
    assert_eq!(refs.metrics, set(&["a_bucket", "b", "c"]));
    assert_eq!(refs.labels, set(&["job", "le", "model", "s", "version"]));
}

const LINEAR: &str = "source: linear\nminWorkers: 1\nmaxWorkers: 1\nbatchSize: 4\nmaxBatchDelay: 5\njobQueueSize: 4\n";
const TINY_LM: &str = "source: tiny_lm\nortserve:\n  handler: text_generation\n";
const ROW: &str = "[[1, 2, 3, 4]]";

#[tokio::test]
async fn every_query_reads_metrics_and_labels_the_server_exports() {
    let store = Store::new();
    store
        .dir_model("linear", "linear", None)
        .file("broken/model.onnx", b"not an ONNX graph");
    for entry in std::fs::read_dir(models_dir().join("tiny_lm")).unwrap() {
        let path = entry.unwrap().path();
        let file = path.file_name().unwrap().to_string_lossy();
        store.file(&format!("tiny_lm/{file}"), &std::fs::read(&path).unwrap());
    }
    let mut volume = ConfigMapVolume::new(&[("linear.yaml", LINEAR), ("tiny_lm.yaml", TINY_LM)]);
    let server = Server::healthy(Launch::declared(&store, &volume)).await;
    traffic(&server).await;
    // A reload that declares a model whose graph cannot load: counted as an
    // applied reload, and as a load failure.
    volume.update(&[
        ("linear.yaml", LINEAR),
        ("tiny_lm.yaml", TINY_LM),
        ("broken.yaml", "source: broken\n"),
    ]);
    eventually(
        Duration::from_secs(20),
        "the load failure is counted",
        || async {
            let m = server.metrics().await;
            m.keys()
                .any(|k| k.starts_with("ortserve_model_load_failures_total{"))
        },
    )
    .await;

    let response = server.client.get(server.metrics_url()).send().await;
    let exported = exported(&response.unwrap().text().await.unwrap());
    let queries = queries(&dashboard());
    let problems: Vec<String> = queries.iter().flat_map(|q| missing(q, &exported)).collect();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    let uncharted = not_charted(&exported, &queries);
    assert!(
        uncharted.is_empty(),
        "exported but on no panel (chart them, or list them in NOT_CHARTED): {uncharted:?}"
    );
}

/// Requests that make the families recorded per request appear: durations
/// of 2xx and 4xx answers over two protocols, pre- and post-processing,
/// queue waits, compute and batch sizes, two rejections, and a streamed
/// generation (time to first token, between tokens, token counts). (The state
/// gauges, rejections and worker restarts are there at 0 from the load on.)
async fn traffic(server: &Server) {
    let predict = |body: &'static str| async move {
        let response = server.post_json("/predictions/linear", body).await;
        response.status().as_u16()
    };
    let answers = futures_util::future::join_all((0..4).map(|_| predict(ROW))).await;
    assert_eq!(answers, [200; 4]);
    let v2 = r#"{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}]}"#;
    let response = server.post_json("/v2/models/linear/infer", v2).await;
    assert_eq!(response.status(), 200);
    // Rejected: a row of the wrong width, and more rows than jobQueueSize.
    assert_eq!(predict("[[1, 2]]").await, 400);
    assert_eq!(
        predict("[[1,2,3,4],[1,2,3,4],[1,2,3,4],[1,2,3,4],[1,2,3,4]]").await,
        413
    );
    let generation = r#"{"prompt": "Hello", "stream": true}"#;
    let response = server.post_json("/predictions/tiny_lm", generation).await;
    assert_eq!(response.status(), 200);
    assert!(response.text().await.unwrap().starts_with(", w"));
}
