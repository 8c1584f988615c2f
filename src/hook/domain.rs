//! The domain XML that libvirt hands its hooks on stdin, and what hvroute reads of it.
//!
//! Contract: pure (text in, values out; no I/O). [`parse`] reads
//! - the domain's `<name>`;
//! - every `<interface>` under `<devices>`: its type, `<mac address>`, `<source bridge>`
//!   and `<target dev>`;
//! - the `urn:hvroute:metadata:1` element inside `<metadata>` (design.md §4), matched by
//!   namespace whatever its prefix, strictly: a bad MAC or address, an unknown element or
//!   attribute, or a second `vm` element is an [`Invalid`] naming it;
//! - the file of each cdrom disk, for the ConfigDrive fallback.
//!
//! [`spec`] then joins the metadata with the domain's `type='bridge'` interfaces on the
//! managed bridge and returns validated [`Nic`]s (MAC, host addresses checked against the
//! pools, the tap from `<target dev>` as the port). Nothing else leaves this module.
//! Interfaces on other bridges, or of other types, are ignored; metadata that names one
//! of them, or a MAC the domain does not have, is refused.
//!
//! DTDs are refused (no entity expansion) and the node count is capped; the caller caps
//! the bytes it reads.
//!
//! ConfigDrive fallback (design.md §4): [`spec_with_drive`] takes the NICs that the
//! domain's `config-2` drive describes (read by the caller, `hook::ops`, from the files in
//! [`Domain::cdroms`]) for the NICs on the managed bridge that the metadata does not name.
//! What neither names comes back in [`HookView::unaddressed`], left to the other sources
//! (`vm add`, the CloudStack shim).

use std::collections::{BTreeMap, BTreeSet};

use crate::config::Config;
use crate::configdrive::DriveNic;
use crate::model::{self, HostAddr, IfName, Invalid, Mac, Nic, VmName};

/// The metadata namespace, version 1.
pub const NS: &str = "urn:hvroute:metadata:1";

/// The most XML nodes a domain may have; real ones have a few hundred.
pub const MAX_NODES: u32 = 200_000;

/// One `<interface>` of the domain, as written there (validated where hvroute may use it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    /// The `type` attribute: `bridge`, `network`, `direct`, ...
    pub kind: String,
    /// `<mac address>`; `Err` when missing or not a unicast MAC.
    pub mac: Result<Mac, Invalid>,
    /// `<source bridge>`.
    pub bridge: Option<String>,
    /// `<target dev>`: the tap, once libvirt has made it (at `started`).
    pub target: Option<String>,
}

/// One `<hvroute:interface>` of the metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaNic {
    pub mac: Mac,
    /// In the order written; duplicates are refused by [`spec`], with the address named.
    pub addresses: Vec<HostAddr>,
}

/// What [`parse`] read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Domain {
    pub name: String,
    pub interfaces: Vec<Interface>,
    /// `None`: the domain has no hvroute metadata.
    pub metadata: Option<Vec<MetaNic>>,
    /// `<source file>` of each cdrom disk.
    pub cdroms: Vec<String>,
}

/// The VM's NICs as hvroute routes them, from [`spec`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HookView {
    /// Named by the metadata, in the domain's interface order (the first is the primary).
    pub nics: Vec<Nic>,
    /// NICs on the managed bridge that neither the metadata nor the ConfigDrive names:
    /// left to the other sources (`hvroute vm add`, the CloudStack shim).
    pub unaddressed: Vec<Mac>,
    /// The NICs whose addresses came from the ConfigDrive.
    pub from_drive: BTreeSet<Mac>,
    pub cdroms: Vec<String>,
}

/// The first child element of `n` called `name`.
fn child<'a, 'i>(n: roxmltree::Node<'a, 'i>, name: &str) -> Option<roxmltree::Node<'a, 'i>> {
    n.children().find(|c| c.has_tag_name(name))
}

fn bad<T>(msg: impl Into<String>) -> Result<T, Invalid> {
    Err(Invalid(msg.into()))
}

