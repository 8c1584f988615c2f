//! The reconcile core: **where a route is decided**.
//!
//! Contract: `plan(desired, observed, options) -> Plan` is a pure function: no I/O, no
//! async, no clock. [`Desired`] is built from the config and a store [`Snapshot`];
//! [`Observed`] is what the kernel backend saw of hvroute's own objects. A [`Plan`] is a
//! printable list of [`Op`]s (`hvroute reconcile --dry-run` prints it) that the backend
//! executes in order. Applying a plan and planning again gives an empty plan (a property
//! test holds this).
//!
//! Ownership (design.md §3): routes and neighbours are hvroute's when they carry its
//! route protocol number; everything else is invisible here and therefore never
//! touched. Deletions are held back while any state file is unreadable, because an
//! unreadable file means "VM in error", not "VM gone".

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::Serialize;

use crate::config::Config;
use crate::model::{HostAddr, IfName, Mac, Migration, Source, VmName};
use crate::store::Snapshot;

/// The metric the kernel gives a route added without one: 0 for IPv4, 1024 for IPv6.
pub fn default_metric(addr: IpAddr) -> u32 {
    if addr.is_ipv4() { 0 } else { 1024 }
}

/// An address with its prefix length, as on an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct IfAddr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl fmt::Display for IfAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// What the bridge must look like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeSpec {
    pub name: IfName,
    pub mac: Mac,
    pub mtu: u32,
    /// The gateways: 169.254.0.1/32 and fe80::1/64 (added with nodad).
    pub addrs: BTreeSet<IfAddr>,
    /// `/proc/sys` keys (relative, `net/ipv4/...`) and their values.
    pub sysctls: BTreeMap<String, String>,
}

impl BridgeSpec {
    pub fn from_config(cfg: &Config) -> BridgeSpec {
        let br = cfg.bridge.name.as_str();
        let sysctls = [
            ("net/ipv4/ip_forward".to_string(), "1"),
            ("net/ipv6/conf/all/forwarding".to_string(), "1"),
            // The effective IPv4 value is all OR dev, so both must be 0.
            ("net/ipv4/conf/all/send_redirects".to_string(), "0"),
            (format!("net/ipv4/conf/{br}/send_redirects"), "0"),
            (format!("net/ipv6/conf/{br}/accept_ra"), "0"),
            (format!("net/ipv6/conf/{br}/keep_addr_on_down"), "1"),
        ]
        .into_iter()
        .map(|(k, v)| (k, v.to_string()))
        .collect();
        BridgeSpec {
            name: cfg.bridge.name.clone(),
            mac: cfg.bridge.mac,
            mtu: cfg.bridge.mtu,
            addrs: [
                IfAddr { addr: IpAddr::V4(cfg.bridge.gateway4), prefix: 32 },
                IfAddr { addr: IpAddr::V6(cfg.bridge.gateway6), prefix: 64 },
            ]
            .into(),
            sysctls,
        }
    }
}

/// The desired kernel state, derived from config and store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    pub bridge: BridgeSpec,
    /// Address to the MAC of the NIC that holds it; one route and one neighbour each.
    pub addrs: BTreeMap<IpAddr, Mac>,
    /// Ports bound to VMs by name (`--port`, the hook's target dev).
    pub bound_ports: BTreeSet<IfName>,
    /// The port each NIC is bound to by name; a hook entry's wins over others'.
    pub nic_ports: BTreeMap<Mac, IfName>,
    /// The guards' settings (`None`: `guard.enabled = false`); see `guard.rs`.
    pub guard: Option<crate::guard::GuardConfig>,
    /// libvirt tap MACs (VM MAC with first octet `fe`) of every known NIC.
    pub tap_macs: BTreeSet<Mac>,
    /// Volatile entries from an earlier boot, waiting to be re-asserted.
    pub parked: BTreeSet<VmName>,
    /// Hook entries of an incoming live migration that has not started here yet: their
    /// addresses are held, not routed.
    pub incoming: BTreeSet<VmName>,
    /// Addresses whose advertisement is not the baseline: VMs in a live migration
    /// (design.md §5); only with `migration.make_before_break`.
    pub preference: BTreeMap<IpAddr, Preference>,
    /// Addresses of CloudStack shim entries that no hook entry describes: routed only
    /// while the NIC's tap (libvirt's tap MAC, `fe:` + the VM MAC's last five octets) is a
    /// port of the bridge (see [`Desired::routed`]).
    pub pending: BTreeMap<IpAddr, Mac>,
    /// Addresses two active VMs claim with different MACs; the first VM by name wins.
    pub conflicts: Vec<String>,
    /// False while any state file is unreadable: then nothing owned is deleted.
    pub deletions_allowed: bool,
    /// The host's loopback /32 and /128 (`bgp.loopback4/6`), which must be on `lo`: they are
    /// advertised, and they are the source of ICMP errors on unnumbered uplinks.
    pub loopbacks: BTreeSet<IfAddr>,
}

/// How an address is advertised when not at the baseline (design.md §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Preference {
    /// Still paused here while the source runs it: the source must keep winning.
    Incoming,
    /// Just arrived: this host must strictly win.
    Arrived,
}

