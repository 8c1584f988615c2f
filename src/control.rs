//! The daemon's control socket: a Unix stream socket speaking one JSON request line and
//! one JSON response line per connection.
//!
//! Requests: `{"op":"reconcile"}` asks for a pass and answers when a pass that started
//! after the request has finished; `{"op":"resync"}` does the same and also makes the next
//! FRR sync read FRR's running config again (as the periodic resync does);
//! `{"op":"status"}` answers at once with the daemon's own state.
//!
//! `{"op":"vm_add","vm":{...},"replace":false}` and `{"op":"vm_del","name":"..."}` are the
//! CLI's `vm add` and `vm del` done by the daemon: it holds the state dir's snapshot, so
//! it checks and writes without reading 10,000 files, and runs the pass (and tells FRR)
//! at once. The answer is a [`VmReply`]. The rules are [`crate::store::Store::add`]'s, the
//! same as the CLI's own path without a daemon; the state dir stays the one source of
//! truth. Without a daemon, [`request`] returns `Ok(None)` and the CLI writes itself.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// A kernel pass now; FRR is told the difference.
    Reconcile,
    /// A full resync now: a kernel pass, and FRR's running config read again.
    Resync,
    Status,
    /// Store a VM (admin intent) and apply it at once.
    VmAdd {
        vm: crate::model::VmSpec,
        #[serde(default)]
        replace: bool,
    },
    /// Remove a VM and apply it at once.
    VmDel {
        name: crate::model::VmName,
    },
    /// The libvirt hook's `started` (and `reconnect`), done by the daemon: it records the
    /// VM from its own copy of the state and programs the VM's routes and neighbours before
    /// it answers (src/hook/ops.rs, `started_decision`).
    HookStarted {
        name: crate::model::VmName,
        nics: Vec<crate::model::Nic>,
    },
    /// The libvirt hook's `stopped`/`release`: remove the hook's entry and withdraw what no
    /// other entry wants of its addresses and of ADDRS (read from the domain XML).
    HookRelease {
        name: crate::model::VmName,
        #[serde(default)]
        addrs: std::collections::BTreeSet<std::net::IpAddr>,
    },
    /// The libvirt hook reports one of its runs, for the metrics: its op (`prepare`,
    /// `started`, ...) and result (`ok`, `refused`, `failed`). Answered by the socket's own
    /// task with `{}`; the hook does not wait for the answer ([`notify`]).
    HookDone {
        hook_op: String,
        result: String,
    },
}

/// The daemon's answer to `hook_started` and `hook_release`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HookReply {
    /// Refused: the caller's input (the hook exits 2).
    #[serde(default)]
    pub invalid: Option<String>,
    /// The daemon could not do it (the hook then does it itself).
    #[serde(default)]
    pub error: Option<String>,
    /// For the admin, on the hook's stderr.
    #[serde(default)]
    pub warning: Option<String>,
    /// Why route work waits (the bridge is down).
    #[serde(default)]
    pub waiting: Option<String>,
}

/// The daemon's answer to `vm_add` and `vm_del`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct VmReply {
    /// What happened to the state dir; absent when refused or failed.
    #[serde(default)]
    pub change: Option<crate::store::Change>,
    /// Why it was refused: the caller's input (exit 2).
    #[serde(default)]
    pub invalid: Option<String>,
    /// Why it failed otherwise (exit 1).
    #[serde(default)]
    pub error: Option<String>,
    /// The pass that applied the change, when there was one.
    #[serde(default)]
    pub pass: Option<PassSummary>,
}

/// What the daemon says about a pass.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PassSummary {
    pub pass: u64,
    pub ops: usize,
    pub errors: Vec<String>,
    pub total_ms: f64,
    #[serde(default)]
    pub waiting: Option<String>,
    /// Where the pass spent its time.
    #[serde(default)]
    pub timings: crate::reconcile::Timings,
}

/// What the daemon says about itself.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DaemonStatus {
    pub pid: u32,
    pub passes: u64,
    pub uptime_s: f64,
    pub last_pass: Option<PassSummary>,
    pub last_error: Option<String>,
    /// The FRR side; absent when `frr.enabled` is false.
    #[serde(default)]
    pub frr: Option<FrrStatus>,
}

/// What the daemon says about telling FRR.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FrrStatus {
    pub syncs: u64,
    /// FRR holds what the last kernel pass wanted advertised.
    pub in_sync: bool,
    pub last: Option<crate::frr::SyncSummary>,
    pub last_error: Option<String>,
}

/// Sends `req` without waiting for an answer, and gives up after `wait`: for reports that
/// must never delay the caller noticeably (the libvirt hook's [`Request::HookDone`]). The
/// connection is made on a thread of its own, so even a daemon whose socket backlog is
/// full costs at most `wait`; the thread dies with the process.
pub fn notify(socket: &Path, req: &Request, wait: Duration) {
    let Ok(mut line) = serde_json::to_string(req) else { return };
    line.push('\n');
    let socket = socket.to_owned();
    let (tx, rx) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new().name("notify-daemon".into()).spawn(move || {
        if let Ok(mut s) = UnixStream::connect(&socket) {
            let _ = s.set_write_timeout(Some(wait));
            let _ = s.write_all(line.as_bytes());
        }
        let _ = tx.send(());
    });
    if spawned.is_ok() {
        let _ = rx.recv_timeout(wait);
    }
}

/// Sends one request. `Ok(None)` means no daemon is listening.
pub fn request<T: for<'de> Deserialize<'de>>(
    socket: &Path,
    req: Request,
    timeout: Duration,
) -> Result<Option<T>> {
    let mut stream = match UnixStream::connect(socket) {
        Ok(s) => s,
        Err(e)
            if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused) =>
        {
            return Ok(None);
        }
        Err(e) => {
            return Err(e).with_context(|| format!("cannot connect to the daemon at {}", socket.display()));
        }
    };
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut line = serde_json::to_string(&req)?;
    line.push('\n');
    stream.write_all(line.as_bytes()).context("cannot talk to the daemon")?;
    let mut reply = String::new();
    BufReader::new(stream)
        .read_line(&mut reply)
        .with_context(|| format!("the daemon did not answer within {} s", timeout.as_secs()))?;
    let v = serde_json::from_str(&reply).context("the daemon's answer is not valid JSON")?;
    Ok(Some(v))
}
