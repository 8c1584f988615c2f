//! Live migration, make-before-break (design.md §5), end to end: two hypervisors with
//! real FRR and `hvroute daemon`, a spine, and an outside host that pings the VM every
//! 10 ms while the libvirt hook ops run in libvirt's own order. The VM is two network
//! namespaces with the same MAC and addresses: the running guest on the source and the
//! paused copy on the destination (its port down until the switchover, so that what the
//! host sends it is lost, as with a paused QEMU that reads nothing from its tap). Needs
//! root and FRR.
//!
//! Run: `cargo test --test netns_migrate -- --nocapture`.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::fabric::*;
use common::*;

/// The outage budget (the issue's acceptance): the longest gap between answered probes,
/// with the simulated pause included.
const OUTAGE_BUDGET: Duration = Duration::from_millis(300);
/// Before the switchover every probe is answered by the source: a gap longer than this
/// (a few lost probes at 10 ms) means traffic went to the paused destination.
const QUIET_GAP: Duration = Duration::from_millis(100);
/// Bounds of the polls; generous, a busy machine must not flake.
const SPINE_BOUND: Duration = Duration::from_secs(10);

/// The libvirt domain XML the hook gets on stdin: hvroute metadata for the VM's MAC and
/// addresses, one interface on cloudbr0 whose tap is PORT.
fn domain_xml(vm: &Vm, port: &str) -> String {
    let addrs: String =
        vm.addrs().iter().map(|a| format!("      <hvroute:address>{a}</hvroute:address>\n")).collect();
    format!(
        r#"<domain type='kvm'>
  <name>{name}</name>
  <metadata>
    <hvroute:vm xmlns:hvroute="urn:hvroute:metadata:1">
    <hvroute:interface mac="{mac}">
{addrs}    </hvroute:interface>
    </hvroute:vm>
  </metadata>
  <devices>
    <interface type='bridge'>
      <mac address='{mac}'/>
      <source bridge='{BRIDGE}'/>
      <target dev='{port}'/>
      <model type='virtio'/>
    </interface>
  </devices>
</domain>
"#,
        name = vm.name,
        mac = vm.mac,
    )
}

/// `hvroute hook qemu NAME OP SUBOP EXTRA` on hypervisor HV with the domain XML on stdin;
/// returns (exit code, stdout, stderr).
fn hook(hv: &Hv, vm: &Vm, port: &str, op: &str, subop: &str, extra: &str) -> (i32, String, String) {
    use std::io::Write;
    let cfg = hv.cfg.to_str().expect("utf-8 path");
    let mut child = Command::new("ip")
        .args(["netns", "exec", &hv.ns, BIN, "--config", cfg, "hook", "qemu", &vm.name, op, subop, extra])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("hvroute hook");
    child.stdin.take().expect("stdin").write_all(domain_xml(vm, port).as_bytes()).expect("XML to the hook");
    let o = child.wait_with_output().expect("hook output");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (o.status.code().unwrap_or(-1), text(&o.stdout), text(&o.stderr))
}

fn hook_ok(hv: &Hv, vm: &Vm, port: &str, op: &str, subop: &str, extra: &str) -> String {
    let (code, out, err) = hook(hv, vm, port, op, subop, extra);
    assert_eq!(code, 0, "hook {op} {subop} on hv{} failed: {err}", hv.n);
    out
}

/// libvirt's start of a domain: prepare, start, started.
fn start_ops(hv: &Hv, vm: &Vm, port: &str) {
    for op in ["prepare", "start", "started"] {
        hook_ok(hv, vm, port, op, "begin", "-");
    }
}

/// Which hypervisors (by AS) the spine sends the VM's IPv4 and IPv6 traffic to.
fn spine_uses(f: &Fabric, vm: &Vm) -> Vec<std::collections::BTreeSet<u32>> {
    let sf = f.spine_frr();
    let mut out = Vec::new();
    if let Some(a) = &vm.ip4 {
        out.push(used_paths_from(&sf.rib("ipv4"), &format!("{a}/32")));
    }
    if let Some(a) = &vm.ip6 {
        out.push(used_paths_from(&sf.rib("ipv6"), &format!("{a}/128")));
    }
    out
}

fn uses_only(f: &Fabric, vm: &Vm, asn: u32) -> bool {
    spine_uses(f, vm).iter().all(|s| s.len() == 1 && s.contains(&asn))
}

/// The destination's advertisement is on the spine, and loses: a longer AS path.
fn dest_known_and_losing(f: &Fabric, vm: &Vm, src_asn: u32, dst_asn: u32) -> bool {
    let rib = f.spine_frr().rib("ipv4");
    let paths = paths_of(&rib, &format!("{}/32", vm.ip4.as_deref().expect("dual stack")));
    let len = |asn| paths.iter().find(|(a, _)| *a == asn).map(|(_, l)| *l);
    matches!((len(src_asn), len(dst_asn)), (Some(s), Some(d)) if d > s) && uses_only(f, vm, src_asn)
}

