//! The daemon: one task owns all controller state and runs reconcile passes.
//!
//! Contract (design.md §2, §3):
//! - Intake is cheap and only marks work dirty: a state dir change (notify), a kernel
//!   hint (netlink events, overflow), a control request, the periodic resync timer.
//! - A dirty mark runs a full pass after a short debounce, so a burst of events costs one
//!   pass. A pass that failed ops is retried with backoff.
//! - The first pass that gets through takes over the bridge (refusing foreign ports or addresses unless
//!   forced) and brings it up; later passes respect an admin's link down and wait for
//!   link up, which triggers a pass at once.
//! - Stopping (SIGTERM, SIGINT) leaves kernel state in place: VM traffic survives a
//!   daemon restart.
//!
//! [`Daemon::run`] takes its inputs as channels so that loop tests can drive it with
//! the fake kernel and a paused clock; [`run`] wires up the real ones.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::{error, info, warn};

use std::sync::Arc;

use crate::config::Config;
use crate::control::{DaemonStatus, PassSummary, Request};
use crate::frr;
use crate::kernel::Kernel;
use crate::kernel::events::{self, Hint};
use crate::kernel::netlink::Netlink;
use crate::model::Migration;
use crate::reconcile::{self, PassError, PassOptions};
use crate::store::Store;

/// The FRR side of the daemon: what bgpd should advertise and when to tell it. It runs
/// one sync at a time in its own task, so a slow or hung vtysh never delays the kernel.
struct FrrSide {
    vtysh: frr::vtysh::Vtysh,
    scaffolding: Result<String, String>,
    wanted: Arc<frr::Wanted>,
    /// What the last successful sync left FRR holding.
    synced: Option<Arc<frr::Wanted>>,
    /// FRR's config as the last successful sync left it.
    known: Option<frr::Running>,
    /// The next sync reads the running config instead of trusting `known` (periodic
    /// resync, FRR restart, after an error).
    reread: bool,
    inflight: bool,
    dirty: bool,
    due: Instant,
    backoff: Duration,
    bgpd_pid: Option<String>,
    syncs: u64,
    last: Option<frr::SyncSummary>,
    last_error: Option<String>,
    /// When the running sync started (its duration goes to the metrics).
    started_at: Option<Instant>,
    /// What the last successful sync told FRR, kept across restarts and errors: a later
    /// sync of the same lines that still changes something repairs drift (metrics).
    last_told: Option<Arc<frr::Wanted>>,
}

impl FrrSide {
    fn new(cfg: &Config) -> FrrSide {
        FrrSide {
            vtysh: frr::vtysh::Vtysh::from_config(cfg),
            scaffolding: frr::scaffolding(cfg).map_err(|e| format!("{e:#}")),
            wanted: Arc::default(),
            synced: None,
            known: None,
            reread: true,
            inflight: false,
            dirty: true,
            due: Instant::now(),
            backoff: Duration::from_secs(1),
            bgpd_pid: frr::bgpd_pid(cfg),
            syncs: 0,
            last: None,
            last_error: None,
            started_at: None,
            last_told: None,
        }
    }

    fn mark(&mut self, at: Instant) {
        if !self.dirty {
            self.dirty = true;
            self.due = at;
        }
        self.due = self.due.min(at);
    }

    /// Takes the addresses of a new desired state; a difference makes a sync due now.
    fn want(&mut self, cfg: &Config, desired: &crate::plan::Desired) {
        let wanted = Arc::new(frr::Wanted::build(cfg, desired));
        if *wanted != *self.wanted {
            self.wanted = wanted;
            self.mark(Instant::now());
        }
    }

    /// Starts a sync if one is due and none is running.
    fn maybe_start(&mut self, cfg: &Config, tx: &mpsc::UnboundedSender<Input>) {
        if !self.dirty || self.inflight || Instant::now() < self.due {
            return;
        }
        let scaffolding = match &self.scaffolding {
            Ok(s) => s.clone(),
            Err(e) => {
                if self.last_error.as_deref() != Some(e) {
                    error!(error = %e, "cannot render hvroute's FRR config; FRR is not told");
                    self.last_error = Some(e.clone());
                }
                self.dirty = false;
                return;
            }
        };
        self.inflight = true;
        self.dirty = false;
        self.started_at = Some(Instant::now());
        let (cfg, vtysh, wanted, tx) = (cfg.clone(), self.vtysh.clone(), self.wanted.clone(), tx.clone());
        let known = if self.reread { None } else { self.known.clone() };
        self.reread = false;
        tokio::spawn(async move {
            let r = frr::sync(&cfg, &vtysh, &wanted, &scaffolding, known.as_ref())
                .await
                .map_err(|e| format!("{e:#}"));
            let _ = tx.send(Input::FrrDone(wanted, r));
        });
    }
}

/// Someone waiting for a pass: a control request (`reconcile`, `resync`), or the CLI's
/// `vm add`/`vm del`, whose answer says what changed in the state dir.
enum Waiter {
    Pass(oneshot::Sender<serde_json::Value>),
    Vm(oneshot::Sender<serde_json::Value>, crate::store::Change),
}

