//! The files of a drive, from a [`Seed`], and the network description read back. Pure: no
//! I/O, no clock; the same seed gives the same bytes.
//!
//! Contract (design.md §1, §6; docs/configdrive.md):
//! - [`files`] writes the guest configuration of design.md §1: every address a host prefix
//!   (/32, /128), and exactly one default route per family, via 169.254.0.1 and fe80::1, on the
//!   primary NIC only. A guest never gets competing default routes, and an IPv6-only guest
//!   never sees 169.254.0.1.
//!   - [`Flavor::OpenStack`] (label `config-2`): `openstack/latest/meta_data.json`,
//!     `network_data.json`, `user_data` (only when given, bytes as given) and
//!     `vendor_data.json`. The gateway is a network-level `"gateway"` key on the primary NIC's
//!     first network object of each family; cloud-init 23.1 and later turn it into an
//!     on-link default route when it renders through netplan or networkd.
//!   - [`Flavor::NoCloud`] (label `cidata`): `meta-data`, `network-config` (netplan v2 with
//!     explicit `on-link: true`, which cloud-init passes through to netplan unchanged) and
//!     `user-data` (as given, or an empty `#cloud-config`; NoCloud requires the file). SSH
//!     keys go in meta-data's `public-keys` in both cases.
//! - [`parse_network_data`] and [`parse_network_config`] read the network file of a drive
//!   back into [`DriveNic`]s. Their input is untrusted: bounded in size and counts, every
//!   value validated into hvroute's own types, and anything hvroute would not write (DHCP,
//!   bonds, a non-host netmask, a route that is not a default) is an [`Invalid`] that
//!   names the value.
//!
//! Data flows `Seed -> files -> Vec<DriveFile>` (then `image::write`), and
//! `bytes -> parse_* -> Vec<DriveNic>` (after `image::read`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{DriveFile, DriveNic, Flavor, GATEWAY4, GATEWAY6, Seed};
use crate::model::{HostAddr, Invalid, Mac, VmName};

/// Where an openstack drive keeps its network description.
pub const NETWORK_DATA: &str = "openstack/latest/network_data.json";
/// Where a nocloud drive keeps its network description.
pub const NETWORK_CONFIG: &str = "network-config";

/// The most bytes [`parse_network_data`] and [`parse_network_config`] read.
pub const MAX_INPUT: usize = 1 << 20;
/// The most links (NICs) a network file may describe.
pub const MAX_LINKS: usize = 64;
/// The most network objects (addresses) a network file may describe, over all NICs.
pub const MAX_NETWORKS: usize = 1024;
/// The most services (DNS servers) and routes per network a network_data.json may list.
pub const MAX_SERVICES: usize = 1024;

/// The namespace of [`uuid_for`]: RFC 4122 v5 of the DNS name `configdrive.hvroute.invalid`
/// in the DNS namespace, so that anyone can recompute a derived uuid, e.g. with Python's
/// `uuid.uuid5(uuid.UUID("e2050826-ab75-5e3a-8557-38bb87af28c6"), "web1")`.
pub const UUID_NAMESPACE: Uuid = Uuid::from_u128(0xe2050826_ab75_5e3a_8557_38bb87af28c6);

/// The uuid a drive uses for a VM when none is given: RFC 4122 version 5 (SHA-1) of the name
/// in [`UUID_NAMESPACE`]. The same name always gives the same uuid, on every hypervisor.
pub fn uuid_for(name: &VmName) -> String {
    Uuid::new_v5(&UUID_NAMESPACE, name.as_str().as_bytes()).to_string()
}

/// The drive's files for `seed` in `flavor`, in a fixed order. Deterministic.
pub fn files(seed: &Seed, flavor: Flavor) -> Vec<DriveFile> {
    match flavor {
        Flavor::OpenStack => openstack_files(seed),
        Flavor::NoCloud => nocloud_files(seed),
    }
}

fn file(path: &str, data: impl Into<Vec<u8>>) -> DriveFile {
    DriveFile { path: path.to_owned(), data: data.into() }
}

// ---- OpenStack (config-2) ---------------------------------------------------------------

fn openstack_files(seed: &Seed) -> Vec<DriveFile> {
    let mut out = vec![
        file("openstack/latest/meta_data.json", pretty_json(&meta_data(seed))),
        file(NETWORK_DATA, network_data(seed)),
    ];
    if let Some(user_data) = &seed.user_data {
        out.push(file("openstack/latest/user_data", user_data.clone()));
    }
    out.push(file("openstack/latest/vendor_data.json", "{}\n"));
    out
}

fn pretty_json<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing these plain structs cannot fail: no maps with non-string keys, no floats.
    let mut s = serde_json::to_string_pretty(value).expect("drive JSON serializes");
    s.push('\n');
    s.into_bytes()
}

/// `meta_data.json`: what cloud-init's ConfigDrive source reads. `uuid` becomes the
/// instance-id (required), `hostname` the local hostname, `public_keys` the SSH keys.
#[derive(Serialize)]
struct MetaData<'a> {
    uuid: &'a str,
    name: &'a str,
    hostname: &'a str,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    public_keys: BTreeMap<String, &'a str>,
}

