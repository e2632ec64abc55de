//! Reading TorchServe's `config.properties`: Java properties syntax (line
//! continuations, escapes, `:` or `=`), `$$VAR$$` interpolation, and a warning
//! for every key ortserve does not act on.

use std::collections::BTreeMap;
use std::path::Path;

use super::ConfigError;

/// Keys ortserve implements, with TorchServe's meaning and defaults.
pub(super) const IMPLEMENTED: &[&str] = &[
    "inference_address",
    "management_address",
    "metrics_address",
    "model_store",
    "load_models",
    "cpus",
    "default_workers_per_model",
    "job_queue_size",
    "max_request_size",
    "max_response_size",
    "max_model_size",
    "max_connections",
    "header_read_timeout",
    "keep_alive_timeout",
    "request_body_timeout",
    "default_response_timeout",
    "enable_envvars_config",
    "models",
    "model_snapshot",
    "enable_model_api",
    "allowed_urls",
    "grpc_inference_address",
    "grpc_inference_port",
    "grpc_management_address",
    "grpc_management_port",
    "enable_grpc_ssl",
    // Set by --grpc-address and --grpc-management-address.
    "ortserve_grpc_address",
    "ortserve_grpc_management_address",
    "disable_token_authorization",
    // ortserve's own.
    "max_request_memory",
    "model_config_dir",
    "model_config_poll_interval",
    "drain_delay",
    "shutdown_timeout",
    "configmap_selector",
    "enable_metrics_api",
    "metrics_mode",
    "metrics_on_inference_port",
    "metrics_latency_buckets",
    "metrics_batch_buckets",
    "access_log",
    "token_key_file",
    "token_open_probes",
];

/// TorchServe keys that have no effect here, grouped by why (logged with
/// the key, so the warning says what to do instead).
const TORCHSERVE_ONLY: &[(&str, &[&str])] = &[
    (
        "ortserve keeps gRPC connections open until the client or the drain closes them",
        &[
            "grpc_inference_max_connection_age_ms",
            "grpc_management_max_connection_age_ms",
            "grpc_inference_max_connection_age_grace_ms",
            "grpc_management_max_connection_age_grace_ms",
        ],
    ),
    (
        "ortserve serves plain HTTP; terminate TLS in front of it",
        &[
            "keystore",
            "keystore_pass",
            "keystore_type",
            "private_key_file",
            "certificate_file",
        ],
    ),
    (
        "ortserve runs no Python: it installs no per-model requirements.txt, and \
         its built-in handlers replace TorchServe's Python handlers and envelopes",
        &[
            "install_py_dep_per_model",
            "decode_input_request",
            "service_envelope",
            "default_service_handler",
            "blacklist_env_vars",
            "limit_max_image_pixels",
        ],
    ),
    (
        "it tunes TorchServe's Java front end or its worker processes, which ortserve does not have",
        &[
            "vmargs",
            "number_of_netty_threads",
            "netty_client_threads",
            "async_logging",
            "prefer_direct_buffer",
            "use_native_io",
            "io_ratio",
            "initial_worker_port",
            "initial_distribution_port",
            "plugins_path",
            "model_server_home",
            "number_of_gpu",
            "default_startup_timeout",
            "unregister_model_timeout",
            "version",
            "debug",
        ],
    ),
    (
        "ortserve's metrics are Prometheus histograms and gauges at /metrics (see enable_metrics_api)",
        &[
            "metrics_format",
            "metrics_config",
            "model_metrics_auto_detect",
            "disable_system_metrics",
            "metric_time_interval",
            "system_metrics_cmd",
        ],
    ),
    (
        "ortserve never downloads models and has no workflows",
        &["use_env_allowed_urls", "workflow_store"],
    ),
    (
        "ortserve's keys come from token_key_file (a mounted Secret) and change when it changes, not by expiry",
        &["token_expiration_min"],
    ),
    (
        "ortserve sends no CORS headers; put a gateway in front of it for browsers",
        &[
            "cors_allowed_origin",
            "cors_allowed_methods",
            "cors_allowed_headers",
        ],
    ),
    (
        "ortserve always serves the Open Inference Protocol on the inference port, \
         and has no sequence batching",
        &[
            "ts_open_inference_protocol",
            "ts_header_key_sequence_id",
            "ts_header_key_sequence_start",
            "ts_header_key_sequence_end",
        ],
    ),
];

/// A `config.properties` larger than this is refused unread.
const MAX_PROPERTIES_FILE: u64 = 1024 * 1024;

/// The parsed file: key → value, after interpolation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Properties {
    pub(super) values: BTreeMap<String, String>,
}

