//! Privileged end-to-end tests of the CloudStack entry point (design.md §3, issue 4):
//! `scripts/cloudstack/modifymacip.sh`, run exactly as CloudStack runs it, with the real
//! binary and the real kernel, together with the libvirt hook in libvirt's order. Needs
//! root.
//!
//! Run: `cargo test --test netns_shim -- --test-threads=2`.

mod common;

use std::process::{Command, Output};
use std::time::Duration;

use common::hook::{hook_ok_in, simple_xml};
use common::*;

const VM1_4: &str = "192.0.2.10";
const VM1_6: &str = "2001:db8:100::10";
const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/cloudstack/modifymacip.sh");

/// `modifymacip.sh ARGS...` in the lab's hypervisor namespace, with this build of hvroute
/// and the lab's config.
fn modifymacip(lab: &Lab, args: &[&str]) -> Output {
    let cfg = lab.cfg.to_str().expect("utf-8 path");
    Command::new("ip")
        .args(["netns", "exec", &lab.hv, "env", &format!("HVROUTE={BIN}"), &format!("HVROUTE_CONFIG={cfg}")])
        .arg(SCRIPT)
        .args(args)
        .output()
        .expect("modifymacip.sh")
}

fn modifymacip_ok(lab: &Lab, args: &[&str]) {
    let o = modifymacip(lab, args);
    assert!(o.status.success(), "modifymacip.sh {args:?}: {}", show(&o));
}

/// CloudStack's `add` for the VM's NIC: `-o add -b cloudbr0 -m MAC -4 A -6 B`.
fn plug(lab: &Lab, vm: &Vm) {
    let mut args = vec!["-o", "add", "-b", BRIDGE, "-m", &vm.mac];
    if let Some(a) = &vm.ip4 {
        args.extend(["-4", a]);
    }
    if let Some(a) = &vm.ip6 {
        args.extend(["-6", a]);
    }
    modifymacip_ok(lab, &args);
}

fn unplug(lab: &Lab, vm: &Vm) {
    modifymacip_ok(lab, &["-o", "delete", "-b", BRIDGE, "-m", &vm.mac]);
}

fn hook(lab: &Lab, vm: &Vm, op: &str, subop: &str, extra: &str) {
    let xml = simple_xml(&vm.name, &vm.mac, &vm.addrs(), Some(&vm.port));
    hook_ok_in(&lab.hv, &lab.cfg, [&vm.name, op, subop, extra], &xml);
}

fn state_files(lab: &Lab) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(lab.dir.path().join("state"))
        .expect("state dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".json"))
        .collect();
    v.sort();
    v
}

/// Prevents: CloudStack's NIC plug (before libvirt's `prepare`) and the hook describing
/// the same NIC as two VMs that conflict, which would abort the VM's start; and the pair
/// of unplug and release leaving routes, neighbours or entries behind.
#[test]
fn cloudstack_order_shim_then_hook_is_one_vm_and_leaves_nothing() {
    let mut lab = Lab::new("csord");
    let vm = lab.vm(1, Some(VM1_4), Some(VM1_6));
    hook(&lab, &vm, "prepare", "begin", "-"); // creates the bridge
    for release_first in [false, true] {
        // CloudStack plugs the NIC first: nothing routed yet (no tap, no hook entry).
        plug(&lab, &vm);
        assert!(lab.vm_unrouted(&vm), "routed before libvirt started the VM\n{}", lab.diagnostics());
        // libvirt's start: prepare must not refuse the NIC the shim recorded.
        hook(&lab, &vm, "prepare", "begin", "-");
        lab.attach(&vm);
        hook(&lab, &vm, "start", "begin", "-");
        hook(&lab, &vm, "started", "begin", "-");
        assert!(lab.vm_routed(&vm), "not routed when started returned\n{}", lab.diagnostics());
        assert_eq!(state_files(&lab), ["nic-52-54-00-00-00-01.json", "vm1.json"]);
        let dry = lab.hvroute_ok(&["reconcile", "--dry-run", "--json"]);
        let plan: serde_json::Value = serde_json::from_str(&dry).expect("JSON");
        assert_eq!(plan["conflicts"], serde_json::json!([]), "the shim and the hook conflict: {dry}");
        lab.wait_ping(&lab.out, Some(OUT4), VM1_4);
        lab.wait_ping(&lab.out, Some(OUT6), VM1_6);

        // Unplug and release, in either order: nothing left.
        if release_first {
            hook(&lab, &vm, "stopped", "end", "-");
            hook(&lab, &vm, "release", "end", "destroyed");
            unplug(&lab, &vm);
        } else {
            unplug(&lab, &vm);
            assert!(lab.vm_routed(&vm), "unplug alone withdrew the hook's VM\n{}", lab.diagnostics());
            hook(&lab, &vm, "stopped", "end", "-");
            hook(&lab, &vm, "release", "end", "destroyed");
        }
        assert!(lab.vm_unrouted(&vm), "routes or neighbours left behind\n{}", lab.diagnostics());
        assert!(state_files(&lab).is_empty(), "entries left behind: {:?}", state_files(&lab));
        ip(&lab.hv, &format!("link set {} nomaster", vm.port));
    }
}