/// Events that arrive together are handled in one pass.
pub const DEBOUNCE: Duration = Duration::from_millis(20);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// After a hook op handled by the daemon, kernel hints run their pass only this much later,
/// so that a burst of hooks (libvirt starting 50 VMs) is not slowed by a pass per hook.
const HOOK_QUIET: Duration = Duration::from_millis(100);

/// How often bgpd's pid file is checked for an FRR restart.
const FRR_PID_CHECK: Duration = Duration::from_secs(1);

pub enum Input {
    Hint(Hint),
    /// Files of the state dir that changed (by name); `None` when unknown (overflow).
    StateDirChanged(Option<Vec<String>>),
    Control(Request, oneshot::Sender<serde_json::Value>),
    /// A guest announced itself on the bridge (RARP, ARP, NS/NA) from this MAC.
    Announce(crate::model::Mac),
    /// An FRR sync finished (sent by the daemon's own FRR task).
    FrrDone(Arc<frr::Wanted>, Result<(frr::SyncSummary, frr::Running), String>),
}

pub struct Daemon<K: Kernel> {
    pub cfg: Config,
    pub store: Store,
    pub boot_id: String,
    pub kernel: K,
    pub force: bool,
    passes: u64,
    taken_over: bool,
    memo: reconcile::Memo,
    last_desired: Option<Arc<crate::plan::Desired>>,
    frr: Option<FrrSide>,
    last_pass: Option<PassSummary>,
    last_error: Option<String>,
    /// The warnings of the last pass, logged when they appear and when they clear.
    problems: Repeats,
    started: Instant,
    /// When the daemon first saw each VM in `Arriving` (for `migration.fallback_s`).
    arriving_seen: std::collections::HashMap<crate::model::VmName, Instant>,
    /// The MACs of the VMs arriving here: an announcement from any other MAC (every ARP a
    /// guest sends) is dropped without looking at the state, so a guest flooding ARP costs
    /// a set lookup per frame.
    arriving_macs: std::collections::HashSet<crate::model::Mac>,
    /// The next live-migration deadline (fallback or end of the settling window).
    next_migration: Option<Instant>,
    /// Until when kernel hints wait, after a hook op handled here ([`HOOK_QUIET`]).
    hooks_until: Instant,
    /// The FRR task reports back on this channel.
    frr_tx: mpsc::UnboundedSender<Input>,
    frr_rx: Option<mpsc::UnboundedReceiver<Input>>,
    /// What the daemon counts (src/metrics.rs); the HTTP endpoint and the control socket
    /// share it.
    pub metrics: Arc<crate::metrics::Metrics>,
}

impl<K: Kernel> Daemon<K> {
    pub fn new(cfg: Config, store: Store, boot_id: String, kernel: K, force: bool) -> Self {
        let frr = cfg.frr.enabled.then(|| FrrSide::new(&cfg));
        let (frr_tx, frr_rx) = mpsc::unbounded_channel();
        Daemon {
            frr_tx,
            frr_rx: Some(frr_rx),
            cfg,
            store,
            boot_id,
            kernel,
            force,
            passes: 0,
            taken_over: false,
            memo: reconcile::Memo::default(),
            last_desired: None,
            frr,
            last_pass: None,
            last_error: None,
            problems: Repeats::default(),
            started: Instant::now(),
            arriving_seen: Default::default(),
            arriving_macs: Default::default(),
            next_migration: None,
            hooks_until: Instant::now(),
            metrics: Arc::default(),
        }
    }

    pub fn passes(&self) -> u64 {
        self.passes
    }

    fn status(&self) -> DaemonStatus {
        DaemonStatus {
            pid: std::process::id(),
            passes: self.passes,
            uptime_s: self.started.elapsed().as_secs_f64(),
            last_pass: self.last_pass.clone(),
            last_error: self.last_error.clone(),
            frr: self.frr.as_ref().map(|f| crate::control::FrrStatus {
                syncs: f.syncs,
                in_sync: !f.dirty && !f.inflight && f.synced.as_deref() == Some(&*f.wanted),
                last: f.last.clone(),
                last_error: f.last_error.clone(),
            }),
        }
    }

    fn frr_done(&mut self, wanted: Arc<frr::Wanted>, r: Result<(frr::SyncSummary, frr::Running), String>) {
        let Some(f) = &mut self.frr else { return };
        f.inflight = false;
        f.syncs += 1;
        let m = &self.metrics;
        let took = f.started_at.take().map(|t| t.elapsed().as_secs_f64());
        if let Some(t) =
            took.filter(|_| r.as_ref().map_or(true, |(s, _)| s.adds + s.dels > 0 || s.scaffolding))
        {
            m.frr_push_seconds.observe(t);
        }
        match r {
            Ok((s, running)) => {
                if f.last_told.as_deref() == Some(&*wanted) && s.adds + s.dels > 0 {
                    m.repairs.with_label_values(&["frr"]).inc_by((s.adds + s.dels) as u64);
                }
                let vm_lines = wanted.networks.iter().filter(|(_, rm)| rm.is_some()).map(|(n, _)| n.addr());
                let addrs: Vec<std::net::IpAddr> = vm_lines.collect();
                crate::metrics::Metrics::set_by_family(&m.prefixes_advertised, &addrs);
                f.last_told = Some(wanted.clone());
                f.known = Some(running);
                if let Some(e) = &f.last_error {
                    info!(was = %e, "FRR sync works again");
                }
                if s.adds + s.dels > 0 || s.scaffolding {
                    info!(
                        adds = s.adds,
                        dels = s.dels,
                        scaffolding = s.scaffolding,
                        ms = format!("{:.0}", s.ms),
                        "told FRR"
                    );
                }
                f.synced = Some(wanted);
                f.last = Some(s);
                f.last_error = None;
                f.backoff = Duration::from_secs(1);
            }
            Err(e) => {
                m.frr_push_errors.inc();
                if f.last_error.as_ref() != Some(&e) {
                    warn!(error = %e, retry_s = f.backoff.as_secs(), "FRR sync failed; will retry");
                }
                f.last_error = Some(e);
                f.synced = None;
                f.reread = true;
                let at = Instant::now() + f.backoff;
                f.backoff = (f.backoff * 2).min(MAX_BACKOFF);
                f.mark(at);
            }
        }
    }