impl Desired {
    pub fn build(cfg: &Config, snap: &Snapshot, boot_id: &str) -> Desired {
        let mut d = Desired {
            bridge: BridgeSpec::from_config(cfg),
            addrs: BTreeMap::new(),
            bound_ports: BTreeSet::new(),
            nic_ports: BTreeMap::new(),
            guard: crate::guard::GuardConfig::from_config(cfg),
            tap_macs: BTreeSet::new(),
            parked: BTreeSet::new(),
            incoming: BTreeSet::new(),
            preference: BTreeMap::new(),
            pending: BTreeMap::new(),
            conflicts: Vec::new(),
            deletions_allowed: snap.errors.is_empty(),
            loopbacks: [cfg.bgp.loopback4.map(IpAddr::V4), cfg.bgp.loopback6.map(IpAddr::V6)]
                .into_iter()
                .flatten()
                .map(|addr| IfAddr { addr, prefix: if addr.is_ipv4() { 32 } else { 128 } })
                .collect(),
        };
        let mut holder: BTreeMap<IpAddr, &VmName> = BTreeMap::new();
        // The hook's view of each NIC, by MAC (design.md §3, identity): a CloudStack shim
        // entry for the same NIC shares its state.
        let hook_nics: BTreeMap<Mac, Option<Migration>> = snap
            .vms
            .values()
            .filter(|v| v.source == Source::Hook && !v.is_parked(boot_id))
            .flat_map(|v| v.nics.iter().map(move |n| (n.mac, v.migration)))
            .collect();
        for vm in snap.vms.values() {
            for nic in &vm.nics {
                d.tap_macs.insert(nic.mac.tap_mac());
                if let Some(p) = &nic.port {
                    d.bound_ports.insert(p.clone());
                    if vm.source == Source::Hook || !d.nic_ports.contains_key(&nic.mac) {
                        d.nic_ports.insert(nic.mac, p.clone());
                    }
                }
            }
            if vm.is_parked(boot_id) {
                d.parked.insert(vm.name.clone());
                continue;
            }
            if vm.is_incoming() {
                d.incoming.insert(vm.name.clone());
                continue;
            }
            for (mac, HostAddr(ip)) in vm.addresses() {
                // Files are validated when written; re-check the pools so that a
                // hand-edited file or a shrunk pool cannot route a foreign prefix.
                if !cfg.pools.contains(ip) {
                    d.conflicts
                        .push(format!("VM {}: address {ip} is outside the pools; not routed", vm.name));
                    continue;
                }
                // A shim entry follows the hook's view of its NIC; with none (yet), it
                // waits for its tap to appear on the bridge.
                let migration = match (vm.source, hook_nics.get(&mac)) {
                    (Source::Shim, None) => {
                        d.pending.insert(ip, mac);
                        continue;
                    }
                    (Source::Shim, Some(Some(Migration::Incoming))) => continue,
                    (Source::Shim, Some(m)) => *m,
                    _ => vm.migration,
                };
                match d.addrs.get(&ip) {
                    Some(m) if *m != mac => d.conflicts.push(format!(
                        "VM {}: address {ip} is already held by VM {} with another MAC; not routed",
                        vm.name, holder[&ip]
                    )),
                    _ => {
                        d.addrs.insert(ip, mac);
                        holder.insert(ip, &vm.name);
                        let pref = match migration {
                            _ if !cfg.migration.make_before_break => None,
                            Some(Migration::Arriving) => Some(Preference::Incoming),
                            Some(Migration::Arrived { .. }) => Some(Preference::Arrived),
                            _ => None,
                        };
                        if let Some(p) = pref {
                            d.preference.insert(ip, p);
                        }
                    }
                }
            }
        }
        // A pending address that an active entry routes anyway is that entry's.
        d.pending.retain(|ip, _| !d.addrs.contains_key(ip));
        d
    }

    /// The addresses to route, given what is observed: every address of [`Desired::addrs`],
    /// and each pending one whose NIC's tap is a port of the bridge.
    pub fn routed<'a>(&'a self, o: &Observed) -> std::borrow::Cow<'a, BTreeMap<IpAddr, Mac>> {
        if self.pending.is_empty() {
            return std::borrow::Cow::Borrowed(&self.addrs);
        }
        let taps: BTreeSet<Mac> =
            o.bridge.iter().flat_map(|b| b.ports.iter().filter_map(|p| p.mac)).collect();
        let mut all = self.addrs.clone();
        all.extend(
            self.pending.iter().filter(|(_, mac)| taps.contains(&mac.tap_mac())).map(|(a, m)| (*a, *m)),
        );
        std::borrow::Cow::Owned(all)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PortKind {
    Tun,
    Veth,
    Other(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PortObs {
    pub name: String,
    pub kind: PortKind,
    pub mac: Option<Mac>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeObs {
    pub ifindex: u32,
    /// False when a link of that name exists but is not a bridge.
    pub is_bridge: bool,
    pub up: bool,
    pub mac: Option<Mac>,
    pub mtu: u32,
    pub addrs: BTreeSet<IfAddr>,
    pub ports: Vec<PortObs>,
}

/// An hvroute-owned route in the main table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RouteKey {
    pub addr: IpAddr,
    pub metric: u32,
    pub ifindex: u32,
}

/// What the kernel holds, of what hvroute owns or manages.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    pub bridge: Option<BridgeObs>,
    /// Current values of the desired sysctl keys that exist.
    pub sysctls: BTreeMap<String, String>,
    /// Host routes carrying hvroute's protocol number.
    pub routes: BTreeSet<RouteKey>,
    /// Neighbours carrying hvroute's protocol number: (address, ifindex) to MAC.
    pub neighs: BTreeMap<(IpAddr, u32), Option<Mac>>,
    /// hvroute's nftables rule dropping ICMPv6 redirects out of the bridge is in place.
    pub redirect_filter: bool,
    /// Addresses on `lo`.
    pub loopback_addrs: BTreeSet<IfAddr>,
    /// hvroute's guard objects (nftables, port isolation).
    pub guard: crate::guard::GuardObs,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Bring the bridge up if it is down. Done when hvroute starts or creates the bridge;
    /// a running daemon leaves an admin's `ip link set down` alone and waits for link up.
    pub bring_up: bool,
}

/// One step. Route and neighbour ops name the bridge implicitly: the executor resolves
/// its ifindex, which may not exist yet when the plan is made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    CreateBridge {
        name: String,
        mac: Mac,
        mtu: u32,
    },
    SetBridgeMac {
        mac: Mac,
    },
    SetBridgeMtu {
        mtu: u32,
    },
    AddBridgeAddr {
        addr: IfAddr,
    },
    SetSysctl {
        key: String,
        value: String,
    },
    SetBridgeUp,
    /// Drop ICMPv6 redirects out of the bridge (nftables table `inet hvroute`).
    InstallRedirectFilter,
    /// Put a host loopback address on `lo`.
    AddLoopbackAddr {
        addr: IfAddr,
    },
    DelNeigh {
        addr: IpAddr,
        ifindex: u32,
    },
    DelRoute {
        addr: IpAddr,
        metric: u32,
        ifindex: u32,
    },
    ReplaceRoute {
        addr: IpAddr,
    },
    ReplaceNeigh {
        addr: IpAddr,
        mac: Mac,
    },
    /// The guards' base: tables, hook chains, host protection (docs/guards.md).
    GuardBase {
        base: crate::guard::Base,
    },
    /// The ports of the managed bridge that filtering applies to (default deny).
    GuardPorts {
        ports: BTreeSet<String>,
        /// The bridge's physical ports, known and unfiltered.
        trusted: BTreeSet<String>,
    },
    /// A NIC's chain, and its port's map element (`replace`: the element exists).
    GuardNic {
        port: String,
        nic: crate::guard::NicRules,
        replace: bool,
    },
    /// A port no longer bound to a NIC.
    UnguardPort {
        port: String,
    },
    /// A NIC chain no port uses.
    DelGuardChain {
        chain: String,
    },
    /// `isolated on` for a VM's port.
    IsolatePort {
        port: String,
    },
    /// Guards off: hvroute's guard tables and chains go.
    RemoveGuards,
}