/// Parses the domain XML. Fails only for XML that is not a well-formed libvirt domain and
/// for invalid hvroute metadata.
pub fn parse(xml: &str) -> Result<Domain, Invalid> {
    let opts = roxmltree::ParsingOptions {
        allow_dtd: false,
        nodes_limit: MAX_NODES,
        ..roxmltree::ParsingOptions::default()
    };
    let doc = roxmltree::Document::parse_with_options(xml, opts)
        .map_err(|e| Invalid(format!("the domain XML is not well-formed: {e}")))?;
    let root = doc.root_element();
    if root.tag_name().name() != "domain" || root.tag_name().namespace().is_some() {
        return bad(format!(
            "the XML on stdin is not a libvirt domain: its root element is <{}>",
            root.tag_name().name().escape_debug()
        ));
    }
    let name = child(root, "name").and_then(|n| n.text()).map(str::trim).unwrap_or("").to_string();

    let mut interfaces = Vec::new();
    let mut cdroms = Vec::new();
    for devices in root.children().filter(|c| c.has_tag_name("devices")) {
        for dev in devices.children().filter(|c| c.is_element()) {
            if dev.has_tag_name("interface") {
                let attr = |n: &str, a: &str| child(dev, n).and_then(|c| c.attribute(a)).map(str::to_string);
                let mac = match attr("mac", "address") {
                    Some(m) => m.parse::<Mac>(),
                    None => bad("an interface has no MAC address"),
                };
                interfaces.push(Interface {
                    kind: dev.attribute("type").unwrap_or("").to_string(),
                    mac,
                    bridge: attr("source", "bridge"),
                    target: attr("target", "dev"),
                });
            } else if dev.has_tag_name("disk")
                && dev.attribute("device") == Some("cdrom")
                && let Some(f) = child(dev, "source").and_then(|s| s.attribute("file"))
            {
                cdroms.push(f.to_string());
            }
        }
    }

    let mut metadata = None;
    for md in root.children().filter(|c| c.has_tag_name("metadata")) {
        for vm in md.children().filter(|c| c.is_element() && c.tag_name().namespace() == Some(NS)) {
            if vm.tag_name().name() != "vm" {
                return bad(format!(
                    "the hvroute metadata has an unknown element <{}>; version 1 has <vm>",
                    vm.tag_name().name().escape_debug()
                ));
            }
            if metadata.is_some() {
                return bad("the domain has two hvroute metadata elements; give one <vm>");
            }
            metadata = Some(parse_meta_vm(vm)?);
        }
    }
    Ok(Domain { name, interfaces, metadata, cdroms })
}

/// Only whitespace and comments may sit between hvroute's elements.
fn no_stray_text(n: roxmltree::Node<'_, '_>, inside: &str) -> Result<(), Invalid> {
    for c in n.children() {
        if c.is_text() && !c.text().unwrap_or("").trim().is_empty() {
            return bad(format!(
                "the hvroute metadata has stray text {:?} inside <{inside}>",
                c.text().unwrap_or("").trim()
            ));
        }
    }
    Ok(())
}

