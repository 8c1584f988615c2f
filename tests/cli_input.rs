//! Bad input at the CLI: every refusal is exit 2, one sentence on stderr naming the bad
//! value, and a state dir that is byte-identical afterwards. Plus the idempotency rules
//! that shims depend on. No root needed: these commands never touch the kernel.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("boot_id"), "boot-1\n").unwrap();
        let cfg = format!(
            "state_dir = \"{d}/state\"\nsocket = \"{d}/hvroute.sock\"\nboot_id_path = \"{d}/boot_id\"\n\
             [pools]\nipv4 = [\"192.0.2.0/24\"]\nipv6 = [\"2001:db8:100::/40\"]\n\
             [bgp]\nasn = 65001\nrouter_id = \"10.255.0.1\"\n",
            d = dir.path().display()
        );
        std::fs::write(dir.path().join("hvroute.toml"), cfg).unwrap();
        Env { dir }
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("hvroute.toml")
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_hvroute"))
            .arg("--config")
            .arg(self.config())
            .args(args)
            .env_remove("RUST_LOG")
            .output()
            .unwrap()
    }

    /// Every file in the state dir with its bytes.
    fn state(&self) -> BTreeMap<PathBuf, Vec<u8>> {
        fn walk(p: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
            let Ok(rd) = std::fs::read_dir(p) else { return };
            for e in rd.flatten() {
                if e.path().is_dir() {
                    walk(&e.path(), out);
                } else {
                    out.insert(e.path(), std::fs::read(e.path()).unwrap());
                }
            }
        }
        let mut out = BTreeMap::new();
        walk(&self.dir.path().join("state"), &mut out);
        out
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// One clear sentence: a single line, starting with "hvroute:", no panic or backtrace.
fn assert_one_sentence(o: &Output, needle: &str) {
    let e = stderr(o);
    assert_eq!(e.trim_end().lines().count(), 1, "stderr is not one line: {e:?}");
    assert!(e.starts_with("hvroute: "), "{e:?}");
    assert!(e.contains(needle), "stderr {e:?} does not name {needle:?}");
    assert!(!e.contains("panicked") && !e.contains("RUST_BACKTRACE"), "{e:?}");
}

/// A shim that sends garbage must not corrupt or change the desired state.
#[test]
fn every_bad_input_is_exit_2_and_leaves_state_identical() {
    let env = Env::new();
    let ok = env.run(&[
        "vm",
        "add",
        "held",
        "--mac",
        "52:54:00:00:00:01",
        "--ip",
        "192.0.2.10",
        "--ip",
        "2001:db8:100::10",
    ]);
    assert!(ok.status.success(), "{}", stderr(&ok));
    let before = env.state();
    assert!(!before.is_empty());

    let mac = "52:54:00:00:00:02";
    let cases: &[(&[&str], &str)] = &[
        // malformed, multicast and all-zero MACs
        (&["vm", "add", "a", "--mac", "52:54:00:00:00", "--ip", "192.0.2.20"], "52:54:00:00:00"),
        (&["vm", "add", "a", "--mac", "zz:54:00:00:00:01", "--ip", "192.0.2.20"], "zz:54:00:00:00:01"),
        (&["vm", "add", "a", "--mac", "01:00:5e:00:00:01", "--ip", "192.0.2.20"], "01:00:5e:00:00:01"),
        (&["vm", "add", "a", "--mac", "ff:ff:ff:ff:ff:ff", "--ip", "192.0.2.20"], "ff:ff:ff:ff:ff:ff"),
        (&["vm", "add", "a", "--mac", "00:00:00:00:00:00", "--ip", "192.0.2.20"], "00:00:00:00:00:00"),
        // malformed addresses and wrong prefix lengths
        (&["vm", "add", "a", "--mac", mac, "--ip", "192.0.2.300"], "192.0.2.300"),
        (&["vm", "add", "a", "--mac", mac, "--ip", "2001:db8:100::zz"], "2001:db8:100::zz"),
        (&["vm", "add", "a", "--mac", mac, "--ip", "192.0.2.20/24"], "192.0.2.20/24"),
        (&["vm", "add", "a", "--mac", mac, "--ip", "2001:db8:100::20/64"], "2001:db8:100::20/64"),
        // outside the pools
        (&["vm", "add", "a", "--mac", mac, "--ip", "198.51.100.7"], "198.51.100.7"),
        (&["vm", "add", "a", "--mac", mac, "--ip", "2001:db8:ffff::7"], "2001:db8:ffff::7"),
        // gateways, link-local, loopback, multicast
        (&["vm", "add", "a", "--mac", mac, "--ip", "169.254.0.1"], "169.254.0.1"),
        (&["vm", "add", "a", "--mac", mac, "--ip", "fe80::1"], "fe80::1"),
        (&["vm", "add", "a", "--mac", mac, "--ip", "169.254.7.7"], "169.254.7.7"),
        (&["vm", "add", "a", "--mac", mac, "--ip", "fe80::1234"], "fe80::1234"),
        (&["vm", "add", "a", "--mac", mac, "--ip", "127.0.0.1"], "127.0.0.1"),
        (&["vm", "add", "a", "--mac", mac, "--ip", "::1"], "::1"),
        (&["vm", "add", "a", "--mac", mac, "--ip", "224.0.0.5"], "224.0.0.5"),
        (&["vm", "add", "a", "--mac", mac, "--ip", "ff02::1"], "ff02::1"),
        // an address another VM holds
        (&["vm", "add", "a", "--mac", mac, "--ip", "192.0.2.10"], "192.0.2.10"),
        (&["vm", "add", "a", "--mac", mac, "--ip", "2001:db8:100::10"], "2001:db8:100::10"),
        // names that could smuggle whitespace, newlines, quotes or paths
        (&["vm", "add", "a b", "--mac", mac, "--ip", "192.0.2.20"], "a b"),
        (&["vm", "add", "a\nb", "--mac", mac, "--ip", "192.0.2.20"], "a\\nb"),
        (&["vm", "add", "a\"b", "--mac", mac, "--ip", "192.0.2.20"], "a\\\"b"),
        (&["vm", "add", "a'b", "--mac", mac, "--ip", "192.0.2.20"], "a'b"),
        (&["vm", "add", "../etc", "--mac", mac, "--ip", "192.0.2.20"], "../etc"),
        (&["vm", "add", "a/b", "--mac", mac, "--ip", "192.0.2.20"], "a/b"),
        (&["vm", "add", ".hidden", "--mac", mac, "--ip", "192.0.2.20"], ".hidden"),
        (&["vm", "add", "a;reboot", "--mac", mac, "--ip", "192.0.2.20"], "a;reboot"),
        (&["vm", "del", "../held"], "../held"),
        // bad ports and NIC specs
        (&["vm", "add", "a", "--mac", mac, "--ip", "192.0.2.20", "--port", "bad port"], "bad port"),
        (&["vm", "add", "a", "--nic", "mac=52:54:00:00:00:02,ip=192.0.2.20,colour=red"], "colour=red"),
        (&["vm", "add", "a", "--nic", "ip=192.0.2.20"], "mac="),
        // the same MAC or address twice in one VM
        (
            &[
                "vm",
                "add",
                "a",
                "--nic",
                "mac=52:54:00:00:00:02,ip=192.0.2.20",
                "--nic",
                "mac=52:54:00:00:00:02,ip=192.0.2.21",
            ],
            "52:54:00:00:00:02",
        ),
        (
            &[
                "vm",
                "add",
                "a",
                "--nic",
                "mac=52:54:00:00:00:02,ip=192.0.2.20",
                "--nic",
                "mac=52:54:00:00:00:03,ip=192.0.2.20",
            ],
            "192.0.2.20",
        ),
        // a different spec for an existing VM without --replace
        (&["vm", "add", "held", "--mac", "52:54:00:00:00:01", "--ip", "192.0.2.11"], "--replace"),
        // no NIC at all
        (&["vm", "add", "a"], "needs a NIC"),
    ];
    for (args, needle) in cases {
        let o = env.run(args);
        assert_eq!(o.status.code(), Some(2), "{args:?} gave {:?}: {}", o.status, stderr(&o));
        assert_one_sentence(&o, needle);
        assert_eq!(env.state(), before, "{args:?} changed the state dir");
    }
}

/// A broken config must be named, key and value, before anything runs.
#[test]
fn bad_config_is_exit_2_naming_the_key() {
    let env = Env::new();
    let good = std::fs::read_to_string(env.config()).unwrap();
    for (edit, needle) in [
        ("route_protocol = 300\n", "route_protocol"),
        ("colour = \"red\"\n", "colour"),
        ("resync_interval_s = 0\n", "resync_interval_s"),
    ] {
        std::fs::write(env.config(), format!("{edit}{good}")).unwrap();
        let o = env.run(&["vm", "list"]);
        assert_eq!(o.status.code(), Some(2), "{edit}: {}", stderr(&o));
        assert_one_sentence(&o, needle);
    }
    let bad_pool = good.replace("192.0.2.0/24", "192.0.2.0/33");
    std::fs::write(env.config(), bad_pool).unwrap();
    let o = env.run(&["vm", "list"]);
    assert_eq!(o.status.code(), Some(2));
    assert_one_sentence(&o, "pools.ipv4[0]");
    let o = Command::new(env!("CARGO_BIN_EXE_hvroute"))
        .args(["--config", "/nonexistent/x.toml", "vm", "list"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert_one_sentence(&o, "/nonexistent/x.toml");
}

/// Shims retry: the same add twice, and a del of an unknown VM, must both succeed.
#[test]
fn add_and_del_are_idempotent() {
    let env = Env::new();
    let add = [
        "vm",
        "add",
        "i-2-10-VM",
        "--nic",
        "mac=52:54:00:00:00:01,ip=192.0.2.10,ip=2001:db8:100::10/128,port=vnet0",
    ];
    assert!(env.run(&add).status.success());
    let first = env.state();
    let again = env.run(&add);
    assert!(again.status.success(), "{}", stderr(&again));
    assert!(String::from_utf8_lossy(&again.stdout).contains("nothing to do"));
    assert_eq!(env.state(), first);

    let replaced =
        env.run(&["vm", "add", "i-2-10-VM", "--mac", "52:54:00:00:00:01", "--ip", "192.0.2.11", "--replace"]);
    assert!(replaced.status.success(), "{}", stderr(&replaced));
    let list = env.run(&["vm", "list", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(v["vms"][0]["name"], "i-2-10-VM");
    assert_eq!(v["vms"][0]["source"], "cli");
    assert_eq!(v["vms"][0]["state"], "active");
    assert_eq!(v["vms"][0]["nics"][0]["addresses"], serde_json::json!(["192.0.2.11"]));

    assert!(env.run(&["vm", "del", "i-2-10-VM"]).status.success());
    let gone = env.run(&["vm", "del", "i-2-10-VM"]);
    assert_eq!(gone.status.code(), Some(0));
    assert!(stderr(&gone).contains("not known"), "{}", stderr(&gone));
    assert!(env.state().keys().all(|p| !p.to_string_lossy().ends_with("i-2-10-VM.json")));
}

/// The same NIC (same MAC, same addresses) described by two sources is not a conflict.
#[test]
fn same_mac_same_address_from_another_entry_is_merged_not_refused() {
    let env = Env::new();
    assert!(
        env.run(&["vm", "add", "a", "--mac", "52:54:00:00:00:01", "--ip", "192.0.2.10"]).status.success()
    );
    let o = env.run(&["vm", "add", "b", "--mac", "52:54:00:00:00:01", "--ip", "192.0.2.10"]);
    assert!(o.status.success(), "{}", stderr(&o));
}

/// Usage errors from the parser itself are exit 2 too, and --help teaches (exit 0).
#[test]
fn usage_errors_and_help() {
    let env = Env::new();
    let o = env.run(&["vm", "frobnicate"]);
    assert_eq!(o.status.code(), Some(2));
    let o = env.run(&["vm", "add", "--help"]);
    assert_eq!(o.status.code(), Some(0));
    let help = String::from_utf8_lossy(&o.stdout);
    assert!(help.contains("--nic") && help.contains("--replace") && help.contains("/32"), "{help}");
}

/// Log collectors (journald with a JSON parser, Loki, jq) take one object per line: with
/// `--log-format json`, a refusal is one such line with the sentence and the exit code,
/// and nothing else (tests/netns_core.rs checks the daemon's own lines).
#[test]
fn log_format_json_gives_one_object_per_line() {
    let env = Env::new();
    let o = env.run(&[
        "--log-format",
        "json",
        "vm",
        "add",
        "web1",
        "--mac",
        "52:54:00:zz:00:01",
        "--ip",
        "192.0.2.9",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let lines: Vec<&str> = std::str::from_utf8(&o.stderr).unwrap().lines().collect();
    assert_eq!(lines.len(), 1, "one line: {lines:?}");
    let v: serde_json::Value = serde_json::from_str(lines[0]).expect("a JSON object");
    assert_eq!(v["level"], "ERROR", "{v}");
    assert_eq!(v["exit_code"], 2, "{v}");
    assert!(v["message"].as_str().unwrap().contains("52:54:00:zz:00:01"), "names the bad value: {v}");
    assert!(env.state().is_empty());

    let o = env.run(&["--log-format", "yaml", "vm", "list"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("'yaml'"), "{}", stderr(&o));
}

/// Prevents: the example config the Debian package installs as /etc/hvroute/hvroute.toml
/// going stale (a renamed or removed key makes every command exit 2 on a fresh install),
/// or shipping with the hook switched on; and completions or manual pages that do not
/// generate. None of these need a config file or root.
#[test]
fn packaged_example_config_completions_and_manual_pages() {
    const BIN: &str = env!("CARGO_BIN_EXE_hvroute");
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("debian/hvroute.toml");
    let o = Command::new(BIN).arg("--config").arg(&example).args(["frr", "render"]).output().unwrap();
    assert!(o.status.success(), "frr render with {}: {}", example.display(), stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).lines().any(|l| l == "router bgp 65001"));
    let text = std::fs::read_to_string(&example).unwrap();
    let hook = text.split("\n[hook]\n").nth(1).expect("a [hook] section").split("\n[").next().unwrap();
    assert!(hook.lines().any(|l| l.trim() == "enabled = false"), "the packaged hook must ship off");
    for shell in ["bash", "zsh"] {
        let o = Command::new(BIN).args(["--config", "/nonexistent", "completions", shell]).output().unwrap();
        assert!(o.status.success() && o.stdout.len() > 1000, "completions {shell}: {}", stderr(&o));
    }
    let o = Command::new(BIN).args(["completions", "tcsh"]).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    let dir = tempfile::tempdir().unwrap();
    let o = Command::new(BIN).arg("man").arg("--dir").arg(dir.path()).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    for page in ["hvroute.1", "hvroute-vm-add.1", "hvroute-completions.1"] {
        let roff = std::fs::read_to_string(dir.path().join(page)).unwrap();
        assert!(roff.contains(".TH"), "{page}");
    }
    assert!(!dir.path().join("hvroute-man.1").exists(), "the hidden man command gets no page");
}
