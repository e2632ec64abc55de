//! The model configuration directory (a mounted ConfigMap): each `*.yaml`,
//! `*.yml` or `*.json` file in it declares one model version — where the model
//! is, and its `model-config.yaml` settings. Reading the directory is pure: a
//! snapshot of declarations, each file either accepted or refused whole with
//! the reason. Noticing changes is [`watch`](super::watch)'s job; applying
//! them is the registry's.
//!
//! kubelet writes a ConfigMap as `..<timestamp>/` directories, a `..data`
//! symlink to the current one, and one symlink per key through `..data`;
//! names starting with `.` are its machinery, so they are skipped, and the
//! per-key symlinks are followed.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::path::Path;

use serde_yaml_ng::{Mapping, Value as Yaml};

use super::ConfigError;
use super::model_config::{ModelConfigFile, parse_mapping};
use crate::types::ModelId;

/// The server settings file a configuration directory may also hold.
pub const PROPERTIES_FILE: &str = "config.properties";
/// A declaration larger than this is refused unread (a ConfigMap holds at
/// most 1 MiB in all).
const MAX_DECLARATION: u64 = 1024 * 1024;

/// One model version declared by a file.
#[derive(Debug, Clone, PartialEq)]
pub struct Declaration {
    /// The file's name, for every message (`digits.yaml`).
    pub file: String,
    /// `name`, else the file's stem.
    pub name: String,
    /// `source`: a path in the model store (`digits.mar`, `digits_v2`), or an
    /// absolute path (`/mnt/models/digits`).
    pub source: String,
    /// `version`, else the archive's or `ortserve.version`.
    pub version: Option<String>,
    /// Every other key: `model-config.yaml`'s, checked, and laid over the
    /// archive's own file when the model is built.
    pub settings: Mapping,
}

/// The directory as read at one moment.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DeclarationSet {
    /// By file name; a refused file keeps the reason, naming the file and key.
    pub files: BTreeMap<String, Result<Declaration, String>>,
    /// A hash of every considered file's name and bytes: equal digests mean
    /// nothing changed.
    pub digest: u64,
}

/// Reads every declaration file in `dir`. Fails only when the directory
/// itself cannot be listed.
pub fn read_dir(dir: &Path) -> Result<DeclarationSet, ConfigError> {
    let io_error = |e: std::io::Error| ConfigError::Io {
        path: dir.to_path_buf(),
        detail: e.to_string(),
    };
    if dir.is_file() {
        // One ConfigMap key mounted with `subPath`, or the path of a file
        // in the mount: either way kubelet's updates would never arrive.
        return Err(ConfigError::Invalid(format!(
            "--model-config-dir {} is a file, not a directory: mount the whole ConfigMap \
             as a volume directory (without subPath, which kubelet never updates) and pass \
             that directory",
            dir.display()
        )));
    }
    let names: Vec<String> = std::fs::read_dir(dir)
        .map_err(io_error)?
        .filter_map(Result::ok)
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    // `read` follows kubelet's per-key symlinks; a file that vanished
    // between listing and reading is simply not there this time.
    let files = names
        .into_iter()
        .filter(|name| is_declaration(name))
        .filter_map(
            |name| match super::read_bounded(&dir.join(&name), MAX_DECLARATION) {
                Ok(bytes) => Some((name, Ok(bytes))),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => Some((name.clone(), Err(format!("{name}: cannot read: {e}")))),
            },
        );
    Ok(DeclarationSet::from_files(files))
}

