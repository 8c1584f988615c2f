//! FRR: **where FRR is told**.
//!
//! Contract (design.md §1, §3, §7):
//! - bgpd advertises exactly the VM prefixes, as `network A/32` and `network A/128` lines
//!   under `router bgp`, each with a route-map (per-VM preference for live migration, which
//!   takes effect at once). BGP's import-check advertises a line only while hvroute's kernel
//!   route exists. Per-VM prefix-list entries are never used: they cost minutes at 10,000.
//! - hvroute owns these FRR objects and only these: the peer-group [`PEER_GROUP`], the
//!   route-maps and prefix-lists whose names start with [`PREFIX`], and the `network` lines
//!   of host prefixes inside the pools. An admin's own lines (another prefix-list, a BFD
//!   profile, a neighbour password) are never removed.
//! - The running config is changed in one vtysh batch per pass and saved with FRR's own
//!   `write memory`; rendering a whole frr.conf ([`render`]) is for bootstrap only.
//!
//! The names below are part of the contract with the fabric's operators: their monitoring
//! and their spine-side policies refer to them.

pub mod render;

/// Every FRR object hvroute owns is named with this prefix.
pub const PREFIX: &str = "HVR-";
/// The upstream peers.
pub const PEER_GROUP: &str = "HVR-UPLINK";
/// Inbound: only the default routes.
pub const RM_IN: &str = "HVR-IN";
/// Outbound: only host prefixes inside the pools, and the host loopbacks.
pub const RM_OUT: &str = "HVR-OUT";
/// Attached to every VM's `network` line: the baseline AS-path prepend of 1.
pub const RM_VM: &str = "HVR-VM";
/// An incoming VM during a live migration: the baseline plus `migration.incoming_prepend`
/// more, so that the source keeps winning while the guest is paused here.
pub const RM_VM_INCOMING: &str = "HVR-VM-INCOMING";
/// A VM that has just arrived: no prepend, so that this host strictly wins over the
/// source's baseline (a tie keeps the older path) for `migration.settle_s`.
pub const RM_VM_ARRIVED: &str = "HVR-VM-ARRIVED";
pub const PL_DEFAULT4: &str = "HVR-DEFAULT-V4";
pub const PL_DEFAULT6: &str = "HVR-DEFAULT-V6";
pub const PL_POOLS4: &str = "HVR-POOLS-V4";
pub const PL_POOLS6: &str = "HVR-POOLS-V6";
pub const PL_LOOPBACK4: &str = "HVR-LOOPBACK-V4";
pub const PL_LOOPBACK6: &str = "HVR-LOOPBACK-V6";
/// bgpd's global `bgp route-map delay-timer`, in seconds (FRR's default is 5). A route-map
/// or prefix-list change waits this long before bgpd applies it; at start-up (`vtysh -b`)
/// bgpd also keeps every peer down until it has run out, so with 5 s a plain FRR restart
/// brought the sessions up only about 4 s after FRR answered (measured, docs/frr.md). 0 is
/// not an option: bgpd then never applies a prefix-list change by itself (facts.md).
pub const RMAP_DELAY_TIMER_S: u32 = 1;
pub mod vtysh;

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::config::Config;

/// The `network` lines FRR should hold: prefix to the route-map attached to it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Wanted {
    pub networks: BTreeMap<IpNet, Option<String>>,
}

impl Wanted {
    /// Every VM address with its route-map (the baseline, or a live migration's
    /// preference), plus the host loopbacks.
    pub fn build(cfg: &Config, desired: &crate::plan::Desired) -> Wanted {
        use crate::plan::Preference;
        let mut networks: BTreeMap<IpNet, Option<String>> = desired
            .addrs
            .keys()
            .map(|a| {
                let rm = match desired.preference.get(a) {
                    None => RM_VM,
                    Some(Preference::Incoming) => RM_VM_INCOMING,
                    Some(Preference::Arrived) => RM_VM_ARRIVED,
                };
                (IpNet::from(*a), Some(rm.to_string()))
            })
            .collect();
        for lo in [cfg.bgp.loopback4.map(IpAddr::V4), cfg.bgp.loopback6.map(IpAddr::V6)].into_iter().flatten()
        {
            networks.insert(IpNet::from(lo), None);
        }
        Wanted { networks }
    }
}

