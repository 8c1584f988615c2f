//! The desired state: one JSON file per VM in `state_dir` (design.md §2).
//!
//! Contract:
//! - A write is atomic: temp file, fsync, rename, directory fsync. A `kill -9` at any
//!   moment leaves the old file or the new one, never a torn one.
//! - Writers serialise on an exclusive lock (`state_dir/.lock`); a writer reads, checks
//!   and writes under one lock, so two concurrent `vm add` cannot both claim an address.
//!   Readers take no lock: they only ever see whole files.
//! - A reconcile pass holds the same lock shared ([`Store::read_lock`]) from its read of
//!   the state dir until its ops are applied. A writer that also changes the kernel
//!   itself under its exclusive lock (the libvirt hook) is therefore never undone by a
//!   pass planned from a read taken before its write.
//! - A file that cannot be parsed is reported in [`Snapshot::errors`], never dropped: it
//!   means "this VM is in error", not "this VM is absent".
//! - Each file carries `"version": 1`.
//!
//! Data flows in from the CLI (and later the hook and the CloudStack shim) and out to
//! the reconcile pass, which only reads.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::model::{self, Invalid, VmName, VmSpec};

pub const FORMAT_VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
struct FileFormat {
    version: u32,
    #[serde(flatten)]
    vm: VmSpec,
}

/// What a `vm add` or `vm del` did to the state dir.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    Stored,
    Unchanged,
    Removed,
    Unknown,
}

/// Everything the state dir held at one read.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub vms: BTreeMap<VmName, Arc<VmSpec>>,
    /// File name to reason, for files that exist but could not be used.
    pub errors: BTreeMap<String, String>,
}

pub struct Store {
    dir: PathBuf,
    cache: Mutex<Cache>,
}

/// What the last read saw, so that a pass over an unchanged state dir costs a `stat`.
///
/// - Per file: the parse and the stamp it was parsed at; a changed stamp re-reads.
/// - The whole snapshot, with the directory's stamp: every write renames into the
///   directory, which changes its stamp, so an unchanged directory (and no notify event
///   since, and a full sweep less than [`SWEEP_EVERY`] ago) returns the same snapshot.
/// - The daemon feeds notify events to [`Store::invalidate`], so even a rewrite within one
///   timestamp tick, or an edit in place, is never served stale.
#[derive(Default)]
struct Cache {
    files: HashMap<String, (Stamp, std::result::Result<Arc<VmSpec>, String>)>,
    dir: Option<Stamp>,
    snapshot: Option<Arc<Snapshot>>,
    swept: Option<Instant>,
    /// Whether a writer may have left temp files that nobody has removed yet.
    temp_files_unchecked: bool,
    /// Whether the parse cache on disk ([`PARSED_CACHE`]) has been read.
    disk_cache_read: bool,
    /// `files` mirrors the whole directory (a sweep ran), so it can be saved.
    complete: bool,
    /// Writers save the parse cache after each write (off in the daemon).
    save_disk_cache: bool,
}

/// The parses of the state files, kept on disk for the next process (the hook, the CLI):
/// with it, a fresh process stats every file but reads and parses only those whose stamp
/// changed, about ten times cheaper at 1,000 VMs. Every entry is used only while its
/// file's stamp (inode, size, mtime, ctime) is unchanged, so a stale or foreign cache can
/// cost time, never correctness; a broken one is ignored. Only a writer saves it, after
/// its write and under the lock (the hook, the CLI without a daemon); a refused command
/// leaves the state dir as it was.
pub const PARSED_CACHE: &str = ".cache/parsed.v1.json";

#[derive(Serialize, Deserialize)]
struct DiskEntry {
    stamp: Stamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    vm: Option<VmSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// The longest a cached snapshot is trusted without re-statting every file.
pub const SWEEP_EVERY: Duration = Duration::from_secs(300);

/// What identifies one version of a file: atomic writes always make a new inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Stamp {
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    fn of(m: &fs::Metadata) -> Stamp {
        Stamp {
            ino: m.ino(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        }
    }
}

/// Held while writing; dropping it releases the lock.
pub struct WriteLock {
    _file: File,
}

/// Held by a pass from its read to the end of its apply; dropping it releases the lock.
pub struct ReadLock {
    _file: File,
}

impl Store {
    /// Opens the state dir, creating it if needed.
    pub fn open(dir: &Path) -> Result<Store> {
        fs::create_dir_all(dir).with_context(|| format!("cannot create state dir {}", dir.display()))?;
        Ok(Store::at(dir))
    }

