//! End to end with a real libvirt (issue 4's acceptance): libvirtd 9.0 and virtlogd run
//! inside the lab's hypervisor namespace with private directories (`common/libvirt.rs`),
//! `hvroute hook install` puts the hook into that libvirt's hooks directory, and `virsh
//! create` starts real QEMU domains (diskless, no OS; TCG unless
//! HVROUTE_TEST_LIBVIRT_VIRT=kvm) whose NIC is on cloudbr0. In the first test no hvroute
//! daemon runs: the hook alone must do the kernel side. The second adds a spine and the
//! hypervisor's FRR and daemon (`common/fabric.rs`): the domain's prefixes reach the spine
//! and leave it with `virsh destroy`.
//!
//! Needs root and libvirt (scripts/test.sh installs it).
//! Run: `cargo test --test netns_libvirt -- --test-threads=2`.

mod common;

use std::time::{Duration, Instant};

use common::libvirt::{Libvirt, cdrom, domain, domain_with, hvroute_metadata};
use common::*;

const MAC1: &str = "52:54:00:00:00:51";

/// One libvirt at a time: virtlogd and libvirtd take pid files in /run that the harness's
/// private directories do not cover.
static ONE_LIBVIRT: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_libvirt() -> std::sync::MutexGuard<'static, ()> {
    ONE_LIBVIRT.lock().unwrap_or_else(|e| e.into_inner())
}
const VM1_4: &str = "192.0.2.51";
const VM1_6: &str = "2001:db8:100::51";

fn routed(lab: &Lab, mac: &str, addrs: &[&str]) -> bool {
    let (r, n) = (lab.routes(), lab.neighs());
    addrs.iter().all(|a| has_route(&r, a) && has_permanent_neigh(&n, a, mac))
}

fn unrouted(lab: &Lab, addrs: &[&str]) -> bool {
    let (r, n) = (lab.routes(), lab.neighs());
    let first = |l: &String, a: &str| l.split_whitespace().next() == Some(a);
    addrs.iter().all(|a| !r.iter().any(|l| first(l, a)) && !n.iter().any(|l| first(l, a)))
}