impl DeclarationSet {
    /// Declarations from named contents (a directory's files, a ConfigMap's
    /// keys); names that are not declaration files are skipped.
    pub fn from_files(
        files: impl IntoIterator<Item = (String, Result<Vec<u8>, String>)>,
    ) -> DeclarationSet {
        let mut files: Vec<_> = files
            .into_iter()
            .filter(|(name, _)| is_declaration(name))
            .collect();
        files.sort_by(|a, b| a.0.cmp(&b.0));
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        let mut declared = BTreeMap::new();
        for (name, content) in files {
            (&name, &content).hash(&mut hasher);
            let declaration = content
                .and_then(|bytes| {
                    String::from_utf8(bytes).map_err(|_| format!("{name}: not UTF-8 text"))
                })
                .and_then(|text| parse(&name, &text).map_err(|e| e.to_string()));
            declared.insert(name, declaration);
        }
        DeclarationSet {
            files: declared,
            digest: hasher.finish(),
        }
    }

    /// Both sets' files (their names do not clash: the API's are
    /// `configmap/key`). A model version both declare is taken from `other`
    /// alone: a mounted ConfigMap is a copy of one the API also serves, and
    /// the API's copy is never the older one, so neither their agreement
    /// nor kubelet's lag in syncing an edit is a conflict.
    pub fn union(&self, other: &DeclarationSet) -> DeclarationSet {
        let declared = |set: &DeclarationSet| -> Vec<(String, Option<String>)> {
            set.files
                .values()
                .filter_map(|d| d.as_ref().ok())
                .map(|d| (d.name.clone(), d.version.clone()))
                .collect()
        };
        let in_other = declared(other);
        let mut files: BTreeMap<_, _> = self
            .files
            .iter()
            .filter(|(_, d)| {
                !matches!(d, Ok(d) if in_other.contains(&(d.name.clone(), d.version.clone())))
            })
            .map(|(name, d)| (name.clone(), d.clone()))
            .collect();
        files.extend(other.files.clone());
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        (self.digest, other.digest).hash(&mut hasher);
        DeclarationSet {
            files,
            digest: hasher.finish(),
        }
    }
}

fn is_declaration(name: &str) -> bool {
    let base = name.rsplit('/').next().unwrap_or(name);
    !base.starts_with('.')
        && [".yaml", ".yml", ".json"]
            .iter()
            .any(|ext| name.to_ascii_lowercase().ends_with(ext))
}

/// Parses one declaration; every problem names the file and the key.
pub fn parse(file: &str, text: &str) -> Result<Declaration, ConfigError> {
    let bad = |key: &str, detail: &str| ConfigError::Invalid(format!("{file}: {key}: {detail}"));
    let mut settings = parse_mapping(file, text)?.ok_or_else(|| {
        bad(
            "(top level)",
            "the file is empty; declare at least `source: <model in the store>`",
        )
    })?;
    let mut text_key = |key: &str| -> Result<Option<String>, ConfigError> {
        match settings.remove(key) {
            None | Some(Yaml::Null) => Ok(None),
            Some(Yaml::String(s)) if !s.is_empty() => Ok(Some(s)),
            Some(Yaml::Number(n)) if key == "version" => Ok(Some(n.to_string())),
            Some(_) => Err(bad(key, "expected a non-empty string")),
        }
    };
    let name = text_key("name")?;
    let source = text_key("source")?.ok_or_else(|| {
        bad(
            "source",
            "missing: say where the model is (a .mar, directory or .onnx in the model store, or an absolute path)",
        )
    })?;
    let version = text_key("version")?;
    if let Some(version) = &version {
        ModelId::check_version(version).map_err(|why| bad("version", &why))?;
    }
    ModelConfigFile::check_keys(file, &settings)?;
    // Values are checked now, so a bad one refuses the file before any load.
    ModelConfigFile::layered(file, None, &settings)?;
    let name = name.unwrap_or_else(|| stem(file));
    check_name(file, &name)?;
    Ok(Declaration {
        file: file.to_string(),
        name,
        source,
        version,
        settings,
    })
}

fn stem(file: &str) -> String {
    Path::new(file)
        .file_stem()
        .map_or_else(|| file.to_string(), |s| s.to_string_lossy().into_owned())
}

