//! Bad input at the libvirt hook (`hvroute hook qemu`), through the real binary: every
//! case gets its documented exit code, one sentence on stderr, nothing on stdout, and a
//! state dir that is byte-identical afterwards, with the other VMs in it undisturbed.
//! Plus the hard time cap and `hook install`.
//!
//! None of these cases reaches the kernel. As root, each hook still runs in a network
//! namespace of its own (`unshare --net`, gone when the process ends), so that a
//! regression could never touch the host's network.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::hook::{Stdin, XmlNic, domain_xml, hook_cmd, simple_xml};

struct Env {
    dir: tempfile::TempDir,
}

const HELD_MAC: &str = "52:54:00:00:00:01";
const HELD4: &str = "192.0.2.10";

impl Env {
    fn new(timeout_s: u64) -> Env {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("boot_id"), "boot-1\n").unwrap();
        let cfg = format!(
            "state_dir = \"{d}/state\"\nsocket = \"{d}/hvroute.sock\"\nboot_id_path = \"{d}/boot_id\"\n\
             [pools]\nipv4 = [\"192.0.2.0/24\"]\nipv6 = [\"2001:db8:100::/40\"]\n\
             [bgp]\nasn = 65001\nrouter_id = \"10.255.0.1\"\n[frr]\nenabled = false\n[hook]\ntimeout_s = {timeout_s}\n",
            d = dir.path().display()
        );
        std::fs::write(dir.path().join("hvroute.toml"), cfg).unwrap();
        let env = Env { dir };
        // Two VMs that must not be disturbed: one from `vm add`, one from the hook.
        let o = env.cli(&["vm", "add", "held", "--mac", HELD_MAC, "--ip", HELD4, "--ip", "2001:db8:100::10"]);
        assert!(o.status.success(), "{}", common::show(&o));
        std::fs::write(
            env.state_dir().join("other.json"),
            r#"{"version":1,"name":"other","nics":[{"mac":"52:54:00:00:00:02","addresses":["192.0.2.20"],"port":"vnet9"}],"source":"hook","boot_id":"boot-1"}"#,
        )
        .unwrap();
        env
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("hvroute.toml")
    }

    fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn cli(&self, args: &[&str]) -> Output {
        Command::new(common::BIN).arg("--config").arg(self.config()).args(args).output().unwrap()
    }

    /// The hook, in a network namespace of its own when root.
    fn hook(&self, args: [&str; 4], stdin: Stdin) -> Output {
        hook_cmd(isolate(), &self.config(), args, stdin)
    }

    /// Every file in the state dir with its bytes (the lock file aside), the parse cache
    /// in `.cache/` included.
    fn state(&self) -> BTreeMap<PathBuf, Vec<u8>> {
        fn walk(dir: &std::path::Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
            for e in std::fs::read_dir(dir).unwrap().flatten() {
                if e.path().is_dir() {
                    walk(&e.path(), out);
                } else if e.file_name() != ".lock" {
                    out.insert(e.path(), std::fs::read(e.path()).unwrap());
                }
            }
        }
        let mut out = BTreeMap::new();
        walk(&self.state_dir(), &mut out);
        out
    }
}

