//! Golden tests for the rendered frr.conf (`hvroute frr render`), and the CLI of
//! `hvroute frr render` and `hvroute frr bootstrap`.
//!
//! Each case renders one config and VM prefix set and compares the output with
//! `tests/golden/frr/CASE.conf`, byte for byte. `frr/hypervisor.conf`, the example shipped
//! with the docs, is the rendering of `frr/hypervisor.toml` and is kept the same way.
//! Regenerate after a deliberate change with:
//!
//! ```text
//! UPDATE_GOLDEN=1 cargo test --test frr_render
//! ```
//!
//! and review the diff: tests/frr_bgpd_load.rs then checks that a real bgpd takes every
//! one of these files without dropping or changing a line.
//!
//! Failures these tests prevent: a template edit that silently changes what every
//! hypervisor advertises or accepts; a config that makes bgpd refuse peers of the one
//! peer-group (mixed iBGP/eBGP); pools that bgpd would store differently from the file
//! (host bits set, duplicates it drops without a word); bootstrap overwriting an admin's
//! frr.conf without a backup or losing the other daemons' settings.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use hvroute::config::Config;
use hvroute::frr::render::render;

const BIN: &str = env!("CARGO_BIN_EXE_hvroute");

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Compares `actual` with the golden file, or rewrites it under UPDATE_GOLDEN=1.
fn golden(path: &Path, actual: &str) {
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, actual).unwrap();
        return;
    }
    let want = std::fs::read_to_string(path).unwrap_or_else(|e| {
        panic!(
            "cannot read {}: {e}; create it with UPDATE_GOLDEN=1 cargo test --test frr_render",
            path.display()
        )
    });
    if want != actual {
        let diff = hvroute::frr::bootstrap::unified_diff(&want, actual, "golden", "rendered");
        panic!(
            "{} differs from the rendering:\n{diff}\nIf the change is intended: UPDATE_GOLDEN=1 cargo test --test frr_render",
            path.display()
        );
    }
}

fn ips(list: &[&str]) -> BTreeSet<IpAddr> {
    list.iter().map(|s| s.parse().unwrap()).collect()
}

const BASE: &str = "[bgp]\nasn = 65001\nrouter_id = \"10.255.0.1\"\n";

fn config(pools: &str, bgp_extra: &str, peers: &str) -> Config {
    Config::parse(&format!("[pools]\n{pools}\n{BASE}{bgp_extra}\n{peers}"))
        .unwrap_or_else(|e| panic!("test config does not load: {}", e.0))
}

const POOL4: &str = "ipv4 = [\"192.0.2.0/24\"]";
const POOL6: &str = "ipv6 = [\"2001:db8:100::/40\"]";
const DUAL: &str = "ipv4 = [\"192.0.2.0/24\"]\nipv6 = [\"2001:db8:100::/40\"]";
const UNNUMBERED: &str = "[[bgp.peer]]\ninterface = \"eth1\"\nremote_as = \"external\"\n";
const UNNUMBERED2: &str = "[[bgp.peer]]\ninterface = \"eth1\"\nremote_as = \"external\"\n\
                           [[bgp.peer]]\ninterface = \"eth2\"\nremote_as = \"external\"\n";
const NUMBERED: &str = "[[bgp.peer]]\naddress = \"10.255.0.0\"\nremote_as = 65000\n\
                        [[bgp.peer]]\naddress = \"2001:db8:ffff:1::1\"\nremote_as = 65000\n";
const LOOPBACKS: &str = "loopback4 = \"198.51.100.1\"\nloopback6 = \"2001:db8:ffff::1\"\n";