/// Prevents, with the real libvirt rather than our idea of it:
/// - a VM started by libvirt staying unreachable (the hook not installed where libvirt
///   looks, not called, or called with an XML it cannot read), or a fresh host's missing
///   bridge failing the first start;
/// - `virsh destroy` leaving the VM's /32 and /128 behind;
/// - a libvirtd restart killing running VMs (a reconnect hook that fails) or changing
///   their routing;
/// - a VM with invalid hvroute metadata starting without routes instead of failing with
///   hvroute's reason where the admin sees it (virsh's error);
/// - VMs that have nothing for hvroute being disturbed by the hook.
#[test]
fn libvirt_runs_the_hook_for_real_domains() {
    let _one = one_libvirt();
    let lab = Lab::new("lv");
    let mut lv = Libvirt::new(&lab.hv);

    // Install the hook into this libvirt, as an admin would, before libvirtd starts.
    let hooks = lv.hooks_dir();
    let out = lab.hvroute_ok(&["hook", "install", "--dir", hooks.to_str().unwrap()]);
    assert!(out.contains("SIGHUP"), "{out}");
    assert!(hooks.join("qemu.d/hvroute").exists());

    let t = Instant::now();
    lv.start();
    eprintln!("libvirtd ready in {:.2} s", t.elapsed().as_secs_f64());
    assert!(!lab.gateways_present(), "cloudbr0 exists before any VM");

    // A domain with hvroute metadata, on a host with no cloudbr0 yet.
    let xml = domain("hvr-vm1", MAC1, Some(&hvroute_metadata(MAC1, &[VM1_4, VM1_6])));
    let t = Instant::now();
    let o = lv.create("hvr-vm1", &xml);
    let create_s = t.elapsed().as_secs_f64();
    assert!(o.status.success(), "virsh create failed: {}\n{}", show(&o), lv.diagnostics());
    eprintln!("virsh create (first domain, {}) took {create_s:.2} s", common::libvirt::virt_type());
    // The started hook has returned before virsh create does: no waiting here.
    assert!(
        bridge_up(&lab.hv) && lab.gateways_present(),
        "prepare did not create cloudbr0\n{}",
        lab.diagnostics()
    );
    assert!(
        routed(&lab, MAC1, &[VM1_4, VM1_6]),
        "the domain is not routed\n{}\n{}",
        lab.diagnostics(),
        lv.diagnostics()
    );
    let taps = lv.taps("hvr-vm1");
    assert_eq!(taps.len(), 1, "{taps:?}");
    let ports = ip(&lab.hv, &format!("-o link show master {BRIDGE}"));
    assert!(
        ports.contains(&format!(" {}:", taps[0])) || ports.contains(&format!(" {}@", taps[0])),
        "{ports}"
    );
    let state = lab.dir.path().join("state/hvr-vm1.json");
    let entry: serde_json::Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    assert_eq!(entry["source"], "hook");
    assert_eq!(entry["nics"][0]["port"], taps[0].as_str(), "the hook did not bind the tap libvirt made");

    // A domain with nothing for hvroute starts as if hvroute were not there.
    let plain = domain("hvr-plain", "52:54:00:00:00:52", None);
    let t = Instant::now();
    let o = lv.create("hvr-plain", &plain);
    assert!(o.status.success(), "a domain without hvroute metadata did not start: {}", show(&o));
    eprintln!("virsh create (second domain) took {:.2} s", t.elapsed().as_secs_f64());
    assert!(!lab.dir.path().join("state/hvr-plain.json").exists());

    // Restarting libvirtd changes nothing and keeps the domains alive.
    let qemu = lv.qemu_pid("hvr-vm1").expect("qemu pid file");
    let (routes, neighs) = (lab.routes(), lab.neighs());
    let file = std::fs::read(&state).unwrap();
    let old_pid = lv.libvirtd_pid();
    lv.stop_libvirtd();
    assert!(Libvirt::is_qemu(qemu), "stopping libvirtd killed the domain");
    let t = Instant::now();
    lv.start();
    assert_ne!(lv.libvirtd_pid(), old_pid);
    eprintln!("libvirtd restart: ready in {:.2} s", t.elapsed().as_secs_f64());
    lab.wait_until(REPAIR_BOUND, "hvr-vm1 to be running again under the new libvirtd", || {
        lv.domstate("hvr-vm1").as_deref() == Some("running")
    });
    assert_eq!(lv.qemu_pid("hvr-vm1"), Some(qemu), "the domain was restarted");
    assert!(Libvirt::is_qemu(qemu));
    assert_eq!(lv.domstate("hvr-plain").as_deref(), Some("running"));
    assert_eq!((lab.routes(), lab.neighs()), (routes, neighs), "a libvirtd restart changed the kernel");
    assert_eq!(std::fs::read(&state).unwrap(), file, "a libvirtd restart changed the state entry");

    // The reconnect hook re-asserts: a neighbour deleted behind hvroute's back comes back
    // at the next libvirtd restart (no hvroute daemon runs here).
    ip(&lab.hv, &format!("-6 neigh del {VM1_6} dev {BRIDGE}"));
    lv.stop_libvirtd();
    lv.start();
    lab.wait_until(REPAIR_BOUND, "the reconnect hook to restore the deleted neighbour", || {
        routed(&lab, MAC1, &[VM1_4, VM1_6])
    });

    // virsh destroy withdraws the routes and neighbours.
    let t = Instant::now();
    lv.virsh_ok(&["destroy", "hvr-vm1"]);
    eprintln!("virsh destroy took {:.2} s", t.elapsed().as_secs_f64());
    lab.wait_until(Duration::from_secs(2), "virsh destroy to withdraw hvr-vm1's objects", || {
        unrouted(&lab, &[VM1_4, VM1_6])
    });
    assert!(!state.exists(), "the hook entry is still there after destroy");
    let t = Instant::now();
    lv.virsh_ok(&["destroy", "hvr-plain"]);
    eprintln!("virsh destroy of a domain without hvroute metadata took {:.2} s", t.elapsed().as_secs_f64());

    // Invalid metadata: the start fails, with hvroute's reason in libvirt's error.
    let bad = domain(
        "hvr-bad",
        "52:54:00:00:00:53",
        Some(&hvroute_metadata("52:54:00:00:00:53", &["198.51.100.7"])),
    );
    let o = lv.create("hvr-bad", &bad);
    assert!(!o.status.success(), "a domain with an address outside the pools started");
    let err = stderr(&o);
    assert!(
        err.contains(
            "hvroute: refusing to start VM hvr-bad: address 198.51.100.7 is outside the configured pools"
        ),
        "hvroute's reason is not in libvirt's error: {err}"
    );
    assert!(lv.domstate("hvr-bad").is_none(), "the refused domain exists");
    assert!(!lab.dir.path().join("state/hvr-bad.json").exists());
    assert!(unrouted(&lab, &["198.51.100.7"]));

    // The same address as a running VM's, with another MAC, is refused too.
    let o = lv.create("hvr-vm1", &xml);
    assert!(o.status.success(), "{}", show(&o));
    let thief =
        domain("hvr-thief", "52:54:00:00:00:54", Some(&hvroute_metadata("52:54:00:00:00:54", &[VM1_4])));
    let o = lv.create("hvr-thief", &thief);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("address 192.0.2.51 is already held by VM hvr-vm1"), "{}", stderr(&o));
    assert!(
        routed(&lab, MAC1, &[VM1_4, VM1_6]),
        "a refused start disturbed the running VM\n{}",
        lab.diagnostics()
    );
}

