//! Harness for the end-to-end tests with real FRR: a spine running FRR, one or more
//! hypervisors each running FRR and `hvroute daemon`, VMs and an outside host, all in
//! network namespaces that each test creates for itself.
//!
//! Contract:
//! - Needs root and FRR 8.x (`/usr/lib/frr/{zebra,bgpd}`, `vtysh`).
//! - Names are unique per test and per run: namespaces `hvt-<tag>-<pid>-<n>-<role>`, FRR
//!   pathspaces `hvt<pid>n<n><role>` (their files live in `/etc/frr/<ps>` and
//!   `/var/run/frr/<ps>`).
//! - [`Fabric`]'s `Drop` kills the hvroute daemons it started and the FRR daemons of its
//!   pathspaces (by the PIDs in their pid files, checked against `/proc/PID/cmdline`),
//!   then deletes its namespaces and FRR directories, also when the test panics.
//! - Every wait is a bounded poll; nothing sleeps for a fixed time.
//! - Every hypervisor starts with an EMPTY frr.conf: hvroute pushes its own base config
//!   (peer-group, policies) and the VM prefixes through vtysh, and saves them with
//!   `write memory`.
//! - The spine, the outside host, the hypervisors, their links, addresses and ASNs come
//!   from `tests/topologies/fabric.clab.yml` (read by `super::topology`): one namespace per
//!   node (`<prefix>-<node>`), one veth per link. A test with N [`HvSpec`]s uses hv1..hvN of
//!   the file; its `HvSpec` chooses the peering (unnumbered leaves the file's uplink
//!   addresses off). VMs and storage networks are added by the tests, not by the file.
//!   `tests/netns_topology.rs` checks that a fabric holds exactly the file's nodes and links.
//!
//! ```text
//!   <tag>-out (outside host)   lo 203.0.113.10/32, 2001:db8:ffff::10/128
//!      eth0 10.255.0.1/31, 2001:db8:fffe::2/64; default routes via the spine
//!        │
//!      out0 10.255.0.0/31, 2001:db8:fffe::1/64; 203.0.113.0/24 and 2001:db8:ffff::/64 via out
//!   <tag>-spine   FRR, AS 65000: eBGP to every hypervisor, default-originate (0/0, ::/0),
//!        │        plus `network 203.0.113.0/24` and `network 2001:db8:ffff::/64`, which
//!        │        the hypervisors must refuse. No policy of its own: it takes whatever
//!        │        a hypervisor sends, so its tables show exactly what was advertised.
//!      hvN ── uplink0 in <tag>-hvN  (unnumbered: link-local only, `neighbor hvN interface`;
//!        │       numbered: 10.255.N.0/31 (spine) and .1 (hv), 2001:db8:fffe:N::1 and ::2)
//!   <tag>-hvN     FRR (AS 65000+N, pathspace <ps>hN) and `hvroute daemon`
//!      cloudbr0 ── vMp ── eth0 in <tag>-hNvM   (a VM, configured like a cloud-init guest)
//!      stor0 10.255.200.1/24, 2001:db8:fffd::1/64 ── eth0 in <tag>-hN-stor (.2, ::2; on
//!            request, [`Hv::add_storage`]: a storage network VMs must not reach)
//! ```
//!
//! VM M on hypervisor N has 192.0.2.(50N+M) and 2001:db8:100::N:M (by the hypervisor's
//! stack) and MAC 52:54:00:00:0N:0M.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::net::IpAddr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::topology::{self, Facts, Hypervisor, Topology};
use super::*;

/// The spine's AS, as in [`FABRIC_TOPOLOGY`] (where the fabric takes it from; the tests
/// assert with these constants, and tests/netns_topology.rs checks that they agree).
pub const SPINE_ASN: u32 = 65000;
/// The spine's own prefixes, which it advertises and the hypervisors must refuse (the file's
/// `HVR_EXTRA4` and `HVR_EXTRA6`).
pub const EXTRA4: &str = "203.0.113.0/24";
pub const EXTRA6: &str = "2001:db8:ffff::/64";
pub const DEFAULT4: &str = "0.0.0.0/0";
pub const DEFAULT6: &str = "::/0";
/// Routes an admin added on a hypervisor by hand: never advertised.
pub const FOREIGN4_IN_POOL: &str = "192.0.2.250";
pub const FOREIGN4_OUT_OF_POOL: &str = "198.51.100.200";
pub const FOREIGN6_IN_POOL: &str = "2001:db8:1ff::250";
pub const FOREIGN6_OUT_OF_POOL: &str = "2001:db8:ffff:ee::200";

/// Bound for a whole fabric to come up: FRR starting, BGP sessions establishing (FRR 8.4
/// needs about 4 s from a bgpd start to an Established session, measured), on a busy
/// 2-core machine running two such tests at once.
pub const FABRIC_BOUND: Duration = Duration::from_secs(30);

/// The fabric's topology file, the source of its nodes, links, addresses and ASNs.
pub const FABRIC_TOPOLOGY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/topologies/fabric.clab.yml");
const FRR_BIN_DIR: &str = "/usr/lib/frr";
const FRR_CONF_ROOT: &str = "/etc/frr";
const FRR_RUN_ROOT: &str = "/var/run/frr";

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// The facts of [`FABRIC_TOPOLOGY`], read once; panics with the parser's sentence if the file
/// is not a valid topology.
pub fn fabric_facts() -> &'static Facts {
    static FACTS: std::sync::OnceLock<Facts> = std::sync::OnceLock::new();
    FACTS.get_or_init(|| {
        Topology::load(Path::new(FABRIC_TOPOLOGY))
            .and_then(|t| t.facts())
            .unwrap_or_else(|e| panic!("{FABRIC_TOPOLOGY}: {e}"))
    })
}

/// `ip addr add` for each of ADDRS on DEV in NS (IPv6 without duplicate address detection).
fn add_addrs(ns: &str, dev: &str, addrs: &[ipnet::IpNet]) {
    for a in addrs {
        match a {
            ipnet::IpNet::V4(_) => ip(ns, &format!("addr add {a} dev {dev}")),
            ipnet::IpNet::V6(_) => ip(ns, &format!("-6 addr add {a} dev {dev} nodad")),
        };
    }
}

// ---------------------------------------------------------------------------------------------
// Addresses.

/// `A/32` or `A/128` for a host address, or a prefix as given, in canonical form.
pub fn norm_prefix(s: &str) -> String {
    let (a, len) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (s, None),
    };
    let ip: IpAddr = a.parse().unwrap_or_else(|e| panic!("not an address: {s:?}: {e}"));
    let len = len.map(str::to_string).unwrap_or_else(|| if ip.is_ipv4() { "32" } else { "128" }.to_string());
    format!("{ip}/{len}")
}

pub fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| norm_prefix(s)).collect()
}

// ---------------------------------------------------------------------------------------------
// FRR in a namespace.

/// One FRR instance (zebra and bgpd) in a namespace, under its own pathspace.
pub struct Frr {
    pub ns: String,
    pub ps: String,
    pub conf_dir: PathBuf,
    pub run_dir: PathBuf,
}

