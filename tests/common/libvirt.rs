//! A real libvirtd (Debian 12's 9.0) and virtlogd inside a lab's hypervisor namespace, for
//! the libvirt end-to-end test. `scripts/test.sh` installs them (`ensure_libvirt`).
//!
//! Contract:
//! - Private everything: a temp dir holds `etc/` (its own `qemu.conf`, `hooks/`), `run/`,
//!   `lib/`, `cache/` and `log/`, which a mount namespace of the daemons' own
//!   (`unshare --mount --propagation private`) binds over `/etc/libvirt`, `/run/libvirt`,
//!   `/var/lib/libvirt`, `/var/cache/libvirt` and `/var/log/libvirt`. Nothing meets the
//!   host's libvirt (if any), another test's, or the host's `/etc`. virsh reaches this one
//!   at `qemu+unix:///system?socket=DIR/run/libvirt-sock`. The daemons' pid files are
//!   `DIR/run/{virtlogd,libvirtd}.pid`, not the machine-wide `/run/*.pid`.
//! - The daemons run in the foreground as this process's children (the `sh` that binds
//!   the directories execs them), so their PIDs are known. [`Libvirt::stop_libvirtd`] and
//!   `Drop` signal only those PIDs and the QEMU PIDs from this libvirt's own pid files.
//!   `Drop` (also on panic) destroys the domains, then kills what is left, by PID.
//! - qemu.conf: QEMU runs as root with no security driver and no per-domain mount
//!   namespace (facts.md, libvirt hooks). Domains are TCG unless
//!   `HVROUTE_TEST_LIBVIRT_VIRT=kvm`: on this nested machine class KVM works but spends
//!   about 5 s of CPU in the firmware of a diskless guest, TCG about 0.6 s.
//! - Every wait is a bounded poll.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::{BRIDGE, poll_until, show};

/// Where libvirt keeps what this harness makes private.
const SYSTEM_DIRS: [(&str, &str); 5] = [
    ("etc", "/etc/libvirt"),
    ("run", "/run/libvirt"),
    ("lib", "/var/lib/libvirt"),
    ("cache", "/var/cache/libvirt"),
    ("log", "/var/log/libvirt"),
];

/// Bound for libvirtd to answer after a start (the first domain start also probes QEMU's
/// capabilities, about 5 s here).
pub const LIBVIRT_BOUND: Duration = Duration::from_secs(60);

/// Fails at once, with the fix, if libvirt or QEMU is not installed.
pub fn require_libvirt() {
    for bin in ["/usr/sbin/libvirtd", "/usr/sbin/virtlogd", "/usr/bin/virsh", "/usr/bin/qemu-system-x86_64"] {
        assert!(
            Path::new(bin).exists(),
            "{bin} is missing: install libvirt and QEMU as scripts/common.sh's ensure_libvirt does \
             (scripts/test.sh runs it)"
        );
    }
    let o = Command::new("getent").args(["group", "libvirt-qemu"]).output().expect("getent");
    assert!(
        o.status.success(),
        "the libvirt-qemu group is missing (libvirt's QEMU driver refuses to start without it): \
         run scripts/test.sh, whose ensure_libvirt creates it"
    );
}

/// How domains are virtualised: `qemu` (TCG) unless HVROUTE_TEST_LIBVIRT_VIRT=kvm.
pub fn virt_type() -> &'static str {
    match std::env::var("HVROUTE_TEST_LIBVIRT_VIRT").as_deref() {
        Ok("kvm") => "kvm",
        _ => "qemu",
    }
}

/// A diskless domain with no OS: enough for libvirt to start QEMU and run every hook.
/// Its one NIC is on the managed bridge; `metadata` is put inside `<metadata>` as is.
pub fn domain(name: &str, mac: &str, metadata: Option<&str>) -> String {
    domain_with(name, mac, metadata, "")
}

/// A read-only IDE cdrom holding the image `file`, as CloudStack attaches a ConfigDrive.
pub fn cdrom(file: &str) -> String {
    format!(
        "    <disk type='file' device='cdrom'>
      <driver name='qemu' type='raw'/>
      <source file='{file}'/>
      <target dev='hdc' bus='ide'/>
      <readonly/>
    </disk>
"
    )
}

/// As [`domain`], with `devices` (XML) added to its `<devices>`.
pub fn domain_with(name: &str, mac: &str, metadata: Option<&str>, devices: &str) -> String {
    let md = metadata.map(|m| format!("  <metadata>\n{m}\n  </metadata>\n")).unwrap_or_default();
    format!(
        "<domain type='{virt}'>
  <name>{name}</name>
{md}  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64'>hvm</type></os>
  <on_poweroff>destroy</on_poweroff>
  <devices>
    <interface type='bridge'>
      <mac address='{mac}'/>
      <source bridge='{BRIDGE}'/>
      <model type='virtio'/>
      <rom enabled='no'/>
    </interface>
{devices}  </devices>
</domain>
",
        virt = virt_type()
    )
}

