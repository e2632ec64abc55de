//! A request's explanation parameters, read from JSON (KServe v1 and v2
//! `parameters`) or from a URL query (TorchServe's `/explanations`), each
//! checked and named in its error. They override the model's defaults.

use std::collections::HashMap;

use serde_json::Value;

use crate::config::ExplainMethod;
use crate::types::{Error, excerpt};

/// A request's explanation choices, each overriding the model's defaults.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExplainParams {
    pub method: Option<ExplainMethod>,
    pub target: Option<usize>,
    pub baseline: Option<f64>,
    pub window: Option<Vec<usize>>,
    pub stride: Option<Vec<usize>>,
    pub feature_mask: Option<Vec<usize>>,
    pub samples: Option<usize>,
    pub seed: Option<u64>,
}

const PARAMETERS: &str = "method, target, baseline, window, stride, featureMask, samples, seed";

impl ExplainParams {
    /// Reads parameters from JSON values (v1 `parameters`, v2 request
    /// parameters). With `strict`, unknown keys are refused; otherwise they
    /// are left for others (v2 has its own parameters).
    pub fn from_json<'a>(
        pairs: impl IntoIterator<Item = (&'a str, &'a Value)>,
        strict: bool,
    ) -> Result<ExplainParams, Error> {
        let mut params = ExplainParams::default();
        for (key, value) in pairs {
            let bad = |expected: &str| {
                Error::BadInput(format!(
                    "explanation parameter '{key}' must be {expected}, got {}",
                    excerpt(&value.to_string())
                ))
            };
            let whole = |v: &Value| v.as_u64().and_then(|n| usize::try_from(n).ok());
            let list = || -> Result<Vec<usize>, Error> {
                value
                    .as_array()
                    .and_then(|items| items.iter().map(whole).collect::<Option<Vec<_>>>())
                    .ok_or_else(|| bad("a list of whole numbers"))
            };
            match key {
                "method" => {
                    let name = value.as_str().ok_or_else(|| bad("a string"))?;
                    params.method = Some(parse_method(name)?);
                }
                "target" => {
                    params.target = Some(whole(value).ok_or_else(|| bad("a whole number"))?)
                }
                "baseline" => {
                    params.baseline = Some(value.as_f64().ok_or_else(|| bad("a number"))?)
                }
                "window" => params.window = Some(list()?),
                "stride" => params.stride = Some(list()?),
                "featureMask" => params.feature_mask = Some(list()?),
                "samples" => {
                    params.samples = Some(whole(value).ok_or_else(|| bad("a whole number"))?)
                }
                "seed" => params.seed = Some(value.as_u64().ok_or_else(|| bad("a whole number"))?),
                _ if strict => {
                    return Err(Error::BadInput(format!(
                        "unknown explanation parameter '{}'; use {PARAMETERS}",
                        excerpt(key)
                    )));
                }
                _ => {}
            }
        }
        Ok(params)
    }

    /// Reads URL query parameters (`?target=3&window=1,4,4`).
    pub fn from_query(query: &HashMap<String, String>) -> Result<ExplainParams, Error> {
        let values: Vec<(&str, Value)> = query
            .iter()
            .map(|(key, text)| {
                let value = if key == "method" {
                    Value::String(text.clone())
                } else if text.contains(',')
                    || matches!(key.as_str(), "window" | "stride" | "featureMask")
                {
                    serde_json::from_str(&format!("[{text}]"))
                        .unwrap_or(Value::String(text.clone()))
                } else {
                    serde_json::from_str(text).unwrap_or(Value::String(text.clone()))
                };
                (key.as_str(), value)
            })
            .collect();
        ExplainParams::from_json(values.iter().map(|(k, v)| (*k, v)), true)
    }
}

fn parse_method(name: &str) -> Result<ExplainMethod, Error> {
    ExplainMethod::parse(name).ok_or_else(|| {
        Error::BadInput(format!(
            "unknown explanation method '{}'; use one of {}",
            excerpt(name),
            ExplainMethod::ALL
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters_read_lists_numbers_and_method_names() {
        let query: HashMap<String, String> = [
            ("method", "occlusion"),
            ("window", "1,4,4"),
            ("featureMask", "0"),
            ("target", "3"),
            ("baseline", "-0.5"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let params = ExplainParams::from_query(&query).unwrap();
        assert_eq!(
            params,
            ExplainParams {
                method: Some(ExplainMethod::Occlusion),
                window: Some(vec![1, 4, 4]),
                feature_mask: Some(vec![0]),
                target: Some(3),
                baseline: Some(-0.5),
                ..ExplainParams::default()
            }
        );
        let bad: HashMap<String, String> = [("window".to_string(), "1,x".to_string())].into();
        let message = ExplainParams::from_query(&bad).unwrap_err().to_string();
        assert!(
            message.contains("'window' must be a list of whole numbers"),
            "{message}"
        );
    }

    #[test]
    fn non_strict_parameters_leave_other_keys_alone() {
        let values = [
            ("binary_data_output", Value::Bool(true)),
            ("samples", 5.into()),
        ];
        let params = ExplainParams::from_json(values.iter().map(|(k, v)| (*k, v)), false).unwrap();
        assert_eq!(params.samples, Some(5));
        let strict = ExplainParams::from_json(values.iter().map(|(k, v)| (*k, v)), true);
        assert!(
            strict
                .unwrap_err()
                .to_string()
                .contains("'binary_data_output'")
        );
    }
}