    /// Does a `vm add` or `vm del` for the CLI, with the store's rules and lock. The store's
    /// cached snapshot makes the check cheap, and it is patched with the one file written.
    fn change_vm(&mut self, req: Request) -> anyhow::Result<crate::store::Change> {
        let change = match &req {
            Request::VmAdd { vm, replace } => {
                vm.check_shape()?;
                for (_, addr) in vm.addresses() {
                    crate::model::check_addr(&self.cfg, addr)?;
                }
                if vm.source != crate::model::Source::Cli {
                    anyhow::bail!(crate::model::Invalid(
                        "vm_add takes admin intent (source cli) only".into()
                    ));
                }
                self.store.add(vm, *replace, &self.boot_id)?
            }
            Request::VmDel { name } => self.store.del(name)?,
            _ => unreachable!("only VM requests come here"),
        };
        if matches!(change, crate::store::Change::Stored | crate::store::Change::Removed) {
            let (what, name) = match &req {
                Request::VmAdd { vm, .. } => ("stored", vm.name.as_str()),
                Request::VmDel { name } => ("removed", name.as_str()),
                _ => unreachable!(),
            };
            info!(vm = name, "VM {what} for the CLI");
        }
        Ok(change)
    }

    /// A VM the CLI just added through the daemon: its routes and neighbours, and FRR's
    /// lines, at once, before the pass that confirms them. The store has just accepted it
    /// (pools, conflicts, shape) and admin intent is never parked or migrating, so these
    /// are exactly the additions and the baseline lines that pass would plan; the pass
    /// still follows. Only onto a bridge that is ours and up, as for quick additions.
    async fn quick_vm(&mut self, vm: &crate::model::VmSpec) {
        let clean = self.last_pass.as_ref().is_some_and(|p| p.waiting.is_none() && p.errors.is_empty());
        if !self.taken_over || !clean || vm.source != crate::model::Source::Cli {
            return;
        }
        let plan = crate::plan::additions(
            &self.cfg.bridge.name,
            self.cfg.route_protocol,
            vm.addresses().map(|(mac, a)| (a.0, mac)),
        );
        // Failures are the pass's to see and retry.
        let _ = self.kernel.apply(&plan).await;
        if let Some(f) = &mut self.frr {
            let mut w = (*f.wanted).clone();
            for (_, a) in vm.addresses() {
                w.networks.insert(ipnet::IpNet::from(a.0), Some(frr::RM_VM.to_string()));
            }
            if w != *f.wanted {
                f.wanted = Arc::new(w);
                f.mark(Instant::now());
                f.maybe_start(&self.cfg, &self.frr_tx);
            }
        }
    }