/// hvroute's metadata for one NIC.
pub fn hvroute_metadata(mac: &str, addrs: &[&str]) -> String {
    let a: String = addrs.iter().map(|a| format!("      <hvroute:address>{a}</hvroute:address>\n")).collect();
    format!(
        "    <hvroute:vm xmlns:hvroute=\"urn:hvroute:metadata:1\">\n      <hvroute:interface mac=\"{mac}\">\n{a}      </hvroute:interface>\n    </hvroute:vm>"
    )
}

pub struct Libvirt {
    pub netns: String,
    pub dir: tempfile::TempDir,
    virtlogd: Option<Child>,
    libvirtd: Option<Child>,
}

impl Libvirt {
    /// Makes the private directories and a qemu.conf; starts nothing. Hooks go into
    /// [`Libvirt::hooks_dir`] before [`Libvirt::start`].
    pub fn new(netns: &str) -> Libvirt {
        require_libvirt();
        let dir = tempfile::Builder::new().prefix("hvt-libvirt-").tempdir().expect("tempdir");
        for (sub, system) in SYSTEM_DIRS {
            fs::create_dir_all(dir.path().join(sub)).expect("private dir");
            // The mount point; empty unless libvirt is installed for real.
            fs::create_dir_all(system).unwrap_or_else(|e| panic!("cannot create {system}: {e}"));
        }
        fs::write(
            dir.path().join("etc/qemu.conf"),
            "# hvroute's libvirt end-to-end test (tests/common/libvirt.rs)\n\
             user = \"root\"\ngroup = \"root\"\nsecurity_driver = \"none\"\nnamespaces = [ ]\n",
        )
        .expect("qemu.conf");
        Libvirt { netns: netns.to_string(), dir, virtlogd: None, libvirtd: None }
    }

    /// libvirt's hooks directory, as `hvroute hook install --dir` takes it.
    pub fn hooks_dir(&self) -> PathBuf {
        self.dir.path().join("etc/hooks")
    }

    pub fn uri(&self) -> String {
        format!("qemu+unix:///system?socket={}", self.dir.path().join("run/libvirt-sock").display())
    }