/// Two hypervisors with daemons and a VM running on hv1, started through the hook.
fn fabric_with_vm(tag: &str, hv2_toml: &str) -> (Fabric, Vm) {
    let mut f =
        Fabric::new(tag, &[HvSpec::new(Peering::Unnumbered), HvSpec::new(Peering::Numbered).toml(hv2_toml)]);
    f.start_daemons();
    let vm = f.hv_mut(1).make_vm(1);
    start_ops(f.hv(1), &vm, &vm.port);
    let asn1 = f.hv(1).asn;
    wait_since(&f, Instant::now(), SPINE_BOUND, "the VM's prefixes on the spine via hv1", || {
        uses_only(&f, &vm, asn1)
    });
    (f, vm)
}

fn wait_since(f: &Fabric, t: Instant, bound: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    if !poll_until(bound.saturating_sub(t.elapsed()), &mut cond) {
        panic!("timed out after {bound:?} waiting for {what}\n{}", f.diagnostics());
    }
}

/// Prevents: traffic black-holed at a paused destination (advertised too early, or at a
/// tie, which eBGP splits or keeps on the older path), or a long outage after the
/// switchover (advertised too late). The outside host pings the VM every 10 ms over both
/// families across the whole migration.
#[test]
fn live_migration_is_make_before_break() {
    let (mut f, vm) = fabric_with_vm("mig", "");
    let (asn1, asn2) = (f.hv(1).asn, f.hv(2).asn);
    let p4 = Pinger::start(&f.out, vm.ip4.as_deref().expect("dual stack"));
    let p6 = Pinger::start(&f.out, vm.ip6.as_deref().expect("dual stack"));
    p4.wait_answers(30, SPINE_BOUND);
    p6.wait_answers(30, SPINE_BOUND);

    // Destination: libvirt's order for an incoming migration. The guest stays paused.
    let copy = f.hv_mut(2).plug_copy(&vm, "m1");
    let out = hook_ok(f.hv(2), &vm, &copy.port, "migrate", "begin", "-");
    assert!(out.is_empty(), "migrate begin printed on stdout, which libvirt takes as the new XML: {out:?}");
    start_ops(f.hv(2), &vm, &copy.port);
    wait_since(&f, Instant::now(), SPINE_BOUND, "hv2's de-preferred advertisement on the spine", || {
        dest_known_and_losing(&f, &vm, asn1, asn2)
    });
    p4.wait_answers(30, SPINE_BOUND);

    // Switchover: the source pauses for good, the destination runs and QEMU announces.
    let rarp = Announcer::ready(&copy.ns, &copy.mac);
    let switch = unix_now();
    let t = Instant::now();
    f.hv(1).set_running(&vm, false);
    f.hv(2).set_running(&copy, true);
    rarp.send();
    wait_since(&f, t, SPINE_BOUND, "the spine to send the VM's traffic to hv2 only", || {
        uses_only(&f, &vm, asn2)
    });
    let switched = t.elapsed();

    // The source's libvirt then stops and releases the domain.
    hook_ok(f.hv(1), &vm, &vm.port, "stopped", "end", "-");
    hook_ok(f.hv(1), &vm, &vm.port, "release", "end", "-");
    p4.wait_answers(50, SPINE_BOUND);
    p6.wait_answers(50, SPINE_BOUND);
    let (l4, l6) = (p4.stop(), p6.stop());

    for (fam, log) in [("IPv4", &l4), ("IPv6", &l6)] {
        let (gap, at) = log.longest_gap();
        let before = log.silence_before(switch);
        eprintln!(
            "{fam}: {} of {} probes answered; longest gap {gap:?} (at switchover {:+.0} ms); before the switchover {before:?}; spine switched {switched:?} after it",
            log.answered.len(),
            log.sent,
            (at - switch) * 1000.0
        );
        assert!(before <= QUIET_GAP, "{fam}: probes were lost before the switchover ({before:?})");
        assert!(gap <= OUTAGE_BUDGET, "{fam}: the outage was {gap:?}, over the {OUTAGE_BUDGET:?} budget");
        assert!(
            log.answered.last().is_some_and(|t| *t > switch + 0.3),
            "{fam}: no answers after the switchover"
        );
    }
    // The source has nothing left of the VM; the destination routes it.
    assert!(f.hv(1).network_lines().is_empty(), "hv1 still has network lines: {:?}", f.hv(1).network_lines());
    let routes = routes_proto44(&f.hv(1).ns);
    assert!(vm.addrs().iter().all(|a| !has_route(&routes, a)), "hv1 still routes the VM: {routes:?}");
    assert!(uses_only(&f, &vm, asn2));
}

