//! Privileged end-to-end tests of the libvirt hook (design.md §3, §5) with the real
//! binary and the real kernel, in network namespaces each test makes for itself. The
//! hook ops run in libvirt's exact order, with the domain XML on stdin, as libvirtd in the
//! hypervisor namespace would run them. Needs root.
//!
//! Run: `cargo test --test netns_hook -- --test-threads=2`.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::hook::{XmlNic, domain_xml, hook_in, hook_ok_in, simple_xml};
use common::*;

const VM1_4: &str = "192.0.2.10";
const VM1_6: &str = "2001:db8:100::10";
const VM2_4: &str = "192.0.2.20";
const VM2_6: &str = "2001:db8:100::20";

/// The XML libvirt hands the hooks for a lab VM: one NIC on cloudbr0 with the VM's
/// addresses as metadata; the tap (`<target dev>`) once libvirt has made it.
fn vm_xml(vm: &Vm, with_target: bool) -> String {
    simple_xml(&vm.name, &vm.mac, &vm.addrs(), with_target.then_some(vm.port.as_str()))
}

/// `hvroute hook qemu NAME OP SUBOP -` in the lab's hypervisor, which must exit 0 with
/// nothing on stdout.
fn hook(lab: &Lab, name: &str, op: &str, subop: &str, xml: &str) {
    hook_ok_in(&lab.hv, &lab.cfg, [name, op, subop, "-"], xml);
}

/// libvirt starting a VM: prepare, (the tap is plugged), start, started.
fn libvirt_start(lab: &Lab, vm: &Vm) {
    hook(lab, &vm.name, "prepare", "begin", &vm_xml(vm, false));
    lab.attach(vm);
    hook(lab, &vm.name, "start", "begin", &vm_xml(vm, true));
    hook(lab, &vm.name, "started", "begin", &vm_xml(vm, true));
}

/// libvirt stopping a VM: stopped, release.
fn libvirt_stop(lab: &Lab, vm: &Vm) {
    hook(lab, &vm.name, "stopped", "end", &vm_xml(vm, true));
    hook_ok_in(&lab.hv, &lab.cfg, [&vm.name, "release", "end", "destroyed"], &vm_xml(vm, true));
}

fn state_file(lab: &Lab, name: &str) -> std::path::PathBuf {
    lab.dir.path().join("state").join(format!("{name}.json"))
}

fn read_json(p: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))).unwrap()
}