fn meta_data(seed: &Seed) -> MetaData<'_> {
    MetaData {
        uuid: &seed.uuid,
        name: seed.name.as_str(),
        hostname: seed.name.as_str(),
        public_keys: seed.ssh_keys.iter().enumerate().map(|(i, k)| (format!("key{i}"), k.as_str())).collect(),
    }
}

#[derive(Serialize)]
struct NetworkData {
    links: Vec<Link>,
    networks: Vec<Network>,
    services: Vec<Service>,
}

#[derive(Serialize)]
struct Link {
    id: String,
    #[serde(rename = "type")]
    kind: &'static str,
    ethernet_mac_address: String,
    mtu: u32,
}

#[derive(Serialize)]
struct Network {
    id: String,
    #[serde(rename = "type")]
    kind: &'static str,
    link: String,
    ip_address: String,
    netmask: &'static str,
    routes: [(); 0],
    #[serde(skip_serializing_if = "Option::is_none")]
    gateway: Option<&'static str>,
}

#[derive(Serialize)]
struct Service {
    #[serde(rename = "type")]
    kind: &'static str,
    address: String,
}

const NETMASK4: &str = "255.255.255.255";
const NETMASK6: &str = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";

fn network_data(seed: &Seed) -> Vec<u8> {
    let mut links = Vec::new();
    let mut networks = Vec::new();
    for (i, nic) in seed.nics.iter().enumerate() {
        let link = format!("interface{i}");
        links.push(Link {
            id: link.clone(),
            kind: "phy",
            ethernet_mac_address: nic.mac.to_string(),
            mtu: seed.mtu,
        });
        let (mut gw4, mut gw6) = (i == 0, i == 0);
        for addr in &nic.addresses {
            let (kind, netmask, gateway) = match addr.0 {
                IpAddr::V4(_) => ("ipv4", NETMASK4, std::mem::take(&mut gw4).then_some(GATEWAY4)),
                IpAddr::V6(_) => ("ipv6", NETMASK6, std::mem::take(&mut gw6).then_some(GATEWAY6)),
            };
            networks.push(Network {
                id: format!("network{}", networks.len()),
                kind,
                link: link.clone(),
                ip_address: addr.to_string(),
                netmask,
                routes: [],
                gateway,
            });
        }
    }
    let services = seed.dns.iter().map(|a| Service { kind: "dns", address: a.to_string() }).collect();
    pretty_json(&NetworkData { links, networks, services })
}

// ---- NoCloud (cidata) -------------------------------------------------------------------

/// The user-data of a NoCloud drive built without one: NoCloud requires the file, and an
/// empty cloud-config changes nothing.
pub const EMPTY_USER_DATA: &[u8] = b"#cloud-config\n{}\n";

fn nocloud_files(seed: &Seed) -> Vec<DriveFile> {
    vec![
        file("meta-data", nocloud_meta_data(seed)),
        file(NETWORK_CONFIG, network_config(seed)),
        file("user-data", seed.user_data.clone().unwrap_or_else(|| EMPTY_USER_DATA.to_vec())),
    ]
}

