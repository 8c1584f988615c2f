//! Acceptance tests of issue 3 with real FRR (design.md §1, §3, §4): a spine running FRR,
//! hypervisors each running FRR and the real `hvroute daemon`, VMs and an outside host, in
//! network namespaces each test makes for itself (see `common/fabric.rs` for the picture).
//! Every hypervisor's FRR starts with an empty frr.conf: all it knows, hvroute told it.
//!
//! Needs root and FRR 8.x. Run: `cargo test --test netns_frr -- --test-threads=2`.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::fabric::*;
use common::*;
use serde_json::Value;

/// The issue's bound for the spine to hold every prefix again after an FRR restart,
/// counted from the moment the restarted FRR first answers vtysh.
const RESTART_BOUND: Duration = Duration::from_secs(5);
/// Bound for the spine to lose a dead hypervisor's routes: the socket closes at once, the
/// hold timer (9 s) is the fallback.
const WITHDRAW_BOUND: Duration = Duration::from_secs(15);

/// Polls F until BOUND has passed since START (not since now); panics naming WHAT.
fn wait_since(f: &Fabric, start: Instant, bound: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let left = bound.saturating_sub(start.elapsed());
    if !poll_until(left, &mut cond) && !cond() {
        panic!("timed out after {bound:?} waiting for {what}\n{}", f.diagnostics());
    }
}

/// Routes an admin adds on a hypervisor by hand, in and out of the pools, with an explicit
/// protocol and with `ip route add`'s default (boot).
fn add_foreign_routes(hv: &Hv) {
    ip(&hv.ns, &format!("route add {FOREIGN4_IN_POOL}/32 dev {BRIDGE} proto static"));
    ip(&hv.ns, &format!("route add {FOREIGN4_OUT_OF_POOL}/32 dev {BRIDGE}"));
    ip(&hv.ns, &format!("-6 route add {FOREIGN6_IN_POOL}/128 dev {BRIDGE} proto static"));
    ip(&hv.ns, &format!("-6 route add {FOREIGN6_OUT_OF_POOL}/128 dev {BRIDGE}"));
}

/// Prefixes that exist on or around a hypervisor and must never reach the spine.
fn never_advertised(hv: &Hv) -> BTreeSet<String> {
    let n = hv.n;
    set(&[
        "169.254.0.1/32",
        "fe80::1/128",
        "fe80::/64",
        FOREIGN4_IN_POOL,
        FOREIGN4_OUT_OF_POOL,
        FOREIGN6_IN_POOL,
        FOREIGN6_OUT_OF_POOL,
        &format!("10.255.{n}.0/31"),
        &format!("10.255.{n}.1/32"),
        &format!("2001:db8:fffe:{n}::/64"),
        &format!("2001:db8:fffe:{n}::2/128"),
        POOL4,
        POOL6,
    ])
}

/// The exactness check shared by the dual-stack and single-stack tests.
fn exactness(tag: &str, specs: &[HvSpec]) {
    let mut f = Fabric::new(tag, specs);
    for hv in &mut f.hvs {
        hv.add_vms(2);
    }
    f.start_daemons();
    // The admin's own routes arrive once the bridge exists; hvroute must ignore them.
    for hv in &f.hvs {
        add_foreign_routes(hv);
    }
    for hv in &mut f.hvs {
        hv.pass_and_frr_sync();
    }
    let took = f.wait_spine_exact(FABRIC_BOUND, "the spine to hold exactly each hypervisor's VM prefixes");
    eprintln!("{tag}: spine exact {took:?} after the last pass");

    // Level-triggered: another pass (which re-reads the kernel, foreign routes included)
    // changes nothing.
    for hv in &mut f.hvs {
        hv.pass_and_frr_sync();
    }
    f.assert_spine_exact("after another pass on every hypervisor");

    let learned = f.spine_rib_learned();
    let fib: BTreeSet<String> = f.spine_fib().into_keys().collect();
    for hv in &f.hvs {
        for p in never_advertised(hv) {
            assert!(!learned.contains(&p), "the spine's BGP RIB holds {p} (from around hv{})", hv.n);
            assert!(!fib.contains(&p), "the spine's FIB holds {p} (from around hv{})", hv.n);
        }
        // hvroute's own lines in FRR are exactly the VM prefixes, each with the VM map.
        let lines = hv.network_lines();
        let keys: BTreeSet<String> = lines.keys().cloned().collect();
        assert_eq!(keys, hv.expected(), "hv{}'s `network` lines", hv.n);
        for (p, rest) in &lines {
            assert_eq!(rest, "route-map HVR-VM", "hv{}: `network {p}` has no per-VM route-map", hv.n);
        }
        // Unnumbered: the spine installs IPv4 over IPv6 next hops (RFC 8950), which on
        // FRR 8.4 and kernel 6.x is `via inet6 fe80::...`.
        if hv.spec.peering == Peering::Unnumbered && hv.spec.v4 {
            let mut checked = 0;
            for (p, r) in f.spine_fib() {
                if r["dev"].as_str() == Some(hv.spine_if.as_str()) && !p.contains(':') {
                    assert_eq!(r["via"]["family"].as_str(), Some("inet6"), "spine route {p}: {r}");
                    let host = r["via"]["host"].as_str().unwrap_or("");
                    assert!(host.starts_with("fe80:"), "spine route {p} is not via a link-local: {r}");
                    checked += 1;
                }
            }
            assert_eq!(checked, hv.vms.len(), "IPv4 routes via hv{} on the spine", hv.n);
        }
    }
    // Traffic follows: the outside host reaches every VM over the spine.
    for hv in &f.hvs {
        let src4 = Some(OUT4);
        let src6 = Some(OUT6);
        for vm in &hv.vms {
            if let Some(a) = &vm.ip4 {
                wait_ping(&f, &f.out, src4, a);
            }
            if let Some(a) = &vm.ip6 {
                wait_ping(&f, &f.out, src6, a);
            }
        }
    }
}

