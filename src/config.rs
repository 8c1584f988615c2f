//! The configuration file (`/etc/hvroute/hvroute.toml`, design.md §4).
//!
//! Contract: [`Config::load`] reads TOML, refuses unknown keys and bad values with a
//! message that names the key and the value, and fills every default except `pools`,
//! `bgp.asn` and `bgp.router_id`. A loaded `Config` is valid; the rest of the program
//! never re-checks it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use ipnet::{Ipv4Net, Ipv6Net};
use serde::Deserialize;

use crate::model::{IfName, Invalid, Mac};

pub const DEFAULT_PATH: &str = "/etc/hvroute/hvroute.toml";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default = "d_state_dir")]
    pub state_dir: PathBuf,
    #[serde(default = "d_socket")]
    pub socket: PathBuf,
    #[serde(default = "d_proto")]
    pub route_protocol: u8,
    #[serde(default = "d_resync")]
    pub resync_interval_s: u64,
    /// Where the kernel's boot id is read (volatile intent, design.md §3). Tests point it
    /// at a file of their own.
    #[serde(default = "d_boot_id_path")]
    pub boot_id_path: PathBuf,
    #[serde(default)]
    pub bridge: Bridge,
    pub pools: Pools,
    pub bgp: Bgp,
    #[serde(default)]
    pub frr: Frr,
    #[serde(default)]
    pub hook: Hook,
    #[serde(default)]
    pub migration: Migration,
    #[serde(default)]
    pub guard: Guard,
    #[serde(default)]
    pub metrics: Metrics,
}

/// The daemon's Prometheus endpoint (docs/metrics.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metrics {
    /// Where `hvroute daemon` serves `GET /metrics`; `""` turns the endpoint off.
    #[serde(default = "d_metrics_listen")]
    pub listen: Listen,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics { listen: d_metrics_listen() }
    }
}

/// The default metrics port. Prometheus' list of exporter ports (9100-9999) is fully
/// allocated; 9478 clashes with none of the exporters a hypervisor runs beside hvroute
/// (node 9100, libvirt 9177, process 9256, ipmi 9290, FRR 9342, smartctl 9633).
pub const METRICS_PORT: u16 = 9478;

/// An address to listen on, or none (off).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listen(pub Option<std::net::SocketAddr>);

impl std::str::FromStr for Listen {
    type Err = Invalid;
    fn from_str(s: &str) -> Result<Self, Invalid> {
        if s.is_empty() {
            return Ok(Listen(None));
        }
        let bad = |why: &str| Invalid(format!("invalid listen address {s:?}: {why}"));
        let a: std::net::SocketAddr = s.parse().map_err(|_| {
            bad("expected IP:PORT like \"127.0.0.1:9478\" or \"[::1]:9478\", or \"\" for off")
        })?;
        if a.port() == 0 {
            return Err(bad("give a port from 1 to 65535"));
        }
        Ok(Listen(Some(a)))
    }
}

impl<'de> Deserialize<'de> for Listen {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

fn d_metrics_listen() -> Listen {
    Listen(Some((Ipv4Addr::LOCALHOST, METRICS_PORT).into()))
}

/// The guards on the shared bridge (docs/guards.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Guard {
    /// Per-port anti-spoofing, port isolation and host protection. `false` removes
    /// hvroute's guard rules and leaves the bridge open.
    #[serde(default = "d_true")]
    pub enabled: bool,
    /// More interfaces VM traffic may be forwarded to, besides the BGP peers' own.
    #[serde(default)]
    pub uplinks: Vec<IfName>,
    /// More services on the hypervisor that VMs may reach: `tcp/PORT` or `udp/PORT`.
    #[serde(default)]
    pub host_allow: Vec<HostService>,
    /// Destinations VMs may reach through any interface.
    #[serde(default)]
    pub forward_allow: Vec<ipnet::IpNet>,
}

impl Default for Guard {
    fn default() -> Self {
        Guard { enabled: true, uplinks: Vec::new(), host_allow: Vec::new(), forward_allow: Vec::new() }
    }
}

/// A service on the hypervisor: `tcp/53`, `udp/123`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HostService {
    pub proto: &'static str,
    pub port: u16,
}