/// A YAML double-quoted scalar. JSON string syntax is a subset of YAML's double-quoted style,
/// so every value is a string to YAML 1.1 and 1.2 alike (an unquoted MAC of digits would be a
/// base-60 integer to PyYAML, and a VM named `null` would be null).
fn q(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

fn nocloud_meta_data(seed: &Seed) -> String {
    let mut y = String::new();
    let _ = writeln!(y, "instance-id: {}", q(&seed.uuid));
    let _ = writeln!(y, "local-hostname: {}", q(seed.name.as_str()));
    if !seed.ssh_keys.is_empty() {
        y.push_str("public-keys:\n");
        for k in &seed.ssh_keys {
            let _ = writeln!(y, "  - {}", q(k));
        }
    }
    y
}

/// Netplan v2 without the top-level `network:` key, the form every cloud-init version reads
/// from a NoCloud drive. Routes use `0.0.0.0/0` and `::/0` rather than `default`, which old
/// netplan releases do not know.
fn network_config(seed: &Seed) -> String {
    let mut y = String::from("version: 2\nethernets:\n");
    for (i, nic) in seed.nics.iter().enumerate() {
        let _ = writeln!(y, "  eth{i}:");
        let _ = writeln!(y, "    match:\n      macaddress: {}", q(&nic.mac.to_string()));
        let _ = writeln!(y, "    mtu: {}", seed.mtu);
        if nic.addresses.is_empty() {
            y.push_str("    addresses: []\n");
        } else {
            y.push_str("    addresses:\n");
        }
        for a in &nic.addresses {
            let len = if a.0.is_ipv4() { 32 } else { 128 };
            let _ = writeln!(y, "      - {}", q(&format!("{a}/{len}")));
        }
        let has4 = nic.addresses.iter().any(|a| a.0.is_ipv4());
        let has6 = nic.addresses.iter().any(|a| a.0.is_ipv6());
        if i == 0 && (has4 || has6) {
            y.push_str("    routes:\n");
            if has4 {
                let _ = writeln!(
                    y,
                    "      - to: \"0.0.0.0/0\"\n        via: {}\n        on-link: true",
                    q(GATEWAY4)
                );
            }
            if has6 {
                let _ =
                    writeln!(y, "      - to: \"::/0\"\n        via: {}\n        on-link: true", q(GATEWAY6));
            }
        }
        if has6 {
            // As cloud-init renders a static IPv6 network_data.json: the bridge sends no RAs,
            // and a stray one must not add addresses or routes.
            y.push_str("    accept-ra: false\n");
        }
        if i == 0 && !seed.dns.is_empty() {
            y.push_str("    nameservers:\n      addresses:\n");
            for d in &seed.dns {
                let _ = writeln!(y, "        - {}", q(&d.to_string()));
            }
        }
    }
    y
}

// ---- Reading back: network_data.json ----------------------------------------------------

fn invalid(msg: String) -> Invalid {
    Invalid(msg)
}

/// The link types cloud-init treats as a physical NIC (`KNOWN_PHYSICAL_TYPES` in
/// cloudinit/sources/helpers/openstack.py).
const PHYSICAL_TYPES: &[&str] = &[
    "bgpovs",
    "bridge",
    "cascading",
    "dvs",
    "ethernet",
    "hw_veb",
    "hyperv",
    "ovs",
    "phy",
    "tap",
    "vhostuser",
    "vif",
];

#[derive(Deserialize)]
struct InNetworkData {
    #[serde(default)]
    links: Vec<InLink>,
    #[serde(default)]
    networks: Vec<InNetwork>,
    #[serde(default)]
    services: Vec<InService>,
}

#[derive(Deserialize)]
struct InLink {
    id: String,
    #[serde(rename = "type")]
    kind: Option<String>,
    ethernet_mac_address: Option<String>,
    mtu: Option<u32>,
}

#[derive(Deserialize)]
struct InNetwork {
    id: Option<String>,
    #[serde(rename = "type")]
    kind: String,
    link: String,
    ip_address: Option<String>,
    netmask: Option<String>,
    gateway: Option<String>,
    #[serde(default)]
    routes: Vec<InRoute>,
}

#[derive(Deserialize)]
struct InRoute {
    network: String,
    netmask: String,
    gateway: String,
}

#[derive(Deserialize)]
struct InService {
    #[serde(rename = "type")]
    kind: String,
    address: Option<String>,
}

fn check_size(bytes: &[u8], what: &str) -> Result<(), Invalid> {
    if bytes.len() > MAX_INPUT {
        return Err(invalid(format!("{what} is {} bytes, more than the {MAX_INPUT} read", bytes.len())));
    }
    Ok(())
}

fn check_count(n: usize, max: usize, what: &str) -> Result<(), Invalid> {
    if n > max {
        return Err(invalid(format!("{n} {what}, more than the {max} accepted")));
    }
    Ok(())
}

fn parse_mac(s: &str, link: &str) -> Result<Mac, Invalid> {
    Mac::from_str(s).map_err(|e| invalid(format!("link {link:?} has an {e}")))
}

/// `who` names the object, e.g. `network "network0"`.
fn parse_gateway(s: &str, v4: bool, who: &str) -> Result<IpAddr, Invalid> {
    match IpAddr::from_str(s) {
        Ok(ip) if ip.is_ipv4() == v4 => Ok(ip),
        Ok(_) => Err(invalid(format!("{who} has gateway {s:?} of the other address family"))),
        Err(_) => Err(invalid(format!("{who} has gateway {s:?}, which is not an IP address"))),
    }
}

/// A netmask for a host prefix: all ones in the family of the address (dotted, colon-hex or
/// as a prefix length), or absent.
fn is_host_netmask(mask: &str, v4: bool) -> bool {
    match (IpAddr::from_str(mask), v4) {
        (Ok(IpAddr::V4(m)), true) => m.to_bits() == u32::MAX,
        (Ok(IpAddr::V6(m)), false) => m.to_bits() == u128::MAX,
        (Ok(_), _) => false,
        (Err(_), _) => mask == if v4 { "32" } else { "128" },
    }
}

fn is_default_route(network: &str, netmask: &str) -> bool {
    matches!((IpAddr::from_str(network), IpAddr::from_str(netmask)),
        (Ok(n), Ok(m)) if n.is_unspecified() && m.is_unspecified() && n.is_ipv4() == m.is_ipv4())
        || (network == "0.0.0.0" && netmask == "0")
        || (network == "::" && netmask == "0")
}

/// The NICs an OpenStack `network_data.json` describes, in the order of its `links`, each with
/// the addresses and gateways of the network objects on it. Untrusted input: see the module
/// docs for what is refused.
pub fn parse_network_data(bytes: &[u8]) -> Result<Vec<DriveNic>, Invalid> {
    check_size(bytes, "network_data.json")?;
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    let data: InNetworkData = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            invalid(format!("network_data.json is not valid: {inner}"))
        } else {
            invalid(format!("network_data.json is not valid at {path}: {inner}"))
        }
    })?;
    check_count(data.links.len(), MAX_LINKS, "links in network_data.json")?;
    check_count(data.networks.len(), MAX_NETWORKS, "networks in network_data.json")?;
    check_count(data.services.len(), MAX_SERVICES, "services in network_data.json")?;

    let mut nics: Vec<DriveNic> = Vec::with_capacity(data.links.len());
    let mut index: BTreeMap<&str, usize> = BTreeMap::new();
    let mut macs = BTreeSet::new();
    for link in &data.links {
        let id = link.id.as_str();
        let kind = link.kind.as_deref().unwrap_or("phy");
        if !PHYSICAL_TYPES.contains(&kind) {
            return Err(invalid(format!(
                "link {id:?} has type {kind:?}; hvroute drives describe physical NICs only"
            )));
        }
        let mac = link
            .ethernet_mac_address
            .as_deref()
            .ok_or_else(|| invalid(format!("link {id:?} has no ethernet_mac_address")))?;
        let mac = parse_mac(mac, id)?;
        if !macs.insert(mac) {
            return Err(invalid(format!("MAC address {mac} appears on more than one link")));
        }
        if let Some(mtu) = link.mtu
            && !(68..=65535).contains(&mtu)
        {
            return Err(invalid(format!("link {id:?} has mtu {mtu}; expected 68 to 65535")));
        }
        if index.insert(id, nics.len()).is_some() {
            return Err(invalid(format!("link id {id:?} appears more than once")));
        }
        nics.push(DriveNic {
            mac,
            mtu: link.mtu,
            addresses: Vec::new(),
            gateways: Vec::new(),
            dns: Vec::new(),
        });
    }

    for (i, net) in data.networks.iter().enumerate() {
        let fallback = format!("#{i}");
        let id = net.id.as_deref().unwrap_or(&fallback);
        let nic = *index.get(net.link.as_str()).ok_or_else(|| {
            invalid(format!("network {id:?} names link {:?}, which is not in links", net.link))
        })?;
        let v4 = match net.kind.as_str() {
            "ipv4" => true,
            "ipv6" => false,
            other => {
                return Err(invalid(format!(
                    "network {id:?} has type {other:?}; hvroute guests have static host addresses only (ipv4 or ipv6)"
                )));
            }
        };
        let addr =
            net.ip_address.as_deref().ok_or_else(|| invalid(format!("network {id:?} has no ip_address")))?;
        let host = HostAddr::from_str(addr).map_err(|e| invalid(format!("network {id:?} has an {e}")))?;
        if host.0.is_ipv4() != v4 {
            return Err(invalid(format!("network {id:?} of type {:?} has ip_address {addr:?}", net.kind)));
        }
        if let Some(mask) = &net.netmask
            && !is_host_netmask(mask, v4)
        {
            let want = if v4 { NETMASK4 } else { NETMASK6 };
            return Err(invalid(format!(
                "network {id:?} has netmask {mask:?}; hvroute routes host prefixes only, so it must be {want} or absent"
            )));
        }
        check_count(net.routes.len(), MAX_SERVICES, "routes in one network")?;
        let nic = &mut nics[nic];
        nic.addresses.push(host);
        if let Some(gw) = &net.gateway {
            nic.gateways.push(parse_gateway(gw, v4, &format!("network {id:?}"))?);
        }
        for r in &net.routes {
            if !is_default_route(&r.network, &r.netmask) {
                return Err(invalid(format!(
                    "network {id:?} has a route to {}/{}; hvroute guests have default routes only",
                    r.network, r.netmask
                )));
            }
            nic.gateways.push(parse_gateway(
                &r.gateway,
                r.network.contains('.'),
                &format!("network {id:?}"),
            )?);
        }
    }

    for s in &data.services {
        if s.kind == "dns" {
            let a = s.address.as_deref().unwrap_or("");
            let ip = IpAddr::from_str(a)
                .map_err(|_| invalid(format!("dns service address {a:?} is not an IP address")))?;
            if let Some(first) = nics.first_mut()
                && !first.dns.contains(&ip)
            {
                first.dns.push(ip);
            }
        }
    }
    Ok(nics)
}