/// What FRR's running config holds of what hvroute manages.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Running {
    /// The AS of `router bgp` in the default VRF, if there is one.
    pub asn: Option<u32>,
    /// Every `network` line of that instance, ours or not.
    pub networks: BTreeMap<IpNet, Option<String>>,
    /// Whether the peer-group and every owned route-map and prefix-list exist.
    pub scaffolding: bool,
    /// `bgp route-map delay-timer N`; `None` when FRR runs its default (5 s), which it
    /// does not print.
    pub rmap_delay_timer: Option<u32>,
}

/// Reads `show running-config`. Only the default-VRF `router bgp` block is considered.
pub fn parse_running(text: &str, cfg: &Config) -> Running {
    let mut r = Running::default();
    let mut in_bgp = false;
    let mut names = std::collections::BTreeSet::new();
    for line in text.lines() {
        if !line.starts_with(' ') {
            in_bgp = false;
            let mut w = line.split_whitespace();
            match (w.next(), w.next(), w.next(), w.next()) {
                (Some("router"), Some("bgp"), Some(asn), None) => {
                    r.asn = asn.parse().ok();
                    in_bgp = true;
                }
                (Some("route-map"), Some(name), _, _) => {
                    names.insert(name.to_string());
                }
                (Some("ip" | "ipv6"), Some("prefix-list"), Some(name), _) => {
                    names.insert(name.to_string());
                }
                (Some("bgp"), Some("route-map"), Some("delay-timer"), Some(n)) => {
                    r.rmap_delay_timer = n.parse().ok();
                }
                _ => {}
            }
            continue;
        }
        if !in_bgp {
            continue;
        }
        let mut w = line.split_whitespace();
        match (w.next(), w.next()) {
            (Some("network"), Some(p)) => {
                if let Ok(net) = p.parse::<IpNet>() {
                    let rm = match (w.next(), w.next()) {
                        (Some("route-map"), Some(name)) => Some(name.to_string()),
                        _ => None,
                    };
                    r.networks.insert(net, rm);
                }
            }
            (Some("neighbor"), Some(PEER_GROUP)) => {
                names.insert(PEER_GROUP.to_string());
            }
            _ => {}
        }
    }
    r.scaffolding = required_names(cfg).iter().all(|n| names.contains(*n));
    r
}

/// The owned objects that must exist for the VM lines to mean what they should.
pub fn required_names(cfg: &Config) -> Vec<&'static str> {
    let mut v =
        vec![PEER_GROUP, RM_IN, RM_OUT, RM_VM, RM_VM_INCOMING, RM_VM_ARRIVED, PL_DEFAULT4, PL_DEFAULT6];
    if !cfg.pools.ipv4.is_empty() {
        v.push(PL_POOLS4);
    }
    if !cfg.pools.ipv6.is_empty() {
        v.push(PL_POOLS6);
    }
    if cfg.bgp.loopback4.is_some() {
        v.push(PL_LOOPBACK4);
    }
    if cfg.bgp.loopback6.is_some() {
        v.push(PL_LOOPBACK6);
    }
    v
}

/// Whether a `network` line is hvroute's: a host prefix inside the pools, or a loopback.
pub fn owns(cfg: &Config, net: &IpNet) -> bool {
    let host = net.prefix_len() == net.max_prefix_len();
    let lo = [cfg.bgp.loopback4.map(IpAddr::V4), cfg.bgp.loopback6.map(IpAddr::V6)];
    host && (cfg.pools.contains(net.addr()) || lo.contains(&Some(net.addr())))
}

/// One batch of changes for vtysh.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FrrPlan {
    pub adds: usize,
    pub dels: usize,
    /// Part of hvroute's base config was missing and is re-asserted in the batch: an
    /// owned object, or the route-map delay-timer.
    pub scaffolding: bool,
    /// The owned base config, when it has to be re-asserted (frr.conf syntax).
    pub base: String,
    /// The `network` line changes (frr.conf syntax, for `vtysh -f`).
    pub batch: String,
}

impl FrrPlan {
    pub fn is_empty(&self) -> bool {
        self.base.is_empty() && self.batch.is_empty()
    }

