//! Harness for the privileged end-to-end tests: a hypervisor, VMs and an outside host in
//! network namespaces that each test creates for itself, with the real `hvroute` binary
//! and the real kernel.
//!
//! Contract:
//! - Needs root; [`Lab::new`] fails with a clear message otherwise.
//! - Every namespace is named `hvt-<tag>-<pid>-<counter>-<role>`, so tests in parallel and
//!   runs in parallel never collide. Every link is created with `ip -n` straight inside
//!   the test's own namespaces, so interface names (`v1p`, `eth0`, `uplink0`) are local to
//!   them and never touch the host.
//! - Each lab has its own tempdir for config, state dir, socket, daemon log and boot id
//!   file; nothing depends on the host's `/etc`, `/run` or boot id.
//! - [`Lab`]'s `Drop` kills the daemon it started (by PID) and deletes its namespaces,
//!   also when the test panics; [`Background`] does the same for other children.
//! - Nothing sleeps for a fixed time: every wait is a bounded poll ([`wait_until`]).
//! - The periodic resync is set to an hour, so only event-driven repair can pass the
//!   short bounds.
//!
//! ```text
//!   <tag>-out (outside host)  lo 203.0.113.10/32, 2001:db8:ffff::10/128
//!      eth0 10.255.0.1/31, 2001:db8:ffff:1::2/64; routes to the pools via hv
//!        │
//!      uplink0 10.255.0.0/31, 2001:db8:ffff:1::1/64; default routes via out
//!   <tag>-hv (hypervisor)  hvroute daemon; cloudbr0 169.254.0.1/32, fe80::1/64
//!      ├── v1p ─── eth0 in <tag>-vm1   (configured like a cloud-init guest)
//!      └── v2p ─── eth0 in <tag>-vm2
//! ```

#![allow(dead_code)]

use std::fs::{self, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_hvroute");
pub const BRIDGE: &str = "cloudbr0";
pub const BRIDGE_MAC: &str = "0e:00:00:00:00:01";
pub const PROTO: u8 = 44;
pub const GW4: &str = "169.254.0.1";
pub const GW6: &str = "fe80::1";
pub const POOL4: &str = "192.0.2.0/24";
pub const POOL6: &str = "2001:db8:100::/40";
/// The outside host's own addresses (on its lo).
pub const OUT4: &str = "203.0.113.10";
pub const OUT6: &str = "2001:db8:ffff::10";

const HV_UPLINK: &str = "uplink0";
const HV_LINK4: &str = "10.255.0.0";
const OUT_LINK4: &str = "10.255.0.1";
const HV_LINK6: &str = "2001:db8:ffff:1::1";
const OUT_LINK6: &str = "2001:db8:ffff:1::2";

/// Bound for what the daemon must do "within 1 s" (event-driven repair, `vm add`). Loose
/// enough for a busy 2-core machine, far below the resync interval (an hour here).
pub const REPAIR_BOUND: Duration = Duration::from_secs(3);
/// Bound for set-up steps: a daemon becoming ready, a path answering pings.
pub const SETUP_BOUND: Duration = Duration::from_secs(10);
/// How often bounded waits poll.
pub const POLL: Duration = Duration::from_millis(20);

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Fails the test at once, with a clear message, unless it runs as root.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert!(
        euid == 0,
        "these end-to-end tests need root (they create network namespaces, veths and routes); \
         run them as root, e.g. `sudo -E cargo test --test netns_core -- --test-threads=2` (euid is {euid})"
    );
}

// ---------------------------------------------------------------------------------------------
// Processes.

/// Runs a command to completion; panics only if it cannot be started.
pub fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} {}: {e}", args.join(" ")))
}

