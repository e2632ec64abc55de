//! `.tar.gz` model archives, as `torch-model-archiver --archive-format tgz`
//! writes them: a `.mar`'s files under one top folder (`NAME/`), read in
//! place as a zip is, never unpacked to disk.
//!
//! A gzip stream cannot be read from the middle, so every read passes over
//! the archive from its start. Opening passes over all of it once and refuses
//! the archive whole for any entry that could land outside it if it were
//! unpacked (an absolute path, `..`, a link), that is not a plain file or
//! directory, or that repeats a path; and for files that together hold more
//! than `max_model_size`.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read};
use std::ops::ControlFlow;
use std::path::{Component, Path, PathBuf};

use flate2::read::GzDecoder;

use super::archive::{ArchiveFormat, Files, Limit, MANIFEST, MAX_FILES, read_limited};
use super::{MAX_SIDE_FILE, StoreError, lexically_inside, too_big};
use crate::types::excerpt;

/// What a tar holds besides its files' bytes (headers, long names, padding)
/// may add this much to `max_model_size` before the stream is cut off.
const HEADROOM: u64 = MAX_SIDE_FILE;

/// An indexed `.tar.gz`: its files, checked.
pub(super) struct Tgz {
    path: PathBuf,
    origin: String,
    /// The folder the model's files sit under, with its `/`; empty when the
    /// manifest sits at the top.
    root: String,
    /// Each plain file's path in the tar, and its size.
    files: BTreeMap<String, u64>,
    max_model_size: u64,
}

impl Tgz {
    /// Passes over the whole archive, checking every entry and noting its files.
    pub(super) fn open(path: &Path, origin: &str, max_model_size: u64) -> Result<Tgz, StoreError> {
        let mut files = BTreeMap::new();
        let mut total: u64 = 0;
        each_entry(path, origin, max_model_size, |entry| {
            let Some((name, size)) = plain_file(entry, origin)? else {
                return Ok(ControlFlow::Continue(()));
            };
            total = total.saturating_add(size);
            if total > max_model_size {
                return Err(StoreError::new(
                    origin,
                    too_big(
                        "the archive's files together",
                        total,
                        max_model_size,
                        "max_model_size",
                    ),
                ));
            }
            if files.len() == MAX_FILES {
                return Err(StoreError::new(
                    origin,
                    format!("the archive holds more than {MAX_FILES} files; a model needs a few"),
                ));
            }
            if files.insert(name, size).is_some() {
                return Err(refuse(
                    origin,
                    entry,
                    "appears twice; the archive is damaged or crafted",
                ));
            }
            Ok(ControlFlow::Continue(()))
        })?;
        Ok(Tgz {
            path: path.to_path_buf(),
            origin: origin.to_string(),
            root: root_folder(&files),
            files,
            max_model_size,
        })
    }
}

impl Files for Tgz {
    const FORMAT: ArchiveFormat = ArchiveFormat::Tgz;

    fn names(&self) -> Vec<String> {
        self.files
            .keys()
            .filter_map(|path| path.strip_prefix(&self.root))
            .map(str::to_string)
            .collect()
    }

    fn size(&mut self, name: &str) -> Result<Option<u64>, StoreError> {
        Ok(self.files.get(&self.entry(name)).copied())
    }

    fn read(&mut self, name: &str, limit: &Limit) -> Result<Option<Vec<u8>>, StoreError> {
        let entry = self.entry(name);
        if !self.files.contains_key(&entry) {
            return Ok(None);
        }
        read_file(&self.path, &self.origin, &entry, limit, self.max_model_size)
    }

    fn entry(&self, name: &str) -> String {
        format!("{}{name}", self.root)
    }
}

/// Reads the plain file at `entry` (a path in the tar) within `limit`, on a
/// stream bounded by `max_model_size`; `None` when it is not there.
pub(super) fn read_file(
    path: &Path,
    origin: &str,
    entry: &str,
    limit: &Limit,
    max_model_size: u64,
) -> Result<Option<Vec<u8>>, StoreError> {
    let mut found = None;
    each_entry(path, origin, max_model_size, |file| {
        if !file.header().entry_type().is_file() || normalised(file) != entry {
            return Ok(ControlFlow::Continue(()));
        }
        let declared = file.size();
        found = Some(read_limited(origin, file, declared, limit)?);
        Ok(ControlFlow::Break(()))
    })?;
    Ok(found)
}

/// The decompressed tar.
type Stream = Capped<GzDecoder<File>>;