fn wait_ping(f: &Fabric, ns: &str, src: Option<&str>, dst: &str) {
    if !poll_until(SETUP_BOUND, || match src {
        Some(s) => ping_from_ok(ns, s, dst),
        None => ping_ok(ns, dst),
    }) {
        panic!("no answer to ping {dst} from {ns} within {SETUP_BOUND:?}\n{}", f.diagnostics());
    }
}

/// Prevents: the fabric learning more than the VMs from a hypervisor (its link nets,
/// 169.254.0.1/32, an admin's static /32 on cloudbr0, inside or outside the pools), which
/// hijacks traffic for addresses that live elsewhere or trips the spine's max-prefix; or
/// learning less (a VM missing). Covers numbered and unnumbered peering with dual-stack
/// VMs, and the spine's `via inet6 fe80::` routes for IPv4 over unnumbered sessions.
#[test]
fn spine_holds_exactly_the_vm_prefixes_dual_stack() {
    exactness("exd", &[HvSpec::new(Peering::Unnumbered), HvSpec::new(Peering::Numbered)]);
}

/// Prevents: the same leaks or losses on single-stack hosts, where one address family has
/// no pool at all (an IPv6-only host must still refuse to leak IPv4 routes, an IPv4-only
/// host IPv6 routes), over both peerings: IPv4 only over an unnumbered (IPv6 link-local)
/// session, IPv6 only over a numbered IPv4 session, and the other two combinations.
#[test]
fn spine_holds_exactly_the_vm_prefixes_single_stack() {
    exactness(
        "exs",
        &[
            HvSpec::new(Peering::Unnumbered).v4_only(),
            HvSpec::new(Peering::Numbered).v6_only(),
            HvSpec::new(Peering::Unnumbered).v6_only(),
            HvSpec::new(Peering::Numbered).v4_only(),
        ],
    );
}

/// Prefixes the spine advertises to neighbour PEER (both families).
fn spine_advertised_to(f: &Fabric, peer: &str) -> BTreeSet<String> {
    let mut s = BTreeSet::new();
    for afi in ["ipv4", "ipv6"] {
        let v =
            f.spine_frr().json(&format!("show bgp {afi} unicast neighbors {peer} advertised-routes json"));
        if let Some(m) = v.get("advertisedRoutes").and_then(Value::as_object) {
            s.extend(m.keys().map(|k| norm_prefix(k)));
        }
    }
    s
}