// ---- Reading back: NoCloud network-config (netplan v2) ----------------------------------

#[derive(Deserialize)]
struct V2 {
    version: u32,
    #[serde(default)]
    ethernets: serde_norway::Mapping,
}

#[derive(Deserialize)]
struct V2Ethernet {
    #[serde(rename = "match")]
    matcher: Option<V2Match>,
    macaddress: Option<String>,
    mtu: Option<u32>,
    #[serde(default)]
    addresses: Vec<String>,
    #[serde(default)]
    routes: Vec<V2Route>,
    gateway4: Option<String>,
    gateway6: Option<String>,
    dhcp4: Option<serde_norway::Value>,
    dhcp6: Option<serde_norway::Value>,
    nameservers: Option<V2Nameservers>,
}

#[derive(Deserialize)]
struct V2Nameservers {
    #[serde(default)]
    addresses: Vec<String>,
}

#[derive(Deserialize)]
struct V2Match {
    macaddress: Option<String>,
}

#[derive(Deserialize)]
struct V2Route {
    to: String,
    via: Option<String>,
}

/// netplan's booleans: true, yes, on (YAML 1.1 spellings included).
fn yaml_true(v: &Option<serde_norway::Value>) -> bool {
    match v {
        Some(serde_norway::Value::Bool(b)) => *b,
        Some(serde_norway::Value::String(s)) => {
            matches!(s.to_ascii_lowercase().as_str(), "true" | "yes" | "on" | "y")
        }
        _ => false,
    }
}

