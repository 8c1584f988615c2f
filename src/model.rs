//! The VM model: validated names, MACs, host addresses and NICs.
//!
//! Contract: raw strings from the CLI, the state files and (later) libvirt XML become
//! these types at the boundary, and nothing unvalidated travels further. A value of
//! [`VmName`], [`Mac`], [`IfName`] or [`HostAddr`] is safe to put in a file path, a
//! netlink message or a vtysh command. Checks that need the configuration (pools,
//! gateways) and the other VMs (address conflicts) are [`check_addr`] and
//! [`check_conflicts`]. Everything here is pure.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::config::Config;

/// A value that failed validation. The message names the bad value; the CLI maps it to
/// exit code 2.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

fn invalid<T>(msg: impl Into<String>) -> Result<T, Invalid> {
    Err(Invalid(msg.into()))
}

macro_rules! serde_via_str {
    ($t:ty) => {
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

/// A VM name: 1 to 64 characters from `A-Z a-z 0-9 . _ -`, starting with a letter or digit.
/// CloudStack's `i-2-10-VM` passes; whitespace, quotes, slashes and `..` cannot get in.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VmName(String);

impl VmName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for VmName {
    type Err = Invalid;
    fn from_str(s: &str) -> Result<Self, Invalid> {
        let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
        let first_ok = s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
        if s.is_empty() || s.len() > 64 || !first_ok || !s.chars().all(ok_char) {
            return invalid(format!(
                "invalid VM name {s:?}: use 1 to 64 of A-Z a-z 0-9 . _ -, starting with a letter or digit"
            ));
        }
        Ok(VmName(s.to_owned()))
    }
}

impl fmt::Display for VmName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
serde_via_str!(VmName);

/// A unicast, non-zero Ethernet MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// The MAC libvirt gives a VM's tap: the VM's MAC with its first octet set to `fe`.
    pub fn tap_mac(&self) -> Mac {
        let mut m = self.0;
        m[0] = 0xfe;
        Mac(m)
    }
}

impl FromStr for Mac {
    type Err = Invalid;
    fn from_str(s: &str) -> Result<Self, Invalid> {
        let bad =
            || Invalid(format!("invalid MAC address {s:?}: expected six hex octets like 52:54:00:12:34:56"));
        let parts: Vec<&str> = s.split(':').collect();
        if parts.len() != 6 {
            return Err(bad());
        }
        let mut m = [0u8; 6];
        for (i, p) in parts.iter().enumerate() {
            if p.len() != 2 || !p.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(bad());
            }
            m[i] = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        if m == [0; 6] {
            return invalid(format!("invalid MAC address {s:?}: all-zero MAC"));
        }
        if m[0] & 1 == 1 {
            return invalid(format!("invalid MAC address {s:?}: multicast or broadcast MAC"));
        }
        Ok(Mac(m))
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(f, "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", m[0], m[1], m[2], m[3], m[4], m[5])
    }
}
serde_via_str!(Mac);

/// A Linux interface name: 1 to 15 characters from `A-Z a-z 0-9 . _ -`, not `.` or `..`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IfName(String);

impl IfName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for IfName {
    type Err = Invalid;
    fn from_str(s: &str) -> Result<Self, Invalid> {
        let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
        if s.is_empty() || s.len() > 15 || s == "." || s == ".." || !s.chars().all(ok_char) {
            return invalid(format!("invalid interface name {s:?}: use 1 to 15 of A-Z a-z 0-9 . _ -"));
        }
        Ok(IfName(s.to_owned()))
    }
}

impl fmt::Display for IfName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
serde_via_str!(IfName);

/// A VM host address: an IPv4 or IPv6 address, written bare or with `/32` or `/128`.
/// It is stored and printed bare.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HostAddr(pub IpAddr);

impl FromStr for HostAddr {
    type Err = Invalid;
    fn from_str(s: &str) -> Result<Self, Invalid> {
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let ip: IpAddr = addr
            .parse()
            .map_err(|_| Invalid(format!("invalid address {s:?}: not an IPv4 or IPv6 address")))?;
        if let Some(len) = len {
            let want = if ip.is_ipv4() { "32" } else { "128" };
            if len != want {
                return invalid(format!(
                    "invalid address {s:?}: VM addresses are host addresses, so the prefix length must be /{want} or absent"
                ));
            }
        }
        Ok(HostAddr(ip))
    }
}

impl fmt::Display for HostAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}
serde_via_str!(HostAddr);

/// A `--nic` argument, `mac=MAC,ip=ADDR[,ip=ADDR...][,port=IFNAME]`, as written: the
/// addresses in their order (none twice), the port if given. Shared by `vm add` and
/// `configdrive build`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NicArg {
    pub mac: Mac,
    pub addresses: Vec<HostAddr>,
    pub port: Option<IfName>,
}

