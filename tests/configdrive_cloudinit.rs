//! Acceptance of hvroute's ConfigDrive content by software nobody here wrote: cloud-init
//! 25.1 (Debian 13) and 22.4 (Debian 12), and netplan 0.106's generator.
//!
//! Each test builds the drive's files with `content::files`, hands the network file to the
//! real cloud-init code a guest runs (`tests/cloudinit/render.py`: ConfigDrive's
//! `convert_net_json`, or NoCloud's v2 passthrough, then a renderer), and asserts on what the
//! guest would write to /etc/netplan (or /etc/network/interfaces). Nothing touches the host's
//! network: NIC names come from a MAC table.
//!
//! Needs `scripts/cloud-init-fetch.sh` to have run (it unpacks both cloud-init releases
//! under `${HVROUTE_CACHE:-/var/cache/hvroute-test}/cloud-init` and installs Debian's python3
//! modules and netplan.io). Without it these tests fail and say so; they never skip.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use hvroute::configdrive::{Flavor, Seed, SeedNic, content};
use serde_json::{Value, json};

const MAC0: &str = "52:54:00:00:00:01";
const MAC1: &str = "52:54:00:00:00:02";
const PYTHON: &str = "/usr/bin/python3";

fn cloudinit_path(release: &str) -> PathBuf {
    let cache = std::env::var_os("HVROUTE_CACHE")
        .map_or_else(|| PathBuf::from("/var/cache/hvroute-test"), PathBuf::from);
    let p = cache.join("cloud-init").join(release).join("usr/lib/python3/dist-packages");
    assert!(
        p.join("cloudinit").is_dir(),
        "cloud-init {release} is not unpacked in {}: run scripts/cloud-init-fetch.sh (as root) first",
        p.display()
    );
    p
}

/// What cloud-init renders: the file's text and, for netplan, its parsed YAML.
struct Rendered {
    version: String,
    text: String,
    netplan: Value,
}

/// Runs cloud-init `release` ("25" or "22") on `input`, a network_data.json (`source` =
/// "openstack") or a NoCloud network-config ("nocloud"), with `renderer` "netplan" or "eni".
fn render(release: &str, source: &str, renderer: &str, input: &[u8]) -> Rendered {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cloudinit/render.py");
    let known_macs = json!({ MAC0: "eth0", MAC1: "eth1" }).to_string();
    let mut child = Command::new(PYTHON)
        .arg(&script)
        .args([source, renderer, "--known-macs", &known_macs])
        .env("PYTHONPATH", cloudinit_path(release))
        .env_remove("PYTHONHOME")
        .env_remove("PYTHONSTARTUP")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run {PYTHON} ({e}): run scripts/cloud-init-fetch.sh (as root) first")
        });
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "cloud-init {release} failed on this {source} input (missing python modules? run scripts/cloud-init-fetch.sh):\n{stderr}\n--- input:\n{}",
        String::from_utf8_lossy(input)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("render.py prints JSON");
    Rendered {
        version: v["cloudinit"].as_str().unwrap().to_owned(),
        text: v["text"].as_str().unwrap().to_owned(),
        netplan: v["netplan"].clone(),
    }
}

fn nic(mac: &str, addrs: &[&str]) -> SeedNic {
    SeedNic { mac: mac.parse().unwrap(), addresses: addrs.iter().map(|a| a.parse().unwrap()).collect() }
}

fn seed(nics: Vec<SeedNic>) -> Seed {
    let name = "web1".parse().unwrap();
    Seed {
        uuid: content::uuid_for(&name),
        name,
        nics,
        dns: vec!["192.0.2.53".parse().unwrap()],
        ssh_keys: vec![],
        user_data: None,
        mtu: 1500,
    }
}

fn dual() -> Seed {
    seed(vec![nic(MAC0, &["192.0.2.29", "2001:db8:103::100"])])
}
fn v4_only() -> Seed {
    seed(vec![nic(MAC0, &["192.0.2.29"])])
}
fn v6_only() -> Seed {
    let mut s = seed(vec![nic(MAC0, &["2001:db8:103::100"])]);
    s.dns = vec!["2001:db8::53".parse().unwrap()];
    s
}
fn two_nics() -> Seed {
    seed(vec![
        nic(MAC0, &["192.0.2.29", "2001:db8:103::100"]),
        nic(MAC1, &["192.0.2.40", "2001:db8:103::200"]),
    ])
}
fn secondary_ips() -> Seed {
    seed(vec![nic(MAC0, &["192.0.2.29", "192.0.2.30", "2001:db8:103::100", "2001:db8:103::101"])])
}

fn drive_file(seed: &Seed, flavor: Flavor, path: &str) -> Vec<u8> {
    content::files(seed, flavor)
        .into_iter()
        .find(|f| f.path == path)
        .unwrap_or_else(|| panic!("no {path}"))
        .data
}

fn network_data(seed: &Seed) -> Vec<u8> {
    drive_file(seed, Flavor::OpenStack, "openstack/latest/network_data.json")
}

fn network_config(seed: &Seed) -> Vec<u8> {
    drive_file(seed, Flavor::NoCloud, "network-config")
}

