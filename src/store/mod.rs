//! Finding models on disk. A model store entry is a `.mar` archive (a zip with
//! `MAR-INF/MANIFEST.json` whose `serializedFile` is an `.onnx`), the same as
//! a `.tar.gz` (see [`tgz`]) or unpacked as a directory, a Triton model
//! directory (`config.pbtxt` and numbered version directories; see
//! [`triton`]), a plain directory holding `model.onnx` (or a single
//! `*.onnx`) with an optional `model-config.yaml`, or a bare `.onnx` file.
//!
//! Everything in the store is outside input: every path an archive, manifest
//! or directory names must resolve (after symlinks) inside that archive or
//! directory, and every file is size-checked before it is read. What it
//! passes over gets one warning each: a store entry that is not a model, and
//! a model's files that only TorchServe's Python side would use.
//!
//! It reads files and archives only: it never parses model settings, builds
//! sessions or downloads anything.

mod archive;
mod pbtxt;
mod tgz;
mod triton;

use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

use crate::config::{LoadModels, ModelRef};
use crate::engine::OnnxSource;
use crate::types::{ModelId, excerpt};

pub use archive::ArchiveFormat;
pub use triton::{DeclaredIo, DeclaredTensor, check_declared_io};

/// Side files (manifest, config, labels) larger than this are not text we expect.
const MAX_SIDE_FILE: u64 = 16 * 1024 * 1024;
const MAX_TOKENIZER_FILE: u64 = 64 * 1024 * 1024;

/// A problem with one model store entry.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{origin}: {detail}")]
pub struct StoreError {
    pub origin: String,
    pub detail: String,
}

impl StoreError {
    fn new(origin: &str, detail: impl Into<String>) -> StoreError {
        StoreError {
            origin: origin.to_string(),
            detail: detail.into(),
        }
    }
}

/// Where a model's ONNX graph lives.
#[derive(Debug, Clone)]
pub enum ModelFile {
    Path(PathBuf),
    /// An entry of a `.mar` zip or `.tar.gz`, read into memory while
    /// sessions are built.
    Archived {
        archive: PathBuf,
        format: ArchiveFormat,
        entry: String,
        /// The most bytes the entry may inflate to (`max_model_size`).
        limit: u64,
        read: Arc<SharedRead>,
    },
}

/// Bytes read out of an archive, shared by the sessions being built at the
/// same time (`minWorkers` of them at start) and freed when they are done.
#[derive(Debug, Default)]
pub struct SharedRead(Mutex<Weak<Vec<u8>>>);

impl SharedRead {
    fn get_or_read(
        &self,
        read: impl FnOnce() -> Result<Vec<u8>, StoreError>,
    ) -> Result<Arc<Vec<u8>>, StoreError> {
        let mut cached = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(bytes) = cached.upgrade() {
            return Ok(bytes);
        }
        let bytes = Arc::new(read()?);
        *cached = Arc::downgrade(&bytes);
        Ok(bytes)
    }
}

impl ModelFile {
    /// Calls `build` with the graph, reading it out of the archive if needed.
    pub fn with_source<R>(&self, build: impl FnOnce(OnnxSource<'_>) -> R) -> Result<R, StoreError> {
        match self {
            ModelFile::Path(path) => Ok(build(OnnxSource::File(path))),
            ModelFile::Archived {
                archive,
                format,
                entry,
                limit,
                read,
            } => {
                let bytes =
                    read.get_or_read(|| archive::read_entry(archive, *format, entry, *limit))?;
                Ok(build(OnnxSource::Bytes(&bytes)))
            }
        }
    }
}

/// Where the graph is read from, for logs: a path, or an archive and the
/// entry inside it.
impl std::fmt::Display for ModelFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ModelFile::Path(path) => write!(f, "{}", path.display()),
            ModelFile::Archived { archive, entry, .. } => {
                write!(f, "{} (entry {entry})", archive.display())
            }
        }
    }
}

/// A text file that came with a model, and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtraFile {
    pub origin: String,
    pub text: String,
}

/// The text files a built-in handler reads, each by its conventional name
/// beside the graph (or among a `.mar`'s extra files).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SideFiles {
    /// `index_to_name.json`: the image classifier's labels.
    pub labels: Option<ExtraFile>,
    /// `tokenizer.json`, `generation_config.json` and `config.json`: what
    /// the text generation handler reads of a Hugging Face export.
    pub tokenizer: Option<ExtraFile>,
    pub generation_config: Option<ExtraFile>,
    pub model_config: Option<ExtraFile>,
}

