//! A real FRR (zebra and bgpd, datacenter defaults) in a network namespace, for the
//! privileged tests.
//!
//! Contract:
//! - [`Frr::start`] creates its own namespace and starts zebra and bgpd in it. Namespace
//!   and FRR pathspace (`-N`) share one unique name, `hvf-<tag>-<pid>-<n>`, so tests in
//!   parallel and runs in parallel never meet. [`Frr::start_in`] starts FRR in a
//!   namespace someone else owns (a lab's) and leaves that namespace alone.
//! - Each instance has its own FRR directories: `/etc/frr/NAME/` (frr.conf and a
//!   vtysh.conf with `service integrated-vtysh-config`, as Debian ships) and
//!   `/var/run/frr/NAME/` (pid files, vty sockets, zserv.api), owned by `frr`, the user
//!   the daemons run as. `vtysh -N NAME` reaches the daemons from outside the namespace.
//! - The daemons are started as FRR's own init script does, minus watchfrr:
//!   `ip netns exec NS /usr/lib/frr/DAEMON -d -N NAME -F datacenter -P 0 -i PIDFILE`
//!   (`-P 0`: no TCP vty). `-d` returns once the daemon is ready, so the pid files are
//!   read right after each start; those PIDs are the only processes `Drop` kills.
//! - A config is loaded as FRR's init script loads it at boot: written to
//!   `/etc/frr/NAME/frr.conf`, then `vtysh -N NAME -b`.
//! - `Drop` (also on panic) sends SIGTERM to the recorded PIDs if they still are this
//!   instance's daemons (their command line names the pathspace), SIGKILL after 2 s,
//!   then deletes the FRR directories and the namespace it created.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const FRR_LIBEXEC: &str = "/usr/lib/frr";
const ETC: &str = "/etc/frr";
const RUN: &str = "/var/run/frr";
const DAEMONS: [&str; 2] = ["zebra", "bgpd"];

static N: AtomicUsize = AtomicUsize::new(0);

pub struct Frr {
    /// The pathspace, and the namespace's name when this instance owns it.
    pub name: String,
    pub netns: String,
    owns_netns: bool,
    pub etc_dir: PathBuf,
    pub run_dir: PathBuf,
    pids: Vec<(&'static str, i32)>,
}

/// Fails at once, with the fix, if FRR is not installed.
pub fn require_frr() {
    for d in DAEMONS {
        let p = Path::new(FRR_LIBEXEC).join(d);
        assert!(
            p.exists(),
            "{} is missing: install FRR (apt-get install frr; scripts/test.sh does it)",
            p.display()
        );
    }
    assert!(
        Command::new("vtysh").arg("--help").stdout(Stdio::null()).status().is_ok_and(|s| s.success()),
        "vtysh does not run: install FRR (apt-get install frr; scripts/test.sh does it)"
    );
}

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} {}: {e}", args.join(" ")))
}

