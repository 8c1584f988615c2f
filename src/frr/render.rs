//! Rendering the hypervisor's full frr.conf from the config and the VM prefixes.
//!
//! Contract:
//! - [`render`] is pure and deterministic: the same config and prefix set give the same
//!   bytes. It is for bootstrap only (`hvroute frr render`, `hvroute frr bootstrap`); in
//!   operation the daemon edits the running config through vtysh and never rewrites the
//!   admin's file (design.md §7).
//! - Data flows config and prefix set → [`Context`] (validated values only) →
//!   `templates/frr.conf.tera` (tera, no escaping). Tera escapes nothing for a non-HTML
//!   file, so the context holds nothing but typed values (addresses, prefixes, AS numbers,
//!   [`IfName`]s) and this module's constants: validation is the only barrier against
//!   vtysh command injection (style.md §7).
//! - Whatever FRR 8.4's bgpd would refuse or silently change is refused or normalised
//!   here: peers that mix internal and external in the one peer-group ("Peer-group members
//!   must be all internal or all external"), a repeated peer, a link-local neighbour
//!   address are an [`Invalid`] naming the key; a pool with host bits set is rendered
//!   masked, as bgpd would store it, and pools that become equal are merged (bgpd drops a
//!   duplicate entry without a word). A pool that is a single host gets no `ge`.
//! - The output is in the order FRR 8.4 prints its running config, so that loading the
//!   file into bgpd and reading `show running-config` back gives the same lines
//!   (tests/frr_bgpd_load.rs checks every golden file against a real bgpd).

use std::cmp::Ordering;
use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::Context as _;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::Serialize;

use super::{
    PEER_GROUP, PL_DEFAULT4, PL_DEFAULT6, PL_LOOPBACK4, PL_LOOPBACK6, PL_POOLS4, PL_POOLS6, RM_IN, RM_OUT,
    RM_VM, RM_VM_ARRIVED, RM_VM_INCOMING, RMAP_DELAY_TIMER_S,
};
use crate::config::{Config, RemoteAs};
use crate::model::{IfName, Invalid};

const TEMPLATE_NAME: &str = "frr.conf.tera";
const TEMPLATE: &str = include_str!("../../templates/frr.conf.tera");

/// Renders the full frr.conf for this host: the config's BGP session and policy, and one
/// `network` line per VM prefix (each with [`RM_VM`]) plus the optional loopbacks.
///
/// Every VM prefix must lie inside the pools: only those `network` lines are hvroute's.
pub fn render(cfg: &Config, vm_prefixes: &BTreeSet<IpAddr>) -> anyhow::Result<String> {
    let ctx = Context::build(cfg, vm_prefixes)?;
    let mut tera = tera::Tera::default();
    tera.autoescape_on(Vec::new());
    tera.add_raw_template(TEMPLATE_NAME, TEMPLATE).context("the frr.conf template does not parse")?;
    let ctx = tera::Context::from_serialize(&ctx).context("cannot build the template context")?;
    tera.render(TEMPLATE_NAME, &ctx)
        .map_err(|e| anyhow::anyhow!("cannot render frr.conf: {}", tera_chain(&e)))
}

/// Checks the parts of the config that only FRR cares about, with the same errors as
/// [`render`] gives.
pub fn check(cfg: &Config) -> Result<(), Invalid> {
    Context::build(cfg, &BTreeSet::new()).map(|_| ())
}

fn tera_chain(e: &tera::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

/// Everything the template sees. Built only from validated values.
#[derive(Debug, Serialize)]
struct Context {
    n: Names,
    /// bgpd's `bgp route-map delay-timer` ([`RMAP_DELAY_TIMER_S`]).
    rmap_delay_timer: u32,
    asn: u32,
    /// The ASNs an incoming VM's route-map prepends (baseline plus the extra ones).
    incoming_prepend: String,
    router_id: Ipv4Addr,
    /// Set when every peer has the same remote-as; otherwise each peer carries its own.
    group_remote_as: Option<RemoteAsText>,
    peers: Vec<PeerCtx>,
    /// IPv4 then IPv6, both always (the inbound policy is the same on every host).
    families: Vec<Family>,
}

/// The owned object names (src/frr/mod.rs), for the template.
#[derive(Debug, Serialize)]
struct Names {
    peer_group: &'static str,
    rm_in: &'static str,
    rm_out: &'static str,
    rm_vm: &'static str,
    rm_vm_incoming: &'static str,
    rm_vm_arrived: &'static str,
}

/// `external`, `internal` or an AS number: the only things `remote-as` gets.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RemoteAsText(RemoteAs);

impl Serialize for RemoteAsText {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            RemoteAs::External => s.serialize_str("external"),
            RemoteAs::Internal => s.serialize_str("internal"),
            RemoteAs::Asn(n) => s.serialize_u32(n),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum PeerName {
    Interface(IfName),
    Address(IpAddr),
}

impl Serialize for PeerName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            PeerName::Interface(i) => i.serialize(s),
            PeerName::Address(a) => s.collect_str(a),
        }
    }
}