    /// The libvirt hook's `started` or `release`, handed over by the hook: the same
    /// decisions as the hook's own path (src/hook/ops.rs), from the state the daemon holds
    /// in memory, so the hook does not read every state file. The entry is written and this
    /// VM's routes and neighbours changed (`plan_vm`) under the store's lock before the
    /// answer, and FRR is told at once; the periodic resync and kernel events cover the rest,
    /// as for the hook alone.
    async fn hook_op(&mut self, req: Request) -> anyhow::Result<crate::control::HookReply> {
        use crate::hook::ops::{addrs_of, started_decision};
        if !self.taken_over {
            anyhow::bail!("the daemon has not taken over the bridge yet");
        }
        let t0 = Instant::now();
        let ms = |t: Instant| format!("{:.1}", t.elapsed().as_secs_f64() * 1e3);
        let lock = self.store.lock()?;
        let snap = self.store.load()?;
        let (name, mut addrs, warning, started) = match req {
            Request::HookStarted { name, nics } => {
                let existing = snap.vms.get(&name).cloned();
                let (vm, addrs, warning) = started_decision(&name, &nics, existing.as_deref(), &self.boot_id);
                if let Some(vm) = vm {
                    crate::model::check_conflicts(&vm, snap.vms.values().map(|v| &**v), &self.boot_id)?;
                    if existing.as_deref() != Some(&vm) {
                        self.store.put(&lock, &vm)?;
                    }
                }
                (name, addrs, warning, true)
            }
            Request::HookRelease { name, addrs } => {
                let mut addrs = addrs;
                if let Some(own) = snap.vms.get(&name).filter(|e| e.source == crate::model::Source::Hook) {
                    addrs.extend(addrs_of(own));
                    self.store.remove(&lock, &name)?;
                }
                (name, addrs, None, false)
            }
            _ => unreachable!("only hook requests come here"),
        };
        let written_ms = ms(t0);
        self.store.refresh(Some(&[format!("{name}.json")]));
        let snap = self.store.load()?;
        let d = crate::plan::Desired::build(&self.cfg, &snap, &self.boot_id);
        let desired_ms = ms(t0);
        if !started {
            addrs.retain(|a| !d.addrs.contains_key(a));
        }
        let mut waiting = None;
        if started || !addrs.is_empty() {
            let p =
                reconcile::vm_pass(&mut self.kernel, &d, &addrs, started, self.cfg.route_protocol).await?;
            waiting = p.waiting;
        }
        drop(lock);
        self.hooks_until = Instant::now() + HOOK_QUIET;
        // An arriving VM's MAC is watched for from now on; its deadlines are set.
        self.migration_deadlines(false);
        if let Some(f) = &mut self.frr {
            f.want(&self.cfg, &d);
            f.maybe_start(&self.cfg, &self.frr_tx);
        }
        info!(
            vm = %name, op = if started { "started" } else { "release" }, written_ms, desired_ms, ms = ms(t0),
            "libvirt hook handled by the daemon"
        );
        Ok(crate::control::HookReply { warning, waiting, ..Default::default() })
    }

    /// A guest announced itself from MAC: if it belongs to a VM arriving by live
    /// migration, the guest now runs here, and this host must win (design.md §5).
    /// Returns whether the state dir changed.
    fn announced(&mut self, mac: crate::model::Mac) -> bool {
        if !self.arriving_macs.contains(&mac) {
            return false;
        }
        let Ok(snap) = self.store.load() else { return false };
        let arriving: Vec<_> = snap
            .vms
            .values()
            .filter(|v| v.migration == Some(Migration::Arriving) && v.nics.iter().any(|n| n.mac == mac))
            .map(|v| v.name.clone())
            .collect();
        let mut changed = false;
        for name in arriving {
            let arrived = Migration::Arrived { at: unix_now() };
            if self.set_migration(&name, Some(Migration::Arriving), Some(arrived)) {
                info!(vm = %name, %mac, "guest announced itself here: the live migration has arrived");
                changed = true;
            }
        }
        changed
    }

    /// Moves the live migrations whose time is up: an arriving VM that never announced
    /// itself is taken as arrived after `migration.fallback_s`; an arrived one returns to
    /// the baseline after `migration.settle_s`. Sets the next deadline. Returns whether
    /// the state dir changed. With `act` false it only sets the next deadline (a deadline
    /// already past is due now).
    fn migration_deadlines(&mut self, act: bool) -> bool {
        let Ok(snap) = self.store.load() else { return false };
        let (now, unix) = (Instant::now(), unix_now());
        let m = self.cfg.migration.clone();
        let mut next: Option<Instant> = None;
        let mut changed = false;
        let mut retry = false;
        let mut seen = std::mem::take(&mut self.arriving_seen);
        self.arriving_macs = snap
            .vms
            .values()
            .filter(|v| v.migration == Some(Migration::Arriving))
            .flat_map(|v| v.nics.iter().map(|n| n.mac))
            .collect();
        for vm in snap.vms.values() {
            match vm.migration {
                Some(Migration::Arriving) => {
                    let since = *seen.entry(vm.name.clone()).or_insert(now);
                    self.arriving_seen.insert(vm.name.clone(), since);
                    if m.fallback_s == 0 {
                        continue;
                    }
                    let at = since + Duration::from_secs(m.fallback_s);
                    if now >= at && act {
                        let to = Some(Migration::Arrived { at: unix });
                        if self.set_migration(&vm.name, Some(Migration::Arriving), to) {
                            info!(vm = %vm.name, fallback_s = m.fallback_s, "no announcement from the guest; taking the live migration as arrived");
                            changed = true;
                        } else {
                            retry = true;
                        }
                    } else {
                        next = Some(next.map_or(at, |n| n.min(at)));
                    }
                }
                Some(Migration::Arrived { at }) => {
                    let left = (at + m.settle_s).saturating_sub(unix);
                    if left == 0 && act {
                        if self.set_migration(&vm.name, vm.migration, None) {
                            info!(vm = %vm.name, "live migration settled; advertised at the baseline again");
                            changed = true;
                        } else {
                            retry = true;
                        }
                    } else {
                        let at = now + Duration::from_secs(left);
                        next = Some(next.map_or(at, |n| n.min(at)));
                    }
                }
                _ => {}
            }
        }
        // A state just written is looked at again at once; a failed write in a second.
        if retry {
            let at = now + Duration::from_secs(1);
            next = Some(next.map_or(at, |n| n.min(at)));
        }
        self.next_migration = if changed { Some(now) } else { next };
        changed
    }

