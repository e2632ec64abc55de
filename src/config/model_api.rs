//! What the control plane may change: TorchServe's `enable_model_api`
//! (register and unregister through the API) and `allowed_urls` (which local
//! paths outside the model store a registration may name).
//!
//! Unlike TorchServe, whose default `allowed_urls` admits every file and
//! every web address, ortserve admits no path outside the model store until
//! `allowed_urls` names some, and never any web address: it never downloads.

use std::path::Path;

use regex::Regex;

use super::values::parse_bool;
use super::{ConfigError, Properties};

/// The most `allowed_urls` patterns, and the longest one.
const MAX_PATTERNS: usize = 64;
const MAX_PATTERN_LENGTH: usize = 1024;

#[derive(Debug, Clone, PartialEq)]
pub struct ModelApiSettings {
    /// `enable_model_api` / `--enable-model-api`.
    pub enabled: bool,
    pub allowed_urls: AllowedUrls,
}

/// `allowed_urls`: comma-separated regular expressions, each matched against
/// the whole of `file://<absolute path>` (TorchServe's form) or the bare path.
#[derive(Debug, Clone, Default)]
pub struct AllowedUrls(Vec<Regex>);

impl PartialEq for AllowedUrls {
    fn eq(&self, other: &AllowedUrls) -> bool {
        let sources = |urls: &AllowedUrls| -> Vec<String> {
            urls.0.iter().map(|p| p.as_str().to_string()).collect()
        };
        sources(self) == sources(other)
    }
}

impl AllowedUrls {
    /// Whether a normalised absolute path may be registered.
    pub fn permits(&self, path: &Path) -> bool {
        let bare = path.to_string_lossy();
        let url = format!("file://{bare}");
        self.0
            .iter()
            .any(|pattern| whole_match(pattern, &url) || whole_match(pattern, &bare))
    }

    /// Whether any path outside the model store is allowed at all.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Java's `String.matches`: the pattern must match the whole text.
fn whole_match(pattern: &Regex, text: &str) -> bool {
    pattern
        .find(text)
        .is_some_and(|m| m.start() == 0 && m.end() == text.len())
}

pub(super) fn parse(props: &Properties) -> Result<ModelApiSettings, ConfigError> {
    Ok(ModelApiSettings {
        enabled: parse_bool(props, "enable_model_api", false)?,
        allowed_urls: parse_allowed_urls(props.get("allowed_urls"))?,
    })
}

fn parse_allowed_urls(text: Option<&str>) -> Result<AllowedUrls, ConfigError> {
    let Some(text) = text.map(str::trim).filter(|t| !t.is_empty()) else {
        return Ok(AllowedUrls::default());
    };
    let invalid = |why: String| ConfigError::Invalid(format!("allowed_urls: {why}"));
    let patterns: Vec<&str> = text.split(',').map(str::trim).collect();
    if patterns.len() > MAX_PATTERNS {
        return Err(invalid(format!(
            "{} patterns; at most {MAX_PATTERNS}",
            patterns.len()
        )));
    }
    let compiled = patterns
        .into_iter()
        .map(|pattern| {
            if pattern.len() > MAX_PATTERN_LENGTH {
                return Err(invalid(format!(
                    "a pattern of {} characters; at most {MAX_PATTERN_LENGTH}",
                    pattern.len()
                )));
            }
            Regex::new(pattern).map_err(|e| {
                invalid(format!(
                    "'{}' is not a regular expression: {e}",
                    crate::types::excerpt(pattern)
                ))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(AllowedUrls(compiled))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn urls(text: &str) -> AllowedUrls {
        parse_allowed_urls(Some(text)).unwrap()
    }

    #[test]
    fn patterns_match_the_whole_file_url_or_path() {
        let allowed = urls(r"file:///models/.*\.mar, /opt/onnx/[a-z]+\.onnx");
        assert!(allowed.permits(Path::new("/models/squeezenet.mar")));
        assert!(allowed.permits(Path::new("/opt/onnx/resnet.onnx")));
        // A prefix or a part is not a match: Java's String.matches.
        assert!(!allowed.permits(Path::new("/models/squeezenet.mar.bak")));
        assert!(!allowed.permits(Path::new("/srv/models/squeezenet.mar")));
        assert!(!allowed.permits(Path::new("/opt/onnx/resnet50.onnx")));
    }

    #[test]
    fn nothing_is_allowed_by_default() {
        assert!(parse_allowed_urls(None).unwrap().is_empty());
        assert!(!AllowedUrls::default().permits(Path::new("/models/a.mar")));
    }

    #[test]
    fn bad_patterns_are_refused_naming_the_key() {
        let error = parse_allowed_urls(Some("file:///models/(")).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("allowed_urls: 'file:///models/(' is not a regular expression"),
            "{error}"
        );
        let many = vec!["a"; MAX_PATTERNS + 1].join(",");
        let error = parse_allowed_urls(Some(&many)).unwrap_err();
        assert!(
            error.to_string().contains("65 patterns; at most 64"),
            "{error}"
        );
    }
}
