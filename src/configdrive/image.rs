//! Drive images: files to ISO 9660 or VFAT bytes, and back.
//!
//! Contract:
//! - [`write`] turns a label and a list of [`DriveFile`]s into image bytes. It is deterministic:
//!   the same input gives the same bytes (fixed dates 2000-01-01T00:00:00Z, a volume serial
//!   derived from the input, entries in sorted order). ISO 9660 images carry Joliet and Rock
//!   Ridge names and are made by xorriso (see `docs/configdrive-image.md` for why); VFAT images
//!   are made in memory by the `fatfs` crate. Both store the label as given (`config-2`,
//!   `cidata`), which is what `blkid -o value -s LABEL` prints and what cloud-init looks for.
//! - [`read`] and [`read_path`] take untrusted input and return the label and every regular
//!   file. They never panic, never loop and never allocate more than the image's size plus
//!   bounded bookkeeping: at most [`MAX_IMAGE_BYTES`], [`MAX_FILES`] files, [`MAX_ENTRIES`]
//!   directory entries, [`MAX_DEPTH`] directory levels, and a directory seen twice is an error.
//!   Both readers are our own (`iso`, `vfat`): the crates we fuzzed panicked on hostile images.
//!
//! Data flows `&[DriveFile] -> write -> bytes` to build and `bytes -> read -> Image` to read
//! back; nothing here knows what the files mean (that is [`super::content`]).

mod iso;
mod vfat;

use std::collections::BTreeSet;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::{DriveFile, Format};

/// The largest image [`read`] and [`read_path`] accept, and [`write`] produces: 64 MiB.
pub const MAX_IMAGE_BYTES: u64 = 64 * 1024 * 1024;
/// The most regular files an image may hold.
pub const MAX_FILES: usize = 1024;
/// The most directory entries (files, directories and anything else) a reader looks at.
pub const MAX_ENTRIES: usize = 4096;
/// The deepest directory level a file may sit at (`a/b/c` is at depth 3).
pub const MAX_DEPTH: usize = 8;
/// The largest directory: 1,024 entries of the longest names fit in a quarter of it.
pub const MAX_DIR_BYTES: u64 = 1024 * 1024;
/// The most directory bytes a reader reads in all, so that directories that overlap cannot
/// make a walk slow.
pub const MAX_TOTAL_DIR_BYTES: u64 = 16 * 1024 * 1024;
/// The longest name of one path component, in characters.
pub const MAX_NAME_CHARS: usize = 64;

/// The fixed date every written image carries: 2000-01-01T00:00:00Z, as seconds since 1970.
pub const FIXED_EPOCH: u64 = 946_684_800;

/// What [`read`] found in an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    pub format: Format,
    pub label: String,
    /// Every regular file, by path, sorted by path.
    pub files: Vec<DriveFile>,
}