    /// Opens the state dir for reading only; a missing dir reads as empty.
    pub fn at(dir: &Path) -> Store {
        let cache = Cache { temp_files_unchecked: true, save_disk_cache: true, ..Cache::default() };
        Store { dir: dir.to_owned(), cache: Mutex::new(cache) }
    }

    /// Forgets the parsed copy of these files (by file name), or of all files.
    pub fn invalidate(&self, files: Option<&[String]>) {
        let mut c = self.cache();
        c.snapshot = None;
        match files {
            Some(names) => names.iter().for_each(|n| {
                c.files.remove(n);
            }),
            None => c.files.clear(),
        }
    }

    /// Brings the cached snapshot up to date for these files (by file name), which
    /// changed: each is stat'ed and, if its stamp moved, parsed again; a missing one
    /// leaves the snapshot. The rest of the snapshot is kept, so a change to one file
    /// costs one file, not a sweep of the directory. `None` (changes unknown, such as a
    /// notify overflow) forgets everything, like [`Store::invalidate`].
    ///
    /// The daemon calls this for every notify event and after its own writes, so the
    /// cache follows every change; a full sweep still runs every [`SWEEP_EVERY`].
    ///
    /// Returns whether the snapshot may have changed: `false` only when every named file
    /// was already known as it is (the notify event of a write this process made itself).
    pub fn refresh(&self, files: Option<&[String]>) -> bool {
        let Some(names) = files else {
            self.invalidate(None);
            return true;
        };
        let mut c = self.cache();
        let Some(old) = c.snapshot.clone() else {
            drop(c);
            self.invalidate(files);
            return true;
        };
        let mut snap = (*old).clone();
        let mut changed = false;
        for fname in names {
            let Some(stem) = fname.strip_suffix(".json").filter(|_| !fname.starts_with('.')) else {
                continue;
            };
            let path = self.dir.join(fname);
            let stamp = match fs::metadata(&path) {
                Ok(m) => Stamp::of(&m),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    changed |= c.files.remove(fname).is_some()
                        | snap.errors.remove(fname).is_some()
                        | snap.vms.keys().any(|n| n.as_str() == stem);
                    snap.vms.retain(|name, _| name.as_str() != stem);
                    continue;
                }
                Err(_) => {
                    drop(c);
                    self.invalidate(None);
                    return true;
                }
            };
            if matches!(c.files.get(fname), Some((then, _)) if *then == stamp) {
                continue;
            }
            changed = true;
            let parsed = self.load_file(&path, stem).map(Arc::new);
            c.files.insert(fname.clone(), (stamp, parsed.clone()));
            snap.vms.retain(|name, _| name.as_str() != stem);
            snap.errors.remove(fname);
            match parsed {
                Ok(vm) => {
                    snap.vms.insert(vm.name.clone(), vm);
                }
                Err(reason) => {
                    snap.errors.insert(fname.clone(), reason);
                }
            }
        }
        match fs::metadata(&self.dir) {
            Ok(m) => {
                c.dir = Some(Stamp::of(&m));
                if changed {
                    c.snapshot = Some(Arc::new(snap));
                }
                changed
            }
            Err(_) => {
                drop(c);
                self.invalidate(None);
                true
            }
        }
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path_of(&self, name: &VmName) -> PathBuf {
        self.dir.join(format!("{name}.json"))
    }