fn yaml_err(e: serde_norway::Error) -> Invalid {
    invalid(format!("network-config is not valid YAML for netplan v2: {e}"))
}

/// The NICs a NoCloud `network-config` (netplan v2, with or without the top-level `network:`
/// key) describes: its `ethernets`, in file order, matched by MAC. Untrusted input, bounded
/// like [`parse_network_data`]; DHCP, a missing MAC, a non-host address or a route that is
/// not a default are refused. Other sections (bonds, vlans) are not read.
pub fn parse_network_config(bytes: &[u8]) -> Result<Vec<DriveNic>, Invalid> {
    check_size(bytes, "network-config")?;
    let mut doc: serde_norway::Value = serde_norway::from_slice(bytes).map_err(yaml_err)?;
    if let Some(inner) = doc.get_mut("network") {
        doc = std::mem::replace(inner, serde_norway::Value::Null);
    }
    let v2: V2 = serde_norway::from_value(doc).map_err(yaml_err)?;
    if v2.version != 2 {
        return Err(invalid(format!("network-config has version {}; expected 2", v2.version)));
    }
    check_count(v2.ethernets.len(), MAX_LINKS, "ethernets in network-config")?;
    let mut nics = Vec::with_capacity(v2.ethernets.len());
    let mut macs = BTreeSet::new();
    let mut total = 0usize;
    for (key, value) in v2.ethernets {
        let id = match &key {
            serde_norway::Value::String(s) => s.clone(),
            other => format!("{other:?}"),
        };
        let eth: V2Ethernet = serde_norway::from_value(value)
            .map_err(|e| invalid(format!("ethernet {id:?} in network-config is not valid: {e}")))?;
        if yaml_true(&eth.dhcp4) || yaml_true(&eth.dhcp6) {
            return Err(invalid(format!(
                "ethernet {id:?} enables DHCP; hvroute guests have static host addresses only"
            )));
        }
        let mac = eth
            .matcher
            .and_then(|m| m.macaddress)
            .or(eth.macaddress)
            .ok_or_else(|| invalid(format!("ethernet {id:?} has no match: macaddress")))?;
        let mac = Mac::from_str(&mac).map_err(|e| invalid(format!("ethernet {id:?} has an {e}")))?;
        if !macs.insert(mac) {
            return Err(invalid(format!("MAC address {mac} appears on more than one ethernet")));
        }
        if let Some(mtu) = eth.mtu
            && !(68..=65535).contains(&mtu)
        {
            return Err(invalid(format!("ethernet {id:?} has mtu {mtu}; expected 68 to 65535")));
        }
        total += eth.addresses.len() + eth.routes.len();
        check_count(total, MAX_NETWORKS, "addresses and routes in network-config")?;
        let addresses = eth
            .addresses
            .iter()
            .map(|a| HostAddr::from_str(a).map_err(|e| invalid(format!("ethernet {id:?} has an {e}"))))
            .collect::<Result<Vec<_>, _>>()?;
        let mut gateways = Vec::new();
        for (via, v4) in [(&eth.gateway4, true), (&eth.gateway6, false)] {
            if let Some(gw) = via {
                gateways.push(parse_gateway(gw, v4, &format!("ethernet {id:?}"))?);
            }
        }
        for r in &eth.routes {
            let v4 = match r.to.as_str() {
                "0.0.0.0/0" => Some(true),
                "::/0" => Some(false),
                "default" => None,
                other => {
                    return Err(invalid(format!(
                        "ethernet {id:?} has a route to {other:?}; hvroute guests have default routes only"
                    )));
                }
            };
            let via = r
                .via
                .as_deref()
                .ok_or_else(|| invalid(format!("ethernet {id:?} has a default route without via")))?;
            let v4 = v4.unwrap_or(!via.contains(':'));
            gateways.push(parse_gateway(via, v4, &format!("ethernet {id:?}"))?);
        }
        let mut dns = Vec::new();
        for a in eth.nameservers.iter().flat_map(|n| &n.addresses) {
            let ip = IpAddr::from_str(a).map_err(|_| {
                invalid(format!("ethernet {id:?} has nameserver {a:?}, which is not an IP address"))
            })?;
            if !dns.contains(&ip) {
                dns.push(ip);
            }
        }
        nics.push(DriveNic { mac, mtu: eth.mtu, addresses, gateways, dns });
    }
    Ok(nics)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::configdrive::SeedNic;

    fn nic(mac: &str, addrs: &[&str]) -> SeedNic {
        SeedNic { mac: mac.parse().unwrap(), addresses: addrs.iter().map(|a| a.parse().unwrap()).collect() }
    }

    fn seed(nics: Vec<SeedNic>) -> Seed {
        let name: VmName = "web1".parse().unwrap();
        Seed {
            uuid: uuid_for(&name),
            name,
            nics,
            dns: vec!["192.0.2.53".parse().unwrap()],
            ssh_keys: vec!["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHvr admin@example".into()],
            user_data: None,
            mtu: 1500,
        }
    }

    fn dual() -> Seed {
        seed(vec![nic("52:54:00:00:00:01", &["192.0.2.29", "2001:db8:103::100"])])
    }

    fn get<'a>(files: &'a [DriveFile], path: &str) -> &'a str {
        let f = files.iter().find(|f| f.path == path).unwrap_or_else(|| panic!("no {path}"));
        std::str::from_utf8(&f.data).unwrap()
    }

    fn gateways_in(json: &str) -> Vec<(String, String)> {
        let v: serde_json::Value = serde_json::from_str(json).unwrap();
        v["networks"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|n| Some((n["id"].as_str()?.to_owned(), n["gateway"].as_str()?.to_owned())))
            .collect()
    }

    /// A drive whose bytes drift (key order, whitespace, a new field) changes the ISO, and
    /// CloudStack-style rebuild-and-compare would then see a change that is not one.
    #[test]
    fn dual_stack_network_data_is_the_golden_json() {
        let files = files(&dual(), Flavor::OpenStack);
        assert_eq!(
            get(&files, "openstack/latest/network_data.json"),
            r#"{
  "links": [
    {
      "id": "interface0",
      "type": "phy",
      "ethernet_mac_address": "52:54:00:00:00:01",
      "mtu": 1500
    }
  ],
  "networks": [
    {
      "id": "network0",
      "type": "ipv4",
      "link": "interface0",
      "ip_address": "192.0.2.29",
      "netmask": "255.255.255.255",
      "routes": [],
      "gateway": "169.254.0.1"
    },
    {
      "id": "network1",
      "type": "ipv6",
      "link": "interface0",
      "ip_address": "2001:db8:103::100",
      "netmask": "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
      "routes": [],
      "gateway": "fe80::1"
    }
  ],
  "services": [
    {
      "type": "dns",
      "address": "192.0.2.53"
    }
  ]
}
"#
        );
        assert_eq!(
            get(&files, "openstack/latest/meta_data.json"),
            r#"{
  "uuid": "1c2e4308-e07d-5eef-9752-7b945e8f8a2e",
  "name": "web1",
  "hostname": "web1",
  "public_keys": {
    "key0": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHvr admin@example"
  }
}
"#
        );
        assert_eq!(get(&files, "openstack/latest/vendor_data.json"), "{}\n");
        let paths: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "openstack/latest/meta_data.json",
                "openstack/latest/network_data.json",
                "openstack/latest/vendor_data.json"
            ]
        );
    }

    /// Python's uuid.uuid5(UUID_NAMESPACE, name) gives the same value, so an operator can
    /// recompute a guest's instance-id without hvroute.
    #[test]
    fn uuid_is_v5_of_the_name() {
        assert_eq!(uuid_for(&"web1".parse().unwrap()), "1c2e4308-e07d-5eef-9752-7b945e8f8a2e");
        assert_eq!(uuid_for(&"i-2-10-VM".parse().unwrap()), "69edd3df-a0b3-5791-8609-9a1de894657e");
    }

    /// Several gateways per family give a guest duplicate default routes (facts.md, cloud-init
    /// 25.1): only the primary NIC's first object of each family carries one.
    #[test]
    fn gateway_only_on_the_primary_nics_first_object_per_family() {
        let s = seed(vec![
            nic("52:54:00:00:00:01", &["192.0.2.29", "192.0.2.30", "2001:db8::1", "2001:db8::2"]),
            nic("52:54:00:00:00:02", &["192.0.2.31", "2001:db8::3"]),
        ]);
        let files = files(&s, Flavor::OpenStack);
        assert_eq!(
            gateways_in(get(&files, "openstack/latest/network_data.json")),
            [
                ("network0".to_owned(), "169.254.0.1".to_owned()),
                ("network2".to_owned(), "fe80::1".to_owned())
            ]
        );
        let nc = get(&files_nocloud(&s), "network-config").to_owned();
        assert_eq!(nc.matches("via:").count(), 2, "{nc}");
        assert_eq!(nc.split("eth1:").nth(1).unwrap().matches("via").count(), 0, "{nc}");
    }

    fn files_nocloud(s: &Seed) -> Vec<DriveFile> {
        files(s, Flavor::NoCloud)
    }

    /// A truly IPv6-only guest must not be told about an IPv4 gateway it cannot use.
    #[test]
    fn ipv6_only_has_no_ipv4_gateway_anywhere() {
        let mut s = seed(vec![nic("52:54:00:00:00:01", &["2001:db8:103::100"])]);
        s.dns = vec!["2001:db8::53".parse().unwrap()];
        for flavor in [Flavor::OpenStack, Flavor::NoCloud] {
            for f in files(&s, flavor) {
                let text = String::from_utf8(f.data).unwrap();
                assert!(!text.contains("169.254.0.1"), "{}: {text}", f.path);
                assert!(!text.contains("0.0.0.0"), "{}: {text}", f.path);
            }
        }
    }

    /// The same seed gives the same bytes: a rebuilt drive is identical.
    #[test]
    fn files_are_deterministic() {
        let mut s = dual();
        s.ssh_keys = (0..12).map(|i| format!("ssh-ed25519 AAAA{i} k{i}")).collect();
        s.user_data = Some(b"#!/bin/sh\necho hi\n".to_vec());
        for flavor in [Flavor::OpenStack, Flavor::NoCloud] {
            assert_eq!(files(&s, flavor), files(&s.clone(), flavor));
        }
        let os = files(&s, Flavor::OpenStack);
        assert_eq!(get(&os, "openstack/latest/user_data"), "#!/bin/sh\necho hi\n");
        let nc = files(&s, Flavor::NoCloud);
        assert_eq!(get(&nc, "user-data"), "#!/bin/sh\necho hi\n");
        assert!(get(&nc, "meta-data").contains("  - \"ssh-ed25519 AAAA11 k11\"\n"));
    }

    #[test]
    fn nocloud_files_are_the_golden_yaml() {
        let files = files(&dual(), Flavor::NoCloud);
        let paths: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["meta-data", "network-config", "user-data"]);
        assert_eq!(
            get(&files, "meta-data"),
            "instance-id: \"1c2e4308-e07d-5eef-9752-7b945e8f8a2e\"\nlocal-hostname: \"web1\"\npublic-keys:\n  - \"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHvr admin@example\"\n"
        );
        assert_eq!(get(&files, "user-data").as_bytes(), EMPTY_USER_DATA);
        assert_eq!(
            get(&files, "network-config"),
            r#"version: 2
ethernets:
  eth0:
    match:
      macaddress: "52:54:00:00:00:01"
    mtu: 1500
    addresses:
      - "192.0.2.29/32"
      - "2001:db8:103::100/128"
    routes:
      - to: "0.0.0.0/0"
        via: "169.254.0.1"
        on-link: true
      - to: "::/0"
        via: "fe80::1"
        on-link: true
    accept-ra: false
    nameservers:
      addresses:
        - "192.0.2.53"
"#
        );
    }

    fn drive_nics(s: &Seed) -> Vec<DriveNic> {
        s.nics
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let mut gateways = Vec::new();
                if i == 0 {
                    if n.addresses.iter().any(|a| a.0.is_ipv4()) {
                        gateways.push(GATEWAY4.parse().unwrap());
                    }
                    if n.addresses.iter().any(|a| a.0.is_ipv6()) {
                        gateways.push(GATEWAY6.parse().unwrap());
                    }
                }
                let dns = if i == 0 { s.dns.clone() } else { Vec::new() };
                DriveNic { mac: n.mac, mtu: Some(s.mtu), addresses: n.addresses.clone(), gateways, dns }
            })
            .collect()
    }

    /// `configdrive show` must print what the guest will be told: reading a drive back gives
    /// the NICs, addresses and gateways it was built from.
    #[test]
    fn both_network_files_read_back_to_the_seed() {
        let seeds = [
            dual(),
            seed(vec![nic("52:54:00:00:00:01", &["192.0.2.29"])]),
            seed(vec![nic("52:54:00:00:00:01", &["2001:db8::1"])]),
            seed(vec![
                nic("52:54:00:00:00:01", &["192.0.2.29", "2001:db8::1", "192.0.2.30", "2001:db8::2"]),
                nic("52:54:00:00:00:02", &["192.0.2.31", "2001:db8::3"]),
                nic("52:54:00:00:00:03", &[]),
            ]),
        ];
        for s in &seeds {
            let os = files(s, Flavor::OpenStack);
            let nd = parse_network_data(get(&os, "openstack/latest/network_data.json").as_bytes()).unwrap();
            assert_eq!(nd, drive_nics(s));
            let nc = files(s, Flavor::NoCloud);
            let nc = parse_network_config(get(&nc, "network-config").as_bytes()).unwrap();
            assert_eq!(nc, drive_nics(s));
        }
    }

    fn nd_with_network(net: &str) -> String {
        format!(
            r#"{{"links":[{{"id":"l0","type":"phy","ethernet_mac_address":"52:54:00:00:00:01"}}],
                "networks":[{net}]}}"#
        )
    }

    fn refused(bytes: &[u8]) -> String {
        parse_network_data(bytes).expect_err("must be refused").0
    }

    /// Untrusted drives (an admin's hand-made one, another tool's) are refused with a sentence
    /// that names the bad value, never accepted half-way.
    #[test]
    fn network_data_refusals_name_the_value() {
        let e =
            refused(br#"{"links":[{"id":"l0","type":"phy","ethernet_mac_address":"52:54:zz:00:00:01"}]}"#);
        assert!(e.contains("\"52:54:zz:00:00:01\"") && e.contains("l0"), "{e}");

        let e = refused(
            nd_with_network(r#"{"id":"n0","type":"ipv4","link":"l0","ip_address":"192.0.2.29","netmask":"255.255.255.0"}"#)
                .as_bytes(),
        );
        assert!(e.contains("\"255.255.255.0\"") && e.contains("n0"), "{e}");

        let e = refused(
            nd_with_network(r#"{"id":"n0","type":"ipv6","link":"l0","ip_address":"2001:db8::1/64"}"#)
                .as_bytes(),
        );
        assert!(e.contains("2001:db8::1/64"), "{e}");

        let e = refused(nd_with_network(r#"{"id":"n0","type":"ipv4_dhcp","link":"l0"}"#).as_bytes());
        assert!(e.contains("\"ipv4_dhcp\""), "{e}");

        let e = refused(
            nd_with_network(r#"{"id":"n0","type":"ipv4","link":"nope","ip_address":"192.0.2.1"}"#).as_bytes(),
        );
        assert!(e.contains("\"nope\""), "{e}");

        let route = r#"{"id":"n0","type":"ipv4","link":"l0","ip_address":"192.0.2.1",
            "routes":[{"network":"10.0.0.0","netmask":"255.0.0.0","gateway":"169.254.0.1"}]}"#;
        let e = refused(nd_with_network(route).as_bytes());
        assert!(e.contains("10.0.0.0/255.0.0.0"), "{e}");

        let e =
            refused(br#"{"links":[{"id":"b0","type":"bond","ethernet_mac_address":"52:54:00:00:00:01"}]}"#);
        assert!(e.contains("\"bond\""), "{e}");

        let e = refused(br#"{"links": 7}"#);
        assert!(e.contains("links"), "{e}");

        let big = vec![b' '; MAX_INPUT + 1];
        let e = refused(&big);
        assert!(e.contains(&(MAX_INPUT + 1).to_string()), "{e}");

        let nets: Vec<String> = (0..=MAX_NETWORKS)
            .map(|i| format!(r#"{{"id":"n{i}","type":"ipv4","link":"l0","ip_address":"192.0.2.1"}}"#))
            .collect();
        let e = refused(nd_with_network(&nets.join(",")).as_bytes());
        assert!(e.contains(&(MAX_NETWORKS + 1).to_string()), "{e}");

        let links: Vec<String> = (0..=MAX_LINKS)
            .map(|i| {
                format!(r#"{{"id":"l{i}","type":"phy","ethernet_mac_address":"52:54:00:00:01:{i:02x}"}}"#)
            })
            .collect();
        let e = refused(format!(r#"{{"links":[{}]}}"#, links.join(",")).as_bytes());
        assert!(e.contains(&(MAX_LINKS + 1).to_string()), "{e}");
    }

    /// What other builders write and cloud-init reads is accepted: a prefix in ip_address,
    /// no netmask, a numeric netmask, a default route instead of a gateway key.
    #[test]
    fn network_data_accepts_other_spellings_of_host_prefixes() {
        let nd = nd_with_network(
            r#"{"type":"ipv4","link":"l0","ip_address":"192.0.2.1/32"},
               {"type":"ipv6","link":"l0","ip_address":"2001:db8::1","netmask":"128"},
               {"type":"ipv4","link":"l0","ip_address":"192.0.2.2",
                "routes":[{"network":"0.0.0.0","netmask":"0.0.0.0","gateway":"169.254.0.1"}]}"#,
        );
        let nics = parse_network_data(nd.as_bytes()).unwrap();
        assert_eq!(nics.len(), 1);
        assert_eq!(nics[0].addresses.len(), 3);
        assert_eq!(nics[0].gateways, [GATEWAY4.parse::<IpAddr>().unwrap()]);
        assert_eq!(nics[0].mtu, None);
    }

    #[test]
    fn network_config_refusals_name_the_value() {
        let bad = |y: &str| parse_network_config(y.as_bytes()).expect_err(y).0;
        let e = bad(
            "version: 2\nethernets:\n  e0:\n    match: {macaddress: \"52:54:00:00:00:01\"}\n    addresses: [192.0.2.1/24]\n",
        );
        assert!(e.contains("192.0.2.1/24"), "{e}");
        let e = bad(
            "version: 2\nethernets:\n  e0:\n    match: {macaddress: \"52:54:00:00:00:01\"}\n    dhcp4: true\n",
        );
        assert!(e.contains("DHCP") && e.contains("e0"), "{e}");
        let e = bad("version: 2\nethernets:\n  e0:\n    addresses: [192.0.2.1/32]\n");
        assert!(e.contains("e0"), "{e}");
        let e = bad("version: 1\n");
        assert!(e.contains("version 1"), "{e}");
        let e = bad(
            "version: 2\nethernets:\n  e0:\n    match: {macaddress: \"52:54:00:00:00:01\"}\n    routes: [{to: 10.0.0.0/8, via: 169.254.0.1}]\n",
        );
        assert!(e.contains("10.0.0.0/8"), "{e}");
        let e = bad(&" ".repeat(MAX_INPUT + 1));
        assert!(e.contains("network-config"), "{e}");
        let e = bad("version: 2\nethernets: [\n");
        assert!(e.contains("YAML"), "{e}");
    }

    /// cloud-init's own renderer output (with `network:`, `to: default`, gateway4) reads too.
    #[test]
    fn network_config_reads_cloud_init_rendered_netplan() {
        let y = "network:\n  version: 2\n  ethernets:\n    eth0:\n      match:\n        macaddress: '52:54:00:00:00:01'\n      addresses: [192.0.2.29/32, '2001:db8::1/128']\n      gateway4: 169.254.0.1\n      routes:\n      - {to: default, via: 'fe80::1', on-link: true}\n      set-name: eth0\n";
        let nics = parse_network_config(y.as_bytes()).unwrap();
        assert_eq!(nics[0].gateways, [GATEWAY4.parse::<IpAddr>().unwrap(), GATEWAY6.parse().unwrap()]);
        assert_eq!(nics[0].addresses.len(), 2);
    }
}