    /// Changes a VM's migration state from FROM to TO under the store's lock, if the file
    /// still says FROM (the hook may have rewritten or removed it meanwhile).
    fn set_migration(
        &mut self,
        name: &crate::model::VmName,
        from: Option<Migration>,
        to: Option<Migration>,
    ) -> bool {
        let r = (|| -> anyhow::Result<bool> {
            let lock = self.store.lock()?;
            let Some(mut vm) = self.store.get(name)? else { return Ok(false) };
            if vm.migration != from {
                return Ok(false);
            }
            vm.migration = to;
            self.store.put(&lock, &vm)?;
            self.store.refresh(Some(&[format!("{name}.json")]));
            Ok(true)
        })();
        r.unwrap_or_else(|e| {
            warn!(vm = %name, error = %format!("{e:#}"), "cannot record the live migration's state; will retry");
            false
        })
    }

    /// Notices an FRR restart by bgpd's pid; a restarted FRR is told everything again.
    fn check_frr_restart(&mut self) {
        let Some(f) = &mut self.frr else { return };
        let pid = frr::bgpd_pid(&self.cfg);
        if pid != f.bgpd_pid {
            if pid.is_some() {
                self.metrics.frr_restarts.inc();
                info!(old = ?f.bgpd_pid, new = ?pid, "FRR (bgpd) restarted; re-asserting its config");
            }
            f.bgpd_pid = pid;
            f.synced = None;
            f.reread = true;
            f.backoff = Duration::from_secs(1);
            f.mark(Instant::now());
        }
    }

    /// The metrics of a pass that got through (src/metrics.rs).
    fn count_pass(&self, out: &reconcile::Outcome) {
        let m = &self.metrics;
        m.pass_seconds.observe(out.timings.total_ms / 1e3);
        m.op_errors.inc_by(out.errors.len() as u64);
        let Some(d) = &out.desired else { return };
        let errors = out.store_errors.len();
        let incoming = d.incoming.len();
        let active = out.vms.saturating_sub(out.parked + incoming);
        for (state, n) in
            [("active", active), ("parked", out.parked), ("incoming", incoming), ("error", errors)]
        {
            m.vms.with_label_values(&[state]).set(n as i64);
        }
        use crate::metrics::Metrics;
        Metrics::set_by_family(&m.prefixes_desired, d.addrs.keys());
        for (g, n) in [(&m.routes, out.programmed.routes), (&m.neighbours, out.programmed.neighbours)] {
            g.with_label_values(&["ipv4"]).set(n[0]);
            g.with_label_values(&["ipv6"]).set(n[1]);
        }
        let applied = reconcile::applied(&out.plan.ops, &out.errors);
        for (kind, n) in crate::metrics::repairs(self.last_desired.as_deref(), d, applied) {
            m.repairs.with_label_values(&[kind]).inc_by(n);
        }
        // The VMs whose guard drops are exported, when the desired state changed.
        if self.last_desired.as_ref().is_none_or(|l| !Arc::ptr_eq(l, d))
            && let Ok(snap) = self.store.load()
        {
            let vms = snap
                .vms
                .values()
                .map(|v| (v.name.to_string(), v.nics.iter().map(|n| n.mac).collect()))
                .collect();
            m.set_vms(vms);
        }
    }

    /// Runs one pass and records its outcome. Returns whether it fully succeeded.
    async fn pass(&mut self) -> Result<bool, PassError> {
        // Until one pass has got through observation, each pass is the first: it checks
        // the take-over and brings the bridge up.
        let first = !self.taken_over;
        // Quick additions only onto a bridge that is ours and up (no pass waiting for link up).
        let waiting = self.last_pass.as_ref().is_none_or(|p| p.waiting.is_some() || !p.errors.is_empty());
        let opts = PassOptions {
            bring_up: first,
            check_takeover: first,
            force: self.force,
            dry_run: false,
            quick: !first && !waiting,
        };
        self.passes += 1;
        self.metrics.passes.inc();
        let n = self.passes;
        let span = tracing::info_span!("pass", n);
        let _g = span.enter();
        // FRR is told from inside the pass: for a small change right after the quick
        // additions (the routes exist, so import-check lets the lines out at once),
        // otherwise after the kernel work (reconcile::pass_with).
        let (frr, frr_tx, cfg) = (&mut self.frr, &self.frr_tx, &self.cfg);
        let early = |d: &Arc<crate::plan::Desired>| {
            if let Some(f) = frr {
                f.want(cfg, d);
                f.maybe_start(cfg, frr_tx);
            }
        };
        let out = match reconcile::pass_with(
            &self.cfg,
            &self.store,
            &self.boot_id,
            &mut self.kernel,
            &mut self.memo,
            opts,
            early,
        )
        .await
        {
            Ok(o) => o,
            Err(PassError::Refused(w)) => return Err(PassError::Refused(w)),
            Err(PassError::Failed(e)) => {
                let msg = format!("{e:#}");
                self.problems.update([format!("pass failed: {msg}")]);
                self.last_error = Some(msg.clone());
                self.last_pass = Some(PassSummary { pass: n, errors: vec![msg], ..PassSummary::default() });
                return Ok(false);
            }
        };
        self.taken_over = true;
        self.migration_deadlines(false);
        if let (Some(f), Some(d)) = (&mut self.frr, &out.desired) {
            f.want(&self.cfg, d);
        }
        self.count_pass(&out);
        self.last_desired = out.desired.clone();
        if out.quick_ops > 0 {
            info!(
                ops = out.quick_ops,
                ms = format!("{:.1}", out.timings.quick_ms),
                "applied quick additions"
            );
        }
        if !out.plan.is_empty() {
            let counts: Vec<String> = out.plan.counts().iter().map(|(k, v)| format!("{k}={v}")).collect();
            info!(ops = out.plan.ops.len(), counts = %counts.join(" "), ms = format!("{:.1}", out.timings.total_ms), "applied plan");
        }
        let was_waiting = self.last_pass.as_ref().and_then(|p| p.waiting.as_ref());
        if let Some(w) = &out.plan.waiting
            && was_waiting != Some(w)
        {
            info!(waiting = %w, "pass waits");
        }
        self.problems.update(
            out.errors
                .iter()
                .map(|e| format!("op failed: {e}"))
                .chain(out.store_errors.iter().chain(&out.conflicts).map(|e| format!("state: {e}"))),
        );
        self.last_error = out.errors.first().map(|e| e.to_string());
        self.last_pass = Some(PassSummary {
            pass: n,
            ops: out.quick_ops + out.plan.ops.len(),
            errors: out.errors.iter().map(|e| e.to_string()).collect(),
            total_ms: out.timings.total_ms,
            waiting: out.plan.waiting.clone(),
            timings: out.timings.clone(),
        });
        Ok(out.errors.is_empty())
    }