    /// Takes the writers' lock, waiting for other writers.
    pub fn lock(&self) -> Result<WriteLock> {
        let path = self.dir.join(".lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("cannot open lock file {}", path.display()))?;
        file.lock().with_context(|| format!("cannot lock {}", path.display()))?;
        Ok(WriteLock { _file: file })
    }

    /// Takes the writers' lock shared, waiting for a writer to finish: writers wait while
    /// it is held. `None` when the state dir does not exist or cannot be written (then no
    /// writer can write either, and a reader must not create it).
    pub fn read_lock(&self) -> Result<Option<ReadLock>> {
        if !self.dir.is_dir() {
            return Ok(None);
        }
        let path = self.dir.join(".lock");
        let file = match OpenOptions::new().create(true).truncate(false).write(true).open(&path) {
            Ok(f) => f,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem
                ) =>
            {
                return Ok(None);
            }
            Err(e) => return Err(e).with_context(|| format!("cannot open lock file {}", path.display())),
        };
        file.lock_shared().with_context(|| format!("cannot lock {}", path.display()))?;
        Ok(Some(ReadLock { _file: file }))
    }

    /// Reads every VM file. I/O errors on the directory itself fail the whole read (the
    /// caller must not mistake an unreadable dir for an empty one); a bad file only
    /// lands in `errors`.
    pub fn load(&self) -> Result<Arc<Snapshot>> {
        let mut cache = self.cache();
        let dir_stamp = match fs::metadata(&self.dir) {
            Ok(m) => Stamp::of(&m),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Arc::default()),
            Err(e) => return Err(e).with_context(|| format!("cannot read state dir {}", self.dir.display())),
        };
        if let (Some(snap), Some(dir), Some(swept)) = (&cache.snapshot, cache.dir, cache.swept)
            && dir == dir_stamp
            && swept.elapsed() < SWEEP_EVERY
        {
            return Ok(snap.clone());
        }
        let snap = self.sweep(&mut cache)?;
        cache.dir = Some(dir_stamp);
        cache.swept = Some(Instant::now());
        cache.snapshot = Some(snap.clone());
        Ok(snap)
    }

