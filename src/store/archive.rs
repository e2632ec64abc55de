//! TorchServe model archives: `.mar` zips and their unpacked directories.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use serde::Deserialize;

use super::{
    ExtraFile, MAX_SIDE_FILE, ModelArtifact, ModelFile, StoreError, inside, lexically_inside,
    too_big,
};
use crate::types::excerpt;

const MANIFEST: &str = "MAR-INF/MANIFEST.json";

#[derive(Debug, Deserialize)]
struct Manifest {
    model: ManifestModel,
}

impl Manifest {
    /// The model's config file name, TorchServe's default when unnamed.
    fn config_file(&self) -> String {
        self.model
            .config_file
            .clone()
            .unwrap_or_else(|| "model-config.yaml".into())
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ManifestModel {
    model_name: Option<String>,
    serialized_file: Option<String>,
    handler: Option<String>,
    model_version: Option<String>,
    config_file: Option<String>,
}

/// Reads a `.mar` zip's manifest and side files; the graph stays in the zip
/// (its declared size is checked against `max_model_size` now).
pub(super) fn open_zip(
    path: &Path,
    origin: &str,
    max_model_size: u64,
) -> Result<ModelArtifact, StoreError> {
    let mut zip = open(path, origin)?;
    let manifest_text = read_text(&mut zip, origin, MANIFEST)?.ok_or_else(|| {
        StoreError::new(origin, format!("not a model archive: it has no {MANIFEST}"))
    })?;
    let manifest = parse_manifest(origin, &manifest_text)?;
    let serialized = serialized_onnx(origin, &manifest)?;
    let declared = match zip.by_name(&serialized) {
        Ok(entry) => entry.size(),
        Err(_) => {
            return Err(StoreError::new(
                origin,
                format!(
                    "{MANIFEST} names serializedFile '{}', which the archive does not contain",
                    excerpt(&serialized)
                ),
            ));
        }
    };
    if declared > max_model_size {
        return Err(StoreError::new(
            origin,
            too_big("the ONNX graph", declared, max_model_size, "max_model_size"),
        ));
    }
    let config_name = manifest.config_file();
    named_inside(origin, "configFile", &config_name)?;
    let extra =
        |zip: &mut zip::ZipArchive<File>, name: &str| -> Result<Option<ExtraFile>, StoreError> {
            Ok(read_text(zip, origin, name)?.map(|text| ExtraFile {
                origin: format!("{origin}!{name}"),
                text,
            }))
        };
    let config_file = extra(&mut zip, &config_name)?;
    let labels = extra(&mut zip, "index_to_name.json")?;
    Ok(artifact(
        path,
        origin,
        manifest,
        ModelFile::Archived {
            archive: path.to_path_buf(),
            entry: serialized,
            limit: max_model_size,
            read: Default::default(),
        },
        config_file,
        labels,
    ))
}

/// Reads an unpacked archive: the same layout as a directory.
pub(super) fn open_unpacked(dir: &Path, origin: &str) -> Result<ModelArtifact, StoreError> {
    let manifest_path = inside(dir, MANIFEST, origin, "the manifest")?;
    let manifest_bytes = crate::config::read_bounded(&manifest_path, MAX_SIDE_FILE)
        .map_err(|e| StoreError::new(origin, format!("cannot read {MANIFEST}: {e}")))?;
    let manifest_text = String::from_utf8(manifest_bytes)
        .map_err(|_| StoreError::new(origin, format!("{MANIFEST} is not UTF-8 text")))?;
    let manifest = parse_manifest(origin, &manifest_text)?;
    let serialized = serialized_onnx(origin, &manifest)?;
    let model = inside(dir, &serialized, origin, "serializedFile")?;
    if !model.is_file() {
        return Err(StoreError::new(
            origin,
            format!(
                "{MANIFEST} names serializedFile '{}', which is not in the directory",
                excerpt(&serialized)
            ),
        ));
    }
    let config_name = manifest.config_file();
    named_inside(origin, "configFile", &config_name)?;
    let config_file = super::read_extra(dir, origin, &config_name)?;
    let labels = super::read_extra(dir, origin, "index_to_name.json")?;
    Ok(artifact(
        dir,
        origin,
        manifest,
        ModelFile::Path(model),
        config_file,
        labels,
    ))
}

fn artifact(
    path: &Path,
    origin: &str,
    manifest: Manifest,
    model_file: ModelFile,
    config_file: Option<ExtraFile>,
    labels: Option<ExtraFile>,
) -> ModelArtifact {
    ModelArtifact {
        name: manifest
            .model
            .model_name
            .unwrap_or_else(|| super::stem(path)),
        version: manifest.model.model_version,
        origin: origin.to_string(),
        model_file,
        handler: manifest.model.handler.filter(|h| !h.is_empty()),
        config_file,
        labels,
        declared_io: None,
    }
}

fn parse_manifest(origin: &str, text: &str) -> Result<Manifest, StoreError> {
    serde_json::from_str(text)
        .map_err(|e| StoreError::new(origin, format!("{MANIFEST} is not a valid manifest: {e}")))
}

/// The manifest's `serializedFile`, which must be an ONNX graph inside the archive.
fn serialized_onnx(origin: &str, manifest: &Manifest) -> Result<String, StoreError> {
    let file = manifest.model.serialized_file.clone().ok_or_else(|| {
        StoreError::new(origin, format!("{MANIFEST} has no model.serializedFile"))
    })?;
    named_inside(origin, "serializedFile", &file)?;
    if !file.to_ascii_lowercase().ends_with(".onnx") {
        return Err(StoreError::new(
            origin,
            format!(
                "serializedFile '{}' is not an ONNX model; ortserve runs ONNX graphs only \
                 (export with torch.onnx.export and archive the .onnx)",
                excerpt(&file)
            ),
        ));
    }
    Ok(file)
}

/// A manifest path must name a file of the archive itself.
fn named_inside(origin: &str, key: &str, path: &str) -> Result<(), StoreError> {
    lexically_inside(path).map_err(|why| {
        StoreError::new(
            origin,
            format!("{MANIFEST}: {key} '{}' {why}", excerpt(path)),
        )
    })
}

/// Reads one zip entry into memory (used for the graph at each session
/// build), refusing it before allocation when its declared size is over
/// `limit`, and as soon as more than `limit` bytes come out of it.
pub(super) fn read_entry(path: &Path, entry: &str, limit: u64) -> Result<Vec<u8>, StoreError> {
    let origin = path.display().to_string();
    let mut zip = open(path, &origin)?;
    let cannot = |e: String| StoreError::new(&origin, format!("cannot read {entry}: {e}"));
    let file = zip.by_name(entry).map_err(|e| cannot(e.to_string()))?;
    let declared = file.size();
    if declared > limit {
        return Err(StoreError::new(
            &origin,
            too_big("the ONNX graph", declared, limit, "max_model_size"),
        ));
    }
    let mut bytes = Vec::with_capacity(declared as usize);
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| cannot(e.to_string()))?;
    if bytes.len() as u64 > limit {
        return Err(StoreError::new(
            &origin,
            format!(
                "the ONNX graph inflates past {limit} bytes although the archive declares {declared} (max_model_size); \
                 the archive is damaged or crafted"
            ),
        ));
    }
    Ok(bytes)
}

fn open(path: &Path, origin: &str) -> Result<zip::ZipArchive<File>, StoreError> {
    let file =
        File::open(path).map_err(|e| StoreError::new(origin, format!("cannot open: {e}")))?;
    zip::ZipArchive::new(file)
        .map_err(|e| StoreError::new(origin, format!("not a valid zip archive: {e}")))
}

fn read_text(
    zip: &mut zip::ZipArchive<File>,
    origin: &str,
    name: &str,
) -> Result<Option<String>, StoreError> {
    let file = match zip.by_name(name) {
        Ok(file) => file,
        Err(zip::result::ZipError::FileNotFound) => return Ok(None),
        Err(e) => return Err(StoreError::new(origin, format!("cannot read {name}: {e}"))),
    };
    if file.size() > MAX_SIDE_FILE {
        return Err(StoreError::new(
            origin,
            too_big(name, file.size(), MAX_SIDE_FILE, "side files"),
        ));
    }
    let mut text = String::new();
    file.take(MAX_SIDE_FILE + 1)
        .read_to_string(&mut text)
        .map_err(|e| StoreError::new(origin, format!("cannot read {name} as UTF-8 text: {e}")))?;
    if text.len() as u64 > MAX_SIDE_FILE {
        return Err(StoreError::new(
            origin,
            format!(
                "{name} inflates past {MAX_SIDE_FILE} bytes; the archive is damaged or crafted"
            ),
        ));
    }
    Ok(Some(text))
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    /// A stored (uncompressed) zip whose one entry is `bytes`, with the
    /// entry's declared size rewritten to `declared`.
    fn lying_zip(bytes: &[u8], declared: u32) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let stored = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        zip.start_file("model.onnx", stored).unwrap();
        zip.write_all(bytes).unwrap();
        let mut archive = zip.finish().unwrap().into_inner();
        let size = (bytes.len() as u32).to_le_bytes();
        // The local header and the central directory both carry the
        // uncompressed size right after the compressed one.
        for signature in [&b"PK\x03\x04"[..], &b"PK\x01\x02"[..]] {
            let at = archive.windows(4).position(|w| w == signature).unwrap();
            let field = at + if signature[2] == 3 { 22 } else { 24 };
            assert_eq!(archive[field..field + 4], size);
            archive[field..field + 4].copy_from_slice(&declared.to_le_bytes());
        }
        file.write_all(&archive).unwrap();
        file
    }

