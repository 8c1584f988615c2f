//! `hvroute frr bootstrap`: put the rendered frr.conf in place and enable bgpd, once, at
//! install time.
//!
//! Contract:
//! - [`Bootstrap::plan`] reads FRR's config file and its `daemons` file (in the same
//!   directory) and computes the new contents; it writes nothing. [`Bootstrap::diff`]
//!   shows the change as a unified diff.
//! - [`Bootstrap::write`] first backs up each file it changes (`NAME.hvroute-bak-<UTC
//!   time>`, same owner and mode), then replaces it atomically: temp file in the same
//!   directory, fsync, rename, directory fsync. The new file keeps the old one's owner and
//!   mode (Debian: `frr:frr`, 0640), so FRR can still read it and `write memory` can still
//!   replace it. A file that needs no change is not touched.
//! - In the daemons file only the `bgpd=` setting changes (to `bgpd=yes`, appended if it
//!   is missing); every other line stays as it was.
//! - This is for bootstrap only. In operation hvroute edits FRR's running config through
//!   vtysh and FRR saves it itself; it never rewrites the admin's frr.conf (design.md §7).

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};

use crate::config::io_reason;

/// One file that bootstrap manages: what is there now and what it should hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileChange {
    pub path: PathBuf,
    /// None if the file does not exist.
    pub old: Option<String>,
    pub new: String,
    /// What the new contents are, for the diff's `+++` label.
    pub what: &'static str,
}

impl FileChange {
    pub fn changed(&self) -> bool {
        self.old.as_deref() != Some(self.new.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bootstrap {
    pub frr_conf: FileChange,
    /// FRR's `daemons` file; None if it does not exist (FRR is not installed there).
    pub daemons: Option<FileChange>,
    pub daemons_path: PathBuf,
}

/// What [`Bootstrap::write`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Written {
    /// Each file written, with its backup if there was an old file.
    pub files: Vec<(PathBuf, Option<PathBuf>)>,
}

impl Bootstrap {
    /// Reads the current files. `rendered` is the full frr.conf from [`super::render`].
    pub fn plan(config_file: &Path, rendered: String) -> Result<Bootstrap> {
        let dir = parent(config_file);
        let daemons_path = dir.join("daemons");
        let old = read_optional(config_file)?;
        let daemons = read_optional(&daemons_path)?.map(|text| FileChange {
            path: daemons_path.clone(),
            new: enable_bgpd(&text),
            old: Some(text),
            what: "bgpd enabled",
        });
        Ok(Bootstrap {
            frr_conf: FileChange {
                path: config_file.to_owned(),
                old,
                new: rendered,
                what: "hvroute frr render",
            },
            daemons,
            daemons_path,
        })
    }

    pub fn changed(&self) -> bool {
        self.frr_conf.changed() || self.daemons.as_ref().is_some_and(FileChange::changed)
    }

    /// A unified diff of every file that would change; empty if none would.
    pub fn diff(&self) -> String {
        let mut out = String::new();
        for f in std::iter::once(&self.frr_conf).chain(&self.daemons) {
            if f.changed() {
                let old_label = match f.old {
                    Some(_) => f.path.display().to_string(),
                    None => "/dev/null".to_string(),
                };
                let new_label = format!("{} ({})", f.path.display(), f.what);
                out.push_str(&unified_diff(f.old.as_deref().unwrap_or(""), &f.new, &old_label, &new_label));
            }
        }
        out
    }

    /// Backs up and atomically replaces each file that changes. Refuses before writing
    /// anything if FRR's directory or daemons file is missing.
    pub fn write(&self, now: SystemTime) -> Result<Written> {
        let dir = parent(&self.frr_conf.path);
        if !dir.is_dir() {
            bail!(
                "FRR's config directory {} does not exist; install FRR first (apt-get install frr)",
                dir.display()
            );
        }
        if self.daemons.is_none() {
            bail!(
                "FRR's daemons file {} does not exist, so bgpd cannot be enabled; install FRR first (apt-get install frr)",
                self.daemons_path.display()
            );
        }
        let stamp = utc_stamp(now);
        let mut written = Written::default();
        for f in std::iter::once(&self.frr_conf).chain(&self.daemons) {
            if !f.changed() {
                continue;
            }
            let backup = match &f.old {
                Some(_) => Some(backup(&f.path, &stamp)?),
                None => None,
            };
            replace_atomically(&f.path, &f.new)?;
            written.files.push((f.path.clone(), backup));
        }
        Ok(written)
    }
}

fn parent(p: &Path) -> PathBuf {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    }
}

fn read_optional(p: &Path) -> Result<Option<String>> {
    match fs::read_to_string(p) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => bail!("cannot read {}: {}", p.display(), io_reason(&e)),
    }
}

