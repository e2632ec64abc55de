//! One `config.properties` value made typed and bounded: addresses,
//! booleans, bucket lists, whole numbers clamped with a warning, and the
//! settings that accept only some values. Every error names the key, and
//! quotes no more of the value than [`excerpt`] does.

use std::net::{SocketAddr, ToSocketAddrs};

use super::{ConfigError, MAX_BUCKETS, Properties};
use crate::types::excerpt;

pub(super) fn parse_address(key: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    let invalid = |why: &str| ConfigError::Invalid(format!("{key}={}: {why}", excerpt(value)));
    if value.starts_with("https://") {
        return Err(invalid(
            "https is not supported; terminate TLS in front of ortserve (Ingress, service mesh) and use http://",
        ));
    }
    let host_port = value
        .strip_prefix("http://")
        .unwrap_or(value)
        .trim_end_matches('/');
    let with_port = if host_port
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        host_port.to_string()
    } else {
        format!("{host_port}:80")
    };
    with_port
        .to_socket_addrs()
        .map_err(|e| invalid(&format!("expected http://HOST:PORT ({e})")))?
        .next()
        .ok_or_else(|| invalid("the host name resolves to no address"))
}

pub(super) fn parse_bool(
    props: &Properties,
    key: &str,
    default: bool,
) -> Result<bool, ConfigError> {
    match props.get(key).map(str::trim) {
        None => Ok(default),
        Some(text) if text.eq_ignore_ascii_case("true") => Ok(true),
        Some(text) if text.eq_ignore_ascii_case("false") => Ok(false),
        Some(text) => Err(ConfigError::Invalid(format!(
            "{key}={}: expected true or false",
            excerpt(text)
        ))),
    }
}

/// `metrics_mode`: TorchServe's `log` (its default) and `legacy` leave the
/// metrics text as it is; `prometheus` adds TorchServe's frontend counters.
pub(super) fn parse_metrics_mode(props: &Properties) -> Result<bool, ConfigError> {
    match props.get("metrics_mode").map(str::trim) {
        None => Ok(false),
        Some(mode) if mode.eq_ignore_ascii_case("prometheus") => Ok(true),
        Some(mode) if mode.eq_ignore_ascii_case("log") || mode.eq_ignore_ascii_case("legacy") => {
            Ok(false)
        }
        Some(mode) => Err(ConfigError::Invalid(format!(
            "metrics_mode={}: expected log, prometheus or legacy",
            excerpt(mode)
        ))),
    }
}

/// Histogram bucket bounds: positive numbers, strictly increasing.
pub(super) fn parse_buckets(
    props: &Properties,
    key: &str,
    default: &[f64],
) -> Result<Vec<f64>, ConfigError> {
    let Some(text) = props.get(key) else {
        return Ok(default.to_vec());
    };
    let invalid = || {
        ConfigError::Invalid(format!(
            "{key}={}: expected comma-separated positive numbers in increasing order, e.g. 0.01,0.1,1",
            excerpt(text)
        ))
    };
    let bounds = text
        .split(',')
        .map(|b| b.trim().parse::<f64>().map_err(|_| invalid()))
        .collect::<Result<Vec<f64>, _>>()?;
    let increasing = bounds.windows(2).all(|w| w[0] < w[1]);
    if bounds.is_empty() || !increasing || bounds.iter().any(|b| !b.is_finite() || *b <= 0.0) {
        return Err(invalid());
    }
    if bounds.len() > MAX_BUCKETS {
        return Err(ConfigError::Invalid(format!(
            "{key}: {} buckets, over the limit of {MAX_BUCKETS}",
            bounds.len()
        )));
    }
    Ok(bounds)
}

/// A whole number setting: `default` when unset, else clamped to
/// `min..=max` with one warning naming the key.
pub(super) fn parse_bounded(
    key: &str,
    value: Option<&str>,
    default: usize,
    min: usize,
    max: usize,
) -> Result<usize, ConfigError> {
    let Some(text) = value else {
        return Ok(default);
    };
    let invalid = || {
        ConfigError::Invalid(format!(
            "{key}={}: expected a whole number ≥ 0",
            excerpt(text)
        ))
    };
    let trimmed = text.trim();
    if trimmed.is_empty() || !trimmed.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid());
    }
    // Digits beyond usize are simply "more than the maximum".
    let value = trimmed.parse::<usize>().unwrap_or(usize::MAX);
    let used = value.clamp(min, max);
    if used != value {
        let value = excerpt(trimmed);
        tracing::warn!(
            key,
            value,
            used,
            "setting out of range ({min}..={max}); clamped"
        );
    }
    Ok(used)
}