    /// Everything that is sent, base first.
    pub fn text(&self) -> String {
        format!("{}{}", self.base, self.batch)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("FRR runs router bgp {running}, but bgp.asn is {configured}; hvroute leaves FRR alone")]
pub struct AsnMismatch {
    pub running: u32,
    pub configured: u32,
}

/// Computes the vtysh batch that takes `running` to `wanted`. Pure. `scaffolding` is the
/// owned base config (peer-group, policies), pushed when any part of it is missing.
///
/// bgpd's route-map delay-timer is set to [`RMAP_DELAY_TIMER_S`] when FRR runs its default
/// (5 s, not printed): an frr.conf written before hvroute rendered the line, or by hand,
/// would otherwise keep every FRR restart slow for good. An explicit value in FRR is the
/// admin's choice and is kept, also when the rest of the base config is pushed again.
pub fn plan(
    cfg: &Config,
    wanted: &Wanted,
    running: &Running,
    scaffolding: &str,
) -> Result<FrrPlan, AsnMismatch> {
    let asn = cfg.bgp.asn;
    if let Some(r) = running.asn.filter(|r| *r != asn) {
        return Err(AsnMismatch { running: r, configured: asn });
    }
    let mut p = FrrPlan::default();
    let mut per_af: BTreeMap<bool, Vec<String>> = BTreeMap::new();
    for net in running.networks.keys() {
        if owns(cfg, net) && !wanted.networks.contains_key(net) {
            per_af.entry(net.addr().is_ipv4()).or_default().push(format!("  no network {net}"));
            p.dels += 1;
        }
    }
    for (net, rm) in &wanted.networks {
        let line = match rm {
            Some(rm) => format!("  network {net} route-map {rm}"),
            None => format!("  network {net}"),
        };
        match running.networks.get(net) {
            Some(have) if have == rm => continue,
            // Dropping a route-map needs the line removed first.
            Some(Some(_)) if rm.is_none() => {
                per_af.entry(net.addr().is_ipv4()).or_default().push(format!("  no network {net}"));
            }
            _ => {}
        }
        per_af.entry(net.addr().is_ipv4()).or_default().push(line);
        p.adds += 1;
    }
    let timer = "bgp route-map delay-timer";
    if !running.scaffolding || running.asn.is_none() {
        p.scaffolding = true;
        p.base = scaffolding
            .lines()
            .filter(|l| running.rmap_delay_timer.is_none() || !l.starts_with(timer))
            .map(|l| format!("{l}\n"))
            .collect();
    } else if running.rmap_delay_timer.is_none() {
        p.scaffolding = true;
        p.base = format!("{timer} {RMAP_DELAY_TIMER_S}\n");
    }
    let mut batch = String::new();
    if !per_af.is_empty() {
        batch.push_str(&format!("router bgp {asn}\n"));
        for (v4, lines) in per_af.iter().rev() {
            batch.push_str(if *v4 {
                " address-family ipv4 unicast\n"
            } else {
                " address-family ipv6 unicast\n"
            });
            for l in lines {
                batch.push_str(l);
                batch.push('\n');
            }
            batch.push_str(" exit-address-family\n");
        }
        batch.push_str("exit\n");
    }
    p.batch = batch;
    Ok(p)
}

/// What one FRR sync did.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct SyncSummary {
    pub adds: usize,
    pub dels: usize,
    pub scaffolding: bool,
    pub ms: f64,
    /// How the `network` lines reached bgpd: `vty` (its socket) or `vtysh` (`vtysh -f`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lines_via: Option<String>,
}

