//! The libvirt qemu hook (design.md §4, §5): `hvroute hook qemu NAME OP SUBOP [EXTRA]`
//! with the domain XML on stdin, and `hvroute hook install`.
//!
//! Data flow, one way: stdin (capped at [`MAX_XML_BYTES`]) → [`domain`] (pure: XML to
//! validated NICs) → [`ops`], which under the state dir's exclusive lock writes or removes
//! this VM's entry (source `hook`, stamped with the boot id) and then applies
//! [`crate::plan::plan_vm`] (pure: this VM's addresses and nothing else) through the
//! kernel backend. The daemon is never required: it sees the state dir change through its
//! notify watch and tells FRR; a pass never undoes the hook, because passes hold the same
//! lock shared (see `store.rs`).
//!
//! Contract, per op (docs/libvirt.md has the table with exit codes):
//! - `prepare begin`: validate; refuse (exit 2, one line on stderr) an invalid address,
//!   one outside the pools, one another VM on this host holds with a different MAC,
//!   metadata naming a MAC the domain lacks, bad or duplicate addresses. A missing bridge
//!   is created. Writes no entry.
//! - `start begin`: nothing.
//! - `started begin`: record the entry and program this VM's routes and permanent
//!   neighbours before returning. A failure exits non-zero, which aborts the start.
//! - `stopped end`, `release end REASON`: remove this VM's hook entry and withdraw the
//!   kernel objects no other entry wants. Always exit 0.
//! - `reconnect begin`: re-assert as `started` does. Always exit 0.
//! - `migrate begin`: record the incoming migration (entry with
//!   [`Migration::Incoming`](crate::model::Migration), not routed until `started`).
//!   Exit 2 for invalid metadata, which cancels the migration.
//! - `restore begin`: nothing. Always exit 0.
//! - anything else: one line on stderr, exit 0.
//!
//! With `hook.enabled = false` every op is a no-op that exits 0 (one line on stderr for a
//! domain with hvroute metadata): the Debian package's example config ships it so.
//!
//! For every op: nothing is ever printed on stdout (for `migrate` and `restore` libvirt
//! takes stdout as the new domain XML); a domain with nothing for hvroute is a no-op with
//! exit 0; an entry written by `vm add` (source `cli`) under the same name is never
//! changed or removed; libvirt is never called; the whole invocation has a hard time cap
//! (`hook.timeout_s`), after which it exits (0 for the ops that must exit 0) without
//! leaving a child that holds stdout or stderr.
//!
//! Live migration: the hook records where an incoming migration stands
//! ([`Migration`](crate::model::Migration)); the daemon advertises it de-preferred until
//! the guest announces itself here (src/daemon.rs, src/kernel/announce.rs).
//!
//! ConfigDrive fallback (design.md §4): a NIC on the managed bridge that the metadata does
//! not name takes its addresses from the domain's `config-2` cdrom, read with
//! [`crate::configdrive::network_of`] (untrusted input, bounded) and joined by
//! [`domain::spec_with_drive`]. A domain with no metadata and such a drive is managed. A
//! drive that cannot be read is logged, and its NICs are left to the other sources.
//!
//! Extension point: the CloudStack shim's merge by (bridge, MAC) plugs in at [`ops`].

pub mod domain;
pub mod install;
pub mod ops;
pub mod shim;

use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::{Args, Subcommand};

use crate::config::Config;
use crate::model::Invalid;

/// The most stdin the hook reads. Real domain XMLs are a few KiB; a larger one is
/// refused, never read into memory whole.
pub const MAX_XML_BYTES: usize = 4 << 20;

/// The time cap before the configuration has been read (and if it cannot be).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest the hook waits for the end of stdin (less with a shorter time cap).
const STDIN_WAIT: Duration = Duration::from_secs(2);