/// Prevents: a VM started by libvirt on a host where the daemon is down (or not yet
/// installed) staying unreachable, because the hook only wrote a file; a bridge missing at
/// the first start failing the start; a stopped VM's /32 and /128 still attracting its
/// traffic; and one VM's hooks touching another VM's routes, or objects hvroute does not
/// own. Each check runs the moment the hook returns: no waiting.
#[test]
fn hook_ops_in_libvirt_order_route_a_dual_stack_vm_without_a_daemon() {
    let mut lab = Lab::new("hkord");
    let vm1 = lab.vm(1, Some(VM1_4), Some(VM1_6));
    let vm2 = lab.vm(2, Some(VM2_4), Some(VM2_6));

    // prepare on a fresh host: the hook creates the bridge with both gateways.
    hook(&lab, &vm1.name, "prepare", "begin", &vm_xml(&vm1, false));
    assert!(
        bridge_up(&lab.hv) && lab.gateways_present(),
        "prepare did not create cloudbr0\n{}",
        lab.diagnostics()
    );
    assert!(!state_file(&lab, "vm1").exists(), "prepare must not record the VM");

    // vm2 is admin intent, applied by a one-shot pass; plus objects hvroute does not own.
    lab.vm_add(&vm2);
    lab.attach(&vm2);
    lab.hvroute_ok(&["reconcile"]);
    assert!(lab.vm_routed(&vm2));
    ip(&lab.hv, &format!("route add 192.0.2.99/32 dev {BRIDGE} proto static"));
    ip(&lab.hv, &format!("neigh replace 192.0.2.98 lladdr 52:54:00:00:00:98 dev {BRIDGE} nud permanent"));
    let vm2_file = std::fs::read(state_file(&lab, "vm2")).unwrap();

    lab.attach(&vm1);
    hook(&lab, &vm1.name, "start", "begin", &vm_xml(&vm1, true));
    let t = Instant::now();
    hook(&lab, &vm1.name, "started", "begin", &vm_xml(&vm1, true));
    let started_ms = t.elapsed().as_secs_f64() * 1e3;
    assert!(lab.vm_routed(&vm1), "vm1 is not routed when `started` returns\n{}", lab.diagnostics());
    let entry = read_json(&state_file(&lab, "vm1"));
    assert_eq!(entry["source"], "hook");
    assert_eq!(entry["nics"][0]["port"], "v1p");
    let boot_id = std::fs::read_to_string(lab.dir.path().join("boot_id")).unwrap();
    assert_eq!(entry["boot_id"], boot_id.trim());
    lab.wait_ping(&lab.out, Some(OUT4), VM1_4);
    lab.wait_ping(&lab.out, Some(OUT6), VM1_6);
    lab.wait_ping(&vm1.ns, None, VM2_4);

    // The daemon later finds nothing to do: the hook did exactly what a pass would.
    let dry = lab.hvroute_ok(&["reconcile", "--dry-run"]);
    assert!(dry.contains("nothing to do in the kernel"), "{dry}");

    let t = Instant::now();
    libvirt_stop(&lab, &vm1);
    let release_ms = t.elapsed().as_secs_f64() * 1e3;
    assert!(lab.vm_unrouted(&vm1), "vm1 is still routed after release\n{}", lab.diagnostics());
    assert!(!state_file(&lab, "vm1").exists());
    assert!(lab.vm_routed(&vm2), "vm2 lost routes or neighbours\n{}", lab.diagnostics());
    assert_eq!(std::fs::read(state_file(&lab, "vm2")).unwrap(), vm2_file, "vm2's entry changed");
    let all = ip(&lab.hv, "route show");
    assert!(all.contains("192.0.2.99 dev cloudbr0 proto static"), "a foreign route went: {all}");
    let neighs = ip(&lab.hv, "neigh show");
    assert!(neighs.contains("192.0.2.98 dev cloudbr0 lladdr 52:54:00:00:00:98 PERMANENT"), "{neighs}");
    eprintln!("hook latency in this run: started {started_ms:.1} ms, stopped+release {release_ms:.1} ms");
}

