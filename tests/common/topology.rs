//! The lab's topology files (`tests/topologies/*.clab.yml`): containerlab's topology format,
//! read by the one parser that `scripts/lab.sh` (through `examples/lab-topology.rs`), the
//! end-to-end tests' `Fabric` and the topology consistency tests share.
//!
//! Contract:
//! - Input: a containerlab topology file (`name:`, `topology:` `nodes:` with `kind:`,
//!   `image:`, `binds:`, `exec:`, `env:`, `labels:`, and `links:` with
//!   `endpoints: ["node:if", "node:if"]`). Keys containerlab does not know are refused, so a
//!   typo fails here before containerlab sees it. The accepted keys are a subset of
//!   containerlab's `schemas/clab.schema.json` (upstream commit b11ef1ad, 2024).
//! - Every link is a veth between two nodes of the file; an endpoint naming an unknown node,
//!   an interface used twice on one node, or a link without exactly two endpoints is an
//!   error that names it.
//! - A node's facts live in its `env:` as `HVR_*` variables (containerlab passes them to
//!   the container, the namespace lab reads them from here):
//!   - every node: `HVR_ROLE` = `spine`, `host` (the outside host), `hypervisor` or `vm`;
//!   - any node: `HVR_IF_<ifname>` = the addresses (with prefix length) on that interface,
//!     `HVR_LOOPBACK` = addresses on `lo`, `HVR_ROUTES` = `;`-separated `ip route add`
//!     arguments;
//!   - spine: `HVR_ASN`, `HVR_ROUTER_ID`, `HVR_EXTRA4`, `HVR_EXTRA6` (prefixes the spine
//!     announces and the hypervisors must refuse), `HVR_BGP_INTERFACES` (its interfaces
//!     towards the hypervisors);
//!   - hypervisor: `HVR_ASN`, `HVR_ROUTER_ID`, `HVR_PEERING` (`unnumbered` or `numbered`),
//!     `HVR_UPLINK` (its interface towards the spine);
//!   - vm: `HVR_MAC`, and `HVR_IP4` and/or `HVR_IP6` (host addresses, no prefix length).
//!
//!   A missing or malformed fact is an error naming the node and the variable.
//! - [`Topology::facts`] turns the nodes into typed [`Facts`] (one spine, one outside host,
//!   hypervisors, VMs, each linked as the roles require); [`Facts::to_bash`] prints them as
//!   the bash declarations `scripts/lab.sh` evaluates, [`Facts::node_shell`] as the
//!   variables one node's set-up script reads under containerlab.
//! - Pure: no I/O except [`Topology::load`], which reads one file.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use ipnet::IpNet;
use serde::Deserialize;

/// What is wrong with a topology file. Each message names the bad node, link or value.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("not a containerlab topology: {0}")]
    Yaml(String),
    #[error("node name {0:?} is not a short lowercase name (a-z, 0-9, '-')")]
    BadNodeName(String),
    #[error("link {index} has {count} endpoints; a veth link has exactly 2")]
    EndpointCount { index: usize, count: usize },
    #[error("link endpoint {0:?} is not NODE:INTERFACE")]
    BadEndpoint(String),
    #[error("link endpoint {endpoint:?} names node {node:?}, which is not in the topology")]
    UnknownNode { endpoint: String, node: String },
    #[error("interface {iface:?} of node {node:?} is in more than one link")]
    DuplicateInterface { node: String, iface: String },
    #[error("node {node:?} has no {fact} in its env")]
    MissingFact { node: String, fact: String },
    #[error("node {node:?}: {fact}={value:?} is invalid: {why}")]
    BadFact { node: String, fact: String, value: String, why: String },
    #[error("{0}")]
    Shape(String),
}

type Result<T> = std::result::Result<T, TopologyError>;