    /// The loop. Returns when `inputs` closes or `shutdown` fires; returns an error only
    /// when the first pass refuses to take over the bridge.
    pub async fn run(
        &mut self,
        mut inputs: mpsc::UnboundedReceiver<Input>,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), PassError> {
        tokio::pin!(shutdown);
        let resync = Duration::from_secs(self.cfg.resync_interval_s);
        let ok = self.pass().await?;
        let mut backoff = Duration::from_secs(1);
        let mut due: Option<Instant> = (!ok).then(|| Instant::now() + backoff);
        let mut next_resync = Instant::now() + resync;
        let mut waiters: Vec<Waiter> = Vec::new();
        let mut frr_rx = self.frr_rx.take().expect("Daemon::run runs once");
        let mut next_pid_check = Instant::now() + FRR_PID_CHECK;
        loop {
            if let Some(f) = &mut self.frr {
                f.maybe_start(&self.cfg, &self.frr_tx);
            }
            let mut wake = due.map_or(next_resync, |d| d.min(next_resync));
            if let Some(m) = self.next_migration {
                wake = wake.min(m);
            }
            if let Some(f) = &self.frr {
                wake = wake.min(next_pid_check);
                if f.dirty && !f.inflight {
                    wake = wake.min(f.due);
                }
            }
            tokio::select! {
                _ = &mut shutdown => return Ok(()),
                Some(Input::FrrDone(wanted, r)) = frr_rx.recv() => self.frr_done(wanted, r),
                _ = tokio::time::sleep_until(wake) => {
                    let now = Instant::now();
                    if now >= next_pid_check {
                        next_pid_check = now + FRR_PID_CHECK;
                        self.check_frr_restart();
                    }
                    if self.next_migration.is_some_and(|m| now >= m) && self.migration_deadlines(true) {
                        due = Some(now);
                    }
                    let resync_due = now >= next_resync;
                    if !resync_due && due.is_none_or(|d| now < d) {
                        continue;
                    }
                    if resync_due && let Some(f) = &mut self.frr {
                        // The periodic resync re-reads FRR too: a line removed by hand
                        // comes back within one interval.
                        f.reread = true;
                        f.mark(now);
                    }
                    let ok = self.pass().await?;
                    // Every pass is a full resync; the periodic one is due a whole
                    // interval after the last.
                    next_resync = Instant::now() + resync;
                    if ok {
                        backoff = Duration::from_secs(1);
                        due = None;
                    } else {
                        due = Some(Instant::now() + backoff);
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                    let summary = serde_json::to_value(&self.last_pass).unwrap_or_default();
                    for w in waiters.drain(..) {
                        let _ = match w {
                            Waiter::Pass(tx) => tx.send(summary.clone()),
                            Waiter::Vm(tx, change) => tx.send(serde_json::json!({
                                "change": change,
                                "pass": summary.clone(),
                            })),
                        };
                    }
                }
                input = inputs.recv() => {
                    let Some(input) = input else { return Ok(()) };
                    let soon = Instant::now() + DEBOUNCE;
                    match input {
                        Input::Hint(Hint(why)) => {
                            tracing::debug!(why, "kernel hint");
                            // Hooks just handled here change the kernel themselves (and
                            // raise hints doing so): while they come, the pass waits for a
                            // pause instead of sitting in the next hook's way.
                            let at = soon.max(self.hooks_until);
                            due = Some(due.map_or(at, |d| d.min(at)));
                        }
                        Input::StateDirChanged(files) => {
                            // The echo of the daemon's own write changes nothing.
                            if self.store.refresh(files.as_deref()) {
                                due = Some(due.map_or(soon, |d| d.min(soon)));
                            }
                        }
                        Input::Control(req @ (Request::Reconcile | Request::Resync), reply) => {
                            // Someone waits for this pass: no debounce.
                            waiters.push(Waiter::Pass(reply));
                            due = Some(Instant::now());
                            if req == Request::Resync && let Some(f) = &mut self.frr {
                                f.reread = true;
                                f.mark(soon);
                            }
                        }
                        Input::Control(req @ (Request::VmAdd { .. } | Request::VmDel { .. }), reply) => {
                            let added = match &req {
                                Request::VmAdd { vm, .. } => Some(vm.clone()),
                                _ => None,
                            };
                            match self.change_vm(req) {
                                Ok(change @ (crate::store::Change::Stored | crate::store::Change::Removed)) => {
                                    if let (crate::store::Change::Stored, Some(vm)) = (change, added) {
                                        self.quick_vm(&vm).await;
                                    }
                                    // The state dir changed: the pass runs now, and the
                                    // answer waits for it.
                                    waiters.push(Waiter::Vm(reply, change));
                                    due = Some(Instant::now());
                                }
                                Ok(change) => {
                                    let _ = reply.send(serde_json::json!({ "change": change }));
                                }
                                Err(e) => {
                                    let (key, msg) = if e.is::<crate::model::Invalid>() {
                                        ("invalid", e.to_string())
                                    } else {
                                        ("error", format!("{e:#}"))
                                    };
                                    let _ = reply.send(serde_json::json!({ key: msg }));
                                }
                            }
                        }
                        Input::Control(req @ (Request::HookStarted { .. } | Request::HookRelease { .. }), reply) => {
                            let answer = match self.hook_op(req).await {
                                Ok(r) => serde_json::to_value(r).unwrap_or_default(),
                                Err(e) if e.is::<crate::model::Invalid>() => serde_json::json!({ "invalid": e.to_string() }),
                                Err(e) => serde_json::json!({ "error": format!("{e:#}") }),
                            };
                            let _ = reply.send(answer);
                            // No pass: plan_vm did this VM's whole kernel work (as the hook
                            // alone does), FRR is told, and the echo of the write changes
                            // nothing. A pass that hints have made due waits for the burst of
                            // hooks to pause, unless someone waits for it.
                            if waiters.is_empty() {
                                due = due.map(|d| d.max(self.hooks_until));
                            }
                        }
                        Input::FrrDone(wanted, r) => self.frr_done(wanted, r),
                        Input::Announce(mac) => {
                            if self.announced(mac) {
                                // The destination must win now: no debounce.
                                due = Some(Instant::now());
                            }
                        }
                        Input::Control(Request::HookDone { hook_op, result }, reply) => {
                            // The control socket counts these itself; a loop test's come here.
                            self.metrics.hook(&hook_op, &result);
                            let _ = reply.send(serde_json::json!({}));
                        }
                        Input::Control(Request::Status, reply) => {
                            let _ = reply.send(serde_json::to_value(self.status()).unwrap_or_default());
                        }
                    }
                }
            }
        }
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// `hvroute daemon`: wires the real inputs (netlink events, notify, control socket,
/// signals) to a [`Daemon`] over the rtnetlink backend.
pub async fn run(cfg: Config, force: bool) -> Result<(), PassError> {
    let boot_id = cfg.boot_id()?;
    // The daemon's parses live in its memory; hooks and the CLI keep the disk copy.
    let store = Store::open(&cfg.state_dir)?.without_disk_cache();
    let (tx, rx) = mpsc::unbounded_channel();

    // Subscribe before the first full read, so nothing that happens meanwhile is lost.
    let mut hints = events::subscribe(cfg.bridge.name.as_str(), cfg.route_protocol).await?;
    let htx = tx.clone();
    tokio::spawn(async move {
        while let Some(h) = hints.recv().await {
            if htx.send(Input::Hint(h)).is_err() {
                return;
            }
        }
    });
    let _watcher = watch_state_dir(&cfg.state_dir, tx.clone())?;
    let mut announcements = crate::kernel::announce::watch(cfg.bridge.name.to_string());
    let atx = tx.clone();
    tokio::spawn(async move {
        while let Some(mac) = announcements.recv().await {
            if atx.send(Input::Announce(mac)).is_err() {
                return;
            }
        }
    });
    let metrics = Arc::new(crate::metrics::Metrics::new());
    let _socket = serve_control(&cfg.socket, tx.clone(), metrics.clone())?;
    // Bound before the first pass: a taken port stops the daemon at once, naming it.
    if let Some(addr) = cfg.metrics.listen.0 {
        crate::metrics::serve(addr, metrics.clone()).await?;
        let vtysh = cfg.frr.enabled.then(|| frr::vtysh::Vtysh::from_config(&cfg));
        crate::metrics::spawn_poller(metrics.clone(), vtysh, cfg.guard.enabled);
        info!(%addr, "serving metrics at /metrics");
    }

    let kernel = Netlink::connect(cfg.bridge.name.as_str(), cfg.route_protocol)?;
    info!(
        bridge = %cfg.bridge.name, state_dir = %cfg.state_dir.display(), socket = %cfg.socket.display(),
        resync_s = cfg.resync_interval_s, "hvroute daemon starting"
    );
    let mut daemon = Daemon::new(cfg, store, boot_id, kernel, force);
    daemon.metrics = metrics;
    // Installed now, so that a SIGTERM during the first pass is not lost.
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => info!("SIGTERM: stopping; kernel state stays in place"),
            _ = int.recv() => info!("SIGINT: stopping; kernel state stays in place"),
        }
    };
    let r = daemon.run(rx, shutdown).await;
    if let Err(e) = &r {
        error!(error = %e, "daemon stopped");
    }
    r
}

fn watch_state_dir(
    dir: &std::path::Path,
    tx: mpsc::UnboundedSender<Input>,
) -> Result<notify::RecommendedWatcher> {
    use notify::EventKind;
    use notify::{RecursiveMode, Watcher};
    let mut w = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        let input = match ev {
            // Reads (our own passes open every file) and metadata changes are not changes.
            Ok(e)
                if matches!(
                    e.kind,
                    EventKind::Access(_) | EventKind::Modify(notify::event::ModifyKind::Metadata(_))
                ) =>
            {
                None
            }
            Ok(e) => {
                let files: Vec<String> = e
                    .paths
                    .iter()
                    .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                    .filter(|n| n.ends_with(".json") && !n.starts_with('.'))
                    .collect();
                (!files.is_empty()).then_some(Input::StateDirChanged(Some(files)))
            }
            Err(_) => Some(Input::StateDirChanged(None)),
        };
        if let Some(i) = input {
            let _ = tx.send(i);
        }
    })
    .context("cannot watch the state dir")?;
    w.watch(dir, RecursiveMode::NonRecursive)
        .with_context(|| format!("cannot watch state dir {}", dir.display()))?;
    Ok(w)
}