fn parse_meta_vm(vm: roxmltree::Node<'_, '_>) -> Result<Vec<MetaNic>, Invalid> {
    if let Some(a) = vm.attributes().next() {
        return bad(format!("the hvroute metadata's <vm> has an unknown attribute {:?}", a.name()));
    }
    no_stray_text(vm, "vm")?;
    let mut nics = Vec::new();
    for el in vm.children().filter(|c| c.is_element()) {
        if el.tag_name().namespace() != Some(NS) || el.tag_name().name() != "interface" {
            return bad(format!(
                "the hvroute metadata has an unknown element <{}> inside <vm>; version 1 has <interface mac=...>",
                el.tag_name().name().escape_debug()
            ));
        }
        let mut mac = None;
        for a in el.attributes() {
            match a.name() {
                "mac" if a.namespace().is_none() => mac = Some(a.value()),
                other => {
                    return bad(format!(
                        "the hvroute metadata's <interface> has an unknown attribute {other:?}"
                    ));
                }
            }
        }
        let mac: Mac = match mac {
            Some(m) => m.parse().map_err(|e: Invalid| Invalid(format!("hvroute metadata: {}", e.0)))?,
            None => return bad("an <interface> in the hvroute metadata has no mac attribute"),
        };
        no_stray_text(el, "interface")?;
        let mut addresses = Vec::new();
        for a in el.children().filter(|c| c.is_element()) {
            if a.tag_name().namespace() != Some(NS) || a.tag_name().name() != "address" {
                return bad(format!(
                    "the hvroute metadata has an unknown element <{}> inside <interface mac=\"{mac}\">; \
                     version 1 has <address>",
                    a.tag_name().name().escape_debug()
                ));
            }
            let text = a.text().unwrap_or("").trim();
            let addr: HostAddr = text
                .parse()
                .map_err(|e: Invalid| Invalid(format!("hvroute metadata for MAC {mac}: {}", e.0)))?;
            addresses.push(addr);
        }
        nics.push(MetaNic { mac, addresses });
    }
    Ok(nics)
}

impl Domain {
    /// Whether hvroute has anything to do with this domain. (With the ConfigDrive
    /// fallback, a NIC on the managed bridge with a `config-2` drive will count too.)
    pub fn is_managed(&self) -> bool {
        self.metadata.is_some()
    }

    /// Every address the metadata names, valid or not for this host: what a release
    /// withdraws when the store has no entry.
    pub fn meta_addresses(&self) -> BTreeSet<HostAddr> {
        self.metadata.iter().flatten().flat_map(|m| m.addresses.iter().copied()).collect()
    }
}

/// Joins the metadata with the domain's interfaces on the managed bridge, for VM `name`.
/// `Ok(None)`: the domain has nothing for hvroute. Every refusal names the bad value.
pub fn spec(d: &Domain, name: &VmName, cfg: &Config) -> Result<Option<HookView>, Invalid> {
    spec_with_drive(d, name, cfg, &[])
}

