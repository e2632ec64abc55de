//! TorchServe model archives: `.mar` zips and their unpacked directories.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use serde::Deserialize;

use super::{ExtraFile, ModelArtifact, ModelFile, StoreError};

const MANIFEST: &str = "MAR-INF/MANIFEST.json";
/// Side files (config, labels) larger than this are not text we expect.
const MAX_EXTRA_FILE: u64 = 16 * 1024 * 1024;

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

/// Reads a `.mar` zip's manifest and side files; the graph stays in the zip.
pub(super) fn open_zip(path: &Path, origin: &str) -> Result<ModelArtifact, StoreError> {
    let mut zip = open(path, origin)?;
    let manifest_text = read_text(&mut zip, origin, MANIFEST)?.ok_or_else(|| {
        StoreError::new(origin, format!("not a model archive: it has no {MANIFEST}"))
    })?;
    let manifest = parse_manifest(origin, &manifest_text)?;
    let serialized = serialized_onnx(origin, &manifest)?;
    if zip.index_for_name(&serialized).is_none() {
        return Err(StoreError::new(
            origin,
            format!(
                "{MANIFEST} names serializedFile '{serialized}', which the archive does not contain"
            ),
        ));
    }
    let config_name = manifest.config_file();
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
            read: Default::default(),
        },
        config_file,
        labels,
    ))
}

/// Reads an unpacked archive: the same layout as a directory.
pub(super) fn open_unpacked(dir: &Path, origin: &str) -> Result<ModelArtifact, StoreError> {
    let manifest_text = std::fs::read_to_string(dir.join(MANIFEST))
        .map_err(|e| StoreError::new(origin, format!("cannot read {MANIFEST}: {e}")))?;
    let manifest = parse_manifest(origin, &manifest_text)?;
    let serialized = serialized_onnx(origin, &manifest)?;
    let model = dir.join(&serialized);
    if !model.is_file() {
        return Err(StoreError::new(
            origin,
            format!(
                "{MANIFEST} names serializedFile '{serialized}', which is not in the directory"
            ),
        ));
    }
    let config_name = manifest.config_file();
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
    }
}

fn parse_manifest(origin: &str, text: &str) -> Result<Manifest, StoreError> {
    serde_json::from_str(text)
        .map_err(|e| StoreError::new(origin, format!("{MANIFEST} is not a valid manifest: {e}")))
}

/// The manifest's `serializedFile`, which must be an ONNX graph.
fn serialized_onnx(origin: &str, manifest: &Manifest) -> Result<String, StoreError> {
    let file = manifest.model.serialized_file.clone().ok_or_else(|| {
        StoreError::new(origin, format!("{MANIFEST} has no model.serializedFile"))
    })?;
    if !file.to_ascii_lowercase().ends_with(".onnx") {
        return Err(StoreError::new(
            origin,
            format!(
                "serializedFile '{file}' is not an ONNX model; ortserve runs ONNX graphs only \
                 (export with torch.onnx.export and archive the .onnx)"
            ),
        ));
    }
    Ok(file)
}

/// Reads one zip entry into memory (used for the graph at each session build).
pub(super) fn read_entry(path: &Path, entry: &str) -> Result<Vec<u8>, StoreError> {
    let origin = path.display().to_string();
    let mut zip = open(path, &origin)?;
    let mut file = zip
        .by_name(entry)
        .map_err(|e| StoreError::new(&origin, format!("cannot read {entry}: {e}")))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)
        .map_err(|e| StoreError::new(&origin, format!("cannot read {entry}: {e}")))?;
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
    let mut text = String::new();
    file.take(MAX_EXTRA_FILE)
        .read_to_string(&mut text)
        .map_err(|e| StoreError::new(origin, format!("cannot read {name} as UTF-8 text: {e}")))?;
    Ok(Some(text))
}
