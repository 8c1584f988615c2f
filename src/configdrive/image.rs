//! Drive images: files to ISO 9660 or VFAT bytes, and back. Reading is for untrusted input.
//! (Skeleton: filled in by the ConfigDrive work.)

use super::{DriveFile, Format};

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
    #[error("{0}")]
    Bad(String),
}

/// An image of `format` labelled `label` holding `files`. Deterministic.
pub fn write(_format: Format, _label: &str, _files: &[DriveFile]) -> Result<Vec<u8>, ImageError> {
    Err(ImageError::Bad("writing images is not built yet".into()))
}

/// Every file of an ISO 9660 or VFAT image. Untrusted input.
pub fn read(_bytes: &[u8]) -> Result<Image, ImageError> {
    Err(ImageError::Bad("reading images is not built yet".into()))
}

pub const MAX_IMAGE_BYTES: u64 = 64 << 20;

/// placeholder
pub fn read_path(_p: &std::path::Path) -> Result<Image, ImageError> {
    Err(ImageError::Bad("not built yet".into()))
}

/// placeholder
pub fn probe_label(_p: &std::path::Path) -> Result<Option<String>, ImageError> {
    Ok(None)
}