/// Prevents: on a host without the hook, a CloudStack NIC never being routed (nothing but
/// the shim knows it), or being routed before its VM exists here.
#[test]
fn without_the_hook_a_shim_nic_is_routed_once_its_tap_is_on_the_bridge() {
    let mut lab = Lab::new("cstap");
    lab.start_daemon(&[]);
    lab.wait_until(Duration::from_secs(10), "the daemon to bring up cloudbr0", || bridge_up(&lab.hv));
    let vm = lab.vm(1, Some(VM1_4), Some(VM1_6));
    plug(&lab, &vm);
    assert!(lab.vm_unrouted(&vm), "routed with no tap on the bridge\n{}", lab.diagnostics());
    // libvirt's tap: the VM's MAC with the first octet fe.
    let tap_mac = format!("fe{}", &vm.mac[2..]);
    ip(&lab.hv, &format!("link set {} address {tap_mac}", vm.port));
    lab.attach(&vm);
    lab.wait_until(Duration::from_secs(3), "the daemon to route the NIC once its tap joined", || {
        lab.vm_routed(&vm)
    });
    lab.wait_ping(&lab.out, Some(OUT4), VM1_4);
    unplug(&lab, &vm);
    assert!(lab.vm_unrouted(&vm), "still routed when unplug returned\n{}", lab.diagnostics());
    lab.assert_daemon_running();
}

/// Prevents: CloudStack's input reaching the state dir unchecked, or a NIC on another
/// bridge (CloudStack's own guest bridges) being taken over.
#[test]
fn bad_shim_input_is_refused_and_other_bridges_are_left_alone() {
    let mut lab = Lab::new("csbad");
    let vm = lab.vm(1, Some(VM1_4), Some(VM1_6));
    plug(&lab, &vm);
    let before = state_files(&lab);
    let snapshot = |lab: &Lab| {
        before
            .iter()
            .map(|f| std::fs::read(lab.dir.path().join("state").join(f)).unwrap())
            .collect::<Vec<_>>()
    };
    let bytes = snapshot(&lab);
    let cases: [(&[&str], i32, &str); 7] = [
        (&["-o", "add", "-b", BRIDGE, "-m", "52:54:00:00:00:99", "-4", VM1_4], 2, "already held by"),
        (&["-o", "add", "-b", BRIDGE, "-m", "zz:54:00:00:00:99", "-4", "192.0.2.11"], 2, "zz:54:00:00:00:99"),
        (&["-o", "add", "-b", BRIDGE, "-m", "52:54:00:00:00:98", "-4", "198.51.100.7"], 2, "198.51.100.7"),
        (&["-o", "add", "-b", BRIDGE, "-m", "52:54:00:00:00:98", "-4", "192.0.2.0/24"], 2, "192.0.2.0/24"),
        (&["-o", "move", "-b", BRIDGE, "-m", "52:54:00:00:00:98"], 2, "add or delete"),
        (&["-o", "add", "-b", "cloudbr1", "-m", "52:54:00:00:00:98", "-4", "192.0.2.11"], 0, "not cloudbr0"),
        (&["-o", "delete", "-b", BRIDGE, "-m", "52:54:00:00:00:97"], 0, "not known"),
    ];
    for (args, code, says) in cases {
        let o = modifymacip(&lab, args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(code), "{args:?}: {}", show(&o));
        assert!(err.contains(says), "{args:?}: {err}");
        assert_eq!(state_files(&lab), before, "{args:?} changed the state dir");
        assert_eq!(snapshot(&lab), bytes, "{args:?} changed a state file");
    }
}
