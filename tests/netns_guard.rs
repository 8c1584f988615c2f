//! Acceptance tests of issue 6, the guards on the shared bridge (docs/guards.md): the
//! attacks a VM can make on `cloudbr0`, made from real VM namespaces with crafted frames
//! (python raw sockets), against a hypervisor running real FRR and the real
//! `hvroute daemon` with the guards at their default (on). What a guard must stop is
//! counted where it would arrive (nftables counters in the receiving namespace), and each
//! test also shows its capture working with a legitimate packet, sent after the attack,
//! so that "nothing arrived" is never a broken capture.
//!
//! The minute-long VM-to-VM test is in `tests/slow_netns_guard.rs`.
//!
//! Needs root, FRR 8.x, nftables, iptables (iptables-nft) and python3.
//! Run: `cargo test --test netns_guard -- --test-threads=2`.

mod common;

use std::time::Duration;

use common::fabric::*;
use common::*;
use serde_json::{Value, json};

/// A pool address that no VM holds, in each family.
const STRAY4: &str = "192.0.2.199";
const STRAY6: &str = "2001:db8:100::199";
/// An address outside the pools, which no VM may send from either.
const OUTSIDE_POOL4: &str = "198.51.100.77";
const OUTSIDE_POOL6: &str = "2001:db8:ffff:ee::77";
/// The prefix a rogue router advertisement offers.
const ROGUE_PREFIX: &str = "2001:db8:abcd::/64";
/// How long a connect attempt may take before it counts as refused by a filter. A real
/// connect inside these namespaces takes well under a millisecond.
const CONNECT_TIMEOUT_S: &str = "2";

// ---------------------------------------------------------------------------------------------
// The lab.

/// One unnumbered hypervisor (with loopbacks, so that the host has addresses of its own
/// besides the gateways) and VMs 1..=VMS, the daemon running with the guards at their
/// default, every VM reaching the outside host in both families.
fn guarded(tag: &str, vms: u8) -> Fabric {
    guarded_with(tag, vms, |_| {})
}

/// As [`guarded`]; EXTRA makes more VMs (or anything else) on the hypervisor before the
/// daemon starts.
fn guarded_with(tag: &str, vms: u8, extra: impl FnOnce(&mut Hv)) -> Fabric {
    let mut f = Fabric::new(tag, &[HvSpec::new(Peering::Unnumbered).loopbacks()]);
    f.hv_mut(1).add_vms(vms);
    extra(f.hv_mut(1));
    f.start_daemons();
    f.hv_mut(1).pass_and_frr_sync();
    f.wait_spine_exact(FABRIC_BOUND, "the spine to hold the VM prefixes");
    for vm in f.hv(1).vms.clone() {
        if vm.ip4.is_some() {
            wait_ping(&f, &vm.ns, OUT4);
        }
        if vm.ip6.is_some() {
            wait_ping(&f, &vm.ns, OUT6);
        }
    }
    f
}

fn wait_ping(f: &Fabric, ns: &str, dst: &str) {
    if !poll_until(FABRIC_BOUND, || ping_ok(ns, dst)) {
        panic!("no answer to ping {dst} from {ns} within {FABRIC_BOUND:?}\n{}", f.diagnostics());
    }
}

fn vm(f: &Fabric, m: u8) -> Vm {
    f.hv(1).vms.iter().find(|v| v.name == format!("vm{m}")).cloned().expect("VM registered")
}

fn v4(vm: &Vm) -> &str {
    vm.ip4.as_deref().expect("the VM has IPv4")
}

fn v6(vm: &Vm) -> &str {
    vm.ip6.as_deref().expect("the VM has IPv6")
}

/// The link-local address the kernel gives an interface with MAC (EUI-64).
fn eui64_link_local(mac: &str) -> String {
    let b: Vec<u8> = mac.split(':').map(|x| u8::from_str_radix(x, 16).expect("hex")).collect();
    format!(
        "fe80::{:x}:{:x}:{:x}:{:x}",
        u16::from_be_bytes([b[0] ^ 2, b[1]]),
        u16::from_be_bytes([b[2], 0xff]),
        u16::from_be_bytes([0xfe, b[3]]),
        u16::from_be_bytes([b[4], b[5]])
    )
}

// ---------------------------------------------------------------------------------------------
// Counters: nftables named counters in a namespace, ahead of everything else.

/// Installs table `inet hvtcap` in NS with one named counter per (NAME, MATCH): a rule
/// `MATCH counter name NAME` in a prerouting chain at priority -500, so it counts every
/// packet that reaches the namespace's IP layer, before any filter of the namespace.
fn counters(ns: &str, rules: &[(&str, &str)]) {
    let mut t = String::from("table inet hvtcap {\n");
    for (name, _) in rules {
        t.push_str(&format!("  counter {name} {{ }}\n"));
    }
    t.push_str("  chain pre {\n    type filter hook prerouting priority -500; policy accept;\n");
    for (name, m) in rules {
        t.push_str(&format!("    {m} counter name \"{name}\"\n"));
    }
    t.push_str("  }\n}\n");
    sh_in_ok(ns, &format!("nft -f - <<'EOF'\n{t}EOF"));
}