impl Frr {
    /// Creates the pathspace's directories with CONF as frr.conf. Does not start anything.
    pub fn create(ns: &str, ps: &str, conf: &str) -> Frr {
        let frr = Frr {
            ns: ns.to_string(),
            ps: ps.to_string(),
            conf_dir: Path::new(FRR_CONF_ROOT).join(ps),
            run_dir: Path::new(FRR_RUN_ROOT).join(ps),
        };
        for d in [&frr.conf_dir, &frr.run_dir] {
            fs::create_dir_all(d).unwrap_or_else(|e| panic!("cannot create {}: {e}", d.display()));
        }
        fs::write(frr.conf_file(), conf).expect("write frr.conf");
        // Debian's default: `write memory` saves one integrated frr.conf, also when the
        // file does not exist yet (a lost or new pathspace).
        fs::write(frr.conf_dir.join("vtysh.conf"), "service integrated-vtysh-config\n").expect("vtysh.conf");
        frr.chown();
        frr
    }

    fn chown(&self) {
        check(
            "chown",
            &["-R", "frr:frr", self.conf_dir.to_str().expect("utf-8"), self.run_dir.to_str().expect("utf-8")],
        );
    }

    pub fn conf_file(&self) -> PathBuf {
        self.conf_dir.join("frr.conf")
    }

    /// Starts zebra and bgpd (datacenter defaults, no vty TCP port) in the namespace and
    /// waits until bgpd answers vtysh. Returns when it first answered.
    pub fn start(&self) -> Instant {
        for d in ["zebra", "bgpd"] {
            let bin = format!("{FRR_BIN_DIR}/{d}");
            let pid = self.run_dir.join(format!("{d}.pid"));
            let pid = pid.to_str().expect("utf-8");
            check(
                "ip",
                &[
                    "netns",
                    "exec",
                    &self.ns,
                    &bin,
                    "-d",
                    "-N",
                    &self.ps,
                    "-F",
                    "datacenter",
                    "-P",
                    "0",
                    "-i",
                    pid,
                ],
            );
        }
        let mut at = None;
        let ok = poll_until(SETUP_BOUND, || {
            let up = self.answering();
            if up {
                at = Some(Instant::now());
            }
            up
        });
        assert!(ok, "FRR {} in {} did not answer within {SETUP_BOUND:?}", self.ps, self.ns);
        at.expect("answered")
    }

    /// Loads frr.conf into the running daemons (`vtysh -b`), as FRR's init script does.
    pub fn boot(&self) {
        let o = run("vtysh", &["-N", &self.ps, "-b"]);
        assert!(o.status.success(), "vtysh -N {} -b failed: {}", self.ps, show(&o));
    }

    /// bgpd answers vtysh.
    pub fn answering(&self) -> bool {
        let o = run("vtysh", &["-N", &self.ps, "-d", "bgpd", "-c", "show bgp summary json"]);
        o.status.success() && serde_json::from_slice::<Value>(&o.stdout).is_ok()
    }

    /// The PID of DAEMON from its pid file, if that process runs and is this pathspace's.
    pub fn pid(&self, daemon: &str) -> Option<i32> {
        let text = fs::read_to_string(self.run_dir.join(format!("{daemon}.pid"))).ok()?;
        let pid: i32 = text.trim().parse().ok()?;
        // A zombie has an empty cmdline; a reused PID has another one.
        let cmd = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
        let is_it = args.first().is_some_and(|a| a.ends_with(format!("/{daemon}").as_bytes()))
            && args.windows(2).any(|w| w[0] == b"-N" && w[1] == self.ps.as_bytes());
        is_it.then_some(pid)
    }

    pub fn running(&self) -> bool {
        self.pid("zebra").is_some() || self.pid("bgpd").is_some()
    }

    /// Sends SIGNAL to bgpd and zebra and waits until both are gone.
    pub fn stop(&self, signal: libc::c_int) {
        for d in ["bgpd", "zebra"] {
            if let Some(pid) = self.pid(d) {
                // SAFETY: kill(2) on a PID just checked to be this pathspace's FRR daemon.
                unsafe { libc::kill(pid, signal) };
            }
        }
        if !poll_until(SETUP_BOUND, || !self.running()) {
            for d in ["bgpd", "zebra"] {
                if let Some(pid) = self.pid(d) {
                    // SAFETY: as above.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
            assert!(poll_until(SETUP_BOUND, || !self.running()), "FRR {} does not stop", self.ps);
        }
    }

    /// `vtysh -N PS -c CMD...`, whatever the outcome.
    pub fn vtysh(&self, cmds: &[&str]) -> Output {
        let mut args = vec!["-N", self.ps.as_str()];
        for c in cmds {
            args.extend(["-c", c]);
        }
        run("vtysh", &args)
    }

    /// Runs CMDS in one vtysh session; panics unless they all succeed. Returns stdout.
    pub fn vtysh_ok(&self, cmds: &[&str]) -> String {
        let o = self.vtysh(cmds);
        let out = stdout(&o);
        assert!(
            o.status.success() && !out.lines().any(|l| l.trim_start().starts_with('%')),
            "vtysh -N {} {cmds:?} failed: {}",
            self.ps,
            show(&o)
        );
        out
    }

    /// Configuration commands, as an admin types them: `configure terminal`, then LINES.
    pub fn configure(&self, lines: &[&str]) {
        let mut cmds = vec!["configure terminal"];
        cmds.extend(lines);
        self.vtysh_ok(&cmds);
    }

    pub fn json(&self, cmd: &str) -> Value {
        let out = self.vtysh_ok(&[cmd]);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("vtysh {cmd:?} did not print JSON ({e}): {out}"))
    }

    pub fn running_config(&self) -> String {
        self.vtysh_ok(&["show running-config"])
    }

    /// Prefix → the paths of `show bgp AFI unicast json` (AFI is `ipv4` or `ipv6`).
    pub fn rib(&self, afi: &str) -> BTreeMap<String, Vec<Value>> {
        let v = self.json(&format!("show bgp {afi} unicast json"));
        let Some(routes) = v.get("routes").and_then(Value::as_object) else { return BTreeMap::new() };
        routes
            .iter()
            .map(|(k, paths)| (norm_prefix(k), paths.as_array().cloned().unwrap_or_default()))
            .collect()
    }

    /// The state of BGP neighbour PEER (`Established`, `Active`, ...), if bgpd knows it.
    pub fn peer_state(&self, peer: &str) -> Option<String> {
        let o = self.vtysh(&[&format!("show bgp neighbors {peer} json")]);
        let v: Value = serde_json::from_slice(&o.stdout).ok()?;
        v.get(peer)?.get("bgpState")?.as_str().map(str::to_string)
    }
}

impl Drop for Frr {
    fn drop(&mut self) {
        if self.running() {
            self.stop(libc::SIGKILL);
        }
        let _ = fs::remove_dir_all(&self.conf_dir);
        let _ = fs::remove_dir_all(&self.run_dir);
    }
}

/// The AS path of a BGP path, as numbers.
fn as_path(p: &Value) -> Vec<u32> {
    p.get("path")
        .and_then(Value::as_str)
        .unwrap_or("")
        .split_whitespace()
        .filter_map(|a| a.parse().ok())
        .collect()
}

fn valid(p: &Value) -> bool {
    p.get("valid").and_then(Value::as_bool).unwrap_or(false)
}

/// Learned from a peer, not originated here.
fn learned(p: &Value) -> bool {
    p.get("peerId").and_then(Value::as_str).is_some_and(|id| id != "(unspec)")
}

/// Prefixes of RIB with a valid path whose AS path starts with ASN (learned from it).
pub fn rib_from(rib: &BTreeMap<String, Vec<Value>>, asn: u32) -> BTreeSet<String> {
    rib.iter()
        .filter(|(_, paths)| paths.iter().any(|p| valid(p) && as_path(p).first() == Some(&asn)))
        .map(|(k, _)| k.clone())
        .collect()
}

/// Prefixes of RIB with a path learned from any peer.
pub fn rib_learned(rib: &BTreeMap<String, Vec<Value>>) -> BTreeSet<String> {
    rib.iter().filter(|(_, paths)| paths.iter().any(learned)).map(|(k, _)| k.clone()).collect()
}

/// The first AS of each path of PREFIX that the spine uses: the best path and its
/// multipath siblings (the datacenter profile's multipath-relax splits traffic over
/// paths of equal AS-path length).
pub fn used_paths_from(rib: &BTreeMap<String, Vec<Value>>, prefix: &str) -> BTreeSet<u32> {
    rib.get(&norm_prefix(prefix))
        .into_iter()
        .flatten()
        .filter(|p| {
            valid(p)
                && (p.get("multipath").and_then(Value::as_bool) == Some(true)
                    || p.get("bestpath").and_then(Value::as_bool) == Some(true)
                    || p.pointer("/bestpath/overall").and_then(Value::as_bool) == Some(true))
        })
        .filter_map(|p| as_path(p).first().copied())
        .collect()
}

/// Every path of PREFIX in RIB, as (first AS, AS-path length).
pub fn paths_of(rib: &BTreeMap<String, Vec<Value>>, prefix: &str) -> BTreeSet<(u32, usize)> {
    rib.get(&norm_prefix(prefix))
        .into_iter()
        .flatten()
        .filter(|p| valid(p))
        .filter_map(|p| {
            let path = as_path(p);
            path.first().map(|a| (*a, path.len()))
        })
        .collect()
}

/// A RARP self-announce from MAC out of `eth0` in namespace NS, as QEMU sends after a
/// live migration's switchover. The sender starts ahead (python's start-up is tens of
/// milliseconds) and sends when [`Announcer::send`] is called.
pub struct Announcer {
    child: Child,
}

impl Announcer {
    pub fn ready(ns: &str, mac: &str) -> Announcer {
        let py = r#"
import socket, struct, sys
mac = bytes.fromhex(sys.argv[1].replace(':', ''))
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(('eth0', 0))
arp = struct.pack('!HHBBH', 1, 0x0800, 6, 4, 3) + mac + bytes(4) + mac + bytes(4)
frame = b'\xff' * 6 + mac + struct.pack('!H', 0x8035) + arp
frame += bytes(max(0, 60 - len(frame)))
print('ready', flush=True)
sys.stdin.readline()
s.send(frame)
print('sent', flush=True)
"#;
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns, "python3", "-c", py, mac])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().expect("stdout")).read_line(&mut line).expect("announcer");
        assert_eq!(line.trim(), "ready", "the RARP sender in {ns} did not start");
        Announcer { child }
    }

    pub fn send(mut self) {
        self.child.stdin.take().expect("stdin").write_all(b"go\n").expect("announcer");
        let o = self.child.wait_with_output().expect("announcer");
        assert!(o.status.success() && String::from_utf8_lossy(&o.stdout).contains("sent"), "RARP not sent");
    }
}