/// Every case: name, config, VM prefixes. The names are the golden files' names.
fn cases() -> Vec<(&'static str, Config, BTreeSet<IpAddr>)> {
    let vms4 = ["192.0.2.29", "192.0.2.3", "192.0.2.200"];
    let vms6 = ["2001:db8:103::100", "2001:db8:100::5", "2001:db8:1ff:ffff::1"];
    let dual: Vec<&str> = vms4.iter().chain(&vms6).copied().collect();
    vec![
        // A fresh host: no VMs yet, no peers configured yet.
        ("fresh-host-no-peers", config(POOL4, "", ""), ips(&[])),
        ("ipv4-only-unnumbered", config(POOL4, "", UNNUMBERED), ips(&vms4)),
        ("ipv6-only-unnumbered", config(POOL6, "", UNNUMBERED), ips(&vms6)),
        (
            "ipv6-only-numbered",
            config(POOL6, "", "[[bgp.peer]]\naddress = \"2001:db8:ffff:1::1\"\nremote_as = 65000\n"),
            ips(&vms6),
        ),
        ("dual-stack-unnumbered", config(DUAL, "", UNNUMBERED2), ips(&dual)),
        ("dual-stack-numbered", config(DUAL, "", NUMBERED), ips(&dual)),
        (
            "dual-stack-ibgp",
            config(DUAL, "", "[[bgp.peer]]\naddress = \"10.255.0.0\"\nremote_as = \"internal\"\n"),
            ips(&dual),
        ),
        // Loopbacks sort among the VM lines, as bgpd prints them; they carry no route-map.
        (
            "dual-stack-loopbacks",
            config(
                "ipv4 = [\"192.0.2.0/24\", \"198.51.100.0/25\"]\nipv6 = [\"2001:db8:100::/40\"]",
                "loopback4 = \"198.51.100.200\"\nloopback6 = \"2001:db8:100::7\"\n",
                UNNUMBERED,
            ),
            ips(&["192.0.2.29", "198.51.100.5", "2001:db8:100::5", "2001:db8:103::100"]),
        ),
        // Loopbacks of a family without pools: the family is used for them alone.
        ("ipv4-pools-with-loopbacks", config(POOL4, LOOPBACKS, UNNUMBERED), ips(&vms4)),
        // Peers that differ in remote-as: remote-as per neighbour; neighbours in bgpd's
        // order (interfaces by FRR's natural name order, then IPv4, then IPv6). A pool that
        // is a single host has no `ge`.
        (
            "multi-peer-mixed",
            config(
                "ipv4 = [\"192.0.2.0/24\", \"203.0.113.9/32\"]\nipv6 = [\"2001:db8:100::/40\", \"2001:db8:200::/64\"]",
                LOOPBACKS,
                "[[bgp.peer]]\naddress = \"2001:db8:ffff:2::1\"\nremote_as = 65002\n\
                 [[bgp.peer]]\ninterface = \"eth10\"\nremote_as = \"external\"\n\
                 [[bgp.peer]]\naddress = \"10.255.0.2\"\nremote_as = 65002\n\
                 [[bgp.peer]]\ninterface = \"eth2\"\nremote_as = \"external\"\n\
                 [[bgp.peer]]\naddress = \"10.255.0.0\"\nremote_as = 65000\n",
            ),
            ips(&["192.0.2.29", "203.0.113.9", "2001:db8:200::1", "2001:db8:103::100"]),
        ),
    ]
}

#[test]
fn every_case_renders_as_its_golden_file() {
    let dir = repo().join("tests/golden/frr");
    let mut names = BTreeSet::new();
    for (name, cfg, vms) in cases() {
        let out = render(&cfg, &vms).unwrap_or_else(|e| panic!("case {name}: {e:#}"));
        golden(&dir.join(format!("{name}.conf")), &out);
        names.insert(format!("{name}.conf"));
    }
    // A golden file without a case would be loaded into bgpd but never rendered.
    if std::env::var_os("UPDATE_GOLDEN").is_none() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let f = entry.unwrap().file_name().to_string_lossy().into_owned();
            assert!(names.contains(&f), "tests/golden/frr/{f} belongs to no case; delete it");
        }
    }
}

/// The shipped example is the rendering of the shipped example config with two VMs.
#[test]
fn the_hypervisor_example_is_the_rendering_of_its_config() {
    let cfg = Config::load(&repo().join("frr/hypervisor.toml")).unwrap_or_else(|e| panic!("{}", e.0));
    let out = render(&cfg, &ips(&["192.0.2.29", "192.0.2.30", "2001:db8:103::100"])).unwrap();
    golden(&repo().join("frr/hypervisor.conf"), &out);
}

#[test]
fn rendering_is_deterministic_and_independent_of_peer_order() {
    let (_, cfg, vms) = cases().pop().unwrap();
    let a = render(&cfg, &vms).unwrap();
    let mut reversed = cfg.clone();
    reversed.bgp.peers.reverse();
    reversed.pools.ipv4.reverse();
    assert_eq!(a, render(&reversed, &vms).unwrap());
}