    /// Lists and stats every file, re-reading those whose stamp changed.
    fn sweep(&self, cache: &mut Cache) -> Result<Arc<Snapshot>> {
        if !std::mem::replace(&mut cache.disk_cache_read, true) && cache.files.is_empty() {
            self.read_disk_cache(cache);
        }
        let mut snap = Snapshot::default();
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Arc::default()),
            Err(e) => return Err(e).with_context(|| format!("cannot read state dir {}", self.dir.display())),
        };
        let mut seen = Vec::new();
        for entry in entries {
            let entry = entry.with_context(|| format!("cannot read state dir {}", self.dir.display()))?;
            let fname = entry.file_name().to_string_lossy().into_owned();
            if fname.starts_with('.') {
                // Temp files (and the lock): a writer removes stale ones.
                cache.temp_files_unchecked |= fname.ends_with(".json.tmp");
                continue;
            }
            let Some(stem) = fname.strip_suffix(".json") else { continue };
            let stamp = entry.metadata().ok().map(|m| Stamp::of(&m));
            let parsed = match (stamp, cache.files.get(&fname)) {
                (Some(now), Some((then, parsed))) if now == *then => parsed.clone(),
                _ => {
                    let parsed = self.load_file(&entry.path(), stem).map(Arc::new);
                    if let Some(now) = stamp {
                        cache.files.insert(fname.clone(), (now, parsed.clone()));
                    }
                    parsed
                }
            };
            match parsed {
                Ok(vm) => {
                    snap.vms.insert(vm.name.clone(), vm);
                }
                Err(reason) => {
                    snap.errors.insert(fname.clone(), reason);
                }
            }
            seen.push(fname);
        }
        if cache.files.len() > seen.len() {
            let seen: std::collections::HashSet<&String> = seen.iter().collect();
            cache.files.retain(|k, _| seen.contains(k));
        }
        cache.complete = true;
        Ok(Arc::new(snap))
    }

    /// Fills the parse cache from [`PARSED_CACHE`], re-checking each entry's shape.
    fn read_disk_cache(&self, cache: &mut Cache) {
        let Ok(bytes) = fs::read(self.dir.join(PARSED_CACHE)) else { return };
        let Ok(files) = serde_json::from_slice::<HashMap<String, DiskEntry>>(&bytes) else { return };
        for (fname, e) in files {
            let parsed = match (e.vm, e.error) {
                (Some(vm), None)
                    if fname.strip_suffix(".json") == Some(vm.name.as_str()) && vm.check_shape().is_ok() =>
                {
                    Ok(Arc::new(vm))
                }
                (None, Some(reason)) => Err(reason),
                _ => continue,
            };
            cache.files.insert(fname, (e.stamp, parsed));
        }
    }

    /// Saves the parse cache for the next process; best effort (a reader may not be able
    /// to write the state dir, and that is fine).
    fn write_disk_cache(&self, cache: &Cache) {
        let files: BTreeMap<&String, DiskEntry> = cache
            .files
            .iter()
            .map(|(f, (stamp, p))| {
                let (vm, error) = match p {
                    Ok(vm) => (Some((**vm).clone()), None),
                    Err(r) => (None, Some(r.clone())),
                };
                (f, DiskEntry { stamp: *stamp, vm, error })
            })
            .collect();
        let path = self.dir.join(PARSED_CACHE);
        let Some(parent) = path.parent() else { return };
        if fs::create_dir_all(parent).is_err() {
            return;
        }
        let tmp = parent.join(format!(".parsed.{}.tmp", std::process::id()));
        let ok = serde_json::to_vec(&files).is_ok_and(|b| fs::write(&tmp, b).is_ok())
            && fs::rename(&tmp, &path).is_ok();
        if !ok {
            let _ = fs::remove_file(&tmp);
        }
    }

    fn load_file(&self, path: &Path, stem: &str) -> std::result::Result<VmSpec, String> {
        let name: VmName = stem.parse().map_err(|e: crate::model::Invalid| e.0)?;
        let bytes = match fs::read(path) {
            Ok(b) => b,
            Err(e) => return Err(format!("cannot read: {}", crate::config::io_reason(&e))),
        };
        let f: FileFormat = match serde_json::from_slice::<FileFormat>(&bytes) {
            Ok(f) if f.version == FORMAT_VERSION => f,
            // Slow path, for a useful message: is it JSON at all, and which version?
            other => {
                let v: serde_json::Value =
                    serde_json::from_slice(&bytes).map_err(|e| format!("not valid JSON: {e}"))?;
                return Err(match v.get("version").and_then(|v| v.as_u64()) {
                    Some(n) if n != u64::from(FORMAT_VERSION) => {
                        format!("format version {n} is not supported (this hvroute reads {FORMAT_VERSION})")
                    }
                    None => "no format version".into(),
                    Some(_) => format!("invalid: {}", other.err().map(|e| e.to_string()).unwrap_or_default()),
                });
            }
        };
        if f.vm.name != name {
            return Err(format!("file names VM {} but is called {stem}.json", f.vm.name));
        }
        f.vm.check_shape().map_err(|e| e.0)?;
        Ok(f.vm)
    }

    /// `vm add`: stores `vm` unless that would break the state's rules, checking and
    /// writing under one lock. Used by the CLI without a daemon and by the daemon for the
    /// CLI, so both decide alike:
    /// - the same spec again is [`Change::Unchanged`];
    /// - another spec under the same name, or an unreadable file of that name, needs
    ///   `replace`;
    /// - an address that another active VM holds with a different MAC is refused.
    ///
    /// Refusals are [`Invalid`] (the caller's input; exit 2); anything else is a runtime
    /// failure.
    pub fn add(&self, vm: &VmSpec, replace: bool, boot_id: &str) -> Result<Change> {
        let lock = self.lock()?;
        let snap = self.load()?;
        let file = format!("{}.json", vm.name);
        match snap.vms.get(&vm.name) {
            Some(existing) if **existing == *vm => return Ok(Change::Unchanged),
            Some(_) if !replace => {
                return Err(Invalid(format!(
                    "VM {} already exists with a different spec; use --replace to change it",
                    vm.name
                ))
                .into());
            }
            None if snap.errors.contains_key(&file) && !replace => {
                return Err(Invalid(format!(
                    "VM {} has an unreadable state file ({}); use --replace to overwrite it",
                    vm.name, snap.errors[&file]
                ))
                .into());
            }
            _ => {}
        }
        model::check_conflicts(vm, snap.vms.values().map(|v| &**v), boot_id)?;
        self.put(&lock, vm)?;
        self.refresh(Some(&[file]));
        Ok(Change::Stored)
    }

    /// `vm del`: removes a VM; an unknown name is [`Change::Unknown`], not an error.
    pub fn del(&self, name: &VmName) -> Result<Change> {
        let lock = self.lock()?;
        let existed = self.remove(&lock, name)?;
        self.refresh(Some(&[format!("{name}.json")]));
        Ok(if existed { Change::Removed } else { Change::Unknown })
    }

    /// Reads one VM, if present and valid.
    pub fn get(&self, name: &VmName) -> Result<Option<VmSpec>> {
        let path = self.path_of(name);
        if !path.exists() {
            return Ok(None);
        }
        self.load_file(&path, name.as_str())
            .map(Some)
            .map_err(|r| anyhow::anyhow!("state file {} is unusable: {r}", path.display()))
    }

    /// Writes one VM atomically. Call with the lock held.
    pub fn put(&self, _lock: &WriteLock, vm: &VmSpec) -> Result<()> {
        if std::mem::take(&mut self.cache().temp_files_unchecked) {
            self.sweep_temp_files();
        }
        let path = self.path_of(&vm.name);
        let tmp = self.dir.join(format!(".{}.json.tmp", vm.name));
        let mut bytes = serde_json::to_vec_pretty(&FileFormat { version: FORMAT_VERSION, vm: vm.clone() })?;
        bytes.push(b'\n');
        let mut f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&tmp)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        f.write_all(&bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
        f.sync_all().with_context(|| format!("cannot sync {}", tmp.display()))?;
        drop(f);
        fs::rename(&tmp, &path)
            .with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))?;
        self.sync_dir()?;
        let stamp = fs::metadata(&path).ok().map(|m| Stamp::of(&m));
        self.after_write(format!("{}.json", vm.name), stamp.map(|s| (s, vm.clone())));
        Ok(())
    }

    /// Keeps the parse cache (and, for writers that save it, its copy on disk) in step
    /// with a write this process made under the lock.
    fn after_write(&self, fname: String, now: Option<(Stamp, VmSpec)>) {
        let mut c = self.cache();
        if !c.complete || !c.save_disk_cache {
            return;
        }
        // The snapshot follows too, so that a later refresh of this file sees no change
        // it has not already taken in.
        let mut snap = c.snapshot.as_deref().cloned();
        if let Some(snap) = &mut snap {
            snap.errors.remove(&fname);
            let stem = fname.trim_end_matches(".json");
            snap.vms.retain(|n, _| n.as_str() != stem);
        }
        match now {
            Some((stamp, vm)) => {
                let vm = Arc::new(vm);
                if let Some(snap) = &mut snap {
                    snap.vms.insert(vm.name.clone(), vm.clone());
                }
                c.files.insert(fname, (stamp, Ok(vm)));
            }
            None => {
                c.files.remove(&fname);
            }
        }
        if snap.is_some() {
            c.snapshot = snap.map(Arc::new);
            if let Ok(m) = fs::metadata(&self.dir) {
                c.dir = Some(Stamp::of(&m));
            }
        }
        self.write_disk_cache(&c);
    }

    /// The daemon keeps its parses in memory and does not save them after its writes.
    pub fn without_disk_cache(self) -> Store {
        self.cache().save_disk_cache = false;
        self
    }

    /// Removes one VM. Returns whether it existed. Call with the lock held.
    pub fn remove(&self, _lock: &WriteLock, name: &VmName) -> Result<bool> {
        let path = self.path_of(name);
        match fs::remove_file(&path) {
            Ok(()) => {
                self.sync_dir()?;
                self.after_write(format!("{name}.json"), None);
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e).with_context(|| format!("cannot remove {}", path.display())),
        }
    }

    fn sync_dir(&self) -> Result<()> {
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("cannot sync state dir {}", self.dir.display()))
    }

    /// A writer killed between create and rename leaves a temp file. With the lock held
    /// no other writer is mid-write, so every temp file is stale.
    fn sweep_temp_files(&self) {
        if let Ok(entries) = fs::read_dir(&self.dir) {
            for e in entries.flatten() {
                let n = e.file_name();
                let n = n.to_string_lossy();
                if n.starts_with('.') && n.ends_with(".json.tmp") {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Nic, Source};

    fn vm(name: &str, mac: &str, ips: &[&str]) -> VmSpec {
        VmSpec {
            name: name.parse().unwrap(),
            nics: vec![Nic {
                mac: mac.parse().unwrap(),
                addresses: ips.iter().map(|s| s.parse().unwrap()).collect(),
                port: None,
            }],
            source: Source::Cli,
            boot_id: None,
            migration: None,
        }
    }

    #[test]
    fn round_trip_and_errors_are_kept_apart() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let lock = store.lock().unwrap();
        let a = vm("i-2-10-VM", "52:54:00:00:00:01", &["192.0.2.10", "2001:db8:100::10"]);
        store.put(&lock, &a).unwrap();
        fs::write(dir.path().join("broken.json"), b"{\"version\":1,").unwrap();
        fs::write(dir.path().join("future.json"), b"{\"version\":9}").unwrap();
        fs::write(dir.path().join("bad name.json"), b"{}").unwrap();
        let snap = store.load().unwrap();
        assert_eq!(snap.vms.len(), 1);
        assert_eq!(**snap.vms.values().next().unwrap(), a);
        assert_eq!(snap.errors.len(), 3, "{:?}", snap.errors);
        assert!(snap.errors["future.json"].contains("version 9"));
        let text = fs::read_to_string(dir.path().join("i-2-10-VM.json")).unwrap();
        assert!(text.contains("\"version\": 1"), "{text}");
        assert!(store.remove(&lock, &a.name).unwrap());
        assert!(!store.remove(&lock, &a.name).unwrap());
    }

    /// The parse cache must never hide a rewrite or a removal from the next pass.
    #[test]
    fn cached_reads_follow_rewrites_and_removals() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let lock = store.lock().unwrap();
        store.put(&lock, &vm("a", "52:54:00:00:00:01", &["192.0.2.1"])).unwrap();
        store.put(&lock, &vm("b", "52:54:00:00:00:02", &["192.0.2.2"])).unwrap();
        assert_eq!(store.load().unwrap().vms.len(), 2);
        let a2 = vm("a", "52:54:00:00:00:01", &["192.0.2.3"]);
        store.put(&lock, &a2).unwrap();
        store.remove(&lock, &"b".parse().unwrap()).unwrap();
        let snap = store.load().unwrap();
        assert_eq!(snap.vms.len(), 1);
        assert_eq!(**snap.vms.values().next().unwrap(), a2);
        // A file broken in place (same inode) is seen too.
        fs::write(dir.path().join("a.json"), b"{").unwrap();
        store.invalidate(Some(&["a.json".to_string()]));
        assert_eq!(store.load().unwrap().errors.len(), 1);
    }

    /// The daemon patches its snapshot with the files notify names instead of sweeping
    /// 10,000 files; a patched snapshot must equal a fresh read.
    #[test]
    fn refresh_patches_the_snapshot_like_a_fresh_read() {
        let dir = tempfile::tempdir().unwrap();
        let daemon = Store::open(dir.path()).unwrap();
        let other = Store::open(dir.path()).unwrap();
        let lock = other.lock().unwrap();
        other.put(&lock, &vm("a", "52:54:00:00:00:01", &["192.0.2.1"])).unwrap();
        other.put(&lock, &vm("b", "52:54:00:00:00:02", &["192.0.2.2"])).unwrap();
        assert_eq!(daemon.load().unwrap().vms.len(), 2);
        // Another writer changes a, removes b, adds c, and breaks d.
        other.put(&lock, &vm("a", "52:54:00:00:00:01", &["192.0.2.3"])).unwrap();
        other.remove(&lock, &"b".parse().unwrap()).unwrap();
        other.put(&lock, &vm("c", "52:54:00:00:00:03", &["192.0.2.4"])).unwrap();
        fs::write(dir.path().join("d.json"), b"{").unwrap();
        let names: Vec<String> = ["a.json", "b.json", "c.json", "d.json", ".c.json.tmp", "x.txt"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        daemon.refresh(Some(&names));
        let patched = daemon.load().unwrap();
        let fresh = Store::at(dir.path()).load().unwrap();
        assert_eq!(patched.vms, fresh.vms);
        assert_eq!(patched.errors, fresh.errors);
        assert_eq!(patched.vms.keys().map(|n| n.as_str()).collect::<Vec<_>>(), ["a", "c"]);
        assert!(patched.errors.contains_key("d.json"));
        // Through add and del, the cache follows the daemon's own writes too.
        drop(lock);
        assert_eq!(daemon.del(&"c".parse().unwrap()).unwrap(), Change::Removed);
        assert_eq!(
            daemon.add(&vm("e", "52:54:00:00:00:05", &["192.0.2.5"]), false, "boot").unwrap(),
            Change::Stored
        );
        assert_eq!(daemon.load().unwrap().vms, Store::at(dir.path()).load().unwrap().vms);
        let err = daemon.add(&vm("f", "52:54:00:00:00:06", &["192.0.2.5"]), false, "boot").unwrap_err();
        assert!(err.is::<Invalid>(), "{err:#}");
        assert!(err.to_string().contains("192.0.2.5 is already held by VM e"), "{err:#}");
    }

    /// The parse cache on disk must never make a fresh process see anything but what the
    /// files say: rewritten, removed, broken-in-place files and a broken cache.
    #[test]
    fn the_disk_cache_never_hides_a_change() {
        let dir = tempfile::tempdir().unwrap();
        let writer = Store::open(dir.path()).unwrap();
        let lock = writer.lock().unwrap();
        writer.load().unwrap();
        for i in 1..=3 {
            writer
                .put(
                    &lock,
                    &vm(&format!("v{i}"), &format!("52:54:00:00:00:0{i}"), &[&format!("192.0.2.{i}")]),
                )
                .unwrap();
        }
        writer.remove(&lock, &"v3".parse().unwrap()).unwrap();
        assert!(dir.path().join(PARSED_CACHE).exists(), "a writer saves the cache");
        let fresh = || Store::at(dir.path()).load().unwrap();
        assert_eq!(fresh().vms.keys().map(|n| n.as_str()).collect::<Vec<_>>(), ["v1", "v2"]);
        // Changed behind the cache's back: in place, and by another writer's rename.
        fs::write(dir.path().join("v1.json"), b"{").unwrap();
        Store::open(dir.path()).unwrap().put(&lock, &vm("v2", "52:54:00:00:00:02", &["192.0.2.9"])).unwrap();
        let snap = fresh();
        assert!(snap.errors.contains_key("v1.json"), "{:?}", snap.errors);
        assert_eq!(
            snap.vms[&"v2".parse().unwrap()].nics[0].addresses.iter().next().unwrap().to_string(),
            "192.0.2.9"
        );
        // A broken cache is ignored.
        fs::write(dir.path().join(PARSED_CACHE), b"[garbage").unwrap();
        assert_eq!(fresh().vms.len(), 1);
        // A refused or read-only command writes nothing.
        let before = fs::read(dir.path().join(PARSED_CACHE)).unwrap();
        fresh();
        assert_eq!(fs::read(dir.path().join(PARSED_CACHE)).unwrap(), before);
    }

    #[test]
    fn stale_temp_files_are_ignored_and_swept() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        fs::write(dir.path().join(".x.json.tmp"), b"{\"vers").unwrap();
        assert!(store.load().unwrap().errors.is_empty());
        let lock = store.lock().unwrap();
        store.put(&lock, &vm("x", "52:54:00:00:00:01", &["192.0.2.1"])).unwrap();
        assert!(!dir.path().join(".x.json.tmp").exists());
    }
}