impl std::fmt::Display for PeerName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PeerName::Interface(i) => write!(f, "interface {i}"),
            PeerName::Address(a) => write!(f, "address {a}"),
        }
    }
}

impl PeerName {
    /// bgpd's own neighbour order (`peer_cmp`): interfaces first, by FRR's natural name
    /// order, then addresses, IPv4 before IPv6, numerically.
    fn frr_cmp(&self, other: &PeerName) -> Ordering {
        match (self, other) {
            (PeerName::Interface(a), PeerName::Interface(b)) => if_cmp_name(a.as_str(), b.as_str()),
            (PeerName::Interface(_), PeerName::Address(_)) => Ordering::Less,
            (PeerName::Address(_), PeerName::Interface(_)) => Ordering::Greater,
            (PeerName::Address(a), PeerName::Address(b)) => a.cmp(b),
        }
    }
}

#[derive(Debug, Serialize)]
struct PeerCtx {
    name: PeerName,
    interface: bool,
    remote_as: Option<RemoteAsText>,
}

#[derive(Debug, Serialize)]
struct Family {
    /// A pool or a loopback of this family is configured: it gets an `address-family`
    /// block and outbound entries. A family not in use sends nothing.
    in_use: bool,
    /// `ipv4` / `ipv6`, for `address-family`.
    afi: &'static str,
    /// `ip` / `ipv6`, for `ip prefix-list` and `match ip address`.
    pl: &'static str,
    #[serde(rename = "match")]
    match_kw: &'static str,
    pl_pools: &'static str,
    pl_default: &'static str,
    pl_loopback: &'static str,
    default_route: IpNet,
    /// Route-map sequence numbers, fixed per family so that the vtysh driver and admins
    /// can rely on them whatever else is configured.
    seq_default: u32,
    seq_pools: u32,
    seq_loopback: u32,
    pools: Vec<PoolEntry>,
    loopback: Option<IpNet>,
    /// VM prefixes and the loopback, in address order (bgpd prints them so).
    networks: Vec<Network>,
}

#[derive(Debug, Serialize)]
struct PoolEntry {
    prefix: IpNet,
    /// `ge 32` / `ge 128`, absent for a pool that is itself a host prefix.
    ge: Option<u8>,
}

#[derive(Debug, Serialize)]
struct Network {
    prefix: IpNet,
    /// A VM's line carries [`RM_VM`]; the loopback's carries nothing.
    vm: bool,
}