/// FRR's daemons file with bgpd enabled: every uncommented `bgpd=` line becomes
/// `bgpd=yes` (the shell takes the last one); without one, `bgpd=yes` is appended.
pub fn enable_bgpd(text: &str) -> String {
    let mut found = false;
    let mut out = String::with_capacity(text.len() + 10);
    for line in text.split_inclusive('\n') {
        let body = line.trim_end_matches('\n');
        let indent = &body[..body.len() - body.trim_start().len()];
        match body.trim_start().strip_prefix("bgpd=") {
            Some(value) => {
                found = true;
                let v = value.trim().trim_matches(|c| c == '"' || c == '\'');
                if v == "yes" {
                    out.push_str(line);
                } else {
                    out.push_str(indent);
                    out.push_str("bgpd=yes");
                    out.push_str(&line[body.len()..]);
                }
            }
            None => out.push_str(line),
        }
    }
    if !found {
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str("bgpd=yes\n");
    }
    out
}

/// Copies `path` to `path.hvroute-bak-STAMP` (or `-STAMP.N` if taken), with its owner
/// and mode.
fn backup(path: &Path, stamp: &str) -> Result<PathBuf> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut dst = path.with_file_name(format!("{name}.hvroute-bak-{stamp}"));
    let mut n = 1;
    while dst.exists() {
        dst = path.with_file_name(format!("{name}.hvroute-bak-{stamp}.{n}"));
        n += 1;
    }
    let meta = fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    fs::copy(path, &dst)
        .with_context(|| format!("cannot back up {} to {}", path.display(), dst.display()))?;
    let _ = std::os::unix::fs::chown(&dst, Some(meta.uid()), Some(meta.gid()));
    fs::File::open(&dst)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("cannot sync {}", dst.display()))?;
    Ok(dst)
}

