//! Property tests of the pure planner against the fake kernel.

use std::collections::BTreeMap;
use std::net::IpAddr;

use hvroute::config::Config;
use hvroute::kernel::fake::Fake;
use hvroute::model::{Mac, Nic, Source, VmSpec};
use hvroute::plan::{self, BridgeObs, Desired, Observed, Options, RouteKey};
use hvroute::store::Snapshot;
use proptest::prelude::*;

fn cfg() -> Config {
    Config::parse(
        "[pools]\nipv4=[\"192.0.2.0/24\"]\nipv6=[\"2001:db8:100::/40\"]\n[bgp]\nasn=65001\nrouter_id=\"10.255.0.1\"\n",
    )
    .unwrap()
}

/// A small address space so that collisions between VMs, observed and desired happen.
fn addr() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        (1u8..12).prop_map(|i| IpAddr::from([192, 0, 2, i])),
        (1u16..12).prop_map(|i| IpAddr::from([0x2001, 0xdb8, 0x100, 0, 0, 0, 0, i])),
        // outside the pools: owned routes to these must go, never be added
        (1u8..3).prop_map(|i| IpAddr::from([198, 51, 100, i])),
    ]
}

fn mac() -> impl Strategy<Value = Mac> {
    (1u8..5).prop_map(|i| Mac([0x52, 0x54, 0, 0, 0, i]))
}

fn vm() -> impl Strategy<Value = VmSpec> {
    (
        0u8..8,
        prop::collection::vec((mac(), prop::collection::btree_set(addr(), 1..4)), 1..3),
        prop_oneof![Just(Source::Cli), Just(Source::Hook), Just(Source::Shim)],
        prop::option::of(prop_oneof![Just("boot-a".to_string()), Just("boot-b".to_string())]),
    )
        .prop_map(|(n, nics, source, boot_id)| VmSpec {
            name: format!("vm{n}").parse().unwrap(),
            nics: nics
                .into_iter()
                .map(|(mac, a)| Nic {
                    mac,
                    addresses: a.into_iter().map(hvroute::model::HostAddr).collect(),
                    port: None,
                })
                .collect(),
            source,
            boot_id,
            migration: None,
        })
}

fn snapshot() -> impl Strategy<Value = Snapshot> {
    (prop::collection::vec(vm(), 0..6), prop::bool::weighted(0.15)).prop_map(|(vms, broken)| {
        let mut errors = BTreeMap::new();
        if broken {
            errors.insert("broken.json".to_string(), "not valid JSON".to_string());
        }
        Snapshot { vms: vms.into_iter().map(|v| (v.name.clone(), std::sync::Arc::new(v))).collect(), errors }
    })
}