impl Context {
    fn build(cfg: &Config, vm_prefixes: &BTreeSet<IpAddr>) -> Result<Context, Invalid> {
        let bgp = &cfg.bgp;
        let peers = peers(cfg)?;
        let same_as = peers.windows(2).all(|w| w[0].1 == w[1].1);
        let group_remote_as = match peers.first() {
            Some((_, r)) if same_as => Some(RemoteAsText(r.clone())),
            _ => None,
        };
        let peers = peers
            .into_iter()
            .map(|(name, r)| PeerCtx {
                interface: matches!(name, PeerName::Interface(_)),
                name,
                remote_as: if group_remote_as.is_some() { None } else { Some(RemoteAsText(r)) },
            })
            .collect();

        for ip in vm_prefixes {
            if !cfg.pools.contains(*ip) {
                return Err(Invalid(format!(
                    "VM address {ip} is outside the pools ({}); it cannot be advertised",
                    cfg.pools.describe(ip.is_ipv4())
                )));
            }
        }
        let mut families = Vec::new();
        let v4: BTreeSet<Ipv4Addr> = vm_prefixes
            .iter()
            .filter_map(|ip| match ip {
                IpAddr::V4(a) => Some(*a),
                IpAddr::V6(_) => None,
            })
            .collect();
        let v6: BTreeSet<Ipv6Addr> = vm_prefixes
            .iter()
            .filter_map(|ip| match ip {
                IpAddr::V6(a) => Some(*a),
                IpAddr::V4(_) => None,
            })
            .collect();
        if let Some(lo) = bgp.loopback4 {
            check_loopback("bgp.loopback4", IpAddr::V4(lo), lo.is_private() || is_global4(lo))?;
            if v4.contains(&lo) {
                return Err(Invalid(format!("invalid bgp.loopback4 = {lo}: a VM holds this address")));
            }
        }
        if let Some(lo) = bgp.loopback6 {
            check_loopback("bgp.loopback6", IpAddr::V6(lo), is_global6(lo))?;
            if v6.contains(&lo) {
                return Err(Invalid(format!("invalid bgp.loopback6 = {lo}: a VM holds this address")));
            }
        }
        {
            let pools: BTreeSet<Ipv4Net> = cfg.pools.ipv4.iter().map(|p| p.trunc()).collect();
            let lo = bgp.loopback4.map(|a| IpNet::V4(Ipv4Net::from(a)));
            families.push(Family {
                in_use: !cfg.pools.ipv4.is_empty() || bgp.loopback4.is_some(),
                afi: "ipv4",
                pl: "ip",
                match_kw: "ip",
                pl_pools: PL_POOLS4,
                pl_default: PL_DEFAULT4,
                pl_loopback: PL_LOOPBACK4,
                default_route: IpNet::V4(Ipv4Net::default()),
                seq_default: 10,
                seq_pools: 10,
                seq_loopback: 20,
                pools: pools
                    .into_iter()
                    .map(|p| PoolEntry { ge: (p.prefix_len() < 32).then_some(32), prefix: IpNet::V4(p) })
                    .collect(),
                loopback: lo,
                networks: networks(v4.into_iter().map(|a| IpNet::V4(a.into())), lo),
            });
        }
        {
            let pools: BTreeSet<Ipv6Net> = cfg.pools.ipv6.iter().map(|p| p.trunc()).collect();
            let lo = bgp.loopback6.map(|a| IpNet::V6(Ipv6Net::from(a)));
            families.push(Family {
                in_use: !cfg.pools.ipv6.is_empty() || bgp.loopback6.is_some(),
                afi: "ipv6",
                pl: "ipv6",
                match_kw: "ipv6",
                pl_pools: PL_POOLS6,
                pl_default: PL_DEFAULT6,
                pl_loopback: PL_LOOPBACK6,
                default_route: IpNet::V6(Ipv6Net::default()),
                seq_default: 20,
                seq_pools: 30,
                seq_loopback: 40,
                pools: pools
                    .into_iter()
                    .map(|p| PoolEntry { ge: (p.prefix_len() < 128).then_some(128), prefix: IpNet::V6(p) })
                    .collect(),
                loopback: lo,
                networks: networks(v6.into_iter().map(|a| IpNet::V6(a.into())), lo),
            });
        }
        Ok(Context {
            n: Names {
                peer_group: PEER_GROUP,
                rm_in: RM_IN,
                rm_out: RM_OUT,
                rm_vm: RM_VM,
                rm_vm_incoming: RM_VM_INCOMING,
                rm_vm_arrived: RM_VM_ARRIVED,
            },
            rmap_delay_timer: RMAP_DELAY_TIMER_S,
            asn: bgp.asn,
            incoming_prepend: vec![bgp.asn.to_string(); 1 + usize::from(cfg.migration.incoming_prepend)]
                .join(" "),
            router_id: bgp.router_id,
            group_remote_as,
            peers,
            families,
        })
    }
}

/// The VM lines and the loopback line of one family, in address order.
fn networks(vms: impl Iterator<Item = IpNet>, loopback: Option<IpNet>) -> Vec<Network> {
    let mut v: Vec<Network> = vms.map(|prefix| Network { prefix, vm: true }).collect();
    v.extend(loopback.map(|prefix| Network { prefix, vm: false }));
    v.sort_by_key(|n| n.prefix);
    v
}

