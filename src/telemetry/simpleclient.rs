//! Prometheus text lines as TorchServe writes them, through the Java
//! simpleclient's format: a comma after the last label and a decimal point
//! in every value, e.g. `Requests2XX{Level="Host",Hostname="pod-1",} 12.0`.
//!
//! Prometheus parses these like its own lines; the `prometheus` crate cannot
//! write them, and TorchServe's own checks match the exact shape with
//! regular expressions, so `metrics_mode=prometheus` writes TorchServe's
//! families here. Only counters are written: every TorchServe family served
//! here counts something.

use std::fmt::Write;

/// `# HELP` and `# TYPE` for a counter, with TorchServe's help text.
pub(super) fn counter_header(out: &mut String, name: &str, unit: &str) {
    let _ = writeln!(
        out,
        "# HELP {name} Torchserve prometheus counter metric with unit: {unit}\n# TYPE {name} counter"
    );
}

/// One sample: labels in the given order, each followed by a comma, and
/// the value as a decimal (counters are whole numbers, so `.0`).
pub(super) fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: u64) {
    out.push_str(name);
    out.push('{');
    for (key, label) in labels {
        out.push_str(key);
        out.push_str("=\"");
        escape(out, label);
        out.push_str("\",");
    }
    let _ = writeln!(out, "}} {value}.0");
}

/// The text format's label-value escapes: backslash, quote, newline.
fn escape(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// TorchServe's Postman check, `.*Requests2XX\{Level="Host",Hostname=".*",\} \d+\.\d+.*`,
    /// spelled out without a regex engine.
    fn matches_postman_check(text: &str) -> bool {
        text.lines().any(|line| {
            let Some(rest) = line
                .find(r#"Requests2XX{Level="Host",Hostname=""#)
                .map(|at| &line[at + r#"Requests2XX{Level="Host",Hostname=""#.len()..])
            else {
                return false;
            };
            let Some((_, value)) = rest.rsplit_once("\",} ") else {
                return false;
            };
            value.split_once('.').is_some_and(|(whole, fraction)| {
                !whole.is_empty()
                    && whole.bytes().all(|b| b.is_ascii_digit())
                    && fraction.bytes().next().is_some_and(|b| b.is_ascii_digit())
            })
        })
    }

    #[test]
    fn writes_torchserve_lines_with_a_trailing_comma_and_a_decimal_value() {
        let mut out = String::new();
        counter_header(&mut out, "Requests2XX", "Count");
        sample(
            &mut out,
            "Requests2XX",
            &[("Level", "Host"), ("Hostname", "pod-1")],
            12,
        );
        assert_eq!(
            out,
            "# HELP Requests2XX Torchserve prometheus counter metric with unit: Count\n\
             # TYPE Requests2XX counter\n\
             Requests2XX{Level=\"Host\",Hostname=\"pod-1\",} 12.0\n"
        );
        assert!(matches_postman_check(&out), "{out}");
    }

    #[test]
    fn escapes_label_values() {
        let mut out = String::new();
        sample(&mut out, "m", &[("a", "x\"y\\z\nw")], 0);
        assert_eq!(out, "m{a=\"x\\\"y\\\\z\\nw\",} 0.0\n");
    }

    #[test]
    fn the_postman_check_rejects_prometheus_crate_lines() {
        assert!(!matches_postman_check(
            r#"Requests2XX{Hostname="h",Level="Host"} 12"#
        ));
        assert!(!matches_postman_check(
            r#"Requests2XX{Level="Host",Hostname="h",} 12"#
        ));
    }
}
