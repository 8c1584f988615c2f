//! The guards on the shared bridge (docs/guards.md): per-NIC anti-spoofing, port isolation
//! and host protection, decided here from the same [`Desired`] state as the routes. Pure: no
//! I/O, no clock. The kernel backend runs what [`plan`] returns (`kernel/nft.rs` loads
//! [`transaction`] with one `nft -f`, `kernel/netlink.rs` sets port isolation).
//!
//! Contract:
//! - [`want`] binds each routed NIC to a port of the managed bridge: the port its entry
//!   names (`--port`, the hook's `<target dev>`), else the port whose MAC is the NIC's tap
//!   MAC (`fe:` + the VM MAC's last five octets). Never by learned forwarding entries.
//! - [`plan`] returns the guard ops that turn [`GuardObs`] into [`Want`]: the base (tables,
//!   hooks, host protection, fingerprinted), the set of the bridge's ports, one chain and one
//!   map element per bound NIC (fingerprinted in the element's comment), isolation per bound
//!   port, and the removal of what no NIC wants.
//! - [`transaction`] renders guard ops as one nftables script, so each pass's guard change
//!   is one atomic transaction: a NIC's chain is flushed and refilled together with its map
//!   element; nothing is ever unfiltered, nothing half-built.
//! - Only the tables `bridge hvroute` and `inet hvroute` are named. Every value that reaches
//!   the script is a validated type (interface names, MACs, addresses, ports, prefixes).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use serde::Serialize;

use crate::config::{Config, HostService};
use crate::model::{IfName, Mac};
use crate::plan::{Desired, Observed, Op};

/// The bridge-family table: per-port, per-NIC filtering.
pub const BRIDGE_TABLE: &str = "bridge hvroute";
/// The inet table (shared with the ICMPv6 redirect filter): host protection.
pub const INET_TABLE: &str = "inet hvroute";
/// Named counter of frames from ports bound to no NIC.
pub const UNBOUND_COUNTER: &str = "drop-unbound";
/// The packet mark bit that the bridge table sets on frames from guarded ports, so that
/// the host protection applies to VM traffic only (a physical port on the bridge, where an
/// admin forced the take-over, keeps reaching the host).
pub const VM_MARK: u32 = 0x0010_0000;
/// The mark bit on frames from the bridge's physical ports (a take-over the admin forced):
/// traffic that is neither marked so nor as a VM's came from a port no pass has seen yet,
/// and is dropped at the host.
pub const TRUSTED_MARK: u32 = 0x0020_0000;
/// Named counters of the host protection.
pub const HOST_COUNTER: &str = "drop-to-host";
pub const FORWARD_COUNTER: &str = "drop-forward";
/// Named counter (inet table) of packets from bridge ports no pass has seen yet.
pub const UNSEEN_COUNTER: &str = "drop-unseen";
/// Neither a VM's frame nor a physical port's: from a port that joined since the last pass.
const UNSEEN: &str = "meta mark and 0x00300000 == 0";

/// What the guards must look like, from config and desired state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Want {
    pub base: Base,
    /// Every port of the managed bridge that filtering applies to: the observed ports and
    /// every port a NIC is bound to by name.
    pub ports: BTreeSet<String>,
    /// The bridge's physical ports: not filtered, and known as such.
    pub trusted: BTreeSet<String>,
    /// Bound ports and the NIC each carries.
    pub bound: BTreeMap<String, NicRules>,
    /// Routed NICs with no port yet: their frames cannot enter, they forward nothing.
    pub unbound_nics: BTreeSet<Mac>,
    /// The ports the bridge has now (isolation can only be set on these).
    pub present: BTreeSet<String>,
}

/// The base: tables, hook chains, the host protection. Changes rarely.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Base {
    pub bridge: String,
    pub gateway4: Ipv4Addr,
    pub gateway6: Ipv6Addr,
    /// Interfaces VM traffic may be forwarded to, besides the bridge itself.
    pub uplinks: BTreeSet<String>,
    pub host_allow: Vec<HostService>,
    pub forward_allow: Vec<IpNet>,
}