/// One FRR sync: plan against the running config, push one batch, save.
///
/// `known` is what FRR held after the previous successful sync; when given, it stands in
/// for reading the running config (at 10,000 VMs that read is the slow part of adding one
/// VM). The daemon passes `None` on every periodic resync, after an FRR restart and after
/// any error, so drift made by hand is still found within one resync interval.
///
/// After a vtysh error the running config is read again to report what is still missing:
/// a batch can be partly applied (facts.md). Returns what FRR now holds.
pub async fn sync(
    cfg: &Config,
    vtysh: &vtysh::Vtysh,
    wanted: &Wanted,
    scaffolding: &str,
    known: Option<&Running>,
) -> anyhow::Result<(SyncSummary, Running)> {
    let t = std::time::Instant::now();
    let running = match known {
        Some(r) => r.clone(),
        None => parse_running(&vtysh.running_config().await?, cfg),
    };
    let p = plan(cfg, wanted, &running, scaffolding)?;
    let ms = |t: std::time::Instant| t.elapsed().as_secs_f64() * 1e3;
    if p.is_empty() {
        return Ok((SyncSummary { ms: ms(t), ..SyncSummary::default() }, running));
    }
    let via = vtysh.apply(&p.base, &p.batch).await;
    if let Err(e) = via {
        let left = match vtysh.running_config().await {
            Ok(text) => match plan(cfg, wanted, &parse_running(&text, cfg), scaffolding) {
                Ok(again) => format!("{} adds and {} deletions still missing", again.adds, again.dels),
                Err(e2) => e2.to_string(),
            },
            Err(e2) => format!("cannot re-read the running config: {e2:#}"),
        };
        anyhow::bail!("{e:#}; {left}");
    }
    let summary = SyncSummary {
        adds: p.adds,
        dels: p.dels,
        scaffolding: p.scaffolding,
        ms: ms(t),
        lines_via: via.ok().flatten().map(str::to_owned),
    };
    Ok((summary, running.after(cfg, wanted)))
}

impl Running {
    /// What FRR holds once a plan from `self` to `wanted` has been applied.
    pub fn after(&self, cfg: &Config, wanted: &Wanted) -> Running {
        let mut networks: BTreeMap<IpNet, Option<String>> =
            self.networks.iter().filter(|(n, _)| !owns(cfg, n)).map(|(n, r)| (*n, r.clone())).collect();
        networks.extend(wanted.networks.iter().map(|(n, r)| (*n, r.clone())));
        Running {
            asn: Some(cfg.bgp.asn),
            networks,
            scaffolding: true,
            rmap_delay_timer: self.rmap_delay_timer.or(Some(RMAP_DELAY_TIMER_S)),
        }
    }
}

/// The owned base config pushed when FRR has lost it (a fresh FRR, a new pathspace): the
/// bootstrap rendering without VM lines and without the lines FRR takes only at start-up.
pub fn scaffolding(cfg: &Config) -> anyhow::Result<String> {
    let full = render::render(cfg, &Default::default())?;
    Ok(full
        .lines()
        .filter(|l| !l.starts_with("frr version") && !l.starts_with("frr defaults"))
        .map(|l| format!("{l}\n"))
        .collect())
}

/// bgpd's pid, which changes when FRR restarts.
pub fn bgpd_pid(cfg: &Config) -> Option<String> {
    let dir = if cfg.frr.pathspace.is_empty() {
        cfg.frr.run_dir.clone()
    } else {
        cfg.frr.run_dir.join(&cfg.frr.pathspace)
    };
    std::fs::read_to_string(dir.join("bgpd.pid")).ok().map(|s| s.trim().to_owned())
}

/// One BGP session, from `show bgp summary json`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PeerView {
    pub name: String,
    /// `ipv4` or `ipv6`: FRR reports each address family's session separately.
    pub family: &'static str,
    pub state: String,
    pub uptime: String,
    pub prefixes_sent: u64,
    pub prefixes_received: u64,
}

/// What bgpd says: its sessions and the local prefixes it holds as valid best paths (so
/// import-check passed and the outbound policy decides the rest).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct BgpView {
    pub peers: Vec<PeerView>,
    #[serde(skip)]
    pub local: std::collections::BTreeSet<IpNet>,
}

/// bgpd's sessions (`show bgp summary json`): `status` and the metrics poller.
pub async fn bgp_peers(vtysh: &vtysh::Vtysh) -> anyhow::Result<Vec<PeerView>> {
    Ok(parse_summary(&vtysh.show_json("show bgp summary json").await?))
}

pub async fn observe_bgp(vtysh: &vtysh::Vtysh) -> anyhow::Result<BgpView> {
    let mut view = BgpView { peers: bgp_peers(vtysh).await?, ..BgpView::default() };
    for afi in ["ipv4", "ipv6"] {
        let table = vtysh.show_json(&format!("show bgp {afi} unicast json")).await?;
        view.local.extend(parse_local_best(&table));
    }
    Ok(view)
}