/// Removes the socket file when the daemon stops.
struct SocketGuard(PathBuf);

impl Drop for SocketGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn serve_control(
    path: &std::path::Path,
    tx: mpsc::UnboundedSender<Input>,
    metrics: Arc<crate::metrics::Metrics>,
) -> Result<SocketGuard> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            anyhow::bail!("another daemon is already listening on {}", path.display());
        }
        std::fs::remove_file(path)
            .with_context(|| format!("cannot remove stale socket {}", path.display()))?;
    }
    let listener = tokio::net::UnixListener::bind(path)
        .with_context(|| format!("cannot listen on {}", path.display()))?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let tx = tx.clone();
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let (r, mut w) = stream.into_split();
                let mut line = String::new();
                if BufReader::new(r).read_line(&mut line).await.is_err() {
                    return;
                }
                let answer = match serde_json::from_str::<Request>(&line) {
                    // Counted here, without the daemon's task: the hook does not wait.
                    Ok(Request::HookDone { hook_op, result }) => {
                        metrics.hook(&hook_op, &result);
                        serde_json::json!({})
                    }
                    Ok(req) => {
                        let (otx, orx) = oneshot::channel();
                        if tx.send(Input::Control(req, otx)).is_err() {
                            return;
                        }
                        orx.await.unwrap_or_default()
                    }
                    Err(e) => serde_json::json!({ "error": format!("bad request: {e}") }),
                };
                let mut out = answer.to_string();
                out.push('\n');
                let _ = w.write_all(out.as_bytes()).await;
            });
        }
    });
    Ok(SocketGuard(path.to_owned()))
}