#[derive(Subcommand)]
pub enum HookCmd {
    /// The qemu hook itself; libvirt runs it with the domain XML on stdin.
    #[command(after_help = "\
Run by libvirt (through the script `hvroute hook install` puts in qemu.d), as
  hvroute [--config FILE] hook qemu NAME OP SUBOP EXTRA
Exit codes: 0 ok or nothing to do; 2 refused (prepare, started, migrate: invalid or
conflicting addresses), which aborts the start or the migration; 1 runtime failure.
stopped, release, reconnect and restore always exit 0. Nothing is printed on stdout.
See docs/libvirt.md.")]
    Qemu(QemuArgs),
    /// Install the hook: a script in DIR/qemu.d that runs this hvroute with this --config.
    #[command(after_help = "\
An existing DIR/qemu is never touched; libvirt runs it as well. Running this again is a
no-op. libvirtd reads its hooks when it starts: restart it, or send it SIGHUP, afterwards.")]
    Install(InstallArgs),
}

#[derive(Args)]
pub struct QemuArgs {
    /// The domain's name.
    #[arg(allow_hyphen_values = true)]
    pub name: String,
    /// prepare, start, started, stopped, release, migrate, restore, reconnect, ...
    #[arg(allow_hyphen_values = true)]
    pub op: String,
    /// begin or end.
    #[arg(allow_hyphen_values = true)]
    pub subop: String,
    /// The extra argument (`-`, or release's reason in libvirt 10.5 and later).
    #[arg(allow_hyphen_values = true, num_args = 0..)]
    pub extra: Vec<String>,
}

#[derive(Args)]
pub struct InstallArgs {
    /// libvirt's hooks directory.
    #[arg(long, value_name = "DIR", default_value = "/etc/libvirt/hooks")]
    pub dir: std::path::PathBuf,
    /// The binary the script runs, as installed on the target host, instead of this one.
    /// For packaging: the config file is then not checked here.
    #[arg(long, value_name = "PATH", hide = true)]
    pub bin: Option<std::path::PathBuf>,
}

/// The libvirt ops hvroute knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Prepare,
    Start,
    Started,
    Stopped,
    Release,
    Migrate,
    Restore,
    Reconnect,
    Other,
}

impl Op {
    pub fn parse(op: &str, subop: &str) -> Op {
        match (op, subop) {
            ("prepare", "begin") => Op::Prepare,
            ("start", "begin") => Op::Start,
            ("started", "begin") => Op::Started,
            ("stopped", "end") => Op::Stopped,
            ("release", "end") => Op::Release,
            ("migrate", "begin") => Op::Migrate,
            ("restore", "begin") => Op::Restore,
            ("reconnect", "begin") => Op::Reconnect,
            _ => Op::Other,
        }
    }

    /// Whether a failure must still exit 0: libvirt ignores the exit code of stopped and
    /// release, and a non-zero exit at reconnect kills the running QEMU.
    pub fn always_exits_0(self) -> bool {
        !matches!(self, Op::Prepare | Op::Started | Op::Migrate)
    }
}

/// What came on stdin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    Xml(String),
    /// Empty, `/dev/null` or a closed descriptor.
    Empty,
    TooLarge,
    NotUtf8,
    /// No end of input within the wait.
    Late(Duration),
    Unreadable(String),
}

impl Input {
    /// The XML, or why there is none, as a refusal.
    pub fn xml(&self) -> Result<&str, Invalid> {
        let why = match self {
            Input::Xml(s) => return Ok(s),
            Input::Empty => "no domain XML on stdin".to_string(),
            Input::TooLarge => {
                format!(
                    "the domain XML on stdin is larger than {} MiB, the most hvroute reads",
                    MAX_XML_BYTES >> 20
                )
            }
            Input::NotUtf8 => "the domain XML on stdin is not UTF-8".to_string(),
            Input::Late(w) => {
                format!("stdin did not end within {:.1} s; no complete domain XML", w.as_secs_f64())
            }
            Input::Unreadable(e) => format!("cannot read the domain XML on stdin: {e}"),
        };
        Err(Invalid(why))
    }
}