/// `ping -D -i 0.01` from NS to DST in the background, its output in a file;
/// [`Pinger::stop`] returns the answers.
pub struct Pinger {
    child: Child,
    out: tempfile::NamedTempFile,
}

/// What a [`Pinger`] saw.
pub struct PingLog {
    /// Unix time (s) of each answered probe, in order.
    pub answered: Vec<f64>,
    /// The icmp_seq of each answered probe, in the same order.
    pub seqs: Vec<u64>,
    pub sent: u64,
}

impl PingLog {
    fn parse(text: &str) -> PingLog {
        let (answered, seqs) = text
            .lines()
            .filter(|l| l.contains("bytes from"))
            .filter_map(|l| {
                let t = l.strip_prefix('[')?.split(']').next()?.parse::<f64>().ok()?;
                let seq = l.split("icmp_seq=").nth(1)?.split_whitespace().next()?.parse::<u64>().ok()?;
                Some((t, seq))
            })
            .unzip();
        let sent = text
            .lines()
            .find(|l| l.contains("packets transmitted"))
            .and_then(|l| l.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        PingLog { answered, seqs, sent }
    }

    /// The longest time without an answer that began before Unix time T, counted up to
    /// T at most: how long the flow was black-holed before T.
    pub fn silence_before(&self, t: f64) -> Duration {
        self.answered
            .windows(2)
            .filter(|w| w[0] < t)
            .map(|w| Duration::from_secs_f64((w[1].min(t) - w[0]).max(0.0)))
            .max()
            .unwrap_or_default()
    }

    /// The longest time between two answered probes, and when it began (Unix time).
    pub fn longest_gap(&self) -> (Duration, f64) {
        self.answered
            .windows(2)
            .map(|w| (Duration::from_secs_f64((w[1] - w[0]).max(0.0)), w[0]))
            .max_by(|a, b| a.0.cmp(&b.0))
            .unwrap_or((Duration::ZERO, 0.0))
    }
}

impl Pinger {
    pub fn start(ns: &str, dst: &str) -> Pinger {
        Pinger::spawn(ns, &["-D", "-n", "-i", "0.01", "-W", "1", dst])
    }

    /// As [`Pinger::start`], from source address SRC.
    pub fn start_from(ns: &str, src: &str, dst: &str) -> Pinger {
        Pinger::spawn(ns, &["-D", "-n", "-i", "0.01", "-W", "1", "-I", src, dst])
    }

    fn spawn(ns: &str, args: &[&str]) -> Pinger {
        let out = tempfile::NamedTempFile::new().expect("ping log");
        let child = Command::new("ip")
            .args(["netns", "exec", ns, "ping"])
            .args(args)
            .stdout(out.reopen().expect("ping log"))
            .stderr(Stdio::null())
            .spawn()
            .expect("ping");
        Pinger { child, out }
    }

    /// Answers so far.
    pub fn answered(&self) -> usize {
        fs::read_to_string(self.out.path()).map(|t| PingLog::parse(&t).answered.len()).unwrap_or(0)
    }

    /// Waits (bounded by BOUND) until N more probes have been answered.
    pub fn wait_answers(&self, n: usize, bound: Duration) {
        let want = self.answered() + n;
        assert!(
            poll_until(bound, || self.answered() >= want),
            "ping: fewer than {n} answers within {bound:?}"
        );
    }

    pub fn stop(mut self) -> PingLog {
        // SAFETY: kill(2) on the PID of our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let _ = self.child.wait();
        PingLog::parse(&fs::read_to_string(self.out.path()).unwrap_or_default())
    }
}

/// Now, as Unix time in seconds (what `ping -D` prints).
pub fn unix_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs_f64()
}

/// Prefixes of FIB routed out of DEV.
pub fn fib_via(fib: &BTreeMap<String, Value>, dev: &str) -> BTreeSet<String> {
    fib.iter()
        .filter(|(_, r)| r.get("dev").and_then(Value::as_str) == Some(dev))
        .map(|(p, _)| p.clone())
        .collect()
}