impl Properties {
    /// Reads and interpolates `path`, warning once per key ortserve ignores.
    pub fn read(path: &Path) -> Result<Properties, ConfigError> {
        let bytes =
            super::read_bounded(path, MAX_PROPERTIES_FILE).map_err(|e| ConfigError::Io {
                path: path.to_path_buf(),
                detail: e.to_string(),
            })?;
        Properties::parse(path, &bytes)
    }

    /// Parses and interpolates a file's bytes; `path` names it in messages.
    fn parse(path: &Path, bytes: &[u8]) -> Result<Properties, ConfigError> {
        // java-properties panics on a UTF-8 sequence cut off at the end of
        // the file, so the text is checked before it reads it.
        if let Err(e) = std::str::from_utf8(bytes) {
            return Err(ConfigError::Invalid(format!(
                "{}: not UTF-8 text (byte {} is not valid UTF-8); save the file as UTF-8",
                path.display(),
                e.valid_up_to()
            )));
        }
        let raw = java_properties::read(bytes).map_err(|e| {
            ConfigError::Invalid(format!(
                "{}: not a valid properties file: {e}",
                path.display()
            ))
        })?;
        let mut values = BTreeMap::new();
        for (key, value) in raw {
            let value = interpolate(&value).map_err(|var| {
                ConfigError::Invalid(format!(
                    "{}: key '{}': Invalid Environment Variable {var} (the value refers to $${var}$$, \
                     which is not set)",
                    path.display(),
                    crate::types::excerpt(&key),
                    var = crate::types::excerpt(&var),
                ))
            })?;
            warn_if_unused(path, &key);
            values.insert(key, value);
        }
        Ok(Properties { values })
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }
}

fn warn_if_unused(path: &Path, key: &str) {
    if IMPLEMENTED.contains(&key) {
        return;
    }
    let torchserve_only = TORCHSERVE_ONLY.iter().find(|(_, keys)| keys.contains(&key));
    if let Some((why, _)) = torchserve_only {
        tracing::warn!(file = %path.display(), key, why, "TorchServe setting has no effect in ortserve; ignored");
    } else {
        let known = IMPLEMENTED
            .iter()
            .chain(TORCHSERVE_ONLY.iter().flat_map(|(_, keys)| *keys));
        let did_you_mean = super::closest_key(key, known.copied());
        tracing::warn!(file = %path.display(), key = crate::types::excerpt(key).as_str(), did_you_mean, "unknown setting in config.properties; ignored");
    }
}

/// Replaces every `$$NAME$$` with the environment variable NAME. Returns the
/// name of the first variable that is not set.
fn interpolate(value: &str) -> Result<String, String> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(start) = rest.find("$$") {
        let after = &rest[start + 2..];
        let Some(end) = after.find("$$") else { break };
        let name = &after[..end];
        out.push_str(&rest[..start]);
        out.push_str(&std::env::var(name).map_err(|_| name.to_string())?);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_that_is_not_utf8_is_refused_with_a_message() {
        for bytes in [&b"a=1\n\xef"[..], b"\xff=1"] {
            let error = Properties::parse(Path::new("c.properties"), bytes)
                .map(|_| ())
                .expect_err("refused")
                .to_string();
            assert!(error.contains("c.properties: not UTF-8 text"), "{error}");
        }
    }

    #[test]
    fn interpolates_environment_variables() {
        // PATH is set in every test environment.
        let path = std::env::var("PATH").unwrap();
        assert_eq!(interpolate("a=$$PATH$$;b").unwrap(), format!("a={path};b"));
        assert_eq!(interpolate("no vars").unwrap(), "no vars");
        assert_eq!(interpolate("$$UNTERMINATED").unwrap(), "$$UNTERMINATED");
        assert_eq!(
            interpolate("$$ORTSERVE_SURELY_UNSET_VAR$$").unwrap_err(),
            "ORTSERVE_SURELY_UNSET_VAR"
        );
    }
}

/// Generated files: parsed settings or a message, never a panic.
#[cfg(test)]
mod generated {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn any_bytes_give_settings_or_a_message(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Properties::parse(Path::new("config.properties"), &bytes);
        }

        #[test]
        fn property_like_lines_give_settings_or_a_message(
            lines in proptest::collection::vec("[a-z_ ]{0,12}[=: ]?[$a-zA-Z0-9_ \\\\{}\",.]{0,20}", 0..12),
        ) {
            let text = lines.join("\n");
            if let Ok(props) = Properties::parse(Path::new("config.properties"), text.as_bytes()) {
                prop_assert!(props.values.len() <= lines.len());
            }
        }
    }
}