/// Prevents: a hypervisor taking more than the default routes from upstream (another
/// hypervisor's VM /32s, the fabric's own prefixes), which turns it into a transit path
/// or pulls VM traffic the wrong way; or losing the default routes, which cuts every VM
/// off. The spine really offers those extra prefixes, so only the hypervisor's inbound
/// policy can keep them out.
#[test]
fn hypervisor_takes_only_the_default_routes() {
    let mut f = Fabric::new("rib", &[HvSpec::new(Peering::Unnumbered), HvSpec::new(Peering::Numbered)]);
    for hv in &mut f.hvs {
        hv.add_vms(1);
    }
    f.start_daemons();
    f.wait_spine_exact(FABRIC_BOUND, "the spine to hold both hypervisors' VM prefixes");

    let defaults = set(&[DEFAULT4, DEFAULT6]);
    for hv in &f.hvs {
        // The spine's own updates to hv may trail its RIB: wait for the offer first.
        let other = f.hvs.iter().find(|o| o.n != hv.n).expect("two hypervisors");
        let must_offer: BTreeSet<String> =
            set(&[EXTRA4, EXTRA6]).into_iter().chain(other.expected()).collect();
        wait_since(
            &f,
            Instant::now(),
            REPAIR_BOUND,
            &format!("the spine to offer hv{} everything", hv.n),
            || spine_advertised_to(&f, &hv.spine_peer).is_superset(&must_offer),
        );
        wait_since(
            &f,
            Instant::now(),
            REPAIR_BOUND,
            &format!("hv{}'s RIB to hold both defaults", hv.n),
            || hv.rib_learned() == defaults,
        );
        assert_eq!(hv.rib_learned(), defaults, "what hv{}'s BGP RIB learned from the spine", hv.n);
        let fib = fib_bgp(&hv.ns);
        let keys: BTreeSet<String> = fib.keys().cloned().collect();
        assert_eq!(keys, defaults, "hv{}'s bgp routes in the kernel", hv.n);
        if hv.spec.peering == Peering::Unnumbered {
            let r = &fib[DEFAULT4];
            assert_eq!(r["via"]["family"].as_str(), Some("inet6"), "hv{}'s IPv4 default: {r}", hv.n);
        }
    }
    // The defaults carry the VMs' traffic out, and the spine carries it between hosts.
    let (vm1, vm2) = (f.hv(1).vms[0].clone(), f.hv(2).vms[0].clone());
    for (vm, other) in [(&vm1, &vm2), (&vm2, &vm1)] {
        wait_ping(&f, &vm.ns, None, OUT4);
        wait_ping(&f, &vm.ns, None, OUT6);
        wait_ping(&f, &vm.ns, None, other.ip4.as_deref().expect("dual stack"));
        wait_ping(&f, &vm.ns, None, other.ip6.as_deref().expect("dual stack"));
    }
}

/// Prevents: a VM started or stopped on a busy host reaching the fabric late (traffic
/// black-holed after a start, or still attracted after a stop) because FRR is told only at
/// the next resync. The behaviour is "within 1 s"; 3 s bounds it here, on a loaded test
/// machine (the latency itself is benchmarked).
#[test]
fn vm_add_and_del_reach_the_spine_at_once() {
    let mut f = Fabric::new("add", &[HvSpec::new(Peering::Unnumbered)]);
    f.hv_mut(1).add_vms(10);
    f.start_daemons();
    f.wait_spine_exact(FABRIC_BOUND, "the spine to hold the 10 VMs' prefixes");
    let pid = f.hv(1).daemon_pid();

    let vm = f.hv_mut(1).make_vm(11);
    let t = Instant::now();
    f.hv_mut(1).register(&vm);
    let cli = t.elapsed();
    // The spine's FIB first (cheap to poll, so the time is close), then its RIB.
    wait_since(&f, t, REPAIR_BOUND, "vm11's prefixes in the spine's FIB", || f.spine_fib_exact());
    let took = t.elapsed();
    wait_since(&f, t, REPAIR_BOUND, "vm11's prefixes in the spine's BGP RIB", || f.spine_rib_exact());
    let last = f.hv_mut(1).status()["frr"]["last"].clone();
    let sync_ms = last["ms"].as_f64().unwrap_or(f64::NAN);
    eprintln!("vm add → spine FIB: {took:?} (CLI returned after {cli:?}; FRR sync took {sync_ms:.0} ms)");
    // One VM's lines go straight to bgpd's vty socket, not through a vtysh process.
    assert_eq!(last["lines_via"], "vty", "the last FRR sync: {last}");
    wait_ping(&f, &f.out, Some(OUT4), vm.ip4.as_deref().expect("dual stack"));
    wait_ping(&f, &f.out, Some(OUT6), vm.ip6.as_deref().expect("dual stack"));

    let t = Instant::now();
    f.hv_mut(1).del_vm("vm11");
    wait_since(&f, t, REPAIR_BOUND, "vm11's prefixes to leave the spine's FIB", || f.spine_fib_exact());
    eprintln!("vm del → withdrawn from the spine's FIB: {:?}", t.elapsed());
    wait_since(&f, t, REPAIR_BOUND, "vm11's prefixes to leave the spine's BGP RIB", || f.spine_rib_exact());
    let gone = set(&vm.addrs());
    assert!(f.spine_rib_learned().is_disjoint(&gone), "vm11 is still in the spine's RIB");
    f.hv_mut(1).assert_daemon_running();
    assert_eq!(f.hv(1).daemon_pid(), pid, "the daemon was restarted");
}