/// The keys of a containerlab node that this parser accepts (all of them containerlab's).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    pub kind: Option<String>,
    pub image: Option<String>,
    pub group: Option<String>,
    #[serde(default)]
    pub binds: Vec<String>,
    #[serde(default)]
    pub exec: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(rename = "startup-delay")]
    pub startup_delay: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLink {
    endpoints: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTopology {
    #[serde(default)]
    defaults: Option<NodeConfig>,
    #[serde(default)]
    kinds: BTreeMap<String, NodeConfig>,
    nodes: BTreeMap<String, Option<NodeConfig>>,
    #[serde(default)]
    links: Vec<RawLink>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    name: String,
    prefix: Option<String>,
    topology: RawTopology,
}

/// One end of a veth: a node and its interface.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Endpoint {
    pub node: String,
    pub iface: String,
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.node, self.iface)
    }
}

/// A veth between two nodes, endpoints in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub a: Endpoint,
    pub b: Endpoint,
}

impl Link {
    /// The link as an unordered pair: the smaller endpoint first.
    pub fn pair(&self) -> (Endpoint, Endpoint) {
        if self.a <= self.b { (self.a.clone(), self.b.clone()) } else { (self.b.clone(), self.a.clone()) }
    }
}

/// A parsed and checked topology file.
#[derive(Debug, Clone)]
pub struct Topology {
    pub name: String,
    pub nodes: BTreeMap<String, NodeConfig>,
    pub links: Vec<Link>,
}

fn valid_node_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
}