impl Op {
    /// The address a route or neighbour op is about.
    pub fn addr(&self) -> Option<IpAddr> {
        match self {
            Op::ReplaceRoute { addr }
            | Op::ReplaceNeigh { addr, .. }
            | Op::DelRoute { addr, .. }
            | Op::DelNeigh { addr, .. } => Some(*addr),
            _ => None,
        }
    }

    /// The kind, for counters and summaries.
    pub fn kind(&self) -> &'static str {
        match self {
            Op::CreateBridge { .. }
            | Op::SetBridgeMac { .. }
            | Op::SetBridgeMtu { .. }
            | Op::AddBridgeAddr { .. }
            | Op::SetSysctl { .. }
            | Op::SetBridgeUp
            | Op::InstallRedirectFilter
            | Op::AddLoopbackAddr { .. } => "bridge",
            Op::GuardBase { .. }
            | Op::GuardPorts { .. }
            | Op::GuardNic { .. }
            | Op::UnguardPort { .. }
            | Op::DelGuardChain { .. }
            | Op::IsolatePort { .. }
            | Op::RemoveGuards => "guard",
            Op::DelNeigh { .. } => "neigh_del",
            Op::DelRoute { .. } => "route_del",
            Op::ReplaceRoute { .. } => "route_add",
            Op::ReplaceNeigh { .. } => "neigh_add",
        }
    }
}

/// A plan, printable for `--dry-run` and comparable in golden tests.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Plan {
    pub bridge: String,
    pub proto: u8,
    pub ops: Vec<Op>,
    /// Why route and neighbour work is waiting, if it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiting: Option<String>,
    /// Owned objects that would be deleted but for an unreadable state file.
    pub held_deletions: usize,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    pub fn counts(&self) -> BTreeMap<&'static str, usize> {
        let mut c = BTreeMap::new();
        for op in &self.ops {
            *c.entry(op.kind()).or_default() += 1;
        }
        c
    }
}

fn prefix_len(addr: IpAddr) -> u8 {
    if addr.is_ipv4() { 32 } else { 128 }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let br = &self.bridge;
        let p = self.proto;
        for op in &self.ops {
            match op {
                Op::CreateBridge { name, mac, mtu } => {
                    writeln!(f, "+ link {name} type bridge address {mac} mtu {mtu}")?
                }
                Op::SetBridgeMac { mac } => writeln!(f, "~ link {br} address {mac}")?,
                Op::SetBridgeMtu { mtu } => writeln!(f, "~ link {br} mtu {mtu}")?,
                Op::AddBridgeAddr { addr } => writeln!(f, "+ addr {addr} dev {br} nodad")?,
                Op::SetSysctl { key, value } => writeln!(f, "~ sysctl {}={value}", key.replace('/', "."))?,
                Op::SetBridgeUp => writeln!(f, "~ link {br} up")?,
                Op::AddLoopbackAddr { addr } => writeln!(f, "+ addr {addr} dev lo")?,
                Op::InstallRedirectFilter => {
                    writeln!(f, "+ nft table inet hvroute: {}", crate::kernel::nft::redirect_rule(br))?
                }
                Op::DelNeigh { addr, ifindex } => writeln!(f, "- neigh {addr} ifindex {ifindex} proto {p}")?,
                Op::DelRoute { addr, metric, ifindex } => writeln!(
                    f,
                    "- route {addr}/{} ifindex {ifindex} metric {metric} proto {p}",
                    prefix_len(*addr)
                )?,
                Op::ReplaceRoute { addr } => {
                    writeln!(f, "+ route {addr}/{} dev {br} proto {p}", prefix_len(*addr))?
                }
                Op::ReplaceNeigh { addr, mac } => {
                    writeln!(f, "+ neigh {addr} lladdr {mac} dev {br} nud permanent proto {p}")?
                }
                Op::GuardBase { base } => writeln!(
                    f,
                    "~ guard base: bridge ports default deny, host protection, uplinks {}",
                    base.uplinks.iter().cloned().collect::<Vec<_>>().join(",")
                )?,
                Op::GuardPorts { ports, trusted } => writeln!(
                    f,
                    "~ guard ports: {} ports of the bridge, {} physical",
                    ports.len(),
                    trusted.len()
                )?,
                Op::GuardNic { port, nic, .. } => writeln!(
                    f,
                    "~ guard {port}: MAC {} with {} IPv4, {} IPv6 addresses",
                    nic.mac,
                    nic.v4.len(),
                    nic.v6.len()
                )?,
                Op::UnguardPort { port } => writeln!(f, "- guard {port}")?,
                Op::DelGuardChain { chain } => writeln!(f, "- guard chain {chain}")?,
                Op::IsolatePort { port } => writeln!(f, "~ link {port} isolated on")?,
                Op::RemoveGuards => writeln!(f, "- guards (guard.enabled = false)")?,
            }
        }
        if let Some(w) = &self.waiting {
            writeln!(f, "# waiting: {w}")?;
        }
        if self.held_deletions > 0 {
            writeln!(
                f,
                "# {} deletions held back: a state file is unreadable (see `hvroute status`)",
                self.held_deletions
            )?;
        }
        Ok(())
    }
}

/// Computes the ops that take `observed` to `desired`.
/// The additions that a change of the desired state from `prev` to `next` needs, planned
/// without observing the kernel: a route and a permanent neighbour for each address that
/// `next` holds and `prev` did not (or held for another MAC). These are the ops a full
/// [`plan`] issues for such an address, and they have replace semantics, so the daemon
/// applies them at once (the kernel route is what lets import-check advertise the prefix)
/// and the full pass that follows finds them in place. Deletions are left to the full
/// pass, which sees what is really there. `None` when more than `max` addresses changed:
/// then the full pass is as quick.
pub fn quick_adds(prev: &Desired, next: &Desired, proto: u8, max: usize) -> Option<Plan> {
    let new: Vec<(IpAddr, Mac)> = next
        .addrs
        .iter()
        .filter(|(addr, mac)| prev.addrs.get(addr) != Some(mac))
        .take(max + 1)
        .map(|(a, m)| (*a, *m))
        .collect();
    (new.len() <= max).then(|| additions(&next.bridge.name, proto, new))
}