/// One NIC's identity on its port.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct NicRules {
    pub mac: Mac,
    pub v4: BTreeSet<Ipv4Addr>,
    pub v6: BTreeSet<Ipv6Addr>,
}

/// What the kernel holds of the guards (read by `kernel/nft.rs`, port isolation by netlink).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuardObs {
    /// The base's fingerprint, when the base is in place.
    pub base: Option<String>,
    /// Elements of the `bridge_ports` set.
    pub ports: BTreeSet<String>,
    /// Elements of the `trusted_ports` set.
    pub trusted: BTreeSet<String>,
    /// Elements of the `port_nics` map: port to (chain, fingerprint comment).
    pub map: BTreeMap<String, (String, Option<String>)>,
    /// The `nic-*` chains that exist.
    pub chains: BTreeSet<String>,
    /// Ports of the managed bridge with `isolated on`.
    pub isolated: BTreeSet<String>,
    /// The interfaces of the kernel's routes to the numbered BGP peers.
    pub peer_ifaces: BTreeSet<String>,
    /// Frames dropped, by named counter (`drop-<mac hex>`, `drop-unbound`, ...).
    pub drops: BTreeMap<String, u64>,
}

impl NicRules {
    /// The MAC's twelve hex digits: the NIC's chain and counter names.
    pub fn hex(mac: &Mac) -> String {
        mac.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    pub fn chain(&self) -> String {
        format!("nic-{}", Self::hex(&self.mac))
    }

    pub fn counter(&self) -> String {
        Self::counter_name(&self.mac)
    }

    /// The name of the counter of the frames a NIC's rules dropped (`status`, metrics).
    pub fn counter_name(mac: &Mac) -> String {
        format!("drop-{}", Self::hex(mac))
    }

    /// The chain's rules, in order (docs/guards.md). No anonymous sets: a list of values is
    /// several `!=` matches in one rule, because nft reads every set of a table (anonymous
    /// ones included) on each command, which made each command cost about 0.2 s at 1,000
    /// NICs (measured).
    pub fn rules(&self) -> Vec<String> {
        let mac = self.mac;
        let drop = format!("counter name \"{}\" drop", self.counter());
        let not_any = |what: &str, vals: &mut dyn Iterator<Item = String>| -> String {
            vals.map(|v| format!("{what} != {v}")).collect::<Vec<_>>().join(" ")
        };
        let mut r = vec![format!("ether saddr != {mac} {drop}")];
        if self.v4.is_empty() {
            r.push(format!("ether type arp {drop}"));
            r.push(format!("ether type ip {drop}"));
        } else {
            r.push(format!("ether type arp arp saddr ether != {mac} {drop}"));
            let senders = not_any(
                "arp saddr ip",
                &mut std::iter::once("0.0.0.0".to_string()).chain(self.v4.iter().map(|a| a.to_string())),
            );
            r.push(format!("ether type arp {senders} {drop}"));
            r.push("ether type arp accept".into());
            r.push(format!("ether type ip udp sport 67 {drop}"));
            let sources = not_any("ip saddr", &mut self.v4.iter().map(|a| a.to_string()));
            r.push(format!("ether type ip {sources} {drop}"));
            r.push("ether type ip accept".into());
        }
        r.push("ether type 0x8035 accept".into());
        r.push(format!("ether type ip6 ip6 saddr fe80::1 {drop}"));
        r.push(format!("ether type ip6 icmpv6 type nd-router-advert {drop}"));
        r.push(format!("ether type ip6 icmpv6 type nd-redirect {drop}"));
        r.push(format!("ether type ip6 udp sport 547 {drop}"));
        let sources = not_any(
            "ip6 saddr",
            &mut ["::".to_string(), "fe80::/64".to_string()]
                .into_iter()
                .chain(self.v6.iter().map(|a| a.to_string())),
        );
        r.push(format!("ether type ip6 {sources} {drop}"));
        for a in &self.v6 {
            r.push(format!(
                "ether type ip6 icmpv6 type nd-neighbor-advert @th,64,128 0x{:032x} accept",
                u128::from(*a)
            ));
        }
        r.push(
            "ether type ip6 icmpv6 type nd-neighbor-advert @th,64,64 0xfe80000000000000 \
             @th,64,128 != 0xfe800000000000000000000000000001 accept"
                .into(),
        );
        r.push(format!("ether type ip6 icmpv6 type nd-neighbor-advert {drop}"));
        r.push("ether type ip6 accept".into());
        r.push(drop);
        r
    }

    /// A short hash of the rules: stored in the NIC's map element, so a pass sees at a
    /// glance whether the chain is current.
    pub fn fingerprint(&self) -> String {
        format!("h{:012x}", fnv(&self.rules().join("\n")) & 0xffff_ffff_ffff)
    }
}

/// The guard settings of the config, as [`Desired`] carries them (`None` there: guards off).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuardConfig {
    pub base: Base,
    /// Numbered BGP peers: the interfaces of the kernel's routes to them are uplinks too.
    pub peer_addrs: BTreeSet<IpAddr>,
}