/// Reads stdin up to `max` bytes (one more tells it is too large), waiting at most `wait`
/// for its end. The reader thread is left behind if stdin never ends; it dies with the
/// process.
pub fn read_stdin(max: usize, wait: Duration) -> Input {
    let (tx, rx) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new().name("hook-stdin".into()).spawn(move || {
        let mut buf = Vec::new();
        let r = std::io::stdin().lock().take(max as u64 + 1).read_to_end(&mut buf);
        let _ = tx.send(r.map(|_| buf));
    });
    if let Err(e) = spawned {
        return Input::Unreadable(format!("cannot start a reader: {e}"));
    }
    match rx.recv_timeout(wait) {
        Ok(Ok(buf)) if buf.is_empty() => Input::Empty,
        Ok(Ok(buf)) if buf.len() > max => Input::TooLarge,
        Ok(Ok(buf)) => String::from_utf8(buf).map_or(Input::NotUtf8, Input::Xml),
        Ok(Err(e)) => Input::Unreadable(crate::config::io_reason(&e)),
        Err(_) => Input::Late(wait),
    }
}

/// The hard time cap: a thread that ends the process with `code` once the deadline has
/// passed, whatever the hook is blocked on (the store lock, netlink, stdin). It writes one
/// line and calls `_exit`: no destructor, no buffered output, no child left holding
/// libvirt's stdout or stderr (the hook's only children, `nft`, get their own pipes).
/// State stays consistent: store writes are atomic renames, kernel ops are idempotent,
/// and the lock dies with the process.
pub struct Watchdog {
    start: Instant,
    deadline_ms: Arc<AtomicU64>,
}

impl Watchdog {
    pub fn arm(timeout: Duration, code: i32, what: String) -> Watchdog {
        let start = Instant::now();
        let deadline_ms = Arc::new(AtomicU64::new(timeout.as_millis() as u64));
        let dl = deadline_ms.clone();
        let armed = std::thread::Builder::new().name("hook-watchdog".into()).spawn(move || {
            loop {
                let now = start.elapsed().as_millis() as u64;
                let deadline = dl.load(Ordering::Relaxed);
                if now >= deadline {
                    let line = format!(
                        "hvroute: {what} gave up after {:.1} s, its hard time cap (hook.timeout_s); exit {code}\n",
                        deadline as f64 / 1000.0
                    );
                    // SAFETY: write(2) on stderr with a valid buffer, then _exit(2), which
                    // is async-signal-safe and runs no Rust code.
                    unsafe {
                        libc::write(2, line.as_ptr().cast(), line.len());
                        libc::_exit(code);
                    }
                }
                // Short naps, so that a shorter cap set later takes effect.
                std::thread::sleep(Duration::from_millis((deadline - now).min(100)));
            }
        });
        if let Err(e) = armed {
            eprintln!("hvroute: warning: no time cap for this hook run: cannot start its thread: {e}");
        }
        Watchdog { start, deadline_ms }
    }

    /// Moves the cap to `timeout` after the start.
    pub fn set(&self, timeout: Duration) {
        self.deadline_ms.store(timeout.as_millis() as u64, Ordering::Relaxed);
    }

    /// What is left of the cap.
    pub fn left(&self) -> Duration {
        Duration::from_millis(self.deadline_ms.load(Ordering::Relaxed)).saturating_sub(self.start.elapsed())
    }
}

/// `hvroute hook ...`. Errors carry their exit code the CLI's way: an [`Invalid`] in the
/// chain is exit 2, anything else 1. Ops that must exit 0 report their failure as one line
/// on stderr themselves and return `Ok`.
pub fn run(config: &Path, cmd: HookCmd) -> Result<()> {
    match cmd {
        HookCmd::Qemu(a) => qemu(config, &a),
        HookCmd::Install(a) => install::run(config, &a),
    }
}