/// Prevents: a failed incoming migration leaving routes, a state entry or an
/// advertisement on the destination, which would pull traffic away from the source
/// later (for instance once the source restarts its FRR).
#[test]
fn failed_migration_leaves_no_trace() {
    let (mut f, vm) = fabric_with_vm("migfail", "");
    let (asn1, asn2) = (f.hv(1).asn, f.hv(2).asn);
    let copy = f.hv_mut(2).plug_copy(&vm, "m1");
    let lines_before = f.hv(2).network_lines();
    hook_ok(f.hv(2), &vm, &copy.port, "migrate", "begin", "-");
    start_ops(f.hv(2), &vm, &copy.port);
    wait_since(&f, Instant::now(), SPINE_BOUND, "hv2's de-preferred advertisement on the spine", || {
        dest_known_and_losing(&f, &vm, asn1, asn2)
    });
    // The migration fails: libvirt stops and releases the incoming domain.
    hook_ok(f.hv(2), &vm, &copy.port, "stopped", "end", "-");
    hook_ok(f.hv(2), &vm, &copy.port, "release", "end", "failed");
    wait_since(&f, Instant::now(), SPINE_BOUND, "hv2's advertisement to leave the spine", || {
        let rib = f.spine_frr().rib("ipv4");
        paths_of(&rib, &format!("{}/32", vm.ip4.as_deref().expect("dual stack")))
            .iter()
            .all(|(a, _)| *a != asn2)
    });
    let hv2 = f.hv(2);
    let routes = routes_proto44(&hv2.ns);
    let neighs = neighs_proto44(&hv2.ns);
    assert!(vm.addrs().iter().all(|a| !has_route(&routes, a)), "hv2 still routes the VM: {routes:?}");
    assert!(neighs.iter().all(|n| !n.contains(&vm.mac)), "hv2 keeps the VM's neighbours: {neighs:?}");
    assert_eq!(hv2.network_lines(), lines_before, "hv2's FRR kept lines of the failed migration");
    let files: Vec<_> =
        std::fs::read_dir(&hv2.state).expect("state dir").flatten().map(|e| e.file_name()).collect();
    assert!(
        files.iter().all(|n| !n.to_string_lossy().ends_with(".json")),
        "hv2 keeps state files: {files:?}"
    );
    assert!(uses_only(&f, &vm, asn1), "the source lost the VM's traffic");
    wait_ping(&f, &f.out, None, vm.ip4.as_deref().expect("dual stack"));
}

/// Prevents: a VM stuck de-preferred when its guest never announces itself (the
/// fallback), or stuck strictly preferred forever (the settling window), which would
/// make its next migration away from this host a tie.
#[test]
fn fallback_and_settling_windows_end() {
    let (mut f, vm) = fabric_with_vm("migwin", "[migration]\nsettle_s = 2\nfallback_s = 2\n");
    let (asn1, asn2) = (f.hv(1).asn, f.hv(2).asn);
    let copy = f.hv_mut(2).plug_copy(&vm, "m1");
    hook_ok(f.hv(2), &vm, &copy.port, "migrate", "begin", "-");
    start_ops(f.hv(2), &vm, &copy.port);
    let t = Instant::now();
    // No announcement at all: after fallback_s, hv2 is taken as arrived and wins.
    wait_since(&f, t, SPINE_BOUND, "hv2 to win after the fallback", || uses_only(&f, &vm, asn2));
    assert!(t.elapsed() >= Duration::from_secs(1), "hv2 won before its fallback time");
    let arrived = f.hv(2).network_lines();
    assert!(arrived.values().any(|rm| rm == "route-map HVR-VM-ARRIVED"), "{arrived:?}");
    // After settle_s, back to the baseline: the same path length as the source's, so the
    // spine uses both (multipath) until the source withdraws.
    wait_since(&f, Instant::now(), SPINE_BOUND, "hv2 back at the baseline", || {
        f.hv(2).network_lines().values().all(|rm| rm == "route-map HVR-VM")
    });
    hook_ok(f.hv(1), &vm, &vm.port, "stopped", "end", "-");
    hook_ok(f.hv(1), &vm, &vm.port, "release", "end", "-");
    wait_since(&f, Instant::now(), SPINE_BOUND, "only hv2 on the spine", || uses_only(&f, &vm, asn2));
    let _ = asn1;
}

fn wait_ping(f: &Fabric, ns: &str, src: Option<&str>, dst: &str) {
    let ok = poll_until(SPINE_BOUND, || match src {
        Some(s) => ping_from_ok(ns, s, dst),
        None => ping_ok(ns, dst),
    });
    assert!(ok, "{ns} cannot ping {dst}\n{}", f.diagnostics());
}

