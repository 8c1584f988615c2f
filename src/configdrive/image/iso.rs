//! ISO 9660: written by xorriso (Joliet and Rock Ridge names, fixed dates), read by a bounded
//! reader of our own that prefers Joliet names, then Rock Ridge `NM`, then plain ISO 9660 names.
//!
//! The reader checks every offset against the buffer, visits each directory extent once,
//! and counts entries, depth, directory bytes and file bytes against the limits in
//! [`super`]; a hostile image is an [`ImageError`], never a panic or a loop.

use std::collections::BTreeSet;
use std::fs;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{
    Collector, FIXED_EPOCH, ImageError, MAX_DEPTH, MAX_DIR_BYTES, MAX_IMAGE_BYTES, MAX_TOTAL_DIR_BYTES,
};
use crate::configdrive::{DriveFile, Format};

const SECTOR: usize = 2048;
/// The most volume descriptors looked at before the terminator.
const MAX_DESCRIPTORS: usize = 32;
/// How long xorriso may run: a drive of a few MiB takes well under a second.
const XORRISO_TIMEOUT: Duration = Duration::from_secs(60);
/// [`FIXED_EPOCH`] as xorriso's `YYYYMMDDhhmmsscc` (UTC).
const XORRISO_DATE: &str = "2000010100000000";

/// How many bytes of an image [`label`] needs: up to and including the primary volume
/// descriptor at sector 16.
pub(super) const PROBE_BYTES: usize = 17 * SECTOR;

/// The label in the primary volume descriptor at sector 16, if `head` reaches it and it is
/// one; `None` otherwise. A quick look for `probe_label`, not a validation of the image.
pub(super) fn label(head: &[u8]) -> Option<String> {
    let pvd = head.get(16 * SECTOR..17 * SECTOR)?;
    if pvd[0] != 1 || &pvd[1..6] != b"CD001" {
        return None;
    }
    Some(String::from_utf8_lossy(&pvd[40..72]).trim_end_matches([' ', '\0']).to_string())
}

/// True if the image has an ISO 9660 volume descriptor at sector 16.
pub(super) fn is_iso(bytes: &[u8]) -> bool {
    bytes.get(16 * SECTOR + 1..16 * SECTOR + 6) == Some(b"CD001".as_slice())
}

/// The ISO 9660 image of `files` (sorted, checked) labelled `label`, made by xorriso from a
/// staging directory, with every date set to 2000-01-01 and Rock Ridge owners and modes
/// normalised (`-r`), so that the same input gives the same bytes.
pub(super) fn write(label: &str, files: &[&DriveFile]) -> Result<Vec<u8>, ImageError> {
    let io = |what, path: &std::path::Path| {
        let path = path.to_path_buf();
        move |source| ImageError::Io { what, path, source }
    };
    let tmp = tempfile::Builder::new()
        .prefix("hvroute-iso.")
        .tempdir()
        .map_err(io("cannot create a temporary directory in", &std::env::temp_dir()))?;
    let stage = tmp.path().join("stage");
    fs::create_dir(&stage).map_err(io("cannot create", &stage))?;
    for f in files {
        let path = stage.join(&f.path);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(io("cannot create", parent))?;
        }
        fs::write(&path, &f.data).map_err(io("cannot write", &path))?;
    }
    let out = tmp.path().join("drive.iso");
    let log_path = tmp.path().join("xorriso.log");
    let log = fs::File::create(&log_path).map_err(io("cannot create", &log_path))?;
    let mut child = Command::new("xorriso")
        .args(["-as", "mkisofs", "-quiet", "-no-pad", "-J", "-r", "-V", label])
        .arg(format!("--modification-date={XORRISO_DATE}"))
        .args(["--set_all_file_dates", XORRISO_DATE])
        .arg("-o")
        .arg(&out)
        .arg(&stage)
        .env("SOURCE_DATE_EPOCH", FIXED_EPOCH.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => ImageError::XorrisoMissing,
            _ => ImageError::Xorriso(format!("cannot start it: {e}")),
        })?;
    let deadline = Instant::now() + XORRISO_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(ImageError::Xorriso(format!(
                    "it ran for more than {} s and was killed",
                    XORRISO_TIMEOUT.as_secs()
                )));
            }
            Err(e) => return Err(ImageError::Xorriso(format!("cannot wait for it: {e}"))),
        }
    };
    if !status.success() {
        let log = fs::read_to_string(&log_path).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(3).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(ImageError::Xorriso(format!("{status}: {}", tail.join(" / "))));
    }
    let len = fs::metadata(&out).map_err(io("cannot stat", &out))?.len();
    if len > MAX_IMAGE_BYTES {
        return Err(ImageError::TooLarge(len));
    }
    fs::read(&out).map_err(io("cannot read", &out))
}

