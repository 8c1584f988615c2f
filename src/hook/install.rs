//! `hvroute hook install [--dir /etc/libvirt/hooks]`: puts hvroute's qemu hook where
//! libvirt finds it.
//!
//! Contract:
//! - Writes exactly one file, `DIR/qemu.d/hvroute` (mode 0755, atomically): a shell
//!   script that execs this binary, by absolute path, with this `--config`, as
//!   `hook qemu "$@"`. libvirt (6.5 and later) runs every executable in `qemu.d` after
//!   `DIR/qemu`, so an existing `DIR/qemu` is never touched.
//! - Idempotent: the same script again changes nothing. A file of that name that hvroute
//!   did not write is refused (exit 2), never overwritten.
//! - libvirtd looks for hooks when it starts (and on SIGHUP); the command says so.
//! - `--bin PATH` (hidden) writes the script for the binary as installed on another host;
//!   scripts/package.sh makes the Debian package's hook file with it, so the package and
//!   `hook install` ship the same script.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::InstallArgs;
use crate::model::Invalid;

/// The file name in `qemu.d`.
pub const SCRIPT: &str = "hvroute";
/// The line that marks a script as hvroute's own.
pub const MARKER: &str = "# Installed by `hvroute hook install`";

/// `'...'` for sh, whatever the text holds.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The script for this binary and config file (both absolute).
pub fn script(bin: &Path, config: &Path) -> Result<String, Invalid> {
    let utf8 = |p: &Path| {
        p.to_str().map(str::to_owned).ok_or_else(|| Invalid(format!("path {} is not UTF-8", p.display())))
    };
    Ok(format!(
        "#!/bin/sh\n\
         {MARKER}: libvirt's qemu hook for hvroute.\n\
         # libvirt runs it as `hvroute NAME OP SUBOP EXTRA` with the domain XML on stdin.\n\
         exec {} --config {} hook qemu \"$@\"\n",
        sh_quote(&utf8(bin)?),
        sh_quote(&utf8(config)?)
    ))
}

/// What [`install`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Installed {
    New(PathBuf),
    Updated(PathBuf),
    Unchanged(PathBuf),
}

/// Installs the script for `bin` and `config` in `dir/qemu.d`.
pub fn install(dir: &Path, bin: &Path, config: &Path) -> Result<Installed> {
    let text = script(bin, config)?;
    let qemu_d = dir.join("qemu.d");
    fs::create_dir_all(&qemu_d).with_context(|| format!("cannot create {}", qemu_d.display()))?;
    let path = qemu_d.join(SCRIPT);
    let old = match fs::read(&path) {
        Ok(b) => Some(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let executable = fs::metadata(&path).is_ok_and(|m| m.permissions().mode() & 0o111 == 0o111);
    match &old {
        Some(b) if b == text.as_bytes() && executable => return Ok(Installed::Unchanged(path)),
        Some(b) if !String::from_utf8_lossy(b).contains(MARKER) => {
            return Err(Invalid(format!(
                "{} exists and was not written by hvroute; move it away or give another --dir",
                path.display()
            ))
            .into());
        }
        _ => {}
    }
    let tmp = qemu_d.join(format!(".{SCRIPT}.tmp"));
    let mut f = fs::File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(text.as_bytes()).with_context(|| format!("cannot write {}", tmp.display()))?;
    f.set_permissions(fs::Permissions::from_mode(0o755))
        .with_context(|| format!("cannot make {} executable", tmp.display()))?;
    f.sync_all().with_context(|| format!("cannot sync {}", tmp.display()))?;
    drop(f);
    fs::rename(&tmp, &path)
        .with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))?;
    Ok(if old.is_some() { Installed::Updated(path) } else { Installed::New(path) })
}