/// The peers in bgpd's order, each with its remote-as, after FRR's own checks.
fn peers(cfg: &Config) -> Result<Vec<(PeerName, RemoteAs)>, Invalid> {
    let mut out: Vec<(usize, PeerName, RemoteAs)> = Vec::new();
    for (i, p) in cfg.bgp.peers.iter().enumerate() {
        let name = match (&p.interface, p.address) {
            (Some(ifname), None) => PeerName::Interface(ifname.clone()),
            (None, Some(addr)) => {
                check_peer_address(i, addr)?;
                PeerName::Address(addr)
            }
            // Config::load refuses both and neither.
            _ => {
                return Err(Invalid(format!(
                    "invalid bgp.peer[{i}]: give exactly one of interface (unnumbered) or address (numbered)"
                )));
            }
        };
        if p.remote_as == RemoteAs::Asn(0) {
            return Err(Invalid(format!("invalid bgp.peer[{i}].remote_as = 0: AS 0 is reserved")));
        }
        if let Some((j, _, _)) = out.iter().find(|(_, n, _)| *n == name) {
            return Err(Invalid(format!("invalid bgp.peer[{i}]: {name} is already bgp.peer[{j}]")));
        }
        out.push((i, name, p.remote_as.clone()));
    }
    // bgpd refuses a peer-group whose members mix internal and external sessions.
    let internal = |r: &RemoteAs| match r {
        RemoteAs::Internal => true,
        RemoteAs::External => false,
        RemoteAs::Asn(n) => *n == cfg.bgp.asn,
    };
    if let (Some(a), Some(b)) =
        (out.iter().find(|(_, _, r)| internal(r)), out.iter().find(|(_, _, r)| !internal(r)))
    {
        return Err(Invalid(format!(
            "invalid bgp.peer: bgp.peer[{}] is internal (iBGP) and bgp.peer[{}] is external (eBGP); \
             hvroute's one peer-group {PEER_GROUP} takes only one kind, as FRR requires",
            a.0, b.0
        )));
    }
    out.sort_by(|a, b| a.1.frr_cmp(&b.1));
    Ok(out.into_iter().map(|(_, n, r)| (n, r)).collect())
}

fn check_peer_address(i: usize, addr: IpAddr) -> Result<(), Invalid> {
    let why = match addr {
        IpAddr::V6(a) if a.is_unicast_link_local() => {
            Some("a link-local neighbour needs its interface: use interface = \"IFNAME\" (BGP unnumbered)")
        }
        a if a.is_unspecified() || a.is_multicast() || a.is_loopback() => {
            Some("not a unicast neighbour address")
        }
        IpAddr::V4(a) if a.is_broadcast() => Some("not a unicast neighbour address"),
        _ => None,
    };
    match why {
        Some(w) => Err(Invalid(format!("invalid bgp.peer[{i}].address = {addr}: {w}"))),
        None => Ok(()),
    }
}

fn check_loopback(key: &str, a: IpAddr, routable: bool) -> Result<(), Invalid> {
    if routable {
        Ok(())
    } else {
        Err(Invalid(format!(
            "invalid {key} = {a}: the host loopback must be a routable unicast address, the source of ICMP errors"
        )))
    }
}

fn is_global4(a: Ipv4Addr) -> bool {
    !(a.is_unspecified()
        || a.is_loopback()
        || a.is_link_local()
        || a.is_multicast()
        || a.is_broadcast()
        || a.octets()[0] >= 240)
}

fn is_global6(a: Ipv6Addr) -> bool {
    !(a.is_unspecified() || a.is_loopback() || a.is_multicast() || a.is_unicast_link_local())
}