fn isolate() -> &'static [&'static str] {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 { &["unshare", "--net", "--"] } else { &[] }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// One clear sentence: a single line, starting with "hvroute:", no panic or backtrace.
fn assert_one_sentence(o: &Output, needle: &str, what: &str) {
    let e = stderr(o);
    assert_eq!(e.trim_end().lines().count(), 1, "{what}: stderr is not one line: {e:?}");
    assert!(e.starts_with("hvroute: "), "{what}: {e:?}");
    assert!(e.contains(needle), "{what}: stderr {e:?} does not name {needle:?}");
    assert!(!e.contains("panicked") && !e.contains("RUST_BACKTRACE"), "{what}: {e:?}");
}

fn web1(addrs: &[&str]) -> String {
    simple_xml("web1", "52:54:00:00:00:31", addrs, Some("vnet0"))
}

/// Prevents: a broken or hostile domain XML (or libvirt handing none) making the hook
/// panic, hang, print on stdout (for migrate, libvirt would take that as the new XML),
/// write half an entry, or disturb other VMs; and a start with bad addresses going ahead.
#[test]
fn bad_input_is_refused_at_start_and_migrate_with_state_untouched() {
    let env = Env::new(10);
    let before = env.state();
    let huge =
        format!("<domain><name>web1</name><description>{}</description></domain>", "x".repeat(10 << 20));
    let two_nics = domain_xml(
        "web1",
        Some(&[("52:54:00:00:00:31", &["192.0.2.31"]), ("52:54:00:00:00:32", &["192.0.2.31"])]),
        &[
            XmlNic { mac: "52:54:00:00:00:31", bridge: "cloudbr0", target: None },
            XmlNic { mac: "52:54:00:00:00:32", bridge: "cloudbr0", target: None },
        ],
    );
    let other_bridge = domain_xml(
        "web1",
        Some(&[("52:54:00:00:00:31", &["192.0.2.31"])]),
        &[XmlNic { mac: "52:54:00:00:00:31", bridge: "storage0", target: None }],
    );
    let cases: Vec<(String, Stdin, &str)> = vec![
        ("malformed XML".into(), Stdin::Bytes(b"<domain><name>web1</name><devices>"), "not well-formed"),
        (
            "not a domain".into(),
            Stdin::Bytes(b"<network><name>web1</name></network>"),
            "root element is <network>",
        ),
        ("a 10 MB XML".into(), Stdin::Bytes(huge.as_bytes()), "larger than 4 MiB"),
        ("empty stdin".into(), Stdin::Null, "no domain XML on stdin"),
        ("closed stdin".into(), Stdin::Closed, "no domain XML on stdin"),
        ("not UTF-8".into(), Stdin::Bytes(b"<domain>\xff\xfe</domain>"), "not UTF-8"),
    ];
    let held_by = format!("already held by VM held (MAC {HELD_MAC})");
    let metadata_cases: Vec<(&str, String, &str)> = vec![
        ("a malformed address", web1(&["192.0.2.300"]), "192.0.2.300"),
        ("a prefix length", web1(&["192.0.2.31/24"]), "192.0.2.31/24"),
        ("outside the pools", web1(&["198.51.100.7"]), "198.51.100.7"),
        ("the gateway", web1(&["169.254.0.1"]), "169.254.0.1"),
        ("a duplicate address", web1(&["192.0.2.31", "192.0.2.31"]), "192.0.2.31 twice"),
        ("one address for two NICs", two_nics, "both MAC"),
        ("held by another VM", web1(&[HELD4]), &held_by),
        ("held by another hook VM", web1(&["192.0.2.20"]), "already held by VM other"),
        (
            "a MAC the domain lacks",
            simple_xml("web1", "52:54:00:00:00:31", &["192.0.2.31"], None)
                .replace("<mac address='52:54:00:00:00:31'/>", "<mac address='52:54:00:00:00:33'/>"),
            "which the domain has no interface with",
        ),
        ("a NIC on another bridge", other_bridge, "storage0"),
        ("another VM's XML", simple_xml("web2", "52:54:00:00:00:31", &["192.0.2.31"], None), "\"web2\""),
    ];
    let mut all: Vec<(String, Vec<u8>, Stdin, &str)> =
        cases.into_iter().map(|(w, s, n)| (w, Vec::new(), s, n)).collect();
    for (w, xml, n) in &metadata_cases {
        all.push((w.to_string(), xml.clone().into_bytes(), Stdin::Null, n));
    }
    for (what, bytes, stdin, needle) in &all {
        let stdin = if bytes.is_empty() { *stdin } else { Stdin::Bytes(bytes) };
        for (op, verb) in [
            ("prepare", "refusing to start VM web1"),
            ("started", "refusing to start VM web1"),
            ("migrate", "refusing the incoming migration of VM web1"),
        ] {
            let t = Instant::now();
            let o = env.hook(["web1", op, "begin", "-"], stdin);
            let what = format!("{op} with {what}");
            assert_eq!(o.status.code(), Some(2), "{what}: {}", common::show(&o));
            assert!(
                o.stdout.is_empty(),
                "{what}: printed on stdout: {:?}",
                String::from_utf8_lossy(&o.stdout)
            );
            assert_one_sentence(&o, needle, &what);
            assert!(stderr(&o).starts_with(&format!("hvroute: {verb}: ")), "{what}: {}", stderr(&o));
            assert!(t.elapsed() < Duration::from_secs(5), "{what} took {:?}", t.elapsed());
            assert_eq!(env.state(), before, "{what} changed the state dir");
        }
    }
}

/// Prevents: a failing stop, release, reconnect or restore hook. libvirt ignores the exit
/// code of stopped and release, but a non-zero exit at reconnect kills a running VM, and
/// anything on stdout at restore replaces the domain's XML.
#[test]
fn ops_that_must_exit_0_do_so_on_any_input() {
    let env = Env::new(10);
    let before = env.state();
    let inputs: Vec<(&str, Stdin)> = vec![
        ("malformed XML", Stdin::Bytes(b"<domain><name>")),
        ("empty stdin", Stdin::Null),
        ("closed stdin", Stdin::Closed),
        ("bad metadata", Stdin::Bytes(b"<domain><name>web1</name><metadata><h:vm xmlns:h='urn:hvroute:metadata:1'><h:interface mac='zz'/></h:vm></metadata></domain>")),
    ];
    for (what, stdin) in inputs {
        for args in [
            ["web1", "stopped", "end", "-"],
            ["web1", "release", "end", "destroyed"],
            ["web1", "reconnect", "begin", "-"],
            ["web1", "restore", "begin", "-"],
            // libvirt allows names that are not valid VM names here; nothing is stored
            // under them.
            ["my vm", "release", "end", "-"],
            ["web1", "attach", "begin", "-"],
            ["web1", "frobnicate", "end", "-"],
        ] {
            let o = env.hook(args, stdin);
            let what = format!("{args:?} with {what}");
            assert_eq!(o.status.code(), Some(0), "{what}: {}", common::show(&o));
            assert!(o.stdout.is_empty(), "{what}: printed on stdout");
            let e = stderr(&o);
            assert!(e.lines().count() <= 1 && !e.contains("panicked"), "{what}: {e:?}");
            assert_eq!(env.state(), before, "{what} changed the state dir");
        }
    }
    // Unknown ops say so in one line.
    let o = env.hook(["web1", "frobnicate", "end", "-"], Stdin::Null);
    assert_one_sentence(&o, "not an operation hvroute acts on", "unknown op");
    // A reconnect with a broken XML says why, and still exits 0.
    let o = env.hook(["web1", "reconnect", "begin", "-"], Stdin::Bytes(b"<domain>"));
    assert_one_sentence(&o, "not well-formed", "reconnect with malformed XML");
}

/// Prevents: the hook removing admin intent. `vm add` entries persist across VM stops;
/// a release for the same name leaves them (and their routes) alone.
#[test]
fn release_never_removes_a_cli_entry() {
    let env = Env::new(10);
    let before = env.state();
    let o = env.hook(["held", "release", "end", "-"], Stdin::Null);
    assert_eq!(o.status.code(), Some(0), "{}", common::show(&o));
    assert_eq!(env.state(), before);
}

/// Prevents: hvroute stopping VMs that have nothing to do with it: a domain without
/// hvroute metadata is a no-op for every op, even with a broken config file.
#[test]
fn domains_without_hvroute_metadata_are_left_alone() {
    let env = Env::new(10);
    let before = env.state();
    let xml = domain_xml(
        "plain",
        None,
        &[XmlNic { mac: "52:54:00:00:00:41", bridge: "cloudbr0", target: Some("vnet4") }],
    );
    let good = std::fs::read_to_string(env.config()).unwrap();
    for config in [good.clone(), format!("colour = \"red\"\n{good}")] {
        std::fs::write(env.config(), &config).unwrap();
        for (op, sub) in [
            ("prepare", "begin"),
            ("start", "begin"),
            ("started", "begin"),
            ("migrate", "begin"),
            ("reconnect", "begin"),
            ("stopped", "end"),
            ("release", "end"),
        ] {
            let o = env.hook(["plain", op, sub, "-"], Stdin::Bytes(xml.as_bytes()));
            assert_eq!(o.status.code(), Some(0), "{op}: {}", common::show(&o));
            assert!(o.stdout.is_empty() && o.stderr.is_empty(), "{op}: {}", common::show(&o));
        }
    }
    std::fs::write(env.config(), &good).unwrap();
    assert_eq!(env.state(), before);
    // With hvroute metadata, a broken config refuses the start, naming the key.
    std::fs::write(env.config(), format!("colour = \"red\"\n{good}")).unwrap();
    let o = env.hook(["web1", "prepare", "begin", "-"], Stdin::Bytes(web1(&["192.0.2.31"]).as_bytes()));
    assert_eq!(o.status.code(), Some(2), "{}", common::show(&o));
    assert_one_sentence(&o, "colour", "broken config");
}

/// Prevents: installing the Debian package (its hook in qemu.d, its example config with
/// `hook.enabled = false`, or no config at all) changing how a VM starts before the admin
/// has configured the host: a domain with a ConfigDrive or even with hvroute metadata
/// outside the example's pools is not refused while the hook is off, and a domain with
/// nothing for hvroute starts whether or not a config exists.
#[test]
fn a_switched_off_or_unconfigured_hook_stops_no_vm() {
    let env = Env::new(10);
    let before = env.state();
    let good = std::fs::read_to_string(env.config()).unwrap();
    std::fs::write(env.config(), good.replace("[hook]\n", "[hook]\nenabled = false\n")).unwrap();
    let outside = web1(&["203.0.113.9"]);
    for (op, sub) in [
        ("prepare", "begin"),
        ("started", "begin"),
        ("migrate", "begin"),
        ("reconnect", "begin"),
        ("release", "end"),
    ] {
        let o = env.hook(["web1", op, sub, "-"], Stdin::Bytes(outside.as_bytes()));
        assert_eq!(o.status.code(), Some(0), "{op}: {}", common::show(&o));
        assert!(o.stdout.is_empty(), "{op}: {}", common::show(&o));
        assert_one_sentence(&o, "hook.enabled = false", op);
    }
    let plain = domain_xml(
        "plain",
        None,
        &[XmlNic { mac: "52:54:00:00:00:41", bridge: "cloudbr0", target: Some("vnet4") }],
    );
    let o = env.hook(["plain", "prepare", "begin", "-"], Stdin::Bytes(plain.as_bytes()));
    assert_eq!(o.status.code(), Some(0), "{}", common::show(&o));
    assert!(o.stdout.is_empty() && o.stderr.is_empty(), "{}", common::show(&o));
    assert_eq!(env.state(), before);
    // No config file at all: a domain with nothing for hvroute still starts, silently.
    std::fs::remove_file(env.config()).unwrap();
    for (op, sub) in [("prepare", "begin"), ("started", "begin"), ("release", "end")] {
        let o = env.hook(["plain", op, sub, "-"], Stdin::Bytes(plain.as_bytes()));
        assert_eq!(o.status.code(), Some(0), "{op}: {}", common::show(&o));
        assert!(o.stdout.is_empty() && o.stderr.is_empty(), "{op}: {}", common::show(&o));
    }
    assert_eq!(env.state(), before);
}

/// Prevents: a hook that blocks (here on the state dir's lock, which a wedged writer
/// holds) hanging libvirtd, which waits for hooks without a timeout. After the cap the
/// hook exits: non-zero where that aborts the start, 0 where it must.
#[test]
fn the_hard_time_cap_ends_a_blocked_hook() {
    let env = Env::new(1);
    let before = env.state();
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(env.state_dir().join(".lock"))
        .unwrap();
    lock.lock().unwrap();
    let xml = web1(&["192.0.2.31"]);
    for (args, code) in [
        (["web1", "started", "begin", "-"], 1),
        (["web1", "prepare", "begin", "-"], 1),
        (["other", "release", "end", "-"], 0),
        (["web1", "reconnect", "begin", "-"], 0),
    ] {
        let t = Instant::now();
        let o = env.hook(args, Stdin::Bytes(xml.as_bytes()));
        let took = t.elapsed();
        assert_eq!(o.status.code(), Some(code), "{args:?}: {}", common::show(&o));
        assert!(o.stdout.is_empty());
        assert_one_sentence(&o, "hard time cap", &format!("{args:?}"));
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(5),
            "{args:?} took {took:?}"
        );
    }
    drop(lock);
    assert_eq!(env.state(), before, "a capped hook changed the state dir");
}