pub fn run(config: &Path, a: &InstallArgs) -> Result<()> {
    let config =
        std::path::absolute(config).with_context(|| format!("cannot resolve {}", config.display()))?;
    let bin = match &a.bin {
        Some(b) if b.is_absolute() => b.clone(),
        Some(b) => return Err(Invalid(format!("--bin {} is not an absolute path", b.display())).into()),
        None => std::env::current_exe().context("cannot tell where this hvroute binary is")?,
    };
    // Packaging for another host (--bin): its config is not this machine's business.
    if a.bin.is_none() {
        match crate::config::Config::load(&config) {
            Err(e) => eprintln!(
                "hvroute: warning: {e}; until it loads, the hook refuses to start VMs that have hvroute metadata"
            ),
            Ok(c) if !c.hook.enabled => eprintln!(
                "hvroute: warning: hook.enabled = false in {}: the hook leaves every VM alone until it is true",
                config.display()
            ),
            Ok(_) => {}
        }
    }
    let done = install(&a.dir, &bin, &config)?;
    let changed = match &done {
        Installed::New(p) => {
            println!(
                "installed {}: libvirt runs `{} --config {} hook qemu ...`",
                p.display(),
                bin.display(),
                config.display()
            );
            true
        }
        Installed::Updated(p) => {
            println!(
                "updated {} to run `{} --config {} hook qemu ...`",
                p.display(),
                bin.display(),
                config.display()
            );
            true
        }
        Installed::Unchanged(p) => {
            println!("{} is already installed as it should be; nothing to do", p.display());
            false
        }
    };
    let legacy = a.dir.join("qemu");
    if legacy.exists() {
        println!(
            "{} exists and is left as it is; libvirt runs it before the scripts in qemu.d",
            legacy.display()
        );
    }
    if changed {
        println!(
            "libvirtd looks for hooks only when it starts: restart libvirtd (or virtqemud), or send it SIGHUP, \
             before the next VM start"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_quotes_any_path() {
        let s = script(Path::new("/opt/it's here/hvroute"), Path::new("/etc/hvroute/a b.toml")).unwrap();
        assert!(s.starts_with("#!/bin/sh\n") && s.contains(MARKER));
        assert!(
            s.contains(r#"exec '/opt/it'\''s here/hvroute' --config '/etc/hvroute/a b.toml' hook qemu "$@""#),
            "{s}"
        );
    }

    /// Prevents: a reinstall or an upgrade clobbering an admin's own hook, or leaving a
    /// stale hvroute hook that runs an old binary.
    #[test]
    fn install_is_idempotent_and_never_clobbers() {
        let dir = tempfile::tempdir().unwrap();
        let (bin, cfg) = (Path::new("/usr/local/bin/hvroute"), Path::new("/etc/hvroute/hvroute.toml"));
        fs::write(dir.path().join("qemu"), "#!/bin/sh\nexit 0\n").unwrap();
        let p = dir.path().join("qemu.d").join(SCRIPT);
        assert_eq!(install(dir.path(), bin, cfg).unwrap(), Installed::New(p.clone()));
        assert_eq!(fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o755);
        assert_eq!(install(dir.path(), bin, cfg).unwrap(), Installed::Unchanged(p.clone()));
        assert_eq!(
            install(dir.path(), Path::new("/usr/bin/hvroute"), cfg).unwrap(),
            Installed::Updated(p.clone())
        );
        assert!(fs::read_to_string(&p).unwrap().contains("'/usr/bin/hvroute'"));
        assert_eq!(fs::read_to_string(dir.path().join("qemu")).unwrap(), "#!/bin/sh\nexit 0\n");
        let entries: Vec<_> =
            fs::read_dir(dir.path().join("qemu.d")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(entries, [SCRIPT], "no temp file left behind");

        fs::write(&p, "#!/bin/sh\n# the admin's own\n").unwrap();
        let e = install(dir.path(), bin, cfg).unwrap_err();
        assert!(e.chain().any(|c| c.is::<Invalid>()), "{e:#}");
        assert_eq!(fs::read_to_string(&p).unwrap(), "#!/bin/sh\n# the admin's own\n");
    }
}