/// The hypervisor's side of the storage network ([`Hv::add_storage`]).
pub const STORAGE_HV4: &str = "10.255.200.1";
pub const STORAGE_HV6: &str = "2001:db8:fffd::1";
pub const STORAGE4: &str = "10.255.200.2";
pub const STORAGE6: &str = "2001:db8:fffd::2";

/// A storage (or management) network behind a hypervisor: a namespace on its own link.
#[derive(Debug, Clone)]
pub struct Storage {
    pub ns: String,
    /// The link's name in the hypervisor namespace.
    pub hv_if: String,
    pub ip4: String,
    pub ip6: String,
}

// ---------------------------------------------------------------------------------------------
// The fabric.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peering {
    /// `neighbor uplink0 interface`: link-local only, IPv4 over IPv6 next hops.
    Unnumbered,
    /// `neighbor 10.255.N.0`: one IPv4 session carrying both families.
    Numbered,
}

/// What a hypervisor is made of.
#[derive(Debug, Clone)]
pub struct HvSpec {
    pub peering: Peering,
    /// The pools (and so the VMs' addresses) of each family.
    pub v4: bool,
    pub v6: bool,
    pub resync_s: u64,
    /// `bgp.loopback4 = 198.51.100.N`, `bgp.loopback6 = 2001:db8:ffff:ff::N`.
    pub loopbacks: bool,
    /// A TCP MD5 password on the spine's side of this session.
    pub spine_password: Option<&'static str>,
    /// More of hvroute's config, appended as it is (TOML tables).
    pub extra_toml: String,
}

impl HvSpec {
    pub fn new(peering: Peering) -> HvSpec {
        HvSpec {
            peering,
            v4: true,
            v6: true,
            resync_s: 3600,
            loopbacks: false,
            spine_password: None,
            extra_toml: String::new(),
        }
    }
    pub fn v4_only(mut self) -> HvSpec {
        self.v6 = false;
        self
    }
    pub fn v6_only(mut self) -> HvSpec {
        self.v4 = false;
        self
    }
    pub fn resync(mut self, s: u64) -> HvSpec {
        self.resync_s = s;
        self
    }
    pub fn loopbacks(mut self) -> HvSpec {
        self.loopbacks = true;
        self
    }
    pub fn spine_password(mut self, pw: &'static str) -> HvSpec {
        self.spine_password = Some(pw);
        self
    }
    pub fn toml(mut self, extra: &str) -> HvSpec {
        self.extra_toml.push_str(extra);
        self
    }
}

/// A hypervisor: its namespace, its FRR, its hvroute config and daemon, its VMs.
pub struct Hv {
    pub n: u8,
    pub ns: String,
    pub spec: HvSpec,
    pub asn: u32,
    pub frr: Frr,
    /// The spine's interface towards this hypervisor.
    pub spine_if: String,
    /// This hypervisor's BGP neighbour name for the spine (`uplink0` or an address).
    pub peer: String,
    /// The spine's BGP neighbour name for this hypervisor (`hvN` or an address).
    pub spine_peer: String,
    pub cfg: PathBuf,
    pub socket: PathBuf,
    pub log: PathBuf,
    pub state: PathBuf,
    pub vms: Vec<Vm>,
    /// The hypervisor as the topology file describes it (node name, router id, uplink).
    pub node: Hypervisor,
    vm_prefix: String,
    daemon: Option<Child>,
    namespaces: Vec<String>,
}

pub struct Fabric {
    pub prefix: String,
    pub spine: String,
    pub out: String,
    pub spine_frr: Option<Frr>,
    pub hvs: Vec<Hv>,
    namespaces: Vec<String>,
    // Last, so that it is removed after everything else.
    pub dir: tempfile::TempDir,
}

fn add_netns(list: &mut Vec<String>, name: &str, infra: bool) {
    check("ip", &["netns", "add", name]);
    list.push(name.to_string());
    ip(name, "link set lo up");
    if infra {
        // No duplicate address detection in the fabric: link-local addresses usable at once.
        sh_in_ok(
            name,
            "echo 0 > /proc/sys/net/ipv6/conf/default/accept_dad && \
             echo 0 > /proc/sys/net/ipv6/conf/all/accept_dad",
        );
    }
}

impl Fabric {
    /// The spine (FRR configured and running), the outside host and one hypervisor per
    /// spec (FRR running with an empty config, hvroute configured, no daemon yet, no VM).
    /// TAG is a short name for the test.
    pub fn new(tag: &str, specs: &[HvSpec]) -> Fabric {
        require_root();
        assert!(
            Path::new(FRR_BIN_DIR).join("bgpd").exists(),
            "these tests need FRR ({FRR_BIN_DIR}/bgpd); install Debian's `frr` package"
        );
        let facts = fabric_facts();
        assert!(
            specs.len() <= facts.hypervisors.len(),
            "{FABRIC_TOPOLOGY} describes {} hypervisors; this test asks for {}",
            facts.hypervisors.len(),
            specs.len()
        );
        let k = COUNTER.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let prefix = format!("hvt-{tag}-{pid}-{k}");
        let ps_prefix = format!("hvt{pid}n{k}");
        let dir = tempfile::Builder::new().prefix("hvt-frr-").tempdir().expect("tempdir");
        let (sp, host) = (&facts.spine, &facts.host);
        let mut f = Fabric {
            spine: format!("{prefix}-{}", sp.name),
            out: format!("{prefix}-{}", host.name),
            prefix,
            spine_frr: None,
            hvs: Vec::new(),
            namespaces: Vec::new(),
            dir,
        };
        let (spine, out) = (f.spine.clone(), f.out.clone());
        add_netns(&mut f.namespaces, &spine, true);
        add_netns(&mut f.namespaces, &out, true);
        sh_in_ok(
            &spine,
            "echo 1 > /proc/sys/net/ipv4/ip_forward && echo 1 > /proc/sys/net/ipv6/conf/all/forwarding",
        );

        let (spine_if, out_if) = (&host.spine_iface, &host.iface);
        ip(&spine, &format!("link add {spine_if} type veth peer name {out_if} netns {out}"));
        add_addrs(&spine, spine_if, &host.spine_addrs);
        ip(&spine, &format!("link set {spine_if} up"));
        add_addrs(&out, "lo", &host.loopback);
        add_addrs(&out, out_if, &host.addrs);
        ip(&out, &format!("link set {out_if} up"));
        for r in &host.routes {
            ip(&out, &format!("route add {r}"));
        }
        // The spine's extra prefixes are real: they lead to the outside host.
        for r in &sp.routes {
            ip(&spine, &format!("route add {r}"));
        }

        for (i, spec) in specs.iter().enumerate() {
            let n = u8::try_from(i + 1).expect("few hypervisors");
            let hv = f.add_hv(n, spec.clone(), &ps_prefix, &facts.hypervisors[i]);
            f.hvs.push(hv);
        }

        let spine_frr = Frr::create(&spine, &format!("{ps_prefix}sp"), &spine_conf(&f.hvs));
        f.spine_frr = Some(spine_frr);
        let sf = f.spine_frr.as_ref().expect("just set");
        sf.start();
        sf.boot();
        let rc = sf.running_config();
        assert!(rc.contains(&format!("router bgp {}", sp.asn)), "the spine's config did not load:\n{rc}");
        f
    }

