//! FAT: written in memory by the `fatfs` crate (fixed dates, a volume serial derived from the
//! input), read by a bounded FAT12/16/32 reader of our own with long file names.
//!
//! The reader checks the boot sector's geometry before using it, follows each cluster chain
//! at most as many steps as the volume has clusters (so a chain that loops is an error), visits
//! each directory's first cluster once, and counts entries, depth and bytes against the limits
//! in [`super`].

use std::collections::BTreeSet;
use std::io::{Cursor, Write};

use super::{Collector, ImageError, MAX_IMAGE_BYTES};
use crate::configdrive::{DriveFile, Format};

/// Every date written: 2000-01-01 00:00:00 (FAT dates have no zone).
#[derive(Debug)]
struct FixedTime;

impl fatfs::TimeProvider for FixedTime {
    fn get_current_date(&self) -> fatfs::Date {
        fatfs::Date { year: 2000, month: 1, day: 1 }
    }

    fn get_current_date_time(&self) -> fatfs::DateTime {
        fatfs::DateTime {
            date: self.get_current_date(),
            time: fatfs::Time { hour: 0, min: 0, sec: 0, millis: 0 },
        }
    }
}

static FIXED_TIME: FixedTime = FixedTime;

/// The cluster size of written images. With it, up to 16 MiB is FAT12 and up to 64 MiB FAT16.
const CLUSTER: u64 = 4096;
/// The smallest image written.
const MIN_IMAGE: u64 = 1024 * 1024;

/// The FAT image of `files` (sorted, checked) labelled `label`.
pub(super) fn write(label: &str, files: &[&DriveFile]) -> Result<Vec<u8>, ImageError> {
    let size = image_size(files);
    if size > MAX_IMAGE_BYTES {
        return Err(ImageError::TooLarge(size));
    }
    let fat = |e: std::io::Error| ImageError::Fat(e.to_string());
    let mut disk = Cursor::new(vec![0u8; usize::try_from(size).map_err(|_| ImageError::TooLarge(size))?]);
    let mut volume_label = [b' '; 11];
    volume_label[..label.len()].copy_from_slice(label.as_bytes());
    fatfs::format_volume(
        &mut disk,
        fatfs::FormatVolumeOptions::new()
            .bytes_per_cluster(CLUSTER as u32)
            .volume_label(volume_label)
            .volume_id(super::serial(label, files)),
    )
    .map_err(fat)?;
    {
        let fs = fatfs::FileSystem::new(&mut disk, fatfs::FsOptions::new().time_provider(&FIXED_TIME))
            .map_err(fat)?;
        {
            let root = fs.root_dir();
            let mut made = BTreeSet::new();
            for f in files {
                if let Some((dir, _)) = f.path.rsplit_once('/') {
                    let mut at = 0;
                    for part in dir.split('/') {
                        at += part.len();
                        let prefix = &dir[..at];
                        at += 1;
                        if made.insert(prefix.to_string()) {
                            root.create_dir(prefix).map_err(fat)?;
                        }
                    }
                }
                let mut file = root.create_file(&f.path).map_err(fat)?;
                file.truncate().map_err(fat)?;
                file.write_all(&f.data).map_err(fat)?;
                file.flush().map_err(fat)?;
            }
        }
        fs.unmount().map_err(fat)?;
    }
    let mut bytes = disk.into_inner();
    drop_dot_long_names(&mut bytes)?;
    Ok(bytes)
}