/// As [`spec`], with the NICs that the domain's `config-2` ConfigDrive describes
/// (design.md §4): a NIC on the managed bridge that the metadata does not name takes its
/// addresses from the drive. The drive's NICs that the domain does not have on the managed
/// bridge are ignored (a drive describes every NIC of the guest). Addresses from the drive
/// pass the same checks as the metadata's.
pub fn spec_with_drive(
    d: &Domain,
    name: &VmName,
    cfg: &Config,
    drive: &[DriveNic],
) -> Result<Option<HookView>, Invalid> {
    if d.metadata.is_none() && drive.is_empty() {
        return Ok(None);
    }
    let meta: &[MetaNic] = d.metadata.as_deref().unwrap_or(&[]);
    if d.name != name.as_str() {
        return bad(format!("the domain XML on stdin is for VM {:?}, not {name}", d.name));
    }
    if d.metadata.is_some() && meta.is_empty() {
        return bad(
            "the hvroute metadata names no interface; give <hvroute:interface mac=...> with its addresses",
        );
    }
    let bridge = cfg.bridge.name.as_str();
    // The domain's NICs on the managed bridge, in order; where every other MAC is.
    let mut on_bridge: Vec<(Mac, Option<IfName>)> = Vec::new();
    let mut elsewhere: BTreeMap<Mac, String> = BTreeMap::new();
    for i in &d.interfaces {
        let here = i.kind == "bridge" && i.bridge.as_deref() == Some(bridge);
        match (&i.mac, here) {
            (Ok(mac), true) => {
                let target = match &i.target {
                    Some(t) => Some(t.parse::<IfName>().map_err(|e| {
                        Invalid(format!("the interface with MAC {mac} has an unusable target: {}", e.0))
                    })?),
                    None => None,
                };
                on_bridge.push((*mac, target));
            }
            (Err(e), true) => return bad(format!("an interface on bridge {bridge}: {}", e.0)),
            (Ok(mac), false) => {
                let place = match (&i.bridge, i.kind.as_str()) {
                    (Some(b), _) => format!("on bridge {:?}", b),
                    (None, k) => format!("of type {:?}", k),
                };
                elsewhere.entry(*mac).or_insert(place);
            }
            (Err(_), false) => {}
        }
    }
    let mut wanted: BTreeMap<Mac, BTreeSet<HostAddr>> = BTreeMap::new();
    let mut seen: BTreeMap<HostAddr, Mac> = BTreeMap::new();
    for m in meta {
        if wanted.contains_key(&m.mac) {
            return bad(format!("the hvroute metadata names MAC {} twice", m.mac));
        }
        if m.addresses.is_empty() {
            return bad(format!("the hvroute metadata gives MAC {} no address", m.mac));
        }
        for a in &m.addresses {
            if let Some(first) = seen.insert(*a, m.mac) {
                return bad(if first == m.mac {
                    format!("the hvroute metadata gives address {a} twice for MAC {}", m.mac)
                } else {
                    format!("the hvroute metadata gives address {a} to both MAC {first} and MAC {}", m.mac)
                });
            }
            model::check_addr(cfg, *a)?;
        }
        if !on_bridge.iter().any(|(mac, _)| *mac == m.mac) {
            return bad(match elsewhere.get(&m.mac) {
                Some(place) => format!(
                    "the hvroute metadata names MAC {}, whose interface is {place}, not on bridge {bridge}",
                    m.mac
                ),
                None => format!(
                    "the hvroute metadata names MAC {}, which the domain has no interface with",
                    m.mac
                ),
            });
        }
        wanted.insert(m.mac, m.addresses.iter().copied().collect());
    }
    // The drive fills in what the metadata leaves: its NICs on the managed bridge.
    let mut from_drive: BTreeSet<Mac> = BTreeSet::new();
    for n in drive {
        if wanted.contains_key(&n.mac) || !on_bridge.iter().any(|(mac, _)| *mac == n.mac) {
            continue;
        }
        if n.addresses.is_empty() {
            continue;
        }
        for a in &n.addresses {
            if let Some(first) = seen.insert(*a, n.mac) {
                return bad(if first == n.mac {
                    format!("the ConfigDrive gives address {a} twice for MAC {}", n.mac)
                } else {
                    format!("the ConfigDrive gives MAC {} address {a}, which MAC {first} already has", n.mac)
                });
            }
            model::check_addr(cfg, *a)
                .map_err(|e| Invalid(format!("the ConfigDrive for MAC {}: {}", n.mac, e.0)))?;
        }
        wanted.insert(n.mac, n.addresses.iter().copied().collect());
        from_drive.insert(n.mac);
    }
    let mut nics = Vec::new();
    let mut unaddressed = Vec::new();
    for (mac, port) in on_bridge {
        match wanted.remove(&mac) {
            Some(addresses) => nics.push(Nic { mac, addresses, port }),
            // The same MAC twice on the bridge: the first interface has it.
            None if nics.iter().any(|n: &Nic| n.mac == mac) => {}
            None => unaddressed.push(mac),
        }
    }
    if nics.is_empty() {
        // No metadata, and the drive names no NIC on the managed bridge.
        return Ok(None);
    }
    Ok(Some(HookView { nics, unaddressed, from_drive, cdroms: d.cdroms.clone() }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Config {
        Config::parse(
            "[pools]\nipv4=[\"192.0.2.0/24\"]\nipv6=[\"2001:db8:100::/40\"]\n[bgp]\nasn=65001\nrouter_id=\"10.255.0.1\"\n",
        )
        .unwrap()
    }

    fn name() -> VmName {
        "web1".parse().unwrap()
    }

    /// A domain named web1 with the given metadata body (None: no metadata element) and
    /// devices.
    fn domain(meta: Option<&str>, devices: &str) -> String {
        let meta = meta
            .map(|m| format!("<metadata><hvroute:vm xmlns:hvroute=\"{NS}\">{m}</hvroute:vm></metadata>"))
            .unwrap_or_default();
        format!("<domain type='kvm' id='3'><name>web1</name>{meta}<devices>{devices}</devices></domain>")
    }

    fn nic(mac: &str, bridge: &str, target: Option<&str>) -> String {
        let t = target.map(|t| format!("<target dev='{t}'/>")).unwrap_or_default();
        format!(
            "<interface type='bridge'><mac address='{mac}'/><source bridge='{bridge}'/>{t}<model type='virtio'/></interface>"
        )
    }

    fn meta_nic(mac: &str, addrs: &[&str]) -> String {
        let a: String = addrs.iter().map(|a| format!("<hvroute:address>{a}</hvroute:address>")).collect();
        format!("<hvroute:interface mac=\"{mac}\">{a}</hvroute:interface>")
    }

    fn view(xml: &str) -> Result<Option<HookView>, Invalid> {
        spec(&parse(xml)?, &name(), &cfg())
    }

    fn refused(xml: &str) -> String {
        match view(xml) {
            Err(e) => {
                assert!(!e.0.contains('\n'), "{:?} is not one line", e.0);
                e.0
            }
            Ok(v) => panic!("accepted: {v:?}"),
        }
    }

    /// Prevents: a VM with two NICs on cloudbr0 and one on a storage bridge getting routes
    /// for the wrong NIC, or for the storage NIC, or losing its port binding.
    #[test]
    fn multiple_nics_on_the_bridge_and_one_elsewhere() {
        let xml = domain(
            Some(&format!(
                "{}{}",
                meta_nic("52:54:00:00:00:02", &["192.0.2.20"]),
                meta_nic("52:54:00:00:00:01", &["192.0.2.10", "2001:db8:103::100/128"])
            )),
            &format!(
                "{}{}{}",
                nic("52:54:00:00:00:01", "cloudbr0", Some("vnet0")),
                nic("52:54:00:00:00:09", "storage0", Some("vnet1")),
                nic("52:54:00:00:00:02", "cloudbr0", Some("vnet2"))
            ),
        );
        let v = view(&xml).unwrap().unwrap();
        let got: Vec<(String, Vec<String>, Option<String>)> = v
            .nics
            .iter()
            .map(|n| {
                (
                    n.mac.to_string(),
                    n.addresses.iter().map(|a| a.to_string()).collect(),
                    n.port.as_ref().map(|p| p.to_string()),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                (
                    "52:54:00:00:00:01".to_string(),
                    vec!["192.0.2.10".to_string(), "2001:db8:103::100".to_string()],
                    Some("vnet0".to_string())
                ),
                ("52:54:00:00:00:02".to_string(), vec!["192.0.2.20".to_string()], Some("vnet2".to_string())),
            ]
        );
        assert!(v.unaddressed.is_empty());
    }

    /// Prevents: the hook refusing or routing a VM that has nothing for hvroute (every
    /// VM on a host with the hook installed would be affected).
    #[test]
    fn no_metadata_is_not_managed() {
        let xml = domain(None, &nic("52:54:00:00:00:01", "cloudbr0", None));
        assert_eq!(view(&xml).unwrap(), None);
        // Other applications' metadata is not ours.
        let xml = "<domain><name>web1</name><metadata><app:x xmlns:app='urn:other'><app:interface mac='zz'/></app:x>\
                   </metadata><devices/></domain>";
        assert_eq!(view(xml).unwrap(), None);
    }

    /// The prefix is the author's choice (virsh metadata --key sets it); the namespace is
    /// what counts.
    #[test]
    fn metadata_is_matched_by_namespace_not_prefix() {
        let xml = format!(
            "<domain><name>web1</name><metadata><x:vm xmlns:x='{NS}'><x:interface mac='52:54:00:00:00:01'>\
             <x:address> 192.0.2.10 </x:address></x:interface></x:vm></metadata><devices>{}</devices></domain>",
            nic("52:54:00:00:00:01", "cloudbr0", None)
        );
        let v = view(&xml).unwrap().unwrap();
        assert_eq!(v.nics[0].addresses.len(), 1);
        assert_eq!(v.nics[0].port, None);
    }

    /// Prevents: a NIC on cloudbr0 without metadata being silently dropped; it is handed
    /// to the ConfigDrive fallback with the cdrom files.
    #[test]
    fn unnamed_nics_on_the_bridge_are_left_for_the_configdrive() {
        let xml = domain(
            Some(&meta_nic("52:54:00:00:00:01", &["192.0.2.10"])),
            &format!(
                "{}{}<disk type='file' device='cdrom'><source file='/var/lib/cd/i-2-10-VM.iso'/></disk>",
                nic("52:54:00:00:00:01", "cloudbr0", None),
                nic("52:54:00:00:00:07", "cloudbr0", None)
            ),
        );
        let v = view(&xml).unwrap().unwrap();
        assert_eq!(v.unaddressed, ["52:54:00:00:00:07".parse::<Mac>().unwrap()]);
        assert_eq!(v.cdroms, ["/var/lib/cd/i-2-10-VM.iso"]);
    }

    /// Prevents: routing a VM's address to a MAC it does not have (traffic black-holed),
    /// or to its NIC on another bridge.
    #[test]
    fn metadata_naming_a_mac_the_domain_lacks_is_refused() {
        let e = refused(&domain(
            Some(&meta_nic("52:54:00:00:00:05", &["192.0.2.10"])),
            &nic("52:54:00:00:00:01", "cloudbr0", None),
        ));
        assert!(e.contains("52:54:00:00:00:05") && e.contains("no interface"), "{e}");
        let e = refused(&domain(
            Some(&meta_nic("52:54:00:00:00:09", &["192.0.2.10"])),
            &nic("52:54:00:00:00:09", "storage0", None),
        ));
        assert!(e.contains("storage0") && e.contains("cloudbr0"), "{e}");
        let e = refused(&domain(
            Some(&meta_nic("52:54:00:00:00:09", &["192.0.2.10"])),
            "<interface type='network'><mac address='52:54:00:00:00:09'/><source network='default'/></interface>",
        ));
        assert!(e.contains("\"network\""), "{e}");
    }

    /// Prevents: two routes fighting over one address, or a typo routing a foreign prefix.
    #[test]
    fn bad_and_duplicate_addresses_are_refused_by_name() {
        let nics = format!(
            "{}{}",
            nic("52:54:00:00:00:01", "cloudbr0", None),
            nic("52:54:00:00:00:02", "cloudbr0", None)
        );
        let cases: Vec<(String, &str)> = vec![
            (meta_nic("52:54:00:00:00:01", &["192.0.2.10", "192.0.2.10"]), "192.0.2.10 twice"),
            (
                format!(
                    "{}{}",
                    meta_nic("52:54:00:00:00:01", &["192.0.2.10"]),
                    meta_nic("52:54:00:00:00:02", &["192.0.2.10/32"])
                ),
                "both MAC 52:54:00:00:00:01 and MAC 52:54:00:00:00:02",
            ),
            (
                format!(
                    "{}{}",
                    meta_nic("52:54:00:00:00:01", &["192.0.2.10"]),
                    meta_nic("52:54:00:00:00:01", &["192.0.2.11"])
                ),
                "MAC 52:54:00:00:00:01 twice",
            ),
            (meta_nic("52:54:00:00:00:01", &["192.0.2.300"]), "192.0.2.300"),
            (meta_nic("52:54:00:00:00:01", &["192.0.2.10/24"]), "192.0.2.10/24"),
            (meta_nic("52:54:00:00:00:01", &["198.51.100.7"]), "outside the configured pools"),
            (meta_nic("52:54:00:00:00:01", &["169.254.0.1"]), "gateway"),
            (meta_nic("52:54:00:00:00:01", &["fe80::5"]), "link-local"),
            (meta_nic("52:54:00:00:00:01", &[""]), "invalid address \"\""),
            (meta_nic("52:54:00:00:00:01", &[]), "no address"),
            (meta_nic("01:00:5e:00:00:01", &["192.0.2.10"]), "01:00:5e:00:00:01"),
            (meta_nic("52:54:00:00:00:01", &["192.0.2.10; reboot"]), "192.0.2.10; reboot"),
            ("<hvroute:interface>x</hvroute:interface>".into(), "no mac attribute"),
            ("<hvroute:nic mac='52:54:00:00:00:01'/>".into(), "unknown element <nic>"),
            ("stray".into(), "stray text"),
            ("".into(), "names no interface"),
        ];
        for (meta, needle) in cases {
            let e = refused(&domain(Some(&meta), &nics));
            assert!(e.contains(needle), "{meta}: {e:?} should contain {needle:?}");
        }
        let two = format!(
            "<domain><name>web1</name><metadata><a:vm xmlns:a='{NS}'/><b:vm xmlns:b='{NS}'/></metadata><devices/></domain>"
        );
        assert!(refused(&two).contains("two hvroute metadata"));
    }

    /// Prevents: the hook trusting a stale or foreign XML (a NAME mix-up between argv and
    /// stdin would record one VM's addresses under another's name).
    #[test]
    fn the_xml_must_be_for_the_vm_named() {
        let xml = domain(
            Some(&meta_nic("52:54:00:00:00:01", &["192.0.2.10"])),
            &nic("52:54:00:00:00:01", "cloudbr0", None),
        )
        .replace("<name>web1</name>", "<name>web2</name>");
        assert!(refused(&xml).contains("\"web2\""));
    }

    /// Prevents: a panic or a hang on garbage, entity bombs or absurdly large documents.
    #[test]
    fn malformed_and_hostile_xml_is_one_sentence() {
        for (xml, needle) in [
            ("", "not well-formed"),
            ("<domain><name>web1</name>", "not well-formed"),
            ("not xml at all", "not well-formed"),
            ("<network><name>web1</name></network>", "root element is <network>"),
            (
                "<!DOCTYPE d [<!ENTITY a \"aaaa\"><!ENTITY b \"&a;&a;&a;&a;\">]><domain><name>&b;</name></domain>",
                "not well-formed",
            ),
        ] {
            let e = parse(xml).unwrap_err().0;
            assert!(e.contains(needle), "{xml:?}: {e}");
            assert!(!e.contains('\n'), "{e:?}");
        }
        // Many nodes: refused by the node cap, quickly, not by running out of memory.
        let huge = format!("<domain><name>web1</name><devices>{}</devices></domain>", "<x/>".repeat(300_000));
        let t = std::time::Instant::now();
        let e = parse(&huge).unwrap_err().0;
        assert!(e.contains("not well-formed"), "{e}");
        assert!(t.elapsed() < std::time::Duration::from_secs(5));
    }

    fn drive_nic(mac: &str, addrs: &[&str]) -> DriveNic {
        DriveNic {
            mac: mac.parse().unwrap(),
            mtu: Some(1500),
            addresses: addrs.iter().map(|a| a.parse().unwrap()).collect(),
            gateways: Vec::new(),
            dns: Vec::new(),
        }
    }

    fn with_drive(xml: &str, drive: &[DriveNic]) -> Result<Option<HookView>, Invalid> {
        spec_with_drive(&parse(xml)?, &name(), &cfg(), drive)
    }

    const CDROM: &str = "<disk type='file' device='cdrom'><source file='/var/lib/cd/web1.iso'/></disk>";

    /// Prevents: a CloudStack VM whose only source of addresses is its config-2 drive
    /// (no hvroute metadata) staying unrouted.
    #[test]
    fn a_drive_alone_addresses_the_nics_on_the_bridge() {
        let xml = domain(
            None,
            &format!(
                "{}{}{CDROM}",
                nic("52:54:00:00:00:01", "cloudbr0", Some("vnet3")),
                nic("52:54:00:00:00:09", "storage0", None)
            ),
        );
        let drive = [
            drive_nic("52:54:00:00:00:01", &["192.0.2.29", "2001:db8:103::100"]),
            // The drive describes every NIC; the storage NIC is not hvroute's.
            drive_nic("52:54:00:00:00:09", &["192.0.2.99"]),
        ];
        let v = with_drive(&xml, &drive).unwrap().unwrap();
        assert_eq!(v.nics.len(), 1);
        assert_eq!(v.nics[0].mac, "52:54:00:00:00:01".parse().unwrap());
        assert_eq!(v.nics[0].port.as_ref().map(|p| p.as_str()), Some("vnet3"));
        let addrs: Vec<String> = v.nics[0].addresses.iter().map(|a| a.to_string()).collect();
        assert_eq!(addrs, ["192.0.2.29", "2001:db8:103::100"]);
        assert!(v.unaddressed.is_empty());
        assert!(v.from_drive.contains(&"52:54:00:00:00:01".parse().unwrap()));
        // Without the drive the same domain has nothing for hvroute.
        assert_eq!(view(&xml).unwrap(), None);
        // A drive that names no NIC on the bridge leaves it so.
        assert_eq!(with_drive(&xml, &drive[1..]).unwrap(), None);
    }

    /// Prevents: the drive overriding what the admin put in the metadata, or a NIC that
    /// only the drive names being left out when the metadata names another.
    #[test]
    fn metadata_wins_and_the_drive_fills_in() {
        let xml = domain(
            Some(&meta_nic("52:54:00:00:00:01", &["192.0.2.10"])),
            &format!(
                "{}{}{CDROM}",
                nic("52:54:00:00:00:01", "cloudbr0", None),
                nic("52:54:00:00:00:02", "cloudbr0", None)
            ),
        );
        let drive = [
            drive_nic("52:54:00:00:00:01", &["192.0.2.11"]),
            drive_nic("52:54:00:00:00:02", &["192.0.2.20"]),
        ];
        let v = with_drive(&xml, &drive).unwrap().unwrap();
        let got: Vec<(String, Vec<String>)> = v
            .nics
            .iter()
            .map(|n| (n.mac.to_string(), n.addresses.iter().map(|a| a.to_string()).collect()))
            .collect();
        assert_eq!(
            got,
            [
                ("52:54:00:00:00:01".to_string(), vec!["192.0.2.10".to_string()]),
                ("52:54:00:00:00:02".to_string(), vec!["192.0.2.20".to_string()]),
            ]
        );
        assert_eq!(v.from_drive.len(), 1);
    }

    /// Prevents: a drive (untrusted input) routing an address outside the pools, or one
    /// that another NIC of the VM already has.
    #[test]
    fn drive_addresses_pass_the_metadata_checks() {
        let xml = domain(None, &format!("{}{CDROM}", nic("52:54:00:00:00:01", "cloudbr0", None)));
        let e = with_drive(&xml, &[drive_nic("52:54:00:00:00:01", &["203.0.113.5"])]).unwrap_err().0;
        assert!(
            e.contains("ConfigDrive") && e.contains("52:54:00:00:00:01") && e.contains("203.0.113.5"),
            "{e}"
        );
        let xml = domain(
            Some(&meta_nic("52:54:00:00:00:01", &["192.0.2.10"])),
            &format!(
                "{}{}{CDROM}",
                nic("52:54:00:00:00:01", "cloudbr0", None),
                nic("52:54:00:00:00:02", "cloudbr0", None)
            ),
        );
        let e = with_drive(&xml, &[drive_nic("52:54:00:00:00:02", &["192.0.2.10"])]).unwrap_err().0;
        assert!(e.contains("192.0.2.10") && e.contains("52:54:00:00:00:01"), "{e}");
        // The domain's name is checked as with metadata.
        let other = xml.replace("<name>web1</name>", "<name>web2</name>");
        assert!(with_drive(&other, &[drive_nic("52:54:00:00:00:02", &["192.0.2.20"])]).is_err());
    }
}