impl SideFiles {
    /// Reads each file through `read`, which gives `None` where it is absent.
    fn read(
        mut read: impl FnMut(&str) -> Result<Option<ExtraFile>, StoreError>,
    ) -> Result<SideFiles, StoreError> {
        Ok(SideFiles {
            labels: read("index_to_name.json")?,
            tokenizer: read("tokenizer.json")?,
            generation_config: read("generation_config.json")?,
            model_config: read("config.json")?,
        })
    }
}

/// The most bytes a side file may hold: a tokenizer's vocabulary can be tens
/// of megabytes, other side files are small.
fn side_file_limit(name: &str) -> u64 {
    if name == "tokenizer.json" {
        MAX_TOKENIZER_FILE
    } else {
        MAX_SIDE_FILE
    }
}

/// One loadable model version found in the store.
#[derive(Debug, Clone)]
pub struct ModelArtifact {
    pub name: String,
    /// The MANIFEST's `modelVersion`; `None` for plain directories.
    pub version: Option<String>,
    /// The store entry, for messages (`digits.mar`, `digits_v2`).
    pub origin: String,
    pub model_file: ModelFile,
    /// The MANIFEST's `handler`, if any.
    pub handler: Option<String>,
    pub config_file: Option<ExtraFile>,
    /// The files a built-in handler reads, where the model has them.
    pub side_files: SideFiles,
    /// The inputs and outputs a Triton `config.pbtxt` declares, checked
    /// against the graph at load.
    pub declared_io: Option<DeclaredIo>,
}

/// A store entry that could not be read; `name` is what it would have served as.
#[derive(Debug, Clone)]
pub struct BrokenEntry {
    pub name: String,
    pub error: StoreError,
}

/// Resolves `load_models` against the store into artifacts, keeping broken
/// entries (so they can be reported as failed models) without affecting others.
pub fn discover(
    store: Option<&Path>,
    models: &LoadModels,
    max_model_size: u64,
) -> Vec<Result<ModelArtifact, BrokenEntry>> {
    match models {
        LoadModels::None => Vec::new(),
        LoadModels::All => match store {
            Some(store) => all_entries(store, max_model_size),
            None => vec![Err(BrokenEntry {
                name: "all".into(),
                error: StoreError::new(
                    "load_models=all",
                    "no model store given; pass --model-store DIR",
                ),
            })],
        },
        LoadModels::List(list) => list
            .iter()
            .flat_map(|m| open_ref(store, m, max_model_size))
            .collect(),
    }
}

/// What one store entry holds: one model version, or several (a Triton model
/// directory), each loadable or broken on its own.
type Opened = Vec<Result<ModelArtifact, BrokenEntry>>;

/// Opens the model a declaration names: `source` is a path in the store, or
/// absolute; the model is served as `name`. Of a Triton model's versions,
/// `version` picks one (else the latest served).
pub fn open_declared(
    store: Option<&Path>,
    source: &str,
    name: &str,
    version: Option<&str>,
    max_model_size: u64,
) -> Result<ModelArtifact, BrokenEntry> {
    let model = ModelRef {
        name: Some(name.to_string()),
        archive: source.to_string(),
    };
    let mut opened = open_ref(store, &model, max_model_size);
    let last = opened.pop().expect("an entry opens as at least one result");
    if opened.is_empty() {
        return last;
    }
    opened.push(last);
    let Some(version) = version else {
        return opened.pop().expect("not empty");
    };
    let served =
        |o: &Result<ModelArtifact, BrokenEntry>| o.as_ref().ok().and_then(|a| a.version.clone());
    match opened
        .iter()
        .position(|o| served(o).as_deref() == Some(version))
    {
        Some(at) => opened.swap_remove(at),
        None => Err(BrokenEntry {
            name: name.to_string(),
            error: StoreError::new(
                source,
                format!(
                    "it serves versions {:?}, not version '{}'; declare one of them",
                    opened.iter().filter_map(served).collect::<Vec<_>>(),
                    excerpt(version)
                ),
            ),
        }),
    }
}

