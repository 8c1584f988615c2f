//! The topology files are the single source of truth for the labs (issue 7, item 4):
//! `tests/topologies/fabric.clab.yml` for the end-to-end tests' `Fabric`, and
//! `tests/topologies/lab.clab.yml` for `scripts/lab.sh` and containerlab
//! (`tests/slow_lab_topology.rs` checks the namespace lab itself).
//!
//! The parser and consistency tests here are pure; `fabric_holds_exactly_the_file` needs root
//! and FRR 8.x. Run: `cargo test --test netns_topology -- --test-threads=2`.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use common::fabric::*;
use common::topology::{Endpoint, Topology, TopologyError};
use common::*;

const LAB_TOPOLOGY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/topologies/lab.clab.yml");

fn lab_file() -> Topology {
    Topology::load(Path::new(LAB_TOPOLOGY)).unwrap_or_else(|e| panic!("{LAB_TOPOLOGY}: {e}"))
}

/// A small valid topology, changed by each case below.
const SMALL: &str = r#"
name: t
topology:
  nodes:
    spine:
      kind: linux
      env: {HVR_ROLE: spine, HVR_ASN: "65000", HVR_ROUTER_ID: 10.255.255.254,
            HVR_EXTRA4: 198.51.100.0/24, HVR_EXTRA6: "2001:db8:eeee::/48", HVR_BGP_INTERFACES: hv1,
            HVR_IF_out0: 10.255.0.0/31}
    out:
      kind: linux
      env: {HVR_ROLE: host, HVR_IF_eth1: 10.255.0.1/31}
    hv1:
      kind: linux
      env: {HVR_ROLE: hypervisor, HVR_ASN: "65001", HVR_ROUTER_ID: 10.255.255.1,
            HVR_PEERING: unnumbered, HVR_UPLINK: uplink0}
    vm1:
      kind: linux
      env: {HVR_ROLE: vm, HVR_MAC: "52:54:00:00:00:01", HVR_IP4: 192.0.2.10}
  links:
    - endpoints: ["spine:out0", "out:eth1"]
    - endpoints: ["spine:hv1", "hv1:uplink0"]
    - endpoints: ["hv1:vm1p", "vm1:eth1"]
"#;

fn err_of(text: &str) -> String {
    match Topology::parse(text).and_then(|t| t.facts()) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => e.to_string(),
    }
}