/// Calls `visit` with each entry until it breaks; the stream fails past
/// `most` bytes plus [`HEADROOM`].
fn each_entry(
    path: &Path,
    origin: &str,
    most: u64,
    mut visit: impl FnMut(&mut tar::Entry<'_, Stream>) -> Result<ControlFlow<()>, StoreError>,
) -> Result<(), StoreError> {
    let file =
        File::open(path).map_err(|e| StoreError::new(origin, format!("cannot open: {e}")))?;
    let limit = most.saturating_add(HEADROOM);
    let mut tar = tar::Archive::new(Capped {
        inner: GzDecoder::new(file),
        left: limit,
        limit,
    });
    let invalid =
        |e: io::Error| StoreError::new(origin, format!("not a valid .tar.gz archive: {e}"));
    for entry in tar.entries().map_err(invalid)? {
        if visit(&mut entry.map_err(invalid)?)?.is_break() {
            break;
        }
    }
    Ok(())
}

/// A plain file's normalised path and size; `None` for a directory; an error
/// for an entry that could land outside the archive if it were unpacked, or
/// that is neither.
fn plain_file(
    entry: &tar::Entry<'_, Stream>,
    origin: &str,
) -> Result<Option<(String, u64)>, StoreError> {
    let raw = entry.path_bytes();
    lexically_inside(&String::from_utf8_lossy(&raw)).map_err(|why| refuse(origin, entry, why))?;
    let kind = entry.header().entry_type();
    if kind.is_symlink() || kind.is_hard_link() {
        let target = entry.link_name_bytes().unwrap_or_default();
        return Err(refuse(
            origin,
            entry,
            &format!(
                "is a link to '{}'; ortserve follows no links in archives: archive the file \
                 itself (tar --dereference)",
                excerpt(&String::from_utf8_lossy(&target))
            ),
        ));
    }
    if kind.is_dir() || kind.is_pax_global_extensions() {
        return Ok(None);
    }
    if !kind.is_file() {
        return Err(refuse(origin, entry, "is not a plain file or directory"));
    }
    Ok(Some((normalised(entry), entry.size())))
}

/// The reason an entry makes the archive unusable, naming the entry.
fn refuse(origin: &str, entry: &tar::Entry<'_, Stream>, why: &str) -> StoreError {
    let raw = entry.path_bytes();
    StoreError::new(
        origin,
        format!(
            "the archive entry '{}' {why}",
            excerpt(&String::from_utf8_lossy(&raw))
        ),
    )
}

/// An entry's path as the manifest names files: `./a//b` is `a/b`.
fn normalised(entry: &tar::Entry<'_, Stream>) -> String {
    let raw = entry.path_bytes();
    let text = String::from_utf8_lossy(&raw);
    Path::new(text.as_ref())
        .components()
        .filter_map(|c| match c {
            Component::Normal(part) => Some(part.to_string_lossy()),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// The folder the model's files sit under: none when the manifest is at the
/// top, else the one top folder every file shares (as torch-model-archiver
/// writes it, named after the model).
fn root_folder(files: &BTreeMap<String, u64>) -> String {
    if files.contains_key(MANIFEST) {
        return String::new();
    }
    let mut tops = files
        .keys()
        .map(|path| path.split_once('/').map_or("", |(top, _)| top));
    match tops.next() {
        Some(top) if !top.is_empty() && tops.all(|t| t == top) => format!("{top}/"),
        _ => String::new(),
    }
}

/// The decompressed stream, failing once more than `limit` bytes came out of
/// it: this bounds what the tar reader itself keeps (long names, extension
/// headers) as well as what is skipped.
struct Capped<R> {
    inner: R,
    left: u64,
    limit: u64,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.left = self.left.checked_sub(n as u64).ok_or_else(|| {
            io::Error::other(format!(
                "it inflates past {} bytes (max_model_size and {HEADROOM} bytes for headers); \
                 the archive is damaged or crafted",
                self.limit
            ))
        })?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `.tar.gz` of `files` (path, bytes).
    fn tgz(files: &[(&str, &[u8])]) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        let gzip = flate2::write::GzEncoder::new(file.reopen().unwrap(), Default::default());
        let mut tar = tar::Builder::new(gzip);
        for (path, bytes) in files {
            let mut header = tar::Header::new_ustar();
            header.set_size(bytes.len() as u64);
            header.set_mode(0o644);
            tar.append_data(&mut header, path, *bytes).unwrap();
        }
        tar.into_inner().unwrap().finish().unwrap();
        file
    }

    fn graph_limit(bytes: u64) -> Limit<'static> {
        Limit {
            what: "the ONNX graph",
            bytes,
            setting: "max_model_size",
        }
    }

    #[test]
    fn files_sit_under_the_one_top_folder_and_are_read_within_their_limit() {
        let archive = tgz(&[
            ("m/MAR-INF/MANIFEST.json", b"{}"),
            ("m/model.onnx", &[7; 50]),
        ]);
        let mut files = Tgz::open(archive.path(), "m.tar.gz", 100).unwrap();
        assert_eq!(files.names(), ["MAR-INF/MANIFEST.json", "model.onnx"]);
        assert_eq!(files.size("model.onnx").unwrap(), Some(50));
        assert_eq!(
            files.read("model.onnx", &graph_limit(100)).unwrap(),
            Some(vec![7; 50])
        );
        assert_eq!(files.read("absent", &graph_limit(100)).unwrap(), None);
        let error = files.read("model.onnx", &graph_limit(20)).unwrap_err();
        assert!(
            error.detail.contains("is 50 bytes, over the limit of 20"),
            "{error}"
        );
    }

    #[test]
    fn files_together_over_max_model_size_or_repeated_are_refused() {
        let archive = tgz(&[("a", &[0; 60]), ("b", &[0; 60])]);
        let error = Tgz::open(archive.path(), "m.tar.gz", 100).err().unwrap();
        assert!(
            error
                .detail
                .contains("the archive's files together is 120 bytes, over the limit of 100"),
            "{error}"
        );
        let archive = tgz(&[("a", b"1"), ("a", b"2")]);
        let error = Tgz::open(archive.path(), "m.tar.gz", 100).err().unwrap();
        assert!(
            error.detail.contains("the archive entry 'a' appears twice"),
            "{error}"
        );
    }

    #[test]
    fn the_stream_is_cut_off_past_its_limit() {
        let mut capped = Capped {
            inner: &[0u8; 100][..],
            left: 10,
            limit: 10,
        };
        let error = capped.read_to_end(&mut Vec::new()).unwrap_err();
        assert!(
            error.to_string().contains("inflates past 10 bytes"),
            "{error}"
        );
    }
}