fn all_entries(store: &Path, max_model_size: u64) -> Opened {
    let mut paths: Vec<PathBuf> = match std::fs::read_dir(store) {
        Ok(dir) => dir.filter_map(Result::ok).map(|e| e.path()).collect(),
        Err(e) => {
            return vec![Err(BrokenEntry {
                name: "all".into(),
                error: StoreError::new(
                    &store.display().to_string(),
                    format!("cannot list the model store ({e}); {STORE_ADVICE}"),
                ),
            })];
        }
    };
    paths.sort();
    paths
        .into_iter()
        .filter(|p| !skipped(p))
        .flat_map(|p| open_entry(&p, None, max_model_size))
        .collect()
}

/// Whether `load_models=all` passes over `path`, saying why in a warning.
fn skipped(path: &Path) -> bool {
    let Some(why) = not_a_model(path) else {
        return false;
    };
    let entry = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    tracing::warn!(
        "model store entry '{}' skipped: not a model: {why}",
        excerpt(&entry)
    );
    true
}

/// Why `load_models=all` passes over a store entry; `None` for a model.
fn not_a_model(path: &Path) -> Option<&'static str> {
    if path.is_dir() {
        let model = path.join(archive::MANIFEST).is_file()
            || triton::is_model_dir(path)
            || single_onnx(path).is_some();
        return (!model).then_some(
            "the directory holds no model.onnx (nor exactly one *.onnx), MAR-INF/MANIFEST.json or config.pbtxt",
        );
    }
    let model = matches!(extension(path).as_deref(), Some("mar" | "onnx")) || is_tgz(path);
    (!model).then_some("expected a .mar, .tar.gz or .tgz archive, an .onnx file, or a directory")
}

/// `torch-model-archiver --archive-format tgz` writes `NAME.tar.gz`.
fn is_tgz(path: &Path) -> bool {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    name.ends_with(".tar.gz") || name.ends_with(".tgz")
}

fn open_ref(store: Option<&Path>, model: &ModelRef, max_model_size: u64) -> Opened {
    match locate(store, model) {
        Ok(path) => open_entry(&path, model.name.as_deref(), max_model_size),
        Err(detail) => vec![Err(BrokenEntry {
            name: model
                .name
                .clone()
                .unwrap_or_else(|| stem(Path::new(&model.archive))),
            error: StoreError::new(&model.archive, detail),
        })],
    }
}

/// Where a `load_models` entry or declaration source is on disk.
fn locate(store: Option<&Path>, model: &ModelRef) -> Result<PathBuf, String> {
    if model.archive.contains("://") {
        return Err(
            "ortserve never downloads models; copy the archive into the model store and name it by file name".into(),
        );
    }
    let path = if Path::new(&model.archive).is_absolute() {
        PathBuf::from(&model.archive)
    } else {
        let store = store.ok_or("no model store given; pass --model-store DIR")?;
        // The store's own entries may be symlinks (the operator's choice);
        // a name must not climb out of it.
        lexically_inside(&model.archive).map_err(|why| {
            format!(
                "the model path '{}' {why} (or give an absolute path)",
                excerpt(&model.archive)
            )
        })?;
        store.join(&model.archive)
    };
    if path.exists() {
        return Ok(path);
    }
    match store {
        _ if Path::new(&model.archive).is_absolute() => {
            Err(format!("{} does not exist", path.display()))
        }
        Some(store) if store.is_dir() => Err(format!(
            "not found in the model store ({}); the store holds {}",
            path.display(),
            store_listing(store)
        )),
        _ => Err(format!(
            "the model store {} is not a directory; {STORE_ADVICE}",
            store.unwrap_or(Path::new("")).display()
        )),
    }
}

/// What to do about a model store that is not there.
const STORE_ADVICE: &str = "set --model-store (model_store) to the directory that holds the .mar archives or model directories";

/// The first few entries of the store, for a message about a name that is
/// not in it.
fn store_listing(store: &Path) -> String {
    const SHOWN: usize = 10;
    let mut names: Vec<String> = std::fs::read_dir(store)
        .map(|dir| {
            dir.filter_map(Result::ok)
                .map(|e| excerpt(&e.file_name().to_string_lossy()))
                .collect()
        })
        .unwrap_or_default();
    if names.is_empty() {
        return "nothing".into();
    }
    names.sort();
    let more = names.len().saturating_sub(SHOWN);
    names.truncate(SHOWN);
    let shown = names.join(", ");
    match more {
        0 => shown,
        more => format!("{shown} and {more} more"),
    }
}