/// Kills hypervisor N's FRR (zebra and bgpd) and waits until the spine has lost every
/// prefix it had from it, so that what comes back afterwards is really new.
fn kill_frr_and_wait_withdrawn(f: &Fabric, n: u8) {
    let hv = f.hv(n);
    hv.frr.stop(libc::SIGKILL);
    let t = Instant::now();
    wait_since(f, t, WITHDRAW_BOUND, &format!("the spine to drop hv{n}'s prefixes"), || {
        f.spine_rib_from(hv.asn).is_empty() && f.spine_fib_via(n).is_empty()
    });
}

/// The issue's acceptance after an FRR restart that first answered vtysh at ANSWERED: the
/// spine holds every prefix again (BGP RIB and FIB, exactly) within [`RESTART_BOUND`] of
/// that moment. Prints when the session was Established and when the spine was complete,
/// both counted from ANSWERED.
fn wait_back_after_restart(f: &Fabric, n: u8, answered: Instant, what: &str) {
    let hv = f.hv(n);
    let sf = f.spine_frr();
    let mut established = None;
    wait_since(
        f,
        answered,
        RESTART_BOUND,
        &format!("every prefix of hv{n} back on the spine ({what})"),
        || {
            if established.is_none() && sf.peer_state(&hv.spine_peer).as_deref() == Some("Established") {
                established = Some(answered.elapsed());
            }
            established.is_some() && f.spine_exact()
        },
    );
    let complete = answered.elapsed();
    let established = established.expect("the spine is complete only with the session up");
    eprintln!(
        "{what}: after FRR answered, session Established {established:?}, spine complete {complete:?} \
         (bound {RESTART_BOUND:?})"
    );
}

/// Prevents: an FRR restart that loses hvroute's config (a new pathspace, a lost or
/// replaced frr.conf, a package upgrade) leaving the host's VMs unadvertised until someone
/// restarts hvroute. FRR comes back with an EMPTY config; hvroute, which keeps running,
/// must notice and push its base config and every VM prefix again, and save them.
///
/// Bounds, both counted from the moment the restarted FRR first answers vtysh: hvroute
/// must have re-asserted every line within 3 s (it checks bgpd's pid every second), and
/// the spine must hold every prefix again within 5 s (the issue's acceptance). The second
/// holds only because hvroute's base config sets `bgp route-map delay-timer 1`: with
/// FRR's 5 s, the outbound policy named before its route-maps were pushed was resolved
/// only when that timer fired, and the spine was complete after about 5.3 s (measured).
#[test]
fn frr_restart_with_lost_config_is_reasserted() {
    let mut f = Fabric::new("rse", &[HvSpec::new(Peering::Unnumbered)]);
    f.hv_mut(1).add_vms(3);
    f.start_daemons();
    f.wait_spine_exact(FABRIC_BOUND, "the spine to hold the VMs' prefixes");
    let pid = f.hv(1).daemon_pid();
    let before = f.hv(1).frr.running_config();

    kill_frr_and_wait_withdrawn(&f, 1);
    let hv = f.hv(1);
    std::fs::remove_file(hv.frr.conf_file()).expect("remove frr.conf");
    let answered = hv.frr.start();

    let want = hv.expected();
    wait_since(&f, answered, REPAIR_BOUND, "hvroute to push every VM line into the fresh FRR", || {
        let rc = hv.frr.running_config();
        let keys: BTreeSet<String> = network_lines(&rc).into_keys().collect();
        keys == want && rc.contains("neighbor HVR-UPLINK peer-group") && rc.contains("route-map HVR-OUT")
    });
    eprintln!("hvroute re-asserted its config {:?} after FRR answered", answered.elapsed());
    wait_back_after_restart(&f, 1, answered, "restart with an empty config");

    // The same config as before the restart, and saved, so that a plain restart comes back.
    assert_eq!(
        network_lines(&f.hv(1).frr.running_config()),
        network_lines(&before),
        "the VM lines after the restart"
    );
    let saved =
        std::fs::read_to_string(f.hv(1).frr.conf_file()).expect("hvroute's write memory made frr.conf");
    let saved: BTreeSet<String> = network_lines(&saved).into_keys().collect();
    assert_eq!(saved, want, "the `network` lines saved in frr.conf");
    f.hv_mut(1).assert_daemon_running();
    assert_eq!(f.hv(1).daemon_pid(), pid, "hvroute was restarted");
}