/// An interface name the kernel takes (at most 15 bytes) and an env variable name can carry.
fn valid_ifname(s: &str) -> bool {
    !s.is_empty() && s.len() <= 15 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn parse_endpoint(s: &str) -> Result<Endpoint> {
    let (node, iface) = s.split_once(':').ok_or_else(|| TopologyError::BadEndpoint(s.to_string()))?;
    if !valid_node_name(node) || !valid_ifname(iface) {
        return Err(TopologyError::BadEndpoint(s.to_string()));
    }
    Ok(Endpoint { node: node.to_string(), iface: iface.to_string() })
}

impl Topology {
    pub fn load(path: &Path) -> Result<Topology> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| TopologyError::Read { path: path.display().to_string(), source })?;
        Topology::parse(&text)
    }

    pub fn parse(text: &str) -> Result<Topology> {
        let de = serde_norway::Deserializer::from_str(text);
        let raw: RawFile =
            serde_path_to_error::deserialize(de).map_err(|e| TopologyError::Yaml(e.to_string()))?;
        let mut nodes = BTreeMap::new();
        for (name, cfg) in raw.topology.nodes {
            if !valid_node_name(&name) {
                return Err(TopologyError::BadNodeName(name));
            }
            nodes.insert(name, cfg.unwrap_or_default());
        }
        let mut used = BTreeSet::new();
        let mut links = Vec::new();
        for (index, l) in raw.topology.links.iter().enumerate() {
            if l.endpoints.len() != 2 {
                return Err(TopologyError::EndpointCount { index: index + 1, count: l.endpoints.len() });
            }
            let mut ends = Vec::new();
            for e in &l.endpoints {
                let ep = parse_endpoint(e)?;
                if !nodes.contains_key(&ep.node) {
                    return Err(TopologyError::UnknownNode { endpoint: e.clone(), node: ep.node });
                }
                if !used.insert(ep.clone()) {
                    return Err(TopologyError::DuplicateInterface { node: ep.node, iface: ep.iface });
                }
                ends.push(ep);
            }
            let b = ends.pop().expect("two endpoints");
            let a = ends.pop().expect("two endpoints");
            links.push(Link { a, b });
        }
        Ok(Topology { name: raw.name, nodes, links })
    }

    pub fn node_names(&self) -> BTreeSet<String> {
        self.nodes.keys().cloned().collect()
    }

    /// Every link as an unordered endpoint pair.
    pub fn link_pairs(&self) -> BTreeSet<(Endpoint, Endpoint)> {
        self.links.iter().map(Link::pair).collect()
    }

    /// The other end of NODE's interface IFACE, if it is in a link.
    pub fn peer_of(&self, node: &str, iface: &str) -> Option<&Endpoint> {
        self.links.iter().find_map(|l| {
            if l.a.node == node && l.a.iface == iface {
                Some(&l.b)
            } else if l.b.node == node && l.b.iface == iface {
                Some(&l.a)
            } else {
                None
            }
        })
    }

    /// What differs between this file and a lab that holds NODES and LINKS (veths as
    /// unordered endpoint pairs), both ways, one sentence per difference; empty if they are
    /// the same. LAB names the lab in the sentences.
    pub fn differences(
        &self,
        lab: &str,
        nodes: &BTreeSet<String>,
        links: &BTreeSet<(Endpoint, Endpoint)>,
    ) -> Vec<String> {
        let mut out = Vec::new();
        let want_nodes = self.node_names();
        for n in want_nodes.difference(nodes) {
            out.push(format!("node {n} is in the file but not in {lab}"));
        }
        for n in nodes.difference(&want_nodes) {
            out.push(format!("node {n} is in {lab} but not in the file"));
        }
        let want_links = self.link_pairs();
        for (a, b) in want_links.difference(links) {
            out.push(format!("link {a} <-> {b} is in the file but not in {lab}"));
        }
        for (a, b) in links.difference(&want_links) {
            out.push(format!("link {a} <-> {b} is in {lab} but not in the file"));
        }
        out
    }

    /// NODE's links, as (its interface, the other end), in file order.
    pub fn links_of(&self, node: &str) -> Vec<(String, Endpoint)> {
        self.links
            .iter()
            .filter_map(|l| {
                if l.a.node == node {
                    Some((l.a.iface.clone(), l.b.clone()))
                } else if l.b.node == node {
                    Some((l.b.iface.clone(), l.a.clone()))
                } else {
                    None
                }
            })
            .collect()
    }

    fn env<'a>(&'a self, node: &str, fact: &str) -> Option<&'a str> {
        self.nodes.get(node)?.env.get(fact).map(String::as_str)
    }

    fn fact(&self, node: &str, fact: &str) -> Result<&str> {
        self.env(node, fact)
            .ok_or_else(|| TopologyError::MissingFact { node: node.to_string(), fact: fact.to_string() })
    }

    fn parsed<T: std::str::FromStr>(&self, node: &str, fact: &str) -> Result<T>
    where
        T::Err: std::fmt::Display,
    {
        let v = self.fact(node, fact)?;
        v.parse().map_err(|e: T::Err| bad(node, fact, v, e))
    }

    fn addrs(&self, node: &str, fact: &str) -> Result<Vec<IpNet>> {
        match self.env(node, fact) {
            None => Ok(Vec::new()),
            Some(v) => v.split_whitespace().map(|a| a.parse().map_err(|e| bad(node, fact, v, e))).collect(),
        }
    }

    fn routes(&self, node: &str) -> Result<Vec<String>> {
        let Some(v) = self.env(node, "HVR_ROUTES") else { return Ok(Vec::new()) };
        let mut out = Vec::new();
        for r in v.split(';').map(str::trim).filter(|r| !r.is_empty()) {
            let ok = r
                .split_whitespace()
                .all(|w| w.bytes().all(|b| b.is_ascii_alphanumeric() || b".:/_-".contains(&b)));
            if !ok {
                return Err(bad(node, "HVR_ROUTES", v, "only addresses, prefixes and words"));
            }
            out.push(r.split_whitespace().collect::<Vec<_>>().join(" "));
        }
        Ok(out)
    }

    /// The addresses on NODE's interface IFACE (`HVR_IF_<IFACE>`).
    pub fn iface_addrs(&self, node: &str, iface: &str) -> Result<Vec<IpNet>> {
        self.addrs(node, &format!("HVR_IF_{iface}"))
    }

    fn role(&self, node: &str) -> Result<Role> {
        let v = self.fact(node, "HVR_ROLE")?;
        match v {
            "spine" => Ok(Role::Spine),
            "host" => Ok(Role::Host),
            "hypervisor" => Ok(Role::Hypervisor),
            "vm" => Ok(Role::Vm),
            _ => Err(bad(node, "HVR_ROLE", v, "expected spine, host, hypervisor or vm")),
        }
    }

    fn nodes_with(&self, role: Role) -> Result<Vec<String>> {
        let mut v = Vec::new();
        for n in self.nodes.keys() {
            if self.role(n)? == role {
                v.push(n.clone());
            }
        }
        Ok(v)
    }

    /// The one link between A and B; an error naming both if there is none or several.
    fn link_between(&self, a: &str, b: &str) -> Result<(String, String)> {
        let found: Vec<(String, String)> =
            self.links_of(a).into_iter().filter(|(_, e)| e.node == b).map(|(i, e)| (i, e.iface)).collect();
        match found.as_slice() {
            [one] => Ok(one.clone()),
            [] => Err(TopologyError::Shape(format!("node {a:?} has no link to {b:?}"))),
            _ => Err(TopologyError::Shape(format!("nodes {a:?} and {b:?} have more than one link"))),
        }
    }

    /// The typed facts of every node, checked against the links.
    pub fn facts(&self) -> Result<Facts> {
        for n in self.nodes.keys() {
            self.role(n)?;
            for (k, v) in &self.nodes[n].env {
                if let Some(iface) = k.strip_prefix("HVR_IF_") {
                    if self.peer_of(n, iface).is_none() {
                        return Err(bad(n, k, v, "no link has this interface"));
                    }
                    self.addrs(n, k)?;
                }
            }
        }
        let one = |role: Role, what: &str| -> Result<String> {
            let v = self.nodes_with(role)?;
            match v.as_slice() {
                [one] => Ok(one.clone()),
                _ => Err(TopologyError::Shape(format!(
                    "the topology needs exactly one {what}; it has {}",
                    v.len()
                ))),
            }
        };
        let spine_name = one(Role::Spine, "node with HVR_ROLE=spine")?;
        let host_name = one(Role::Host, "node with HVR_ROLE=host (the outside host)")?;

        let (spine_out_if, host_if) = self.link_between(&spine_name, &host_name)?;
        let host = Host {
            name: host_name.clone(),
            iface: host_if.clone(),
            spine_iface: spine_out_if.clone(),
            addrs: self.iface_addrs(&host_name, &host_if)?,
            spine_addrs: self.iface_addrs(&spine_name, &spine_out_if)?,
            loopback: self.addrs(&host_name, "HVR_LOOPBACK")?,
            routes: self.routes(&host_name)?,
        };

        let mut hypervisors = Vec::new();
        for name in self.nodes_with(Role::Hypervisor)? {
            let uplink = self.fact(&name, "HVR_UPLINK")?.to_string();
            let peer = self
                .peer_of(&name, &uplink)
                .ok_or_else(|| bad(&name, "HVR_UPLINK", &uplink, "no link has this interface"))?;
            if peer.node != spine_name {
                return Err(bad(
                    &name,
                    "HVR_UPLINK",
                    &uplink,
                    format!("it leads to {}, not the spine", peer.node),
                ));
            }
            let peering = match self.fact(&name, "HVR_PEERING")? {
                "unnumbered" => Peering::Unnumbered,
                "numbered" => Peering::Numbered,
                v => return Err(bad(&name, "HVR_PEERING", v, "expected unnumbered or numbered")),
            };
            let hv = Hypervisor {
                asn: self.parsed(&name, "HVR_ASN")?,
                router_id: self.parsed(&name, "HVR_ROUTER_ID")?,
                peering,
                uplink_addrs: self.iface_addrs(&name, &uplink)?,
                spine_addrs: self.iface_addrs(&spine_name, &peer.iface)?,
                spine_iface: peer.iface.clone(),
                uplink,
                name: name.clone(),
            };
            if hv.peering == Peering::Numbered && (hv.link4().is_none() || hv.spine_link4().is_none()) {
                return Err(TopologyError::Shape(format!(
                    "hypervisor {name:?} peers numbered, so both ends of its uplink need an IPv4 address \
                     (HVR_IF_{} on {name:?} and HVR_IF_{} on {spine_name:?})",
                    hv.uplink, hv.spine_iface
                )));
            }
            if hv.peering == Peering::Unnumbered && !(hv.uplink_addrs.is_empty() && hv.spine_addrs.is_empty())
            {
                return Err(TopologyError::Shape(format!(
                    "hypervisor {name:?} peers unnumbered, so its uplink carries no address (link-local only)"
                )));
            }
            hypervisors.push(hv);
        }

        let bgp_ifs: BTreeSet<String> =
            self.fact(&spine_name, "HVR_BGP_INTERFACES")?.split_whitespace().map(str::to_string).collect();
        let want: BTreeSet<String> = hypervisors.iter().map(|h| h.spine_iface.clone()).collect();
        if bgp_ifs != want {
            let v = self.fact(&spine_name, "HVR_BGP_INTERFACES")?;
            return Err(bad(
                &spine_name,
                "HVR_BGP_INTERFACES",
                v,
                format!(
                    "the spine's links to the hypervisors are {}",
                    want.into_iter().collect::<Vec<_>>().join(" ")
                ),
            ));
        }
        let spine = Spine {
            asn: self.parsed(&spine_name, "HVR_ASN")?,
            router_id: self.parsed(&spine_name, "HVR_ROUTER_ID")?,
            extra4: self.parsed(&spine_name, "HVR_EXTRA4")?,
            extra6: self.parsed(&spine_name, "HVR_EXTRA6")?,
            routes: self.routes(&spine_name)?,
            name: spine_name.clone(),
        };
        if !spine.extra4.addr().is_ipv4() || !spine.extra6.addr().is_ipv6() {
            return Err(bad(&spine_name, "HVR_EXTRA4/HVR_EXTRA6", "", "one IPv4 and one IPv6 prefix"));
        }

        let mut vms = Vec::new();
        for name in self.nodes_with(Role::Vm)? {
            let links = self.links_of(&name);
            let [(iface, port)] = links.as_slice() else {
                return Err(TopologyError::Shape(format!(
                    "VM {name:?} needs exactly one link, to its hypervisor"
                )));
            };
            if !hypervisors.iter().any(|h| h.name == port.node) {
                return Err(TopologyError::Shape(format!(
                    "VM {name:?} is linked to {:?}, which is not a hypervisor",
                    port.node
                )));
            }
            let mac = self.fact(&name, "HVR_MAC")?;
            let ok = mac.len() == 17
                && mac.split(':').all(|o| o.len() == 2 && o.bytes().all(|b| b.is_ascii_hexdigit()));
            if !ok {
                return Err(bad(&name, "HVR_MAC", mac, "expected a MAC like 52:54:00:00:00:01"));
            }
            let ip4 =
                self.env(&name, "HVR_IP4").map(|_| self.parsed::<Ipv4Addr>(&name, "HVR_IP4")).transpose()?;
            let ip6 =
                self.env(&name, "HVR_IP6").map(|_| self.parsed::<Ipv6Addr>(&name, "HVR_IP6")).transpose()?;
            if ip4.is_none() && ip6.is_none() {
                return Err(TopologyError::MissingFact { node: name, fact: "HVR_IP4 or HVR_IP6".into() });
            }
            vms.push(VmNode {
                hypervisor: port.node.clone(),
                port: port.iface.clone(),
                iface: iface.clone(),
                mac: mac.to_ascii_lowercase(),
                ip4,
                ip6,
                name,
            });
        }

        for l in &self.links {
            let role_a = self.role(&l.a.node)?;
            let role_b = self.role(&l.b.node)?;
            let ok = matches!(
                (role_a, role_b),
                (Role::Spine, Role::Host | Role::Hypervisor)
                    | (Role::Host | Role::Hypervisor, Role::Spine)
                    | (Role::Hypervisor, Role::Vm)
                    | (Role::Vm, Role::Hypervisor)
            );
            if !ok {
                return Err(TopologyError::Shape(format!(
                    "link {} <-> {} joins two nodes that never meet",
                    l.a, l.b
                )));
            }
        }
        Ok(Facts { name: self.name.clone(), spine, host, hypervisors, vms, links: self.links.clone() })
    }
}