fn check_name(file: &str, name: &str) -> Result<(), ConfigError> {
    ModelId::check_name(name).map_err(|why| ConfigError::Invalid(format!("{file}: name: {why}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_declaration_names_its_model_source_and_settings() {
        let text = "source: digits.mar\nversion: 2.0\nminWorkers: 2\nortserve:\n  handler: image_classifier\n";
        let declaration = parse("digits.yaml", text).unwrap();
        assert_eq!(
            (
                declaration.name.as_str(),
                declaration.source.as_str(),
                declaration.version.as_deref()
            ),
            ("digits", "digits.mar", Some("2.0"))
        );
        assert_eq!(declaration.settings.len(), 2);
        let json = r#"{"name": "d", "source": "/mnt/models", "batchSize": 4}"#;
        assert_eq!(parse("x.json", json).unwrap().name, "d");
    }

    #[test]
    fn bad_files_are_refused_naming_the_file_and_key() {
        let cases = [
            ("minWorkers: 1\n", "m.yaml: source: missing"),
            (
                "source: a.mar\nminWorker: 1\n",
                "m.yaml: minWorker: unknown key",
            ),
            (
                "source: a.mar\nbatchSize: many\n",
                "m.yaml: batchSize: expected a whole number",
            ),
            (
                "source: a.mar\nortserve:\n  handlr: x\n",
                "m.yaml: ortserve: unknown field `handlr`",
            ),
            ("source: [1\n", "m.yaml: not valid YAML"),
            (
                "source: a.mar\nname: 9lives\n",
                "m.yaml: name: '9lives' is not a valid model name",
            ),
        ];
        for (text, message) in cases {
            let error = parse("m.yaml", text).unwrap_err().to_string();
            assert!(error.contains(message), "{text:?}: {error}");
        }
    }

    #[test]
    fn a_model_version_declared_by_both_sources_is_taken_from_the_api() {
        let set = |files: &[(&str, &str)]| {
            DeclarationSet::from_files(
                files
                    .iter()
                    .map(|(n, t)| (n.to_string(), Ok(t.as_bytes().to_vec()))),
            )
        };
        let mounted = set(&[
            ("digits.yaml", "source: d.mar\nbatchSize: 4\n"),
            ("other.yaml", "source: o.mar\n"),
        ]);
        let api = set(&[("models/digits.yaml", "source: d.mar\nbatchSize: 8\n")]);
        let union = mounted.union(&api);
        assert_eq!(
            union.files.keys().collect::<Vec<_>>(),
            ["models/digits.yaml", "other.yaml"]
        );
        let versioned = set(&[("models/v2.yaml", "name: digits\nversion: 2\nsource: d2\n")]);
        assert_eq!(
            mounted.union(&versioned).files.len(),
            3,
            "another version is not a duplicate"
        );
    }

    #[test]
    fn kubelet_machinery_and_other_files_are_skipped() {
        assert!(is_declaration("digits.yaml") && is_declaration("b.JSON"));
        assert!(!is_declaration("..data") && !is_declaration("..2026_11_29.yaml"));
        assert!(!is_declaration(PROPERTIES_FILE) && !is_declaration("notes.txt"));
    }
}

/// Generated declarations: a declaration or a message naming the file,
/// never a panic; accepted names and versions follow their rules.
#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn any_text_gives_a_declaration_or_a_message(text in "\\PC{0,200}") {
            if let Err(e) = parse("d.yaml", &text) {
                prop_assert!(e.to_string().starts_with("d.yaml"), "{}", e);
            }
        }

        #[test]
        fn accepted_names_and_versions_follow_their_rules(
            name in "[a-z0-9./_-]{0,12}",
            version in "[a-z0-9./+_-]{0,12}",
        ) {
            let text = serde_json::json!({"source": "m.mar", "name": name, "version": version}).to_string();
            if let Ok(d) = parse("d.json", &text) {
                prop_assert!(ModelId::check_name(&d.name).is_ok());
                prop_assert!(d.version.as_deref().is_none_or(|v| ModelId::check_version(v).is_ok()));
            }
        }
    }
}
