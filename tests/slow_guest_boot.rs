//! A real guest, end to end (issue 8): a Debian 13 VM that libvirt boots from the image
//! of `scripts/guest-image.sh`, configured only by the drive `hvroute configdrive build`
//! writes, reached from the outside host behind the spine.
//!
//! One fabric (`common/fabric.rs`: spine, outside host, one hypervisor with FRR and
//! `hvroute daemon`) and one libvirtd in the hypervisor's namespace with hvroute's hook
//! (`common/libvirt.rs`) serve every case in turn, one guest at a time:
//!
//! | case | addresses | hvroute learns them from | drive |
//! | --- | --- | --- | --- |
//! | `dual` | /32 and /128 | domain metadata | openstack (config-2) |
//! | `v4` | /32 only | domain metadata | openstack |
//! | `v6` | /128 only | domain metadata | openstack |
//! | `drive-only` | /32 and /128 | the drive (the hook's fallback) | openstack |
//! | `nocloud` | /32 and /128 | domain metadata (the hook reads config-2 only) | nocloud (cidata) |
//!
//! Each case: `virsh create` of a TCG domain (direct kernel boot, a qcow2 overlay on the
//! cached raw image, the drive as an IDE cdrom, the NIC on cloudbr0, the serial console to
//! a file); a bounded poll until the outside host's pings to the guest's addresses are
//! answered; then the guest's own report, which its user-data prints on the serial console
//! between `HVR-REPORT-BEGIN NONCE` and `HVR-REPORT-END NONCE` (`ip -j addr`, `ip -j -4
//! route`, `ip -j -6 route`, the authorized_keys files, the marker write_files wrote); then
//! `virsh destroy` and the routes are gone.
//!
//! Prints `guest-boot: CASE create-to-ping S` lines (scripts/bench-guest.sh reads them).
//! `HVROUTE_GUEST_CASES=dual,v6` runs a subset; `HVROUTE_GUEST_KEEP_CONSOLE=DIR` keeps each
//! guest's console log there (the report also carries the guest's uptime and `systemd-analyze blame`). Needs root, libvirt and QEMU
//! (scripts/test.sh installs them); the image is built on first use (3 to 5 min, cached in
//! target/guest-image or $HVROUTE_GUEST_CACHE).
//! Run: `cargo test --test slow_guest_boot -- --nocapture`.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::fabric::{Fabric, HvSpec, Peering, unix_now};
use common::libvirt::{Libvirt, cdrom, hvroute_metadata};
use common::*;
use serde_json::Value;

/// A TCG boot of the guest takes about 45 s on an idle machine of this class (facts.md);
/// generous for a busy one.
const BOOT_BOUND: Duration = Duration::from_secs(240);
/// From the first answered ping until the guest's report is on its console.
const REPORT_BOUND: Duration = Duration::from_secs(120);

/// A public key (no private key exists anywhere) the drive gives the guest.
const SSH_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA3QULb6546pdocnqJc7TNG7LuzIJWxwfkOxEE+piyxF hvroute-guest-test";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Source {
    Metadata,
    DriveOnly,
}

struct Case {
    name: &'static str,
    mac: &'static str,
    ip4: Option<&'static str>,
    ip6: Option<&'static str>,
    source: Source,
    flavor: &'static str,
}

const CASES: [Case; 5] = [
    Case {
        name: "dual",
        mac: "52:54:00:00:08:01",
        ip4: Some("192.0.2.81"),
        ip6: Some("2001:db8:100::81"),
        source: Source::Metadata,
        flavor: "openstack",
    },
    Case {
        name: "v4",
        mac: "52:54:00:00:08:02",
        ip4: Some("192.0.2.82"),
        ip6: None,
        source: Source::Metadata,
        flavor: "openstack",
    },
    Case {
        name: "v6",
        mac: "52:54:00:00:08:03",
        ip4: None,
        ip6: Some("2001:db8:100::83"),
        source: Source::Metadata,
        flavor: "openstack",
    },
    Case {
        name: "drive-only",
        mac: "52:54:00:00:08:04",
        ip4: Some("192.0.2.84"),
        ip6: Some("2001:db8:100::84"),
        source: Source::DriveOnly,
        flavor: "openstack",
    },
    Case {
        name: "nocloud",
        mac: "52:54:00:00:08:05",
        ip4: Some("192.0.2.85"),
        ip6: Some("2001:db8:100::85"),
        source: Source::Metadata,
        flavor: "nocloud",
    },
];