/// Temp file in the same directory, same owner and mode as the old file (or the
/// directory's owner and 0640 for a new one), fsync, rename, directory fsync.
fn replace_atomically(path: &Path, text: &str) -> Result<()> {
    let dir = parent(path);
    let (mode, uid, gid) = match fs::metadata(path) {
        Ok(m) => (m.mode() & 0o7777, m.uid(), m.gid()),
        Err(_) => {
            let d = fs::metadata(&dir).with_context(|| format!("cannot read {}", dir.display()))?;
            (0o640, d.uid(), d.gid())
        }
    };
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.hvroute-tmp-{}", std::process::id()));
    let result = (|| -> Result<()> {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        f.write_all(text.as_bytes()).with_context(|| format!("cannot write {}", tmp.display()))?;
        f.set_permissions(fs::Permissions::from_mode(mode))
            .with_context(|| format!("cannot set the mode of {}", tmp.display()))?;
        // Only root can give a file away; as another user the file stays the writer's.
        let _ = std::os::unix::fs::fchown(&f, Some(uid), Some(gid));
        f.sync_all().with_context(|| format!("cannot sync {}", tmp.display()))?;
        fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))?;
        fs::File::open(&dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("cannot sync {}", dir.display()))?;
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// `20250131T235959Z` for a time, in UTC.
pub fn utc_stamp(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days, for days since 1970-01-01 (never negative here).
    let z = days as i64 + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Edit {
    Same,
    Del,
    Ins,
}

/// Above this many cells the middle of the two files is shown as replaced wholesale
/// rather than computed line by line (16 MB of table).
const MAX_LCS_CELLS: usize = 4_000_000;
const CONTEXT: usize = 3;

/// A unified diff (`diff -u` style, 3 lines of context) of two texts; empty if equal.
pub fn unified_diff(old: &str, new: &str, old_label: &str, new_label: &str) -> String {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    if a == b {
        return String::new();
    }
    let script = edit_script(&a, &b);
    // Walk the script, remembering each line's number on both sides.
    let mut rows: Vec<(Edit, usize, usize)> = Vec::with_capacity(script.len());
    let (mut i, mut j) = (0, 0);
    for e in &script {
        rows.push((*e, i, j));
        match e {
            Edit::Same => {
                i += 1;
                j += 1;
            }
            Edit::Del => i += 1,
            Edit::Ins => j += 1,
        }
    }
    let mut out = format!("--- {old_label}\n+++ {new_label}\n");
    let changes: Vec<usize> = (0..rows.len()).filter(|&k| rows[k].0 != Edit::Same).collect();
    let mut k = 0;
    while k < changes.len() {
        // Grow a hunk while the next change is within 2 * CONTEXT unchanged lines.
        let start = changes[k].saturating_sub(CONTEXT);
        let mut last = changes[k];
        while k + 1 < changes.len() && changes[k + 1] - last <= 2 * CONTEXT {
            k += 1;
            last = changes[k];
        }
        let end = (last + CONTEXT + 1).min(rows.len());
        let hunk = &rows[start..end];
        let old_n = hunk.iter().filter(|r| r.0 != Edit::Ins).count();
        let new_n = hunk.iter().filter(|r| r.0 != Edit::Del).count();
        let (old_at, new_at) = (hunk[0].1, hunk[0].2);
        out.push_str(&format!("@@ -{} +{} @@\n", range(old_at, old_n), range(new_at, new_n)));
        for (e, i, j) in hunk {
            match e {
                Edit::Same => out.push_str(&format!(" {}\n", a[*i])),
                Edit::Del => out.push_str(&format!("-{}\n", a[*i])),
                Edit::Ins => out.push_str(&format!("+{}\n", b[*j])),
            }
        }
        k += 1;
    }
    out
}

/// GNU diff's range: `L,N`, `L` when N is 1, and the line before when N is 0.
fn range(at: usize, n: usize) -> String {
    match n {
        0 => format!("{at},0"),
        1 => format!("{}", at + 1),
        _ => format!("{},{n}", at + 1),
    }
}

/// Longest-common-subsequence edit script, after trimming the common head and tail.
fn edit_script(a: &[&str], b: &[&str]) -> Vec<Edit> {
    let head = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    let tail = a[head..].iter().rev().zip(b[head..].iter().rev()).take_while(|(x, y)| x == y).count();
    let (ma, mb) = (&a[head..a.len() - tail], &b[head..b.len() - tail]);
    let mut script = vec![Edit::Same; head];
    let (n, m) = (ma.len(), mb.len());
    if n.saturating_mul(m) > MAX_LCS_CELLS {
        script.extend(std::iter::repeat_n(Edit::Del, n));
        script.extend(std::iter::repeat_n(Edit::Ins, m));
    } else {
        // lcs[i * (m + 1) + j]: the LCS length of ma[i..] and mb[j..].
        let w = m + 1;
        let mut lcs = vec![0u32; (n + 1) * w];
        for i in (0..n).rev() {
            for j in (0..m).rev() {
                lcs[i * w + j] = if ma[i] == mb[j] {
                    lcs[(i + 1) * w + j + 1] + 1
                } else {
                    lcs[(i + 1) * w + j].max(lcs[i * w + j + 1])
                };
            }
        }
        let (mut i, mut j) = (0, 0);
        while i < n || j < m {
            if i < n && j < m && ma[i] == mb[j] {
                script.push(Edit::Same);
                i += 1;
                j += 1;
            } else if j == m || (i < n && lcs[(i + 1) * w + j] >= lcs[i * w + j + 1]) {
                script.push(Edit::Del);
                i += 1;
            } else {
                script.push(Edit::Ins);
                j += 1;
            }
        }
    }
    script.extend(std::iter::repeat_n(Edit::Same, tail));
    script
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn daemons_file_gets_bgpd_and_keeps_the_rest() {
        let text = "# bgpd=no in a comment stays\nbgpd=no\nbgpd_options=\"   -A 127.0.0.1\"\nospfd=no\n";
        assert_eq!(
            enable_bgpd(text),
            "# bgpd=no in a comment stays\nbgpd=yes\nbgpd_options=\"   -A 127.0.0.1\"\nospfd=no\n"
        );
        assert_eq!(enable_bgpd("bgpd=yes\n"), "bgpd=yes\n");
        assert_eq!(enable_bgpd("bgpd=\"yes\"\n"), "bgpd=\"yes\"\n");
        assert_eq!(enable_bgpd("zebra=yes"), "zebra=yes\nbgpd=yes\n");
        assert_eq!(enable_bgpd(""), "bgpd=yes\n");
    }

    #[test]
    fn utc_stamps() {
        assert_eq!(utc_stamp(UNIX_EPOCH), "19700101T000000Z");
        let t = UNIX_EPOCH + std::time::Duration::from_secs(951_827_696); // leap day 2000
        assert_eq!(utc_stamp(t), "20000229T123456Z");
        let t = UNIX_EPOCH + std::time::Duration::from_secs(1_767_225_599);
        assert_eq!(utc_stamp(t), "20251231T235959Z");
    }

    #[test]
    fn unified_diff_matches_gnu_layout() {
        let old = "a\nb\nc\nd\ne\nf\ng\nh\ni\nj\nk\n";
        let new = "a\nb\nc\nD\ne\nf\ng\nh\ni\nj\nk\nl\n";
        assert_eq!(
            unified_diff(old, new, "x", "y"),
            "--- x\n+++ y\n@@ -1,7 +1,7 @@\n a\n b\n c\n-d\n+D\n e\n f\n g\n@@ -9,3 +9,4 @@\n i\n j\n k\n+l\n"
        );
        assert_eq!(unified_diff("", "a\n", "/dev/null", "y"), "--- /dev/null\n+++ y\n@@ -0,0 +1 @@\n+a\n");
        assert_eq!(unified_diff("same\n", "same\n", "x", "y"), "");
    }
}