/// Reads one store entry; `name` overrides the name it declares.
fn open_entry(path: &Path, name: Option<&str>, max_model_size: u64) -> Opened {
    let origin = path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let opened = if path.is_dir() && path.join(archive::MANIFEST).is_file() {
        archive::open_unpacked(path, &origin).map(|a| vec![a])
    } else if path.is_dir() && triton::is_model_dir(path) {
        triton::open(path, &origin, name)
    } else if path.is_dir() {
        open_plain_dir(path, &origin).map(|a| vec![a])
    } else {
        match extension(path).as_deref() {
            Some("mar") => archive::open_zip(path, &origin, max_model_size).map(|a| vec![a]),
            Some("onnx") => Ok(vec![bare_onnx(path, &origin)]),
            _ if is_tgz(path) => archive::open_tgz(path, &origin, max_model_size).map(|a| vec![a]),
            _ => Err(StoreError::new(
                &origin,
                "not a model: expected a .mar, .tar.gz or .tgz archive, an .onnx file, or a directory holding model.onnx",
            )),
        }
    };
    let artifacts = match opened {
        Ok(artifacts) => artifacts,
        Err(error) => {
            return vec![Err(BrokenEntry {
                name: name.map_or_else(|| stem(path), str::to_string),
                error,
            })];
        }
    };
    if path.is_dir() {
        let handler = artifacts.first().and_then(|a| a.handler.as_deref());
        warn_ignored(&origin, dir_files(path).iter().map(String::as_str), handler);
    }
    artifacts
        .into_iter()
        .map(|mut artifact| {
            if let Some(name) = name {
                artifact.name = name.to_string();
            }
            check_name(&artifact)
                .and_then(|()| check_size(&artifact, max_model_size))
                .map_err(|error| BrokenEntry {
                    name: artifact.name.clone(),
                    error,
                })?;
            Ok(artifact)
        })
        .collect()
}

/// A graph on disk larger than `max_model_size` is refused before ONNX
/// Runtime reads it (archived graphs are checked as they are read).
fn check_size(artifact: &ModelArtifact, max_model_size: u64) -> Result<(), StoreError> {
    let ModelFile::Path(path) = &artifact.model_file else {
        return Ok(());
    };
    let size = std::fs::metadata(path).map_or(0, |m| m.len());
    if size > max_model_size {
        return Err(StoreError::new(
            &artifact.origin,
            too_big("the ONNX graph", size, max_model_size, "max_model_size"),
        ));
    }
    Ok(())
}

/// The message for a file over a size limit.
fn too_big(what: &str, size: u64, limit: u64, setting: &str) -> String {
    format!("{what} is {size} bytes, over the limit of {limit} ({setting})")
}

fn open_plain_dir(dir: &Path, origin: &str) -> Result<ModelArtifact, StoreError> {
    let model = single_onnx(dir).ok_or_else(|| {
        StoreError::new(origin, "the directory holds neither model.onnx (or exactly one *.onnx) nor MAR-INF/MANIFEST.json")
    })?;
    let model = inside(dir, &model.to_string_lossy(), origin, "the model file")?;
    Ok(ModelArtifact {
        name: stem(dir),
        version: None,
        origin: origin.to_string(),
        model_file: ModelFile::Path(model),
        handler: None,
        config_file: read_extra(dir, origin, "model-config.yaml")?,
        side_files: SideFiles::read(|name| read_extra(dir, origin, name))?,
        declared_io: None,
    })
}

fn bare_onnx(path: &Path, origin: &str) -> ModelArtifact {
    ModelArtifact {
        name: stem(path),
        version: None,
        origin: origin.to_string(),
        model_file: ModelFile::Path(path.to_path_buf()),
        handler: None,
        config_file: None,
        side_files: SideFiles::default(),
        declared_io: None,
    }
}

/// The file name of `model.onnx`, else of the only `*.onnx` in `dir`.
fn single_onnx(dir: &Path) -> Option<PathBuf> {
    let preferred = Path::new("model.onnx");
    if dir.join(preferred).is_file() {
        return Some(preferred.to_path_buf());
    }
    let mut found = std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file() && extension(p).as_deref() == Some("onnx"));
    let first = found.next()?;
    found
        .next()
        .is_none()
        .then(|| first.file_name().map(PathBuf::from))
        .flatten()
}