/// Status, stdout and stderr of a finished command, for assertion messages.
pub fn show(o: &Output) -> String {
    format!(
        "{}\n--- stdout ---\n{}--- stderr ---\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs a command and returns its stdout; panics with its output unless it exits 0.
pub fn check(program: &str, args: &[&str]) -> String {
    let o = run(program, args);
    assert!(o.status.success(), "`{program} {}` failed: {}", args.join(" "), show(&o));
    stdout(&o)
}

/// `ip -n NS ARGS...` (ARGS split on whitespace), which must succeed; returns stdout.
pub fn ip(ns: &str, args: &str) -> String {
    let mut v = vec!["-n", ns];
    v.extend(args.split_whitespace());
    check("ip", &v)
}

/// `ip -n NS ARGS...`, whatever the outcome.
pub fn ip_try(ns: &str, args: &str) -> Output {
    let mut v = vec!["-n", ns];
    v.extend(args.split_whitespace());
    run("ip", &v)
}

/// `sh -c CMD` inside namespace NS.
pub fn sh_in(ns: &str, cmd: &str) -> Output {
    run("ip", &["netns", "exec", ns, "sh", "-c", cmd])
}

/// `sh -c CMD` inside namespace NS, which must succeed; returns stdout.
pub fn sh_in_ok(ns: &str, cmd: &str) -> String {
    let o = sh_in(ns, cmd);
    assert!(o.status.success(), "`{cmd}` in {ns} failed: {}", show(&o));
    stdout(&o)
}

/// One echo request from NS to DST (`ping -c1 -W1`); true if it was answered.
pub fn ping_ok(ns: &str, dst: &str) -> bool {
    run("ip", &["netns", "exec", ns, "ping", "-n", "-c1", "-W1", dst]).status.success()
}

/// As [`ping_ok`], from source address SRC.
pub fn ping_from_ok(ns: &str, src: &str, dst: &str) -> bool {
    run("ip", &["netns", "exec", ns, "ping", "-n", "-c1", "-W1", "-I", src, dst]).status.success()
}

/// Polls F every [`POLL`] until it is true or BOUND has passed; returns whether it became true.
pub fn poll_until(bound: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + bound;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(POLL);
    }
}

/// Polls F every [`POLL`] until it is true; panics naming WHAT after BOUND.
pub fn wait_until(bound: Duration, what: &str, f: impl FnMut() -> bool) {
    assert!(poll_until(bound, f), "timed out after {bound:?} waiting for {what}");
}

/// A child process that the test started; killed by its PID on drop if still running.
pub struct Background {
    pub what: String,
    child: Option<Child>,
}

impl Background {
    /// Starts `ip netns exec NS ARGS...` with stdout and stderr captured. `ip netns exec`
    /// execs the command, so the child's PID is the command's own.
    pub fn spawn_in(ns: &str, args: &[&str]) -> Background {
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {} in {ns}: {e}", args.join(" ")));
        Background { what: format!("{} (in {ns})", args.join(" ")), child: Some(child) }
    }

    pub fn running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Waits up to BOUND for the process to end and returns its output; panics after BOUND.
    pub fn finish(mut self, bound: Duration) -> Output {
        let what = self.what.clone();
        assert!(poll_until(bound, || !self.running()), "{what} did not finish within {bound:?}");
        let child = self.child.take().expect("child present");
        child.wait_with_output().unwrap_or_else(|e| panic!("cannot collect {what}: {e}"))
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Kernel state, as `ip` shows it.

/// `ip route show proto 44` and `ip -6 route show proto 44` in NS (main table), one line each.
pub fn routes_proto44(ns: &str) -> Vec<String> {
    let p = PROTO.to_string();
    let mut v = lines(&ip(ns, &format!("-4 route show proto {p}")));
    v.extend(lines(&ip(ns, &format!("-6 route show proto {p}"))));
    v
}

/// `ip neigh show proto 44` in NS (both families), one line each.
pub fn neighs_proto44(ns: &str) -> Vec<String> {
    lines(&ip(ns, &format!("neigh show proto {PROTO}")))
}

fn lines(s: &str) -> Vec<String> {
    s.lines().map(|l| l.trim().to_string()).filter(|l| !l.is_empty()).collect()
}

/// A line of `ip route show` for host address ADDR on the bridge.
pub fn has_route(routes: &[String], addr: &str) -> bool {
    routes.iter().any(|l| {
        let t: Vec<&str> = l.split_whitespace().collect();
        (t.first() == Some(&addr) || t.first() == Some(&format!("{addr}/32").as_str()))
            && t.windows(2).any(|w| w == ["dev", BRIDGE])
    })
}

/// A line of `ip neigh show` for ADDR on the bridge, permanent, with MAC.
pub fn has_permanent_neigh(neighs: &[String], addr: &str, mac: &str) -> bool {
    neighs.iter().any(|l| {
        let t: Vec<&str> = l.split_whitespace().collect();
        t.first() == Some(&addr)
            && t.windows(2).any(|w| w == ["dev", BRIDGE])
            && t.windows(2).any(|w| w == ["lladdr", mac])
            && t.contains(&"PERMANENT")
    })
}

/// The bridge's addresses in NS, as `ADDR/LEN` strings.
pub fn bridge_addrs(ns: &str) -> Vec<String> {
    let o = ip_try(ns, &format!("-o addr show dev {BRIDGE}"));
    stdout(&o)
        .lines()
        .filter_map(|l| {
            let t: Vec<&str> = l.split_whitespace().collect();
            t.windows(2).find(|w| w[0] == "inet" || w[0] == "inet6").map(|w| w[1].to_string())
        })
        .collect()
}

/// Whether the bridge in NS is administratively up.
pub fn bridge_up(ns: &str) -> bool {
    let o = ip_try(ns, &format!("-o link show dev {BRIDGE}"));
    let s = stdout(&o);
    s.split(['<', '>']).nth(1).is_some_and(|flags| flags.split(',').any(|f| f == "UP"))
}

// ---------------------------------------------------------------------------------------------
// The lab.

/// A VM: a namespace with `eth0`, its peer `port` in the hypervisor namespace.
#[derive(Debug, Clone)]
pub struct Vm {
    pub name: String,
    pub ns: String,
    pub port: String,
    pub mac: String,
    pub ip4: Option<String>,
    pub ip6: Option<String>,
}

impl Vm {
    pub fn addrs(&self) -> Vec<&str> {
        self.ip4.iter().chain(&self.ip6).map(String::as_str).collect()
    }
}

pub struct Lab {
    /// `hvt-<tag>-<pid>-<counter>`; the namespaces are `<prefix>-hv`, `-out`, `-vmN`.
    pub prefix: String,
    pub hv: String,
    pub out: String,
    pub cfg: PathBuf,
    pub socket: PathBuf,
    pub log: PathBuf,
    namespaces: Vec<String>,
    daemon: Option<Child>,
    // Last, so that it is removed after the daemon is gone.
    pub dir: tempfile::TempDir,
}

impl Lab {
    /// The hypervisor and outside-host namespaces, linked and routed, and a config. No
    /// bridge and no daemon yet. TAG is a short name for the test (shows up in `ip netns`).
    pub fn new(tag: &str) -> Lab {
        require_root();
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let prefix = format!("hvt-{tag}-{}-{n}", std::process::id());
        let dir = tempfile::Builder::new().prefix("hvt-").tempdir().expect("tempdir");
        let mut lab = Lab {
            hv: format!("{prefix}-hv"),
            out: format!("{prefix}-out"),
            cfg: dir.path().join("hvroute.toml"),
            socket: dir.path().join("hvroute.sock"),
            log: dir.path().join("daemon.log"),
            prefix,
            namespaces: Vec::new(),
            daemon: None,
            dir,
        };
        lab.write_config(n);
        let (hv, out) = (lab.hv.clone(), lab.out.clone());
        // Duplicate address detection is off in the two infrastructure namespaces (the
        // fabric side), so that their link-local addresses are usable at once; the VMs
        // keep the kernel's defaults.
        lab.add_netns(&hv, true);
        lab.add_netns(&out, true);

        ip(&hv, &format!("link add {HV_UPLINK} type veth peer name eth0 netns {out}"));
        ip(&hv, &format!("addr add {HV_LINK4}/31 dev {HV_UPLINK}"));
        ip(&hv, &format!("-6 addr add {HV_LINK6}/64 dev {HV_UPLINK} nodad"));
        ip(&hv, &format!("link set {HV_UPLINK} up"));
        ip(&hv, &format!("route add default via {OUT_LINK4} dev {HV_UPLINK}"));
        ip(&hv, &format!("-6 route add default via {OUT_LINK6} dev {HV_UPLINK}"));

        ip(&out, &format!("addr add {OUT4}/32 dev lo"));
        ip(&out, &format!("-6 addr add {OUT6}/128 dev lo"));
        ip(&out, &format!("addr add {OUT_LINK4}/31 dev eth0"));
        ip(&out, &format!("-6 addr add {OUT_LINK6}/64 dev eth0 nodad"));
        ip(&out, "link set eth0 up");
        ip(&out, &format!("route add {POOL4} via {HV_LINK4} dev eth0"));
        ip(&out, &format!("-6 route add {POOL6} via {HV_LINK6} dev eth0"));
        lab
    }

    fn write_config(&self, n: usize) {
        let d = self.dir.path();
        let state = d.join("state");
        let boot_id = d.join("boot_id");
        fs::create_dir_all(&state).expect("state dir");
        // A boot id of this lab's own, so that nothing depends on the host's.
        fs::write(&boot_id, format!("6e2f0c1a-0000-4000-8000-{:06x}{:06x}\n", std::process::id(), n))
            .expect("boot id file");
        let text = format!(
            r#"state_dir = "{state}"
socket = "{socket}"
route_protocol = {PROTO}
resync_interval_s = 3600
boot_id_path = "{boot_id}"

[bridge]
name = "{BRIDGE}"
mac = "{BRIDGE_MAC}"
mtu = 1500

[pools]
ipv4 = ["{POOL4}"]
ipv6 = ["{POOL6}"]

[bgp]
asn = 65001
router_id = "10.255.0.1"

# These tests check the kernel side only; the FRR tests run their own FRR.
[frr]
enabled = false

# No BGP peer here: the way out is named (docs/guards.md).
[guard]
uplinks = ["{HV_UPLINK}"]
"#,
            state = state.display(),
            socket = self.socket.display(),
            boot_id = boot_id.display(),
        );
        fs::write(&self.cfg, text).expect("config file");
    }

    fn add_netns(&mut self, name: &str, no_dad: bool) {
        check("ip", &["netns", "add", name]);
        self.namespaces.push(name.to_string());
        ip(name, "link set lo up");
        if no_dad {
            sh_in_ok(
                name,
                "echo 0 > /proc/sys/net/ipv6/conf/default/accept_dad && \
                 echo 0 > /proc/sys/net/ipv6/conf/all/accept_dad",
            );
        }
    }

    /// VM number N: a namespace with `eth0` (MAC 52:54:00:00:00:0N) and its peer `vNp` in
    /// the hypervisor, configured as cloud-init configures a guest from its ConfigDrive:
    /// the /32 and /128 on eth0, accept_ra=0, `default via 169.254.0.1 dev eth0 onlink`
    /// (with IPv4) and `default via fe80::1 dev eth0` (with IPv6). The port is not yet on
    /// the bridge (see [`Lab::attach`]) and the VM is not yet in hvroute's state.
    pub fn vm(&mut self, n: u8, ip4: Option<&str>, ip6: Option<&str>) -> Vm {
        let vm = Vm {
            name: format!("vm{n}"),
            ns: format!("{}-vm{n}", self.prefix),
            port: format!("v{n}p"),
            mac: format!("52:54:00:00:00:{n:02x}"),
            ip4: ip4.map(str::to_string),
            ip6: ip6.map(str::to_string),
        };
        let ns = vm.ns.clone();
        self.add_netns(&ns, false);
        ip(&self.hv, &format!("link add {} type veth peer name eth0 netns {ns}", vm.port));
        configure_guest(&vm);
        vm
    }

    /// Plugs the VM's port into the bridge (which must exist) and brings it up, as libvirt
    /// does with a tap.
    pub fn attach(&self, vm: &Vm) {
        ip(&self.hv, &format!("link set {} master {BRIDGE}", vm.port));
        ip(&self.hv, &format!("link set {} up", vm.port));
    }

    /// `ip netns exec HV hvroute --config CFG ARGS...`.
    pub fn hvroute(&self, args: &[&str]) -> Output {
        hvroute_in(&self.hv, &self.cfg, args)
    }

    /// As [`Lab::hvroute`]; panics unless it exits 0. Returns stdout.
    pub fn hvroute_ok(&self, args: &[&str]) -> String {
        hvroute_ok_in(&self.hv, &self.cfg, args)
    }

    /// `hvroute vm add NAME --mac M --ip A [--ip A] --port vNp`, which must exit 0.
    pub fn vm_add(&self, vm: &Vm) -> String {
        let mut args = vec!["vm", "add", &vm.name, "--mac", &vm.mac];
        for a in vm.addrs() {
            args.extend(["--ip", a]);
        }
        args.extend(["--port", &vm.port]);
        self.hvroute_ok(&args)
    }

    // -----------------------------------------------------------------------------------------
    // The daemon.

    /// Starts `hvroute daemon EXTRA...` in the hypervisor namespace, its output appended to
    /// the lab's daemon log. Does not wait; see [`Lab::start_daemon`].
    pub fn spawn_daemon(&mut self, extra: &[&str]) {
        assert!(self.daemon.is_none(), "a daemon is already running in this lab");
        let log = OpenOptions::new().create(true).append(true).open(&self.log).expect("daemon log");
        let log2 = log.try_clone().expect("daemon log");
        let cfg = self.cfg.to_str().expect("utf-8 path");
        let child = Command::new("ip")
            .args(["netns", "exec", &self.hv, BIN, "--config", cfg, "daemon"])
            .args(extra)
            .env("NO_COLOR", "1")
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .expect("cannot start the hvroute daemon");
        self.daemon = Some(child);
    }

    /// Starts the daemon and waits until its first pass is done and it answers on its socket.
    pub fn start_daemon(&mut self, extra: &[&str]) {
        self.spawn_daemon(extra);
        self.wait_daemon_ready();
    }

    /// Waits until the daemon has finished a pass that began after this call. Panics, with
    /// the daemon log, if it exits or does not answer within [`SETUP_BOUND`].
    pub fn wait_daemon_ready(&mut self) {
        let deadline = Instant::now() + SETUP_BOUND;
        loop {
            if let Some(st) = self.daemon_exited() {
                panic!("the hvroute daemon exited ({st}) instead of starting\n{}", self.diagnostics());
            }
            if control_reconcile(&self.socket, SETUP_BOUND).is_some() {
                return;
            }
            if Instant::now() >= deadline {
                panic!("the hvroute daemon did not answer within {SETUP_BOUND:?}\n{}", self.diagnostics());
            }
            std::thread::sleep(POLL);
        }
    }

    /// Asks the running daemon for a pass and returns its summary (JSON) when the pass is
    /// done: after this, the daemon has looked at the kernel as it is now.
    pub fn daemon_pass(&mut self) -> String {
        if let Some(st) = self.daemon_exited() {
            panic!("the hvroute daemon exited ({st})\n{}", self.diagnostics());
        }
        control_reconcile(&self.socket, SETUP_BOUND).unwrap_or_else(|| {
            panic!("the daemon did not answer a reconcile request\n{}", self.diagnostics())
        })
    }

    /// The daemon's exit status, if it has exited.
    pub fn daemon_exited(&mut self) -> Option<ExitStatus> {
        self.daemon.as_mut().and_then(|c| c.try_wait().expect("try_wait"))
    }

    /// The daemon's `{"op":"status"}` answer.
    pub fn daemon_status(&mut self) -> serde_json::Value {
        let line = control(&self.socket, "status", Duration::from_secs(10)).expect("the daemon's status");
        serde_json::from_str(&line).expect("status is JSON")
    }

    pub fn daemon_pid(&self) -> Option<u32> {
        self.daemon.as_ref().map(Child::id)
    }

    /// Panics unless the daemon this lab started is still running.
    pub fn assert_daemon_running(&mut self) {
        assert!(self.daemon.is_some(), "no daemon was started");
        if let Some(st) = self.daemon_exited() {
            panic!("the hvroute daemon exited ({st})\n{}", self.diagnostics());
        }
    }

    /// Sends SIGNAL to the daemon (by its PID) and waits for it to exit.
    pub fn stop_daemon(&mut self, signal: libc::c_int) -> ExitStatus {
        let mut child = self.daemon.take().expect("no daemon is running");
        let pid = libc::pid_t::try_from(child.id()).expect("pid fits pid_t");
        // SAFETY: kill(2) on the PID of our own child, which has not been reaped yet.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0, "kill({pid}, {signal}) failed: {}", std::io::Error::last_os_error());
        let mut status = None;
        let exited = poll_until(SETUP_BOUND, || {
            status = child.try_wait().expect("try_wait");
            status.is_some()
        });
        if !exited {
            self.daemon = Some(child);
            panic!(
                "the daemon did not exit within {SETUP_BOUND:?} of signal {signal}\n{}",
                self.diagnostics()
            );
        }
        status.expect("exited")
    }

    // -----------------------------------------------------------------------------------------
    // Checks.

    pub fn routes(&self) -> Vec<String> {
        routes_proto44(&self.hv)
    }

    pub fn neighs(&self) -> Vec<String> {
        neighs_proto44(&self.hv)
    }

    /// Every address of VM has its route and its permanent neighbour (with the VM's MAC).
    pub fn vm_routed(&self, vm: &Vm) -> bool {
        let (r, n) = (self.routes(), self.neighs());
        vm.addrs().iter().all(|a| has_route(&r, a) && has_permanent_neigh(&n, a, &vm.mac))
    }

    /// No address of VM has an hvroute route or neighbour.
    pub fn vm_unrouted(&self, vm: &Vm) -> bool {
        let (r, n) = (self.routes(), self.neighs());
        let first = |l: &String, a: &str| l.split_whitespace().next() == Some(a);
        vm.addrs().iter().all(|a| !r.iter().any(|l| first(l, a)) && !n.iter().any(|l| first(l, a)))
    }

    /// The bridge carries both gateways.
    pub fn gateways_present(&self) -> bool {
        let a = bridge_addrs(&self.hv);
        a.iter().any(|x| x == &format!("{GW4}/32")) && a.iter().any(|x| x == &format!("{GW6}/64"))
    }

    /// As [`wait_until`], with the lab's kernel state and daemon log in the panic message.
    pub fn wait_until(&self, bound: Duration, what: &str, f: impl FnMut() -> bool) {
        if !poll_until(bound, f) {
            panic!("timed out after {bound:?} waiting for {what}\n{}", self.diagnostics());
        }
    }

    /// Waits until a ping from NS (from SRC, if given) to DST is answered.
    pub fn wait_ping(&self, ns: &str, src: Option<&str>, dst: &str) {
        let what = format!(
            "ping {dst} from {ns}{} to be answered",
            src.map(|s| format!(" ({s})")).unwrap_or_default()
        );
        self.wait_until(SETUP_BOUND, &what, || match src {
            Some(s) => ping_from_ok(ns, s, dst),
            None => ping_ok(ns, dst),
        });
    }

    /// The hypervisor's routes, neighbours and bridge, and the tail of the daemon log.
    pub fn diagnostics(&self) -> String {
        let hv = &self.hv;
        let o = |args: &str| {
            let o = ip_try(hv, args);
            format!("$ ip {args}\n{}{}", stdout(&o), stderr(&o))
        };
        let log = fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(40).collect::<Vec<_>>().into_iter().rev().collect();
        format!(
            "--- hypervisor {hv} ---\n{}{}{}{}{}--- daemon log (last 40 lines) ---\n{}\n",
            o(&format!("-d link show dev {BRIDGE}")),
            o(&format!("addr show dev {BRIDGE}")),
            o("-4 route show"),
            o("-6 route show"),
            o("neigh show"),
            tail.join("\n")
        )
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.diagnostics());
        }
        if let Some(mut c) = self.daemon.take() {
            // Child::kill sends SIGKILL to this child's PID only.
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in self.namespaces.iter().rev() {
            let o = run("ip", &["netns", "del", ns]);
            if !o.status.success() {
                eprintln!("warning: cannot delete namespace {ns}: {}", stderr(&o).trim());
            }
        }
    }
}

/// Sends `{"op":"reconcile"}` on the daemon's control socket and returns the answer line,
/// which comes when a pass that started after the request has finished. `None` if no
/// daemon listens (yet) or it does not answer within TIMEOUT.
pub fn control_reconcile(socket: &Path, timeout: Duration) -> Option<String> {
    control(socket, "reconcile", timeout)
}

/// Sends `{"op":OP}` on the daemon's control socket and returns the answer line.
pub fn control(socket: &Path, op: &str, timeout: Duration) -> Option<String> {
    let mut s = UnixStream::connect(socket).ok()?;
    s.set_read_timeout(Some(timeout)).ok()?;
    s.set_write_timeout(Some(timeout)).ok()?;
    s.write_all(format!("{{\"op\":\"{op}\"}}\n").as_bytes()).ok()?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).ok()?;
    let line = line.trim().to_string();
    (!line.is_empty()).then_some(line)
}

pub mod fabric;
pub mod frr;
pub mod hook;
pub mod libvirt;
pub mod topology;

/// Configures a VM namespace's `eth0` exactly as its ConfigDrive configures a guest: its
/// MAC, no router advertisements, the /32 and /128, default via 169.254.0.1 on-link and
/// default via fe80::1.
pub fn configure_guest(vm: &Vm) {
    let ns = &vm.ns;
    ip(ns, &format!("link set eth0 address {}", vm.mac));
    sh_in_ok(ns, "echo 0 > /proc/sys/net/ipv6/conf/eth0/accept_ra");
    ip(ns, "link set eth0 up");
    if let Some(a) = &vm.ip4 {
        ip(ns, &format!("addr add {a}/32 dev eth0"));
        ip(ns, &format!("route add default via {GW4} dev eth0 onlink"));
    }
    if let Some(a) = &vm.ip6 {
        ip(ns, &format!("-6 addr add {a}/128 dev eth0 nodad"));
        ip(ns, &format!("-6 route add default via {GW6} dev eth0"));
    }
}

/// `ip netns exec NS hvroute --config CFG ARGS...`.
pub fn hvroute_in(ns: &str, cfg: &Path, args: &[&str]) -> Output {
    let cfg = cfg.to_str().expect("utf-8 path");
    let mut v = vec!["netns", "exec", ns, BIN, "--config", cfg];
    v.extend(args);
    run("ip", &v)
}

/// As [`hvroute_in`]; panics unless it exits 0. Returns stdout.
pub fn hvroute_ok_in(ns: &str, cfg: &Path, args: &[&str]) -> String {
    let o = hvroute_in(ns, cfg, args);
    assert!(o.status.success(), "`hvroute {}` on {ns} failed: {}", args.join(" "), show(&o));
    stdout(&o)
}