/// Which names a directory tree carries.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Names {
    /// UCS-2 big-endian names of the Joliet supplementary volume descriptor.
    Joliet,
    /// Rock Ridge `NM` entries where present, else the plain name; `skip` is the SUSP skip
    /// length from the root's `SP` entry.
    RockRidge { skip: usize },
    /// ISO 9660 names only: `NAME.EXT;1` becomes `name.ext`.
    Plain,
}

/// One directory record, borrowed from the image.
struct Record<'a> {
    len: usize,
    extent: u32,
    ear_len: u8,
    size: u32,
    flags: u8,
    interleaved: bool,
    name: &'a [u8],
    system_use: &'a [u8],
}

impl Record<'_> {
    const DIRECTORY: u8 = 0x02;
    const ASSOCIATED: u8 = 0x04;
    const MULTI_EXTENT: u8 = 0x80;

    fn is_dot(&self) -> bool {
        self.name == [0] || self.name == [1]
    }
}

fn u32_le(b: &[u8], at: usize) -> Option<u32> {
    let bytes = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes(bytes.try_into().ok()?))
}

fn u16_le(b: &[u8], at: usize) -> Option<u16> {
    let bytes = b.get(at..at.checked_add(2)?)?;
    Some(u16::from_le_bytes(bytes.try_into().ok()?))
}

/// Parses the directory record at the start of `b`.
fn record(b: &[u8]) -> Option<Record<'_>> {
    let len = usize::from(*b.first()?);
    if len < 34 || len > b.len() {
        return None;
    }
    let b = &b[..len];
    let name_len = usize::from(b[32]);
    let name_end = 33 + name_len;
    if name_end > len {
        return None;
    }
    // A padding byte follows a name of even length.
    let su_start = (name_end + usize::from(name_len % 2 == 0)).min(len);
    Some(Record {
        len,
        extent: u32_le(b, 2)?,
        ear_len: b[1],
        size: u32_le(b, 10)?,
        flags: b[25],
        interleaved: b[26] != 0 || b[27] != 0,
        name: &b[33..name_end],
        system_use: &b[su_start..],
    })
}

/// The System Use Sharing Protocol entries of a record: `(signature, data after the 4-byte
/// header)`. Stops at the first malformed entry or `ST`.
fn susp_entries(su: &[u8]) -> impl Iterator<Item = ([u8; 2], &[u8])> {
    let mut rest = su;
    std::iter::from_fn(move || {
        if rest.len() < 4 {
            return None;
        }
        let len = usize::from(rest[2]);
        if len < 4 || len > rest.len() {
            return None;
        }
        let sig = [rest[0], rest[1]];
        let data = &rest[4..len];
        rest = &rest[len..];
        if sig == *b"ST" { None } else { Some((sig, data)) }
    })
}

/// The name a record stands for in this tree, or `None` for an entry that is not a regular
/// file or directory (Rock Ridge symlinks, relocation links).
fn record_name(rec: &Record<'_>, names: Names) -> Option<String> {
    match names {
        Names::Joliet => {
            let units = rec.name.chunks_exact(2).map(|c| u16::from_be_bytes([c[0], c[1]]));
            let name: String =
                char::decode_utf16(units).map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER)).collect();
            Some(strip_version(&name).to_string())
        }
        Names::RockRidge { skip } => {
            let su = rec.system_use.get(skip..).unwrap_or_default();
            let mut nm: Option<Vec<u8>> = None;
            for (sig, data) in susp_entries(su) {
                match &sig {
                    b"SL" | b"CL" | b"RE" => return None,
                    b"NM" => {
                        let (flags, part) = data.split_first()?;
                        // CURRENT and PARENT carry no name.
                        if flags & 0x06 == 0 {
                            nm.get_or_insert_with(Vec::new).extend_from_slice(part);
                        }
                    }
                    _ => {}
                }
            }
            match nm {
                Some(nm) => Some(String::from_utf8_lossy(&nm).into_owned()),
                None => Some(plain_name(rec.name)),
            }
        }
        Names::Plain => Some(plain_name(rec.name)),
    }
}

fn strip_version(name: &str) -> &str {
    name.split_once(';').map_or(name, |(n, _)| n)
}

/// `META_DAT.JSO;1` -> `meta_dat.jso`; `OPENSTAC` -> `openstac`; `EMPTY.;1` -> `empty`.
fn plain_name(raw: &[u8]) -> String {
    let name = String::from_utf8_lossy(raw);
    strip_version(&name).trim_end_matches('.').to_ascii_lowercase()
}