/// Prevents: a plain FRR restart (crash, `systemctl restart frr`) coming back without the
/// VM prefixes because hvroute pushed them only to the running config and never saved
/// them (the ovn-bgp-agent problem), or hvroute's reaction to the restart disturbing a
/// config that FRR reloaded correctly by itself; and coming back too slowly: the spine
/// must hold every prefix within 5 s of FRR answering (the issue's acceptance). While
/// `vtysh -b` loads frr.conf, bgpd keeps the peers down until the route-map delay timer
/// has run out; the saved `bgp route-map delay-timer 1` makes that 1 s instead of 5 s.
#[test]
fn frr_plain_restart_comes_back_complete() {
    let mut f = Fabric::new("rsp", &[HvSpec::new(Peering::Numbered)]);
    f.hv_mut(1).add_vms(3);
    f.start_daemons();
    f.wait_spine_exact(FABRIC_BOUND, "the spine to hold the VMs' prefixes");
    let pid = f.hv(1).daemon_pid();
    let want = f.hv(1).expected();
    let saved = std::fs::read_to_string(f.hv(1).frr.conf_file()).expect("frr.conf");
    let keys: BTreeSet<String> = network_lines(&saved).into_keys().collect();
    assert_eq!(keys, want, "frr.conf (saved by hvroute's `write memory`) before the restart");

    kill_frr_and_wait_withdrawn(&f, 1);
    let hv = f.hv(1);
    let answered = hv.frr.start();
    hv.frr.boot();
    wait_back_after_restart(&f, 1, answered, "plain restart with frr.conf reloaded");
    let keys: BTreeSet<String> = f.hv(1).network_lines().into_keys().collect();
    assert_eq!(keys, want, "the VM lines after the restart");
    f.hv_mut(1).pass_and_frr_sync();
    f.assert_spine_exact("after the restart and a daemon pass");
    f.hv_mut(1).assert_daemon_running();
    assert_eq!(f.hv(1).daemon_pid(), pid, "hvroute was restarted");
}