/// Prevents: an install that clobbers an admin's hook, breaks on a second run, or leaves
/// the admin wondering why nothing happens (libvirtd must be restarted or sent SIGHUP).
#[test]
fn hook_install_writes_one_script_and_is_idempotent() {
    let env = Env::new(10);
    let hooks = env.dir.path().join("hooks");
    std::fs::create_dir_all(&hooks).unwrap();
    std::fs::write(hooks.join("qemu"), "#!/bin/sh\n# the admin's hook\n").unwrap();
    let dir = hooks.to_str().unwrap();
    let o = env.cli(&["hook", "install", "--dir", dir]);
    assert!(o.status.success(), "{}", common::show(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("installed") && out.contains("SIGHUP") && out.contains("left as it is"), "{out}");
    let script = std::fs::read_to_string(hooks.join("qemu.d/hvroute")).unwrap();
    assert!(script.contains(&format!("--config '{}' hook qemu \"$@\"", env.config().display())), "{script}");
    assert!(
        script.contains(&format!("exec '{}'", Path::new(common::BIN).canonicalize().unwrap().display())),
        "{script}"
    );
    let o = env.cli(&["hook", "install", "--dir", dir]);
    assert!(
        o.status.success() && String::from_utf8_lossy(&o.stdout).contains("nothing to do"),
        "{}",
        common::show(&o)
    );
    assert_eq!(std::fs::read_to_string(hooks.join("qemu")).unwrap(), "#!/bin/sh\n# the admin's hook\n");

    // The installed script is the hook: run it as libvirt does.
    let o = Command::new(hooks.join("qemu.d/hvroute"))
        .args(["web1", "frobnicate", "begin", "-"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0));
    assert!(stderr(&o).contains("not an operation hvroute acts on"), "{}", common::show(&o));

    // A file of that name that hvroute did not write is never overwritten.
    std::fs::write(hooks.join("qemu.d/hvroute"), "#!/bin/sh\n# mine\n").unwrap();
    let o = env.cli(&["hook", "install", "--dir", dir]);
    assert_eq!(o.status.code(), Some(2), "{}", common::show(&o));
    assert_one_sentence(&o, "was not written by hvroute", "foreign script");
    assert_eq!(std::fs::read_to_string(hooks.join("qemu.d/hvroute")).unwrap(), "#!/bin/sh\n# mine\n");
}

/// Adds a read-only cdrom with `file` to a domain XML.
fn with_cdrom(xml: &str, file: &Path) -> String {
    let disk = format!(
        "    <disk type='file' device='cdrom'><source file='{}'/><target dev='hdc' bus='ide'/><readonly/></disk>\n  </devices>",
        file.display()
    );
    xml.replacen("</devices>", &disk, 1)
}

/// Prevents, for VMs addressed by their ConfigDrive alone: a drive with an address outside
/// the pools starting unrefused; a damaged, missing or foreign cdrom (a hostile drive, a
/// drive on unmounted network storage, an installer ISO) stopping the VM or making the hook
/// panic or hang; a broken config stopping a VM whose XML never names hvroute.
#[test]
fn configdrive_input_at_the_hook() {
    let env = Env::new(10);
    let before = env.state();
    let dir = env.dir.path();
    let mac = "52:54:00:00:00:51";
    let plain = domain_xml("cd1", None, &[XmlNic { mac, bridge: "cloudbr0", target: Some("vnet5") }]);
    let build = |ip: &str, out: &Path| {
        let o = env.cli(&[
            "configdrive",
            "build",
            "--name",
            "cd1",
            "--mac",
            mac,
            "--ip",
            ip,
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", common::show(&o));
    };
    let prepare = |xml: &str| env.hook(["cd1", "prepare", "begin", "-"], Stdin::Bytes(xml.as_bytes()));

    // A good drive: prepare accepts it, silently.
    let good = dir.join("good.iso");
    build("192.0.2.51", &good);
    let o = prepare(&with_cdrom(&plain, &good));
    assert_eq!(o.status.code(), Some(0), "{}", common::show(&o));
    assert!(o.stdout.is_empty() && o.stderr.is_empty(), "{}", common::show(&o));

    // Outside the pools: refused, naming the drive's address.
    let outside = dir.join("outside.iso");
    build("203.0.113.9", &outside);
    let o = prepare(&with_cdrom(&plain, &outside));
    assert_eq!(o.status.code(), Some(2), "{}", common::show(&o));
    assert_one_sentence(&o, "203.0.113.9", "drive address outside the pools");
    assert!(stderr(&o).contains("ConfigDrive"), "{}", common::show(&o));

    // A config-2 drive cut short, and one that is missing: logged, and the VM starts.
    let mut img = std::fs::read(&good).unwrap();
    img.truncate(40 << 10);
    let cut = dir.join("cut.iso");
    std::fs::write(&cut, &img).unwrap();
    let missing = dir.join("missing.iso");
    for (what, file) in [("cut", &cut), ("missing", &missing)] {
        for (op, sub) in [("prepare", "begin"), ("started", "begin"), ("reconnect", "begin")] {
            let o = env.hook(["cd1", op, sub, "-"], Stdin::Bytes(with_cdrom(&plain, file).as_bytes()));
            assert_eq!(o.status.code(), Some(0), "{what} {op}: {}", common::show(&o));
            assert!(o.stdout.is_empty(), "{what} {op}: {}", common::show(&o));
            assert_one_sentence(
                &o,
                file.file_name().unwrap().to_str().unwrap(),
                &format!("{what} drive at {op}"),
            );
        }
    }

    // An installer-sized cdrom and a cdrom that is no image: not a ConfigDrive, no word.
    let big = dir.join("installer.iso");
    std::fs::File::create(&big).unwrap().set_len(65 << 20).unwrap();
    let text = dir.join("notes.iso");
    std::fs::write(&text, "hello\n").unwrap();
    for file in [&big, &text] {
        let o = prepare(&with_cdrom(&plain, file));
        assert_eq!(o.status.code(), Some(0), "{}", common::show(&o));
        assert!(o.stderr.is_empty(), "{}: {}", file.display(), common::show(&o));
    }

    // A broken config: the drive is not read, the VM is not stopped.
    let cfg = std::fs::read_to_string(env.config()).unwrap();
    std::fs::write(env.config(), format!("colour = \"red\"\n{cfg}")).unwrap();
    let o = prepare(&with_cdrom(&plain, &outside));
    assert_eq!(o.status.code(), Some(0), "{}", common::show(&o));
    assert_one_sentence(&o, "colour", "broken config with a cdrom");
    std::fs::write(env.config(), &cfg).unwrap();

    assert_eq!(env.state(), before, "the state dir changed");
}