/// fatfs 0.3.6 writes a long-name slot before the "." and ".." entries of every directory it
/// creates; the specification (and fsck.fat) want "." and ".." in slots 0 and 1. This moves
/// every directory's entries down over those two slots.
fn drop_dot_long_names(bytes: &mut [u8]) -> Result<(), ImageError> {
    let copy = bytes.to_vec();
    let c = Collector::new("FAT");
    let vol = Volume::parse(&copy, &c)?;
    let root = match vol.root {
        Root::Fixed(root) => root.to_vec(),
        Root::Cluster(n) => vol.chain(&c, n, super::MAX_DIR_BYTES, true)?,
    };
    let fat32 = vol.fat_type == FatType::Fat32;
    let subdirs = |data: &[u8]| -> Vec<u32> {
        entries(data, fat32)
            .into_iter()
            .filter(|e| e.attr & ATTR_DIR != 0 && e.name != "." && e.name != "..")
            .map(|e| e.cluster)
            .collect()
    };
    let mut stack = subdirs(&root);
    let mut seen = BTreeSet::new();
    while let Some(first) = stack.pop() {
        if !seen.insert(first) {
            return Err(c.corrupt("a directory loops back"));
        }
        let data = vol.chain(&c, first, super::MAX_DIR_BYTES, true)?;
        let slot = |i: usize| data.get(i * 32..(i + 1) * 32);
        let is_lfn = |i: usize| slot(i).is_some_and(|e| e[11] & 0x3F == ATTR_LFN);
        let is_name = |i: usize, n: &[u8]| slot(i).is_some_and(|e| &e[..11] == n);
        let mut fixed = data.clone();
        if is_lfn(0) && is_name(1, b".          ") && is_lfn(2) && is_name(3, b"..         ") {
            fixed.clear();
            fixed.extend_from_slice(&data[32..64]);
            fixed.extend_from_slice(&data[96..]);
            fixed.resize(data.len(), 0);
            // Write back cluster by cluster along the same chain.
            let cluster_bytes = usize::try_from(vol.cluster_bytes()).unwrap_or(usize::MAX);
            let mut cluster = first;
            for chunk in fixed.chunks(cluster_bytes) {
                let start = vol
                    .cluster_offset(cluster)
                    .and_then(|o| usize::try_from(o).ok())
                    .ok_or_else(|| c.corrupt("a directory cluster lies outside the image"))?;
                bytes
                    .get_mut(start..start + chunk.len())
                    .ok_or_else(|| c.corrupt("a directory cluster lies outside the image"))?
                    .copy_from_slice(chunk);
                match vol.next(cluster) {
                    Some(next) if !vol.is_end(next) => cluster = next,
                    _ => break,
                }
            }
        }
        stack.extend(subdirs(&fixed));
    }
    Ok(())
}

/// Room for the files in 4 KiB clusters, their directories, and 128 KiB for the boot sector,
/// two FATs and the FAT12/16 root directory; at least 1 MiB, rounded up to 64 KiB.
fn image_size(files: &[&DriveFile]) -> u64 {
    let clusters = |bytes: u64| bytes.div_ceil(CLUSTER).max(1) * CLUSTER;
    let mut data: u64 = 0;
    // Entries per directory; each entry takes at most 6 slots of 32 bytes (a 64-character
    // long name is 5 slots, plus the short entry).
    let mut dirs: std::collections::BTreeMap<&str, u64> = Default::default();
    for f in files {
        data = data.saturating_add(clusters(u64::try_from(f.data.len()).unwrap_or(u64::MAX)));
        let mut path = f.path.as_str();
        while let Some((dir, _)) = path.rsplit_once('/') {
            *dirs.entry(dir).or_default() += 1;
            path = dir;
        }
    }
    for entries in dirs.values() {
        // "." and ".." come first.
        data = data.saturating_add(clusters((entries + 2) * 6 * 32));
    }
    let total = data.saturating_add(128 * 1024).max(MIN_IMAGE);
    total.div_ceil(64 * 1024).saturating_mul(64 * 1024)
}

/// True if the first sector looks like a FAT boot sector: the 0x55AA signature, a jump, and
/// a plausible sector size.
pub(super) fn is_fat(bytes: &[u8]) -> bool {
    let Some(boot) = bytes.get(..512) else {
        return false;
    };
    let jump = boot[0] == 0xEB || boot[0] == 0xE9;
    let bytes_per_sector = u16::from_le_bytes([boot[11], boot[12]]);
    boot[510..512] == [0x55, 0xAA] && jump && matches!(bytes_per_sector, 512 | 1024 | 2048 | 4096)
}

/// FAT12, FAT16 or FAT32, decided by the count of clusters as the specification says.
#[derive(Clone, Copy, PartialEq, Eq)]
enum FatType {
    Fat12,
    Fat16,
    Fat32,
}

/// A FAT volume's geometry, checked against the image.
struct Volume<'a> {
    bytes: &'a [u8],
    fat_type: FatType,
    /// The first FAT.
    fat: &'a [u8],
    bytes_per_sector: u64,
    sectors_per_cluster: u64,
    first_data_sector: u64,
    /// Clusters 2 ..= max_cluster hold data.
    max_cluster: u32,
    /// FAT12/16: the fixed root directory; FAT32: the root's first cluster.
    root: Root<'a>,
    /// The label in the boot sector's extended BPB, if any.
    boot_label: Option<&'a [u8]>,
}