impl std::str::FromStr for HostService {
    type Err = Invalid;
    fn from_str(s: &str) -> Result<Self, Invalid> {
        let bad = || Invalid(format!("invalid service {s:?}: expected tcp/PORT or udp/PORT, like udp/53"));
        let (proto, port) = s.split_once('/').ok_or_else(bad)?;
        let proto = match proto {
            "tcp" => "tcp",
            "udp" => "udp",
            _ => return Err(bad()),
        };
        let port: u16 = port.parse().map_err(|_| bad())?;
        if port == 0 {
            return Err(bad());
        }
        Ok(HostService { proto, port })
    }
}

impl<'de> Deserialize<'de> for HostService {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Live migration, make-before-break (design.md §5).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Migration {
    /// Advertise an incoming VM de-preferred until its guest is seen running here, then
    /// strictly preferred for `settle_s`. `false` is the plain strategy: an incoming VM is
    /// advertised like any other from libvirt's `started` on.
    #[serde(default = "d_true")]
    pub make_before_break: bool,
    /// AS-path prepends of an incoming VM on top of the baseline of one.
    #[serde(default = "d_incoming_prepend")]
    pub incoming_prepend: u8,
    /// Seconds a VM that has just arrived is advertised with no prepend, so that this host
    /// strictly wins over the source's baseline; then it returns to the baseline.
    #[serde(default = "d_settle_s")]
    pub settle_s: u64,
    /// Seconds after `started` after which an incoming VM whose guest sent no
    /// announcement (RARP, ARP, neighbour solicitation or advertisement) is taken as
    /// arrived anyway; 0 waits for an announcement forever.
    #[serde(default = "d_fallback_s")]
    pub fallback_s: u64,
}

impl Default for Migration {
    fn default() -> Self {
        Migration {
            make_before_break: true,
            incoming_prepend: d_incoming_prepend(),
            settle_s: d_settle_s(),
            fallback_s: d_fallback_s(),
        }
    }
}

fn d_incoming_prepend() -> u8 {
    2
}
fn d_settle_s() -> u64 {
    30
}
fn d_fallback_s() -> u64 {
    600
}

/// The libvirt hook (`hvroute hook qemu`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hook {
    /// Whether the libvirt hook acts at all. `false` makes every `hook qemu` run a no-op
    /// that exits 0 (one line on stderr for a domain with hvroute metadata): the example
    /// config the Debian package installs ships it off, so that installing the package
    /// never changes how a VM starts before the admin has written this host's config.
    #[serde(default = "d_true")]
    pub enabled: bool,
    /// The hard time cap of one hook invocation: after it the hook exits, so that libvirt
    /// (which waits for hooks without a timeout) never hangs on hvroute.
    #[serde(default = "d_hook_timeout")]
    pub timeout_s: u64,
}