/// The route and permanent neighbour of each (address, MAC), as a plan: what a full plan
/// adds for an address it does not observe. Shared by [`quick_adds`] and the daemon's
/// `vm add`, which knows a new VM's addresses before any pass.
pub fn additions(bridge: &IfName, proto: u8, addrs: impl IntoIterator<Item = (IpAddr, Mac)>) -> Plan {
    let ops = addrs
        .into_iter()
        .flat_map(|(addr, mac)| [Op::ReplaceRoute { addr }, Op::ReplaceNeigh { addr, mac }])
        .collect();
    Plan { bridge: bridge.to_string(), proto, ops, ..Plan::default() }
}

pub fn plan(d: &Desired, o: &Observed, opts: Options, proto: u8) -> Plan {
    let mut p = Plan { bridge: d.bridge.name.to_string(), proto, ..Plan::default() };
    let bridge = plan_bridge(d, o, opts, &mut p);
    p.ops.extend(crate::guard::plan(crate::guard::want(d, o).as_ref(), &o.guard, None));
    if let Some(bridge_ifindex) = bridge {
        plan_entries(&d.routed(o), &o.routes, &o.neighs, bridge_ifindex, d.deletions_allowed, &mut p);
    }
    p
}

/// The plan for one VM's addresses and nothing else: what the libvirt hook applies at
/// `started` and `release`, without a full pass and whether or not the daemon runs.
///
/// - `addrs` are the addresses the VM has or had. Each one that `d` routes gets its
///   route and permanent neighbour (replaced only when missing or wrong, as in [`plan`]);
///   each one that `d` does not route loses the owned route and neighbour observed for it
///   (held back, as in [`plan`], while a state file is unreadable).
/// - No op names an address outside `addrs`, whatever else is observed: other VMs'
///   objects are a full pass's business, so a hook can never delete them.
/// - With `create_bridge`, a missing bridge is set up as a pass sets it up, and brought
///   up; without, a missing bridge makes the plan wait (there is nothing on it to
///   withdraw). An existing bridge is not changed at all: taking a bridge over is the
///   daemon's decision, made with its take-over check. A bridge that is down, or a link
///   of that name that is not a bridge, makes the route and neighbour work wait.
pub fn plan_vm(d: &Desired, o: &Observed, addrs: &BTreeSet<IpAddr>, create_bridge: bool, proto: u8) -> Plan {
    let mut p = Plan { bridge: d.bridge.name.to_string(), proto, ..Plan::default() };
    let routed = d.routed(o);
    let want: BTreeMap<IpAddr, Mac> =
        addrs.iter().filter_map(|a| routed.get(a).map(|mac| (*a, *mac))).collect();
    let bridge_ifindex = match &o.bridge {
        None if create_bridge => match plan_bridge(d, o, Options { bring_up: true }, &mut p) {
            Some(i) => i,
            None => return p,
        },
        None => {
            p.waiting = Some(format!("bridge {} does not exist", d.bridge.name));
            return p;
        }
        Some(ob) if !ob.is_bridge => {
            p.waiting = Some(format!(
                "{} exists but is not a bridge; {} routes and neighbours wait",
                d.bridge.name,
                want.len()
            ));
            return p;
        }
        Some(ob) if !ob.up => {
            p.waiting = Some(down_message(&d.bridge.name, want.len()));
            return p;
        }
        Some(ob) => Some(ob.ifindex),
    };
    // This VM's guards (and the base, when missing) go in before its routes.
    // (A VM with nothing routed here, as at `release`, leaves its chain to the next pass.)
    let macs: BTreeSet<Mac> = want.values().copied().collect();
    if !macs.is_empty()
        && let Some(w) = crate::guard::want(d, o)
    {
        p.ops.extend(crate::guard::plan(Some(&w), &o.guard, Some(&macs)));
    }
    let routes: BTreeSet<RouteKey> = o.routes.iter().filter(|r| addrs.contains(&r.addr)).copied().collect();
    let neighs: BTreeMap<(IpAddr, u32), Option<Mac>> =
        o.neighs.iter().filter(|((a, _), _)| addrs.contains(a)).map(|(k, v)| (*k, *v)).collect();
    plan_entries(&want, &routes, &neighs, bridge_ifindex, d.deletions_allowed, &mut p);
    p
}

fn down_message(bridge: &IfName, n: usize) -> String {
    format!("bridge {bridge} is down; {n} routes and neighbours wait for link up")
}

/// The bridge's own ops: the bridge, its gateways and sysctls, the redirect filter, the
/// loopbacks. Returns the bridge's ifindex (`None` while this plan creates it) when route
/// and neighbour work can go ahead; `None` when the bridge is down (`p.waiting` says so).
fn plan_bridge(d: &Desired, o: &Observed, opts: Options, p: &mut Plan) -> Option<Option<u32>> {
    let b = &d.bridge;
    let (bridge_ifindex, up) = match &o.bridge {
        None => {
            p.ops.push(Op::CreateBridge { name: b.name.to_string(), mac: b.mac, mtu: b.mtu });
            p.ops.extend(b.addrs.iter().map(|a| Op::AddBridgeAddr { addr: *a }));
            (None, false)
        }
        Some(ob) => {
            if ob.mac != Some(b.mac) {
                p.ops.push(Op::SetBridgeMac { mac: b.mac });
            }
            if ob.mtu != b.mtu {
                p.ops.push(Op::SetBridgeMtu { mtu: b.mtu });
            }
            p.ops.extend(b.addrs.difference(&ob.addrs).map(|a| Op::AddBridgeAddr { addr: *a }));
            (Some(ob.ifindex), ob.up)
        }
    };
    for (k, v) in &b.sysctls {
        if o.sysctls.get(k) != Some(v) {
            p.ops.push(Op::SetSysctl { key: k.clone(), value: v.clone() });
        }
    }
    if !o.redirect_filter {
        p.ops.push(Op::InstallRedirectFilter);
    }
    p.ops.extend(d.loopbacks.difference(&o.loopback_addrs).map(|a| Op::AddLoopbackAddr { addr: *a }));
    let up = if !up && opts.bring_up {
        p.ops.push(Op::SetBridgeUp);
        true
    } else {
        up
    };
    if !up {
        p.waiting = Some(down_message(&b.name, d.addrs.len()));
        return None;
    }
    Some(bridge_ifindex)
}