fn eth<'a>(r: &'a Rendered, name: &str) -> &'a Value {
    let e = &r.netplan["network"]["ethernets"][name];
    assert!(e.is_object(), "no ethernet {name} in:\n{}", r.text);
    e
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array().map(|a| a.iter().map(|s| s.as_str().unwrap()).collect()).unwrap_or_default()
}

fn routes(e: &Value) -> Vec<Value> {
    e["routes"].as_array().cloned().unwrap_or_default()
}

fn default4() -> Value {
    json!({"to": "default", "via": "169.254.0.1", "on-link": true})
}
fn default6() -> Value {
    json!({"to": "default", "via": "fe80::1", "on-link": true})
}

fn openstack25(seed: &Seed) -> Rendered {
    let r = render("25", "openstack", "netplan", &network_data(seed));
    assert!(r.version.starts_with("25.1"), "expected cloud-init 25.1, found {}", r.version);
    r
}

/// Dual stack through cloud-init 25.1: without on-link, the guest's kernel refuses a default
/// route via 169.254.0.1 (not inside 192.0.2.29/32) and the guest has no IPv4 at all.
#[test]
fn cloudinit25_dual_stack_renders_host_addresses_and_on_link_defaults() {
    let r = openstack25(&dual());
    let e = eth(&r, "eth0");
    assert_eq!(strings(&e["addresses"]), ["192.0.2.29/32", "2001:db8:103::100/128"], "{}", r.text);
    assert_eq!(routes(e), [default4(), default6()], "{}", r.text);
    assert_eq!(e["match"]["macaddress"], MAC0);
    assert_eq!(e["accept-ra"], false);
    assert_eq!(e["mtu"], 1500);
    assert_eq!(strings(&e["nameservers"]["addresses"]), ["192.0.2.53"]);
    assert!(e.get("gateway4").is_none() && e.get("gateway6").is_none(), "{}", r.text);
    eprintln!("cloud-init {} renders network_data.json as:\n{}", r.version, r.text);
}

/// An IPv4-only guest must not get an IPv6 default towards a gateway it was never given.
#[test]
fn cloudinit25_ipv4_only_has_no_ipv6_route() {
    let r = openstack25(&v4_only());
    let e = eth(&r, "eth0");
    assert_eq!(strings(&e["addresses"]), ["192.0.2.29/32"]);
    assert_eq!(routes(e), [default4()], "{}", r.text);
    assert!(!r.text.contains("fe80::1"), "{}", r.text);
}

/// A truly single-stack IPv6 guest: no IPv4 address, route or gateway anywhere.
#[test]
fn cloudinit25_ipv6_only_has_no_ipv4_at_all() {
    let r = openstack25(&v6_only());
    let e = eth(&r, "eth0");
    assert_eq!(strings(&e["addresses"]), ["2001:db8:103::100/128"]);
    assert_eq!(routes(e), [default6()], "{}", r.text);
    assert!(!r.text.contains("169.254.0.1"), "{}", r.text);
    assert!(!r.text.contains("/32"), "{}", r.text);
}

/// A second NIC with its own default routes would give the guest competing defaults; it
/// gets its addresses only.
#[test]
fn cloudinit25_second_nic_has_addresses_and_no_default_routes() {
    let r = openstack25(&two_nics());
    assert_eq!(routes(eth(&r, "eth0")), [default4(), default6()], "{}", r.text);
    let e1 = eth(&r, "eth1");
    assert_eq!(strings(&e1["addresses"]), ["192.0.2.40/32", "2001:db8:103::200/128"]);
    assert_eq!(e1["match"]["macaddress"], MAC1);
    assert!(routes(e1).is_empty(), "{}", r.text);
    assert!(e1.get("gateway4").is_none() && e1.get("gateway6").is_none(), "{}", r.text);
}

/// CloudStack secondary IPs: every address, one default per family (a gateway on each
/// network object gives duplicate defaults, facts.md).
#[test]
fn cloudinit25_secondary_addresses_keep_one_default_per_family() {
    let r = openstack25(&secondary_ips());
    let e = eth(&r, "eth0");
    assert_eq!(
        strings(&e["addresses"]),
        ["192.0.2.29/32", "192.0.2.30/32", "2001:db8:103::100/128", "2001:db8:103::101/128"]
    );
    assert_eq!(routes(e), [default4(), default6()], "{}", r.text);
}

/// The documented limitation (docs/configdrive.md, design.md §6): cloud-init 22.4 renders the
/// openstack drive as `gateway4:` with no on-link, so a /32 guest gets no IPv4 default. If a
/// Debian 12 update changes this, the docs must change too.
#[test]
fn cloudinit22_openstack_loses_on_link_as_documented() {
    let r = render("22", "openstack", "netplan", &network_data(&dual()));
    assert!(r.version.starts_with("22.4"), "expected cloud-init 22.4, found {}", r.version);
    let e = eth(&r, "eth0");
    assert_eq!(strings(&e["addresses"]), ["192.0.2.29/32", "2001:db8:103::100/128"]);
    assert_eq!(e["gateway4"], "169.254.0.1", "{}", r.text);
    assert_eq!(e["gateway6"], "fe80::1", "{}", r.text);
    assert!(!r.text.contains("on-link"), "{}", r.text);
}