/// One measured migration for the benchmark (scripts/bench-migrate.sh), in libvirt's
/// order with the source's stopped/release right after the switchover, as libvirt runs
/// them once the migration completes. `plain`: the destination runs the plain strategy
/// (`migration.make_before_break = false`): advertised at the baseline from `started`.
/// `multipath`: the spine spreads flows over equal-length paths from different ASes
/// (`bgp bestpath as-path multipath-relax`, `maximum-paths 8`), as ECMP fabrics do;
/// otherwise it keeps the oldest of equal eBGP paths.
fn migrate_once(tag: &str, plain: bool, multipath: bool) -> serde_json::Value {
    let toml = if plain { "[migration]\nmake_before_break = false\n" } else { "" };
    let (mut f, vm) = fabric_with_vm(tag, toml);
    if multipath {
        f.spine_frr().configure(&[
            &format!("router bgp {SPINE_ASN}"),
            "bgp bestpath as-path multipath-relax",
            "address-family ipv4 unicast",
            "maximum-paths 8",
            "exit-address-family",
            "address-family ipv6 unicast",
            "maximum-paths 8",
            "exit-address-family",
        ]);
    }
    let asn2 = f.hv(2).asn;
    // Several flows (one source address each): the spine spreads equal-length paths over
    // flows by hashing their addresses, so one flow alone may stay on the source by luck.
    let dst = vm.ip4.clone().expect("dual stack");
    let pingers: Vec<Pinger> = (11..=18)
        .map(|i| {
            let src = format!("203.0.113.{i}");
            ip(&f.out, &format!("addr add {src}/32 dev lo"));
            Pinger::start_from(&f.out, &src, &dst)
        })
        .collect();
    pingers.iter().for_each(|p| p.wait_answers(30, SPINE_BOUND));
    let copy = f.hv_mut(2).plug_copy(&vm, "m1");
    let t_started = unix_now();
    hook_ok(f.hv(2), &vm, &copy.port, "migrate", "begin", "-");
    start_ops(f.hv(2), &vm, &copy.port);
    wait_since(&f, Instant::now(), SPINE_BOUND, "hv2's advertisement on the spine", || {
        let rib = f.spine_frr().rib("ipv4");
        paths_of(&rib, &format!("{dst}/32")).iter().any(|(a, _)| *a == asn2)
    });
    // The simulated memory copy: the copy stays paused here, advertised, for a second
    // of traffic (a duration of the scenario, not a wait for a condition).
    std::thread::sleep(Duration::from_secs(1));
    let rarp = Announcer::ready(&copy.ns, &copy.mac);
    let switch = unix_now();
    f.hv(1).set_running(&vm, false);
    f.hv(2).set_running(&copy, true);
    rarp.send();
    hook_ok(f.hv(1), &vm, &vm.port, "stopped", "end", "-");
    hook_ok(f.hv(1), &vm, &vm.port, "release", "end", "-");
    wait_since(&f, Instant::now(), SPINE_BOUND, "the spine to use hv2 only", || uses_only(&f, &vm, asn2));
    pingers.iter().for_each(|p| p.wait_answers(50, SPINE_BOUND));
    let logs: Vec<PingLog> = pingers.into_iter().map(Pinger::stop).collect();
    let outage = logs.iter().map(|l| l.longest_gap().0).max().unwrap_or_default();
    let silent: Vec<Duration> = logs.iter().map(|l| l.silence_before(switch)).collect();
    serde_json::json!({
        "strategy": if plain { "plain" } else { "make-before-break" },
        "spine": if multipath { "multipath" } else { "oldest path" },
        "flows": logs.len(),
        "outage_ms": outage.as_secs_f64() * 1000.0,
        // Flows black-holed at the paused copy before the switchover, and for how long.
        "silence_before_switchover_ms": silent.iter().max().unwrap_or(&Duration::ZERO).as_secs_f64() * 1000.0,
        "flows_black_holed_before_switchover": silent.iter().filter(|d| **d > QUIET_GAP).count(),
        "paused_s": switch - t_started,
    })
}

/// The benchmark of scripts/bench-migrate.sh: TRIALS (env HVR_BENCH_TRIALS, default 5)
/// migrations with each strategy, alternating, one JSON line each on stdout.
#[test]
#[ignore = "a benchmark: scripts/bench-migrate.sh runs it"]
fn bench_migration_outage() {
    let trials: usize = std::env::var("HVR_BENCH_TRIALS").ok().and_then(|v| v.parse().ok()).unwrap_or(5);
    for i in 0..trials {
        for multipath in [false, true] {
            for plain in [false, true] {
                let r = migrate_once(
                    &format!("mb{i}{}{}", u8::from(multipath), u8::from(plain)),
                    plain,
                    multipath,
                );
                println!("BENCH {r}");
            }
        }
    }
}