/// The label and every regular file of an ISO 9660 image.
pub(super) fn read(bytes: &[u8]) -> Result<super::Image, ImageError> {
    let mut c = Collector::new("ISO 9660");
    let mut primary: Option<&[u8]> = None;
    let mut joliet: Option<&[u8]> = None;
    for i in 0..MAX_DESCRIPTORS {
        let start = (16 + i) * SECTOR;
        let d = bytes
            .get(start..start + SECTOR)
            .ok_or_else(|| c.corrupt("it ends inside its volume descriptors"))?;
        if &d[1..6] != b"CD001" {
            return Err(c.corrupt(format!("volume descriptor {} has no CD001 mark", 16 + i)));
        }
        match d[0] {
            1 if primary.is_none() => primary = Some(d),
            2 if joliet.is_none() && matches!(&d[88..91], b"%/@" | b"%/C" | b"%/E") => joliet = Some(d),
            255 => break,
            _ => {}
        }
    }
    let primary = primary.ok_or_else(|| c.corrupt("it has no primary volume descriptor"))?;
    let label = String::from_utf8_lossy(&primary[40..72]).trim_end_matches([' ', '\0']).to_string();
    let (descriptor, mut names) = match joliet {
        Some(d) => (d, Names::Joliet),
        None => (primary, Names::Plain),
    };
    if u16_le(descriptor, 128) != Some(SECTOR as u16) {
        return Err(c.corrupt("its logical block size is not 2048"));
    }
    let root = record(&descriptor[156..190]).ok_or_else(|| c.corrupt("its root directory record is bad"))?;

    let mut visited = BTreeSet::new();
    let mut dir_bytes_read = 0u64;
    let mut stack: Vec<(u32, u8, u32, String, usize)> =
        vec![(root.extent, root.ear_len, root.size, String::new(), 0)];
    let mut first_dir = true;
    while let Some((extent, ear_len, size, path, depth)) = stack.pop() {
        if !visited.insert(extent) {
            return Err(c.corrupt(format!(
                "directory {:?} loops back (extent {extent} seen twice)",
                if path.is_empty() { "/" } else { &path }
            )));
        }
        if u64::from(size) > MAX_DIR_BYTES {
            return Err(c.corrupt(format!("a directory is {size} bytes, more than 1 MiB")));
        }
        dir_bytes_read = dir_bytes_read.saturating_add(u64::from(size));
        if dir_bytes_read > MAX_TOTAL_DIR_BYTES {
            return Err(c.corrupt("its directories add up to more than 16 MiB"));
        }
        let data = extent_bytes(bytes, extent, ear_len, size as usize)
            .ok_or_else(|| c.corrupt(format!("directory extent {extent} lies outside the image")))?;
        // Rock Ridge is announced by an SP entry in the root's "." record.
        if first_dir
            && names == Names::Plain
            && let Some(dot) = record(data).filter(|r| r.is_dot())
        {
            let su = dot.system_use;
            if su.len() >= 7 && &su[0..2] == b"SP" && su[4..6] == [0xbe, 0xef] {
                names = Names::RockRidge { skip: usize::from(su[6]) };
            }
        }
        first_dir = false;
        let mut pos = 0usize;
        while pos < data.len() {
            if data[pos] == 0 {
                // Records do not cross sectors: zeros pad to the next one.
                pos = (pos / SECTOR + 1) * SECTOR;
                continue;
            }
            let rec = record(&data[pos..])
                .ok_or_else(|| c.corrupt(format!("a record in directory extent {extent} is bad")))?;
            pos += rec.len;
            if rec.is_dot() {
                continue;
            }
            c.entry()?;
            if rec.flags & Record::ASSOCIATED != 0 {
                continue;
            }
            if rec.flags & Record::MULTI_EXTENT != 0 || rec.interleaved {
                return Err(c.corrupt("it has a multi-extent or interleaved file"));
            }
            let Some(name) = record_name(&rec, names) else {
                continue;
            };
            let child = c.join(&path, &name, depth + 1)?;
            if rec.flags & Record::DIRECTORY != 0 {
                if depth + 1 >= MAX_DEPTH {
                    return Err(c.corrupt("directories nest more than 8 deep"));
                }
                stack.push((rec.extent, rec.ear_len, rec.size, child, depth + 1));
            } else {
                let file_size = usize::try_from(rec.size).unwrap_or(usize::MAX);
                c.reserve(&child, u64::from(rec.size))?;
                let content = extent_bytes(bytes, rec.extent, rec.ear_len, file_size)
                    .ok_or_else(|| c.corrupt(format!("{child}'s data lies outside the image")))?;
                c.add(child, content.to_vec());
            }
        }
    }
    Ok(c.finish(Format::Iso, label))
}

/// The `size` bytes of the extent at block `extent` (after `ear_len` blocks of extended
/// attributes), if they lie inside the image.
fn extent_bytes(bytes: &[u8], extent: u32, ear_len: u8, size: usize) -> Option<&[u8]> {
    let block = usize::try_from(extent).ok()?.checked_add(usize::from(ear_len))?;
    let start = block.checked_mul(SECTOR)?;
    bytes.get(start..start.checked_add(size)?)
}