/// As [`counters`], but counted in the input and forward hooks after every filter (priority
/// 100): what the host took in or sent on. Read with [`count`].
fn delivered_counters(ns: &str, rules: &[(&str, &str)]) {
    let mut t = String::from("table inet hvtcap {\n");
    for (name, _) in rules {
        t.push_str(&format!("  counter {name} {{ }}\n"));
    }
    for hook in ["input", "forward"] {
        t.push_str(&format!("  chain {hook} {{\n    type filter hook {hook} priority 100; policy accept;\n"));
        for (name, m) in rules {
            t.push_str(&format!("    {m} counter name \"{name}\"\n"));
        }
        t.push_str("  }\n");
    }
    t.push_str("}\n");
    sh_in_ok(ns, &format!("nft -f - <<'EOF'\n{t}EOF"));
}

/// The packets counted so far by counter NAME of [`counters`] in NS.
fn count(ns: &str, name: &str) -> u64 {
    let out = sh_in_ok(ns, &format!("nft -j list counter inet hvtcap {name}"));
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("nft -j is not JSON ({e}): {out}"));
    v["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .find_map(|o| o.get("counter")?.get("packets")?.as_u64())
        .unwrap_or_else(|| panic!("no counter {name} in {ns}: {out}"))
}

/// Waits until counter NAME in NS has counted something, running PROBE before each look
/// (the legitimate packet that proves the capture works).
fn wait_counted(f: &Fabric, ns: &str, name: &str, mut probe: impl FnMut()) {
    if !poll_until(SETUP_BOUND, || {
        probe();
        count(ns, name) > 0
    }) {
        panic!("counter {name} in {ns} stayed at 0: the capture itself does not work\n{}", f.diagnostics());
    }
}

// ---------------------------------------------------------------------------------------------
// Crafted frames.

/// Builds Ethernet frames from JSON specs and sends each of them COUNT times, GAP seconds
/// apart, out of an interface with an AF_PACKET socket. Prints how many frames it sent.
const FRAMES_PY: &str = r#"
import json, socket, struct, sys, time

def mac(s): return bytes.fromhex(s.replace(':', ''))
def a4(s): return socket.inet_pton(socket.AF_INET, s)
def a6(s): return socket.inet_pton(socket.AF_INET6, s)