impl GuardConfig {
    pub fn from_config(cfg: &Config) -> Option<GuardConfig> {
        if !cfg.guard.enabled {
            return None;
        }
        let mut uplinks: BTreeSet<String> = cfg.guard.uplinks.iter().map(|i| i.to_string()).collect();
        uplinks.extend(cfg.bgp.peers.iter().filter_map(|p| p.interface.as_ref()).map(|i| i.to_string()));
        let base = Base {
            bridge: cfg.bridge.name.to_string(),
            gateway4: cfg.bridge.gateway4,
            gateway6: cfg.bridge.gateway6,
            uplinks,
            host_allow: cfg.guard.host_allow.clone(),
            forward_allow: cfg.guard.forward_allow.clone(),
        };
        let peer_addrs = cfg.bgp.peers.iter().filter_map(|p| p.address).collect();
        Some(GuardConfig { base, peer_addrs })
    }
}

impl Base {
    /// The base with the interfaces the numbered peers are reached through.
    pub fn with_peer_ifaces(&self, peer_ifaces: &BTreeSet<String>) -> Base {
        let mut b = self.clone();
        b.uplinks.extend(peer_ifaces.iter().cloned());
        b.uplinks.remove(&b.bridge);
        b
    }

    /// The base as nft commands: creates what is missing and replaces the hook chains'
    /// rules; the per-NIC chains, the map and the counters are kept.
    pub fn commands(&self) -> String {
        let br = &self.bridge;
        let mut s = String::new();
        let _ = writeln!(s, "add table {BRIDGE_TABLE}");
        let _ = writeln!(s, "add set {BRIDGE_TABLE} bridge_ports {{ type ifname; }}");
        let _ = writeln!(s, "add set {BRIDGE_TABLE} trusted_ports {{ type ifname; }}");
        let _ = writeln!(s, "add map {BRIDGE_TABLE} port_nics {{ type ifname : verdict; }}");
        let _ = writeln!(s, "add set {BRIDGE_TABLE} base {{ type ifname; }}");
        let _ = writeln!(s, "add counter {BRIDGE_TABLE} {UNBOUND_COUNTER}");
        let _ = writeln!(
            s,
            "add chain {BRIDGE_TABLE} ports {{ type filter hook prerouting priority -300; policy accept; }}"
        );
        let _ = writeln!(s, "flush chain {BRIDGE_TABLE} ports");
        // Frames from other bridges' ports pass; from the managed bridge's ports, a bound
        // port jumps to its NIC's chain; anything else is dropped (default deny).
        let _ = writeln!(
            s,
            "add rule {BRIDGE_TABLE} ports iifname @trusted_ports meta mark set meta mark or {TRUSTED_MARK:#010x} accept"
        );
        let _ = writeln!(s, "add rule {BRIDGE_TABLE} ports iifname != @bridge_ports accept");
        let _ = writeln!(s, "add rule {BRIDGE_TABLE} ports meta mark set meta mark or {VM_MARK:#010x}");
        let _ = writeln!(s, "add rule {BRIDGE_TABLE} ports iifname vmap @port_nics");
        let _ = writeln!(s, "add rule {BRIDGE_TABLE} ports counter name \"{UNBOUND_COUNTER}\" drop");

        // A port no pass has seen yet (added to the bridge a moment ago) reaches no VM at L2.
        let _ = writeln!(
            s,
            "add chain {BRIDGE_TABLE} to_vms {{ type filter hook forward priority -300; policy accept; }}"
        );
        let _ = writeln!(s, "flush chain {BRIDGE_TABLE} to_vms");
        let _ = writeln!(
            s,
            "add rule {BRIDGE_TABLE} to_vms oifname @bridge_ports iifname != @bridge_ports iifname != @trusted_ports \
             counter name \"{UNBOUND_COUNTER}\" drop"
        );

        let _ = writeln!(s, "add table {INET_TABLE}");
        let _ = writeln!(s, "add set {INET_TABLE} uplinks {{ type ifname; }}");
        let _ = writeln!(s, "flush set {INET_TABLE} uplinks");
        if !self.uplinks.is_empty() {
            let _ = writeln!(
                s,
                "add element {INET_TABLE} uplinks {}",
                set_always(self.uplinks.iter().map(|u| format!("\"{u}\"")))
            );
        }
        let _ = writeln!(s, "add counter {INET_TABLE} {HOST_COUNTER}");
        let _ = writeln!(s, "add counter {INET_TABLE} {FORWARD_COUNTER}");
        let _ = writeln!(s, "add chain {INET_TABLE} vm_to_host");
        let _ = writeln!(s, "flush chain {INET_TABLE} vm_to_host");
        let host = [
            "ct state established,related accept".to_string(),
            "icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit } accept".to_string(),
            format!("ip daddr {} icmp type echo-request accept", self.gateway4),
            format!("ip6 daddr {} icmpv6 type echo-request accept", self.gateway6),
        ];
        for r in host {
            let _ = writeln!(s, "add rule {INET_TABLE} vm_to_host {r}");
        }
        for svc in &self.host_allow {
            let _ = writeln!(s, "add rule {INET_TABLE} vm_to_host {} dport {} accept", svc.proto, svc.port);
        }
        let _ = writeln!(s, "add rule {INET_TABLE} vm_to_host counter name \"{HOST_COUNTER}\" drop");
        let _ = writeln!(s, "add chain {INET_TABLE} vm_out");
        let _ = writeln!(s, "flush chain {INET_TABLE} vm_out");
        let _ = writeln!(s, "add rule {INET_TABLE} vm_out oifname \"{br}\" accept");
        let _ = writeln!(s, "add rule {INET_TABLE} vm_out oifname @uplinks accept");
        for net in &self.forward_allow {
            let fam = if matches!(net, IpNet::V4(_)) { "ip" } else { "ip6" };
            let _ = writeln!(s, "add rule {INET_TABLE} vm_out {fam} daddr {net} accept");
        }
        let _ = writeln!(s, "add rule {INET_TABLE} vm_out counter name \"{FORWARD_COUNTER}\" drop");
        let _ = writeln!(
            s,
            "add chain {INET_TABLE} input {{ type filter hook input priority 0; policy accept; }}"
        );
        let _ = writeln!(s, "flush chain {INET_TABLE} input");
        let _ = writeln!(
            s,
            "add rule {INET_TABLE} input iifname \"{br}\" meta mark and {VM_MARK:#010x} != 0 jump vm_to_host"
        );
        let _ = writeln!(
            s,
            "add chain {INET_TABLE} forward {{ type filter hook forward priority 0; policy accept; }}"
        );
        let _ = writeln!(s, "flush chain {INET_TABLE} forward");
        let _ = writeln!(
            s,
            "add rule {INET_TABLE} forward iifname \"{br}\" meta mark and {VM_MARK:#010x} != 0 jump vm_out"
        );
        // What the bridge passes up (to the host, or to be routed) from a port that joined
        // since the last pass carries neither mark: dropped as it enters the IP layer,
        // before conntrack. (A netdev ingress chain on the bridge device would act earlier,
        // but frames the bridge passes up do not traverse it: measured on kernel 6.18.)
        let _ = writeln!(s, "add counter {INET_TABLE} {UNSEEN_COUNTER}");
        let _ = writeln!(
            s,
            "add chain {INET_TABLE} unseen {{ type filter hook prerouting priority -450; policy accept; }}"
        );
        let _ = writeln!(s, "flush chain {INET_TABLE} unseen");
        let _ = writeln!(
            s,
            "add rule {INET_TABLE} unseen iifname \"{br}\" {UNSEEN} counter name \"{UNSEEN_COUNTER}\" drop"
        );
        let _ = writeln!(s, "flush set {BRIDGE_TABLE} base");
        let _ = writeln!(s, "add element {BRIDGE_TABLE} base {{ \"{}\" }}", self.fingerprint());
        s
    }