/// Why an image could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// Neither an ISO 9660 volume descriptor nor a FAT boot sector.
    #[error("not an ISO 9660 or FAT image (no volume descriptor at sector 16, no FAT boot sector)")]
    UnknownFormat,
    /// The image (or the files to write) is larger than [`MAX_IMAGE_BYTES`].
    #[error("image is {} MiB, more than the 64 MiB a ConfigDrive may have", mib(*.0))]
    TooLarge(u64),
    /// The image is damaged or hostile; the text names what is wrong.
    #[error("bad {format} image: {what}")]
    Corrupt { format: &'static str, what: String },
    /// The label cannot be stored.
    #[error("label {0:?} is not 1 to 11 ASCII letters, digits, '-' or '_'")]
    BadLabel(String),
    /// A file's path cannot be stored.
    #[error("file path {path:?} {why}")]
    BadPath { path: String, why: &'static str },
    /// xorriso is needed for ISO images and is missing.
    #[error("xorriso is not installed; install the xorriso package, or use --format vfat")]
    XorrisoMissing,
    /// xorriso ran and failed, or ran too long.
    #[error("xorriso failed: {0}")]
    Xorriso(String),
    /// The in-memory FAT writer failed.
    #[error("cannot build the FAT image: {0}")]
    Fat(String),
    /// Reading or writing the local file system failed.
    #[error("{what} {path}: {source}")]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },
    /// [`read_path`] was given something that is not a regular file.
    #[error("{path} is not a regular file (it is a {kind})")]
    NotAFile { path: PathBuf, kind: &'static str },
    /// [`read_path`]'s image is bad; the path says which.
    #[error("{path}: {source}")]
    InFile {
        path: PathBuf,
        #[source]
        source: Box<ImageError>,
    },
}

fn mib(bytes: u64) -> u64 {
    bytes.div_ceil(1024 * 1024)
}

/// An image of `format` labelled `label` holding `files`. Deterministic: the same arguments give
/// the same bytes, whatever the order of `files`.
pub fn write(format: Format, label: &str, files: &[DriveFile]) -> Result<Vec<u8>, ImageError> {
    check_label(label)?;
    let files = checked_files(files)?;
    match format {
        Format::Iso => iso::write(label, &files),
        Format::Vfat => vfat::write(label, &files),
    }
}

/// Every regular file of an ISO 9660 or VFAT image, and its label. Untrusted input: a bad image
/// is an error, never a panic or a hang.
pub fn read(bytes: &[u8]) -> Result<Image, ImageError> {
    let len = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
    if len > MAX_IMAGE_BYTES {
        return Err(ImageError::TooLarge(len));
    }
    if iso::is_iso(bytes) {
        iso::read(bytes)
    } else if vfat::is_fat(bytes) {
        vfat::read(bytes)
    } else {
        Err(ImageError::UnknownFormat)
    }
}

/// [`read`] of the file at `path`. Refuses anything but a regular file of at most
/// [`MAX_IMAGE_BYTES`] before reading a byte of it; a FIFO is opened without blocking and
/// refused. Errors name the path.
pub fn read_path(path: &Path) -> Result<Image, ImageError> {
    let io = |what, source| ImageError::Io { what, path: path.to_path_buf(), source };
    let (file, meta) = open_untrusted(path)?;
    let kind = meta.file_type();
    if !kind.is_file() {
        let kind = if kind.is_dir() {
            "directory"
        } else if kind.is_fifo() {
            "FIFO"
        } else if kind.is_socket() {
            "socket"
        } else if kind.is_block_device() {
            "block device"
        } else if kind.is_char_device() {
            "character device"
        } else {
            "special file"
        };
        return Err(ImageError::NotAFile { path: path.to_path_buf(), kind });
    }
    let in_file = |e: ImageError| ImageError::InFile { path: path.to_path_buf(), source: Box::new(e) };
    if meta.len() > MAX_IMAGE_BYTES {
        return Err(in_file(ImageError::TooLarge(meta.len())));
    }
    // The file may grow between stat and read: read at most one byte past the limit.
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    file.take(MAX_IMAGE_BYTES + 1).read_to_end(&mut bytes).map_err(|e| io("cannot read", e))?;
    read(&bytes).map_err(in_file)
}

/// Opens `path` for reading without blocking (a FIFO with no writer returns at once instead
/// of waiting for one) and without taking a terminal, and stats what was opened.
fn open_untrusted(path: &Path) -> Result<(File, std::fs::Metadata), ImageError> {
    let io = |what, source| ImageError::Io { what, path: path.to_path_buf(), source };
    let file = File::options()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| io("cannot open", e))?;
    let meta = file.metadata().map_err(|e| io("cannot stat", e))?;
    Ok((file, meta))
}

/// Labels both formats can store as given: FAT allows 11 bytes, and cloud-init's labels
/// (`config-2`, `cidata`) fit.
fn check_label(label: &str) -> Result<(), ImageError> {
    let ok = (1..=11).contains(&label.len())
        && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok { Ok(()) } else { Err(ImageError::BadLabel(label.to_string())) }
}

/// The files sorted by path, after checking that every path can be stored the same way in
/// both formats and read back unchanged, and that the total fits.
fn checked_files(files: &[DriveFile]) -> Result<Vec<&DriveFile>, ImageError> {
    let bad = |path: &str, why| ImageError::BadPath { path: path.to_string(), why };
    if files.len() > MAX_FILES {
        return Err(bad(&files[MAX_FILES].path, "is one file too many (at most 1024)"));
    }
    let mut total: u64 = 0;
    for f in files {
        let parts: Vec<&str> = f.path.split('/').collect();
        if parts.len() > MAX_DEPTH {
            return Err(bad(&f.path, "is more than 8 directories deep"));
        }
        for part in &parts {
            if part.is_empty() || *part == "." || *part == ".." {
                return Err(bad(&f.path, "has an empty, '.' or '..' component"));
            }
            if part.chars().count() > MAX_NAME_CHARS {
                return Err(bad(&f.path, "has a component longer than 64 characters"));
            }
            if !part.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')) {
                return Err(bad(
                    &f.path,
                    "has a character other than ASCII letters, digits, '-', '_' and '.'",
                ));
            }
        }
        total = total.saturating_add(u64::try_from(f.data.len()).unwrap_or(u64::MAX));
    }
    if total > MAX_IMAGE_BYTES {
        return Err(ImageError::TooLarge(total));
    }
    let mut sorted: Vec<&DriveFile> = files.iter().collect();
    sorted.sort_by(|a, b| a.path.cmp(&b.path));
    // Duplicates, and a file that is also another file's directory ("a" and "a/b").
    let paths: BTreeSet<&str> = sorted.iter().map(|f| f.path.as_str()).collect();
    if paths.len() != sorted.len() {
        let dup = sorted.windows(2).find(|w| w[0].path == w[1].path);
        return Err(bad(dup.map_or("", |w| w[0].path.as_str()), "is given twice"));
    }
    for f in &sorted {
        let mut prefix = f.path.as_str();
        while let Some((dir, _)) = prefix.rsplit_once('/') {
            if paths.contains(dir) {
                return Err(bad(dir, "is both a file and a directory"));
            }
            prefix = dir;
        }
    }
    Ok(sorted)
}