enum Root<'a> {
    Fixed(&'a [u8]),
    Cluster(u32),
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

impl<'a> Volume<'a> {
    fn parse(bytes: &'a [u8], c: &Collector) -> Result<Self, ImageError> {
        let bad = |what: &str| c.corrupt(format!("its boot sector has {what}"));
        let boot = bytes.get(..512).ok_or_else(|| bad("fewer than 512 bytes"))?;
        let bytes_per_sector = u64::from(le16(boot, 11));
        let sectors_per_cluster = u64::from(boot[13]);
        let reserved = u64::from(le16(boot, 14));
        let fats = u64::from(boot[16]);
        let root_entries = u64::from(le16(boot, 17));
        let total = match le16(boot, 19) {
            0 => u64::from(le32(boot, 32)),
            n => u64::from(n),
        };
        let fat16_size = u64::from(le16(boot, 22));
        let fat_size = match fat16_size {
            0 => u64::from(le32(boot, 36)),
            n => n,
        };
        if !matches!(bytes_per_sector, 512 | 1024 | 2048 | 4096) {
            return Err(bad("a sector size other than 512, 1024, 2048 or 4096"));
        }
        if !sectors_per_cluster.is_power_of_two() || sectors_per_cluster > 128 {
            return Err(bad("a cluster size that is not 1 to 128 sectors, a power of two"));
        }
        if reserved == 0 || fats == 0 || fat_size == 0 {
            return Err(bad("no reserved sectors, no FAT or an empty FAT"));
        }
        let root_sectors = (root_entries * 32).div_ceil(bytes_per_sector);
        let fat_start = reserved * bytes_per_sector;
        let root_start = reserved + fats * fat_size;
        let first_data_sector = root_start + root_sectors;
        let data_sectors =
            total.checked_sub(first_data_sector).ok_or_else(|| bad("more metadata sectors than sectors"))?;
        let clusters = data_sectors / sectors_per_cluster;
        let fat_type = if clusters < 4085 {
            FatType::Fat12
        } else if clusters < 65525 {
            FatType::Fat16
        } else {
            FatType::Fat32
        };
        if fat_type == FatType::Fat32 && (fat16_size != 0 || root_entries != 0) {
            return Err(bad("a FAT32 cluster count but a FAT12/16 layout"));
        }
        if fat_type != FatType::Fat32 && root_entries == 0 {
            return Err(bad("a FAT12/16 cluster count but no root directory"));
        }
        // Only the FAT entries of real clusters are looked at: clusters + 2 entries.
        let fat_bytes = fat_size * bytes_per_sector;
        let fat = slice(bytes, fat_start, fat_bytes).ok_or_else(|| bad("a FAT beyond the image's end"))?;
        let max_cluster = u32::try_from(clusters + 1).map_err(|_| bad("too many clusters"))?;
        let root = match fat_type {
            FatType::Fat32 => Root::Cluster(le32(boot, 44)),
            _ => Root::Fixed(
                slice(bytes, root_start * bytes_per_sector, root_entries * 32)
                    .ok_or_else(|| bad("a root directory beyond the image's end"))?,
            ),
        };
        let (sig_at, label_at) = match fat_type {
            FatType::Fat32 => (66, 71),
            _ => (38, 43),
        };
        let boot_label = (boot[sig_at] == 0x29).then(|| &boot[label_at..label_at + 11]);
        Ok(Volume {
            bytes,
            fat_type,
            fat,
            bytes_per_sector,
            sectors_per_cluster,
            first_data_sector,
            max_cluster,
            root,
            boot_label,
        })
    }

    /// Where cluster `n` (>= 2) starts in the image.
    fn cluster_offset(&self, n: u32) -> Option<u64> {
        u64::from(n.checked_sub(2)?)
            .checked_mul(self.sectors_per_cluster)?
            .checked_add(self.first_data_sector)?
            .checked_mul(self.bytes_per_sector)
    }

    fn cluster_bytes(&self) -> u64 {
        self.bytes_per_sector * self.sectors_per_cluster
    }

    /// The FAT entry of `cluster`, if the FAT holds it.
    fn next(&self, cluster: u32) -> Option<u32> {
        let n = usize::try_from(cluster).ok()?;
        match self.fat_type {
            FatType::Fat12 => {
                let at = n.checked_add(n / 2)?;
                let pair = u16::from_le_bytes([*self.fat.get(at)?, *self.fat.get(at + 1)?]);
                Some(u32::from(if n % 2 == 1 { pair >> 4 } else { pair & 0x0FFF }))
            }
            FatType::Fat16 => {
                let at = n.checked_mul(2)?;
                Some(u32::from(u16::from_le_bytes([*self.fat.get(at)?, *self.fat.get(at + 1)?])))
            }
            FatType::Fat32 => {
                let at = n.checked_mul(4)?;
                let b = self.fat.get(at..at.checked_add(4)?)?;
                Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) & 0x0FFF_FFFF)
            }
        }
    }

    fn is_end(&self, entry: u32) -> bool {
        entry
            >= match self.fat_type {
                FatType::Fat12 => 0x0FF8,
                FatType::Fat16 => 0xFFF8,
                FatType::Fat32 => 0x0FFF_FFF8,
            }
    }

    /// The bytes of the chain starting at `first`, at most `limit` of them: for a file its
    /// size, for a directory the directory limit. A chain that ends early, leaves the volume,
    /// or loops (longer than the volume has clusters) is an error.
    fn chain(&self, c: &Collector, first: u32, limit: u64, until_end: bool) -> Result<Vec<u8>, ImageError> {
        let cluster_bytes = self.cluster_bytes();
        let mut out = Vec::new();
        let mut cluster = first;
        let mut steps: u32 = 0;
        loop {
            if cluster < 2 || cluster > self.max_cluster {
                return Err(
                    c.corrupt(format!("a cluster chain points to cluster {cluster}, outside the volume"))
                );
            }
            steps += 1;
            if steps > self.max_cluster {
                return Err(c.corrupt("a cluster chain loops"));
            }
            let have = u64::try_from(out.len()).unwrap_or(u64::MAX);
            if have >= limit && !until_end {
                break;
            }
            if have.saturating_add(cluster_bytes) > limit && until_end {
                return Err(c.corrupt(format!("a directory is longer than {limit} bytes")));
            }
            let sector = self.cluster_offset(cluster);
            let take = cluster_bytes.min(limit - have);
            let data = sector
                .and_then(|start| slice(self.bytes, start, take))
                .ok_or_else(|| c.corrupt(format!("cluster {cluster} lies beyond the image's end")))?;
            out.extend_from_slice(data);
            if u64::try_from(out.len()).unwrap_or(u64::MAX) >= limit && !until_end {
                break;
            }
            let next =
                self.next(cluster).ok_or_else(|| c.corrupt(format!("cluster {cluster} has no FAT entry")))?;
            if self.is_end(next) {
                if !until_end && u64::try_from(out.len()).unwrap_or(u64::MAX) < limit {
                    return Err(c.corrupt("a file's cluster chain is shorter than its size"));
                }
                break;
            }
            cluster = next;
        }
        Ok(out)
    }
}