/// FRR's `if_cmp_name_func` (lib/if.c): interface names compare by their letters, and by
/// the value of each run of digits, so `eth2` sorts before `eth10`.
pub fn if_cmp_name(a: &str, b: &str) -> Ordering {
    let (mut p1, mut p2) = (a.as_bytes(), b.as_bytes());
    let digits = |s: &[u8]| s.iter().take_while(|c| c.is_ascii_digit()).count();
    let non_digits = |s: &[u8]| s.iter().take_while(|c| !c.is_ascii_digit()).count();
    while !p1.is_empty() && !p2.is_empty() {
        let (l1, l2) = (non_digits(p1), non_digits(p2));
        if l1 != l2 {
            return p1.cmp(p2);
        }
        match p1[..l1].cmp(&p2[..l1]) {
            Ordering::Equal => {}
            o => return o,
        }
        p1 = &p1[l1..];
        p2 = &p2[l1..];
        match (p1.is_empty(), p2.is_empty()) {
            (true, true) => return Ordering::Equal,
            (true, false) => return Ordering::Less,
            (false, true) => return Ordering::Greater,
            _ => {}
        }
        let (d1, d2) = (digits(p1), digits(p2));
        // At most 15 characters: the value fits in a u64.
        let value = |s: &[u8]| s.iter().fold(0u64, |v, c| v * 10 + u64::from(c - b'0'));
        match value(&p1[..d1]).cmp(&value(&p2[..d2])) {
            Ordering::Equal => {}
            o => return o,
        }
        if d1 != d2 {
            return p1.cmp(p2);
        }
        p1 = &p1[d1..];
        p2 = &p2[d2..];
    }
    match (p1.is_empty(), p2.is_empty()) {
        (false, _) => Ordering::Greater,
        (_, false) => Ordering::Less,
        _ => Ordering::Equal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(extra: &str) -> Config {
        Config::parse(&format!(
            "[pools]\nipv4 = [\"192.0.2.0/24\"]\nipv6 = [\"2001:db8:100::/40\"]\n[bgp]\nasn = 65001\nrouter_id = \"10.255.0.1\"\n{extra}"
        ))
        .unwrap()
    }

    #[test]
    fn interface_names_sort_as_frr_does() {
        let mut v = vec!["eth10", "eth2", "swp1s1", "eth1", "swp1", "bond0", "eth01"];
        v.sort_by(|a, b| if_cmp_name(a, b));
        // Equal values with different digits compare as text, as in FRR: "01" < "1".
        assert_eq!(v, ["bond0", "eth01", "eth1", "eth2", "eth10", "swp1", "swp1s1"]);
    }

    #[test]
    fn frr_refusals_are_refused_here_naming_the_key() {
        let cases = [
            (
                "[[bgp.peer]]\ninterface = \"eth1\"\nremote_as = \"internal\"\n[[bgp.peer]]\naddress = \"10.0.0.1\"\nremote_as = 65000\n",
                "bgp.peer[0] is internal",
            ),
            (
                "[[bgp.peer]]\naddress = \"10.0.0.1\"\nremote_as = 65001\n[[bgp.peer]]\ninterface = \"eth1\"\nremote_as = \"external\"\n",
                "bgp.peer[0] is internal",
            ),
            (
                "[[bgp.peer]]\naddress = \"10.0.0.1\"\nremote_as = 65000\n[[bgp.peer]]\naddress = \"10.0.0.1\"\nremote_as = 65002\n",
                "bgp.peer[1]: address 10.0.0.1 is already bgp.peer[0]",
            ),
            ("[[bgp.peer]]\naddress = \"fe80::1\"\nremote_as = 65000\n", "bgp.peer[0].address = fe80::1"),
            ("[[bgp.peer]]\naddress = \"10.0.0.1\"\nremote_as = 0\n", "bgp.peer[0].remote_as = 0"),
            ("loopback4 = \"127.0.0.1\"\n", "bgp.loopback4 = 127.0.0.1"),
            ("loopback6 = \"fe80::5\"\n", "bgp.loopback6 = fe80::5"),
        ];
        // Config::load runs the same check, so a daemon never starts with such a file.
        for (extra, needle) in cases {
            let text = format!(
                "[pools]\nipv4 = [\"192.0.2.0/24\"]\nipv6 = [\"2001:db8:100::/40\"]\n[bgp]\nasn = 65001\nrouter_id = \"10.255.0.1\"\n{extra}"
            );
            let inv = Config::parse(&text).unwrap_err();
            assert!(inv.0.contains(needle), "{:?} should contain {needle:?}", inv.0);
        }
    }

    #[test]
    fn a_vm_prefix_outside_the_pools_is_refused() {
        let e = render(&cfg(""), &["198.51.100.7".parse().unwrap()].into()).unwrap_err();
        assert!(e.downcast_ref::<Invalid>().unwrap().0.contains("198.51.100.7"), "{e:#}");
    }

    #[test]
    fn a_host_pool_gets_no_ge_and_host_bits_are_cleared() {
        let c = Config::parse(
            "[pools]\nipv4 = [\"192.0.2.7/32\", \"198.51.100.9/24\", \"198.51.100.0/24\"]\n[bgp]\nasn = 65001\nrouter_id = \"10.255.0.1\"\n",
        )
        .unwrap();
        let out = render(&c, &BTreeSet::new()).unwrap();
        assert!(out.contains("ip prefix-list HVR-POOLS-V4 seq 5 permit 192.0.2.7/32\n"), "{out}");
        assert!(out.contains("ip prefix-list HVR-POOLS-V4 seq 10 permit 198.51.100.0/24 ge 32\n"), "{out}");
        assert!(!out.contains("seq 15"), "duplicate pools after truncation must merge: {out}");
    }
}