    #[test]
    fn an_entry_larger_than_declared_or_than_the_limit_is_refused() {
        // The zip reader notices the lie itself; the limit would stop it
        // at 101 bytes if it did not.
        let zip = lying_zip(&[7u8; 5000], 10);
        let error = read_entry(zip.path(), "model.onnx", 100).unwrap_err();
        assert!(
            error
                .detail
                .contains("larger than its declared uncompressed size")
                || error.detail.contains("inflates past 100 bytes"),
            "{error}"
        );
        let honest = lying_zip(&[7u8; 50], 50);
        assert_eq!(
            read_entry(honest.path(), "model.onnx", 100).unwrap(),
            vec![7u8; 50]
        );
        let error = read_entry(honest.path(), "model.onnx", 20).unwrap_err();
        assert!(
            error.detail.contains("is 50 bytes, over the limit of 20"),
            "{error}"
        );
    }
}

/// Generated manifests: a model's paths or a reason, never a panic, and no
/// accepted path that climbs out of the archive.
#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    fn path() -> impl Strategy<Value = String> {
        proptest::collection::vec(
            prop_oneof![
                Just("..".to_string()),
                Just("/".to_string()),
                Just(".".to_string()),
                "[a-z]{1,4}",
                Just("model.onnx".to_string()),
            ],
            0..5,
        )
        .prop_map(|parts| parts.join("/"))
    }

    proptest! {
        #[test]
        fn any_text_gives_a_manifest_or_a_reason(text in "\\\\PC{0,200}") {
            if let Ok(manifest) = parse_manifest("m.mar", &text) {
                let _ = serialized_onnx("m.mar", &manifest);
            }
        }

        #[test]
        fn accepted_paths_stay_inside(serialized in path(), config in path()) {
            let text = serde_json::json!({
                "model": {"modelName": "m", "serializedFile": serialized, "configFile": config}
            })
            .to_string();
            let manifest = parse_manifest("m.mar", &text).unwrap();
            if let Ok(file) = serialized_onnx("m.mar", &manifest) {
                prop_assert!(!file.starts_with('/') && !file.split('/').any(|c| c == ".."), "{}", file);
            }
            if named_inside("m.mar", "configFile", &config).is_ok() {
                prop_assert!(!config.starts_with('/') && !config.split('/').any(|c| c == ".."));
            }
        }
    }
}
