//! Privileged end-to-end tests of the core datapath (design.md §1, §3): the real
//! `hvroute` binary and the real kernel, in network namespaces each test makes for
//! itself (see `common/mod.rs` for the lab's picture). Needs root.
//!
//! Run: `cargo test --test netns_core -- --test-threads=2`.

mod common;

use std::time::Duration;

use common::*;

const VM1_4: &str = "192.0.2.10";
const VM1_6: &str = "2001:db8:100::10";
const VM2_4: &str = "192.0.2.20";
const VM2_6: &str = "2001:db8:100::20";

/// The hop limits (`ttl=` / `hlim=`) of the echo replies in ping's output.
fn reply_ttls(out: &str) -> Vec<u32> {
    out.lines()
        .filter(|l| l.contains("bytes from"))
        .filter_map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("ttl=").or_else(|| w.strip_prefix("hlim=")))
                .and_then(|v| v.parse().ok())
        })
        .collect()
}

/// Prevents: a VM started on a hypervisor whose daemon already runs stays unreachable
/// until someone restarts the daemon or the periodic resync comes round, because `vm add`
/// only wrote the state file and nothing applied it.
#[test]
fn vm_add_on_running_daemon_routes_at_once_and_traffic_flows() {
    let mut lab = Lab::new("add");
    lab.start_daemon(&[]);
    let pid = lab.daemon_pid();
    lab.wait_until(REPAIR_BOUND, "the daemon to bring up cloudbr0 with both gateways", || {
        bridge_up(&lab.hv) && lab.gateways_present()
    });

    // libvirt plugs the tap first; the VM's intent arrives afterwards.
    let vm = lab.vm(1, Some(VM1_4), Some(VM1_6));
    lab.attach(&vm);
    assert!(lab.vm_unrouted(&vm), "vm1 is routed before vm add\n{}", lab.diagnostics());
    let out = lab.vm_add(&vm);
    lab.wait_until(
        REPAIR_BOUND,
        &format!("vm1's routes and permanent neighbours after `vm add` ({out})"),
        || lab.vm_routed(&vm),
    );
    lab.assert_daemon_running();
    assert_eq!(lab.daemon_pid(), pid, "the daemon was restarted");

    lab.wait_ping(&vm.ns, None, OUT4);
    lab.wait_ping(&vm.ns, None, OUT6);
    lab.wait_ping(&lab.out, Some(OUT4), VM1_4);
    lab.wait_ping(&lab.out, Some(OUT6), VM1_6);
}

/// Every file of the lab's state dir with its bytes (the parse cache in `.cache/` too).
fn state_files(lab: &Lab) -> std::collections::BTreeMap<String, Vec<u8>> {
    let state = lab.dir.path().join("state");
    let cache = state.join(".cache");
    [state, cache]
        .iter()
        .flat_map(|d| std::fs::read_dir(d).into_iter().flatten().flatten())
        .filter(|e| e.path().is_file())
        .map(|e| (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).expect("state file")))
        .collect()
}