    pub fn fingerprint(&self) -> String {
        let mut text = serde_json::to_string(self).unwrap_or_default();
        text.push_str(&format!("v{}", GUARD_VERSION));
        format!("h{:012x}", fnv(&text) & 0xffff_ffff_ffff)
    }
}

/// Bumped when the rendering changes, so that hosts re-install the base.
const GUARD_VERSION: u32 = 2;

/// FNV-1a, 64 bit: a stable fingerprint, not a security boundary.
fn fnv(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// What the guards must be now, or `None` when `guard.enabled` is false. Binding is by name
/// (an entry's port) first, then by libvirt's tap MAC convention, never by learned entries.
/// Two NICs that claim one port: the first by MAC keeps it, the other stays unbound.
pub fn want(d: &Desired, o: &Observed) -> Option<Want> {
    let gc = d.guard.as_ref()?;
    let base = gc.base.with_peer_ifaces(&o.guard.peer_ifaces);
    let routed = d.routed(o);
    let mut nics: BTreeMap<Mac, NicRules> = BTreeMap::new();
    for (addr, mac) in routed.iter() {
        let n = nics.entry(*mac).or_insert_with(|| NicRules {
            mac: *mac,
            v4: BTreeSet::new(),
            v6: BTreeSet::new(),
        });
        match addr {
            IpAddr::V4(a) => {
                n.v4.insert(*a);
            }
            IpAddr::V6(a) => {
                n.v6.insert(*a);
            }
        }
    }
    let observed_ports: Vec<(&str, Option<Mac>)> =
        o.bridge.iter().flat_map(|b| b.ports.iter().map(|p| (p.name.as_str(), p.mac))).collect();
    let present: BTreeSet<String> = observed_ports.iter().map(|(n, _)| n.to_string()).collect();
    let mut ports = present.clone();
    let mut bound = BTreeMap::new();
    let mut unbound_nics = BTreeSet::new();
    for (mac, rules) in nics {
        let by_name = d.nic_ports.get(&mac).map(IfName::to_string);
        let by_tap =
            || observed_ports.iter().find(|(_, m)| *m == Some(mac.tap_mac())).map(|(n, _)| n.to_string());
        match by_name.or_else(by_tap) {
            Some(port) if !bound.contains_key(&port) => {
                ports.insert(port.clone());
                bound.insert(port, rules);
            }
            _ => {
                unbound_nics.insert(mac);
            }
        }
    }
    let trusted: BTreeSet<String> = o
        .bridge
        .iter()
        .flat_map(|b| b.ports.iter())
        .filter(|p| matches!(p.kind, crate::plan::PortKind::Other(_)))
        .map(|p| p.name.clone())
        .filter(|n| !bound.contains_key(n))
        .collect();
    Some(Want { base, ports, trusted, bound, unbound_nics, present })
}

/// The guard ops that turn `o` into `w` (`None`: guards off, so hvroute's guard objects go).
/// With `only`, just those NICs' chains and isolation (and the base and port set when
/// missing): the hook's view of one VM.
pub fn plan(w: Option<&Want>, o: &GuardObs, only: Option<&BTreeSet<Mac>>) -> Vec<Op> {
    let mut ops = Vec::new();
    let Some(w) = w else {
        if o.base.is_some() || !o.chains.is_empty() || !o.map.is_empty() {
            ops.push(Op::RemoveGuards);
        }
        return ops;
    };
    let base_fp = w.base.fingerprint();
    if o.base.as_deref() != Some(base_fp.as_str()) {
        ops.push(Op::GuardBase { base: w.base.clone() });
    }
    let wanted = |mac: &Mac| only.is_none_or(|s| s.contains(mac));
    // Ports first: a new port is filtered (default deny) before anything else happens.
    // For one VM (the hook), only its own ports are added; the full pass does the rest.
    match only {
        None if w.ports != o.ports || w.trusted != o.trusted => {
            ops.push(Op::GuardPorts { ports: w.ports.clone(), trusted: w.trusted.clone() })
        }
        None => {}
        Some(_) => {
            let mine = w.bound.iter().filter(|(_, n)| wanted(&n.mac)).map(|(p, _)| p);
            let missing: Vec<&String> = mine.filter(|p| !o.ports.contains(*p)).collect();
            if !missing.is_empty() {
                let mut ports = o.ports.clone();
                ports.extend(missing.into_iter().cloned());
                ops.push(Op::GuardPorts { ports, trusted: o.trusted.clone() });
            }
        }
    }
    for (port, nic) in &w.bound {
        if !wanted(&nic.mac) {
            continue;
        }
        if w.present.contains(port) && !o.isolated.contains(port) {
            ops.push(Op::IsolatePort { port: port.clone() });
        }
        let fp = nic.fingerprint();
        match o.map.get(port) {
            Some((chain, Some(have))) if *chain == nic.chain() && *have == fp && o.chains.contains(chain) => {
            }
            have => ops.push(Op::GuardNic { port: port.clone(), nic: nic.clone(), replace: have.is_some() }),
        }
    }
    if only.is_some() {
        // A chain this VM's ports no longer jump to, and no other NIC wants, goes too.
        let kept: BTreeSet<String> = w.bound.values().map(NicRules::chain).collect();
        for (port, nic) in w.bound.iter().filter(|(_, n)| wanted(&n.mac)) {
            if let Some((old, _)) = o.map.get(port)
                && *old != nic.chain()
                && !kept.contains(old)
                && o.chains.contains(old)
            {
                ops.push(Op::DelGuardChain { chain: old.clone() });
            }
        }
        return ops;
    }
    // What no NIC wants any more: map elements of ports bound to nothing, then chains.
    for port in o.map.keys() {
        if !w.bound.contains_key(port) {
            ops.push(Op::UnguardPort { port: port.clone() });
        }
    }
    let chains: BTreeSet<String> = w.bound.values().map(NicRules::chain).collect();
    for c in &o.chains {
        if !chains.contains(c) {
            ops.push(Op::DelGuardChain { chain: c.clone() });
        }
    }
    ops
}

/// The nft script for the guard ops among `ops`, in order, or `None` when there are none.
/// Loaded with one `nft -f`, it is one transaction.
pub fn transaction(ops: &[Op]) -> Option<String> {
    let mut s = String::new();
    for op in ops {
        match op {
            Op::GuardBase { base } => s.push_str(&base.commands()),
            Op::GuardPorts { ports, trusted } => {
                for (name, items) in [("bridge_ports", ports), ("trusted_ports", trusted)] {
                    let _ = writeln!(s, "flush set {BRIDGE_TABLE} {name}");
                    if !items.is_empty() {
                        let _ = writeln!(
                            s,
                            "add element {BRIDGE_TABLE} {name} {}",
                            set_always(items.iter().map(|p| format!("\"{p}\"")))
                        );
                    }
                }
            }
            Op::GuardNic { port, nic, replace } => {
                let chain = nic.chain();
                let _ = writeln!(s, "add counter {BRIDGE_TABLE} {}", nic.counter());
                let _ = writeln!(s, "add chain {BRIDGE_TABLE} {chain}");
                let _ = writeln!(s, "flush chain {BRIDGE_TABLE} {chain}");
                for r in nic.rules() {
                    let _ = writeln!(s, "add rule {BRIDGE_TABLE} {chain} {r}");
                }
                // An element is replaced by delete and add in the same transaction (`add`
                // refuses an existing key with another verdict).
                if *replace {
                    let _ = writeln!(s, "delete element {BRIDGE_TABLE} port_nics {{ \"{port}\" }}");
                }
                let _ = writeln!(
                    s,
                    "add element {BRIDGE_TABLE} port_nics {{ \"{port}\" comment \"{}\" : jump {chain} }}",
                    nic.fingerprint()
                );
            }
            Op::UnguardPort { port } => {
                let _ = writeln!(s, "delete element {BRIDGE_TABLE} port_nics {{ \"{port}\" }}");
            }
            Op::DelGuardChain { chain } => {
                let _ = writeln!(s, "flush chain {BRIDGE_TABLE} {chain}");
                let _ = writeln!(s, "delete chain {BRIDGE_TABLE} {chain}");
                if let Some(hex) = chain.strip_prefix("nic-") {
                    let _ = writeln!(s, "add counter {BRIDGE_TABLE} drop-{hex}");
                    let _ = writeln!(s, "delete counter {BRIDGE_TABLE} drop-{hex}");
                }
            }
            Op::RemoveGuards => {
                let _ = writeln!(s, "add table {BRIDGE_TABLE}");
                let _ = writeln!(s, "delete table {BRIDGE_TABLE}");
                for c in ["unseen", "input", "forward", "vm_to_host", "vm_out"] {
                    let _ = writeln!(s, "add chain {INET_TABLE} {c}");
                    let _ = writeln!(s, "flush chain {INET_TABLE} {c}");
                }
                for c in ["unseen", "input", "forward", "vm_to_host", "vm_out"] {
                    let _ = writeln!(s, "delete chain {INET_TABLE} {c}");
                }
            }
            _ => {}
        }
    }
    (!s.is_empty()).then_some(s)
}

fn set_always(items: impl Iterator<Item = String>) -> String {
    format!("{{ {} }}", items.collect::<Vec<_>>().join(", "))
}

/// Parses `nft -j list map bridge hvroute port_nics` into port to (chain, comment).
pub fn parse_map(json: &str) -> BTreeMap<String, (String, Option<String>)> {
    let mut out = BTreeMap::new();
    let Ok(v) = serde_json::from_str::<serde_json::Value>(json) else { return out };
    for item in v["nftables"].as_array().into_iter().flatten() {
        if item["map"]["table"] != "hvroute" || item["map"]["name"] != "port_nics" {
            continue;
        }
        for e in item["map"]["elem"].as_array().into_iter().flatten() {
            let (key, verdict) = (&e[0], &e[1]);
            let (port, comment) = match key {
                serde_json::Value::String(p) => (p.clone(), None),
                k => match k["elem"]["val"].as_str() {
                    Some(p) => (p.to_string(), k["elem"]["comment"].as_str().map(str::to_string)),
                    None => continue,
                },
            };
            let chain = verdict["jump"]["target"].as_str().unwrap_or("").to_string();
            out.insert(port, (chain, comment));
        }
    }
    out
}

/// Parses `nft -j list sets` into hvroute's sets, by (family, name), with their string
/// elements. Other tables' sets are skipped.
pub fn parse_sets(json: &str) -> BTreeMap<(String, String), BTreeSet<String>> {
    let mut out = BTreeMap::new();
    let Ok(v) = serde_json::from_str::<serde_json::Value>(json) else { return out };
    for item in v["nftables"].as_array().into_iter().flatten() {
        let set = &item["set"];
        let (Some(family), Some(name)) = (set["family"].as_str(), set["name"].as_str()) else { continue };
        if set["table"] != "hvroute" {
            continue;
        }
        let elems =
            set["elem"].as_array().into_iter().flatten().filter_map(|e| e.as_str().map(str::to_string));
        out.insert((family.to_string(), name.to_string()), elems.collect());
    }
    out
}

/// Whether `nft -j list chains` shows hvroute's inet chain `unseen` (the base's last hook
/// chain to be added).
pub fn has_unseen_chain(json: &str) -> bool {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(json) else { return false };
    v["nftables"].as_array().into_iter().flatten().any(|item| {
        let c = &item["chain"];
        c["family"] == "inet" && c["table"] == "hvroute" && c["name"] == "unseen"
    })
}

/// Parses `nft -j list chains` into the names of hvroute's NIC chains.
pub fn parse_chains(json: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let Ok(v) = serde_json::from_str::<serde_json::Value>(json) else { return out };
    for item in v["nftables"].as_array().into_iter().flatten() {
        let c = &item["chain"];
        if c["table"] == "hvroute"
            && c["family"] == "bridge"
            && let Some(n) = c["name"].as_str()
            && n.starts_with("nic-")
        {
            out.insert(n.to_string());
        }
    }
    out
}

/// Parses `nft -j list counters table ...` into name to packets.
pub fn parse_counters(json: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let Ok(v) = serde_json::from_str::<serde_json::Value>(json) else { return out };
    for item in v["nftables"].as_array().into_iter().flatten() {
        let c = &item["counter"];
        if let (Some(n), Some(p)) = (c["name"].as_str(), c["packets"].as_u64()) {
            out.insert(n.to_string(), p);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nic() -> NicRules {
        NicRules {
            mac: "52:54:00:00:00:51".parse().unwrap(),
            v4: ["192.0.2.51".parse().unwrap()].into(),
            v6: ["2001:db8:100::51".parse().unwrap()].into(),
        }
    }

    /// Prevents: a rule that lets a NIC send from an address it does not hold, or claim
    /// the gateway in a neighbour advertisement.
    #[test]
    fn nic_rules_name_only_the_nics_identity() {
        let r = nic().rules().join("\n");
        assert!(
            r.starts_with("ether saddr != 52:54:00:00:00:51 counter name \"drop-525400000051\" drop"),
            "{r}"
        );
        assert!(r.contains("ip saddr != 192.0.2.51 counter"), "{r}");
        assert!(r.contains("arp saddr ip != 0.0.0.0 arp saddr ip != 192.0.2.51 counter"), "{r}");
        assert!(
            r.contains("ip6 saddr != :: ip6 saddr != fe80::/64 ip6 saddr != 2001:db8:100::51 counter"),
            "{r}"
        );
        assert!(!r.contains('{'), "an anonymous set: {r}");
        assert!(r.contains("@th,64,128 0x20010db8010000000000000000000051 accept"), "{r}");
        assert!(r.contains("!= 0xfe800000000000000000000000000001 accept"), "{r}");
        assert!(r.ends_with("counter name \"drop-525400000051\" drop"), "{r}");
        // IPv6-only: no ARP, no IPv4 at all.
        let v6only = NicRules { v4: BTreeSet::new(), ..nic() }.rules().join("\n");
        assert!(
            v6only.contains("ether type arp counter name") && v6only.contains("ether type ip counter name")
        );
        assert!(!v6only.contains("ether type ip accept"));
    }

    #[test]
    fn fingerprints_follow_the_rules() {
        let a = nic();
        let mut b = nic();
        assert_eq!(a.fingerprint(), b.fingerprint());
        b.v4.insert("192.0.2.52".parse().unwrap());
        assert_ne!(a.fingerprint(), b.fingerprint());
        assert_eq!(a.fingerprint().len(), 13);
    }

    #[test]
    fn parses_what_nft_prints() {
        let map = r#"{"nftables": [{"metainfo": {}}, {"map": {"family": "bridge", "name": "port_nics", "table": "hvroute", "type": "ifname", "map": "verdict", "elem": [["v1p", {"jump": {"target": "nic-525400000051"}}], [{"elem": {"val": "v2p", "comment": "habc"}}, {"jump": {"target": "nic-525400000052"}}]]}}]}"#;
        let m = parse_map(map);
        assert_eq!(m["v1p"], ("nic-525400000051".to_string(), None));
        assert_eq!(m["v2p"], ("nic-525400000052".to_string(), Some("habc".to_string())));
        let counters = r#"{"nftables": [{"counter": {"family": "bridge", "name": "drop-unbound", "table": "hvroute", "handle": 3, "packets": 7, "bytes": 0}}]}"#;
        assert_eq!(parse_counters(counters)["drop-unbound"], 7);
        assert!(parse_map("not json").is_empty());
    }
}