    fn add_hv(&mut self, n: u8, spec: HvSpec, ps_prefix: &str, node: &Hypervisor) -> Hv {
        let ns = format!("{}-{}", self.prefix, node.name);
        add_netns(&mut self.namespaces, &ns, true);
        let (spine_if, uplink) = (node.spine_iface.clone(), node.uplink.clone());
        ip(&self.spine, &format!("link add {spine_if} type veth peer name {uplink} netns {ns}"));
        let (peer, spine_peer) = match spec.peering {
            Peering::Unnumbered => (uplink.clone(), spine_if.clone()),
            Peering::Numbered => {
                let (Some(theirs), Some(ours)) = (node.spine_link4(), node.link4()) else {
                    panic!(
                        "{FABRIC_TOPOLOGY}: {} has no IPv4 uplink addresses for numbered peering",
                        node.name
                    )
                };
                add_addrs(&self.spine, &spine_if, &node.spine_addrs);
                add_addrs(&ns, &uplink, &node.uplink_addrs);
                (theirs.to_string(), ours.to_string())
            }
        };
        ip(&self.spine, &format!("link set {spine_if} up"));
        ip(&ns, &format!("link set {uplink} up"));

        let hdir = self.dir.path().join(format!("hv{n}"));
        let state = hdir.join("state");
        fs::create_dir_all(&state).expect("state dir");
        let boot_id = hdir.join("boot_id");
        fs::write(&boot_id, format!("6e2f0c1a-0000-4000-8000-{:06x}{n:06x}\n", std::process::id()))
            .expect("boot id");
        let frr = Frr::create(&ns, &format!("{ps_prefix}h{n}"), "");
        let hv = Hv {
            n,
            asn: node.asn,
            node: node.clone(),
            cfg: hdir.join("hvroute.toml"),
            socket: hdir.join("hvroute.sock"),
            log: hdir.join("daemon.log"),
            state,
            vm_prefix: format!("{}-h{n}", self.prefix),
            ns,
            spec,
            frr,
            spine_if,
            peer,
            spine_peer,
            vms: Vec::new(),
            daemon: None,
            namespaces: Vec::new(),
        };
        hv.write_config(&boot_id);
        hv.frr.start();
        hv
    }

    pub fn spine_frr(&self) -> &Frr {
        self.spine_frr.as_ref().expect("the spine's FRR")
    }

    pub fn hv(&self, n: u8) -> &Hv {
        &self.hvs[usize::from(n) - 1]
    }

    pub fn hv_mut(&mut self, n: u8) -> &mut Hv {
        &mut self.hvs[usize::from(n) - 1]
    }

    /// Starts every hypervisor's daemon, waits until each answers, then plugs the VMs'
    /// ports into the bridge the daemon made.
    pub fn start_daemons(&mut self) {
        for hv in &mut self.hvs {
            hv.spawn_daemon();
        }
        for hv in &mut self.hvs {
            hv.wait_daemon_ready();
            hv.attach_all();
        }
    }

    /// The spine's BGP RIB (both families): prefix → its paths.
    pub fn spine_rib(&self) -> BTreeMap<String, Vec<Value>> {
        let sf = self.spine_frr();
        let mut m = sf.rib("ipv4");
        m.extend(sf.rib("ipv6"));
        m
    }

    /// Prefixes in the spine's BGP RIB with a valid path from AS ASN.
    pub fn spine_rib_from(&self, asn: u32) -> BTreeSet<String> {
        rib_from(&self.spine_rib(), asn)
    }

    /// Every prefix the spine's BGP RIB learned from any peer.
    pub fn spine_rib_learned(&self) -> BTreeSet<String> {
        rib_learned(&self.spine_rib())
    }

    /// The spine's kernel routes of protocol bgp: prefix → the JSON route.
    pub fn spine_fib(&self) -> BTreeMap<String, Value> {
        fib_bgp(&self.spine)
    }

    /// The spine's FIB prefixes that go out towards hypervisor N.
    pub fn spine_fib_via(&self, n: u8) -> BTreeSet<String> {
        fib_via(&self.spine_fib(), &self.hv(n).spine_if)
    }

    fn all_expected(&self) -> BTreeSet<String> {
        self.hvs.iter().flat_map(Hv::expected).collect()
    }

    /// The spine's FIB holds, via each hypervisor, exactly its expected prefixes, and no
    /// other bgp route. Cheap (two `ip` calls): the first thing polls look at.
    pub fn spine_fib_exact(&self) -> bool {
        let fib = self.spine_fib();
        self.hvs.iter().all(|hv| fib_via(&fib, &hv.spine_if) == hv.expected())
            && fib.keys().cloned().collect::<BTreeSet<_>>() == self.all_expected()
    }

    /// The spine's BGP RIB holds, from each hypervisor's AS, exactly its expected prefixes,
    /// and nothing else learned.
    pub fn spine_rib_exact(&self) -> bool {
        let rib = self.spine_rib();
        self.hvs.iter().all(|hv| rib_from(&rib, hv.asn) == hv.expected())
            && rib_learned(&rib) == self.all_expected()
    }

    /// RIB and FIB both exact: the condition every test converges to.
    pub fn spine_exact(&self) -> bool {
        self.spine_fib_exact() && self.spine_rib_exact()
    }

    /// Waits until [`Fabric::spine_exact`]; panics with both sides' tables after BOUND.
    pub fn wait_spine_exact(&self, bound: Duration, what: &str) -> Duration {
        let t = Instant::now();
        if !poll_until(bound, || self.spine_exact()) {
            panic!("timed out after {bound:?} waiting for {what}\n{}", self.diagnostics());
        }
        t.elapsed()
    }

    /// Asserts [`Fabric::spine_exact`] now, each side separately, with the difference.
    pub fn assert_spine_exact(&self, when: &str) {
        let (rib, fib) = (self.spine_rib(), self.spine_fib());
        for hv in &self.hvs {
            let want = hv.expected();
            assert_eq!(
                rib_from(&rib, hv.asn),
                want,
                "{when}: the spine's BGP RIB from hv{} (AS {})",
                hv.n,
                hv.asn
            );
            assert_eq!(
                fib_via(&fib, &hv.spine_if),
                want,
                "{when}: the spine's FIB via {} (hv{})",
                hv.spine_if,
                hv.n
            );
        }
        let all = self.all_expected();
        assert_eq!(rib_learned(&rib), all, "{when}: everything the spine's BGP RIB learned");
        let keys: BTreeSet<String> = fib.into_keys().collect();
        assert_eq!(keys, all, "{when}: every bgp route in the spine's FIB");
    }

    pub fn diagnostics(&self) -> String {
        let mut s = String::new();
        let cmd = |ns: &str, args: &str| {
            let o = ip_try(ns, args);
            format!("$ ip -n {ns} {args}\n{}{}", stdout(&o), stderr(&o))
        };
        s.push_str(&format!("--- spine {} ---\n", self.spine));
        if let Some(sf) = &self.spine_frr {
            for c in ["show bgp summary", "show bgp ipv4 unicast", "show bgp ipv6 unicast"] {
                let o = sf.vtysh(&[c]);
                s.push_str(&format!("$ vtysh {c}\n{}{}", stdout(&o), stderr(&o)));
            }
        }
        s.push_str(&cmd(&self.spine, "-4 route"));
        s.push_str(&cmd(&self.spine, "-6 route"));
        for hv in &self.hvs {
            s.push_str(&hv.diagnostics());
        }
        s
    }
}