/// `len` bytes of `bytes` from `start`, if they are there.
fn slice(bytes: &[u8], start: u64, len: u64) -> Option<&[u8]> {
    let start = usize::try_from(start).ok()?;
    let end = start.checked_add(usize::try_from(len).ok()?)?;
    bytes.get(start..end)
}

/// The checksum of a short name that its long-name entries carry.
fn short_name_checksum(name: &[u8]) -> u8 {
    name.iter().fold(0u8, |sum, b| sum.rotate_right(1).wrapping_add(*b))
}

/// `NAME    EXT` -> `NAME.EXT`, lowercased where the entry's case bits say so (as Linux and
/// Windows show it).
fn short_name(entry: &[u8]) -> String {
    let case = entry[12];
    let part = |raw: &[u8], lower: bool| -> String {
        raw.iter()
            .map(|b| char::from(*b))
            .collect::<String>()
            .trim_end_matches(' ')
            .chars()
            .map(|c| if lower { c.to_ascii_lowercase() } else { c })
            .collect()
    };
    let mut base = entry[..8].to_vec();
    if base[0] == 0x05 {
        base[0] = 0xE5;
    }
    let base = part(&base, case & 0x08 != 0);
    let ext = part(&entry[8..11], case & 0x10 != 0);
    if ext.is_empty() { base } else { format!("{base}.{ext}") }
}

/// One entry of a directory, long name resolved.
struct Entry {
    name: String,
    attr: u8,
    cluster: u32,
    size: u32,
}

const ATTR_LFN: u8 = 0x0F;
const ATTR_VOLUME: u8 = 0x08;
const ATTR_DIR: u8 = 0x10;