/// The names of the files directly in `dir`.
fn dir_files(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| e.path().is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// Why a file TorchServe would use has no effect here; `None` for the rest.
fn ignored(file: &str) -> Option<&'static str> {
    match file.rsplit('/').next().unwrap_or(file) {
        "requirements.txt" => Some(
            "TorchServe would pip-install it (install_py_dep_per_model); ortserve runs no Python and installs nothing",
        ),
        "setup_config.json" => Some(
            "only a Python handler reads it; give ortserve's built-in handlers their options in model-config.yaml",
        ),
        name if name.ends_with(".py") => {
            Some("ortserve runs no Python; its built-in handlers do the pre- and post-processing")
        }
        _ => None,
    }
}

/// One warning per file of a model that has no effect here. The manifest's
/// `handler` is left out: a Python handler fails the model with its own reason.
fn warn_ignored<'a>(origin: &str, files: impl Iterator<Item = &'a str>, handler: Option<&str>) {
    let handler = handler.map(|h| h.split(':').next().unwrap_or(h));
    for file in files.filter(|f| Some(*f) != handler) {
        if let Some(why) = ignored(file) {
            tracing::warn!("{}: '{}' is ignored: {why}", excerpt(origin), excerpt(file));
        }
    }
}

/// `file` in `dir`, read as text if it is there.
fn read_extra(dir: &Path, origin: &str, file: &str) -> Result<Option<ExtraFile>, StoreError> {
    let path = inside(dir, file, origin, "a side file")?;
    if !path.is_file() {
        return Ok(None);
    }
    let bytes = crate::config::read_bounded(&path, side_file_limit(file))
        .map_err(|e| StoreError::new(origin, format!("cannot read '{}': {e}", excerpt(file))))?;
    let text = String::from_utf8(bytes)
        .map_err(|_| StoreError::new(origin, format!("'{}' is not UTF-8 text", excerpt(file))))?;
    Ok(Some(ExtraFile {
        origin: format!("{origin}/{file}"),
        text,
    }))
}

/// Checks that a path an archive, manifest or configuration names stays in
/// `dir`: no absolute path, no `..`, and no symlink leading out. Returns the
/// path (which may not exist: callers decide whether that is an error).
fn inside(dir: &Path, relative: &str, origin: &str, what: &str) -> Result<PathBuf, StoreError> {
    lexically_inside(relative)
        .map_err(|why| StoreError::new(origin, format!("{what} '{}' {why}", excerpt(relative))))?;
    let path = dir.join(relative);
    let (Ok(root), Ok(resolved)) = (dir.canonicalize(), path.canonicalize()) else {
        return Ok(path);
    };
    if !resolved.starts_with(&root) {
        return Err(StoreError::new(
            origin,
            format!(
                "{what} '{}' resolves outside {origin} (a symlink leads out); \
                 keep every file of a model inside its archive or directory",
                excerpt(relative)
            ),
        ));
    }
    Ok(path)
}

/// A relative path that cannot climb out of its base by its own components.
fn lexically_inside(relative: &str) -> Result<(), &'static str> {
    let path = Path::new(relative);
    if relative.is_empty() {
        return Err("is empty");
    }
    if path.is_absolute() {
        return Err("is an absolute path; name files inside the archive or directory");
    }
    if path.components().any(|c| {
        matches!(
            c,
            Component::ParentDir | Component::RootDir | Component::Prefix(_)
        )
    }) {
        return Err("climbs out with '..'; name files inside the archive or directory");
    }
    Ok(())
}

/// TorchServe's rule (a letter first, then letters, digits, `_`, `-` or
/// `.`), at most 255 characters.
fn check_name(artifact: &ModelArtifact) -> Result<(), StoreError> {
    ModelId::check_name(&artifact.name).map_err(|why| {
        StoreError::new(
            &artifact.origin,
            format!("{why} (rename it with NAME=ARCHIVE)"),
        )
    })
}

fn extension(path: &Path) -> Option<String> {
    path.extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
}

/// The name a store entry serves as by default: its file name without the
/// extension (both of `.tar.gz`).
fn stem(path: &Path) -> String {
    let stem = path
        .file_stem()
        .map_or_else(String::new, |s| s.to_string_lossy().into_owned());
    match stem.strip_suffix(".tar") {
        Some(name) if is_tgz(path) => name.to_string(),
        _ => stem,
    }
}