/// 32-bit FNV-1a over the label and the files: the FAT volume serial, so that two different
/// drives are unlikely to share one while the same drive always gets the same.
fn serial(label: &str, files: &[&DriveFile]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h ^= u32::from(*b);
            h = h.wrapping_mul(0x0100_0193);
        }
    };
    eat(label.as_bytes());
    for f in files {
        eat(&[0]);
        eat(f.path.as_bytes());
        eat(&[0]);
        eat(&f.data);
    }
    h
}

/// Bookkeeping shared by both readers: the files found so far, under the global bounds.
struct Collector {
    format: &'static str,
    files: std::collections::BTreeMap<String, Vec<u8>>,
    entries: usize,
    total: u64,
}

impl Collector {
    fn new(format: &'static str) -> Self {
        Collector { format, files: Default::default(), entries: 0, total: 0 }
    }

    fn corrupt(&self, what: impl Into<String>) -> ImageError {
        ImageError::Corrupt { format: self.format, what: what.into() }
    }

    /// Counts one directory entry against [`MAX_ENTRIES`].
    fn entry(&mut self) -> Result<(), ImageError> {
        self.entries += 1;
        if self.entries > MAX_ENTRIES {
            return Err(self.corrupt("more than 4096 directory entries"));
        }
        Ok(())
    }

    /// Checks a name read from the image and joins it to its directory's path.
    fn join(&self, dir: &str, name: &str, depth: usize) -> Result<String, ImageError> {
        if name.is_empty()
            || name == "."
            || name == ".."
            || name.contains(['/', '\0'])
            || name.chars().count() > 255
        {
            return Err(self.corrupt(format!("a directory entry has the bad name {name:?}")));
        }
        if depth > MAX_DEPTH {
            return Err(self.corrupt("directories nest more than 8 deep"));
        }
        Ok(if dir.is_empty() { name.to_string() } else { format!("{dir}/{name}") })
    }

    /// Checks a file's size before its bytes are copied.
    fn reserve(&mut self, path: &str, size: u64) -> Result<(), ImageError> {
        if self.files.len() >= MAX_FILES {
            return Err(self.corrupt("more than 1024 files"));
        }
        if self.files.contains_key(path) {
            return Err(self.corrupt(format!("{path} is listed twice")));
        }
        self.total = self.total.saturating_add(size);
        if self.total > MAX_IMAGE_BYTES {
            return Err(self.corrupt("its files add up to more than 64 MiB"));
        }
        Ok(())
    }

    fn add(&mut self, path: String, data: Vec<u8>) {
        self.files.insert(path, data);
    }

    fn finish(self, format: Format, label: String) -> Image {
        Image {
            format,
            label,
            files: self.files.into_iter().map(|(path, data)| DriveFile { path, data }).collect(),
        }
    }
}

/// The volume label of the image at `path`, cheaply, for telling a ConfigDrive from other
/// cdroms (an installer ISO): `Ok(None)` for anything that is not an image hvroute could read
/// (not a regular file, larger than [`MAX_IMAGE_BYTES`], neither ISO 9660 nor FAT). An ISO's
/// label comes from its primary volume descriptor (the first 34 KiB); a FAT image, small by
/// nature, is read whole. `Err` only when the file cannot be opened or read.
pub fn probe_label(path: &Path) -> Result<Option<String>, ImageError> {
    let io = |what, source| ImageError::Io { what, path: path.to_path_buf(), source };
    let (file, meta) = open_untrusted(path)?;
    if !meta.file_type().is_file() || meta.len() > MAX_IMAGE_BYTES {
        return Ok(None);
    }
    let mut head = Vec::with_capacity(iso::PROBE_BYTES);
    file.take(iso::PROBE_BYTES as u64).read_to_end(&mut head).map_err(|e| io("cannot read", e))?;
    if iso::is_iso(&head) {
        return Ok(iso::label(&head));
    }
    if !vfat::is_fat(&head) {
        return Ok(None);
    }
    match read_path(path) {
        Ok(img) => Ok(Some(img.label)),
        // A damaged FAT image says nothing about its label.
        Err(ImageError::InFile { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}