/// The nocloud flavour exists for cloud-init before 23.1 on netplan guests: its v2
/// network-config reaches netplan unchanged, on-link routes included, in 22.4 and in 25.1.
#[test]
fn nocloud_network_config_passes_through_cloudinit_unchanged() {
    for (what, s) in [
        ("dual", dual()),
        ("v4", v4_only()),
        ("v6", v6_only()),
        ("two", two_nics()),
        ("secondary", secondary_ips()),
    ] {
        let input = network_config(&s);
        let ours: serde_norway::Value = serde_norway::from_slice(&input).unwrap();
        let ours = serde_json::to_value(ours).unwrap();
        for release in ["22", "25"] {
            let r = render(release, "nocloud", "netplan", &input);
            assert_eq!(r.netplan["network"], ours, "{what}, cloud-init {}:\n{}", r.version, r.text);
        }
    }
    let r = render("22", "nocloud", "netplan", &network_config(&dual()));
    let on_link = json!({"to": "0.0.0.0/0", "via": "169.254.0.1", "on-link": true});
    assert_eq!(routes(eth(&r, "eth0"))[0], on_link, "{}", r.text);
    eprintln!("cloud-init {} writes this nocloud network-config to netplan as:\n{}", r.version, r.text);
}

/// ENI (ifupdown) guests lose the IPv4 default with either flavour and either release: the
/// eni renderer has no on-link, so `ip route add default via 169.254.0.1` fails on a /32.
/// Pinned so that docs/configdrive.md's guest matrix stays true.
#[test]
fn eni_renderer_has_no_on_link_in_either_release() {
    for release in ["22", "25"] {
        let r = render(release, "openstack", "eni", &network_data(&dual()));
        assert!(r.text.contains("address 192.0.2.29/32"), "{}", r.text);
        assert!(r.text.contains("gateway 169.254.0.1"), "{}", r.text);
        assert!(!r.text.contains("onlink"), "{}", r.text);
        let r = render(release, "nocloud", "eni", &network_config(&dual()));
        assert!(r.text.contains("route add default gw 169.254.0.1 || true"), "{}", r.text);
        assert!(!r.text.contains("onlink"), "{}", r.text);
    }
}

/// netplan's own generator (Debian 12's 0.106) must accept what cloud-init writes, and turn
/// it into systemd-networkd routes with GatewayOnLink: the step between cloud-init and the
/// kernel that a YAML-level check cannot see.
#[test]
fn netplan_generate_turns_both_flavours_into_on_link_networkd_routes() {
    let nocloud = render("22", "nocloud", "netplan", &network_config(&dual()));
    let openstack = openstack25(&dual());
    for (what, r) in [("nocloud via cloud-init 22.4", nocloud), ("openstack via cloud-init 25.1", openstack)]
    {
        let unit = netplan_generate(&r.text);
        assert!(unit.contains("\nAddress=192.0.2.29/32\n"), "{what}:\n{unit}");
        assert!(unit.contains("\nAddress=2001:db8:103::100/128\n"), "{what}:\n{unit}");
        assert!(unit.contains("\nIPv6AcceptRA=no\n"), "{what}:\n{unit}");
        for gw in ["169.254.0.1", "fe80::1"] {
            let route = unit
                .split("[Route]")
                .find(|sec| sec.contains(&format!("\nGateway={gw}\n")))
                .unwrap_or_else(|| panic!("{what}: no route via {gw}:\n{unit}"));
            assert!(
                route.contains("\nGatewayOnLink=true\n") || route.contains("\nGatewayOnLink=yes\n"),
                "{what}: route via {gw} is not on-link:\n{unit}"
            );
        }
        eprintln!("{what}: netplan generate writes\n{unit}");
    }
}

/// Writes `yaml` as DIR/etc/netplan/50-cloud-init.yaml, runs `netplan generate --root-dir
/// DIR` and returns the .network unit for eth0.
fn netplan_generate(yaml: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let etc = dir.path().join("etc/netplan");
    std::fs::create_dir_all(&etc).unwrap();
    let file = etc.join("50-cloud-init.yaml");
    std::fs::write(&file, yaml).unwrap();
    // netplan warns about world-readable configs; cloud-init writes 0600.
    std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let out = Command::new("netplan")
        .args(["generate", "--root-dir"])
        .arg(dir.path())
        .env_remove("SNAP") // inside a snap, netplan would ask a running netplan-dbus instead
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run netplan ({e}): run scripts/cloud-init-fetch.sh (as root) first")
        });
    assert!(
        out.status.success(),
        "netplan generate failed:\n{}\n---\n{yaml}",
        String::from_utf8_lossy(&out.stderr)
    );
    let unit = dir.path().join("run/systemd/network/10-netplan-eth0.network");
    std::fs::read_to_string(&unit).unwrap_or_else(|e| panic!("no {} ({e})", unit.display()))
}