fn parse_summary(v: &serde_json::Value) -> Vec<PeerView> {
    let mut out = Vec::new();
    for (key, family) in [("ipv4Unicast", "ipv4"), ("ipv6Unicast", "ipv6")] {
        let Some(peers) = v.get(key).and_then(|f| f.get("peers")).and_then(|p| p.as_object()) else {
            continue;
        };
        for (name, p) in peers {
            let s = |k: &str| p.get(k).and_then(|x| x.as_str()).unwrap_or("").to_string();
            let n = |k: &str| p.get(k).and_then(|x| x.as_u64()).unwrap_or(0);
            out.push(PeerView {
                name: name.clone(),
                family,
                state: s("state"),
                uptime: s("peerUptime"),
                prefixes_sent: n("pfxSnt"),
                prefixes_received: n("pfxRcd"),
            });
        }
    }
    out
}

/// Prefixes with a valid best path whose next hop is this host (locally originated).
fn parse_local_best(v: &serde_json::Value) -> Vec<IpNet> {
    let Some(routes) = v.get("routes").and_then(|r| r.as_object()) else { return Vec::new() };
    routes
        .iter()
        .filter(|(_, paths)| {
            paths.as_array().is_some_and(|ps| {
                ps.iter().any(|p| {
                    let t = |k: &str| p.get(k).and_then(|x| x.as_bool()).unwrap_or(false);
                    let local = p.get("peerId").and_then(|x| x.as_str()).is_some_and(|id| id == "(unspec)")
                        || p.get("path").and_then(|x| x.as_str()).is_some_and(|s| s.is_empty());
                    t("valid") && t("bestpath") && local
                })
            })
        })
        .filter_map(|(k, _)| k.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Config {
        Config::parse(
            "[pools]\nipv4=[\"192.0.2.0/24\"]\nipv6=[\"2001:db8:100::/40\"]\n\
             [bgp]\nasn=65001\nrouter_id=\"10.255.0.1\"\nloopback4=\"198.51.100.1\"\n",
        )
        .unwrap()
    }

    const RUNNING: &str = "\
Building configuration...

Current configuration:
!
frr version 8.4.4
frr defaults datacenter
bgp route-map delay-timer 1
!
ip prefix-list ADMIN seq 5 permit 10.0.0.0/8
ip prefix-list HVR-DEFAULT-V4 seq 5 permit 0.0.0.0/0
ipv6 prefix-list HVR-DEFAULT-V6 seq 5 permit ::/0
ip prefix-list HVR-POOLS-V4 seq 5 permit 192.0.2.0/24 ge 32
ipv6 prefix-list HVR-POOLS-V6 seq 5 permit 2001:db8:100::/40 ge 128
ip prefix-list HVR-LOOPBACK-V4 seq 5 permit 198.51.100.1/32
!
router bgp 65001
 bgp router-id 10.255.0.1
 neighbor HVR-UPLINK peer-group
 neighbor HVR-UPLINK remote-as external
 neighbor 10.255.0.0 peer-group HVR-UPLINK
 neighbor 10.255.0.0 password s3cret
 !
 address-family ipv4 unicast
  network 192.0.2.10/32 route-map HVR-VM
  network 192.0.2.11/32 route-map HVR-VM
  network 198.51.100.1/32
  network 203.0.113.0/24
  network 203.0.113.5/32
 exit-address-family
 !
 address-family ipv6 unicast
  network 2001:db8:100::10/128 route-map HVR-VM
 exit-address-family
exit
!
route-map HVR-IN permit 10
 match ip address prefix-list HVR-DEFAULT-V4
exit
!
route-map HVR-OUT permit 10
exit
!
route-map HVR-VM permit 10
 set as-path prepend 65001
exit
!
route-map HVR-VM-ARRIVED permit 10
exit
!
route-map HVR-VM-INCOMING permit 10
 set as-path prepend 65001 65001 65001
exit
!
end
";

    #[test]
    fn parses_networks_and_scaffolding() {
        let r = parse_running(RUNNING, &cfg());
        assert_eq!(r.asn, Some(65001));
        assert_eq!(r.networks.len(), 6);
        assert_eq!(r.networks[&"192.0.2.10/32".parse().unwrap()].as_deref(), Some(RM_VM));
        assert_eq!(r.networks[&"203.0.113.0/24".parse().unwrap()], None);
        assert!(r.scaffolding);
        let without_vm_map = RUNNING.replace("route-map HVR-VM permit 10", "route-map OTHER permit 10");
        assert!(!parse_running(&without_vm_map, &cfg()).scaffolding);
    }

    /// What hvroute wants FRR to hold for these VM addresses, none of them migrating.
    fn wanted_of(c: &Config, addrs: &[IpAddr]) -> Wanted {
        let mut d = crate::plan::Desired::build(c, &Default::default(), "boot");
        d.addrs = addrs.iter().map(|a| (*a, "52:54:00:00:00:01".parse().unwrap())).collect();
        Wanted::build(c, &d)
    }

    /// Prevents: after a host reboot, a hook entry of the old boot being advertised (the VM
    /// may run on another host now) before a hook re-asserts it: a parked entry has no
    /// `network` line, while an admin's (`vm add`) entry keeps its own.
    #[test]
    fn parked_entries_are_not_advertised() {
        use crate::model::{Nic, Source, VmSpec};
        let c = cfg();
        let vm = |name: &str, ip: &str, source, boot: Option<&str>| VmSpec {
            name: name.parse().unwrap(),
            nics: vec![Nic {
                mac: "52:54:00:00:00:01".parse().unwrap(),
                addresses: [ip.parse().unwrap()].into(),
                port: None,
            }],
            source,
            boot_id: boot.map(str::to_owned),
            migration: None,
        };
        let snap = crate::store::Snapshot {
            vms: [
                vm("old", "192.0.2.1", Source::Hook, Some("boot-1")),
                vm("admin", "192.0.2.2", Source::Cli, None),
            ]
            .into_iter()
            .map(|v| (v.name.clone(), std::sync::Arc::new(v)))
            .collect(),
            errors: Default::default(),
        };
        let d = crate::plan::Desired::build(&c, &snap, "boot-2");
        let w = Wanted::build(&c, &d);
        let lines: Vec<String> = w.networks.keys().filter(|n| owns(&c, n)).map(|n| n.to_string()).collect();
        assert!(lines.contains(&"192.0.2.2/32".to_string()), "{lines:?}");
        assert!(!lines.contains(&"192.0.2.1/32".to_string()), "a parked entry is advertised: {lines:?}");
    }

    /// A migrating VM's lines carry its preference; the rest the baseline.
    #[test]
    fn migration_preference_picks_the_route_map() {
        use crate::plan::Preference;
        let c = cfg();
        let mut d = crate::plan::Desired::build(&c, &Default::default(), "boot");
        let mac = "52:54:00:00:00:01".parse().unwrap();
        for a in ["192.0.2.1", "192.0.2.2", "192.0.2.3"] {
            d.addrs.insert(a.parse().unwrap(), mac);
        }
        d.preference.insert("192.0.2.2".parse().unwrap(), Preference::Incoming);
        d.preference.insert("192.0.2.3".parse().unwrap(), Preference::Arrived);
        let w = Wanted::build(&c, &d);
        let rm: Vec<_> = w.networks.values().filter_map(|r| r.as_deref()).collect();
        assert_eq!(rm, [RM_VM, RM_VM_INCOMING, RM_VM_ARRIVED]);
        // Switching an existing line's route-map is one line, no withdrawal.
        let running = parse_running(RUNNING, &c).after(&c, &wanted_of(&c, &["192.0.2.3".parse().unwrap()]));
        let p = plan(&c, &w, &running, "SCAFFOLD").unwrap();
        assert!(p.batch.contains("  network 192.0.2.3/32 route-map HVR-VM-ARRIVED\n"), "{}", p.batch);
        assert!(!p.batch.contains("no network 192.0.2.3/32"), "{}", p.batch);
    }

    /// Only owned lines move: an admin's /24 and a /32 outside the pools stay.
    #[test]
    fn plan_touches_only_owned_lines() {
        let c = cfg();
        let r = parse_running(RUNNING, &c);
        let wanted = wanted_of(&c, &["192.0.2.10".parse().unwrap(), "2001:db8:100::20".parse().unwrap()]);
        let p = plan(&c, &wanted, &r, "SCAFFOLD").unwrap();
        assert_eq!(
            p.batch,
            "router bgp 65001\n address-family ipv4 unicast\n  no network 192.0.2.11/32\n exit-address-family\n \
             address-family ipv6 unicast\n  no network 2001:db8:100::10/128\n  network 2001:db8:100::20/128 route-map HVR-VM\n \
             exit-address-family\nexit\n"
        );
        assert_eq!((p.adds, p.dels, p.scaffolding), (1, 2, false));
    }

    #[test]
    fn in_sync_is_empty_and_missing_scaffolding_is_reasserted() {
        let c = cfg();
        let r = parse_running(RUNNING, &c);
        let mine: Vec<IpAddr> = vec![
            "192.0.2.10".parse().unwrap(),
            "192.0.2.11".parse().unwrap(),
            "2001:db8:100::10".parse().unwrap(),
        ];
        let wanted = wanted_of(&c, &mine);
        assert!(plan(&c, &wanted, &r, "SCAFFOLD").unwrap().is_empty());
        let fresh = Running::default();
        let p = plan(&c, &wanted, &fresh, "SCAFFOLD\n").unwrap();
        assert!(p.scaffolding && p.text().starts_with("SCAFFOLD\nrouter bgp 65001\n"));
        assert_eq!(p.adds, 4);
    }

    /// The daemon trusts `Running::after` between resyncs: planning again from it must be
    /// empty, and foreign lines must still be there.
    #[test]
    fn after_a_plan_nothing_is_left_to_do() {
        let c = cfg();
        let r = parse_running(RUNNING, &c);
        let wanted = wanted_of(&c, &["192.0.2.99".parse().unwrap(), "2001:db8:100::99".parse().unwrap()]);
        let next = r.after(&c, &wanted);
        assert!(plan(&c, &wanted, &next, "SCAFFOLD").unwrap().is_empty());
        assert!(next.networks.contains_key(&"203.0.113.0/24".parse().unwrap()));
        assert!(next.networks.contains_key(&"203.0.113.5/32".parse().unwrap()));
        assert!(!next.networks.contains_key(&"192.0.2.10/32".parse().unwrap()));
    }

    /// An FRR at the default route-map delay-timer (an older frr.conf) gets hvroute's 1 s,
    /// alone; an admin's explicit value is kept, also when the base config is pushed.
    #[test]
    fn the_route_map_delay_timer_is_set_unless_the_admin_chose_one() {
        let c = cfg();
        let mine: Vec<IpAddr> = vec![
            "192.0.2.10".parse().unwrap(),
            "192.0.2.11".parse().unwrap(),
            "2001:db8:100::10".parse().unwrap(),
        ];
        let wanted = wanted_of(&c, &mine);
        let default = parse_running(&RUNNING.replace("bgp route-map delay-timer 1\n", ""), &c);
        assert_eq!(default.rmap_delay_timer, None);
        let p = plan(&c, &wanted, &default, "SCAFFOLD\n").unwrap();
        assert_eq!((p.base.as_str(), p.batch.as_str()), ("bgp route-map delay-timer 1\n", ""));
        assert!(p.scaffolding);
        assert!(plan(&c, &wanted, &default.after(&c, &wanted), "SCAFFOLD\n").unwrap().is_empty());

        let base = "bgp route-map delay-timer 1\nrouter bgp 65001\nexit\n";
        let admin = RUNNING.replace("delay-timer 1", "delay-timer 10");
        let admin = parse_running(&admin.replace("route-map HVR-VM permit 10", "route-map X permit 10"), &c);
        assert_eq!(admin.rmap_delay_timer, Some(10));
        let p = plan(&c, &wanted, &admin, base).unwrap();
        assert_eq!(p.base, "router bgp 65001\nexit\n", "the admin's timer is kept");
        assert_eq!(admin.after(&c, &wanted).rmap_delay_timer, Some(10));
        let fresh = plan(&c, &wanted, &Running::default(), base).unwrap();
        assert_eq!(fresh.base, base);
    }

    #[test]
    fn a_foreign_asn_is_left_alone() {
        let c = cfg();
        let r = parse_running(&RUNNING.replace("router bgp 65001", "router bgp 64999"), &c);
        let e = plan(&c, &Wanted::default(), &r, "").unwrap_err();
        assert_eq!(e, AsnMismatch { running: 64999, configured: 65001 });
    }
}

pub mod bootstrap;