impl Drop for Fabric {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.diagnostics());
        }
        for hv in &mut self.hvs {
            hv.kill_daemon();
        }
        for frr in self.hvs.iter().map(|h| &h.frr).chain(self.spine_frr.as_ref()) {
            if frr.running() {
                frr.stop(libc::SIGKILL);
            }
        }
        let vm_ns: Vec<String> = self.hvs.iter().flat_map(|h| h.namespaces.iter().cloned()).collect();
        for ns in vm_ns.iter().rev().chain(self.namespaces.iter().rev()) {
            let o = run("ip", &["netns", "del", ns]);
            if !o.status.success() {
                eprintln!("warning: cannot delete namespace {ns}: {}", stderr(&o).trim());
            }
        }
        // The FRR directories go with each Frr's own Drop, the tempdir last.
    }
}

/// The spine's FRR config: eBGP to each hypervisor, default-originate in both families,
/// and the two extra prefixes. No inbound or outbound policy, no graceful restart (so that
/// a hypervisor's FRR restart really withdraws its prefixes and the tests see them come
/// back, instead of stale copies kept for 120 s).
fn spine_conf(hvs: &[Hv]) -> String {
    let sp = &fabric_facts().spine;
    let mut c = String::from("frr defaults datacenter\n!\n");
    for hv in hvs.iter().filter(|h| h.spec.peering == Peering::Unnumbered) {
        // Router advertisements every second: the hypervisor learns the spine's
        // link-local address (and so can open the session) soon after it starts.
        c.push_str(&format!("interface {}\n ipv6 nd ra-interval 1\nexit\n!\n", hv.spine_if));
    }
    c.push_str(&format!(
        "router bgp {}\n bgp router-id {}\n no bgp ebgp-requires-policy\n \
         no bgp default ipv4-unicast\n bgp graceful-restart-disable\n",
        sp.asn, sp.router_id
    ));
    for hv in hvs {
        let p = &hv.spine_peer;
        match hv.spec.peering {
            Peering::Unnumbered => c.push_str(&format!(" neighbor {p} interface remote-as external\n")),
            Peering::Numbered => c.push_str(&format!(" neighbor {p} remote-as external\n")),
        }
        c.push_str(&format!(" neighbor {p} timers connect 1\n"));
        if let Some(pw) = hv.spec.spine_password {
            c.push_str(&format!(" neighbor {p} password {pw}\n"));
        }
    }
    for (afi, extra) in [("ipv4", sp.extra4), ("ipv6", sp.extra6)] {
        c.push_str(&format!(" !\n address-family {afi} unicast\n  network {extra}\n"));
        for hv in hvs {
            c.push_str(&format!(
                "  neighbor {0} activate\n  neighbor {0} default-originate\n",
                hv.spine_peer
            ));
        }
        c.push_str(" exit-address-family\n");
    }
    c.push_str("exit\n!\n");
    c
}

/// Kernel routes of protocol bgp in NS (both families): prefix → the JSON route.
pub fn fib_bgp(ns: &str) -> BTreeMap<String, Value> {
    let mut m = BTreeMap::new();
    for fam in ["-4", "-6"] {
        let out = ip(ns, &format!("-j {fam} route show proto bgp"));
        let v: Value = serde_json::from_str(if out.trim().is_empty() { "[]" } else { &out })
            .unwrap_or_else(|e| panic!("ip -j route is not JSON ({e}): {out}"));
        for r in v.as_array().cloned().unwrap_or_default() {
            let dst = r.get("dst").and_then(Value::as_str).unwrap_or("").to_string();
            let key = match dst.as_str() {
                "default" => if fam == "-4" { DEFAULT4 } else { DEFAULT6 }.to_string(),
                d => norm_prefix(d),
            };
            m.insert(key, r);
        }
    }
    m
}

// ---------------------------------------------------------------------------------------------
// A hypervisor.

impl Hv {
    fn write_config(&self, boot_id: &Path) {
        let s = &self.spec;
        let mut pools = String::new();
        if s.v4 {
            pools.push_str(&format!("ipv4 = [\"{POOL4}\"]\n"));
        }
        if s.v6 {
            pools.push_str(&format!("ipv6 = [\"{POOL6}\"]\n"));
        }
        let lo = if s.loopbacks {
            format!("loopback4 = \"{}\"\nloopback6 = \"{}\"\n", self.loopback4(), self.loopback6())
        } else {
            String::new()
        };
        let peer = match s.peering {
            Peering::Unnumbered => format!("interface = \"{}\"", self.node.uplink),
            Peering::Numbered => format!("address = \"{}\"", self.peer),
        };
        let text = format!(
            r#"state_dir = "{state}"
socket = "{socket}"
route_protocol = {PROTO}
resync_interval_s = {resync}
boot_id_path = "{boot_id}"

[bridge]
name = "{BRIDGE}"
mac = "{BRIDGE_MAC}"
mtu = 1500

[pools]
{pools}
[bgp]
asn = {asn}
router_id = "{router_id}"
{lo}
[[bgp.peer]]
{peer}
remote_as = "external"

[frr]
pathspace = "{ps}"

{extra}"#,
            extra = s.extra_toml,
            state = self.state.display(),
            socket = self.socket.display(),
            resync = s.resync_s,
            boot_id = boot_id.display(),
            asn = self.asn,
            router_id = self.node.router_id,
            ps = self.frr.ps,
        );
        fs::write(&self.cfg, text).expect("config file");
    }

    pub fn loopback4(&self) -> String {
        format!("198.51.100.{}", self.n)
    }

    pub fn loopback6(&self) -> String {
        format!("2001:db8:ffff:ff::{}", self.n)
    }

    /// What the spine must hold from this hypervisor: its VMs' prefixes and, when
    /// configured, its loopbacks.
    pub fn expected(&self) -> BTreeSet<String> {
        let mut s: BTreeSet<String> = self.vms.iter().flat_map(|v| v.addrs()).map(norm_prefix).collect();
        if self.spec.loopbacks {
            s.insert(norm_prefix(&self.loopback4()));
            s.insert(norm_prefix(&self.loopback6()));
        }
        s
    }

    /// VM M's namespace, configured like a cloud-init guest (see common/mod.rs), with its
    /// port in the hypervisor. Not yet stored in hvroute (see [`Hv::register`]).
    pub fn make_vm(&mut self, m: u8) -> Vm {
        let n = self.n;
        let ip4 = self.spec.v4.then(|| format!("192.0.2.{}", 50 * u32::from(n) + u32::from(m)));
        let ip6 = self.spec.v6.then(|| format!("2001:db8:100::{n:x}:{m:x}"));
        self.make_vm_with(m, ip4.as_deref(), ip6.as_deref())
    }