/// A typo in a hand-edited topology file must stop the lab with a sentence naming the bad
/// node, link or fact, instead of a lab that silently lacks a link or a VM.
#[test]
fn topology_errors_name_the_culprit() {
    let small = Topology::parse(SMALL).expect("the small topology parses");
    small.facts().expect("the small topology is complete");

    let e = err_of(&SMALL.replace(r#""hv1:vm1p", "vm1:eth1""#, r#""hv1:vm1p", "vm9:eth1""#));
    assert!(e.contains("\"vm9:eth1\"") && e.contains("\"vm9\"") && e.contains("not in the topology"), "{e}");

    let e = err_of(&SMALL.replace(r#""hv1:vm1p", "vm1:eth1""#, r#""hv1:uplink0", "vm1:eth1""#));
    assert!(e.contains("\"uplink0\"") && e.contains("\"hv1\"") && e.contains("more than one link"), "{e}");

    let e = err_of(&SMALL.replace(r#", HVR_ASN: "65001""#, ""));
    assert_eq!(e, "node \"hv1\" has no HVR_ASN in its env");

    let e = err_of(&SMALL.replace(r#""spine:out0""#, r#""spine""#));
    assert_eq!(e, "link endpoint \"spine\" is not NODE:INTERFACE");

    let e = err_of(&SMALL.replace(r#"["hv1:vm1p", "vm1:eth1"]"#, r#"["hv1:vm1p", "vm1:eth1", "out:eth2"]"#));
    assert_eq!(e, "link 3 has 3 endpoints; a veth link has exactly 2");

    let e = err_of(&SMALL.replace("HVR_MAC: \"52:54:00:00:00:01\"", "HVR_MAC: \"52:54:00:00:01\""));
    assert!(e.contains("\"vm1\"") && e.contains("HVR_MAC"), "{e}");

    // A key containerlab does not know (here a misspelt `endpoints`) is refused by name.
    let e = err_of(&SMALL.replace("- endpoints: [\"spine:out0\"", "- endpionts: [\"spine:out0\""));
    assert!(e.contains("endpionts"), "{e}");

    let e = err_of(&SMALL.replace("HVR_PEERING: unnumbered", "HVR_PEERING: numbered"));
    assert!(e.contains("\"hv1\"") && e.contains("numbered") && e.contains("IPv4"), "{e}");

    let e = err_of(&SMALL.replace("HVR_BGP_INTERFACES: hv1", "HVR_BGP_INTERFACES: hv1 hv2"));
    assert!(e.contains("HVR_BGP_INTERFACES") && e.contains("\"spine\""), "{e}");

    assert!(matches!(
        Topology::parse(&SMALL.replace(r#""hv1:vm1p", "vm1:eth1""#, r#""hv1:vm1p", "vm9:eth1""#)),
        Err(TopologyError::UnknownNode { .. })
    ));
}

/// The consistency check itself: a node or a link that is in the file but not in the lab,
/// or in the lab but not in the file, is reported by name, both ways. Otherwise a lab that
/// drifted from its file would pass.
#[test]
fn an_extra_or_missing_node_or_link_is_reported() {
    let file = lab_file();
    let nodes = file.node_names();
    let links = file.link_pairs();
    assert!(file.differences("the lab", &nodes, &links).is_empty());

    let ep = |n: &str, i: &str| Endpoint { node: n.into(), iface: i.into() };
    let mut fewer_nodes = nodes.clone();
    fewer_nodes.remove("vm2");
    let mut more_links = links.clone();
    more_links.insert((ep("hv1", "stor0"), ep("stor", "eth0")));
    let mut fewer_links = links.clone();
    fewer_links.remove(&(ep("hv2", "vm3p"), ep("vm3", "eth1")));
    let mut more_nodes = nodes.clone();
    more_nodes.insert("stor".into());

    assert_eq!(
        file.differences("the lab", &fewer_nodes, &links),
        vec!["node vm2 is in the file but not in the lab".to_string()]
    );
    assert_eq!(
        file.differences("the lab", &more_nodes, &more_links),
        vec![
            "node stor is in the lab but not in the file".to_string(),
            "link hv1:stor0 <-> stor:eth0 is in the lab but not in the file".to_string()
        ]
    );
    assert_eq!(
        file.differences("the lab", &nodes, &fewer_links),
        vec!["link hv2:vm3p <-> vm3:eth1 is in the file but not in the lab".to_string()]
    );
}

/// Both shipped files are complete topologies: every node's facts parse and every link
/// joins nodes that meet (spine to host and hypervisors, hypervisors to VMs).
#[test]
fn the_shipped_files_are_complete() {
    let lab = lab_file().facts().unwrap_or_else(|e| panic!("{LAB_TOPOLOGY}: {e}"));
    assert_eq!(lab.hypervisors.len(), 2);
    assert_eq!(lab.vms.len(), 3);
    let fabric = fabric_facts();
    assert!(fabric.vms.is_empty(), "the tests add the fabric's VMs themselves");
    assert!(fabric.hypervisors.len() >= 4, "tests/netns_frr.rs uses four hypervisors");
}

/// The tests assert with constants (the spine's ASN and extra prefixes, the outside host's
/// addresses); if the file changed and they did not, every test would fail far from here.
#[test]
fn the_fabric_constants_are_the_file() {
    let f = fabric_facts();
    assert_eq!(f.spine.asn, SPINE_ASN);
    assert_eq!(f.spine.extra4.to_string(), EXTRA4);
    assert_eq!(f.spine.extra6.to_string(), EXTRA6);
    let lo: BTreeSet<String> = f.host.loopback.iter().map(|a| a.addr().to_string()).collect();
    assert_eq!(lo, BTreeSet::from([OUT4.to_string(), OUT6.to_string()]));
    for (i, hv) in f.hypervisors.iter().enumerate() {
        assert_eq!(hv.asn, SPINE_ASN + u32::try_from(i + 1).expect("small"), "{}", hv.name);
    }
}

/// `scripts/lab.sh --help` draws the lab with literal addresses: every address, MAC and ASN
/// in lab.clab.yml must appear in it, so that the picture cannot drift from the file.
#[test]
fn lab_help_shows_the_file() {
    let o = Command::new("bash")
        .args([concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/lab.sh"), "--help"])
        .output()
        .expect("bash");
    assert!(o.status.success(), "lab.sh --help: {}", show(&o));
    let help = stdout(&o);
    let file = lab_file();
    let mut missing = Vec::new();
    for (node, cfg) in &file.nodes {
        for (k, v) in &cfg.env {
            let facts =
                ["HVR_ASN", "HVR_ROUTER_ID", "HVR_EXTRA4", "HVR_EXTRA6", "HVR_MAC", "HVR_IP4", "HVR_IP6"];
            if !(facts.contains(&k.as_str()) || k.starts_with("HVR_IF_") || k == "HVR_LOOPBACK") {
                continue;
            }
            for word in v.split_whitespace() {
                // The picture shows VM addresses with their /32 or /128.
                if !help.contains(word) {
                    missing.push(format!("{node} {k}: {word}"));
                }
            }
        }
    }
    for n in file.node_names() {
        if !help.contains(&format!("hvr-lab-{n}")) && !help.contains(&format!("{n}p")) {
            missing.push(format!("node {n}"));
        }
    }
    assert!(
        missing.is_empty(),
        "scripts/lab.sh --help does not show these facts of {LAB_TOPOLOGY}: {missing:?}"
    );
}

/// A `Fabric` is built from its file: the namespaces and veths that exist are exactly the
/// file's nodes and links, both ways. A hypervisor, uplink or outside link that the file and
/// the harness disagree on would make every end-to-end test test something else than the
/// documented fabric.
#[test]
fn fabric_holds_exactly_the_file() {
    require_root();
    let file = Topology::load(Path::new(FABRIC_TOPOLOGY)).expect("the fabric file");
    let n = fabric_facts().hypervisors.len();
    // Both peerings: the file's addresses on every other uplink.
    let specs: Vec<HvSpec> = (0..n)
        .map(|i| HvSpec::new(if i % 2 == 0 { Peering::Unnumbered } else { Peering::Numbered }))
        .collect();
    let f = Fabric::new("topo", &specs);
    let (nodes, links) = observed_topology(&format!("{}-", f.prefix));
    let diff = file.differences(&format!("the fabric {}", f.prefix), &nodes, &links);
    assert!(diff.is_empty(), "{FABRIC_TOPOLOGY} and the fabric differ:\n{}", diff.join("\n"));
    // And the numbered uplinks carry the file's addresses, the unnumbered ones none.
    for (hv, spec) in f.hvs.iter().zip(&specs) {
        let addrs = ip(&hv.ns, &format!("-br addr show dev {}", hv.node.uplink));
        let has = hv.node.uplink_addrs.iter().all(|a| addrs.contains(&a.to_string()));
        match spec.peering {
            Peering::Numbered => assert!(has, "{}: {addrs}", hv.ns),
            Peering::Unnumbered => {
                assert!(!addrs.contains("10.255."), "{} is unnumbered but has {addrs}", hv.ns)
            }
        }
    }
}

/// Under containerlab each node sets itself up from `lab-topology node FILE NODE`: a
/// hypervisor must learn its own VMs (and only those) and the spine its neighbours in the
/// peering each hypervisor uses, or the containerlab lab would differ from the namespace lab.
#[test]
fn node_facts_for_containerlab_follow_the_links() {
    let facts = lab_file().facts().expect("lab facts");
    let hv1 = facts.node_shell("hv1").expect("hv1");
    assert!(hv1.contains("VMS='vm1,52:54:00:00:00:01,192.0.2.10,2001:db8:100::10,vm1p vm2,52:54:00:00:00:02,,2001:db8:100::20,vm2p'"), "{hv1}");
    assert!(hv1.contains("PEER='uplink0'"), "{hv1}");
    let hv2 = facts.node_shell("hv2").expect("hv2");
    assert!(hv2.contains("PEER='10.255.2.0'") && hv2.contains("ADDRS='uplink0 10.255.2.1/31'"), "{hv2}");
    let spine = facts.node_shell("spine").expect("spine");
    assert!(spine.contains("NEIGHBORS='hv1:interface 10.255.2.1:65002'"), "{spine}");
    let e = facts.node_shell("vm9").expect_err("no such node").to_string();
    assert_eq!(e, "node \"vm9\" is not in the topology");
}