impl Default for Hook {
    fn default() -> Self {
        Hook { enabled: true, timeout_s: d_hook_timeout() }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bridge {
    #[serde(default = "d_bridge_name")]
    pub name: IfName,
    #[serde(default = "d_bridge_mac")]
    pub mac: Mac,
    #[serde(default = "d_gw4")]
    pub gateway4: Ipv4Addr,
    #[serde(default = "d_gw6")]
    pub gateway6: Ipv6Addr,
    #[serde(default = "d_mtu")]
    pub mtu: u32,
}

impl Default for Bridge {
    fn default() -> Self {
        Bridge {
            name: d_bridge_name(),
            mac: d_bridge_mac(),
            gateway4: d_gw4(),
            gateway6: d_gw6(),
            mtu: d_mtu(),
        }
    }
}

/// The address pools VM addresses must fall in.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pools {
    #[serde(default)]
    pub ipv4: Vec<Ipv4Net>,
    #[serde(default)]
    pub ipv6: Vec<Ipv6Net>,
}

impl Pools {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(a) => self.ipv4.iter().any(|n| n.contains(&a)),
            IpAddr::V6(a) => self.ipv6.iter().any(|n| n.contains(&a)),
        }
    }

    /// The pools of one family, for error messages.
    pub fn describe(&self, v4: bool) -> String {
        let list: Vec<String> = if v4 {
            self.ipv4.iter().map(|n| n.to_string()).collect()
        } else {
            self.ipv6.iter().map(|n| n.to_string()).collect()
        };
        if list.is_empty() {
            format!("no IPv{} pool is configured", if v4 { 4 } else { 6 })
        } else {
            list.join(", ")
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bgp {
    pub asn: u32,
    pub router_id: Ipv4Addr,
    #[serde(default)]
    pub loopback4: Option<Ipv4Addr>,
    #[serde(default)]
    pub loopback6: Option<Ipv6Addr>,
    #[serde(default, rename = "peer")]
    pub peers: Vec<Peer>,
}

/// An upstream BGP peer: unnumbered (`interface`) or numbered (`address`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Peer {
    #[serde(default)]
    pub interface: Option<IfName>,
    #[serde(default)]
    pub address: Option<IpAddr>,
    pub remote_as: RemoteAs,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemoteAs {
    External,
    Internal,
    Asn(u32),
}

impl<'de> Deserialize<'de> for RemoteAs {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u32),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(RemoteAs::Asn(n)),
            Raw::S(s) if s == "external" => Ok(RemoteAs::External),
            Raw::S(s) if s == "internal" => Ok(RemoteAs::Internal),
            Raw::S(s) => Err(serde::de::Error::custom(format!(
                "invalid remote_as {s:?}: use \"external\", \"internal\" or an AS number"
            ))),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Frr {
    /// Whether hvroute tells FRR at all. Off on a host that only wants the kernel routes.
    #[serde(default = "d_true")]
    pub enabled: bool,
    #[serde(default = "d_vtysh")]
    pub vtysh: PathBuf,
    #[serde(default)]
    pub pathspace: String,
    #[serde(default = "d_frr_conf")]
    pub config_file: PathBuf,
    /// FRR's run directory, where `bgpd.pid` shows FRR restarts (the pathspace is appended).
    #[serde(default = "d_frr_run_dir")]
    pub run_dir: PathBuf,
}

impl Default for Frr {
    fn default() -> Self {
        Frr {
            enabled: true,
            vtysh: d_vtysh(),
            pathspace: String::new(),
            config_file: d_frr_conf(),
            run_dir: d_frr_run_dir(),
        }
    }
}

fn d_state_dir() -> PathBuf {
    "/var/lib/hvroute".into()
}
fn d_socket() -> PathBuf {
    "/run/hvroute/hvroute.sock".into()
}
fn d_proto() -> u8 {
    44
}
fn d_resync() -> u64 {
    30
}
fn d_boot_id_path() -> PathBuf {
    "/proc/sys/kernel/random/boot_id".into()
}
fn d_bridge_name() -> IfName {
    "cloudbr0".parse().expect("valid default")
}
fn d_bridge_mac() -> Mac {
    "0e:00:00:00:00:01".parse().expect("valid default")
}
fn d_gw4() -> Ipv4Addr {
    Ipv4Addr::new(169, 254, 0, 1)
}
fn d_gw6() -> Ipv6Addr {
    Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1)
}
fn d_mtu() -> u32 {
    1500
}
fn d_vtysh() -> PathBuf {
    "vtysh".into()
}
fn d_true() -> bool {
    true
}
fn d_frr_run_dir() -> PathBuf {
    "/var/run/frr".into()
}
fn d_hook_timeout() -> u64 {
    10
}
fn d_frr_conf() -> PathBuf {
    "/etc/frr/frr.conf".into()
}

impl Config {
    /// Reads and validates the file. Every error is an [`Invalid`] naming the file, the
    /// key and the value.
    pub fn load(path: &Path) -> Result<Config, Invalid> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Invalid(format!("cannot read config file {}: {}", path.display(), io_reason(&e))))?;
        Config::parse(&text).map_err(|e| Invalid(format!("config file {}: {}", path.display(), e.0)))
    }

    pub fn parse(text: &str) -> Result<Config, Invalid> {
        let de = toml::Deserializer::parse(text).map_err(|e| Invalid(one_line_toml_error(&e, text)))?;
        let cfg: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let msg = one_line_toml_error(e.inner(), text);
            Invalid(if key == "." { msg } else { format!("key {key}: {msg}") })
        })?;
        cfg.check()?;
        Ok(cfg)
    }

    fn check(&self) -> Result<(), Invalid> {
        let bad = |key: &str, val: &dyn std::fmt::Display, why: &str| {
            Err(Invalid(format!("invalid {key} = {val}: {why}")))
        };
        // 0-4 are the kernel's own (unspec, redirect, kernel, boot, static); 255 is reserved.
        if self.route_protocol < 5 || self.route_protocol == 255 {
            return bad(
                "route_protocol",
                &self.route_protocol,
                "use a number from 5 to 254 that no other daemon uses",
            );
        }
        if self.resync_interval_s == 0 || self.resync_interval_s > 86_400 {
            return bad("resync_interval_s", &self.resync_interval_s, "use 1 to 86400 seconds");
        }
        if !(1..=8).contains(&self.migration.incoming_prepend) {
            return bad("migration.incoming_prepend", &self.migration.incoming_prepend, "use 1 to 8");
        }
        if self.migration.settle_s > 3600 {
            return bad("migration.settle_s", &self.migration.settle_s, "use 0 to 3600 seconds");
        }
        if self.migration.fallback_s > 86_400 {
            return bad("migration.fallback_s", &self.migration.fallback_s, "use 0 (never) to 86400 seconds");
        }
        if !(1..=600).contains(&self.hook.timeout_s) {
            return bad("hook.timeout_s", &self.hook.timeout_s, "use 1 to 600 seconds");
        }
        if !(1280..=65535).contains(&self.bridge.mtu) {
            return bad("bridge.mtu", &self.bridge.mtu, "use 1280 to 65535 (IPv6 needs at least 1280)");
        }
        if !self.bridge.gateway4.is_link_local() {
            return bad(
                "bridge.gateway4",
                &self.bridge.gateway4,
                "the VMs' IPv4 gateway must be link-local (169.254.0.0/16)",
            );
        }
        if !self.bridge.gateway6.is_unicast_link_local() {
            return bad(
                "bridge.gateway6",
                &self.bridge.gateway6,
                "the VMs' IPv6 gateway must be link-local (fe80::/10)",
            );
        }
        if self.pools.ipv4.is_empty() && self.pools.ipv6.is_empty() {
            return Err(Invalid("invalid [pools]: configure at least one ipv4 or ipv6 pool".into()));
        }
        if self.bgp.asn == 0 {
            return bad("bgp.asn", &self.bgp.asn, "AS 0 is reserved");
        }
        if self.bgp.router_id.is_unspecified() {
            return bad("bgp.router_id", &self.bgp.router_id, "the router id cannot be 0.0.0.0");
        }
        let ps = &self.frr.pathspace;
        if !ps.is_empty() && ps.parse::<crate::model::VmName>().is_err() {
            return bad(
                "frr.pathspace",
                &format!("{ps:?}"),
                "use 1 to 64 of A-Z a-z 0-9 . _ -, starting with a letter or digit, or leave it empty",
            );
        }
        for (i, p) in self.bgp.peers.iter().enumerate() {
            if p.interface.is_some() == p.address.is_some() {
                return Err(Invalid(format!(
                    "invalid bgp.peer[{i}]: give exactly one of interface (unnumbered) or address (numbered)"
                )));
            }
        }
        // What FRR itself would refuse (a peer-group mixing iBGP and eBGP peers, say).
        crate::frr::render::check(self)?;
        Ok(())
    }

    /// The kernel boot id that volatile entries are stamped with.
    pub fn boot_id(&self) -> anyhow::Result<String> {
        let s = std::fs::read_to_string(&self.boot_id_path).map_err(|e| {
            anyhow::anyhow!("cannot read boot id from {}: {}", self.boot_id_path.display(), io_reason(&e))
        })?;
        Ok(s.trim().to_owned())
    }
}

