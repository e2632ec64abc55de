//! TorchServe model archives: `.mar` zips, `.tar.gz` archives (see
//! [`super::tgz`]) and their unpacked directories. Both containers are read
//! in place through [`Files`], by one code path: nothing is unpacked to disk.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use serde::Deserialize;

use super::tgz::Tgz;
use super::{
    ExtraFile, MAX_SIDE_FILE, ModelArtifact, ModelFile, SideFiles, StoreError, inside,
    lexically_inside, too_big,
};
use crate::types::excerpt;

pub(super) const MANIFEST: &str = "MAR-INF/MANIFEST.json";

/// The two containers `torch-model-archiver` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchiveFormat {
    Zip,
    Tgz,
}

/// A model archive's files, named by their path in the model (`model.onnx`,
/// `MAR-INF/MANIFEST.json`), whatever the container.
pub(super) trait Files {
    const FORMAT: ArchiveFormat;
    /// Every file, for the warnings about files ortserve leaves alone.
    fn names(&self) -> Vec<String>;
    /// The size the container declares for `name`; `None` when it has none.
    fn size(&mut self, name: &str) -> Result<Option<u64>, StoreError>;
    /// Reads `name` within `limit`; `None` when the container has no such file.
    fn read(&mut self, name: &str, limit: &Limit) -> Result<Option<Vec<u8>>, StoreError>;
    /// Where `name` is in the container, to read it again at session builds.
    fn entry(&self, name: &str) -> String;
}

/// How many bytes one archived file may hold, and the setting that says so.
pub(super) struct Limit<'a> {
    pub what: &'a str,
    pub bytes: u64,
    pub setting: &'a str,
}

impl Limit<'_> {
    fn side_file(name: &str) -> Limit<'_> {
        Limit {
            what: name,
            bytes: super::side_file_limit(name),
            setting: "side files",
        }
    }
}

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

/// Reads a `.mar` zip's manifest and side files.
pub(super) fn open_zip(
    path: &Path,
    origin: &str,
    max_model_size: u64,
) -> Result<ModelArtifact, StoreError> {
    open_archive(path, origin, max_model_size, Zip::open(path, origin)?)
}

/// Reads a `.tar.gz` archive's manifest and side files.
pub(super) fn open_tgz(
    path: &Path,
    origin: &str,
    max_model_size: u64,
) -> Result<ModelArtifact, StoreError> {
    open_archive(
        path,
        origin,
        max_model_size,
        Tgz::open(path, origin, max_model_size)?,
    )
}