/// What the rendering must never do, whatever the case: advertise or accept anything
/// but what the policy names, or leave a family without a closing deny.
#[test]
fn every_case_keeps_the_policy_invariants() {
    for (name, cfg, vms) in cases() {
        let out = render(&cfg, &vms).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        let has = |l: &str| lines.contains(&l);
        assert!(has("route-map HVR-IN deny 100") && has("route-map HVR-OUT deny 100"), "{name}");
        assert!(has("frr defaults datacenter"), "{name}");
        for l in &lines {
            let w: Vec<&str> = l.split_whitespace().collect();
            if w.first() == Some(&"network") {
                let ip: IpAddr = w[1].split('/').next().unwrap().parse().unwrap();
                let lo = [cfg.bgp.loopback4.map(IpAddr::V4), cfg.bgp.loopback6.map(IpAddr::V6)];
                if lo.contains(&Some(ip)) {
                    assert_eq!(w.len(), 2, "{name}: the loopback line takes no route-map: {l}");
                } else {
                    assert!(vms.contains(&ip), "{name}: {l} is not a VM address");
                    assert_eq!(&w[2..], ["route-map", "HVR-VM"], "{name}: {l}");
                }
            }
            if l.starts_with("route-map HVR-OUT permit") || l.starts_with("route-map HVR-IN permit") {
                assert!(l.split_whitespace().nth(3).unwrap().parse::<u32>().unwrap() < 100, "{name}: {l}");
            }
        }
        let nets = lines.iter().filter(|l| l.trim_start().starts_with("network ")).count();
        let los = usize::from(cfg.bgp.loopback4.is_some()) + usize::from(cfg.bgp.loopback6.is_some());
        assert_eq!(nets, vms.len() + los, "{name}: one network line per VM address and loopback");
        // A family without pools or loopback is not activated and sends nothing.
        if cfg.pools.ipv6.is_empty() && cfg.bgp.loopback6.is_none() {
            assert!(!has(" address-family ipv6 unicast"), "{name}");
            assert!(!out.contains("HVR-POOLS-V6"), "{name}");
        }
        if cfg.pools.ipv4.is_empty() && cfg.bgp.loopback4.is_none() {
            assert!(!has(" address-family ipv4 unicast"), "{name}");
            assert!(!out.contains("HVR-POOLS-V4"), "{name}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The CLI: `hvroute frr render` and `hvroute frr bootstrap`.

struct Host {
    dir: tempfile::TempDir,
}

impl Host {
    /// A config whose state dir, boot id and FRR directory live in a tempdir.
    fn new(frr_extra: &str) -> Host {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        std::fs::create_dir_all(p.join("etc-frr")).unwrap();
        std::fs::write(p.join("boot_id"), "11111111-2222-3333-4444-555555555555\n").unwrap();
        std::fs::write(
            p.join("hvroute.toml"),
            format!(
                "state_dir = \"{d}/state\"\nsocket = \"{d}/hvroute.sock\"\nboot_id_path = \"{d}/boot_id\"\n\
                 [pools]\n{DUAL}\n{BASE}{frr_extra}\n{UNNUMBERED}\n[frr]\nconfig_file = \"{d}/etc-frr/frr.conf\"\n",
                d = p.display()
            ),
        )
        .unwrap();
        Host { dir }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .arg("--config")
            .arg(self.path("hvroute.toml"))
            .args(args)
            .env("NO_COLOR", "1")
            .output()
            .unwrap()
    }
}

fn ok(o: &Output) -> String {
    assert!(o.status.success(), "{o:?}");
    String::from_utf8(o.stdout.clone()).unwrap()
}

const DEBIAN_DAEMONS: &str = "# This file tells the frr package which daemons to start.\n\
bgpd=no\nospfd=no\nospf6d=no\nvtysh_enable=yes\nzebra_options=\"  -A 127.0.0.1 -s 90000000\"\n\
bgpd_options=\"   -A 127.0.0.1\"\n";
const DEBIAN_FRR_CONF: &str = "# default to using syslog.\nlog syslog informational\n";

#[test]
fn render_prints_the_state_dirs_vms() {
    let h = Host::new("");
    ok(&h.run(&[
        "vm",
        "add",
        "web1",
        "--mac",
        "52:54:00:00:00:01",
        "--ip",
        "192.0.2.29",
        "--ip",
        "2001:db8:103::100",
    ]));
    let out = ok(&h.run(&["frr", "render"]));
    assert!(out.contains("\n  network 192.0.2.29/32 route-map HVR-VM\n"), "{out}");
    assert!(out.contains("\n  network 2001:db8:103::100/128 route-map HVR-VM\n"), "{out}");
    assert!(out.contains("\n neighbor eth1 interface peer-group HVR-UPLINK\n"), "{out}");
}

#[test]
fn bootstrap_shows_then_writes_with_backups_and_is_then_a_no_op() {
    let h = Host::new("");
    let (conf, daemons) = (h.path("etc-frr/frr.conf"), h.path("etc-frr/daemons"));
    std::fs::write(&conf, DEBIAN_FRR_CONF).unwrap();
    std::fs::set_permissions(&conf, std::fs::Permissions::from_mode(0o640)).unwrap();
    std::fs::write(&daemons, DEBIAN_DAEMONS).unwrap();

    // Without --write: a diff of both files, and nothing changes.
    let o = h.run(&["frr", "bootstrap"]);
    let out = ok(&o);
    assert!(out.contains(&format!("--- {}\n", conf.display())), "{out}");
    assert!(out.contains("-# default to using syslog.\n"), "{out}");
    assert!(out.contains("+router bgp 65001\n"), "{out}");
    assert!(out.contains("-bgpd=no\n+bgpd=yes\n"), "{out}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("--write"), "{o:?}");
    assert_eq!(std::fs::read_to_string(&conf).unwrap(), DEBIAN_FRR_CONF);
    assert_eq!(std::fs::read_to_string(&daemons).unwrap(), DEBIAN_DAEMONS);

    // --write: both written, the old ones kept as backups, the mode kept.
    let out = ok(&h.run(&["frr", "bootstrap", "--write"]));
    assert!(out.contains("wrote "), "{out}");
    let rendered = ok(&h.run(&["frr", "render"]));
    assert_eq!(std::fs::read_to_string(&conf).unwrap(), rendered);
    assert_eq!(std::fs::metadata(&conf).unwrap().permissions().mode() & 0o777, 0o640);
    assert_eq!(std::fs::read_to_string(&daemons).unwrap(), DEBIAN_DAEMONS.replace("bgpd=no", "bgpd=yes"));
    let backups: Vec<String> = std::fs::read_dir(h.path("etc-frr"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".hvroute-bak-"))
        .collect();
    assert_eq!(backups.len(), 2, "{backups:?}");
    for b in &backups {
        let text = std::fs::read_to_string(h.path(&format!("etc-frr/{b}"))).unwrap();
        let want = if b.starts_with("frr.conf.") { DEBIAN_FRR_CONF } else { DEBIAN_DAEMONS };
        assert_eq!(text, want, "{b}");
    }
    assert!(!backups.iter().any(|b| b.starts_with('.')), "no temp file is left: {backups:?}");

    // Again: nothing to do, nothing written.
    let out = ok(&h.run(&["frr", "bootstrap", "--write"]));
    assert!(out.starts_with("no change"), "{out}");
    let n = std::fs::read_dir(h.path("etc-frr")).unwrap().count();
    assert_eq!(n, 4, "frr.conf, daemons and two backups");
}

#[test]
fn bootstrap_without_frr_installed_fails_before_writing() {
    let h = Host::new("");
    // Shows the new file against nothing, exit 0, and warns that FRR is missing.
    let o = h.run(&["frr", "bootstrap"]);
    let out = ok(&o);
    assert!(
        out.starts_with(&format!("--- /dev/null\n+++ {}", h.path("etc-frr/frr.conf").display())),
        "{out}"
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("daemons file"), "{o:?}");
    // --write: runtime failure, exit 1, nothing written.
    let o = h.run(&["frr", "bootstrap", "--write"]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("daemons") && err.lines().count() == 1, "{err}");
    assert!(!h.path("etc-frr/frr.conf").exists());
}

#[test]
fn a_config_bgpd_would_refuse_is_exit_2_naming_the_key() {
    let h = Host::new("[[bgp.peer]]\naddress = \"10.255.0.0\"\nremote_as = \"internal\"\n");
    for args in [&["frr", "render"][..], &["frr", "bootstrap"], &["frr", "bootstrap", "--write"]] {
        let o = h.run(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {o:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("bgp.peer[0]") && err.contains("bgp.peer[1]"), "{err}");
        assert!(o.stdout.is_empty(), "{o:?}");
    }
}
