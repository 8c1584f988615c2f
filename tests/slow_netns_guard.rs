//! Issue 6's minute-long acceptance test (docs/guards.md): two VMs on one hypervisor, their
//! ports isolated, reach each other routed through the host, in both families, for a
//! sustained minute. The other guard tests are in `tests/netns_guard.rs`; this file is
//! named `slow_*` so that `scripts/test.sh --quick` skips it.
//!
//! Needs root and FRR 8.x. Run: `cargo test --test slow_netns_guard`.

mod common;

use std::time::Duration;

use common::fabric::*;
use common::*;

/// Probes per family: one every 200 ms for a minute.
const PROBES: u32 = 300;
/// Bound for the minute of pings to finish.
const PING_BOUND: Duration = Duration::from_secs(120);

/// `X packets transmitted, Y received` of a finished ping: (X, Y).
fn ping_totals(out: &str) -> (u64, u64) {
    out.lines()
        .find(|l| l.contains("packets transmitted"))
        .and_then(|l| {
            let n: Vec<u64> =
                l.split(',').filter_map(|p| p.split_whitespace().next()?.parse().ok()).collect();
            Some((*n.first()?, *n.get(1)?))
        })
        .unwrap_or_else(|| panic!("no ping summary in:\n{out}"))
}

/// Prevents: port isolation (which keeps VMs from talking to each other at L2, so that
/// the per-port guards see all their traffic) cutting VMs on the same hypervisor off from
/// each other, or making their traffic flaky: isolated ports, VM-to-VM traffic routed
/// through the host, a minute of pings in both families with no probe lost.
#[test]
fn vms_on_one_hypervisor_reach_each_other_for_a_minute_with_isolation_on() {
    let mut f = Fabric::new("gvm2vm", &[HvSpec::new(Peering::Unnumbered)]);
    f.hv_mut(1).add_vms(2);
    f.start_daemons();
    f.hv_mut(1).pass_and_frr_sync();
    let a = f.hv(1).vms[0].clone();
    let b = f.hv(1).vms[1].clone();
    let (b4, b6) = (b.ip4.clone().expect("IPv4"), b.ip6.clone().expect("IPv6"));
    for dst in [&b4, &b6] {
        if !poll_until(FABRIC_BOUND, || ping_ok(&a.ns, dst)) {
            panic!("{} cannot ping {dst} ({})\n{}", a.name, b.name, f.diagnostics());
        }
    }
    let count = PROBES.to_string();
    let p4 = Background::spawn_in(&a.ns, &["ping", "-n", "-i", "0.2", "-W", "1", "-c", &count, &b4]);
    let p6 = Background::spawn_in(&a.ns, &["ping", "-n", "-i", "0.2", "-W", "1", "-c", &count, &b6]);
    let (o4, o6) = (p4.finish(PING_BOUND), p6.finish(PING_BOUND));

    let mut failures = Vec::new();
    for (fam, o) in [("IPv4", &o4), ("IPv6", &o6)] {
        let (sent, got) = ping_totals(&stdout(o));
        eprintln!("{fam}: {} to {}: {sent} sent, {got} received", a.name, b.name);
        if sent != u64::from(PROBES) || got != sent {
            failures.push(format!("{fam}: {} to {}: {sent} sent, {got} received", a.name, b.name));
        }
    }
    for vm in [&a, &b] {
        let details = sh_in_ok(&f.hv(1).ns, &format!("bridge -d link show dev {}", vm.port));
        if !details.contains("isolated on") {
            failures.push(format!("port {} ({}) is not isolated:\n{details}", vm.port, vm.name));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