/// toml's errors span several lines with a source excerpt. Keep one line: the message,
/// the offending text and the line number.
fn one_line_toml_error(e: &toml::de::Error, text: &str) -> String {
    let msg = e.message().trim().replace('\n', " ");
    let Some(span) = e.span() else { return msg };
    let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
    let snippet: String = text.get(span.clone()).unwrap_or("").trim().chars().take(80).collect();
    if snippet.is_empty() || snippet.contains('\n') {
        format!("{msg} (line {line})")
    } else {
        format!("{msg}: {snippet} (line {line})")
    }
}

/// The reason of an I/O error without the "(os error N)" suffix.
pub fn io_reason(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_lowercase(),
        None => s.to_lowercase(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DESIGN_EXAMPLE: &str = r#"
state_dir = "/var/lib/hvroute"
socket = "/run/hvroute/hvroute.sock"
route_protocol = 44
resync_interval_s = 30

[bridge]
name = "cloudbr0"
mac = "0e:00:00:00:00:01"
gateway4 = "169.254.0.1"
gateway6 = "fe80::1"
mtu = 1500

[pools]
ipv4 = ["192.0.2.0/24"]
ipv6 = ["2001:db8:100::/40"]

[bgp]
asn = 65001
router_id = "10.255.0.1"

[[bgp.peer]]
interface = "eth1"
remote_as = "external"

[[bgp.peer]]
address = "10.255.0.0"
remote_as = 65000

[frr]
vtysh = "vtysh"
pathspace = ""
config_file = "/etc/frr/frr.conf"
"#;

    #[test]
    fn the_design_example_loads() {
        let c = Config::parse(DESIGN_EXAMPLE).unwrap();
        assert_eq!(c.bgp.peers.len(), 2);
        assert_eq!(c.bgp.peers[0].remote_as, RemoteAs::External);
        assert_eq!(c.bgp.peers[1].remote_as, RemoteAs::Asn(65000));
    }

    #[test]
    fn minimal_config_takes_defaults() {
        let c =
            Config::parse("[pools]\nipv4=[\"192.0.2.0/24\"]\n[bgp]\nasn=65001\nrouter_id=\"10.255.0.1\"\n")
                .unwrap();
        assert_eq!(c.route_protocol, 44);
        assert_eq!(c.bridge.name.as_str(), "cloudbr0");
        assert_eq!(c.bridge.mac.to_string(), "0e:00:00:00:00:01");
        assert_eq!(c.metrics.listen.0, Some("127.0.0.1:9478".parse().unwrap()));
    }

    #[test]
    fn metrics_listen_takes_v4_v6_and_off() {
        let base = "[pools]\nipv4=[\"192.0.2.0/24\"]\n[bgp]\nasn=65001\nrouter_id=\"10.255.0.1\"\n";
        let listen =
            |v: &str| Config::parse(&format!("[metrics]\nlisten=\"{v}\"\n{base}")).unwrap().metrics.listen;
        assert_eq!(listen(""), Listen(None));
        assert_eq!(listen("[::1]:9478"), Listen(Some("[::1]:9478".parse().unwrap())));
        assert_eq!(listen("0.0.0.0:9100"), Listen(Some("0.0.0.0:9100".parse().unwrap())));
    }

    #[test]
    fn errors_name_the_key_and_value() {
        let base = "[bgp]\nasn=65001\nrouter_id=\"10.255.0.1\"\n";
        let cases = [
            (format!("[pools]\nipv4=[\"192.0.2.0/24\"]\n{base}bogus=1\n"), "bogus"),
            (format!("route_protocol=2\n[pools]\nipv4=[\"192.0.2.0/24\"]\n{base}"), "route_protocol = 2"),
            (format!("[pools]\nipv4=[\"192.0.2.0/33\"]\n{base}"), "pools.ipv4[0]"),
            (format!("[pools]\nipv4 = [ \"192.0.2.0/33\" ]\n{base}"), "192.0.2.0/33"),
            (
                format!("[bridge]\nmac=\"01:00:00:00:00:01\"\n[pools]\nipv4=[\"192.0.2.0/24\"]\n{base}"),
                "01:00:00:00:00:01",
            ),
            (format!("[bridge]\nmtu=500\n[pools]\nipv4=[\"192.0.2.0/24\"]\n{base}"), "bridge.mtu = 500"),
            ("[pools]\nipv4=[\"192.0.2.0/24\"]\n".to_string(), "bgp"),
            (
                format!("[metrics]\nlisten=\"localhost:9478\"\n[pools]\nipv4=[\"192.0.2.0/24\"]\n{base}"),
                "key metrics.listen: invalid listen address \"localhost:9478\"",
            ),
            (
                format!("[metrics]\nlisten=\"127.0.0.1:0\"\n[pools]\nipv4=[\"192.0.2.0/24\"]\n{base}"),
                "metrics.listen",
            ),
            (format!("[metrics]\nlisten=9478\n[pools]\nipv4=[\"192.0.2.0/24\"]\n{base}"), "metrics.listen"),
            (format!("[metrics]\nport=1\n[pools]\nipv4=[\"192.0.2.0/24\"]\n{base}"), "port"),
        ];
        for (text, needle) in cases {
            let e = Config::parse(&text).unwrap_err().0;
            assert!(e.contains(needle), "{e:?} should name {needle:?}");
            assert!(!e.contains('\n'), "{e:?} should be one line");
        }
    }
}