/// The entries of a directory's bytes; long-name slots whose checksum or order does not fit
/// are dropped and the short name used, as Linux does.
fn entries(dir: &[u8], fat32: bool) -> Vec<Entry> {
    let mut out = Vec::new();
    let mut lfn: Vec<Option<[u16; 13]>> = Vec::new();
    let mut lfn_sum = 0u8;
    for e in dir.chunks_exact(32) {
        match e[0] {
            0x00 => break,
            0xE5 => {
                lfn.clear();
                continue;
            }
            _ => {}
        }
        let attr = e[11];
        if attr & 0x3F == ATTR_LFN {
            let order = usize::from(e[0] & 0x1F);
            if e[0] & 0x40 != 0 {
                lfn = vec![None; order];
                lfn_sum = e[13];
            }
            if order == 0 || order > lfn.len() || e[13] != lfn_sum {
                lfn.clear();
                continue;
            }
            let mut units = [0u16; 13];
            for (i, at) in [1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30].into_iter().enumerate() {
                units[i] = le16(e, at);
            }
            lfn[order - 1] = Some(units);
            continue;
        }
        let long =
            if !lfn.is_empty() && lfn.iter().all(Option::is_some) && short_name_checksum(&e[..11]) == lfn_sum
            {
                let units: Vec<u16> =
                    lfn.iter().flatten().flatten().copied().take_while(|u| *u != 0 && *u != 0xFFFF).collect();
                Some(
                    char::decode_utf16(units)
                        .map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER))
                        .collect::<String>(),
                )
            } else {
                None
            };
        lfn.clear();
        let hi = if fat32 { u32::from(le16(e, 20)) << 16 } else { 0 };
        let name = if attr & ATTR_VOLUME != 0 {
            // A volume label: 11 bytes, no dot between name and extension.
            e[..11].iter().map(|b| char::from(*b)).collect::<String>().trim_end_matches(' ').to_string()
        } else {
            long.unwrap_or_else(|| short_name(e))
        };
        out.push(Entry { name, attr, cluster: hi | u32::from(le16(e, 26)), size: le32(e, 28) });
    }
    out
}

/// The label and every regular file of a FAT image.
pub(super) fn read(bytes: &[u8]) -> Result<super::Image, ImageError> {
    let mut c = Collector::new("FAT");
    let vol = Volume::parse(bytes, &c)?;
    let fat32 = vol.fat_type == FatType::Fat32;
    let image_len = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
    let mut dir_label: Option<String> = None;
    let mut visited = BTreeSet::new();
    let mut dir_bytes_read: u64 = 0;
    // (first cluster, or None for the fixed FAT12/16 root; path; depth)
    let mut stack: Vec<(Option<u32>, String, usize)> = vec![(
        match vol.root {
            Root::Fixed(_) => None,
            Root::Cluster(n) => Some(n),
        },
        String::new(),
        0,
    )];
    while let Some((first, path, depth)) = stack.pop() {
        let data = match first {
            None => match vol.root {
                Root::Fixed(root) => root.to_vec(),
                Root::Cluster(_) => Vec::new(),
            },
            Some(cluster) => {
                if !visited.insert(cluster) {
                    return Err(c.corrupt(format!(
                        "directory {:?} loops back (cluster {cluster} seen twice)",
                        if path.is_empty() { "/" } else { &path }
                    )));
                }
                vol.chain(&c, cluster, super::MAX_DIR_BYTES, true)?
            }
        };
        dir_bytes_read = dir_bytes_read.saturating_add(u64::try_from(data.len()).unwrap_or(u64::MAX));
        if dir_bytes_read > super::MAX_TOTAL_DIR_BYTES {
            return Err(c.corrupt("its directories add up to more than 16 MiB"));
        }
        for entry in entries(&data, fat32) {
            if entry.attr & ATTR_VOLUME != 0 {
                if depth == 0 && dir_label.is_none() && entry.attr & ATTR_DIR == 0 {
                    dir_label = Some(entry.name);
                }
                continue;
            }
            if entry.name == "." || entry.name == ".." {
                continue;
            }
            c.entry()?;
            let child = c.join(&path, &entry.name, depth + 1)?;
            if entry.attr & ATTR_DIR != 0 {
                if entry.cluster == 0 {
                    return Err(c.corrupt(format!("directory {child} has no cluster")));
                }
                stack.push((Some(entry.cluster), child, depth + 1));
            } else {
                let size = u64::from(entry.size);
                if size > image_len {
                    return Err(
                        c.corrupt(format!("{child} says it is {size} bytes, more than the whole image"))
                    );
                }
                c.reserve(&child, size)?;
                let data = if size == 0 { Vec::new() } else { vol.chain(&c, entry.cluster, size, false)? };
                c.add(child, data);
            }
        }
    }
    let label = match dir_label {
        Some(label) => label,
        None => vol
            .boot_label
            .map(|l| l.iter().map(|b| char::from(*b)).collect::<String>())
            .map(|l| l.trim_end_matches(' ').to_string())
            .filter(|l| l != "NO NAME")
            .unwrap_or_default(),
    };
    Ok(c.finish(Format::Vfat, label))
}