/// Reads an archive's manifest and side files; the graph stays in the
/// archive (its declared size is checked against `max_model_size` now).
fn open_archive<F: Files>(
    path: &Path,
    origin: &str,
    max_model_size: u64,
    mut files: F,
) -> Result<ModelArtifact, StoreError> {
    let manifest_text = read_text(&mut files, origin, MANIFEST)?.ok_or_else(|| {
        StoreError::new(origin, format!("not a model archive: it has no {MANIFEST}"))
    })?;
    let manifest = parse_manifest(origin, &manifest_text)?;
    let serialized = serialized_onnx(origin, &manifest)?;
    let Some(declared) = files.size(&serialized)? else {
        return Err(StoreError::new(
            origin,
            format!(
                "{MANIFEST} names serializedFile '{}', which the archive does not contain",
                excerpt(&serialized)
            ),
        ));
    };
    if declared > max_model_size {
        return Err(StoreError::new(
            origin,
            too_big("the ONNX graph", declared, max_model_size, "max_model_size"),
        ));
    }
    let config_name = manifest.config_file();
    named_inside(origin, "configFile", &config_name)?;
    let mut extra = |name: &str| -> Result<Option<ExtraFile>, StoreError> {
        Ok(read_text(&mut files, origin, name)?.map(|text| ExtraFile {
            origin: format!("{origin}!{name}"),
            text,
        }))
    };
    let config_file = extra(&config_name)?;
    let side_files = SideFiles::read(extra)?;
    super::warn_ignored(
        origin,
        files.names().iter().map(String::as_str),
        manifest.model.handler.as_deref(),
    );
    let model_file = ModelFile::Archived {
        archive: path.to_path_buf(),
        format: F::FORMAT,
        entry: files.entry(&serialized),
        limit: max_model_size,
        read: Default::default(),
    };
    Ok(artifact(
        path,
        origin,
        manifest,
        model_file,
        config_file,
        side_files,
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
    let side_files = SideFiles::read(|name| super::read_extra(dir, origin, name))?;
    Ok(artifact(
        dir,
        origin,
        manifest,
        ModelFile::Path(model),
        config_file,
        side_files,
    ))
}

fn artifact(
    path: &Path,
    origin: &str,
    manifest: Manifest,
    model_file: ModelFile,
    config_file: Option<ExtraFile>,
    side_files: SideFiles,
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
        side_files,
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

/// Reads an archive's graph into memory (at each session build).
pub(super) fn read_entry(
    path: &Path,
    format: ArchiveFormat,
    entry: &str,
    limit: u64,
) -> Result<Vec<u8>, StoreError> {
    let origin = path.display().to_string();
    let limit = Limit {
        what: "the ONNX graph",
        bytes: limit,
        setting: "max_model_size",
    };
    let read = match format {
        ArchiveFormat::Zip => Zip::open(path, &origin)?.read(entry, &limit)?,
        ArchiveFormat::Tgz => super::tgz::read_file(path, &origin, entry, &limit, limit.bytes)?,
    };
    read.ok_or_else(|| {
        StoreError::new(
            &origin,
            format!("cannot read {entry}: it is no longer in the archive"),
        )
    })
}

/// Reads one archived file whose container declares `declared` bytes:
/// refused before allocation when that is over the limit, and as soon as
/// more bytes come out of it than declared.
pub(super) fn read_limited(
    origin: &str,
    file: impl Read,
    declared: u64,
    limit: &Limit,
) -> Result<Vec<u8>, StoreError> {
    let Limit {
        what,
        bytes: most,
        setting,
    } = *limit;
    if declared > most {
        return Err(StoreError::new(
            origin,
            too_big(what, declared, most, setting),
        ));
    }
    let mut bytes = Vec::with_capacity(declared as usize);
    file.take(declared + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| StoreError::new(origin, format!("cannot read {what}: {e}")))?;
    if bytes.len() as u64 > declared {
        return Err(StoreError::new(
            origin,
            format!(
                "{what} inflates past the {declared} bytes the archive declares ({setting}); \
                 the archive is damaged or crafted"
            ),
        ));
    }
    Ok(bytes)
}

/// Files one archive may hold: a model has a handful, and the index of a
/// crafted archive of empty files must not grow with it.
pub(super) const MAX_FILES: usize = 65_536;

/// A `.mar` zip.
struct Zip {
    zip: zip::ZipArchive<File>,
    origin: String,
}

impl Zip {
    fn open(path: &Path, origin: &str) -> Result<Zip, StoreError> {
        let file =
            File::open(path).map_err(|e| StoreError::new(origin, format!("cannot open: {e}")))?;
        let zip = zip::ZipArchive::new(file)
            .map_err(|e| StoreError::new(origin, format!("not a valid zip archive: {e}")))?;
        if zip.len() > MAX_FILES {
            return Err(StoreError::new(
                origin,
                format!("the archive holds more than {MAX_FILES} files; a model needs a few"),
            ));
        }
        // The zip reader answers a name with its last entry; a tool that
        // checked the archive may have read the first.
        if zip.has_duplicate_names() {
            return Err(StoreError::new(
                origin,
                "an entry's name appears twice; the archive is damaged or crafted",
            ));
        }
        Ok(Zip {
            zip,
            origin: origin.to_string(),
        })
    }

    fn by_name(&mut self, name: &str) -> Result<Option<zip::read::ZipFile<'_, File>>, StoreError> {
        match self.zip.by_name(name) {
            Ok(file) => Ok(Some(file)),
            Err(zip::result::ZipError::FileNotFound) => Ok(None),
            Err(e) => Err(StoreError::new(
                &self.origin,
                format!("cannot read {name}: {e}"),
            )),
        }
    }
}

impl Files for Zip {
    const FORMAT: ArchiveFormat = ArchiveFormat::Zip;

    fn names(&self) -> Vec<String> {
        self.zip
            .file_names()
            .filter_map(Result::ok)
            .filter(|name| !name.ends_with('/'))
            .map(|name| name.into_owned())
            .collect()
    }

    fn size(&mut self, name: &str) -> Result<Option<u64>, StoreError> {
        Ok(self.by_name(name)?.map(|file| file.size()))
    }

    fn read(&mut self, name: &str, limit: &Limit) -> Result<Option<Vec<u8>>, StoreError> {
        let origin = self.origin.clone();
        let Some(file) = self.by_name(name)? else {
            return Ok(None);
        };
        let declared = file.size();
        read_limited(&origin, file, declared, limit).map(Some)
    }

    fn entry(&self, name: &str) -> String {
        name.to_string()
    }
}

fn read_text(
    files: &mut impl Files,
    origin: &str,
    name: &str,
) -> Result<Option<String>, StoreError> {
    let Some(bytes) = files.read(name, &Limit::side_file(name))? else {
        return Ok(None);
    };
    String::from_utf8(bytes)
        .map(Some)
        .map_err(|e| StoreError::new(origin, format!("cannot read {name} as UTF-8 text: {e}")))
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
    fn an_archive_naming_an_entry_twice_is_refused() {
        let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let options = zip::write::SimpleFileOptions::default();
        for (name, bytes) in [("model.onnx", b"first"), ("model.onnY", b"other")] {
            zip.start_file(name, options).unwrap();
            zip.write_all(bytes).unwrap();
        }
        let mut archive = zip.finish().unwrap().into_inner();
        // The writer refuses a second name, so the second is renamed after:
        // in its local header and in the central directory.
        for _ in 0..2 {
            let at = archive
                .windows(10)
                .position(|w| w == b"model.onnY")
                .unwrap();
            archive[at + 9] = b'x';
        }
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(&archive).unwrap();
        let error = Zip::open(file.path(), "twice.mar").err().expect("refused");
        assert!(error.detail.contains("appears twice"), "{error}");
    }

    #[test]
    fn an_entry_larger_than_declared_or_than_the_limit_is_refused() {
        // The zip reader may notice the lie itself; reading stops one byte
        // past the declared size if it does not.
        let zip = lying_zip(&[7u8; 5000], 10);
        let error = read_entry(zip.path(), ArchiveFormat::Zip, "model.onnx", 100).unwrap_err();
        assert!(
            error
                .detail
                .contains("larger than its declared uncompressed size")
                || error
                    .detail
                    .contains("inflates past the 10 bytes the archive declares"),
            "{error}"
        );
        let honest = lying_zip(&[7u8; 50], 50);
        assert_eq!(
            read_entry(honest.path(), ArchiveFormat::Zip, "model.onnx", 100).unwrap(),
            vec![7u8; 50]
        );
        let error = read_entry(honest.path(), ArchiveFormat::Zip, "model.onnx", 20).unwrap_err();
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