fn observed() -> impl Strategy<Value = Observed> {
    (
        prop_oneof![Just(None), Just(Some(true)), Just(Some(false))],
        any::<bool>(),
        prop::collection::btree_set(
            (addr(), prop_oneof![Just(0u32), Just(1024), Just(5)], prop_oneof![Just(7u32), Just(3)]),
            0..10,
        ),
        prop::collection::btree_map(
            (addr(), prop_oneof![Just(7u32), Just(3)]),
            prop::option::of(mac()),
            0..10,
        ),
        any::<bool>(),
    )
        .prop_map(|(bridge, right_mac, routes, neighs, sysctls_ok)| {
            let c = cfg();
            let spec = plan::BridgeSpec::from_config(&c);
            Observed {
                bridge: bridge.map(|up| BridgeObs {
                    ifindex: 7,
                    is_bridge: true,
                    up,
                    mac: Some(if right_mac { spec.mac } else { Mac([2, 0, 0, 0, 0, 9]) }),
                    mtu: if right_mac { spec.mtu } else { 9000 },
                    addrs: if right_mac { spec.addrs.clone() } else { Default::default() },
                    ports: vec![],
                }),
                sysctls: if sysctls_ok { spec.sysctls.clone() } else { Default::default() },
                routes: routes
                    .into_iter()
                    .map(|(addr, metric, ifindex)| RouteKey { addr, metric, ifindex })
                    .collect(),
                neighs,
                redirect_filter: sysctls_ok,
                loopback_addrs: Default::default(),
                guard: Default::default(),
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Convergence: a pass that applied its plan leaves nothing for the next pass.
    /// Without it the daemon would churn the kernel every resync.
    #[test]
    fn applying_the_plan_then_planning_again_is_empty(
        snap in snapshot(),
        obs in observed(),
        bring_up in any::<bool>(),
        boot in prop_oneof![Just("boot-a"), Just("boot-b")],
    ) {
        let c = cfg();
        let d = Desired::build(&c, &snap, boot);
        let opts = Options { bring_up };
        let first = plan::plan(&d, &obs, opts, 44);
        let mut k = Fake::new();
        k.state = obs.clone();
        let errors = k.apply_now(&first);
        prop_assert!(errors.is_empty(), "{errors:?}\nplan:\n{first}");
        let again = plan::plan(&d, &k.observe_now(&d), opts, 44);
        prop_assert!(again.ops.is_empty(), "first plan:\n{first}\nsecond plan:\n{again}");
        prop_assert_eq!(again.held_deletions, first.held_deletions);
    }

    /// The hook's plan for one VM (`started`, `release`): it names no address outside
    /// the VM's, so one VM's hook can never delete another VM's objects; and applied, it
    /// leaves nothing for the VM's next hook, nor for a full pass on those addresses.
    #[test]
    fn the_plan_for_one_vm_stays_inside_its_addresses_and_converges(
        snap in snapshot(),
        obs in observed(),
        mine in prop::collection::btree_set(addr(), 0..4),
        create_bridge in any::<bool>(),
    ) {
        let c = cfg();
        let d = Desired::build(&c, &snap, "boot-a");
        let first = plan::plan_vm(&d, &obs, &mine, create_bridge, 44);
        for op in &first.ops {
            match op {
                plan::Op::ReplaceRoute { addr }
                | plan::Op::ReplaceNeigh { addr, .. }
                | plan::Op::DelRoute { addr, .. }
                | plan::Op::DelNeigh { addr, .. } => prop_assert!(mine.contains(addr), "{op:?} outside {mine:?}"),
                // Guards: the base where missing, this VM's NICs only, ports only added.
                plan::Op::GuardBase { .. } => prop_assert!(obs.guard.base.is_none()),
                plan::Op::GuardNic { nic, .. } => prop_assert!(
                    mine.iter().any(|a| d.addrs.get(a) == Some(&nic.mac) || d.pending.get(a) == Some(&nic.mac)),
                    "{op:?} is not this VM's NIC"
                ),
                plan::Op::GuardPorts { ports, .. } => prop_assert!(obs.guard.ports.is_subset(ports), "{op:?} removes ports"),
                plan::Op::IsolatePort { .. } | plan::Op::DelGuardChain { .. } => {}
                // Bridge set-up only where there was no bridge, and only when asked.
                _ => prop_assert!(obs.bridge.is_none() && create_bridge, "{op:?} on an existing bridge"),
            }
        }
        let mut k = Fake::new();
        k.state = obs.clone();
        prop_assert!(k.apply_now(&first).is_empty());
        let after = k.observe_now(&d);
        let again = plan::plan_vm(&d, &after, &mine, create_bridge, 44);
        prop_assert!(again.ops.is_empty(), "first:\n{first}\nagain:\n{again}");
        if after.bridge.as_ref().is_some_and(|b| b.up) {
            let full = plan::plan(&d, &after, Options::default(), 44);
            for op in &full.ops {
                if let plan::Op::ReplaceRoute { addr } | plan::Op::ReplaceNeigh { addr, .. }
                    | plan::Op::DelRoute { addr, .. } | plan::Op::DelNeigh { addr, .. } = op {
                    prop_assert!(!mine.contains(addr), "a pass still has {op:?} after the VM's plan");
                }
            }
        }
    }

    /// Safety: nothing is routed outside the pools, and with an unreadable state file
    /// nothing owned is deleted unless it is being replaced by the desired state.
    #[test]
    fn never_routes_outside_pools_and_holds_deletions(snap in snapshot(), obs in observed()) {
        let c = cfg();
        let d = Desired::build(&c, &snap, "boot-a");
        let p = plan::plan(&d, &obs, Options { bring_up: true }, 44);
        for op in &p.ops {
            match op {
                plan::Op::ReplaceRoute { addr } | plan::Op::ReplaceNeigh { addr, .. } => {
                    prop_assert!(c.pools.contains(*addr), "{op:?}");
                }
                plan::Op::DelRoute { addr, .. } | plan::Op::DelNeigh { addr, .. } if !snap.errors.is_empty() => {
                    prop_assert!(d.addrs.contains_key(addr), "deleted {addr} despite an unreadable state file");
                }
                _ => {}
            }
        }
    }
}