/// Prevents: libvirt starting 50 VMs at once (host boot, a batch from the cloud) racing
/// the hooks: two creating the bridge, lost or torn state files, one hook's plan deleting
/// another's routes, or a conflicting pair both being accepted.
#[test]
fn fifty_concurrent_started_hooks_all_land_and_release_cleanly() {
    let lab = Lab::new("hk50");
    const N: usize = 50;
    let vms: Vec<(String, String, String, String)> = (0..N)
        .map(|i| {
            (
                format!("i-2-{}-VM", 100 + i),
                format!("52:54:00:00:01:{i:02x}"),
                format!("192.0.2.{}", 100 + i),
                format!("2001:db8:100::{:x}", 0x100 + i),
            )
        })
        .collect();
    let xmls: Vec<String> = vms
        .iter()
        .map(|(n, mac, a4, a6)| simple_xml(n, mac, &[a4, a6], Some(&format!("tap{}", &mac[15..17]))))
        .collect();
    let run_all = |op: &str, subop: &str| -> Vec<(std::process::Output, Duration)> {
        std::thread::scope(|s| {
            let handles: Vec<_> = vms
                .iter()
                .zip(&xmls)
                .map(|((name, ..), xml)| {
                    let (hv, cfg) = (&lab.hv, &lab.cfg);
                    s.spawn(move || {
                        let t = Instant::now();
                        let o = hook_in(hv, cfg, [name, op, subop, "-"], xml);
                        (o, t.elapsed())
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    };
    let check = |outs: &[(std::process::Output, Duration)], what: &str| {
        for (o, _) in outs {
            assert!(o.status.success() && o.stdout.is_empty(), "a concurrent {what} failed: {}", show(o));
        }
        let mut ms: Vec<f64> = outs.iter().map(|(_, d)| d.as_secs_f64() * 1e3).collect();
        ms.sort_by(f64::total_cmp);
        eprintln!(
            "{N} concurrent {what}: slowest {:.0} ms, median {:.0} ms (wall time per hook, queued on the lock)",
            ms[N - 1],
            ms[N / 2]
        );
    };

    // All 50 prepares race to create the missing bridge.
    check(&run_all("prepare", "begin"), "prepare");
    assert!(bridge_up(&lab.hv) && lab.gateways_present());
    check(&run_all("started", "begin"), "started");
    let (routes, neighs) = (lab.routes(), lab.neighs());
    for (name, mac, a4, a6) in &vms {
        for a in [a4, a6] {
            assert!(
                has_route(&routes, a) && has_permanent_neigh(&neighs, a, mac),
                "{name} {a} missing\n{}",
                lab.diagnostics()
            );
        }
        assert_eq!(read_json(&state_file(&lab, name))["source"], "hook");
    }
    assert_eq!(routes.len(), 2 * N, "{routes:#?}");
    assert_eq!(neighs.len(), 2 * N);
    let list: serde_json::Value = serde_json::from_str(&lab.hvroute_ok(&["vm", "list", "--json"])).unwrap();
    assert_eq!(list["vms"].as_array().unwrap().len(), N);
    assert!(list["errors"].as_array().unwrap().is_empty(), "{list}");
    let dry = lab.hvroute_ok(&["reconcile", "--dry-run"]);
    assert!(dry.contains("nothing to do in the kernel"), "state and kernel disagree: {dry}");

    check(&run_all("release", "end"), "release");
    assert!(lab.routes().is_empty() && lab.neighs().is_empty(), "{}", lab.diagnostics());
    let left: Vec<_> = std::fs::read_dir(lab.dir.path().join("state"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n != ".lock" && n != ".cache")
        .collect();
    assert!(left.is_empty(), "entries left: {left:?}");
}

/// Prevents: the daemon undoing a hook. A pass planned from a read of the state dir taken
/// just before a hook wrote its entry would delete the routes the hook had just made;
/// and a `kill -9` of the daemon in the middle must cost nothing.
#[test]
fn concurrent_hooks_with_a_running_daemon_killed_midway() {
    let mut lab = Lab::new("hk9");
    lab.start_daemon(&[]);
    const N: usize = 50;
    let vms: Vec<(String, String, String)> = (0..N)
        .map(|i| (format!("vm-{i}"), format!("52:54:00:00:02:{i:02x}"), format!("192.0.2.{}", 150 + i)))
        .collect();
    let xmls: Vec<String> = vms.iter().map(|(n, mac, a)| simple_xml(n, mac, &[a], None)).collect();
    let daemon_pid = lab.daemon_pid().unwrap();
    std::thread::scope(|s| {
        let hooks: Vec<_> = vms
            .iter()
            .zip(&xmls)
            .map(|((name, mac, a), xml)| {
                let (hv, cfg) = (&lab.hv, &lab.cfg);
                s.spawn(move || {
                    let o = hook_in(hv, cfg, [name, "started", "begin", "-"], xml);
                    assert!(o.status.success(), "started {name} failed: {}", show(&o));
                    // When the hook returns, its objects exist, whatever the daemon does.
                    let (r, n) = (routes_proto44(hv), neighs_proto44(hv));
                    assert!(
                        has_route(&r, a) && has_permanent_neigh(&n, a, mac),
                        "{name} not routed when started returned"
                    );
                })
            })
            .collect();
        // kill -9 the daemon once about half the hooks have recorded their VM.
        let state = lab.dir.path().join("state");
        let half = poll_until(SETUP_BOUND, || {
            let json = |e: &std::fs::DirEntry| e.file_name().to_string_lossy().ends_with(".json");
            std::fs::read_dir(&state).map(|d| d.flatten().filter(json).count()).unwrap_or(0) > N / 2
        });
        assert!(half, "the hooks did not get half-way");
        // SAFETY: kill(2) on the PID of the daemon this test started.
        assert_eq!(unsafe { libc::kill(daemon_pid as i32, libc::SIGKILL) }, 0);
        for h in hooks {
            h.join().unwrap();
        }
    });
    let (routes, neighs) = (lab.routes(), lab.neighs());
    for (name, mac, a) in &vms {
        assert!(
            has_route(&routes, a) && has_permanent_neigh(&neighs, a, mac),
            "{name} missing\n{}",
            lab.diagnostics()
        );
    }
    let dry = lab.hvroute_ok(&["reconcile", "--dry-run"]);
    assert!(dry.contains("nothing to do in the kernel"), "state and kernel disagree: {dry}");
}

/// Prevents: after a host crash or reboot (nothing fired stopped or release), a VM that
/// HA restarted on another host still being routed and advertised here. Hook entries of
/// the old boot are parked until a hook re-asserts them; `vm add` entries are not.
#[test]
fn after_a_reboot_hook_entries_are_parked_until_reasserted() {
    let mut lab = Lab::new("hkboot");
    let vm1 = lab.vm(1, Some(VM1_4), Some(VM1_6));
    let vm2 = lab.vm(2, Some(VM2_4), Some(VM2_6));
    libvirt_start(&lab, &vm1);
    lab.vm_add(&vm2);
    lab.attach(&vm2);
    lab.hvroute_ok(&["reconcile"]);
    assert!(lab.vm_routed(&vm1) && lab.vm_routed(&vm2));

    // The reboot: a new boot id. The kernel objects of the old boot are still here (a
    // real reboot would have lost them), which makes the parking visible.
    std::fs::write(lab.dir.path().join("boot_id"), "6e2f0c1a-0000-4000-8000-0000000b007b\n").unwrap();
    lab.hvroute_ok(&["reconcile"]);
    assert!(lab.vm_unrouted(&vm1), "vm1's entry of the old boot is routed\n{}", lab.diagnostics());
    assert!(lab.vm_routed(&vm2), "the CLI entry lost its routes\n{}", lab.diagnostics());
    let list: serde_json::Value = serde_json::from_str(&lab.hvroute_ok(&["vm", "list", "--json"])).unwrap();
    let state = |name: &str| {
        list["vms"].as_array().unwrap().iter().find(|v| v["name"] == name).unwrap()["state"].clone()
    };
    assert_eq!(state("vm1"), "parked");
    assert_eq!(state("vm2"), "active");
    // A pass in the meantime keeps it parked.
    lab.start_daemon(&[]);
    lab.daemon_pass();
    assert!(lab.vm_unrouted(&vm1));

    // libvirt starts the VM again after the reboot: the hook re-asserts it.
    hook(&lab, &vm1.name, "prepare", "begin", &vm_xml(&vm1, false));
    hook(&lab, &vm1.name, "started", "begin", &vm_xml(&vm1, true));
    assert!(lab.vm_routed(&vm1), "vm1 is not routed after its hook re-asserted it\n{}", lab.diagnostics());
    assert_eq!(read_json(&state_file(&lab, "vm1"))["boot_id"], "6e2f0c1a-0000-4000-8000-0000000b007b");
    lab.daemon_pass();
    assert!(lab.vm_routed(&vm1) && lab.vm_routed(&vm2));
}

/// Prevents: a libvirtd restart (reconnect) failing or leaving a VM whose route someone
/// deleted unrouted; and an unreadable XML at reconnect killing the VM.
#[test]
fn reconnect_reasserts_and_always_exits_0() {
    let mut lab = Lab::new("hkrec");
    let vm1 = lab.vm(1, Some(VM1_4), Some(VM1_6));
    libvirt_start(&lab, &vm1);
    ip(&lab.hv, &format!("route del {VM1_4}/32 dev {BRIDGE}"));
    ip(&lab.hv, &format!("-6 neigh del {VM1_6} dev {BRIDGE}"));
    assert!(!lab.vm_routed(&vm1));
    hook(&lab, &vm1.name, "reconnect", "begin", &vm_xml(&vm1, true));
    assert!(lab.vm_routed(&vm1), "reconnect did not re-assert\n{}", lab.diagnostics());

    // A broken XML: the recorded entry is re-asserted instead, and the exit is 0.
    ip(&lab.hv, &format!("route del {VM1_4}/32 dev {BRIDGE}"));
    let o = hook_in(&lab.hv, &lab.cfg, ["vm1", "reconnect", "begin", "-"], "<domain><name>vm1");
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert!(stderr(&o).contains("re-asserting its recorded entry"), "{}", show(&o));
    assert!(lab.vm_routed(&vm1), "{}", lab.diagnostics());
}

/// Prevents: a live migration's destination routing the VM (and so attracting its
/// traffic) while the VM still runs on the source, a `migrate` hook that prints on stdout
/// (libvirt would take it as the domain's new XML), and a failed migration leaving a
/// trace on the destination.
#[test]
fn migrate_records_an_incoming_vm_without_routing_it() {
    let mut lab = Lab::new("hkmig");
    let vm1 = lab.vm(1, Some(VM1_4), Some(VM1_6));
    // The source's XML names the source's tap.
    hook(&lab, &vm1.name, "migrate", "begin", &simple_xml(&vm1.name, &vm1.mac, &vm1.addrs(), Some("vnet77")));
    let entry = read_json(&state_file(&lab, "vm1"));
    assert_eq!(entry["migration"], "incoming");
    assert!(entry["nics"][0].get("port").is_none(), "the source's tap was recorded: {entry}");
    lab.hvroute_ok(&["reconcile"]);
    assert!(lab.vm_unrouted(&vm1), "an incoming VM is routed before started\n{}", lab.diagnostics());
    let list: serde_json::Value = serde_json::from_str(&lab.hvroute_ok(&["vm", "list", "--json"])).unwrap();
    assert_eq!(list["vms"][0]["state"], "incoming", "{list}");
    // Its addresses are held: another VM cannot take them meanwhile.
    let thief = simple_xml("thief", "52:54:00:00:00:66", &[VM1_4], None);
    let o = hook_in(&lab.hv, &lab.cfg, ["thief", "prepare", "begin", "-"], &thief);
    assert_eq!(o.status.code(), Some(2), "{}", show(&o));
    assert!(stderr(&o).contains("already held by VM vm1"), "{}", show(&o));

    // The destination's prepare, start and started (the VM is paused here).
    libvirt_start(&lab, &vm1);
    assert!(lab.vm_routed(&vm1));
    let entry = read_json(&state_file(&lab, "vm1"));
    assert_eq!(entry["migration"], "arriving");
    assert_eq!(entry["nics"][0]["port"], "v1p");

    // The migration fails: release end failed removes everything.
    hook_ok_in(&lab.hv, &lab.cfg, ["vm1", "release", "end", "failed"], &vm_xml(&vm1, true));
    assert!(lab.vm_unrouted(&vm1) && !state_file(&lab, "vm1").exists(), "{}", lab.diagnostics());
}

/// Prevents: the hook rewriting or removing admin intent. With `vm add` entry of the same
/// name, started programs what that entry says and release leaves it and its routes.
#[test]
fn a_cli_entry_of_the_same_name_is_never_changed_by_the_hook() {
    let mut lab = Lab::new("hkcli");
    let vm1 = lab.vm(1, Some(VM1_4), Some(VM1_6));
    lab.vm_add(&vm1);
    let file = std::fs::read(state_file(&lab, "vm1")).unwrap();
    libvirt_start(&lab, &vm1);
    assert!(lab.vm_routed(&vm1), "{}", lab.diagnostics());
    libvirt_stop(&lab, &vm1);
    assert_eq!(std::fs::read(state_file(&lab, "vm1")).unwrap(), file);
    assert!(lab.vm_routed(&vm1), "release withdrew a CLI entry's routes\n{}", lab.diagnostics());
}

/// Prevents: two NICs of one VM, or a NIC on another bridge, being mixed up: each NIC's
/// addresses go to its own MAC, the storage NIC gets nothing.
#[test]
fn multi_nic_vm_routes_each_nic_to_its_mac() {
    let lab = Lab::new("hknic");
    let xml = domain_xml(
        "multi",
        Some(&[
            ("52:54:00:00:03:01", &["192.0.2.31", "2001:db8:100::31"]),
            ("52:54:00:00:03:02", &["192.0.2.32"]),
        ]),
        &[
            XmlNic { mac: "52:54:00:00:03:01", bridge: BRIDGE, target: Some("vnet1") },
            XmlNic { mac: "52:54:00:00:03:09", bridge: "storage0", target: Some("vnet2") },
            XmlNic { mac: "52:54:00:00:03:02", bridge: BRIDGE, target: Some("vnet3") },
        ],
    );
    hook(&lab, "multi", "prepare", "begin", &xml);
    hook(&lab, "multi", "started", "begin", &xml);
    let n = lab.neighs();
    assert!(has_permanent_neigh(&n, "192.0.2.31", "52:54:00:00:03:01"));
    assert!(has_permanent_neigh(&n, "2001:db8:100::31", "52:54:00:00:03:01"));
    assert!(has_permanent_neigh(&n, "192.0.2.32", "52:54:00:00:03:02"));
    assert_eq!(n.len(), 3, "{n:#?}");
    hook(&lab, "multi", "release", "end", &xml);
    assert!(lab.routes().is_empty() && lab.neighs().is_empty());
}

/// Prevents: the hook's work, handed to a running daemon (which holds every VM in memory,
/// so the hook reads no state file), differing from the hook's own: a VM not routed when
/// `started` returns, a conflict let through, or a release that leaves routes behind.
#[test]
fn hooks_handed_to_a_running_daemon_do_what_the_hook_does() {
    let mut lab = Lab::new("hkdmn");
    lab.start_daemon(&[]);
    lab.wait_until(Duration::from_secs(10), "the daemon to bring up cloudbr0", || bridge_up(&lab.hv));
    let vm1 = lab.vm(1, Some(VM1_4), Some(VM1_6));
    libvirt_start(&lab, &vm1);
    assert!(lab.vm_routed(&vm1), "vm1 is not routed when `started` returns\n{}", lab.diagnostics());
    let entry = read_json(&state_file(&lab, "vm1"));
    assert_eq!(entry["source"], "hook");
    let log = || std::fs::read_to_string(&lab.log).unwrap_or_default();
    assert!(log().contains("libvirt hook handled by the daemon"), "the daemon did not do it:\n{}", log());

    // A second VM claiming vm1's address is refused, through the daemon, with exit 2.
    let thief = simple_xml("thief", "52:54:00:00:00:66", &[VM1_4], Some("v9p"));
    let o = hook_in(&lab.hv, &lab.cfg, ["thief", "started", "begin", "-"], &thief);
    assert_eq!(o.status.code(), Some(2), "{}", show(&o));
    assert!(stderr(&o).contains("already held by VM vm1"), "{}", show(&o));
    assert!(!state_file(&lab, "thief").exists());

    libvirt_stop(&lab, &vm1);
    assert!(lab.vm_unrouted(&vm1), "vm1 is still routed when release returned\n{}", lab.diagnostics());
    assert!(!state_file(&lab, "vm1").exists());
    lab.assert_daemon_running();
}