fn qemu(config: &Path, a: &QemuArgs) -> Result<()> {
    let op = Op::parse(&a.op, &a.subop);
    let what =
        format!("hook {} {} for VM {}", a.op.escape_debug(), a.subop.escape_debug(), a.name.escape_debug());
    match op {
        // `start` has nothing to do, and an unknown op has no config read: neither is
        // reported to the daemon's metrics.
        Op::Start => return Ok(()),
        Op::Other => {
            eprintln!("hvroute: {what}: not an operation hvroute acts on; nothing to do");
            return Ok(());
        }
        _ => {}
    }
    let watchdog = Watchdog::arm(DEFAULT_TIMEOUT, if op.always_exits_0() { 0 } else { 1 }, what.clone());
    let t0 = Instant::now();
    let cfg = Config::load(config);
    if let Ok(c) = &cfg {
        watchdog.set(Duration::from_secs(c.hook.timeout_s));
    }
    let socket = cfg.as_ref().ok().map(|c| c.socket.clone());
    let input = if op == Op::Restore {
        Input::Empty
    } else {
        read_stdin(MAX_XML_BYTES, STDIN_WAIT.min(watchdog.left() / 2))
    };
    if let Ok(c) = &cfg
        && !c.hook.enabled
    {
        // Installed but not switched on (the packaged example config): leave every VM
        // alone, and say so only for a domain that asks for hvroute.
        if input.xml().ok().and_then(|x| domain::parse(x).ok()).is_some_and(|d| d.is_managed()) {
            eprintln!(
                "hvroute: {what}: hook.enabled = false in {}: its hvroute metadata is ignored",
                config.display()
            );
        }
        return Ok(());
    }
    let r = match op {
        Op::Prepare => ops::prepare(cfg, &a.name, &input),
        Op::Started => ops::started(cfg, &a.name, &input),
        Op::Migrate => ops::migrate(cfg, &a.name, &input),
        Op::Stopped | Op::Release => ops::release(cfg, &a.name, &input),
        Op::Reconnect => ops::reconnect(cfg, &a.name, &input),
        Op::Restore | Op::Start | Op::Other => Ok(()),
    };
    tracing::debug!(op = ?op, ms = t0.elapsed().as_secs_f64() * 1e3, ok = r.is_ok(), "hook done");
    if let Some(socket) = &socket {
        report(socket, &a.op, &r);
    }
    let name = a.name.escape_debug();
    match r {
        Ok(()) => Ok(()),
        Err(e) if op.always_exits_0() => {
            eprintln!("hvroute: {what}: {e:#} (exit 0 regardless)");
            Ok(())
        }
        Err(e) if op == Op::Migrate => {
            Err(e.context(format!("refusing the incoming migration of VM {name}")))
        }
        Err(e) => Err(e.context(format!("refusing to start VM {name}"))),
    }
}

/// How long the hook waits at most to tell a running daemon about its run.
const REPORT_WAIT: Duration = Duration::from_millis(5);

/// Tells a running daemon's metrics about this run (`hvroute_hook_invocations_total`):
/// fire and forget, at most [`REPORT_WAIT`], nothing printed. Without a daemon the run is
/// not counted.
fn report(socket: &Path, op: &str, r: &Result<()>) {
    let result = match r {
        Ok(()) => "ok",
        Err(e) if e.chain().any(|c| c.is::<Invalid>()) => "refused",
        Err(_) => "failed",
    };
    let req = crate::control::Request::HookDone { hook_op: op.to_owned(), result: result.to_owned() };
    crate::control::notify(socket, &req, REPORT_WAIT);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_and_their_exit_rules() {
        assert_eq!(Op::parse("prepare", "begin"), Op::Prepare);
        assert_eq!(Op::parse("release", "end"), Op::Release);
        assert_eq!(Op::parse("release", "begin"), Op::Other);
        assert_eq!(Op::parse("attach", "begin"), Op::Other);
        for op in [Op::Stopped, Op::Release, Op::Reconnect, Op::Restore, Op::Other, Op::Start] {
            assert!(op.always_exits_0(), "{op:?}");
        }
        for op in [Op::Prepare, Op::Started, Op::Migrate] {
            assert!(!op.always_exits_0(), "{op:?}");
        }
    }

    #[test]
    fn input_problems_are_one_sentence() {
        for i in [
            Input::Empty,
            Input::TooLarge,
            Input::NotUtf8,
            Input::Late(Duration::from_secs(2)),
            Input::Unreadable("bad file descriptor".into()),
        ] {
            let e = i.xml().unwrap_err().0;
            assert!(!e.contains('\n') && e.contains("stdin"), "{e}");
        }
    }
}