fn run_ok(program: &str, args: &[&str]) -> Output {
    let o = run(program, args);
    assert!(
        o.status.success(),
        "`{program} {}` failed: {}\n{}{}",
        args.join(" "),
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

fn chown_frr(p: &Path) {
    run_ok("chown", &["frr:frr", &p.to_string_lossy()]);
}

impl Frr {
    /// A new namespace (lo up, forwarding off as in any new namespace) with zebra and bgpd.
    pub fn start(tag: &str) -> Frr {
        let name = format!("hvf-{tag}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst));
        let mut f = Frr::empty(name.clone(), name, false);
        run_ok("ip", &["netns", "add", &f.netns]);
        f.owns_netns = true;
        run_ok("ip", &["-n", &f.netns, "link", "set", "lo", "up"]);
        f.start_daemons();
        f
    }

    /// zebra and bgpd in an existing namespace, which stays when this is dropped.
    pub fn start_in(netns: &str, tag: &str) -> Frr {
        let name = format!("hvf-{tag}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst));
        let mut f = Frr::empty(name, netns.to_string(), false);
        f.start_daemons();
        f
    }

    fn empty(name: String, netns: String, owns_netns: bool) -> Frr {
        require_frr();
        let etc_dir = Path::new(ETC).join(&name);
        let run_dir = Path::new(RUN).join(&name);
        Frr { name, netns, owns_netns, etc_dir, run_dir, pids: Vec::new() }
    }

    fn start_daemons(&mut self) {
        for d in [&self.etc_dir, &self.run_dir] {
            std::fs::create_dir_all(d).unwrap_or_else(|e| panic!("cannot create {}: {e}", d.display()));
            chown_frr(d);
        }
        let vtysh_conf = self.etc_dir.join("vtysh.conf");
        std::fs::write(&vtysh_conf, "service integrated-vtysh-config\n").unwrap();
        chown_frr(&vtysh_conf);
        for d in DAEMONS {
            let bin = format!("{FRR_LIBEXEC}/{d}");
            let pidfile = self.run_dir.join(format!("{d}.pid"));
            let pidfile = pidfile.to_string_lossy();
            let o = run(
                "ip",
                &[
                    "netns",
                    "exec",
                    &self.netns,
                    &bin,
                    "-d",
                    "-N",
                    &self.name,
                    "-F",
                    "datacenter",
                    "-P",
                    "0",
                    "-i",
                    &pidfile,
                ],
            );
            let pid = std::fs::read_to_string(&*pidfile).ok().and_then(|s| s.trim().parse::<i32>().ok());
            match pid {
                Some(pid) if o.status.success() => self.pids.push((d, pid)),
                _ => panic!(
                    "{d} did not start in {} (pathspace {}): {}\n{}",
                    self.netns,
                    self.name,
                    o.status,
                    String::from_utf8_lossy(&o.stderr)
                ),
            }
        }
    }

    /// `vtysh -N NAME ARGS...`, whatever the outcome.
    pub fn vtysh(&self, args: &[&str]) -> Output {
        let mut v = vec!["-N", self.name.as_str()];
        v.extend_from_slice(args);
        run("vtysh", &v)
    }

    /// `show running-config`, which must succeed.
    pub fn running_config(&self) -> String {
        let o = self.vtysh(&["-c", "show running-config"]);
        assert!(o.status.success(), "show running-config failed: {o:?}");
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Loads a whole frr.conf as FRR does at boot: the file in place, then `vtysh -b`.
    /// Returns vtysh's output; the caller judges it.
    pub fn load(&self, text: &str) -> Output {
        let conf = self.etc_dir.join("frr.conf");
        std::fs::write(&conf, text).unwrap();
        chown_frr(&conf);
        self.vtysh(&["-b"])
    }

    /// A sysctl inside the namespace, e.g. `net/ipv4/ip_forward`.
    pub fn sysctl(&self, key: &str) -> String {
        let o = run_ok("ip", &["netns", "exec", &self.netns, "cat", &format!("/proc/sys/{key}")]);
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    }

    /// The PIDs this instance started that are still its daemons.
    pub fn alive(&self) -> Vec<(&'static str, i32)> {
        self.pids.iter().copied().filter(|(_, pid)| self.is_ours(*pid)).collect()
    }

    /// True if PID is running with this instance's pathspace on its command line.
    fn is_ours(&self, pid: i32) -> bool {
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { return false };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        args.windows(2).any(|w| w[0] == b"-N" && w[1] == self.name.as_bytes())
    }
}

impl Drop for Frr {
    fn drop(&mut self) {
        for (_, pid) in self.alive() {
            // SAFETY: kill has no memory-safety preconditions; pid is one this instance started.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        while !self.alive().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        for (_, pid) in self.alive() {
            // SAFETY: as above.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        while !self.alive().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = std::fs::remove_dir_all(&self.run_dir);
        let _ = std::fs::remove_dir_all(&self.etc_dir);
        if self.owns_netns {
            let _ = Command::new("ip").args(["netns", "del", &self.netns]).status();
        }
    }
}