def csum(b):
    if len(b) % 2:
        b += b'\0'
    s = sum(struct.unpack('!%dH' % (len(b) // 2), b))
    while s >> 16:
        s = (s & 0xffff) + (s >> 16)
    return ~s & 0xffff

def ipv4(src, dst, proto, payload):
    h = struct.pack('!BBHHHBBH4s4s', 0x45, 0, 20 + len(payload), 0x4856, 0x4000, 64, proto, 0, a4(src), a4(dst))
    return h[:10] + struct.pack('!H', csum(h)) + h[12:] + payload

def icmp6(src, dst, typ, body, hlim=255):
    msg = struct.pack('!BBH', typ, 0, 0) + body
    ph = a6(src) + a6(dst) + struct.pack('!I3xB', len(msg), 58)
    msg = msg[:2] + struct.pack('!H', csum(ph + msg)) + msg[4:]
    return struct.pack('!IHBB', 6 << 28, len(msg), 58, hlim) + a6(src) + a6(dst) + msg

def frame(f, own):
    src = f.get('src_mac', own)
    k = f['kind']
    if k == 'arp':
        et = 0x0806
        p = struct.pack('!HHBBH', 1, 0x0800, 6, 4, f['op']) + mac(f.get('sha', src)) + a4(f['spa']) \
            + mac(f.get('tha', '00:00:00:00:00:00')) + a4(f['tpa'])
    elif k == 'echo4':
        et = 0x0800
        icmp = struct.pack('!BBHHH', 8, 0, 0, 0x4856, 1) + b'hvroute guard test'
        icmp = icmp[:2] + struct.pack('!H', csum(icmp)) + icmp[4:]
        p = ipv4(f['src'], f['dst'], 1, icmp)
    elif k == 'echo6':
        et = 0x86dd
        p = icmp6(f['src'], f['dst'], 128, struct.pack('!HH', 0x4856, 1) + b'hvroute guard test', 64)
    elif k == 'na':
        # Unsolicited, override (and router) flags, target link-layer address option.
        et = 0x86dd
        body = struct.pack('!I', 0xa0000000) + a6(f['target']) + struct.pack('!BB', 2, 1) + mac(f.get('lladdr', src))
        p = icmp6(f['src'], f['dst'], 136, body)
    elif k == 'ra':
        # Router lifetime LIFETIME, source link-layer address, an on-link autonomous prefix.
        et = 0x86dd
        body = struct.pack('!BBHII', 64, 0, f.get('lifetime', 1800), 0, 0) + struct.pack('!BB', 1, 1) + mac(src)
        if 'prefix' in f:
            pfx, plen = f['prefix'].split('/')
            body += struct.pack('!BBBBIII', 3, 4, int(plen), 0xc0, 86400, 14400, 0) + a6(pfx)
        p = icmp6(f['src'], f['dst'], 134, body)
    else:
        sys.exit('unknown frame kind ' + k)
    b = mac(f['dst_mac']) + mac(src) + struct.pack('!H', et) + p
    return b + bytes(max(0, 60 - len(b)))

dev, count, gap, specs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), json.loads(sys.argv[4])
own = open('/sys/class/net/%s/address' % dev).read().strip()
frames = [frame(f, own) for f in specs]
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((dev, 0))
for i in range(count):
    for b in frames:
        s.send(b)
    if i + 1 < count:
        time.sleep(gap)
print(len(frames) * count)
"#;

/// Sends FRAMES (see [`FRAMES_PY`]) COUNT times, GAP seconds apart, out of DEV in NS.
/// Returns how many frames went out.
fn send_frames(ns: &str, dev: &str, count: u32, gap: f64, frames: &[Value]) -> u64 {
    let spec = Value::Array(frames.to_vec()).to_string();
    let o = run(
        "ip",
        &["netns", "exec", ns, "python3", "-c", FRAMES_PY, dev, &count.to_string(), &gap.to_string(), &spec],
    );
    assert!(o.status.success(), "sending crafted frames from {ns} failed: {}", show(&o));
    stdout(&o).trim().parse().expect("the sender prints how many frames it sent")
}

/// Tries a TCP connection to each TARGET (`ADDR PORT`, a link-local ADDR with its
/// `%IFNAME`) from NS, all at once, each bounded by [`CONNECT_TIMEOUT_S`]. Returns the
/// targets that accepted the connection.
fn tcp_connects(ns: &str, targets: &[String]) -> Vec<String> {
    const PY: &str = r#"
import socket, sys, threading
timeout = float(sys.argv[1])
ok = []
def attempt(t):
    addr, port = t.rsplit(' ', 1)
    try:
        socket.create_connection((addr, int(port)), timeout=timeout).close()
        ok.append(t)
    except OSError:
        pass
ts = [threading.Thread(target=attempt, args=(t,)) for t in sys.argv[2:]]
for t in ts: t.start()
for t in ts: t.join()
print('\n'.join(ok))
"#;
    let mut args = vec!["netns", "exec", ns, "python3", "-c", PY, CONNECT_TIMEOUT_S];
    args.extend(targets.iter().map(String::as_str));
    let o = run("ip", &args);
    assert!(o.status.success(), "the connect attempts from {ns} failed to run: {}", show(&o));
    let mut ok: Vec<String> =
        stdout(&o).lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_string).collect();
    // In the order asked, not the order they connected in.
    ok.sort_by_key(|t| targets.iter().position(|x| x == t));
    ok
}

/// A TCP listener on every address of NS (IPv4 and IPv6) on PORT, until dropped.
fn tcp_listener(f: &Fabric, ns: &str, port: u16) -> Background {
    const PY: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.bind(('::', int(sys.argv[1])))
s.listen(64)
while True:
    c, _ = s.accept()
    c.close()
"#;
    let l = Background::spawn_in(ns, &["python3", "-c", PY, &port.to_string()]);
    let listening = poll_until(SETUP_BOUND, || {
        let o = sh_in(ns, &format!("ss -Hltn 'sport = :{port}'"));
        !stdout(&o).trim().is_empty()
    });
    if !listening {
        panic!("no TCP listener on port {port} in {ns}\n{}", f.diagnostics());
    }
    l
}

/// `ip neigh show ADDR dev DEV` in NS: the link-layer address, if an entry has one.
fn neigh_lladdr(ns: &str, addr: &str, dev: &str) -> Option<String> {
    let out = ip(ns, &format!("neigh show {addr} dev {dev}"));
    let t: Vec<&str> = out.split_whitespace().collect();
    t.windows(2).find(|w| w[0] == "lladdr").map(|w| w[1].to_string())
}

/// Probes lost between the first and the last answered one (seq gaps): what a flow lost,
/// regardless of the probe in flight when the pinger stopped.
fn lost_in_between(log: &PingLog) -> u64 {
    let (Some(first), Some(last)) = (log.seqs.iter().min(), log.seqs.iter().max()) else { return 0 };
    let unique: std::collections::BTreeSet<u64> = log.seqs.iter().copied().collect();
    (last - first + 1) - unique.len() as u64
}

/// A's spoofing: echo requests to the outside host with B's addresses, a pool address no
/// VM holds and an address outside the pools as the source, in both families, addressed
/// to the bridge's MAC (as a routed packet from a guest is). Returns how many were sent.
fn spoof_from(a: &Vm, b: &Vm) -> u64 {
    let e4 = |src: &str| json!({"kind": "echo4", "dst_mac": BRIDGE_MAC, "src": src, "dst": OUT4});
    let e6 = |src: &str| json!({"kind": "echo6", "dst_mac": BRIDGE_MAC, "src": src, "dst": OUT6});
    let frames = [e4(v4(b)), e4(STRAY4), e4(OUTSIDE_POOL4), e6(v6(b)), e6(STRAY6), e6(OUTSIDE_POOL6)];
    send_frames(&a.ns, "eth0", 3, 0.05, &frames)
}

/// The counters of the outside host for [`spoof_from`], and for A's legitimate echo requests.
fn spoof_counters(out: &str, a: &Vm, b: &Vm) {
    let m4 = |src: &str| format!("ip saddr {src} ip daddr {OUT4} icmp type echo-request");
    let m6 = |src: &str| format!("ip6 saddr {src} ip6 daddr {OUT6} icmpv6 type echo-request");
    counters(
        out,
        &[
            ("spoof4_b", &m4(v4(b))),
            ("spoof4_stray", &m4(STRAY4)),
            ("spoof4_outside", &m4(OUTSIDE_POOL4)),
            ("spoof6_b", &m6(v6(b))),
            ("spoof6_stray", &m6(STRAY6)),
            ("spoof6_outside", &m6(OUTSIDE_POOL6)),
            ("legit4_a", &m4(v4(a))),
            ("legit6_a", &m6(v6(a))),
        ],
    );
}

const SPOOF_COUNTERS: [&str; 6] =
    ["spoof4_b", "spoof4_stray", "spoof4_outside", "spoof6_b", "spoof6_stray", "spoof6_outside"];

/// The `guard.drops` of VM NAME in `hvroute status --json` (docs/guards.md "Visibility").
fn guard_drops(hv: &Hv, name: &str) -> u64 {
    let out = hv.hvroute_ok(&["status", "--json"]);
    let v: Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("status --json is not JSON ({e}): {out}"));
    let vm = v["vms"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|x| x["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("status --json has no VM {name}: {out}"));
    vm.pointer("/guard/drops").and_then(Value::as_u64).unwrap_or_else(|| {
        panic!("status --json has no integer vms[].guard.drops for {name} (docs/guards.md, Visibility): {vm}")
    })
}

// ---------------------------------------------------------------------------------------------
// The tests.

/// Prevents: a VM sending with another VM's address, with a pool address nobody holds or
/// with any other address (reflection and amplification attacks, poisoned flows, abuse
/// traced to the wrong customer). The guards drop such packets at the VM's bridge port,
/// so none reaches the outside host, while the VM's own address still gets through.
#[test]
fn spoofed_sources_never_leave_the_hypervisor() {
    let f = guarded("gspoof", 2);
    let (a, b) = (vm(&f, 1), vm(&f, 2));
    spoof_counters(&f.out, &a, &b);
    let sent = spoof_from(&a, &b);
    assert_eq!(sent, 18, "the spoofed frames were not all sent");
    // Sent after the spoofed frames over the same path: once these arrive, so would have
    // the spoofed ones.
    wait_counted(&f, &f.out, "legit4_a", || {
        ping_ok(&a.ns, OUT4);
    });
    wait_counted(&f, &f.out, "legit6_a", || {
        ping_ok(&a.ns, OUT6);
    });
    let arrived: Vec<(&str, u64)> =
        SPOOF_COUNTERS.iter().map(|c| (*c, count(&f.out, c))).filter(|(_, n)| *n > 0).collect();
    assert!(
        arrived.is_empty(),
        "spoofed packets from {} ({}) reached the outside host (counter, packets): {arrived:?}",
        a.name,
        a.addrs().join(", ")
    );
}

/// Prevents: a VM taking over the gateways or another VM's addresses with forged ARP
/// replies and unsolicited neighbour advertisements (a man in the middle, or a black hole
/// for its neighbours' traffic). Afterwards the hypervisor still maps B's addresses to B's
/// MAC and has no entry with A's MAC for them or the gateways, B still maps the gateways
/// to the bridge's MAC, and B's pings to the outside host never stop.
#[test]
fn forged_arp_and_neighbour_advertisements_poison_nothing() {
    let f = guarded("gnd", 2);
    let (a, b) = (vm(&f, 1), vm(&f, 2));
    // B has live entries for both gateways (the fixture pinged out), kept fresh by its pings.
    let p4 = Pinger::start(&b.ns, OUT4);
    let p6 = Pinger::start(&b.ns, OUT6);
    p4.wait_answers(20, SETUP_BOUND);
    p6.wait_answers(20, SETUP_BOUND);

    let bcast = "ff:ff:ff:ff:ff:ff";
    let allnodes = "33:33:00:00:00:01";
    let arp = |op: u8, spa: &str, tha: &str, tpa: &str, dst: &str| json!({"kind": "arp", "op": op, "spa": spa, "tha": tha, "tpa": tpa, "dst_mac": dst});
    let na = |src: &str, dst: &str, target: &str, dst_mac: &str| json!({"kind": "na", "src": src, "dst": dst, "target": target, "dst_mac": dst_mac});
    let a_ll = eui64_link_local(&a.mac);
    let frames = [
        // Gratuitous ARP (reply and request) for the gateway, to everyone.
        arp(2, GW4, bcast, GW4, bcast),
        arp(1, GW4, "00:00:00:00:00:00", GW4, bcast),
        // An ARP reply for the gateway, straight to B.
        arp(2, GW4, &b.mac, v4(&b), &b.mac),
        // Gratuitous ARP for B's address, to everyone and to the hypervisor.
        arp(2, v4(&b), bcast, v4(&b), bcast),
        arp(2, v4(&b), BRIDGE_MAC, GW4, BRIDGE_MAC),
        // Unsolicited NAs for fe80::1, from A's own addresses and from fe80::1 itself.
        na(v6(&a), "ff02::1", GW6, allnodes),
        na(&a_ll, "ff02::1", GW6, allnodes),
        na(GW6, "ff02::1", GW6, allnodes),
        na(v6(&a), v6(&b), GW6, &b.mac),
        // Unsolicited NAs for B's address, to everyone and to the hypervisor.
        na(v6(&a), "ff02::1", v6(&b), allnodes),
        na(&a_ll, GW6, v6(&b), BRIDGE_MAC),
    ];
    // Repeated over two seconds: ARP ignores a new address within locktime (1 s) of the
    // last update.
    send_frames(&a.ns, "eth0", 10, 0.2, &frames);
    // B keeps pinging for a while after the forgeries: a poisoned entry would now send
    // its traffic to A.
    let mut failures = Vec::new();
    for (fam, p) in [("IPv4", &p4), ("IPv6", &p6)] {
        let want = p.answered() + 50;
        if !poll_until(SETUP_BOUND, || p.answered() >= want) {
            failures.push(format!(
                "{}'s {fam} pings to the outside stopped being answered after the forgeries",
                b.name
            ));
        }
    }
    for gw in [GW4, GW6] {
        let got = neigh_lladdr(&b.ns, gw, "eth0");
        if got.as_deref() != Some(BRIDGE_MAC) {
            failures.push(format!(
                "{}'s neighbour entry for {gw} is {got:?}, not the bridge's {BRIDGE_MAC}",
                b.name
            ));
        }
    }
    let neighs = neighs_proto44(&f.hv(1).ns);
    for addr in b.addrs() {
        if !has_permanent_neigh(&neighs, addr, &b.mac) {
            failures
                .push(format!("the hypervisor's neighbour for {addr} is no longer permanent with {}", b.mac));
        }
    }
    let all = ip(&f.hv(1).ns, "neigh show");
    for l in all.lines() {
        let first = l.split_whitespace().next().unwrap_or("");
        if l.contains(&a.mac) && [GW4, GW6, v4(&b), v6(&b)].contains(&first) {
            failures.push(format!("the hypervisor has a neighbour entry with A's MAC: {l}"));
        }
    }
    for (fam, p) in [("IPv4", p4), ("IPv6", p6)] {
        let log = p.stop();
        let lost = lost_in_between(&log);
        let (gap, _) = log.longest_gap();
        if lost > 0 || gap > Duration::from_secs(1) {
            failures.push(format!(
                "{}'s {fam} pings to the outside lost {lost} of {} probes, longest gap {gap:?}",
                b.name, log.sent
            ));
        }
    }
    assert!(failures.is_empty(), "forged ARP/NA from {} took effect:\n{}", a.name, failures.join("\n"));
}

/// Prevents: a VM acting as a router for its neighbours with router advertisements (a
/// rogue default route and a SLAAC prefix in every guest that accepts them: Windows, or a
/// Linux guest whose cloud-init did not turn them off). B here accepts RAs; none of A's
/// reaches it, while one from the host itself does (the capture works).
#[test]
fn router_advertisements_from_a_vm_reach_no_other_vm() {
    let f = guarded("gra", 2);
    let (a, b) = (vm(&f, 1), vm(&f, 2));
    sh_in_ok(&b.ns, "echo 1 > /proc/sys/net/ipv6/conf/eth0/accept_ra");
    counters(
        &b.ns,
        &[
            ("ra_from_a", &format!("ether saddr {} icmpv6 type nd-router-advert", a.mac)),
            ("ra_from_host", &format!("ether saddr {BRIDGE_MAC} icmpv6 type nd-router-advert")),
        ],
    );
    let ra = |src: &str, dst_mac: &str| json!({"kind": "ra", "src": src, "dst": "ff02::1", "dst_mac": dst_mac, "prefix": ROGUE_PREFIX});
    let a_ll = eui64_link_local(&a.mac);
    let frames =
        [ra(&a_ll, "33:33:00:00:00:01"), ra(&a_ll, &b.mac), ra(GW6, "33:33:00:00:00:01"), ra(GW6, &b.mac)];
    send_frames(&a.ns, "eth0", 3, 0.1, &frames);
    // The proof: an RA sent by the host out of the bridge to B (router lifetime 0, no
    // prefix: it changes nothing in B).
    let hv_ns = f.hv(1).ns.clone();
    wait_counted(&f, &b.ns, "ra_from_host", || {
        let proof = json!({"kind": "ra", "src": GW6, "dst": "ff02::1", "dst_mac": b.mac, "lifetime": 0});
        send_frames(&hv_ns, BRIDGE, 1, 0.0, &[proof]);
    });
    let n = count(&b.ns, "ra_from_a");
    let ra_routes = ip(&b.ns, "-6 route show proto ra");
    let rogue = ip(&b.ns, "-6 addr show dev eth0");
    let rogue_prefix = ROGUE_PREFIX.trim_end_matches("::/64");
    assert!(
        n == 0 && ra_routes.trim().is_empty() && !rogue.contains(rogue_prefix),
        "{}'s router advertisements reached {}: {n} counted; its RA-learned routes:\n{ra_routes}\nits addresses:\n{rogue}",
        a.name,
        b.name
    );
}

/// Prevents: a VM reaching the hypervisor's own services (bgpd on TCP 179, sshd on 22) on
/// the gateways or on the host's loopback addresses, the first step to hijacking the
/// fabric or the host. The gateways still answer pings, which guests use to check their
/// uplink.
#[test]
fn vm_cannot_reach_host_services_but_can_ping_the_gateways() {
    let f = guarded("ghost", 1);
    let a = vm(&f, 1);
    let hv = f.hv(1);
    let _ssh = tcp_listener(&f, &hv.ns, 22);
    let bgp = sh_in(&hv.ns, "ss -Hltn 'sport = :179'");
    assert!(!stdout(&bgp).trim().is_empty(), "bgpd does not listen on TCP 179 on the hypervisor");
    let mut targets = Vec::new();
    for port in [22, 179] {
        for addr in [GW4.to_string(), format!("{GW6}%eth0"), hv.loopback4(), hv.loopback6()] {
            targets.push(format!("{addr} {port}"));
        }
    }
    // The listeners answer from the host itself (the targets are real).
    let local: Vec<String> =
        [format!("{GW4} 22"), format!("{} 22", hv.loopback6()), format!("{} 179", hv.loopback4())]
            .into_iter()
            .collect();
    assert_eq!(tcp_connects(&hv.ns, &local), local, "the host's own services do not answer on the host");
    let open = tcp_connects(&a.ns, &targets);
    let pings: Vec<(&str, bool)> = [GW4, GW6]
        .iter()
        .map(|gw| {
            let dst = if gw.contains(':') { format!("{gw}%eth0") } else { gw.to_string() };
            (*gw, poll_until(SETUP_BOUND, || ping_ok(&a.ns, &dst)))
        })
        .collect();
    assert!(open.is_empty(), "{} opened TCP connections to the hypervisor: {open:?}", a.name);
    for (gw, ok) in pings {
        assert!(ok, "{} cannot ping the gateway {gw}", a.name);
    }
}

/// Prevents: a VM reaching the hypervisor's storage (or management) network through the
/// host's routing table, which holds a route to it: iSCSI/NFS/Ceph of every tenant one hop
/// away. The storage namespace routes the pools back to the host, so only a filter keeps
/// the VM out; the host itself reaches it.
#[test]
fn vm_cannot_reach_the_storage_network() {
    let mut f = guarded("gstor", 1);
    let a = vm(&f, 1);
    let st = f.hv_mut(1).add_storage();
    counters(
        &st.ns,
        &[
            ("from_a4", &format!("ip saddr {}", v4(&a))),
            ("from_a6", &format!("ip6 saddr {}", v6(&a))),
            ("from_hv4", &format!("ip saddr {STORAGE_HV4}")),
            ("from_hv6", &format!("ip6 saddr {STORAGE_HV6}")),
        ],
    );
    let _iscsi = tcp_listener(&f, &st.ns, 3260);
    let ping4 = ping_ok(&a.ns, &st.ip4);
    let ping6 = ping_ok(&a.ns, &st.ip6);
    let open = tcp_connects(&a.ns, &[format!("{} 3260", st.ip4), format!("{} 3260", st.ip6)]);
    let hv_ns = f.hv(1).ns.clone();
    wait_counted(&f, &st.ns, "from_hv4", || {
        ping_ok(&hv_ns, STORAGE4);
    });
    wait_counted(&f, &st.ns, "from_hv6", || {
        ping_ok(&hv_ns, STORAGE6);
    });
    let (n4, n6) = (count(&st.ns, "from_a4"), count(&st.ns, "from_a6"));
    assert!(
        !ping4 && !ping6 && open.is_empty() && n4 == 0 && n6 == 0,
        "{} reached the storage network: ping {} answered {ping4}, ping {} answered {ping6}, \
         TCP connections {open:?}, packets arrived IPv4 {n4}, IPv6 {n6}",
        a.name,
        st.ip4,
        st.ip6
    );
}

/// Prevents: a port on the bridge that no VM is bound to (a tap left behind, a port an
/// admin or another tool added, a VM CloudStack started without hvroute knowing)
/// forwarding traffic with whatever addresses its guest picks. Default deny: its pings to
/// the outside and to the gateways get no answer, and nothing from it is taken in by the
/// hypervisor, forwarded, or seen by the outside host.
#[test]
fn unbound_port_forwards_nothing() {
    let mut f = guarded("gunbound", 1);
    let a = vm(&f, 1);
    let stray = f.hv_mut(1).make_vm_with(9, Some(STRAY4), Some(STRAY6));
    let hv_ns = f.hv(1).ns.clone();
    // Counted where a packet is delivered to the host or forwarded (after every filter):
    // what arrives before the daemon has seen the port is dropped as it enters the IP
    // layer, which a prerouting counter would still see.
    delivered_counters(
        &hv_ns,
        &[
            ("stray", &format!("iifname \"{BRIDGE}\" ether saddr {}", stray.mac)),
            ("from_a", &format!("iifname \"{BRIDGE}\" ether saddr {}", a.mac)),
        ],
    );
    counters(
        &f.out,
        &[("stray4", &format!("ip saddr {STRAY4}")), ("stray6", &format!("ip6 saddr {STRAY6}"))],
    );
    let answered: Vec<String> = [OUT4.to_string(), OUT6.to_string(), GW4.to_string(), format!("{GW6}%eth0")]
        .into_iter()
        .filter(|dst| {
            run("ip", &["netns", "exec", &stray.ns, "ping", "-n", "-c2", "-W1", dst]).status.success()
        })
        .collect();
    wait_counted(&f, &hv_ns, "from_a", || {
        ping_ok(&a.ns, GW4);
    });
    let counted = [(hv_ns.as_str(), "stray"), (f.out.as_str(), "stray4"), (f.out.as_str(), "stray6")]
        .map(|(ns, c)| (c, count(ns, c)));
    assert!(
        answered.is_empty() && counted.iter().all(|(_, n)| *n == 0),
        "a port bound to no VM forwarded: answered pings to {answered:?}; packets counted {counted:?}"
    );
}

/// Prevents: a VM sending with another VM's MAC (MAC cloning): stealing B's traffic by
/// moving B's MAC to its own port in the bridge's forwarding table, or hiding behind B's
/// identity. A's frames carrying B's MAC go nowhere; B is unaffected.
#[test]
fn frames_with_another_vms_mac_forward_nothing() {
    let f = guarded("gclone", 2);
    let (a, b) = (vm(&f, 1), vm(&f, 2));
    counters(
        &f.out,
        &[
            ("a4", &format!("ip saddr {}", v4(&a))),
            ("a6", &format!("ip6 saddr {}", v6(&a))),
            ("b4", &format!("ip saddr {}", v4(&b))),
        ],
    );
    ip(&a.ns, &format!("link set eth0 address {}", b.mac));
    let answered: Vec<&str> = [OUT4, OUT6]
        .into_iter()
        .filter(|dst| run("ip", &["netns", "exec", &a.ns, "ping", "-n", "-c3", "-W1", dst]).status.success())
        .collect();
    // B, the MAC's owner, still gets through (and proves the capture).
    wait_counted(&f, &f.out, "b4", || {
        ping_ok(&b.ns, OUT4);
    });
    let b_ok = poll_until(SETUP_BOUND, || ping_ok(&b.ns, OUT4) && ping_ok(&b.ns, OUT6));
    let (n4, n6) = (count(&f.out, "a4"), count(&f.out, "a6"));
    assert!(
        answered.is_empty() && n4 == 0 && n6 == 0 && b_ok,
        "{} with {}'s MAC: pings answered {answered:?}, its packets reached the outside (IPv4 {n4}, \
         IPv6 {n6}); {} still pings out: {b_ok}",
        a.name,
        b.name,
        b.name
    );
}

/// Prevents: guards that break what they guard: a dual-stack, an IPv4-only and an
/// IPv6-only VM reach the outside host and are reached from it (ping and TCP), and ping
/// their gateways, with the guards on.
#[test]
fn legitimate_flows_work_with_the_guards_on() {
    let f = guarded_with("glegit", 1, |hv| {
        let v4only = hv.make_vm_with(2, Some("192.0.2.52"), None);
        hv.register(&v4only);
        let v6only = hv.make_vm_with(3, None, Some("2001:db8:100::1:3"));
        hv.register(&v6only);
    });
    let _web = tcp_listener(&f, &f.out, 8080);
    for vm in f.hv(1).vms.clone() {
        let mut targets = Vec::new();
        if let Some(a) = &vm.ip4 {
            wait_ping(&f, &f.out, a);
            wait_ping(&f, &vm.ns, GW4);
            targets.push(format!("{OUT4} 8080"));
        }
        if let Some(a) = &vm.ip6 {
            wait_ping(&f, &f.out, a);
            wait_ping(&f, &vm.ns, &format!("{GW6}%eth0"));
            targets.push(format!("{OUT6} 8080"));
        }
        let open = tcp_connects(&vm.ns, &targets);
        assert_eq!(
            open,
            targets,
            "{} ({}) cannot open TCP connections to the outside",
            vm.name,
            vm.addrs().join(", ")
        );
    }
}

/// Prevents: a guard update that opens a window without forwarding for the other VMs (a
/// flushed table, a chain rebuilt in several transactions): VM B pings the outside every
/// 10 ms in both families while VM C's addresses change 20 times; B loses nothing.
#[test]
fn rule_updates_do_not_disturb_other_vms() {
    let mut f = guarded("gupd", 3);
    let (b, c) = (vm(&f, 2), vm(&f, 3));
    let p4 = Pinger::start(&b.ns, OUT4);
    let p6 = Pinger::start(&b.ns, OUT6);
    p4.wait_answers(20, SETUP_BOUND);
    p6.wait_answers(20, SETUP_BOUND);
    let hv = f.hv_mut(1);
    for i in 0..20u32 {
        let a4 = format!("192.0.2.{}", 100 + i);
        let a6 = format!("2001:db8:100::3:{:x}", 0x100 + i);
        hv.hvroute_ok(&[
            "vm",
            "add",
            &c.name,
            "--mac",
            &c.mac,
            "--ip",
            &a4,
            "--ip",
            &a6,
            "--port",
            &c.port,
            "--replace",
        ]);
    }
    p4.wait_answers(20, SETUP_BOUND);
    p6.wait_answers(20, SETUP_BOUND);
    let (l4, l6) = (p4.stop(), p6.stop());
    let (lost4, lost6) = (lost_in_between(&l4), lost_in_between(&l6));
    eprintln!(
        "rule updates: IPv4 {} sent, {lost4} lost, longest gap {:?}; IPv6 {} sent, {lost6} lost, longest gap {:?}",
        l4.sent,
        l4.longest_gap().0,
        l6.sent,
        l6.longest_gap().0
    );
    assert!(
        lost4 == 0 && lost6 == 0,
        "{} lost probes while {}'s rules changed 20 times: IPv4 {lost4} of {}, IPv6 {lost6} of {}",
        b.name,
        c.name,
        l4.sent,
        l6.sent
    );
    let routes = routes_proto44(&hv.ns);
    assert!(
        has_route(&routes, "192.0.2.119") && has_route(&routes, "2001:db8:100::3:113"),
        "{}'s last addresses are not routed: {routes:?}",
        c.name
    );
}

/// Prevents: hvroute touching firewall rules it does not own: CloudStack's security
/// groups (iptables-nft) or an admin's nftables table flushed, reordered or reset by a
/// pass. A foreign table and a foreign iptables rule stay byte-identical through 100
/// resync passes, with VMs added and removed (guard rules rewritten) in between.
#[test]
fn foreign_firewall_rules_survive_passes() {
    let mut f = guarded("gforeign", 1);
    let ns = f.hv(1).ns.clone();
    sh_in_ok(
        &ns,
        "nft -f - <<'EOF'\ntable inet foreign {\n  chain c {\n    type filter hook forward priority 10; policy accept;\n    \
         counter\n  }\n}\nEOF",
    );
    sh_in_ok(&ns, "iptables -A FORWARD -m comment --comment foreign -j ACCEPT");
    sh_in_ok(&ns, "ip6tables -A FORWARD -m comment --comment foreign -j ACCEPT");
    // The rules byte for byte (`nft -s`: without the counter's values, which move with
    // whatever traffic the host forwards), and the counter's value, which may only grow.
    let snapshot = |ns: &str| {
        (
            sh_in_ok(ns, "nft -s list table inet foreign"),
            sh_in_ok(ns, "iptables-save | grep foreign"),
            sh_in_ok(ns, "ip6tables-save | grep foreign"),
        )
    };
    let packets = |ns: &str| {
        let out = sh_in_ok(ns, "nft list chain inet foreign c");
        let t: Vec<&str> = out.split_whitespace().collect();
        t.windows(2)
            .find(|w| w[0] == "packets")
            .and_then(|w| w[1].parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no counter in the foreign chain: {out}"))
    };
    let before = snapshot(&ns);
    let mut seen = packets(&ns);
    let spare = f.hv_mut(1).make_vm(2);
    for i in 0..100 {
        // Every tenth pass follows a VM change, so the guard rules are rewritten too.
        if i % 10 == 0 {
            if i % 20 == 0 {
                f.hv_mut(1).register(&spare);
            } else {
                f.hv_mut(1).del_vm(&spare.name);
            }
        }
        let hv = f.hv_mut(1);
        hv.assert_daemon_running();
        let answer = control_request(&hv.socket, r#"{"op":"resync"}"#, SETUP_BOUND)
            .unwrap_or_else(|| panic!("the daemon did not answer resync {i}"));
        assert!(
            answer["errors"].as_array().is_some_and(Vec::is_empty),
            "resync {i} reported errors: {answer}"
        );
        let now = snapshot(&ns);
        assert_eq!(now, before, "the foreign firewall rules changed at pass {i}");
        let p = packets(&ns);
        assert!(p >= seen, "the foreign table's counter went back from {seen} to {p} at pass {i}");
        seen = p;
    }
}

/// Prevents: guards that drop silently, so that an operator cannot tell a VM that
/// misbehaves from a broken network. After A's spoofing, `hvroute status --json` shows
/// A's drop counter (`vms[].guard.drops`) grown by at least the spoofed packets, and not
/// B's by as much.
#[test]
fn status_shows_per_vm_drop_counters() {
    let f = guarded("gdrops", 2);
    let (a, b) = (vm(&f, 1), vm(&f, 2));
    let hv = f.hv(1);
    let (a0, b0) = (guard_drops(hv, &a.name), guard_drops(hv, &b.name));
    let sent = spoof_from(&a, &b);
    let mut last = (a0, b0);
    let grown = poll_until(SETUP_BOUND, || {
        last = (guard_drops(hv, &a.name), guard_drops(hv, &b.name));
        last.0 >= a0 + sent
    });
    assert!(grown, "{}'s guard.drops went from {a0} to {} after {sent} spoofed packets", a.name, last.0);
    assert!(
        last.1 < b0 + sent,
        "{}'s guard.drops went from {b0} to {}: A's spoofing was counted against B",
        b.name,
        last.1
    );
}

/// Prevents: a site's allow-list (`guard.host_allow`, `guard.forward_allow`) or a NIC chain
/// that nft refuses, which would leave every guard of the pass unloaded (one transaction).
/// The rendered rules load into a real nft, read back with the allow rules and the NIC
/// chain, and hvroute's observation of them plans nothing more.
#[test]
fn allow_lists_and_nic_chains_load_into_nft() {
    use hvroute::config::Config;
    use hvroute::guard::{self, NicRules};
    use hvroute::plan::Op;
    let lab = Lab::new("gload");
    ip(&lab.hv, &format!("link add {BRIDGE} type bridge"));
    let cfg = Config::parse(
        "[pools]\nipv4=[\"192.0.2.0/24\"]\nipv6=[\"2001:db8:100::/40\"]\n[bgp]\nasn=65001\nrouter_id=\"10.255.0.1\"\n\
         [guard]\nuplinks=[\"uplink0\"]\nhost_allow=[\"udp/53\",\"tcp/8080\"]\nforward_allow=[\"198.51.100.0/24\",\"2001:db8:fffd::/64\"]\n",
    )
    .unwrap();
    let gc = guard::GuardConfig::from_config(&cfg).expect("guards on");
    let nic = NicRules {
        mac: "52:54:00:00:00:61".parse().unwrap(),
        v4: ["192.0.2.61".parse().unwrap()].into(),
        v6: ["2001:db8:100::61".parse().unwrap(), "2001:db8:100::62".parse().unwrap()].into(),
    };
    let ops = [
        Op::GuardBase { base: gc.base.clone() },
        Op::GuardPorts { ports: ["v1p".to_string()].into(), trusted: ["eno1".to_string()].into() },
        Op::GuardNic { port: "v1p".into(), nic: nic.clone(), replace: false },
    ];
    let script = guard::transaction(&ops).expect("guard ops render");
    sh_in_ok(&lab.hv, &format!("nft -f - <<'EOF'\n{script}EOF"));
    let rules = sh_in_ok(&lab.hv, "nft list ruleset");
    for want in [
        "udp dport 53 accept",
        "tcp dport 8080 accept",
        "ip daddr 198.51.100.0/24 accept",
        "ip6 daddr 2001:db8:fffd::/64 accept",
        "chain nic-525400000061",
        "ether saddr != 52:54:00:00:00:61",
        "@th,64,128 0x20010db8010000000000000000000062 accept",
    ] {
        assert!(rules.contains(want), "{want:?} is not in the loaded rules:\n{rules}");
    }
    // Loading the same again changes nothing (the script is idempotent but for the
    // element, which is then replaced).
    let again = guard::transaction(&[
        Op::GuardBase { base: gc.base.clone() },
        Op::GuardNic { port: "v1p".into(), nic, replace: true },
    ])
    .unwrap();
    sh_in_ok(&lab.hv, &format!("nft -f - <<'EOF'\n{again}EOF"));
    assert_eq!(sh_in_ok(&lab.hv, "nft list ruleset"), rules, "a second load changed the rules");
}