/// Prevents: with a daemon running, `vm add` and `vm del` go through it (it holds the
/// state dir's snapshot); a daemon that checked less than the CLI alone would let two VMs
/// claim one address, or a typo replace a VM.
#[test]
fn cli_rules_hold_when_the_daemon_does_the_write() {
    let mut lab = Lab::new("rules");
    lab.start_daemon(&[]);
    let vm1 = lab.vm(1, Some(VM1_4), Some(VM1_6));
    let out = lab.vm_add(&vm1);
    assert!(out.contains("applied by the daemon"), "vm add did not go through the daemon: {out}");
    lab.wait_until(REPAIR_BOUND, "vm1's routes and neighbours", || lab.vm_routed(&vm1));
    let before = state_files(&lab);
    let passes = |lab: &mut Lab| lab.daemon_status()["passes"].as_u64().expect("passes");
    let passes_before = passes(&mut lab);

    // An address held by another VM's MAC; a different spec without --replace; bad input.
    let refused: [(&[&str], &str); 3] = [
        (&["vm", "add", "vm2", "--mac", "52:54:00:aa:00:02", "--ip", VM1_4], "already held by VM vm1"),
        (&["vm", "add", "vm1", "--mac", &vm1.mac, "--ip", VM2_4], "--replace"),
        (&["vm", "add", "vm3", "--mac", "52:54:00:aa:00:03", "--ip", "192.0.2.300"], "192.0.2.300"),
    ];
    for (args, says) in refused {
        let o = lab.hvroute(args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", show(&o));
        assert!(err.contains(says) && err.trim().lines().count() == 1, "{args:?}: {err}");
        assert_eq!(state_files(&lab), before, "{args:?} changed the state dir");
    }
    // The same spec again, and an unknown name: exit 0, nothing to do, no pass.
    assert!(lab.vm_add(&vm1).contains("already present"));
    let o = lab.hvroute(&["vm", "del", "nosuchvm"]);
    assert!(o.status.success() && String::from_utf8_lossy(&o.stderr).contains("not known"), "{}", show(&o));
    assert_eq!(state_files(&lab), before);
    assert_eq!(passes(&mut lab), passes_before, "a no-op change ran a pass");

    let out = lab.hvroute_ok(&["vm", "del", "vm1"]);
    assert!(out.contains("removed; applied by the daemon"), "{out}");
    assert!(lab.vm_unrouted(&vm1), "vm1 is still routed when vm del returned\n{}", lab.diagnostics());
    let left: Vec<String> = state_files(&lab).into_keys().filter(|f| f.ends_with(".json")).collect();
    assert!(left.is_empty(), "state files left after vm del: {left:?}");
}

/// Two dual-stack VMs, added, plugged in and routed by a running daemon.
fn two_routed_vms(lab: &mut Lab) -> (Vm, Vm) {
    let vm1 = lab.vm(1, Some(VM1_4), Some(VM1_6));
    let vm2 = lab.vm(2, Some(VM2_4), Some(VM2_6));
    lab.vm_add(&vm1);
    lab.vm_add(&vm2);
    lab.start_daemon(&[]);
    lab.attach(&vm1);
    lab.attach(&vm2);
    lab.wait_until(REPAIR_BOUND, "both VMs' routes and neighbours", || {
        lab.vm_routed(&vm1) && lab.vm_routed(&vm2)
    });
    (vm1, vm2)
}

/// Prevents: deleting one VM tears down a neighbour's routes or neighbours (a whole-table
/// flush, a delete by prefix instead of by address), or leaves the deleted VM's /32 and
/// /128 behind, still attracting its traffic.
#[test]
fn vm_del_removes_exactly_that_vms_objects() {
    let mut lab = Lab::new("del");
    let (vm1, vm2) = two_routed_vms(&mut lab);

    lab.hvroute_ok(&["vm", "del", "vm1"]);
    lab.wait_until(REPAIR_BOUND, "vm1's routes and neighbours to go", || lab.vm_unrouted(&vm1));
    // A later pass neither brings vm1 back nor touches vm2.
    lab.daemon_pass();
    assert!(lab.vm_unrouted(&vm1), "vm1's objects came back\n{}", lab.diagnostics());
    assert!(lab.vm_routed(&vm2), "vm2 lost routes or neighbours\n{}", lab.diagnostics());
    let (routes, neighs) = (lab.routes(), lab.neighs());
    assert_eq!(routes.len(), 2, "expected exactly vm2's two routes: {routes:#?}");
    assert_eq!(neighs.len(), 2, "expected exactly vm2's two neighbours: {neighs:#?}");

    lab.wait_ping(&lab.out, Some(OUT4), VM2_4);
    lab.wait_ping(&lab.out, Some(OUT6), VM2_6);
}

/// Prevents: two VMs on the same hypervisor cannot talk to each other, or talk only at
/// L2 behind the host's back (after an ICMP redirect), which port isolation breaks. Each
/// reply must have crossed the host once: hop limit 63.
#[test]
fn two_vms_on_one_host_reach_each_other_through_the_host() {
    let mut lab = Lab::new("vm2vm");
    let (vm1, vm2) = two_routed_vms(&mut lab);

    // Reachability first, for every path, so that a failure below is about the route taken.
    let paths = [(&vm1, &vm2), (&vm2, &vm1)];
    for (from, to) in paths {
        for dst in to.addrs() {
            lab.wait_ping(&from.ns, None, dst);
        }
    }
    // Then several packets per path: a path that leaves the host after the first packet
    // (an ICMP redirect sends the guest straight to the other guest's MAC) shows up on
    // the later ones.
    let mut bypassed = Vec::new();
    for (from, to) in paths {
        for dst in to.addrs() {
            let o = run("ip", &["netns", "exec", &from.ns, "ping", "-n", "-c3", "-i0.2", "-W1", dst]);
            assert!(o.status.success(), "{} -> {dst} stopped answering: {}", from.name, show(&o));
            let ttls = reply_ttls(&stdout(&o));
            if ttls != [63, 63, 63] {
                let route = ip(&from.ns, &format!("route get {dst}"));
                bypassed.push(format!(
                    "{} -> {dst}: reply hop limits {ttls:?}, want [63, 63, 63]; guest's route: {}",
                    from.name,
                    route.trim()
                ));
            }
        }
    }
    assert!(
        bypassed.is_empty(),
        "VM-to-VM traffic must be routed through the host on every packet (design.md §1: ICMPv6 \
         redirects out of the bridge are dropped; with port isolation a redirected guest is cut off):\n{}",
        bypassed.join("\n")
    );
}

/// What `reconcile`/`daemon` could change on the hypervisor: the bridge, its addresses,
/// every route, the bridge's neighbours and the sysctls hvroute sets.
fn hv_snapshot(lab: &Lab) -> String {
    let hv = &lab.hv;
    let mut s = String::new();
    for args in [
        format!("-o link show dev {BRIDGE}"),
        format!("-o addr show dev {BRIDGE}"),
        "-4 route show table all".to_string(),
        "-6 route show table all".to_string(),
        format!("neigh show dev {BRIDGE}"),
    ] {
        s += &format!("$ ip {args}\n{}", ip(hv, &args));
    }
    s += &sh_in_ok(
        hv,
        "cd /proc/sys/net && grep -H . ipv4/ip_forward ipv6/conf/all/forwarding \
         ipv4/conf/all/send_redirects ipv4/conf/cloudbr0/send_redirects \
         ipv6/conf/cloudbr0/accept_ra ipv6/conf/cloudbr0/keep_addr_on_down",
    );
    s
}

/// Waits until the bridge's state stops moving by itself (carrier, link-local address),
/// so that a before/after comparison shows only what hvroute did.
fn wait_bridge_settled(lab: &Lab) {
    lab.wait_until(SETUP_BOUND, "cloudbr0 to have carrier and its link-local address", || {
        let link = ip(&lab.hv, &format!("-o link show dev {BRIDGE}"));
        let addr = ip(&lab.hv, &format!("-o -6 addr show dev {BRIDGE} scope link"));
        link.contains("LOWER_UP") && addr.contains("fe80::") && !addr.contains("tentative")
    });
}

/// Runs `hvroute daemon` expecting it to refuse: exit 2 within the bound. Returns stderr.
fn daemon_refuses(lab: &Lab) -> String {
    let cfg = lab.cfg.to_str().expect("utf-8 path");
    let mut bg = Background::spawn_in(&lab.hv, &[BIN, "--config", cfg, "daemon"]);
    let done = poll_until(SETUP_BOUND, || !bg.running());
    assert!(done, "`hvroute daemon` did not refuse within {SETUP_BOUND:?}: it took over the bridge");
    let o = bg.finish(Duration::ZERO);
    assert_eq!(o.status.code(), Some(2), "`hvroute daemon` must exit 2: {}", show(&o));
    stderr(&o)
}

/// Prevents: hvroute's default bridge name `cloudbr0` is also CloudStack's management
/// bridge; taking it over silently (re-MAC, re-address, routes onto it) cuts the host off
/// the network. A bridge with a port bound to no VM (a physical NIC) or a foreign address
/// is refused, naming the culprit, and left exactly as it was, unless `--force`.
#[test]
fn foreign_bridge_is_refused_without_force() {
    let mut lab = Lab::new("refuse");
    let hv = lab.hv.clone();
    let vm = lab.vm(1, Some(VM1_4), Some(VM1_6));
    lab.vm_add(&vm);
    // The admin's bridge, with its own MAC; the VM's port is bound to the VM (--port).
    ip(&hv, &format!("link add {BRIDGE} address 52:54:00:99:99:99 type bridge"));
    ip(&hv, &format!("link set {BRIDGE} up"));
    lab.attach(&vm);

    // A foreign address.
    ip(&hv, &format!("addr add 198.51.100.5/24 dev {BRIDGE}"));
    wait_bridge_settled(&lab);
    let before = hv_snapshot(&lab);
    let o = lab.hvroute(&["reconcile"]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "reconcile must refuse a bridge with a foreign address: {}",
        show(&o)
    );
    assert!(stderr(&o).contains("198.51.100.5/24"), "the refusal must name the address: {}", show(&o));
    let err = daemon_refuses(&lab);
    assert!(err.contains("198.51.100.5/24"), "the daemon's refusal must name the address: {err}");
    assert_eq!(hv_snapshot(&lab), before, "a refused reconcile or daemon changed the hypervisor");
    assert!(lab.routes().is_empty() && lab.neighs().is_empty(), "refused, yet routes or neighbours appeared");

    // A physical-style port: a veth on the bridge, bound to no VM.
    ip(&hv, &format!("addr del 198.51.100.5/24 dev {BRIDGE}"));
    ip(&hv, "link add eth9 type veth peer name eth9x");
    ip(&hv, &format!("link set eth9 master {BRIDGE}"));
    ip(&hv, "link set eth9x up");
    ip(&hv, "link set eth9 up");
    wait_bridge_settled(&lab);
    let before = hv_snapshot(&lab);
    let o = lab.hvroute(&["reconcile"]);
    assert_eq!(o.status.code(), Some(2), "reconcile must refuse a bridge with a foreign port: {}", show(&o));
    assert!(stderr(&o).contains("eth9"), "the refusal must name the port: {}", show(&o));
    assert!(!stderr(&o).contains(&vm.port), "the VM's bound port is not foreign: {}", show(&o));
    let err = daemon_refuses(&lab);
    assert!(err.contains("eth9"), "the daemon's refusal must name the port: {err}");
    assert_eq!(hv_snapshot(&lab), before, "a refused reconcile or daemon changed the hypervisor");
    assert!(lab.routes().is_empty() && lab.neighs().is_empty(), "refused, yet routes or neighbours appeared");

    // With --force it proceeds: one pass, then the daemon.
    lab.hvroute_ok(&["reconcile", "--force"]);
    assert!(lab.vm_routed(&vm), "reconcile --force did not route vm1\n{}", lab.diagnostics());
    assert!(lab.gateways_present(), "reconcile --force did not add the gateways\n{}", lab.diagnostics());
    lab.start_daemon(&["--force"]);
    lab.assert_daemon_running();
    lab.wait_ping(&lab.out, Some(OUT4), VM1_4);
    lab.wait_ping(&lab.out, Some(OUT6), VM1_6);
}

/// One foreign object and the `ip` command that shows it.
struct Foreign {
    what: &'static str,
    show: &'static str,
    expect: &'static str,
}

const FOREIGN: &[Foreign] = &[
    Foreign {
        what: "a static /32 on the bridge",
        show: "-4 route show 192.0.2.200/32",
        expect: "192.0.2.200 dev cloudbr0 proto static",
    },
    Foreign {
        what: "a static /128 on the bridge",
        show: "-6 route show 2001:db8:100::200/128",
        expect: "2001:db8:100::200 dev cloudbr0 proto static",
    },
    Foreign {
        what: "CloudStack's permanent ARP entry",
        show: "-4 neigh show 192.0.2.201 dev cloudbr0",
        expect: "192.0.2.201 lladdr 52:54:00:aa:bb:cc PERMANENT",
    },
    Foreign {
        what: "a permanent NDP entry of an admin",
        show: "-6 neigh show 2001:db8:100::201 dev cloudbr0",
        expect: "2001:db8:100::201 lladdr 52:54:00:aa:bb:cc PERMANENT",
    },
    Foreign {
        what: "a stale ARP entry",
        show: "-4 neigh show 192.0.2.203 dev cloudbr0",
        expect: "192.0.2.203 lladdr 52:54:00:aa:bb:dd STALE",
    },
    Foreign {
        what: "a stale NDP entry",
        show: "-6 neigh show 2001:db8:100::203 dev cloudbr0",
        expect: "2001:db8:100::203 lladdr 52:54:00:aa:bb:dd STALE",
    },
    Foreign {
        what: "a proto 44 /32 in table 100",
        show: "-4 route show table 100",
        expect: "192.0.2.202 dev cloudbr0 proto 44",
    },
    Foreign {
        what: "a proto 44 /128 in table 100",
        show: "-6 route show table 100",
        expect: "2001:db8:100::202 dev cloudbr0 proto 44",
    },
];

fn assert_foreign_intact(lab: &Lab, after: &str) {
    for f in FOREIGN {
        let got = ip(&lab.hv, f.show);
        // Compare word sequences, so that column spacing and trailing fields do not matter.
        let words = |s: &str| s.split_whitespace().map(str::to_string).collect::<Vec<_>>();
        let want = words(f.expect);
        let ok = got.lines().any(|l| {
            let w = words(l);
            let mut it = w.iter();
            want.iter().all(|x| it.any(|y| y == x))
        });
        assert!(
            ok,
            "{} is gone or changed after {after}: `ip {}` shows {got:?}\n{}",
            f.what,
            f.show,
            lab.diagnostics()
        );
    }
}

/// Prevents: hvroute deletes what it does not own. CloudStack's own script makes
/// permanent ARP entries without a protocol, admins add static routes, the kernel keeps
/// learnt neighbours, and policy routing puts routes into other tables (with any protocol
/// number: hvroute manages the main table only). Each must survive daemon passes, a
/// `vm add`, a `vm del` and a one-shot `reconcile`.
#[test]
fn foreign_objects_survive() {
    let mut lab = Lab::new("foreign");
    let hv = lab.hv.clone();
    let vm = lab.vm(1, Some(VM1_4), Some(VM1_6));
    lab.vm_add(&vm);
    lab.start_daemon(&[]);
    lab.attach(&vm);
    lab.wait_until(REPAIR_BOUND, "vm1's routes and neighbours", || lab.vm_routed(&vm));

    ip(&hv, &format!("route add 192.0.2.200/32 dev {BRIDGE} proto static"));
    ip(&hv, &format!("-6 route add 2001:db8:100::200/128 dev {BRIDGE} proto static"));
    ip(&hv, &format!("neigh replace 192.0.2.201 lladdr 52:54:00:aa:bb:cc dev {BRIDGE} nud permanent"));
    ip(
        &hv,
        &format!("-6 neigh replace 2001:db8:100::201 lladdr 52:54:00:aa:bb:cc dev {BRIDGE} nud permanent"),
    );
    ip(&hv, &format!("neigh replace 192.0.2.203 lladdr 52:54:00:aa:bb:dd dev {BRIDGE} nud stale"));
    ip(&hv, &format!("-6 neigh replace 2001:db8:100::203 lladdr 52:54:00:aa:bb:dd dev {BRIDGE} nud stale"));
    ip(&hv, &format!("route add 192.0.2.202/32 dev {BRIDGE} table 100 proto {PROTO}"));
    ip(&hv, &format!("-6 route add 2001:db8:100::202/128 dev {BRIDGE} table 100 proto {PROTO}"));
    assert_foreign_intact(&lab, "setting them up");

    // The additions themselves are kernel events; then one more full pass on request.
    lab.daemon_pass();
    assert_foreign_intact(&lab, "daemon passes");

    lab.hvroute_ok(&["vm", "add", "vm2", "--mac", "52:54:00:00:00:02", "--ip", VM2_4, "--ip", VM2_6]);
    lab.wait_until(REPAIR_BOUND, "vm2's routes", || {
        let r = lab.routes();
        has_route(&r, VM2_4) && has_route(&r, VM2_6)
    });
    assert_foreign_intact(&lab, "vm add");

    lab.hvroute_ok(&["vm", "del", "vm2"]);
    lab.wait_until(REPAIR_BOUND, "vm2's routes to go", || {
        let r = lab.routes();
        !has_route(&r, VM2_4) && !has_route(&r, VM2_6)
    });
    assert_foreign_intact(&lab, "vm del");

    lab.hvroute_ok(&["reconcile"]);
    assert_foreign_intact(&lab, "reconcile");
    lab.daemon_pass();
    assert_foreign_intact(&lab, "a daemon pass after reconcile");
    assert!(lab.vm_routed(&vm), "vm1 lost its routes or neighbours\n{}", lab.diagnostics());
}

/// Prevents: a VM stays cut off after someone (an admin, a script, NetworkManager, a link
/// flap) removes its route, its neighbour or the gateway, until the next periodic resync,
/// 30 s later. The repair must be event-driven; the resync here is an hour.
#[test]
fn drift_is_repaired_from_kernel_events() {
    let mut lab = Lab::new("drift");
    let hv = lab.hv.clone();
    let vm = lab.vm(1, Some(VM1_4), Some(VM1_6));
    lab.vm_add(&vm);
    lab.start_daemon(&[]);
    lab.attach(&vm);
    lab.wait_until(REPAIR_BOUND, "vm1's routes and neighbours", || lab.vm_routed(&vm));

    ip(&hv, &format!("-4 route del {VM1_4}/32 dev {BRIDGE}"));
    lab.wait_until(REPAIR_BOUND, "the deleted IPv4 route to come back", || has_route(&lab.routes(), VM1_4));
    ip(&hv, &format!("-6 route del {VM1_6}/128 dev {BRIDGE}"));
    lab.wait_until(REPAIR_BOUND, "the deleted IPv6 route to come back", || has_route(&lab.routes(), VM1_6));

    ip(&hv, &format!("-4 neigh del {VM1_4} dev {BRIDGE}"));
    lab.wait_until(REPAIR_BOUND, "the deleted ARP entry to come back", || {
        has_permanent_neigh(&lab.neighs(), VM1_4, &vm.mac)
    });
    ip(&hv, &format!("-6 neigh del {VM1_6} dev {BRIDGE}"));
    lab.wait_until(REPAIR_BOUND, "the deleted NDP entry to come back", || {
        has_permanent_neigh(&lab.neighs(), VM1_6, &vm.mac)
    });

    // Link down loses routes, neighbours (and on some kernels fe80::1), some without
    // delete events. A running daemon leaves the admin's down alone...
    ip(&hv, &format!("link set {BRIDGE} down"));
    lab.daemon_pass();
    assert!(!bridge_up(&hv), "the daemon brought the bridge up against the admin's `link set down`");
    // ...and restores everything on link up.
    ip(&hv, &format!("link set {BRIDGE} up"));
    lab.wait_until(REPAIR_BOUND, "all routes, neighbours and both gateways after link up", || {
        lab.vm_routed(&vm) && lab.gateways_present()
    });

    ip(&hv, &format!("-6 addr del {GW6}/64 dev {BRIDGE}"));
    lab.wait_until(REPAIR_BOUND, "fe80::1/64 to come back", || lab.gateways_present());
    ip(&hv, &format!("-4 addr del {GW4}/32 dev {BRIDGE}"));
    lab.wait_until(REPAIR_BOUND, "169.254.0.1/32 to come back", || lab.gateways_present());

    lab.assert_daemon_running();
    lab.wait_ping(&lab.out, Some(OUT4), VM1_4);
    lab.wait_ping(&lab.out, Some(OUT6), VM1_6);
    lab.wait_ping(&vm.ns, None, OUT6);
}

/// Continuous pings from the outside host to the VM, one per family: 80 packets, 50 ms apart.
fn start_pings(lab: &Lab) -> [Background; 2] {
    let p = |src: &str, dst: &str| {
        Background::spawn_in(
            &lab.out,
            &["ping", "-n", "-q", "-i", "0.05", "-c", "80", "-W", "1", "-I", src, dst],
        )
    };
    [p(OUT4, VM1_4), p(OUT6, VM1_6)]
}

fn assert_no_loss(pings: [Background; 2], during: &str) {
    for p in pings {
        let what = p.what.clone();
        let o = p.finish(SETUP_BOUND);
        let out = stdout(&o);
        assert!(
            o.status.success()
                && out.contains("80 packets transmitted, 80 received")
                && out.contains(" 0% packet loss"),
            "traffic was lost during {during}: {what}: {}",
            show(&o)
        );
    }
}

/// The first pass of a restarted daemon would change nothing: `reconcile --dry-run` (the
/// same pass, with take-over check and bring-up) plans no ops.
fn assert_restart_is_a_no_op(lab: &Lab) {
    let json = lab.hvroute_ok(&["reconcile", "--dry-run", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&json).expect("reconcile --json prints JSON");
    let ops = v["plan"]["ops"].as_array().map_or(usize::MAX, Vec::len);
    assert_eq!(ops, 0, "a restarted daemon would change the kernel: {json}");
}

/// Prevents: upgrading or restarting hvroute (systemctl restart, an OOM kill, a crash)
/// interrupts VM traffic: stopping must leave the kernel state in place, a restart must
/// not flush and re-add, and a daemon killed with SIGKILL must start again despite the
/// stale socket file it left behind.
#[test]
fn daemon_restart_keeps_traffic_flowing() {
    let mut lab = Lab::new("restart");
    let vm = lab.vm(1, Some(VM1_4), Some(VM1_6));
    lab.vm_add(&vm);
    lab.start_daemon(&[]);
    lab.attach(&vm);
    lab.wait_until(REPAIR_BOUND, "vm1's routes and neighbours", || lab.vm_routed(&vm));
    lab.wait_ping(&lab.out, Some(OUT4), VM1_4);
    lab.wait_ping(&lab.out, Some(OUT6), VM1_6);

    for (signal, name) in [(libc::SIGTERM, "SIGTERM"), (libc::SIGKILL, "SIGKILL")] {
        let mut pings = start_pings(&lab);
        let st = lab.stop_daemon(signal);
        if signal == libc::SIGTERM {
            assert!(st.success(), "the daemon must exit 0 on SIGTERM, not {st}\n{}", lab.diagnostics());
        } else {
            assert!(
                lab.socket.exists(),
                "after SIGKILL the socket file should be left behind (test premise)"
            );
        }
        assert!(
            lab.vm_routed(&vm) && lab.gateways_present() && bridge_up(&lab.hv),
            "stopping the daemon with {name} removed kernel state\n{}",
            lab.diagnostics()
        );
        assert_restart_is_a_no_op(&lab);
        lab.start_daemon(&[]);
        assert!(
            pings.iter_mut().all(|p| p.running()),
            "the restart after {name} took longer than the 4 s ping window, so the test proves nothing"
        );
        assert!(lab.vm_routed(&vm), "the restarted daemon lost vm1's state\n{}", lab.diagnostics());
        assert_no_loss(pings, &format!("a daemon restart after {name}"));
    }
    lab.assert_daemon_running();
}

/// The daemon's log lines under `--log-format json`: every line an object.
fn json_log(lab: &Lab) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(&lab.log).expect("daemon log");
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {l:?}")))
        .collect()
}

fn lines_saying(log: &[serde_json::Value], what: &str) -> usize {
    log.iter().filter(|v| v.to_string().contains(what)).count()
}

/// Prevents: a journal flooded by the daemon. A hypervisor's log must say each change that
/// matters once, in a form a collector parses (`--log-format json`): a VM routed is a
/// line, a pass that changes nothing is none, and a problem that lasts (here a state file
/// that does not parse) is one line when it appears and one when it clears, however many
/// passes retry it.
#[test]
fn daemon_logs_json_one_line_per_change_and_never_floods() {
    let mut lab = Lab::new("logs");
    lab.start_daemon(&["--log-format", "json"]);
    let vm = lab.vm(1, Some(VM1_4), Some(VM1_6));
    lab.attach(&vm);
    lab.vm_add(&vm);
    lab.wait_until(REPAIR_BOUND, "vm1 routed", || lab.vm_routed(&vm));
    lab.daemon_pass();
    let log = json_log(&lab);
    assert!(log.iter().all(|v| v["level"].is_string() && v["timestamp"].is_string()), "{log:?}");
    assert!(
        lines_saying(&log, "applied quick additions") + lines_saying(&log, "applied plan") >= 1,
        "vm1's routes are logged as a change: {log:#?}"
    );

    // Nothing changes: twenty passes, not one line.
    let before = json_log(&lab).len();
    for _ in 0..20 {
        lab.daemon_pass();
    }
    let log = json_log(&lab);
    assert_eq!(log.len(), before, "passes that change nothing logged: {:#?}", &log[before..]);

    // A lasting problem: one line when it appears, none while it stays, one when it clears.
    let broken = lab.dir.path().join("state").join("broken.json");
    std::fs::write(&broken, b"{\"version\":1,").expect("broken state file");
    let socket = lab.socket.clone();
    wait_until(REPAIR_BOUND, "the broken state file to be reported", || {
        control_reconcile(&socket, REPAIR_BOUND);
        lines_saying(&json_log(&lab), "broken.json") >= 1
    });
    for _ in 0..20 {
        lab.daemon_pass();
    }
    let log = json_log(&lab);
    assert_eq!(lines_saying(&log, "broken.json"), 1, "the problem is logged once: {log:#?}");
    assert_eq!(lines_saying(&log, "\"level\":\"WARN\""), 1, "{log:#?}");
    std::fs::remove_file(&broken).expect("remove the broken file");
    wait_until(REPAIR_BOUND, "the problem to clear", || {
        control_reconcile(&socket, REPAIR_BOUND);
        lines_saying(&json_log(&lab), "cleared") == 1
    });
    let log = json_log(&lab);
    assert_eq!(lines_saying(&log, "broken.json"), 2, "appeared and cleared: {log:#?}");
    assert!(lab.vm_routed(&vm), "vm1's routes stay throughout\n{}", lab.diagnostics());
}