    /// As [`Hv::make_vm`], with the addresses given instead of the hypervisor's stack (an
    /// IPv4-only or IPv6-only guest on a dual-stack host, or a guest with an address that
    /// no VM is registered with).
    pub fn make_vm_with(&mut self, m: u8, ip4: Option<&str>, ip6: Option<&str>) -> Vm {
        let n = self.n;
        let vm = Vm {
            name: format!("vm{m}"),
            ns: format!("{}v{m}", self.vm_prefix),
            port: format!("v{m}p"),
            mac: format!("52:54:00:00:{n:02x}:{m:02x}"),
            ip4: ip4.map(str::to_string),
            ip6: ip6.map(str::to_string),
        };
        add_netns(&mut self.namespaces, &vm.ns, false);
        ip(&self.ns, &format!("link add {} type veth peer name eth0 netns {}", vm.port, vm.ns));
        configure_guest(&vm);
        if bridge_exists(&self.ns) {
            self.attach(&vm);
        }
        vm
    }

    /// A storage network behind this hypervisor, which VMs must never reach: namespace
    /// `<hv's VM prefix>-stor` linked by its own veth (`stor0` here, 10.255.200.1/24 and
    /// 2001:db8:fffd::1/64; `eth0` there, .2 and ::2), routing the pools back through the
    /// hypervisor, so that only a filter on the hypervisor can keep a VM out.
    pub fn add_storage(&mut self) -> Storage {
        let st = Storage {
            ns: format!("{}-stor", self.vm_prefix),
            hv_if: "stor0".to_string(),
            ip4: STORAGE4.to_string(),
            ip6: STORAGE6.to_string(),
        };
        add_netns(&mut self.namespaces, &st.ns, true);
        ip(&self.ns, &format!("link add {} type veth peer name eth0 netns {}", st.hv_if, st.ns));
        ip(&self.ns, &format!("addr add {STORAGE_HV4}/24 dev {}", st.hv_if));
        ip(&self.ns, &format!("-6 addr add {STORAGE_HV6}/64 dev {} nodad", st.hv_if));
        ip(&self.ns, &format!("link set {} up", st.hv_if));
        ip(&st.ns, &format!("addr add {}/24 dev eth0", st.ip4));
        ip(&st.ns, &format!("-6 addr add {}/64 dev eth0 nodad", st.ip6));
        ip(&st.ns, "link set eth0 up");
        ip(&st.ns, &format!("route add {POOL4} via {STORAGE_HV4} dev eth0"));
        ip(&st.ns, &format!("-6 route add {POOL6} via {STORAGE_HV6} dev eth0"));
        st
    }

    /// `hvroute vm add NAME --mac M --ip A... --port P`, which answers after a daemon pass
    /// if the daemon runs; the VM joins [`Hv::expected`].
    pub fn register(&mut self, vm: &Vm) {
        let mut args = vec!["vm", "add", &vm.name, "--mac", &vm.mac];
        for a in vm.addrs() {
            args.extend(["--ip", a]);
        }
        args.extend(["--port", &vm.port]);
        self.hvroute_ok(&args);
        self.vms.push(vm.clone());
    }

    /// A copy of VM (same MAC and addresses, as a migrated guest has) on this
    /// hypervisor: namespace `<hv>v<tag>`, port `v<tag>p` in the bridge. The guest is
    /// configured but paused: its port is down, so whatever the host sends it is lost, as
    /// with a paused QEMU that reads nothing from its tap. [`Hv::set_running`] resumes it.
    pub fn plug_copy(&mut self, vm: &Vm, tag: &str) -> Vm {
        let copy = Vm { ns: format!("{}v{tag}", self.vm_prefix), port: format!("v{tag}p"), ..vm.clone() };
        add_netns(&mut self.namespaces, &copy.ns, false);
        ip(&self.ns, &format!("link add {} type veth peer name eth0 netns {}", copy.port, copy.ns));
        configure_guest(&copy);
        ip(&self.ns, &format!("link set {} master {BRIDGE}", copy.port));
        copy
    }

    /// Pauses (false) or resumes (true) VM's guest: its port down or up.
    pub fn set_running(&self, vm: &Vm, running: bool) {
        ip(&self.ns, &format!("link set {} {}", vm.port, if running { "up" } else { "down" }));
    }

    /// [`Hv::make_vm`] and [`Hv::register`].
    pub fn add_vm(&mut self, m: u8) -> Vm {
        let vm = self.make_vm(m);
        self.register(&vm);
        vm
    }

    pub fn add_vms(&mut self, count: u8) {
        for m in 1..=count {
            self.add_vm(m);
        }
    }

    /// `hvroute vm del NAME`; the VM leaves [`Hv::expected`]. Its namespace stays.
    pub fn del_vm(&mut self, name: &str) {
        self.hvroute_ok(&["vm", "del", name]);
        self.vms.retain(|v| v.name != name);
    }

    fn attach(&self, vm: &Vm) {
        ip(&self.ns, &format!("link set {} master {BRIDGE}", vm.port));
        ip(&self.ns, &format!("link set {} up", vm.port));
    }

    fn attach_all(&self) {
        for vm in &self.vms {
            self.attach(vm);
        }
    }

    /// `ip netns exec HV hvroute --config CFG ARGS...`.
    pub fn hvroute(&self, args: &[&str]) -> Output {
        hvroute_in(&self.ns, &self.cfg, args)
    }

    pub fn hvroute_ok(&self, args: &[&str]) -> String {
        hvroute_ok_in(&self.ns, &self.cfg, args)
    }