/// A spine and one hypervisor with real FRR and `hvroute daemon` (`common/fabric.rs`), and
/// libvirtd in the hypervisor's namespace with hvroute's hook installed. (Drop the
/// libvirt first: it is declared last.)
fn fabric_with_libvirt(tag: &str) -> (common::fabric::Fabric, Libvirt) {
    use common::fabric::{Fabric, HvSpec, Peering};
    let mut f = Fabric::new(tag, &[HvSpec::new(Peering::Unnumbered)]);
    f.start_daemons();
    let (ns, cfg) = (f.hv(1).ns.clone(), f.hv(1).cfg.clone());
    let mut lv = Libvirt::new(&ns);
    let hooks = lv.hooks_dir();
    hvroute_ok_in(&ns, &cfg, &["hook", "install", "--dir", hooks.to_str().unwrap()]);
    lv.start();
    (f, lv)
}

/// After `virsh create` of DOMAIN returned: both its prefixes reach the spine (`on_spine`
/// counts them), and leave it with `virsh destroy`.
fn spine_round_trip(
    f: &common::fabric::Fabric,
    lv: &Libvirt,
    domain: &str,
    on_spine: impl Fn(&common::fabric::Fabric) -> usize,
) {
    let t = Instant::now();
    assert!(
        poll_until(Duration::from_secs(10), || on_spine(f) == 2),
        "{domain}'s prefixes did not reach the spine\n{}\n{}",
        f.diagnostics(),
        lv.diagnostics()
    );
    eprintln!("virsh create returned; the spine held both prefixes {:?} later", t.elapsed());
    lv.virsh_ok(&["destroy", domain]);
    let t = Instant::now();
    assert!(
        poll_until(Duration::from_secs(10), || on_spine(f) == 0),
        "{domain}'s prefixes stayed on the spine after virsh destroy\n{}",
        f.diagnostics()
    );
    eprintln!("virsh destroy returned; the spine dropped both prefixes {:?} later", t.elapsed());
}

/// How many of `want` the spine holds from AS `asn`.
fn spine_holds(f: &common::fabric::Fabric, asn: u32, want: &[String]) -> usize {
    use common::fabric::rib_from;
    let sf = f.spine_frr();
    let (r4, r6) = (rib_from(&sf.rib("ipv4"), asn), rib_from(&sf.rib("ipv6"), asn));
    want.iter().filter(|p| r4.contains(*p) || r6.contains(*p)).count()
}

/// Prevents: a VM that libvirt starts being routed on the hypervisor but never reaching
/// the fabric (the daemon not told, or FRR not), or staying on the spine after `virsh
/// destroy`. A spine and a hypervisor with real FRR and `hvroute daemon`
/// (`common/fabric.rs`), and libvirtd in the hypervisor's namespace.
#[test]
fn a_libvirt_domain_reaches_the_spine_and_leaves_it() {
    let _one = one_libvirt();
    let (f, lv) = fabric_with_libvirt("lvf");
    let asn = f.hv(1).asn;
    let (a4, a6) = ("192.0.2.61", "2001:db8:100::61");
    let want = [format!("{a4}/32"), format!("{a6}/128")];
    let on_spine = |f: &common::fabric::Fabric| spine_holds(f, asn, &want);
    let xml =
        domain("hvr-spine", "52:54:00:00:00:61", Some(&hvroute_metadata("52:54:00:00:00:61", &[a4, a6])));
    let o = lv.create("hvr-spine", &xml);
    assert!(o.status.success(), "virsh create failed: {}\n{}", show(&o), lv.diagnostics());
    spine_round_trip(&f, &lv, "hvr-spine", on_spine);
}

