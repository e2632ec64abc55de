//! Token authorization's settings and keys: TorchServe's
//! `disable_token_authorization`, the key file in TorchServe's
//! `key_file.json` layout (`{"inference": {"key": ...}, "management":
//! {"key": ...}, "API": {"key": ...}}`), and its watch, so a rotated
//! Secret takes effect without a restart.
//!
//! When it is on: `token_key_file` names the file (a mounted Secret, in a
//! cluster); `disable_token_authorization=false` without a key file makes
//! TorchServe's own `key_file.json` in the working directory, with new
//! random keys. Unset, it is off: docs/management-api.md (token
//! authorization) says why. Keys never reach a log line, a metric or an
//! Event; errors name the file and the field only.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::watch;

use super::values::parse_bool;
use super::{ConfigError, Properties};

/// The largest key file read, and the longest key.
const MAX_FILE_BYTES: u64 = 64 * 1024;
const MAX_KEY_LENGTH: usize = 512;
/// How often the key file is read again for a rotated Secret.
const KEY_POLL: Duration = Duration::from_secs(2);
/// The file TorchServe writes its generated keys to.
const GENERATED_FILE: &str = "key_file.json";

#[derive(Debug, Clone, PartialEq)]
pub struct TokenSettings {
    /// Where the keys come from; `None`: token authorization is off.
    pub keys: Option<KeySource>,
    /// Whether probes and scrapes (`/ping`, KServe's health and readiness
    /// routes, `/metrics`) are answered without a key (`token_open_probes`).
    pub open_probes: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum KeySource {
    /// `token_key_file`.
    File(PathBuf),
    /// TorchServe's `key_file.json`, written at start with new keys.
    Generated,
}

impl KeySource {
    /// The file to read the keys from, written first if it is generated.
    pub fn file(&self) -> Result<PathBuf, ConfigError> {
        match self {
            KeySource::File(path) => Ok(path.clone()),
            KeySource::Generated => generate_key_file(),
        }
    }
}

/// The keys in force, one per scope.
#[derive(Clone, PartialEq)]
pub struct TokenKeys {
    pub inference: String,
    pub management: String,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKeys { .. }")
    }
}

pub(super) fn parse(props: &Properties) -> Result<TokenSettings, ConfigError> {
    let disable = match props.get("disable_token_authorization") {
        None => None,
        Some(_) => Some(parse_bool(props, "disable_token_authorization", true)?),
    };
    let keys = match (disable, props.get("token_key_file")) {
        (Some(true), _) => None,
        (_, Some(file)) => Some(KeySource::File(PathBuf::from(file))),
        (Some(false), None) => Some(KeySource::Generated),
        (None, None) => None,
    };
    Ok(TokenSettings {
        keys,
        open_probes: parse_bool(props, "token_open_probes", true)?,
    })
}

/// Writes TorchServe's `key_file.json` with new keys, readable by the
/// owner only, and returns its path.
fn generate_key_file() -> Result<PathBuf, ConfigError> {
    let key = || uuid::Uuid::new_v4().simple().to_string();
    let body = serde_json::json!({
        "management": {"key": key()},
        "inference": {"key": key()},
        "API": {"key": key()},
    });
    let path = PathBuf::from(GENERATED_FILE);
    let failed = |e: std::io::Error| {
        ConfigError::Invalid(format!(
            "disable_token_authorization=false: cannot write {GENERATED_FILE} in the working directory ({e}); \
             set token_key_file to a key file (a mounted Secret)"
        ))
    };
    write_owner_only(&path, body.to_string().as_bytes()).map_err(failed)?;
    Ok(std::fs::canonicalize(&path).unwrap_or(path))
}

/// Writes `body` to `path`, readable by the owner only, whatever was there.
fn write_owner_only(path: &Path, body: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        // A link in its place would have the keys written where it points.
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    // `mode` sets only a file it creates: one already there keeps its own
    // until told, and is told before the keys are in it.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    file.write_all(body)
}

#[derive(Deserialize)]
struct KeyFile {
    inference: Option<Scope>,
    management: Option<Scope>,
}

#[derive(Deserialize)]
struct Scope {
    key: String,
}

