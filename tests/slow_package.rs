//! Issue 7's packaging acceptance (docs/packaging.md): the Debian package that
//! `scripts/package.sh` builds passes lintian without an error, its systemd unit passes
//! `systemd-analyze verify` as shipped, and it installs with `dpkg -i` plus
//! `apt-get -f install` into a fresh Debian 12 root made with debootstrap, where the
//! binary, the example config, the manual page, the `proto hvroute` name, the conffiles,
//! the unit, the hook and the completions are checked, and remove and purge are clean.
//!
//! The package is built once per run from the debug binary this test run already built
//! (`scripts/package.sh --binary`), which saves a release build of several minutes; the
//! packaging is the same. The pristine debootstrap root is cached as a tarball in
//! `${HVROUTE_CACHE:-/var/cache/hvroute-test}/debootstrap/`; without it the test makes
//! one (about a minute more). Named `slow_*`, so `scripts/test.sh --quick` skips it.
//!
//! Needs root (chroot, mounts), lintian, debootstrap, systemd-analyze and cargo-deb
//! (`scripts/test.sh` installs them) and the Debian mirror this machine's apt uses. The
//! root lives in a temp dir under /var/tmp; its /proc is unmounted on drop, and the root
//! is deleted only once nothing is mounted under it. Nothing in the root is started: a
//! policy-rc.d forbids it. Network traffic inside the root is only `ip` on a loopback in
//! a network namespace of its own (`unshare --net`), with 192.0.2.0/24.
//!
//! Run: `cargo test --test slow_package -- --test-threads=2`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Instant;

use common::{BIN, require_root, show, stdout};

const VERSION: &str = env!("CARGO_PKG_VERSION");
const REPO: &str = env!("CARGO_MANIFEST_DIR");
/// What the cached root holds besides minbase: man-db, to read the manual page.
const INCLUDE: &str = "man-db";

/// Runs a command and returns its output (never panics on a non-zero exit).
fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Runs a command and returns its stdout; panics with everything it printed otherwise.
fn ok(cmd: &mut Command) -> String {
    let o = run(cmd);
    assert!(o.status.success(), "{cmd:?} failed:\n{}", show(&o));
    stdout(&o)
}

/// The package, built once per test run.
fn deb() -> &'static Path {
    static DEB: OnceLock<PathBuf> = OnceLock::new();
    DEB.get_or_init(|| {
        require_root();
        let t = Instant::now();
        let out = ok(Command::new(format!("{REPO}/scripts/package.sh")).args(["--binary", BIN]));
        let deb = PathBuf::from(out.lines().last().expect("package.sh printed the .deb's path").trim());
        assert_eq!(
            deb.file_name().unwrap().to_str().unwrap(),
            format!("hvroute_{VERSION}_amd64.deb"),
            "package.sh built {}",
            deb.display()
        );
        eprintln!("package: built {} in {:.1} s", deb.display(), t.elapsed().as_secs_f64());
        deb
    })
}