fn bad(node: &str, fact: &str, value: &str, why: impl std::fmt::Display) -> TopologyError {
    TopologyError::BadFact {
        node: node.to_string(),
        fact: fact.to_string(),
        value: value.to_string(),
        why: why.to_string(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Spine,
    Host,
    Hypervisor,
    Vm,
}

/// How a hypervisor peers with the spine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peering {
    /// Link-local only: `neighbor IFACE interface` on both ends.
    Unnumbered,
    /// Over the uplink's IPv4 addresses.
    Numbered,
}

#[derive(Debug, Clone)]
pub struct Spine {
    pub name: String,
    pub asn: u32,
    pub router_id: Ipv4Addr,
    pub extra4: IpNet,
    pub extra6: IpNet,
    pub routes: Vec<String>,
}

/// The outside host, behind the spine.
#[derive(Debug, Clone)]
pub struct Host {
    pub name: String,
    pub iface: String,
    pub spine_iface: String,
    pub addrs: Vec<IpNet>,
    pub spine_addrs: Vec<IpNet>,
    pub loopback: Vec<IpNet>,
    pub routes: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Hypervisor {
    pub name: String,
    pub asn: u32,
    pub router_id: Ipv4Addr,
    pub peering: Peering,
    pub uplink: String,
    pub spine_iface: String,
    /// Addresses on the uplink, and on the spine's end of it (both empty when unnumbered).
    pub uplink_addrs: Vec<IpNet>,
    pub spine_addrs: Vec<IpNet>,
}

fn first4(a: &[IpNet]) -> Option<IpAddr> {
    a.iter().map(IpNet::addr).find(IpAddr::is_ipv4)
}

impl Hypervisor {
    /// The hypervisor's IPv4 address on its uplink (numbered peering).
    pub fn link4(&self) -> Option<IpAddr> {
        first4(&self.uplink_addrs)
    }
    /// The spine's IPv4 address on this uplink (numbered peering).
    pub fn spine_link4(&self) -> Option<IpAddr> {
        first4(&self.spine_addrs)
    }
}

#[derive(Debug, Clone)]
pub struct VmNode {
    pub name: String,
    pub hypervisor: String,
    /// The VM's port on its hypervisor, and its own interface.
    pub port: String,
    pub iface: String,
    pub mac: String,
    pub ip4: Option<Ipv4Addr>,
    pub ip6: Option<Ipv6Addr>,
}

/// The typed facts of a topology: what the namespace lab and the fabric are built from.
#[derive(Debug, Clone)]
pub struct Facts {
    pub name: String,
    pub spine: Spine,
    pub host: Host,
    pub hypervisors: Vec<Hypervisor>,
    pub vms: Vec<VmNode>,
    pub links: Vec<Link>,
}

/// VALUE quoted for bash and sh: single quotes, with `'` written as `'\''`.
pub fn sh_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

fn join<T: std::fmt::Display>(items: &[T]) -> String {
    items.iter().map(ToString::to_string).collect::<Vec<_>>().join(" ")
}

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map(|x| x.to_string()).unwrap_or_default()
}

fn bash_array(out: &mut String, name: &str, items: &[String]) {
    let items: Vec<String> = items.iter().map(|s| sh_quote(s)).collect();
    let _ = writeln!(out, "{name}=({})", items.join(" "));
}

fn bash_map(out: &mut String, name: &str, items: impl IntoIterator<Item = (String, String)>) {
    let items: Vec<String> =
        items.into_iter().map(|(k, v)| format!("[{}]={}", sh_quote(&k), sh_quote(&v))).collect();
    let _ = writeln!(out, "declare -gA {name}=({})", items.join(" "));
}

impl Facts {
    /// Bash declarations for `scripts/lab.sh` (`eval`): node, link and per-role tables.
    pub fn to_bash(&self) -> String {
        let mut o = String::from("# Generated from the topology file by examples/lab-topology.rs.\n");
        let s = &self.spine;
        let h = &self.host;
        let hvs = &self.hypervisors;
        let vms = &self.vms;
        let scalar = |o: &mut String, k: &str, v: &str| {
            let _ = writeln!(o, "{k}={}", sh_quote(v));
        };
        scalar(&mut o, "topo_name", &self.name);
        let mut nodes = vec![s.name.clone(), h.name.clone()];
        nodes.extend(hvs.iter().map(|h| h.name.clone()));
        nodes.extend(vms.iter().map(|v| v.name.clone()));
        bash_array(&mut o, "topo_nodes", &nodes);
        bash_array(
            &mut o,
            "topo_links",
            &self.links.iter().map(|l| format!("{} {}", l.a, l.b)).collect::<Vec<_>>(),
        );
        scalar(&mut o, "spine_node", &s.name);
        scalar(&mut o, "spine_asn", &s.asn.to_string());
        scalar(&mut o, "spine_router_id", &s.router_id.to_string());
        scalar(&mut o, "extra4", &s.extra4.to_string());
        scalar(&mut o, "extra6", &s.extra6.to_string());
        bash_array(&mut o, "spine_routes", &s.routes);
        scalar(&mut o, "out_node", &h.name);
        scalar(&mut o, "spine_out_if", &h.spine_iface);
        scalar(&mut o, "spine_out_addrs", &join(&h.spine_addrs));
        scalar(&mut o, "out_if", &h.iface);
        scalar(&mut o, "out_link_addrs", &join(&h.addrs));
        scalar(&mut o, "out_loopback", &join(&h.loopback));
        let lo4 = h.loopback.iter().find(|a| a.addr().is_ipv4()).map(IpNet::addr);
        let lo6 = h.loopback.iter().find(|a| a.addr().is_ipv6()).map(IpNet::addr);
        scalar(&mut o, "out_addr4", &opt(lo4));
        scalar(&mut o, "out_addr6", &opt(lo6));
        bash_array(&mut o, "out_routes", &h.routes);
        bash_array(&mut o, "hvs", &hvs.iter().map(|h| h.name.clone()).collect::<Vec<_>>());
        let m = |f: &dyn Fn(&Hypervisor) -> String| {
            hvs.iter().map(|h| (h.name.clone(), f(h))).collect::<Vec<_>>()
        };
        bash_map(&mut o, "hv_asn", m(&|h| h.asn.to_string()));
        bash_map(&mut o, "hv_router_id", m(&|h| h.router_id.to_string()));
        bash_map(&mut o, "hv_uplink", m(&|h| h.uplink.clone()));
        bash_map(&mut o, "spine_hv_if", m(&|h| h.spine_iface.clone()));
        bash_map(&mut o, "hv_uplink_addrs", m(&|h| join(&h.uplink_addrs)));
        bash_map(&mut o, "spine_hv_addrs", m(&|h| join(&h.spine_addrs)));
        bash_map(&mut o, "hv_link4", m(&|h| opt(h.link4())));
        bash_map(&mut o, "spine_link4", m(&|h| opt(h.spine_link4())));
        bash_array(&mut o, "vms", &vms.iter().map(|v| v.name.clone()).collect::<Vec<_>>());
        let m =
            |f: &dyn Fn(&VmNode) -> String| vms.iter().map(|v| (v.name.clone(), f(v))).collect::<Vec<_>>();
        bash_map(&mut o, "vm_hv", m(&|v| v.hypervisor.clone()));
        bash_map(&mut o, "vm_port", m(&|v| v.port.clone()));
        bash_map(&mut o, "vm_if", m(&|v| v.iface.clone()));
        bash_map(&mut o, "vm_mac", m(&|v| v.mac.clone()));
        bash_map(&mut o, "vm_ip4", m(&|v| opt(v.ip4)));
        bash_map(&mut o, "vm_ip6", m(&|v| opt(v.ip6)));
        o
    }

    /// POSIX sh variables for NODE's set-up script under containerlab
    /// (`tests/topologies/clab-node.sh`): its role and everything it needs to know about
    /// its neighbours (a hypervisor's VMs, the spine's BGP neighbours).
    pub fn node_shell(&self, node: &str) -> Result<String> {
        let mut o = String::new();
        let mut var = |k: &str, v: &str| {
            let _ = writeln!(o, "{k}={}", sh_quote(v));
        };
        let s = &self.spine;
        if node == s.name {
            var("ROLE", "spine");
            var("ASN", &s.asn.to_string());
            var("ROUTER_ID", &s.router_id.to_string());
            var("EXTRA", &format!("{} {}", s.extra4, s.extra6));
            var("ROUTES", &s.routes.join(";"));
            let mut addrs = vec![format!("{} {}", self.host.spine_iface, join(&self.host.spine_addrs))];
            let mut nbrs = Vec::new();
            for h in &self.hypervisors {
                addrs.push(format!("{} {}", h.spine_iface, join(&h.spine_addrs)));
                nbrs.push(match h.peering {
                    Peering::Unnumbered => format!("{}:interface", h.spine_iface),
                    Peering::Numbered => format!("{}:{}", opt(h.link4()), h.asn),
                });
            }
            var("ADDRS", &addrs.join(";"));
            var("NEIGHBORS", &nbrs.join(" "));
        } else if node == self.host.name {
            var("ROLE", "host");
            var("ADDRS", &format!("{} {}", self.host.iface, join(&self.host.addrs)));
            var("LOOPBACK", &join(&self.host.loopback));
            var("ROUTES", &self.host.routes.join(";"));
        } else if let Some(h) = self.hypervisors.iter().find(|h| h.name == node) {
            var("ROLE", "hypervisor");
            var("ASN", &h.asn.to_string());
            var("ROUTER_ID", &h.router_id.to_string());
            var("SPINE_ASN", &s.asn.to_string());
            var("UPLINK", &h.uplink);
            var("ADDRS", &format!("{} {}", h.uplink, join(&h.uplink_addrs)));
            var("PEER", &h.spine_link4().map_or_else(|| h.uplink.clone(), |a| a.to_string()));
            let vms: Vec<String> = self
                .vms
                .iter()
                .filter(|v| v.hypervisor == h.name)
                .map(|v| format!("{},{},{},{},{}", v.name, v.mac, opt(v.ip4), opt(v.ip6), v.port))
                .collect();
            var("VMS", &vms.join(" "));
        } else if let Some(v) = self.vms.iter().find(|v| v.name == node) {
            var("ROLE", "vm");
            var("IFACE", &v.iface);
            var("MAC", &v.mac);
            var("IP4", &opt(v.ip4));
            var("IP6", &opt(v.ip6));
        } else {
            return Err(TopologyError::Shape(format!("node {node:?} is not in the topology")));
        }
        Ok(o)
    }
}