impl Case {
    fn addrs(&self) -> Vec<&'static str> {
        self.ip4.into_iter().chain(self.ip6).collect()
    }
    fn domain(&self) -> String {
        format!("hvg-{}", self.name)
    }
}

/// The cached image: kernel, initrd and raw root file system.
struct Image {
    dir: PathBuf,
}

/// Runs scripts/guest-image.sh, which reuses its cache when the recipe is unchanged and
/// builds the image otherwise (a clean clone in CI).
fn guest_image() -> Image {
    let dir = std::env::var_os("HVROUTE_GUEST_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/guest-image"));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/guest-image.sh");
    let t = Instant::now();
    let o = Command::new(&script).env("HVROUTE_GUEST_CACHE", &dir).output().expect("scripts/guest-image.sh");
    assert!(o.status.success(), "scripts/guest-image.sh failed: {}", show(&o));
    eprintln!("{}(guest image ready in {:.1} s)", stdout(&o), t.elapsed().as_secs_f64());
    for f in ["rootfs.raw", "vmlinuz", "initrd.img"] {
        assert!(dir.join(f).exists(), "{} is missing after scripts/guest-image.sh", dir.join(f).display());
    }
    Image { dir }
}

/// The user-data: write_files puts the nonce and the reporter in place, runcmd runs it.
/// The reporter waits (at most 60 s) for the default route of each family the guest
/// should have, then prints everything in one write to the serial console.
fn user_data(case: &Case, nonce: &str) -> String {
    let mut wait = String::new();
    if case.ip4.is_some() {
        wait.push_str(" && ip -4 route show default | grep -q .");
    }
    if case.ip6.is_some() {
        wait.push_str(" && ip -6 route show default | grep -q .");
    }
    format!(
        r#"#cloud-config
write_files:
  - path: /var/lib/hvroute-test/marker
    content: "{nonce}"
  - path: /usr/local/sbin/hvroute-report
    permissions: "0755"
    content: |
      #!/bin/sh
      i=0
      while [ $i -lt 120 ] && ! (true{wait}); do sleep 0.5; i=$((i + 1)); done
      {{
        echo "HVR-REPORT-BEGIN {nonce}"
        echo "HVR addr $(ip -j addr show)"
        echo "HVR route4 $(ip -j -4 route show)"
        echo "HVR route6 $(ip -j -6 route show)"
        for f in /root/.ssh/authorized_keys /home/*/.ssh/authorized_keys; do
          [ -f "$f" ] && sed "s|^|HVR key $f |" "$f"
        done
        echo "HVR userdata $(cat /var/lib/hvroute-test/marker)"
        echo "HVR uptime $(cut -d' ' -f1 /proc/uptime)"
        systemd-analyze blame 2>/dev/null | head -n 12 | sed 's/^/HVR blame /'
        echo "HVR-REPORT-END {nonce}"
      }} > /run/hvroute-report
      cat /run/hvroute-report > /dev/ttyS0
runcmd:
  - [/usr/local/sbin/hvroute-report]
"#
    )
}

/// A TCG domain that boots the guest's kernel directly, its root a qcow2 OVERLAY, the
/// drive as an IDE cdrom, the NIC on the managed bridge, the serial console to CONSOLE.
fn guest_domain(case: &Case, img: &Image, overlay: &Path, drive: &Path, console: &Path) -> String {
    let md = match case.source {
        Source::Metadata => {
            format!("  <metadata>\n{}\n  </metadata>\n", hvroute_metadata(case.mac, &case.addrs()))
        }
        Source::DriveOnly => String::new(),
    };
    format!(
        "<domain type='qemu'>
  <name>{name}</name>
{md}  <memory unit='MiB'>768</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{kernel}</kernel>
    <initrd>{initrd}</initrd>
    <cmdline>root=/dev/vda rw console=ttyS0 quiet</cmdline>
  </os>
  <on_poweroff>destroy</on_poweroff>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='{overlay}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
{cd}    <interface type='bridge'>
      <mac address='{mac}'/>
      <source bridge='{BRIDGE}'/>
      <model type='virtio'/>
      <rom enabled='no'/>
    </interface>
    <serial type='file'>
      <source path='{console}'/>
      <target port='0'/>
    </serial>
  </devices>
</domain>
",
        name = case.domain(),
        kernel = img.dir.join("vmlinuz").display(),
        initrd = img.dir.join("initrd.img").display(),
        overlay = overlay.display(),
        cd = cdrom(drive.to_str().expect("utf-8")),
        mac = case.mac,
        console = console.display(),
    )
}

/// What the guest printed between its markers: the `HVR KIND REST` lines, by kind.
struct Report {
    lines: Vec<(String, String)>,
}

impl Report {
    /// The report in console text TEXT, once its end marker is there.
    fn parse(text: &str, nonce: &str) -> Option<Report> {
        let begin = text.find(&format!("HVR-REPORT-BEGIN {nonce}"))?;
        let rest = &text[begin..];
        let end = rest.find(&format!("HVR-REPORT-END {nonce}"))?;
        let lines = rest[..end]
            .lines()
            .filter_map(|l| l.trim_end_matches('\r').strip_prefix("HVR "))
            .filter_map(|l| l.split_once(' ').map(|(k, v)| (k.to_string(), v.to_string())))
            .collect();
        Some(Report { lines })
    }

    fn all(&self, kind: &str) -> Vec<&str> {
        self.lines.iter().filter(|(k, _)| k == kind).map(|(_, v)| v.as_str()).collect()
    }

    fn json(&self, kind: &str) -> Vec<Value> {
        let raw = self.all(kind);
        let text = raw.first().unwrap_or_else(|| panic!("the report has no {kind} line"));
        serde_json::from_str::<Value>(text)
            .unwrap_or_else(|e| panic!("the report's {kind} line is not JSON ({e}): {text}"))
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
}

/// The guest's addresses (family, address, prefix length) on the NIC with MAC, and on
/// any interface except lo.
fn guest_addrs(addr: &[Value], pred: impl Fn(&Value) -> bool) -> Vec<(String, String, u64)> {
    addr.iter()
        .filter(|l| pred(l))
        .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
        .map(|a| {
            (
                a["family"].as_str().unwrap_or("").to_string(),
                a["local"].as_str().unwrap_or("").to_string(),
                a["prefixlen"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

fn default_via<'a>(routes: &'a [Value], gw: &str) -> Option<&'a Value> {
    routes.iter().find(|r| r["dst"] == "default" && r["gateway"] == gw)
}

/// The guest configured exactly as its drive says.
fn check_report(case: &Case, r: &Report, nonce: &str) {
    let addr = r.json("addr");
    let (r4, r6) = (r.json("route4"), r.json("route6"));
    let nic = |l: &Value| l["address"].as_str() == Some(case.mac);
    assert!(addr.iter().any(nic), "{}: the guest has no NIC with MAC {}: {addr:?}", case.name, case.mac);
    let on_nic = guest_addrs(&addr, nic);
    let not_lo = guest_addrs(&addr, |l| l["ifname"] != "lo");
    let global6: Vec<_> = not_lo.iter().filter(|(f, a, _)| f == "inet6" && !a.starts_with("fe80:")).collect();
    let inet4: Vec<_> = not_lo.iter().filter(|(f, _, _)| f == "inet").collect();

    match case.ip4 {
        Some(a4) => {
            assert_eq!(
                inet4,
                vec![&("inet".to_string(), a4.to_string(), 32)],
                "{}: the guest's IPv4 addresses",
                case.name
            );
            assert!(on_nic.iter().any(|(_, a, _)| a == a4), "{}: {a4} is not on the NIC", case.name);
            let d = default_via(&r4, GW4)
                .unwrap_or_else(|| panic!("{}: no IPv4 default via {GW4}: {r4:?}", case.name));
            let flags: Vec<&str> =
                d["flags"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
            assert!(flags.contains(&"onlink"), "{}: the IPv4 default is not on-link: {d}", case.name);
            let defaults = r4.iter().filter(|r| r["dst"] == "default").count();
            assert_eq!(defaults, 1, "{}: competing IPv4 defaults: {r4:?}", case.name);
        }
        None => {
            assert!(inet4.is_empty(), "{}: an IPv6-only guest has IPv4 addresses: {inet4:?}", case.name);
            assert!(
                !r4.iter().any(|r| r["dst"] == "default"),
                "{}: an IPv6-only guest has an IPv4 default: {r4:?}",
                case.name
            );
        }
    }
    match case.ip6 {
        Some(a6) => {
            let want: std::net::Ipv6Addr = a6.parse().expect("address");
            let got: Vec<_> = global6
                .iter()
                .map(|(_, a, l)| (a.parse::<std::net::Ipv6Addr>().expect("guest address"), *l))
                .collect();
            assert_eq!(got, vec![(want, 128)], "{}: the guest's global IPv6 addresses", case.name);
            assert!(default_via(&r6, GW6).is_some(), "{}: no IPv6 default via {GW6}: {r6:?}", case.name);
            let defaults = r6.iter().filter(|r| r["dst"] == "default").count();
            assert_eq!(defaults, 1, "{}: competing IPv6 defaults (an RA taken?): {r6:?}", case.name);
        }
        None => {
            assert!(global6.is_empty(), "{}: an IPv4-only guest has global IPv6: {global6:?}", case.name);
            assert!(
                !r6.iter().any(|r| r["dst"] == "default"),
                "{}: an IPv4-only guest has an IPv6 default: {r6:?}",
                case.name
            );
        }
    }
    let keys = r.all("key");
    assert!(
        keys.iter().any(|k| k.contains(SSH_KEY.split(' ').nth(1).expect("key body"))),
        "{}: the drive's SSH key is in no authorized_keys file: {keys:?}",
        case.name
    );
    assert_eq!(r.all("userdata"), vec![nonce], "{}: the user-data's write_files marker", case.name);
}

fn r_first<'a>(r: &'a Report, kind: &str) -> &'a str {
    r.all(kind).first().copied().unwrap_or("?")
}

fn answers(ns: &str, case: &Case) -> bool {
    case.addrs().iter().all(|a| ping_ok(ns, a))
}

/// One case: drive, overlay, `virsh create`, pings from the outside host, the guest's
/// report, `virsh destroy`. Returns the seconds from `virsh create` to the first answered
/// ping and to answers on every address.
fn boot_case(f: &Fabric, lv: &Libvirt, img: &Image, case: &Case) -> (f64, f64) {
    let hv = f.hv(1);
    let dir = lv.dir.path();
    let dom = case.domain();
    let nonce = format!("{}-{}-{}", case.name, std::process::id(), unix_now() as u64);
    let ud = dir.join(format!("{dom}.user-data"));
    fs::write(&ud, user_data(case, &nonce)).expect("user-data");
    let key = dir.join("guest-key.pub");
    fs::write(&key, format!("{SSH_KEY}\n")).expect("key");
    let drive = dir.join(format!("{dom}.iso"));
    let mut args = vec!["configdrive", "build", "--name", &dom, "--mac", case.mac];
    for a in case.addrs() {
        args.extend(["--ip", a]);
    }
    let (ud_s, key_s, drive_s) =
        (ud.to_str().expect("utf-8"), key.to_str().expect("utf-8"), drive.to_str().expect("utf-8"));
    args.extend(["--user-data", ud_s, "--ssh-key", key_s, "--flavor", case.flavor, "--out", drive_s]);
    hvroute_ok_in(&hv.ns, &hv.cfg, &args);

    let overlay = dir.join(format!("{dom}.qcow2"));
    let backing = img.dir.join("rootfs.raw");
    check(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            "raw",
            "-b",
            backing.to_str().expect("utf-8"),
            overlay.to_str().expect("utf-8"),
        ],
    );
    let console = dir.join(format!("{dom}.console"));
    let xml = guest_domain(case, img, &overlay, &drive, &console);

    let t0 = Instant::now();
    let o = lv.create(&dom, &xml);
    assert!(o.status.success(), "{}: virsh create failed: {}\n{}", case.name, show(&o), lv.diagnostics());
    // The hook has routed the guest before virsh returns.
    let routes = routes_proto44(&hv.ns);
    for a in case.addrs() {
        assert!(
            has_route(&routes, a),
            "{}: no route for {a} when virsh create returned: {routes:?}",
            case.name
        );
    }

    let console_tail = || {
        let t = fs::read_to_string(&console).unwrap_or_default();
        let lines: Vec<&str> = t.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    };
    let mut first = None;
    let ok = poll_until(BOOT_BOUND, || {
        if first.is_none() && case.addrs().iter().any(|a| ping_ok(&f.out, a)) {
            first = Some(t0.elapsed());
        }
        first.is_some() && answers(&f.out, case)
    });
    assert!(
        ok,
        "{}: the outside host's pings to {:?} were not all answered within {BOOT_BOUND:?}\n\
         --- guest console (last 40 lines) ---\n{}\n{}",
        case.name,
        case.addrs(),
        console_tail(),
        f.diagnostics()
    );
    let (first, all) = (first.expect("answered").as_secs_f64(), t0.elapsed().as_secs_f64());
    eprintln!("guest-boot: {} create-to-ping {first:.1} (every address answered at {all:.1} s)", case.name);

    let mut report = None;
    let ok = poll_until(REPORT_BOUND, || {
        report = Report::parse(&fs::read_to_string(&console).unwrap_or_default(), &nonce);
        report.is_some()
    });
    assert!(
        ok,
        "{}: the guest's report did not reach its console within {REPORT_BOUND:?} of the pings\n\
         --- guest console (last 40 lines) ---\n{}",
        case.name,
        console_tail()
    );
    let report = report.expect("parsed");
    if let Some(keep) = std::env::var_os("HVROUTE_GUEST_KEEP_CONSOLE") {
        let _ = fs::copy(&console, Path::new(&keep).join(format!("{dom}.console")));
    }
    eprintln!("guest-boot: {} report written at guest uptime {} s", case.name, r_first(&report, "uptime"));
    check_report(case, &report, &nonce);

    lv.virsh_ok(&["destroy", &dom]);
    wait_until(
        Duration::from_secs(5),
        &format!("{}: virsh destroy to withdraw the routes", case.name),
        || {
            let r = routes_proto44(&hv.ns);
            case.addrs().iter().all(|a| !has_route(&r, a))
        },
    );
    assert!(
        !hv.state.join(format!("{dom}.json")).exists(),
        "{}: the hook entry outlived the domain",
        case.name
    );
    let _ = fs::remove_file(&overlay);
    (first, all)
}

/// Prevents, with a real operating system rather than a namespace standing in for it:
/// - a guest that boots from hvroute's drive and still has no working network (the
///   drive's network description not taken by the guest's own cloud-init, a /32 without
///   its on-link default, an IPv6 default that is not fe80::1, an RA-learned default
///   competing with it);
/// - an IPv6-only guest that is handed IPv4 anyway (169.254.0.1 or an address), or an
///   IPv4-only guest handed IPv6;
/// - the hook's drive fallback, or the nocloud flavour, working on paper only;
/// - a drive whose user-data or SSH key never reaches the guest;
/// - a guest reachable on the hypervisor but not from behind the spine;
/// - `virsh destroy` of a real guest leaving its routes behind.
#[test]
fn real_guests_boot_from_their_drive_and_answer_from_behind_the_spine() {
    require_root();
    let only: Option<Vec<String>> = std::env::var("HVROUTE_GUEST_CASES")
        .ok()
        .map(|s| s.split(',').map(|c| c.trim().to_string()).filter(|c| !c.is_empty()).collect::<Vec<_>>())
        .filter(|v| !v.is_empty());
    if let Some(only) = &only {
        for c in only {
            assert!(CASES.iter().any(|k| k.name == c), "HVROUTE_GUEST_CASES names an unknown case {c:?}");
        }
    }
    let img = guest_image();

    let mut f = Fabric::new("gb", &[HvSpec::new(Peering::Unnumbered)]);
    f.start_daemons();
    let (ns, cfg) = (f.hv(1).ns.clone(), f.hv(1).cfg.clone());
    let mut lv = Libvirt::new(&ns);
    let hooks = lv.hooks_dir();
    hvroute_ok_in(&ns, &cfg, &["hook", "install", "--dir", hooks.to_str().expect("utf-8")]);
    lv.start();
    // The spine's default reaches the hypervisor: the guests' way back to the outside host.
    wait_until(FABRIC_BOUND_SETUP, "the hypervisor to learn the spine's defaults", || {
        let fib = common::fabric::fib_bgp(&ns);
        fib.contains_key(common::fabric::DEFAULT4) && fib.contains_key(common::fabric::DEFAULT6)
    });

    let mut times = Vec::new();
    for case in CASES.iter().filter(|c| only.as_ref().is_none_or(|o| o.iter().any(|n| n == c.name))) {
        let t = Instant::now();
        let (first, _) = boot_case(&f, &lv, &img, case);
        eprintln!("guest-boot: {} passed in {:.1} s", case.name, t.elapsed().as_secs_f64());
        times.push(first);
    }
    times.sort_by(f64::total_cmp);
    if !times.is_empty() {
        eprintln!(
            "guest-boot: median create-to-ping {:.1} s over {} guests (min {:.1}, max {:.1})",
            times[times.len() / 2],
            times.len(),
            times[0],
            times[times.len() - 1]
        );
    }
    drop(lv);
}

/// Bound for the hypervisor's BGP session to bring the spine's defaults.
const FABRIC_BOUND_SETUP: Duration = common::fabric::FABRIC_BOUND;