/// Reads a key file; the error names the file and field, never a key.
pub fn read_keys(path: &Path) -> Result<TokenKeys, String> {
    let where_ = path.display();
    let text = super::read_bounded(path, MAX_FILE_BYTES)
        .map_err(|e| format!("token key file {where_}: {e}"))?;
    // serde's messages quote no values for these types, only positions.
    let parsed: KeyFile = serde_json::from_slice(&text).map_err(|e| {
        format!(
            "token key file {where_}: not TorchServe's key_file.json layout (line {}, column {})",
            e.line(),
            e.column()
        )
    })?;
    let key = |scope: Option<Scope>, name: &str| -> Result<String, String> {
        let key = scope.map(|s| s.key).unwrap_or_default();
        if key.is_empty() || key.len() > MAX_KEY_LENGTH || key.chars().any(char::is_whitespace) {
            return Err(format!(
                "token key file {where_}: \"{name}\".\"key\" must be 1 to {MAX_KEY_LENGTH} characters without spaces"
            ));
        }
        Ok(key)
    };
    Ok(TokenKeys {
        inference: key(parsed.inference, "inference")?,
        management: key(parsed.management, "management")?,
    })
}

/// Reads the key file now (a bad one stops start-up), then again every few
/// seconds: a changed file's keys take effect; a bad one is logged and the
/// keys in force stay.
pub fn watch_keys(path: PathBuf) -> Result<watch::Receiver<Arc<TokenKeys>>, ConfigError> {
    let keys = read_keys(&path).map_err(ConfigError::Invalid)?;
    let (sender, receiver) = watch::channel(Arc::new(keys));
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(KEY_POLL);
        loop {
            ticks.tick().await;
            if sender.is_closed() {
                return;
            }
            match read_keys(&path) {
                Ok(keys) if **sender.borrow() != keys => {
                    tracing::info!(file = %path.display(), "token keys changed; the new keys are in force");
                    sender.send_replace(Arc::new(keys));
                }
                Ok(_) => {}
                Err(reason) => {
                    tracing::error!(reason, "token key file unreadable; the keys in force stay")
                }
            }
        }
    });
    Ok(receiver)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), text).unwrap();
        file
    }

    #[test]
    fn the_generated_key_file_is_the_owners_alone_even_over_an_old_one() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(GENERATED_FILE);
        std::fs::write(&path, "old").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_owner_only(&path, b"keys").unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(std::fs::read(&path).unwrap(), b"keys");
        // A link in its place is not followed.
        let elsewhere = dir.path().join("elsewhere");
        let link = dir.path().join("link.json");
        std::os::unix::fs::symlink(&elsewhere, &link).unwrap();
        assert!(write_owner_only(&link, b"keys").is_err());
        assert!(!elsewhere.exists());
    }

    #[test]
    fn torchserve_key_files_are_read() {
        let keys = file(
            r#"{"management": {"key": "m-key", "expiration time": "2030-01-01T00:00:00Z"},
                "inference": {"key": "i-key", "expiration time": "2030-01-01T00:00:00Z"},
                "API": {"key": "a-key"}}"#,
        );
        let read = read_keys(keys.path()).unwrap();
        assert_eq!(
            (read.inference.as_str(), read.management.as_str()),
            ("i-key", "m-key")
        );
        assert_eq!(format!("{read:?}"), "TokenKeys { .. }");
    }

    #[test]
    fn bad_key_files_name_the_field_and_never_a_key() {
        let cases = [
            (
                r#"{"inference": {"key": "secret-one"}}"#,
                r#""management"."key" must be 1 to 512"#,
            ),
            (
                r#"{"inference": {"key": "secret two"}, "management": {"key": "x"}}"#,
                r#""inference"."key" must be"#,
            ),
            (
                r#"{"inference": {"key": "secret-three""#,
                "not TorchServe's key_file.json layout (line 1",
            ),
        ];
        for (text, want) in cases {
            let error = read_keys(file(text).path()).unwrap_err();
            assert!(error.contains(want), "{error}");
            assert!(!error.contains("secret"), "a key leaked: {error}");
        }
    }
}