/// Prevents: a package Debian's tooling rejects (lintian errors), or a unit file systemd
/// would ignore a line of, that stops the daemon on a restart with its routes, or that
/// starts too late for libvirt's autostarted VMs; and `proto 44` staying a bare number.
#[test]
fn lintian_has_no_error_and_the_shipped_unit_verifies() {
    let deb = deb();
    let t = Instant::now();
    let o = run(Command::new("lintian").arg("--info").arg(deb));
    let text = format!("{}{}", stdout(&o), common::stderr(&o));
    eprintln!("lintian took {:.1} s", t.elapsed().as_secs_f64());
    let errors: Vec<&str> = text.lines().filter(|l| l.starts_with("E:")).collect();
    assert!(errors.is_empty() && o.status.code().is_some(), "lintian reports errors:\n{text}");
    for w in text.lines().filter(|l| l.starts_with("W:")) {
        eprintln!("lintian: {w}");
    }

    // The unit as shipped, in a root that holds the package's files over the host's
    // systemd units (for the targets it names): ExecStart must resolve there and the
    // Documentation= manual page must exist.
    let root = tempfile::Builder::new().prefix("hvt-pkg-unit-").tempdir().unwrap();
    let r = root.path();
    std::fs::create_dir_all(r.join("usr/lib/systemd")).unwrap();
    ok(Command::new("cp").arg("-a").arg("/usr/lib/systemd/system").arg(r.join("usr/lib/systemd/")));
    ok(Command::new("dpkg-deb").arg("-x").arg(deb).arg(r));
    let unit_path = r.join("usr/lib/systemd/system/hvroute.service");
    let unit = std::fs::read_to_string(&unit_path).unwrap();
    let o = run(Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", r.display()))
        .arg("hvroute.service")
        .env("MANPATH", r.join("usr/share/man")));
    // verify exits 0 on lines it ignores ("Failed to parse ..., ignoring"): any output fails.
    assert!(
        o.status.success() && o.stdout.is_empty() && o.stderr.is_empty(),
        "systemd-analyze verify of the shipped unit:\n{}\n{unit}",
        show(&o)
    );
    let directives: Vec<&str> = unit.lines().filter(|l| !l.starts_with('#')).collect();
    for want in [
        "Wants=frr.service",
        "After=network.target frr.service",
        "Before=libvirtd.service virtqemud.service",
        "Restart=on-failure",
        "ExecStart=/usr/bin/hvroute daemon",
        "RuntimeDirectory=hvroute",
        "StateDirectory=hvroute",
    ] {
        assert!(directives.contains(&want), "the unit lacks {want:?}:\n{unit}");
    }
    assert!(
        !directives.iter().any(|l| l.starts_with("ExecStop")),
        "stopping hvroute must leave routes in place (design.md §3): no ExecStop\n{unit}"
    );
}

/// A Debian 12 root in a temp dir under /var/tmp, with /proc mounted. Drop unmounts it
/// and deletes the root only once nothing is mounted under it.
struct Root {
    dir: PathBuf,
    mounts: Vec<PathBuf>,
}

impl Root {
    fn path(&self) -> &Path {
        &self.dir
    }

    /// `chroot ROOT sh -c CMD` with a clean environment.
    fn sh(&self, cmd: &str) -> Output {
        run(Command::new("chroot")
            .arg(&self.dir)
            .args(["/usr/bin/env", "-i"])
            .args([
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "LANG=C.UTF-8",
                "HOME=/root",
                "DEBIAN_FRONTEND=noninteractive",
            ])
            .args(["/bin/sh", "-c", cmd]))
    }

    fn sh_ok(&self, cmd: &str) -> String {
        let o = self.sh(cmd);
        assert!(o.status.success(), "in the root: {cmd}\n{}", show(&o));
        stdout(&o)
    }