/// Routes and neighbours: one route (default metric, on the bridge) and one permanent
/// neighbour (with its MAC, on the bridge) per wanted address; every other owned route or
/// neighbour in `routes` and `neighs` goes, unless deletions are held back.
fn plan_entries(
    want: &BTreeMap<IpAddr, Mac>,
    routes: &BTreeSet<RouteKey>,
    neighs: &BTreeMap<(IpAddr, u32), Option<Mac>>,
    bridge_ifindex: Option<u32>,
    deletions_allowed: bool,
    p: &mut Plan,
) {
    // Both sides are sorted by address, so one merge walk pairs them: O(n), which keeps
    // a no-op pass at 10,000 VMs cheap.
    let on_bridge = |ifindex: u32| Some(ifindex) == bridge_ifindex;

    // Routes: exactly one per desired address, default metric, on the bridge.
    let mut route_adds = Vec::new();
    let mut dels = Vec::new();
    let mut unwanted_route = |r: &RouteKey, p: &mut Plan| {
        if deletions_allowed {
            dels.push(Op::DelRoute { addr: r.addr, metric: r.metric, ifindex: r.ifindex });
        } else {
            p.held_deletions += 1;
        }
    };
    let mut obs = routes.iter().peekable();
    let mut wrong_routes = Vec::new();
    for &addr in want.keys() {
        while let Some(r) = obs.next_if(|r| r.addr < addr) {
            unwanted_route(r, p);
        }
        let mut have = false;
        while let Some(r) = obs.next_if(|r| r.addr == addr) {
            if !have && r.metric == default_metric(addr) && on_bridge(r.ifindex) {
                have = true;
            } else {
                // A duplicate or misplaced route of a wanted address always goes.
                wrong_routes.push(*r);
            }
        }
        if !have {
            route_adds.push(Op::ReplaceRoute { addr });
        }
    }
    for r in obs {
        unwanted_route(r, p);
    }
    dels.extend(wrong_routes.iter().map(|r| Op::DelRoute {
        addr: r.addr,
        metric: r.metric,
        ifindex: r.ifindex,
    }));
    dels.sort_by_key(|op| match op {
        Op::DelRoute { addr, metric, ifindex } => (*addr, *metric, *ifindex),
        _ => unreachable!("only route deletions here"),
    });

    // Neighbours: one permanent entry per desired address, on the bridge, with its MAC.
    let mut neigh_dels = Vec::new();
    let mut neigh_adds = Vec::new();
    let mut obs = neighs.iter().peekable();
    let unwanted_neigh = |addr: IpAddr, ifindex: u32, p: &mut Plan, dels: &mut Vec<Op>| {
        if deletions_allowed {
            dels.push(Op::DelNeigh { addr, ifindex });
        } else {
            p.held_deletions += 1;
        }
    };
    for (&addr, mac) in want {
        while let Some((&(a, i), _)) = obs.next_if(|((a, _), _)| *a < addr) {
            unwanted_neigh(a, i, p, &mut neigh_dels);
        }
        let mut have = false;
        while let Some((&(_, i), m)) = obs.next_if(|((a, _), _)| *a == addr) {
            if on_bridge(i) {
                // A wrong MAC on the bridge is fixed by the replace below.
                have |= m.as_ref() == Some(mac);
            } else {
                neigh_dels.push(Op::DelNeigh { addr, ifindex: i });
            }
        }
        if !have {
            neigh_adds.push(Op::ReplaceNeigh { addr, mac: *mac });
        }
    }
    for (&(a, i), _) in obs {
        unwanted_neigh(a, i, p, &mut neigh_dels);
    }

    p.ops.extend(neigh_dels);
    p.ops.extend(dels);
    p.ops.extend(route_adds);
    p.ops.extend(neigh_adds);
}

/// Why hvroute will not take over an existing bridge without `--force`: a port that is
/// not a VM's (a physical NIC, a bond, a veth bound to no VM), an address that is not
/// a gateway, or a link of that name that is no bridge. Empty when it may.
pub fn takeover_refusals(d: &Desired, o: &Observed) -> Vec<String> {
    let Some(ob) = &o.bridge else { return Vec::new() };
    let name = &d.bridge.name;
    let mut why = Vec::new();
    if !ob.is_bridge {
        why.push(format!("{name} exists but is not a bridge"));
        return why;
    }
    for port in &ob.ports {
        let bound = d.bound_ports.iter().any(|p| p.as_str() == port.name)
            || port.mac.is_some_and(|m| d.tap_macs.contains(&m))
            || port.kind == PortKind::Tun;
        if !bound {
            let kind = match &port.kind {
                PortKind::Tun => "tap".to_string(),
                PortKind::Veth => "veth".to_string(),
                PortKind::Other(k) => k.clone(),
            };
            why.push(format!("bridge {name} has port {} ({kind}) that is bound to no VM", port.name));
        }
    }
    for a in &ob.addrs {
        let auto_link_local = matches!(a.addr, IpAddr::V6(v6) if v6.is_unicast_link_local());
        if !d.bridge.addrs.contains(a) && !auto_link_local {
            why.push(format!("bridge {name} carries address {a}, which is not one of hvroute's gateways"));
        }
    }
    why
}