/// Prevents: a VM that carries only a ConfigDrive (CloudStack's routed guests, no hvroute
/// metadata) staying unrouted and unadvertised; or the hook reading any cdrom as a drive:
/// an unrelated cdrom image leaves a domain alone. The drive is built by `hvroute
/// configdrive build`, attached as a cdrom, and read by the hook that real libvirt runs.
#[test]
fn a_domain_with_only_a_configdrive_reaches_the_spine() {
    let _one = one_libvirt();
    let (f, lv) = fabric_with_libvirt("lvd");
    let hv = f.hv(1);
    let (ns, cfg, asn) = (hv.ns.clone(), hv.cfg.clone(), hv.asn);
    let (mac, a4, a6) = ("52:54:00:00:00:71", "192.0.2.71", "2001:db8:100::71");
    let iso = lv.dir.path().join("hvr-drive.iso");
    hvroute_ok_in(
        &ns,
        &cfg,
        &[
            "configdrive",
            "build",
            "--name",
            "hvr-drive",
            "--mac",
            mac,
            "--ip",
            a4,
            "--ip",
            a6,
            "--out",
            iso.to_str().unwrap(),
        ],
    );
    // A cdrom that is no ConfigDrive: a drive with another label.
    let other = lv.dir.path().join("other.img");
    hvroute_ok_in(
        &ns,
        &cfg,
        &[
            "configdrive",
            "build",
            "--name",
            "x",
            "--mac",
            "52:54:00:00:00:72",
            "--ip",
            "192.0.2.72",
            "--flavor",
            "nocloud",
            "--format",
            "vfat",
            "--out",
            other.to_str().unwrap(),
        ],
    );
    let want = [format!("{a4}/32"), format!("{a6}/128")];
    let on_spine = |f: &common::fabric::Fabric| spine_holds(f, asn, &want);

    let xml = domain_with("hvr-other", "52:54:00:00:00:72", None, &cdrom(other.to_str().unwrap()));
    let o = lv.create("hvr-other", &xml);
    assert!(o.status.success(), "virsh create failed: {}\n{}", show(&o), lv.diagnostics());

    let xml = domain_with("hvr-drive", mac, None, &cdrom(iso.to_str().unwrap()));
    let o = lv.create("hvr-drive", &xml);
    assert!(o.status.success(), "virsh create failed: {}\n{}", show(&o), lv.diagnostics());
    // `started` returned before virsh did: the kernel side is there now.
    let (routes, neighs) = (routes_proto44(&ns), neighs_proto44(&ns));
    for a in [a4, a6] {
        assert!(has_route(&routes, a), "no route for {a} when virsh create returned\n{}", lv.diagnostics());
        assert!(has_permanent_neigh(&neighs, a, mac), "no permanent neighbour for {a}\n{neighs:?}");
    }
    assert!(!has_route(&routes, "192.0.2.72"), "the nocloud cdrom was taken for a config-2 drive");
    // The guards are in place when `started` has returned, while the guest could not yet
    // have sent a frame: the tap is isolated and bound to the NIC's chain
    // (docs/guards.md); the other domain's tap, bound to nothing, is in the default-deny set.
    let taps = lv.taps("hvr-drive");
    assert_eq!(taps.len(), 1, "{taps:?}");
    let link = run("ip", &["netns", "exec", &ns, "bridge", "-d", "link", "show", "dev", &taps[0]]);
    assert!(stdout(&link).contains("isolated on"), "tap {} is not isolated: {}", taps[0], show(&link));
    let map = run("ip", &["netns", "exec", &ns, "nft", "list", "map", "bridge", "hvroute", "port_nics"]);
    let want = format!("\"{}\"", taps[0]);
    assert!(
        stdout(&map).lines().any(|l| l.contains(&want) && l.contains("jump nic-525400000071")),
        "tap {} is not bound to the NIC's chain: {}",
        taps[0],
        show(&map)
    );
    spine_round_trip(&f, &lv, "hvr-drive", on_spine);
    lv.virsh_ok(&["destroy", "hvr-other"]);
}