impl FromStr for NicArg {
    type Err = Invalid;
    fn from_str(spec: &str) -> Result<Self, Invalid> {
        let mut mac = None;
        let mut addresses: Vec<HostAddr> = Vec::new();
        let mut port = None;
        for part in spec.split(',') {
            match part.split_once('=') {
                Some(("mac", v)) if mac.is_none() => mac = Some(v.parse::<Mac>()?),
                Some(("ip", v)) => {
                    let a: HostAddr = v.parse()?;
                    if addresses.contains(&a) {
                        return invalid(format!("invalid --nic {spec:?}: address {v} is given twice"));
                    }
                    addresses.push(a);
                }
                Some(("port", v)) if port.is_none() => port = Some(v.parse::<IfName>()?),
                _ => {
                    return invalid(format!(
                        "invalid --nic {spec:?}: expected mac=MAC,ip=ADDR[,ip=ADDR...][,port=IFNAME], not {part:?}"
                    ));
                }
            }
        }
        let mac = mac.ok_or_else(|| Invalid(format!("invalid --nic {spec:?}: mac= is missing")))?;
        if addresses.is_empty() {
            return invalid(format!("invalid --nic {spec:?}: give at least one ip="));
        }
        Ok(NicArg { mac, addresses, port })
    }
}

/// One VM network interface on the managed bridge. Identity is (bridge, MAC); with one
/// managed bridge per host, the MAC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Nic {
    pub mac: Mac,
    pub addresses: BTreeSet<HostAddr>,
    /// The bridge port (tap) this NIC is bound to, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<IfName>,
}

/// Who recorded an entry. `cli` is admin intent and persists across reboots; `hook` and
/// `shim` are tied to the running VM and to the boot they were recorded in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Cli,
    Hook,
    Shim,
}

impl Source {
    pub fn is_volatile(self) -> bool {
        !matches!(self, Source::Cli)
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Source::Cli => "cli",
            Source::Hook => "hook",
            Source::Shim => "shim",
        })
    }
}

/// Where a live migration into this host stands (design.md §5), as the libvirt hook
/// recorded it on the destination. Absent for everything else.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Migration {
    /// `migrate begin` ran here: the VM is on its way in and still runs on the source.
    /// The entry holds its addresses (nobody else may take them) but is not routed here.
    Incoming,
    /// `started` ran for the incoming VM: it exists here, paused, until the switchover.
    /// It is routed, and advertised de-preferred (`HVR-VM-INCOMING`), so the source keeps
    /// winning. The daemon moves it on when the guest announces itself here (RARP, ARP,
    /// NS/NA from its MAC), or after `migration.fallback_s`.
    Arriving,
    /// The guest runs here since Unix time `at`: advertised with no prepend
    /// (`HVR-VM-ARRIVED`), so this host strictly wins over the source's baseline. After
    /// `migration.settle_s` the daemon drops the migration state: the baseline again.
    Arrived { at: u64 },
}

/// A VM as the store keeps it. The first NIC is the primary one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmSpec {
    pub name: VmName,
    pub nics: Vec<Nic>,
    pub source: Source,
    /// The kernel boot id when a volatile entry was recorded; absent for `cli`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_id: Option<String>,
    /// An incoming live migration (hook entries only); absent in files written before it
    /// existed, which therefore still read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration: Option<Migration>,
}

impl VmSpec {
    /// A volatile entry from an earlier boot: parked, with no route and no advertisement,
    /// until a hook or the shim re-asserts it.
    pub fn is_parked(&self, boot_id: &str) -> bool {
        self.source.is_volatile() && self.boot_id.as_deref() != Some(boot_id)
    }

    /// Announced by `migrate begin` and not started here yet: not routed.
    pub fn is_incoming(&self) -> bool {
        self.migration == Some(Migration::Incoming)
    }

    pub fn addresses(&self) -> impl Iterator<Item = (Mac, HostAddr)> + '_ {
        self.nics.iter().flat_map(|n| n.addresses.iter().map(move |a| (n.mac, *a)))
    }

    /// Internal consistency: at least one NIC, each with an address, no MAC twice, no
    /// address twice.
    pub fn check_shape(&self) -> Result<(), Invalid> {
        if self.nics.is_empty() {
            return invalid(format!("VM {} has no NIC", self.name));
        }
        let mut macs = BTreeSet::new();
        let mut addrs = BTreeSet::new();
        for nic in &self.nics {
            if nic.addresses.is_empty() {
                return invalid(format!("NIC {} of VM {} has no address", nic.mac, self.name));
            }
            if !macs.insert(nic.mac) {
                return invalid(format!("MAC {} is given twice for VM {}", nic.mac, self.name));
            }
            for a in &nic.addresses {
                if !addrs.insert(*a) {
                    return invalid(format!("address {a} is given twice for VM {}", self.name));
                }
            }
        }
        Ok(())
    }
}