/// Address families helper for tests and callers that need a literal gateway.
pub const GW4: Ipv4Addr = Ipv4Addr::new(169, 254, 0, 1);
pub const GW6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Nic, Source, VmSpec};

    /// Guards off: these tests are about routes and neighbours (guards: `cfg_guarded`).
    fn cfg() -> Config {
        Config::parse(
            "[pools]\nipv4=[\"192.0.2.0/24\"]\nipv6=[\"2001:db8:100::/40\"]\n[bgp]\nasn=65001\nrouter_id=\"10.255.0.1\"\n\
             [guard]\nenabled=false\n",
        )
        .unwrap()
    }

    fn cfg_guarded() -> Config {
        Config::parse(
            "[pools]\nipv4=[\"192.0.2.0/24\"]\nipv6=[\"2001:db8:100::/40\"]\n[bgp]\nasn=65001\nrouter_id=\"10.255.0.1\"\n\
             [[bgp.peer]]\ninterface=\"uplink0\"\nremote_as=\"external\"\n",
        )
        .unwrap()
    }

    fn vm(name: &str, mac: &str, ips: &[&str], source: Source, boot: Option<&str>) -> VmSpec {
        VmSpec {
            name: name.parse().unwrap(),
            nics: vec![Nic {
                mac: mac.parse().unwrap(),
                addresses: ips.iter().map(|s| s.parse().unwrap()).collect(),
                port: None,
            }],
            source,
            boot_id: boot.map(str::to_owned),
            migration: None,
        }
    }

    fn snap(vms: Vec<VmSpec>) -> Snapshot {
        Snapshot {
            vms: vms.into_iter().map(|v| (v.name.clone(), std::sync::Arc::new(v))).collect(),
            errors: BTreeMap::new(),
        }
    }

    fn up_bridge(d: &Desired) -> Observed {
        Observed {
            bridge: Some(BridgeObs {
                ifindex: 7,
                is_bridge: true,
                up: true,
                mac: Some(d.bridge.mac),
                mtu: d.bridge.mtu,
                addrs: d.bridge.addrs.clone(),
                ports: vec![],
            }),
            sysctls: d.bridge.sysctls.clone(),
            redirect_filter: true,
            ..Observed::default()
        }
    }

    /// Golden: a cold start on an empty host creates the bridge and everything on it.
    #[test]
    fn cold_plan_is_stable() {
        let c = cfg_guarded();
        let d = Desired::build(
            &c,
            &snap(vec![
                vm("vm1", "52:54:00:00:00:01", &["192.0.2.10", "2001:db8:100::10"], Source::Cli, None),
                vm("vm2", "52:54:00:00:00:02", &["2001:db8:100::20"], Source::Cli, None),
            ]),
            "boot-a",
        );
        let p = plan(&d, &Observed::default(), Options { bring_up: true }, 44);
        let want = "\
+ link cloudbr0 type bridge address 0e:00:00:00:00:01 mtu 1500
+ addr 169.254.0.1/32 dev cloudbr0 nodad
+ addr fe80::1/64 dev cloudbr0 nodad
~ sysctl net.ipv4.conf.all.send_redirects=0
~ sysctl net.ipv4.conf.cloudbr0.send_redirects=0
~ sysctl net.ipv4.ip_forward=1
~ sysctl net.ipv6.conf.all.forwarding=1
~ sysctl net.ipv6.conf.cloudbr0.accept_ra=0
~ sysctl net.ipv6.conf.cloudbr0.keep_addr_on_down=1
+ nft table inet hvroute: oifname \"cloudbr0\" icmpv6 type nd-redirect drop
~ link cloudbr0 up
~ guard base: bridge ports default deny, host protection, uplinks uplink0
+ route 192.0.2.10/32 dev cloudbr0 proto 44
+ route 2001:db8:100::10/128 dev cloudbr0 proto 44
+ route 2001:db8:100::20/128 dev cloudbr0 proto 44
+ neigh 192.0.2.10 lladdr 52:54:00:00:00:01 dev cloudbr0 nud permanent proto 44
+ neigh 2001:db8:100::10 lladdr 52:54:00:00:00:01 dev cloudbr0 nud permanent proto 44
+ neigh 2001:db8:100::20 lladdr 52:54:00:00:00:02 dev cloudbr0 nud permanent proto 44
";
        assert_eq!(p.to_string(), want);
    }

    /// A VM removed from the store loses exactly its route and neighbour.
    #[test]
    fn removal_deletes_only_what_is_gone() {
        let c = cfg();
        let d = Desired::build(
            &c,
            &snap(vec![vm("a", "52:54:00:00:00:01", &["192.0.2.1"], Source::Cli, None)]),
            "b",
        );
        let mut o = up_bridge(&d);
        for a in ["192.0.2.1", "192.0.2.2"] {
            let ip: IpAddr = a.parse().unwrap();
            o.routes.insert(RouteKey { addr: ip, metric: 0, ifindex: 7 });
            o.neighs.insert((ip, 7), Some("52:54:00:00:00:01".parse().unwrap()));
        }
        let p = plan(&d, &o, Options::default(), 44);
        assert_eq!(
            p.to_string(),
            "- neigh 192.0.2.2 ifindex 7 proto 44\n- route 192.0.2.2/32 ifindex 7 metric 0 proto 44\n"
        );
    }

    /// An unreadable state file must not withdraw anybody's routes.
    #[test]
    fn unreadable_state_holds_deletions() {
        let c = cfg();
        let mut s = snap(vec![]);
        s.errors.insert("x.json".into(), "not valid JSON".into());
        let d = Desired::build(&c, &s, "b");
        let mut o = up_bridge(&d);
        o.routes.insert(RouteKey { addr: "192.0.2.9".parse().unwrap(), metric: 0, ifindex: 7 });
        let p = plan(&d, &o, Options::default(), 44);
        assert!(p.ops.is_empty());
        assert_eq!(p.held_deletions, 1);
    }

    /// After a host reboot, hook entries of the old boot are parked: no route.
    #[test]
    fn volatile_entries_of_an_old_boot_are_parked() {
        let c = cfg();
        let d = Desired::build(
            &c,
            &snap(vec![
                vm("old", "52:54:00:00:00:01", &["192.0.2.1"], Source::Hook, Some("boot-a")),
                vm("now", "52:54:00:00:00:02", &["192.0.2.2"], Source::Hook, Some("boot-b")),
                vm("admin", "52:54:00:00:00:03", &["192.0.2.3"], Source::Cli, None),
            ]),
            "boot-b",
        );
        assert_eq!(d.parked.len(), 1);
        let ips: Vec<String> = d.addrs.keys().map(|a| a.to_string()).collect();
        assert_eq!(ips, ["192.0.2.2", "192.0.2.3"]);
    }

    /// A down bridge is respected by a running daemon; routes wait for link up.
    #[test]
    fn down_bridge_waits_unless_bringing_up() {
        let c = cfg();
        let d = Desired::build(
            &c,
            &snap(vec![vm("a", "52:54:00:00:00:01", &["192.0.2.1"], Source::Cli, None)]),
            "b",
        );
        let mut o = up_bridge(&d);
        o.bridge.as_mut().unwrap().up = false;
        let p = plan(&d, &o, Options::default(), 44);
        assert!(p.ops.is_empty() && p.waiting.is_some());
        let p = plan(&d, &o, Options { bring_up: true }, 44);
        assert_eq!(p.ops[0], Op::SetBridgeUp);
        assert_eq!(p.ops.len(), 3);
    }

    /// Without the loopback on `lo`, the loopback's `network` line is never advertised
    /// and ICMP errors on unnumbered uplinks have no routable source.
    #[test]
    fn loopbacks_are_put_on_lo_once() {
        let c = Config::parse(
            "[pools]\nipv4=[\"192.0.2.0/24\"]\n[bgp]\nasn=65001\nrouter_id=\"10.255.0.1\"\n\
             loopback4=\"198.51.100.1\"\nloopback6=\"2001:db8:ffff::1\"\n[guard]\nenabled=false\n",
        )
        .unwrap();
        let d = Desired::build(&c, &snap(vec![]), "b");
        let mut k = crate::kernel::fake::Fake::new();
        k.state = up_bridge(&d);
        let p = plan(&d, &k.observe_now(&d), Options::default(), 44);
        assert_eq!(p.to_string(), "+ addr 198.51.100.1/32 dev lo\n+ addr 2001:db8:ffff::1/128 dev lo\n");
        assert!(k.apply_now(&p).is_empty());
        assert!(plan(&d, &k.observe_now(&d), Options::default(), 44).is_empty());
    }

    /// Quick additions are exactly the route and neighbour work a full plan would do for
    /// the new addresses, so the full pass after them finds nothing left to add.
    #[test]
    fn quick_adds_are_what_the_full_plan_would_add() {
        let c = cfg();
        let a = vm("a", "52:54:00:00:00:01", &["192.0.2.1", "2001:db8:100::1"], Source::Cli, None);
        let b = vm("b", "52:54:00:00:00:02", &["192.0.2.2"], Source::Cli, None);
        let prev = Desired::build(&c, &snap(vec![a.clone()]), "boot");
        let mut k = crate::kernel::fake::Fake::new();
        k.state = up_bridge(&prev);
        assert!(k.apply_now(&plan(&prev, &k.observe_now(&prev), Options::default(), 44)).is_empty());
        // b arrives, and a's IPv6 address moves to a new MAC.
        let mut a2 = a.clone();
        a2.nics[0].mac = "52:54:00:00:00:09".parse().unwrap();
        a2.nics[0].addresses.remove(&"192.0.2.1".parse().unwrap());
        let a1 = vm("a1", "52:54:00:00:00:01", &["192.0.2.1"], Source::Cli, None);
        let next = Desired::build(&c, &snap(vec![a1, a2, b]), "boot");
        let q = quick_adds(&prev, &next, 44, 8).expect("small change");
        assert_eq!(
            q.to_string(),
            "+ route 192.0.2.2/32 dev cloudbr0 proto 44\n+ neigh 192.0.2.2 lladdr 52:54:00:00:00:02 dev cloudbr0 nud permanent proto 44\n\
             + route 2001:db8:100::1/128 dev cloudbr0 proto 44\n+ neigh 2001:db8:100::1 lladdr 52:54:00:00:00:09 dev cloudbr0 nud permanent proto 44\n"
        );
        assert!(k.apply_now(&q).is_empty());
        let rest = plan(&next, &k.observe_now(&next), Options::default(), 44);
        assert!(rest.is_empty(), "the full plan after quick adds: {rest}");
        assert!(quick_adds(&prev, &next, 44, 1).is_none(), "more than max");
        assert!(quick_adds(&next, &next, 44, 8).unwrap().is_empty());
    }

    /// Prevents: the hook's `started` or `release` for one VM deleting another VM's
    /// routes (a full pass from a hook that does not see the whole picture), or changing
    /// a bridge it did not create.
    #[test]
    fn plan_vm_touches_only_the_vms_addresses() {
        let c = cfg();
        let d = Desired::build(
            &c,
            &snap(vec![
                vm("a", "52:54:00:00:00:01", &["192.0.2.1", "2001:db8:100::1"], Source::Hook, Some("b")),
                vm("other", "52:54:00:00:00:02", &["192.0.2.2"], Source::Cli, None),
            ]),
            "b",
        );
        let mut o = up_bridge(&d);
        // The bridge has drifted (MTU, a missing gateway): a pass would fix it, the hook
        // leaves it alone.
        let ob = o.bridge.as_mut().unwrap();
        ob.mtu = 9000;
        ob.addrs.clear();
        let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
        // Another VM's route and an unwanted owned route: not this plan's business.
        o.routes.insert(RouteKey { addr: ip("192.0.2.3"), metric: 0, ifindex: 7 });
        o.neighs.insert((ip("192.0.2.3"), 7), None);
        // This VM: the IPv4 route exists with the wrong neighbour MAC; a stale address
        // (192.0.2.9, no longer the VM's) still has its objects.
        o.routes.insert(RouteKey { addr: ip("192.0.2.1"), metric: 0, ifindex: 7 });
        o.neighs.insert((ip("192.0.2.1"), 7), Some("52:54:00:00:00:09".parse().unwrap()));
        o.routes.insert(RouteKey { addr: ip("192.0.2.9"), metric: 0, ifindex: 7 });
        o.neighs.insert((ip("192.0.2.9"), 7), Some("52:54:00:00:00:01".parse().unwrap()));
        let addrs: BTreeSet<IpAddr> = [ip("192.0.2.1"), ip("2001:db8:100::1"), ip("192.0.2.9")].into();
        let p = plan_vm(&d, &o, &addrs, true, 44);
        assert_eq!(
            p.to_string(),
            "\
- neigh 192.0.2.9 ifindex 7 proto 44
- route 192.0.2.9/32 ifindex 7 metric 0 proto 44
+ route 2001:db8:100::1/128 dev cloudbr0 proto 44
+ neigh 192.0.2.1 lladdr 52:54:00:00:00:01 dev cloudbr0 nud permanent proto 44
+ neigh 2001:db8:100::1 lladdr 52:54:00:00:00:01 dev cloudbr0 nud permanent proto 44
"
        );
        // Applied to a kernel, planning again for the VM is empty, and the other objects
        // are still there.
        let mut k = crate::kernel::fake::Fake::new();
        k.state = o.clone();
        assert!(k.apply_now(&p).is_empty());
        let o2 = k.observe_now(&d);
        assert!(plan_vm(&d, &o2, &addrs, true, 44).is_empty());
        assert!(o2.routes.iter().any(|r| r.addr == ip("192.0.2.3")));
        assert_eq!(o2.bridge.as_ref().unwrap().mtu, 9000);

        // A release: the entry is gone from the store, so its addresses go, and only those.
        let gone = Desired::build(
            &c,
            &snap(vec![vm("other", "52:54:00:00:00:02", &["192.0.2.2"], Source::Cli, None)]),
            "b",
        );
        let p = plan_vm(&gone, &o2, &addrs, false, 44);
        assert!(p.ops.iter().all(|op| matches!(op, Op::DelRoute { .. } | Op::DelNeigh { .. })), "{p}");
        assert_eq!(p.ops.len(), 4, "{p}");
    }

    /// Prevents: the hook failing a VM start on a fresh host (no bridge yet), and a
    /// release creating a bridge just to find nothing on it.
    #[test]
    fn plan_vm_creates_a_missing_bridge_only_when_asked() {
        let c = cfg();
        let d = Desired::build(
            &c,
            &snap(vec![vm("a", "52:54:00:00:00:01", &["192.0.2.1"], Source::Hook, Some("b"))]),
            "b",
        );
        let addrs: BTreeSet<IpAddr> = d.addrs.keys().copied().collect();
        let p = plan_vm(&d, &Observed::default(), &addrs, true, 44);
        assert_eq!(p.ops[0], Op::CreateBridge { name: "cloudbr0".into(), mac: c.bridge.mac, mtu: 1500 });
        assert!(
            p.ops.contains(&Op::SetBridgeUp)
                && p.ops.contains(&Op::ReplaceRoute { addr: addrs.first().copied().unwrap() })
        );
        let p = plan_vm(&d, &Observed::default(), &addrs, false, 44);
        assert!(p.ops.is_empty() && p.waiting.is_some());
        // A down bridge is respected: the admin's `ip link set down` stays.
        let mut o = up_bridge(&d);
        o.bridge.as_mut().unwrap().up = false;
        let p = plan_vm(&d, &o, &addrs, true, 44);
        assert!(p.ops.is_empty() && p.waiting.as_deref().unwrap().contains("down"));
    }

    /// An incoming live migration holds its addresses but is not routed until started.
    #[test]
    fn incoming_migrations_are_not_routed() {
        let c = cfg();
        let mut v = vm("in", "52:54:00:00:00:01", &["192.0.2.1"], Source::Hook, Some("b"));
        v.migration = Some(crate::model::Migration::Incoming);
        let d = Desired::build(&c, &snap(vec![v.clone()]), "b");
        assert!(d.addrs.is_empty() && d.incoming.contains(&v.name));
        v.migration = Some(crate::model::Migration::Arriving);
        let d = Desired::build(&c, &snap(vec![v]), "b");
        assert_eq!(d.addrs.len(), 1);
    }

    /// Prevents: a CloudStack NIC plugged on a migration destination (before `migrate
    /// begin`) being routed and advertised at full preference while the VM still runs on
    /// the source; or a shim NIC on a host without the hook never being routed.
    #[test]
    fn a_shim_nic_shares_the_hooks_state_or_waits_for_its_tap() {
        let c = cfg();
        let mac = "52:54:00:00:00:01";
        let shim = vm("nic-52-54-00-00-00-01", mac, &["192.0.2.1", "192.0.2.2"], Source::Shim, Some("b"));
        let mut hook = vm("i-2-10-VM", mac, &["192.0.2.1"], Source::Hook, Some("b"));
        let a1: IpAddr = "192.0.2.1".parse().unwrap();
        let a2: IpAddr = "192.0.2.2".parse().unwrap();
        // No hook entry: pending until the tap (fe:54:00:00:00:01) is a port.
        let d = Desired::build(&c, &snap(vec![shim.clone()]), "b");
        assert!(d.addrs.is_empty() && d.pending.len() == 2);
        let mut o = up_bridge(&d);
        assert!(d.routed(&o).is_empty());
        o.bridge.as_mut().unwrap().ports = vec![PortObs {
            name: "vnet0".into(),
            kind: PortKind::Tun,
            mac: Some("fe:54:00:00:00:01".parse().unwrap()),
        }];
        assert_eq!(d.routed(&o).len(), 2);
        // Incoming migration recorded for the NIC: held, not routed, not pending.
        hook.migration = Some(Migration::Incoming);
        let d = Desired::build(&c, &snap(vec![shim.clone(), hook.clone()]), "b");
        assert!(d.addrs.is_empty() && d.pending.is_empty());
        // Arriving: routed, both addresses de-preferred, the shim's extra one included.
        hook.migration = Some(Migration::Arriving);
        let d = Desired::build(&c, &snap(vec![shim.clone(), hook.clone()]), "b");
        assert_eq!(d.addrs.keys().copied().collect::<Vec<_>>(), [a1, a2]);
        assert_eq!(d.preference.get(&a2), Some(&Preference::Incoming));
        assert!(d.conflicts.is_empty(), "{:?}", d.conflicts);
        // Started normally: both routed at the baseline.
        hook.migration = None;
        let d = Desired::build(&c, &snap(vec![shim, hook]), "b");
        assert_eq!(d.addrs.len(), 2);
        assert!(d.preference.is_empty() && d.pending.is_empty());
    }

    #[test]
    fn takeover_refuses_foreign_ports_and_addresses() {
        let c = cfg();
        let mut v = vm("a", "52:54:00:00:00:01", &["192.0.2.1"], Source::Cli, None);
        v.nics[0].port = Some("vm1p".parse().unwrap());
        let d = Desired::build(&c, &snap(vec![v]), "b");
        let mut o = up_bridge(&d);
        let ob = o.bridge.as_mut().unwrap();
        ob.ports = vec![
            PortObs { name: "vm1p".into(), kind: PortKind::Veth, mac: None },
            PortObs { name: "vnet3".into(), kind: PortKind::Tun, mac: None },
            PortObs {
                name: "x".into(),
                kind: PortKind::Veth,
                mac: Some("fe:54:00:00:00:01".parse().unwrap()),
            },
        ];
        ob.addrs.insert(IfAddr { addr: "fe80::c00:ff:fe00:1".parse().unwrap(), prefix: 64 });
        assert!(takeover_refusals(&d, &o).is_empty());
        let ob = o.bridge.as_mut().unwrap();
        ob.ports.push(PortObs { name: "eno1".into(), kind: PortKind::Other("device".into()), mac: None });
        ob.addrs.insert(IfAddr { addr: "10.1.1.5".parse().unwrap(), prefix: 24 });
        let why = takeover_refusals(&d, &o);
        assert_eq!(why.len(), 2, "{why:?}");
        assert!(why[0].contains("eno1") && why[1].contains("10.1.1.5/24"));
    }
}
