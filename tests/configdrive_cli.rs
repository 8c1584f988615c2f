//! `hvroute configdrive build|show` at the command line: bad input is exit 2 with one
//! sentence naming the bad value and `--out` untouched; a build is deterministic and reads
//! back through `show`; a hostile file given to `show` is a clear error, not a panic.
//! Needs xorriso for the ISO cases (scripts/test.sh installs it); no root.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn hvroute(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hvroute"))
        // No config file is needed: a drive is built from its flags alone.
        .args(["--config", "/nonexistent/hvroute.toml"])
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Exit 2, one line on stderr naming `needle`, no backtrace.
fn assert_refused(o: &Output, needle: &str) {
    let e = stderr(o);
    assert_eq!(o.status.code(), Some(2), "want exit 2 naming {needle:?}, got {:?}: {e}", o.status.code());
    assert!(e.contains(needle), "stderr does not name {needle:?}: {e}");
    assert!(!e.contains("panicked") && !e.contains("backtrace"), "{e}");
    if !e.starts_with("error:") {
        // clap's own usage errors have their usage block; ours are one line.
        assert_eq!(e.trim_end().lines().count(), 1, "not one line: {e}");
    }
}

struct Dir(tempfile::TempDir);

impl Dir {
    fn new() -> Dir {
        Dir(tempfile::tempdir().unwrap())
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.path().join(name)
    }
    fn write(&self, name: &str, data: &[u8]) -> String {
        let p = self.path(name);
        std::fs::write(&p, data).unwrap();
        p.to_str().unwrap().to_string()
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `configdrive build --name NAME --mac 52:54:00:00:00:01 --ip 192.0.2.29 --out DIR/OUT` and
/// `extra`.
fn build_one(d: &Dir, name: &str, out: &str, extra: &[&str]) -> Output {
    let out = d.path(out);
    let mut args =
        vec!["configdrive", "build", "--name", name, "--mac", "52:54:00:00:00:01", "--ip", "192.0.2.29"];
    args.extend(["--out", s(&out)]);
    args.extend(extra);
    hvroute(&args)
}

const KEY: &[u8] =
    b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHvrouteTestKeyOnlyForTheTestSuite0000000000 admin@example\n";

/// Prevents: a typo in a build script producing a drive that leaves a guest unreachable, or
/// overwriting a good drive with a half-built one.
#[test]
fn every_bad_build_is_exit_2_and_leaves_out_untouched() {
    let d = Dir::new();
    let out = d.path("drive.iso");
    std::fs::write(&out, b"the old drive\n").unwrap();
    let private = d.write(
        "id_ed25519",
        b"-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjE=\n-----END OPENSSH PRIVATE KEY-----\n",
    );
    let garbage_key = d.write("junk.pub", b"hello world\n");
    let empty_key = d.write("empty.pub", b"# nothing\n\n");
    let big = d.path("big-user-data");
    std::fs::File::create(&big).unwrap().set_len(17 << 20).unwrap();
    let o = s(&out);
    let m = "52:54:00:00:00:01";
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--mac", "52:54:00:zz:00:01", "--ip", "192.0.2.29"], "52:54:00:zz:00:01"),
        (vec!["--mac", "ff:ff:ff:ff:ff:ff", "--ip", "192.0.2.29"], "ff:ff:ff:ff:ff:ff"),
        (vec!["--mac", m, "--ip", "192.0.2.0/24"], "192.0.2.0/24"),
        (vec!["--mac", m, "--ip", "192.0.2.300"], "192.0.2.300"),
        (vec!["--mac", m, "--ip", "169.254.0.1"], "169.254.0.1"),
        (vec!["--mac", m, "--ip", "fe80::1"], "fe80::1"),
        (vec!["--mac", m, "--ip", "::ffff:192.0.2.1"], "::ffff:192.0.2.1"),
        (vec!["--mac", m, "--ip", "224.0.0.5"], "224.0.0.5"),
        (vec!["--mac", m, "--ip", "192.0.2.29", "--ip", "192.0.2.29"], "192.0.2.29"),
        (vec!["--mac", m], "--ip"),
        (vec!["--ip", "192.0.2.29"], "--mac"),
        (vec![], "needs a NIC"),
        (vec!["--nic", "mac=52:54:00:00:00:01,ip=192.0.2.29,port=vnet0"], "port="),
        (vec!["--nic", "mac=52:54:00:00:00:01"], "ip="),
        (vec!["--nic", "ip=192.0.2.29"], "mac="),
        (vec!["--nic", "mac=52:54:00:00:00:01,ip=192.0.2.29,color=red"], "color=red"),
        (
            vec![
                "--nic",
                "mac=52:54:00:00:00:01,ip=192.0.2.29",
                "--nic",
                "mac=52:54:00:00:00:01,ip=192.0.2.30",
            ],
            "52:54:00:00:00:01",
        ),
        (
            vec![
                "--nic",
                "mac=52:54:00:00:00:01,ip=192.0.2.29",
                "--nic",
                "mac=52:54:00:00:00:02,ip=192.0.2.29",
            ],
            "192.0.2.29",
        ),
        (vec!["--mac", m, "--ip", "192.0.2.29", "--dns", "dns.example"], "dns.example"),
        (vec!["--mac", m, "--ip", "192.0.2.29", "--uuid", "not-a-uuid"], "not-a-uuid"),
        (vec!["--mac", m, "--ip", "192.0.2.29", "--mtu", "100"], "100"),
        (vec!["--mac", m, "--ip", "192.0.2.29", "--flavor", "configdrive"], "configdrive"),
        (vec!["--mac", m, "--ip", "192.0.2.29", "--format", "udf"], "udf"),
        (vec!["--mac", m, "--ip", "192.0.2.29", "--ssh-key", &private], "private key"),
        (vec!["--mac", m, "--ip", "192.0.2.29", "--ssh-key", &garbage_key], "hello world"),
        (vec!["--mac", m, "--ip", "192.0.2.29", "--ssh-key", &empty_key], "no public key"),
        (vec!["--mac", m, "--ip", "192.0.2.29", "--user-data", s(&big)], "big-user-data"),
    ];
    for (args, needle) in cases {
        let mut all = vec!["configdrive", "build", "--name", "web1", "--out", o];
        all.extend(&args);
        let r = hvroute(&all);
        assert_refused(&r, needle);
        assert_eq!(std::fs::read(&out).unwrap(), b"the old drive\n", "--out changed by {args:?}");
    }
    // A bad name, and --out naming a directory.
    assert_refused(
        &hvroute(&["configdrive", "build", "--name", "web 1", "--mac", m, "--ip", "192.0.2.29", "--out", o]),
        "web 1",
    );
    let dir = d.path("adir");
    std::fs::create_dir(&dir).unwrap();
    assert_refused(
        &hvroute(&[
            "configdrive",
            "build",
            "--name",
            "web1",
            "--mac",
            m,
            "--ip",
            "192.0.2.29",
            "--out",
            s(&dir),
        ]),
        "adir",
    );
    // Only the old drive is left: no temporary file behind.
    let left: Vec<_> = std::fs::read_dir(d.0.path()).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(left.iter().all(|n| !n.to_string_lossy().starts_with(".hvroute-drive-")), "{left:?}");
}

/// Prevents: a drive that differs between two builds of the same guest (CloudStack
/// rebuilds drives; a changed drive looks like new instance data), and a drive whose
/// network description does not read back as it was given.
#[test]
fn build_is_deterministic_and_show_reads_it_back() {
    let d = Dir::new();
    let key = d.write("id.pub", KEY);
    let ud = d.write("user-data", b"#cloud-config\nruncmd: [echo hello]\n");
    for (flavor, format) in
        [("openstack", "iso"), ("openstack", "vfat"), ("nocloud", "iso"), ("nocloud", "vfat")]
    {
        let (a, b) = (d.path(&format!("a-{flavor}.{format}")), d.path(&format!("b-{flavor}.{format}")));
        for out in [&a, &b] {
            let r = hvroute(&[
                "configdrive",
                "build",
                "--name",
                "web1",
                "--nic",
                "mac=52:54:00:00:00:01,ip=192.0.2.29,ip=2001:db8:103::100,ip=192.0.2.30",
                "--nic",
                "mac=52:54:00:00:00:02,ip=2001:db8:103::200",
                "--dns",
                "192.0.2.53",
                "--ssh-key",
                &key,
                "--user-data",
                &ud,
                "--mtu",
                "9000",
                "--flavor",
                flavor,
                "--format",
                format,
                "--out",
                s(out),
            ]);
            assert!(r.status.success(), "{flavor}/{format}: {}", stderr(&r));
            assert!(stdout(&r).contains(s(out)), "{}", stdout(&r));
        }
        assert_eq!(
            std::fs::read(&a).unwrap(),
            std::fs::read(&b).unwrap(),
            "{flavor}/{format}: two builds differ"
        );

        let r = hvroute(&["configdrive", "show", "--json", s(&a)]);
        assert!(r.status.success(), "{flavor}/{format}: {}", stderr(&r));
        let v: serde_json::Value = serde_json::from_str(&stdout(&r)).unwrap();
        assert_eq!(v["flavor"], flavor);
        assert_eq!(v["format"], format);
        assert_eq!(
            v["label"].as_str().unwrap().to_lowercase(),
            if flavor == "openstack" { "config-2" } else { "cidata" }
        );
        let nics = v["nics"].as_array().unwrap();
        assert_eq!(nics.len(), 2, "{v}");
        assert_eq!(nics[0]["mac"], "52:54:00:00:00:01");
        assert_eq!(nics[0]["mtu"], 9000);
        assert_eq!(
            nics[0]["addresses"],
            serde_json::json!(["192.0.2.29", "2001:db8:103::100", "192.0.2.30"])
        );
        let gw: Vec<&str> =
            nics[0]["gateways"].as_array().unwrap().iter().map(|g| g.as_str().unwrap()).collect();
        assert_eq!(gw.len(), 2, "one gateway per family on the primary NIC: {gw:?}");
        assert!(gw.contains(&"169.254.0.1") && gw.contains(&"fe80::1"), "{gw:?}");
        assert_eq!(nics[1]["addresses"], serde_json::json!(["2001:db8:103::200"]));
        assert_eq!(nics[1]["gateways"], serde_json::json!([]), "a second NIC has no default route");
        assert_eq!(nics[0]["dns"], serde_json::json!(["192.0.2.53"]));

        let r = hvroute(&["configdrive", "show", s(&a)]);
        assert!(r.status.success(), "{}", stderr(&r));
        let text = stdout(&r);
        for want in
            ["192.0.2.29/32", "2001:db8:103::100/128", "default via 169.254.0.1", "default via fe80::1"]
        {
            assert!(text.contains(want), "show does not print {want:?}:\n{text}");
        }
    }
    // The uuid is derived from the name unless given.
    let r = build_one(&d, "web1", "x.iso", &["--json"]);
    assert!(r.status.success(), "{}", stderr(&r));
    let v: serde_json::Value = serde_json::from_str(&stdout(&r)).unwrap();
    let uuid = v["uuid"].as_str().unwrap().to_string();
    assert_eq!(uuid.len(), 36, "{uuid}");
    let r = build_one(&d, "web2", "y.iso", &["--json"]);
    let v2: serde_json::Value = serde_json::from_str(&stdout(&r)).unwrap();
    assert_ne!(v2["uuid"].as_str().unwrap(), uuid, "two names, one uuid");
}

/// Prevents: `show` (and so the hook, which uses the same reader) panicking or hanging on
/// a file that is not a drive, and a missing file being reported as bad input.
#[test]
fn show_refuses_what_is_not_a_drive() {
    let d = Dir::new();
    let zeros = d.write("zeros.img", &vec![0u8; 128 << 10]);
    assert_refused(&hvroute(&["configdrive", "show", &zeros]), "zeros.img");
    let text = d.write("notes.txt", b"hello\n");
    assert_refused(&hvroute(&["configdrive", "show", &text]), "notes.txt");
    // A well-formed image whose label is not a ConfigDrive's.
    let r = build_one(&d, "web1", "ok.iso", &[]);
    assert!(r.status.success(), "{}", stderr(&r));
    let mut img = std::fs::read(d.path("ok.iso")).unwrap();
    // Truncated in the middle of its directory records.
    img.truncate(img.len() / 3);
    let cut = d.write("cut.iso", &img);
    let r = hvroute(&["configdrive", "show", &cut]);
    assert_ne!(r.status.code(), Some(0), "a truncated drive was shown: {}", stdout(&r));
    assert!(!stderr(&r).contains("panicked"), "{}", stderr(&r));
    // Missing: a runtime failure (exit 1), naming the path.
    let r = hvroute(&["configdrive", "show", s(&d.path("missing.iso"))]);
    assert_eq!(r.status.code(), Some(1), "{}", stderr(&r));
    assert!(stderr(&r).contains("missing.iso"), "{}", stderr(&r));
}

/// Prevents: `--help` that does not teach the flavours and a worked example.
#[test]
fn build_help_teaches() {
    let r = hvroute(&["configdrive", "build", "--help"]);
    assert!(r.status.success());
    let h = stdout(&r);
    for want in [
        "--nic",
        "--flavor",
        "config-2",
        "cidata",
        "169.254.0.1",
        "fe80::1",
        "docs/configdrive.md",
        "Examples",
    ] {
        assert!(h.contains(want), "configdrive build --help lacks {want:?}");
    }
}