/// Checks one VM address against the configuration: it must be a global unicast host
/// address inside the pools, and not a gateway.
pub fn check_addr(cfg: &Config, addr: HostAddr) -> Result<(), Invalid> {
    let ip = addr.0;
    if ip == IpAddr::V4(cfg.bridge.gateway4) || ip == IpAddr::V6(cfg.bridge.gateway6) {
        return invalid(format!("address {ip} is the VMs' gateway and cannot be given to a VM"));
    }
    let kind = match ip {
        IpAddr::V4(v4) => v4_special(v4),
        IpAddr::V6(v6) => v6_special(v6),
    };
    if let Some(kind) = kind {
        return invalid(format!("address {ip} is a {kind} address and cannot be given to a VM"));
    }
    if !cfg.pools.contains(ip) {
        return invalid(format!(
            "address {ip} is outside the configured pools ({})",
            cfg.pools.describe(ip.is_ipv4())
        ));
    }
    Ok(())
}

fn v4_special(ip: Ipv4Addr) -> Option<&'static str> {
    if ip.is_unspecified() {
        Some("unspecified")
    } else if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_link_local() {
        Some("link-local")
    } else if ip.is_multicast() {
        Some("multicast")
    } else if ip.is_broadcast() {
        Some("broadcast")
    } else {
        None
    }
}

fn v6_special(ip: Ipv6Addr) -> Option<&'static str> {
    if ip.is_unspecified() {
        Some("unspecified")
    } else if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_unicast_link_local() {
        Some("link-local")
    } else if ip.is_multicast() {
        Some("multicast")
    } else if ip.to_ipv4_mapped().is_some() {
        Some("IPv4-mapped")
    } else {
        None
    }
}

/// Checks a VM against the other VMs in the store (design.md §3, identity): an address
/// held by a *different* MAC is a conflict; the same MAC with the same address from
/// another source is the same NIC. Parked entries hold no addresses.
pub fn check_conflicts<'a>(
    vm: &VmSpec,
    others: impl IntoIterator<Item = &'a VmSpec>,
    boot_id: &str,
) -> Result<(), Invalid> {
    let mut holders: BTreeMap<HostAddr, (Mac, &VmName)> = BTreeMap::new();
    for other in others {
        if other.name == vm.name || other.is_parked(boot_id) {
            continue;
        }
        for (mac, addr) in other.addresses() {
            holders.insert(addr, (mac, &other.name));
        }
    }
    for (mac, addr) in vm.addresses() {
        if let Some((held_mac, held_by)) = holders.get(&addr)
            && *held_mac != mac
        {
            return invalid(format!("address {addr} is already held by VM {held_by} (MAC {held_mac})"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_accept_cloudstack_and_refuse_injection() {
        for ok in ["i-2-10-VM", "vm1", "web.example", "a", "r-15-VM_x"] {
            assert!(ok.parse::<VmName>().is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-x",
            ".hidden",
            "..",
            "a b",
            "a\nb",
            "a\"b",
            "a'b",
            "a/b",
            "a;b",
            "a\\b",
            "vm\tx",
            &"x".repeat(65),
        ] {
            assert!(bad.parse::<VmName>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn macs_refuse_multicast_zero_and_garbage() {
        assert_eq!("52:54:00:AB:cd:01".parse::<Mac>().unwrap().to_string(), "52:54:00:ab:cd:01");
        for bad in [
            "00:00:00:00:00:00",
            "01:00:5e:00:00:01",
            "ff:ff:ff:ff:ff:ff",
            "52:54:00:00:00",
            "52:54:00:00:00:0g",
            "52-54-00-00-00-01",
            "525400000001",
            "52:54:00:00:00:001",
        ] {
            assert!(bad.parse::<Mac>().is_err(), "{bad}");
        }
        let m: Mac = "52:54:00:00:00:01".parse().unwrap();
        assert_eq!(m.tap_mac().to_string(), "fe:54:00:00:00:01");
    }

    #[test]
    fn host_addresses_take_only_host_lengths() {
        assert_eq!("192.0.2.1/32".parse::<HostAddr>().unwrap().to_string(), "192.0.2.1");
        assert_eq!("2001:db8::1/128".parse::<HostAddr>().unwrap().to_string(), "2001:db8::1");
        for bad in ["192.0.2.1/24", "2001:db8::1/64", "192.0.2.1/128", "192.0.2", "x", "192.0.2.1/"] {
            assert!(bad.parse::<HostAddr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn interface_names() {
        assert!("vnet0".parse::<IfName>().is_ok());
        for bad in ["", "a b", "averyveryverylongname", "..", "a/b"] {
            assert!(bad.parse::<IfName>().is_err(), "{bad}");
        }
    }
}