/// The warnings that persist from pass to pass (an op that keeps failing, a conflict, an
/// unreadable state file, a pass that cannot run): each is logged once when it appears and
/// once when it clears, not at every pass or retry. A broken VM, or a guest that keeps
/// provoking the same failure, must not flood the log at every resync.
#[derive(Debug, Default)]
struct Repeats {
    current: std::collections::BTreeSet<String>,
}

impl Repeats {
    /// Takes the warnings of this pass; logs the new ones (warn) and the cleared ones (info).
    fn update(&mut self, now: impl IntoIterator<Item = String>) -> (usize, usize) {
        let now: std::collections::BTreeSet<String> = now.into_iter().collect();
        let new: Vec<&String> = now.difference(&self.current).collect();
        let gone: Vec<&String> = self.current.difference(&now).collect();
        for p in &new {
            warn!(problem = %p, "problem appeared; retried at every pass, logged again when it clears");
        }
        for p in &gone {
            info!(problem = %p, "problem cleared");
        }
        let counts = (new.len(), gone.len());
        self.current = now;
        counts
    }
}

#[cfg(test)]
mod tests {
    use super::Repeats;

    /// A conflict that lasts for a thousand resyncs is one warning, not a thousand.
    #[test]
    fn a_lasting_problem_is_logged_when_it_appears_and_when_it_clears() {
        let mut r = Repeats::default();
        let p = || ["state: 192.0.2.9 is claimed by two MACs".to_string()];
        assert_eq!(r.update(p()), (1, 0));
        for _ in 0..1000 {
            assert_eq!(r.update(p()), (0, 0));
        }
        assert_eq!(r.update(["op failed: route 192.0.2.9/32: busy".to_string()]), (1, 1));
        assert_eq!(r.update([]), (0, 1));
        assert_eq!(r.update([]), (0, 0));
    }
}