/// Prevents: a hypervisor whose frr.conf predates hvroute's `bgp route-map delay-timer 1`
/// (or was written by hand without it) keeping bgpd's default 5 s for good, so that every
/// plain FRR restart misses the 5 s acceptance (the peers stay down until that timer has
/// run out). When FRR runs the default, the daemon sets the line and saves it; an admin's
/// own value is left alone.
#[test]
fn route_map_delay_timer_is_set_and_saved_unless_the_admin_chose_one() {
    const LINE: &str = "bgp route-map delay-timer 1";
    let has = |text: &str, line: &str| text.lines().any(|l| l == line);
    let mut f = Fabric::new("rmt", &[HvSpec::new(Peering::Numbered)]);
    f.hv_mut(1).add_vms(1);
    f.start_daemons();
    f.wait_spine_exact(FABRIC_BOUND, "the spine to hold the VM's prefixes");
    let hv = f.hv(1);
    assert!(has(&hv.frr.running_config(), LINE), "hvroute's base config lacks `{LINE}`");

    // FRR back at its default, as an older frr.conf leaves it; the next read of FRR
    // (a resync here, the same as after an FRR restart) sets it again and saves it.
    hv.frr.configure(&["no bgp route-map delay-timer"]);
    assert!(!has(&hv.frr.running_config(), LINE));
    let t = Instant::now();
    assert!(control_request(&hv.socket, r#"{"op":"resync"}"#, SETUP_BOUND).is_some());
    wait_since(&f, t, REPAIR_BOUND, &format!("`{LINE}` back in FRR and in frr.conf"), || {
        let saved = std::fs::read_to_string(hv.frr.conf_file()).unwrap_or_default();
        has(&hv.frr.running_config(), LINE) && has(&saved, LINE)
    });

    // An admin's own value stays, through a resync.
    hv.frr.configure(&["bgp route-map delay-timer 3"]);
    let (syncs0, _) = f.hv_mut(1).frr_status();
    assert!(control_request(&f.hv(1).socket, r#"{"op":"resync"}"#, SETUP_BOUND).is_some());
    let ok = poll_until(SETUP_BOUND, || {
        let (syncs, in_sync) = f.hv_mut(1).frr_status();
        syncs > syncs0 && in_sync
    });
    assert!(ok, "no FRR sync after the resync request\n{}", f.diagnostics());
    let rc = f.hv(1).frr.running_config();
    assert!(has(&rc, "bgp route-map delay-timer 3"), "the admin's delay-timer is gone:\n{rc}");
    f.assert_spine_exact("after the resyncs");
}

const ADMIN_PL: &str = "ip prefix-list ADMIN-KEEP seq 5 permit 10.255.99.0/24";
const PASSWORD: &str = "hvt-s3cret";

fn admin_lines_present(text: &str, peer: &str) -> bool {
    let pw = format!("neighbor {peer} password {PASSWORD}");
    text.lines().any(|l| l.trim() == ADMIN_PL) && text.lines().any(|l| l.trim() == pw)
}

/// Prevents: hvroute wiping an admin's own FRR config (another prefix-list, a session
/// password) on its passes or when it re-asserts its config, which silently drops the
/// session (a password) or changes policy; and those lines being lost on an FRR restart.
/// The spine requires the password, so the session itself proves it is in force.
#[test]
fn admin_lines_survive_passes_and_frr_restart() {
    let mut f = Fabric::new("adm", &[HvSpec::new(Peering::Numbered).spine_password(PASSWORD)]);
    f.hv_mut(1).add_vms(2);
    f.start_daemons();
    let peer = f.hv(1).peer.clone();
    let asn = f.hv(1).asn;
    let hv = f.hv(1);
    wait_since(&f, Instant::now(), REPAIR_BOUND, "hvroute's base config in FRR", || {
        hv.frr.running_config().contains(&format!("neighbor {peer} peer-group HVR-UPLINK"))
    });
    // The admin's own lines, typed into vtysh (not saved by the admin).
    hv.frr.configure(&[
        ADMIN_PL,
        &format!("router bgp {asn}"),
        &format!("neighbor {peer} password {PASSWORD}"),
    ]);
    f.wait_spine_exact(FABRIC_BOUND, "the password-protected session to carry the VMs' prefixes");

    let (syncs0, _) = f.hv_mut(1).frr_status();
    let vm3 = f.hv_mut(1).make_vm(3);
    let t = Instant::now();
    for i in 0..100 {
        // Every tenth pass follows a VM change, so that FRR is really written to (and
        // saved) ten times in between.
        if i % 10 == 5 {
            if f.hv(1).vms.iter().any(|v| v.name == vm3.name) {
                f.hv_mut(1).del_vm(&vm3.name);
            } else {
                f.hv_mut(1).register(&vm3);
            }
            // Wait for FRR to take this change: changes that arrive while a sync is still
            // running are (rightly) merged into the next sync.
            f.hv_mut(1).pass_and_frr_sync();
        } else {
            f.hv_mut(1).pass();
        }
    }
    f.hv_mut(1).pass_and_frr_sync();
    let (syncs1, _) = f.hv_mut(1).frr_status();
    eprintln!("100 passes and 10 VM changes took {:?}; FRR syncs {syncs0} → {syncs1}", t.elapsed());
    assert!(syncs1 >= syncs0 + 10, "only {} FRR syncs during 10 VM changes", syncs1 - syncs0);
    let rc = f.hv(1).frr.running_config();
    assert!(admin_lines_present(&rc, &peer), "the admin's lines are gone after 100 passes:\n{rc}");
    let saved = std::fs::read_to_string(f.hv(1).frr.conf_file()).expect("frr.conf");
    assert!(admin_lines_present(&saved, &peer), "frr.conf lost the admin's lines:\n{saved}");
    f.wait_spine_exact(REPAIR_BOUND, "the spine to hold the VMs' prefixes after the passes");

    kill_frr_and_wait_withdrawn(&f, 1);
    let answered = f.hv(1).frr.start();
    f.hv(1).frr.boot();
    wait_back_after_restart(&f, 1, answered, "plain restart with an admin's password and prefix-list");
    f.hv_mut(1).pass_and_frr_sync();
    let rc = f.hv(1).frr.running_config();
    assert!(admin_lines_present(&rc, &peer), "the admin's lines are gone after the FRR restart:\n{rc}");
    f.assert_spine_exact("after the FRR restart and a daemon pass");
}

/// Prevents: a `network` line removed by hand in vtysh (a mistake, a half-applied
/// frr-reload) leaving a VM unadvertised for good: the periodic resync re-reads FRR and
/// puts the line back within one interval (2 s here).
#[test]
fn hand_removed_network_line_comes_back_within_one_resync() {
    let resync = 2;
    let mut f = Fabric::new("drf", &[HvSpec::new(Peering::Unnumbered).resync(resync)]);
    f.hv_mut(1).add_vms(2);
    f.start_daemons();
    f.wait_spine_exact(FABRIC_BOUND, "the spine to hold the VMs' prefixes");
    let hv = f.hv(1);
    let vm = hv.vms[0].clone();
    let (a4, a6) = (vm.ip4.clone().expect("dual stack"), vm.ip6.clone().expect("dual stack"));
    let t = Instant::now();
    hv.frr.configure(&[
        &format!("router bgp {}", hv.asn),
        "address-family ipv4 unicast",
        &format!("no network {a4}/32"),
        "exit-address-family",
        "address-family ipv6 unicast",
        &format!("no network {a6}/128"),
        "exit-address-family",
    ]);
    let bound = Duration::from_secs(resync) + REPAIR_BOUND;
    let want = hv.expected();
    wait_since(&f, t, bound, "the removed lines back in FRR and on the spine", || {
        let keys: BTreeSet<String> = hv.network_lines().into_keys().collect();
        keys == want && f.spine_exact()
    });
    eprintln!("hand-removed lines back on the spine after {:?} (resync every {resync} s)", t.elapsed());
}

/// Prevents: an operator who repaired or broke FRR by hand having to wait for the periodic
/// resync: `{"op":"resync"}` on the control socket makes the daemon read FRR's running
/// config again at once (the periodic resync is an hour here).
#[test]
fn resync_request_rereads_frr_at_once() {
    let mut f = Fabric::new("rsq", &[HvSpec::new(Peering::Numbered)]);
    f.hv_mut(1).add_vms(2);
    f.start_daemons();
    f.wait_spine_exact(FABRIC_BOUND, "the spine to hold the VMs' prefixes");
    let hv = f.hv(1);
    let a4 = hv.vms[0].ip4.clone().expect("dual stack");
    hv.frr.configure(&[
        &format!("router bgp {}", hv.asn),
        "address-family ipv4 unicast",
        &format!("no network {a4}/32"),
        "exit-address-family",
    ]);
    assert!(!hv.network_lines().contains_key(&format!("{a4}/32")));
    let t = Instant::now();
    let answer = control_request(&hv.socket, r#"{"op":"resync"}"#, SETUP_BOUND);
    assert!(answer.is_some(), "the daemon did not answer a resync request");
    let want = hv.expected();
    wait_since(&f, t, REPAIR_BOUND, "the removed line back in FRR and on the spine", || {
        let keys: BTreeSet<String> = hv.network_lines().into_keys().collect();
        keys == want && f.spine_exact()
    });
}

/// Prevents: unnumbered hypervisors with no routable address of their own, so that ICMP
/// errors they originate (Packet Too Big, TTL exceeded) are dropped and IPv6 path-MTU
/// discovery breaks. The loopbacks must be advertised (the only non-VM prefixes, checked
/// by the exact-set comparison) and answer from the fabric.
/// hvroute puts them on `lo` itself: without them there, BGP's import-check would keep
/// the loopback lines silently unadvertised.
#[test]
fn loopbacks_are_advertised_and_answer_pings() {
    let mut f = Fabric::new(
        "lo",
        &[HvSpec::new(Peering::Unnumbered).loopbacks(), HvSpec::new(Peering::Numbered).loopbacks()],
    );
    for hv in &mut f.hvs {
        hv.add_vms(1);
    }
    f.start_daemons();
    f.wait_spine_exact(FABRIC_BOUND, "the spine to hold the VM prefixes and the loopbacks");
    for hv in &f.hvs {
        let on_lo = ip(&hv.ns, "addr show dev lo");
        for lo in [hv.loopback4(), hv.loopback6()] {
            assert!(
                on_lo.contains(&format!("{lo}/")),
                "hvroute did not put {lo} on hv{}'s lo:\n{on_lo}",
                hv.n
            );
        }
        let lines = hv.network_lines();
        for lo in [hv.loopback4(), hv.loopback6()] {
            let p = norm_prefix(&lo);
            assert_eq!(lines.get(&p).map(String::as_str), Some(""), "hv{}'s `network {p}` line", hv.n);
            wait_ping(&f, &f.spine, None, &lo);
            wait_ping(&f, &f.out, None, &lo);
        }
    }
}

/// Prevents: a VM name, address, MAC or port that carries a newline or extra words being
/// pasted into a vtysh batch (`router bgp 1`, `no router bgp`, a foreign route-map), which
/// would let whoever controls a VM's metadata rewrite the host's BGP config. Validation
/// must refuse them at the CLI (exit 2) and in hand-written state files, and FRR's running
/// config must not change at all.
#[test]
fn vtysh_injection_is_refused() {
    let mut f = Fabric::new("inj", &[HvSpec::new(Peering::Unnumbered)]);
    f.hv_mut(1).add_vms(1);
    f.start_daemons();
    f.wait_spine_exact(FABRIC_BOUND, "the spine to hold the VM's prefixes");
    f.hv_mut(1).pass_and_frr_sync();
    let before = f.hv(1).frr.running_config();
    let list_before = f.hv(1).hvroute_ok(&["vm", "list", "--json"]);

    let mac = "52:54:00:00:01:09";
    let cases: Vec<Vec<&str>> = vec![
        vec!["vm", "add", "x\nrouter bgp 1", "--mac", mac, "--ip", "192.0.2.99"],
        vec!["vm", "add", "a b", "--mac", mac, "--ip", "192.0.2.99"],
        vec!["vm", "add", "vm9", "--mac", mac, "--ip", "192.0.2.5\n no router bgp"],
        vec!["vm", "add", "vm9", "--mac", mac, "--ip", "192.0.2.5 route-map X"],
        vec!["vm", "add", "vm9", "--mac", mac, "--ip", "192.0.2.5/32 route-map X"],
        vec!["vm", "add", "vm9", "--mac", mac, "--ip", "2001:db8:100::9\nexit\nno router bgp"],
        vec!["vm", "add", "vm9", "--nic", "mac=52:54:00:00:01:09,ip=192.0.2.9\nrouter bgp 1"],
        vec!["vm", "add", "vm9", "--mac", "52:54:00:00:01:09\nrouter bgp 1", "--ip", "192.0.2.9"],
        vec!["vm", "add", "vm9", "--mac", mac, "--ip", "192.0.2.9", "--port", "v9p\nrouter bgp 1"],
    ];
    for args in &cases {
        let o = f.hv(1).hvroute(args);
        assert_eq!(
            o.status.code(),
            Some(2),
            "`hvroute {args:?}` was not refused as invalid input: {}",
            show(&o)
        );
        assert!(!stderr(&o).trim().is_empty(), "`hvroute {args:?}` gave no reason");
    }

    // The same values in state files written by hand (or by a broken shim): refused on
    // read, so nothing reaches FRR either.
    let evil = [
        ("evil1", "evil1\nrouter bgp 1", "192.0.2.98"),
        ("evil2", "evil2", "192.0.2.97\nno router bgp"),
        ("evil3", "evil3", "192.0.2.96 route-map X"),
    ];
    for (file, name, addr) in evil {
        let v = serde_json::json!({
            "version": 1,
            "name": name,
            "nics": [{ "mac": mac, "addresses": [addr] }],
            "source": "cli",
        });
        std::fs::write(f.hv(1).state.join(format!("{file}.json")), v.to_string()).expect("state file");
    }
    f.hv_mut(1).pass_and_frr_sync();
    f.hv_mut(1).pass_and_frr_sync();

    let after = f.hv(1).frr.running_config();
    assert_eq!(after, before, "FRR's running config changed");
    let list_after = f.hv(1).hvroute(&["vm", "list", "--json"]);
    let names = |s: &str| -> BTreeSet<String> {
        let v: Value = serde_json::from_str(s).unwrap_or(Value::Null);
        let arr = v.as_array().cloned().or_else(|| v.get("vms").and_then(Value::as_array).cloned());
        arr.unwrap_or_default().iter().filter_map(|x| x["name"].as_str().map(str::to_string)).collect()
    };
    assert_eq!(names(&stdout(&list_after)), names(&list_before), "the stored VMs changed");
    f.assert_spine_exact("after the injection attempts");
    f.hv_mut(1).assert_daemon_running();
}