    pub fn spawn_daemon(&mut self) {
        assert!(self.daemon.is_none(), "a daemon already runs on hv{}", self.n);
        let log = OpenOptions::new().create(true).append(true).open(&self.log).expect("daemon log");
        let log2 = log.try_clone().expect("daemon log");
        let cfg = self.cfg.to_str().expect("utf-8 path");
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns, BIN, "--config", cfg, "daemon"])
            .env("NO_COLOR", "1")
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .expect("cannot start the hvroute daemon");
        self.daemon = Some(child);
    }

    pub fn wait_daemon_ready(&mut self) {
        let deadline = Instant::now() + SETUP_BOUND;
        loop {
            self.assert_daemon_running();
            if control_reconcile(&self.socket, SETUP_BOUND).is_some() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the hvroute daemon on hv{} did not answer within {SETUP_BOUND:?}\n{}",
                self.n,
                self.diagnostics()
            );
            std::thread::sleep(POLL);
        }
    }

    pub fn daemon_pid(&self) -> Option<u32> {
        self.daemon.as_ref().map(Child::id)
    }

    pub fn assert_daemon_running(&mut self) {
        let c = self.daemon.as_mut().expect("no daemon was started");
        if let Some(st) = c.try_wait().expect("try_wait") {
            panic!("the hvroute daemon on hv{} exited ({st})\n{}", self.n, self.diagnostics());
        }
    }

    fn kill_daemon(&mut self) {
        if let Some(mut c) = self.daemon.take() {
            // Child::kill sends SIGKILL to this child's PID only.
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Asks the daemon for a pass; returns its summary line when the pass is done.
    pub fn pass(&mut self) -> String {
        self.assert_daemon_running();
        control_reconcile(&self.socket, SETUP_BOUND)
            .unwrap_or_else(|| panic!("hv{}'s daemon did not answer a reconcile request", self.n))
    }

    /// The daemon's `{"op":"status"}` answer.
    pub fn status(&mut self) -> Value {
        self.assert_daemon_running();
        control_request(&self.socket, r#"{"op":"status"}"#, SETUP_BOUND)
            .unwrap_or_else(|| panic!("hv{}'s daemon did not answer a status request", self.n))
    }

    /// The daemon's FRR side: the number of syncs so far and whether FRR holds what the
    /// last pass wanted.
    pub fn frr_status(&mut self) -> (u64, bool) {
        let s = self.status();
        let f = &s["frr"];
        (f["syncs"].as_u64().unwrap_or(0), f["in_sync"].as_bool().unwrap_or(false))
    }

    /// A pass, then waits until the daemon says FRR holds what that pass wanted.
    pub fn pass_and_frr_sync(&mut self) {
        self.pass();
        let ok = poll_until(SETUP_BOUND, || self.frr_status().1);
        assert!(ok, "hv{}'s daemon did not get FRR in sync\n{}", self.n, self.diagnostics());
    }

    /// The `network` lines in FRR's running config: prefix → the rest of the line.
    pub fn network_lines(&self) -> BTreeMap<String, String> {
        network_lines(&self.frr.running_config())
    }

    /// Prefixes this hypervisor's BGP RIB learned from the spine (both families).
    pub fn rib_learned(&self) -> BTreeSet<String> {
        let mut s = BTreeSet::new();
        for afi in ["ipv4", "ipv6"] {
            for (pfx, paths) in self.frr.rib(afi) {
                if paths.iter().any(|p| learned(p) && valid(p)) {
                    s.insert(pfx);
                }
            }
        }
        s
    }

    pub fn diagnostics(&self) -> String {
        let mut s =
            format!("--- hypervisor hv{} {} (AS {}, FRR {}) ---\n", self.n, self.ns, self.asn, self.frr.ps);
        for c in ["show bgp summary", "show running-config"] {
            let o = self.frr.vtysh(&[c]);
            s.push_str(&format!("$ vtysh {c}\n{}{}", stdout(&o), stderr(&o)));
        }
        for a in ["-4 route", "-6 route"] {
            let o = ip_try(&self.ns, a);
            s.push_str(&format!("$ ip {a}\n{}{}", stdout(&o), stderr(&o)));
        }
        let log = fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(30).collect::<Vec<_>>().into_iter().rev().collect();
        s.push_str(&format!("--- daemon log (last 30 lines) ---\n{}\n", tail.join("\n")));
        s
    }
}

/// `network` lines of a running config (any `router bgp` block): prefix → the rest.
pub fn network_lines(running: &str) -> BTreeMap<String, String> {
    running
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some("network")).then_some(())?;
            let p = w.next()?;
            Some((norm_prefix(p), w.collect::<Vec<_>>().join(" ")))
        })
        .collect()
}

pub fn bridge_exists(ns: &str) -> bool {
    ip_try(ns, &format!("link show dev {BRIDGE}")).status.success()
}

/// Sends one JSON request line on the daemon's control socket; returns the answer line.
pub fn control_request(socket: &Path, line: &str, timeout: Duration) -> Option<Value> {
    let mut s = UnixStream::connect(socket).ok()?;
    s.set_read_timeout(Some(timeout)).ok()?;
    s.set_write_timeout(Some(timeout)).ok()?;
    s.write_all(format!("{line}\n").as_bytes()).ok()?;
    let mut answer = String::new();
    BufReader::new(s).read_line(&mut answer).ok()?;
    serde_json::from_str(answer.trim()).ok()
}

// ---------------------------------------------------------------------------------------------
// What the kernel holds, to compare with a topology file.

fn ip_json(args: &[&str]) -> Vec<Value> {
    let o = run("ip", args);
    assert!(o.status.success(), "ip {args:?} failed: {}", show(&o));
    let text = stdout(&o);
    if text.trim().is_empty() {
        return Vec::new();
    }
    serde_json::from_str::<Value>(&text)
        .unwrap_or_else(|e| panic!("ip {args:?} did not print JSON ({e}): {text}"))
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// One end of a veth as `ip -d link` shows it.
struct Veth {
    name: String,
    /// The namespace of the other end.
    peer_ns: String,
    /// The other end's ifindex there or, when it is in the same namespace, its name.
    peer: Result<u64, String>,
}

/// The nodes and veths that exist now under namespace prefix PREFIX: every namespace whose
/// name starts with PREFIX (the node is the rest of the name), and every veth in them as an
/// unordered pair of `node:interface` endpoints, found from each end's peer (`link_netnsid`
/// and `link_index`). A veth whose other end is in a namespace without PREFIX shows up with
/// that namespace's name in angle brackets as its node, so it counts as a link the file does
/// not have.
pub fn observed_topology(
    prefix: &str,
) -> (BTreeSet<String>, BTreeSet<(topology::Endpoint, topology::Endpoint)>) {
    let namespaces: Vec<String> = ip_json(&["-j", "netns", "list"])
        .iter()
        .filter_map(|n| n.get("name").and_then(Value::as_str).map(str::to_string))
        .filter(|n| n.starts_with(prefix))
        .collect();
    let node_of = |ns: &str| match ns.strip_prefix(prefix) {
        Some(node) => node.to_string(),
        None => format!("<{ns}>"),
    };
    // Per namespace: ifindex -> its veth.
    let mut veths: BTreeMap<String, BTreeMap<u64, Veth>> = BTreeMap::new();
    for ns in &namespaces {
        let ids: BTreeMap<u64, String> = ip_json(&["-n", ns, "-j", "netns", "list-id"])
            .iter()
            .filter_map(|v| Some((v.get("nsid")?.as_u64()?, v.get("name")?.as_str()?.to_string())))
            .collect();
        let mut m = BTreeMap::new();
        for l in ip_json(&["-n", ns, "-j", "-d", "link", "show", "type", "veth"]) {
            let (Some(name), Some(index)) =
                (l.get("ifname").and_then(Value::as_str), l.get("ifindex").and_then(Value::as_u64))
            else {
                continue;
            };
            // `ip` gives the peer's index when it is in another namespace, its name when not.
            let peer_index =
                match (l.get("link_index").and_then(Value::as_u64), l.get("link").and_then(Value::as_str)) {
                    (Some(i), _) => Ok(i),
                    (None, Some(peer)) => Err(peer.to_string()),
                    (None, None) => Err("?".to_string()),
                };
            let peer_ns = match l.get("link_netnsid").and_then(Value::as_u64) {
                None => ns.clone(),
                Some(id) => ids.get(&id).cloned().unwrap_or_else(|| format!("nsid {id}")),
            };
            m.insert(index, Veth { name: name.to_string(), peer_ns, peer: peer_index });
        }
        veths.insert(ns.clone(), m);
    }
    let mut links = BTreeSet::new();
    for (ns, m) in &veths {
        for Veth { name, peer_ns, peer } in m.values() {
            let a = topology::Endpoint { node: node_of(ns), iface: name.clone() };
            let peer_name = match peer {
                Err(same_ns_name) => same_ns_name.clone(),
                Ok(i) => veths
                    .get(peer_ns)
                    .and_then(|pm| pm.get(i))
                    .map_or_else(|| format!("ifindex {i}"), |p| p.name.clone()),
            };
            let b = topology::Endpoint { node: node_of(peer_ns), iface: peer_name };
            links.insert(if a <= b { (a, b) } else { (b, a) });
        }
    }
    (namespaces.iter().map(|n| node_of(n)).collect(), links)
}