    fn mount_proc(&mut self) {
        let p = self.dir.join("proc");
        ok(Command::new("mount").args(["-t", "proc", "proc"]).arg(&p));
        self.mounts.push(p);
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        for m in self.mounts.iter().rev() {
            let _ = Command::new("umount").arg(m).status();
        }
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let prefix = format!("{}/", self.dir.display());
        if mountinfo.lines().any(|l| l.split(' ').nth(4).is_some_and(|p| p.starts_with(&prefix))) {
            eprintln!("slow_package: something is still mounted under {}; left in place", self.dir.display());
            return;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The Debian mirror this machine's apt uses for bookworm: deb822 `URIs:` of a stanza
/// whose `Suites:` has `bookworm`, or a one-line `deb URI bookworm ...`.
fn mirror() -> String {
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(d) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<PathBuf> = d.flatten().map(|e| e.path()).collect();
        more.sort();
        files.extend(more);
    }
    for f in files {
        let Ok(text) = std::fs::read_to_string(&f) else { continue };
        let name = f.to_string_lossy();
        if name.ends_with(".sources") {
            for stanza in text.split("\n\n") {
                let field =
                    |k: &str| stanza.lines().find_map(|l| l.strip_prefix(k).map(|v| v.trim().to_string()));
                let enabled = field("Enabled:").is_none_or(|v| v != "no");
                let (Some(uris), Some(suites)) = (field("URIs:"), field("Suites:")) else { continue };
                if enabled && suites.split_whitespace().any(|s| s == "bookworm") {
                    return uris.split_whitespace().next().unwrap().to_string();
                }
            }
        } else if name.ends_with(".list") {
            for l in text.lines() {
                let w: Vec<&str> = l.split_whitespace().filter(|w| !w.starts_with('[')).collect();
                if w.len() >= 3 && w[0] == "deb" && w[2] == "bookworm" {
                    return w[1].to_string();
                }
            }
        }
    }
    panic!("no Debian bookworm mirror in /etc/apt/sources.list or /etc/apt/sources.list.d");
}

/// A fresh minbase bookworm root: unpacked from the cached tarball, or made with
/// debootstrap (and then cached).
fn fresh_root() -> Root {
    let dir = tempfile::Builder::new().prefix("hvt-pkg-root-").tempdir_in("/var/tmp").unwrap().keep();
    let root = Root { dir, mounts: Vec::new() };
    let cache = std::env::var("HVROUTE_CACHE").unwrap_or_else(|_| "/var/cache/hvroute-test".into());
    let tarball = PathBuf::from(cache).join("debootstrap").join(format!("bookworm-minbase-{INCLUDE}.tar"));
    let t = Instant::now();
    if tarball.is_file() {
        ok(Command::new("tar").arg("-xpf").arg(&tarball).arg("--numeric-owner").arg("-C").arg(root.path()));
        eprintln!("root: unpacked {} in {:.1} s", tarball.display(), t.elapsed().as_secs_f64());
        return root;
    }
    let mirror = mirror();
    ok(Command::new("debootstrap")
        .args(["--variant=minbase", &format!("--include={INCLUDE}"), "bookworm"])
        .arg(root.path())
        .arg(&mirror));
    eprintln!(
        "root: debootstrap --variant=minbase bookworm from {mirror} took {:.1} s",
        t.elapsed().as_secs_f64()
    );
    // Cache it (write, then rename: a half-written tarball is never used).
    let dir = tarball.parent().unwrap();
    if std::fs::create_dir_all(dir).is_ok() {
        let tmp =
            dir.join(format!(".{}.{}", tarball.file_name().unwrap().to_string_lossy(), std::process::id()));
        let o = run(Command::new("tar")
            .arg("-cf")
            .arg(&tmp)
            .arg("--numeric-owner")
            .arg("-C")
            .arg(root.path())
            .arg("."));
        if o.status.success() && std::fs::rename(&tmp, &tarball).is_ok() {
            eprintln!("root: cached as {}", tarball.display());
        } else {
            let _ = std::fs::remove_file(&tmp);
            eprintln!("root: not cached: {}", show(&o));
        }
    }
    root
}

/// Prevents: a package that does not install on a plain Debian 12 (a missing or wrong
/// dependency, a maintainer script that fails without systemd running), a binary or an
/// example config that does not work once installed, a missing manual page, conffile,
/// unit, hook or completion, and a remove or purge that fails or leaves the wrong things.
#[test]
fn installs_into_a_fresh_debian_12_root_and_works_there() {
    let deb = deb();
    let mut root = fresh_root();
    let r = root.path().to_path_buf();
    root.mount_proc();
    // No service may start in the root.
    std::fs::write(r.join("usr/sbin/policy-rc.d"), "#!/bin/sh\nexit 101\n").unwrap();
    ok(Command::new("chmod").arg("755").arg(r.join("usr/sbin/policy-rc.d")));
    std::fs::copy("/etc/resolv.conf", r.join("etc/resolv.conf")).unwrap();
    std::fs::copy(deb, r.join("tmp/hvroute.deb")).unwrap();

    // dpkg -i fails on the missing dependencies (frr, nftables); apt-get -f installs them.
    let t = Instant::now();
    let o = root.sh("dpkg -i /tmp/hvroute.deb");
    assert!(o.status.success() || common::stderr(&o).contains("dependency problems"), "{}", show(&o));
    root.sh_ok("apt-get update -qq && apt-get -f install -y -qq --no-install-recommends");
    eprintln!("root: dpkg -i and apt-get -f install took {:.1} s", t.elapsed().as_secs_f64());
    let status = root.sh_ok("dpkg-query -W -f='${Status} ${Version}' hvroute");
    assert_eq!(status, format!("install ok installed {VERSION}"));

    let v = root.sh_ok("hvroute --version");
    assert_eq!(v.trim(), format!("hvroute {VERSION}"));
    let conf = root.sh_ok("hvroute --config /etc/hvroute/hvroute.toml frr render");
    assert!(conf.lines().any(|l| l.starts_with("router bgp ")), "frr render:\n{conf}");
    let man = root.sh_ok("MANPAGER=cat MANWIDTH=80 man hvroute");
    assert!(man.contains("hvroute") && man.contains("SUBCOMMANDS"), "man hvroute:\n{man}");
    let man_sub = root.sh_ok("MANPAGER=cat MANWIDTH=80 man hvroute-vm-add");
    assert!(man_sub.contains("--mac"), "man hvroute-vm-add:\n{man_sub}");

    // rt_protos.d: `ip` names protocol 44 `hvroute`, both ways, in a namespace of its own.
    let ip = root.sh_ok(
        "unshare --net sh -c 'ip link set lo up && ip route add 192.0.2.1/32 dev lo proto hvroute \
         && ip -d route show && echo --- && ip route show proto 44'",
    );
    let (shown, by_number) = ip.split_once("---").unwrap();
    assert!(
        shown.lines().any(|l| l.contains("192.0.2.1 dev lo proto hvroute"))
            && by_number.contains("192.0.2.1"),
        "ip -d route, then ip route show proto 44:\n{ip}"
    );

    let conffiles = std::fs::read_to_string(r.join("var/lib/dpkg/info/hvroute.conffiles")).unwrap();
    for f in [
        "/etc/hvroute/hvroute.toml",
        "/etc/iproute2/rt_protos.d/hvroute.conf",
        "/etc/libvirt/hooks/qemu.d/hvroute",
    ] {
        assert!(conffiles.lines().any(|l| l.trim() == f), "{f} is not a conffile:\n{conffiles}");
    }
    let hook = std::fs::read_to_string(r.join("etc/libvirt/hooks/qemu.d/hvroute")).unwrap();
    assert!(
        hook.contains("exec '/usr/bin/hvroute' --config '/etc/hvroute/hvroute.toml' hook qemu \"$@\""),
        "{hook}"
    );
    // The same script `hvroute hook install` writes on the host: nothing to do.
    let again = root.sh_ok("hvroute hook install");
    assert!(again.contains("already installed"), "{again}");
    for f in [
        "usr/lib/systemd/system/hvroute.service",
        "usr/share/bash-completion/completions/hvroute",
        "usr/share/zsh/vendor-completions/_hvroute",
        "usr/share/doc/hvroute/copyright",
        "usr/share/doc/hvroute/README.md",
        "usr/share/doc/hvroute/packaging.md",
    ] {
        assert!(r.join(f).is_file(), "{f} is missing");
    }
    // The shipped hook stops no VM: the example config has hook.enabled = false.
    let xml = "<domain type='kvm'><name>web1</name><metadata><hvroute:vm xmlns:hvroute='urn:hvroute:metadata:1'>\
               <hvroute:interface mac='52:54:00:00:00:01'><hvroute:address>203.0.113.9</hvroute:address>\
               </hvroute:interface></hvroute:vm></metadata><devices><interface type='bridge'>\
               <mac address='52:54:00:00:00:01'/><source bridge='cloudbr0'/></interface></devices></domain>";
    std::fs::write(r.join("tmp/web1.xml"), xml).unwrap();
    let o = root.sh("/etc/libvirt/hooks/qemu.d/hvroute web1 prepare begin - </tmp/web1.xml");
    assert!(o.status.success() && o.stdout.is_empty(), "the packaged hook:\n{}", show(&o));

    // Remove keeps the conffiles, purge takes them and the state dir.
    std::fs::create_dir_all(r.join("var/lib/hvroute")).unwrap();
    root.sh_ok("dpkg -r hvroute");
    assert!(!r.join("usr/bin/hvroute").exists());
    assert!(r.join("etc/hvroute/hvroute.toml").is_file(), "remove must keep the conffiles");
    root.sh_ok("dpkg --purge hvroute");
    for gone in ["etc/hvroute/hvroute.toml", "etc/libvirt/hooks/qemu.d/hvroute", "var/lib/hvroute"] {
        assert!(!r.join(gone).exists(), "{gone} is still there after purge");
    }
}