    /// `ip netns exec NS unshare --mount --propagation private sh -c 'mount --bind ...; exec DAEMON'`,
    /// its output appended to `DIR/DAEMON.log`.
    fn spawn(&self, daemon: &str) -> Child {
        let mut script = String::from("set -e\n");
        for (sub, system) in SYSTEM_DIRS {
            script.push_str(&format!("mount --bind '{}' '{system}'\n", self.dir.path().join(sub).display()));
        }
        // Its own pid file too: the default (/run/DAEMON.pid) lies outside the bound
        // directories and is locked by any other libvirt on the machine (the host's, or
        // another test process's), which stops this one from starting.
        let pid_file = self.dir.path().join(format!("run/{daemon}.pid"));
        script.push_str(&format!("exec /usr/sbin/{daemon} --pid-file '{}'\n", pid_file.display()));
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("{daemon}.log")))
            .expect("daemon log");
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.netns,
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
            ])
            .arg(script)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {daemon}: {e}"))
    }

    /// Starts virtlogd (once) and libvirtd, and waits until libvirtd answers.
    pub fn start(&mut self) {
        if self.virtlogd.is_none() {
            self.virtlogd = Some(self.spawn("virtlogd"));
            let sock = self.dir.path().join("run/virtlogd-sock");
            assert!(
                poll_until(LIBVIRT_BOUND, || sock.exists()),
                "virtlogd did not start\n{}",
                self.diagnostics()
            );
        }
        assert!(self.libvirtd.is_none(), "libvirtd is already running");
        self.libvirtd = Some(self.spawn("libvirtd"));
        let ok = poll_until(LIBVIRT_BOUND, || {
            if let Some(c) = self.libvirtd.as_mut()
                && let Ok(Some(st)) = c.try_wait()
            {
                panic!("libvirtd exited ({st}) instead of starting\n{}", self.diagnostics());
            }
            self.virsh(&["list"]).status.success()
        });
        assert!(ok, "libvirtd did not answer within {LIBVIRT_BOUND:?}\n{}", self.diagnostics());
    }

    pub fn libvirtd_pid(&self) -> Option<u32> {
        self.libvirtd.as_ref().map(Child::id)
    }

    /// SIGTERM to libvirtd (by PID) and waits for it to exit. Domains keep running.
    pub fn stop_libvirtd(&mut self) {
        let mut c = self.libvirtd.take().expect("libvirtd is not running");
        stop_child(&mut c, "libvirtd");
    }

    /// `virsh -c URI ARGS...`.
    pub fn virsh(&self, args: &[&str]) -> Output {
        Command::new("virsh")
            .arg("-c")
            .arg(self.uri())
            .args(args)
            .env("LC_ALL", "C")
            .stdin(Stdio::null())
            .output()
            .expect("cannot run virsh")
    }

    /// As [`Libvirt::virsh`]; panics unless it succeeds. Returns stdout.
    pub fn virsh_ok(&self, args: &[&str]) -> String {
        let o = self.virsh(args);
        assert!(o.status.success(), "virsh {} failed: {}\n{}", args.join(" "), show(&o), self.diagnostics());
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// `virsh create` of this XML (written to a file first).
    pub fn create(&self, name: &str, xml: &str) -> Output {
        let path = self.dir.path().join(format!("{name}.xml"));
        fs::write(&path, xml).expect("domain xml");
        self.virsh(&["create", path.to_str().expect("utf-8")])
    }

    /// The state libvirt gives the domain (`running`, `shut off`, ...), or none.
    pub fn domstate(&self, name: &str) -> Option<String> {
        let o = self.virsh(&["domstate", name]);
        o.status.success().then(|| String::from_utf8_lossy(&o.stdout).trim().to_string())
    }

    /// The domain's taps, from `virsh domiflist`.
    pub fn taps(&self, name: &str) -> Vec<String> {
        self.virsh_ok(&["domiflist", name])
            .lines()
            .skip(2)
            .filter_map(|l| l.split_whitespace().next().map(str::to_string))
            .filter(|t| t != "-")
            .collect()
    }

    /// The PID of the domain's QEMU, from this libvirt's pid file.
    pub fn qemu_pid(&self, name: &str) -> Option<i32> {
        fs::read_to_string(self.dir.path().join(format!("run/qemu/{name}.pid"))).ok()?.trim().parse().ok()
    }

    /// Whether that PID is alive and a QEMU.
    pub fn is_qemu(pid: i32) -> bool {
        fs::read(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|c| String::from_utf8_lossy(&c).contains("qemu-system"))
    }

    /// The logs of both daemons and of the hook, for assertion messages.
    pub fn diagnostics(&self) -> String {
        let tail = |p: PathBuf| {
            let s = fs::read_to_string(&p).unwrap_or_default();
            let lines: Vec<&str> = s.lines().filter(|l| !noise(l)).collect();
            format!(
                "--- {} (last 30 lines) ---\n{}\n",
                p.display(),
                lines[lines.len().saturating_sub(30)..].join("\n")
            )
        };
        let mut out = tail(self.dir.path().join("libvirtd.log"));
        out.push_str(&tail(self.dir.path().join("virtlogd.log")));
        if let Ok(rd) = fs::read_dir(self.dir.path().join("log/qemu")) {
            for e in rd.flatten() {
                out.push_str(&tail(e.path()));
            }
        }
        out
    }
}

/// libvirtd's start-up complaints about what this machine lacks (dnsmasq, D-Bus, DMI).
fn noise(line: &str) -> bool {
    ["dnsmasq", "system bus", "DBus", "dmi", "dmidecode", "/dev/mem"].iter().any(|n| line.contains(n))
}

/// SIGTERM, then SIGKILL after 10 s, to our own child; waits for it.
fn stop_child(c: &mut Child, what: &str) {
    if let Ok(Some(_)) = c.try_wait() {
        return;
    }
    let pid = c.id() as libc::pid_t;
    // SAFETY: kill(2) on the PID of our own child, not yet reaped.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = c.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("warning: {what} (pid {pid}) ignored SIGTERM for 10 s; killing it");
    let _ = c.kill();
    let _ = c.wait();
}

impl Drop for Libvirt {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.diagnostics());
        }
        // Destroy what is still running while libvirtd can (the stop hooks run), then
        // kill any QEMU this libvirt started, by its pid file.
        if self.libvirtd.is_some() {
            let names = self.virsh(&["list", "--name"]);
            for name in
                String::from_utf8_lossy(&names.stdout).lines().map(str::trim).filter(|n| !n.is_empty())
            {
                let _ = self.virsh(&["destroy", name]);
            }
        }
        if let Ok(rd) = fs::read_dir(self.dir.path().join("run/qemu")) {
            for e in rd.flatten() {
                let is_pid_file = e.path().extension().is_some_and(|x| x == "pid");
                let pid = fs::read_to_string(e.path()).ok().and_then(|s| s.trim().parse::<i32>().ok());
                if let (true, Some(pid)) = (is_pid_file, pid)
                    && Libvirt::is_qemu(pid)
                {
                    // SAFETY: kill(2) on the QEMU this libvirt started (its own pid file).
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        if let Some(mut c) = self.libvirtd.take() {
            stop_child(&mut c, "libvirtd");
        }
        if let Some(mut c) = self.virtlogd.take() {
            stop_child(&mut c, "virtlogd");
        }
    }
}
