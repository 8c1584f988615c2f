//! One reconcile pass: read the store, observe the kernel, plan, apply.
//!
//! Contract: the pass is the only code path that changes the kernel. The daemon, the
//! `reconcile` command and (later) the hook are shells around it. A pass re-reads
//! everything (level-triggered); it never trusts what an event said. It takes the
//! kernel as a [`Kernel`] so loop tests can run it against the fake.

use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use crate::config::Config;
use crate::kernel::{Kernel, OpError};
use crate::plan::{self, Desired, Options, Plan};
use crate::store::{Snapshot, Store};

#[derive(Debug, Clone, Copy, Default)]
pub struct PassOptions {
    pub bring_up: bool,
    /// Check that the bridge may be taken over (ports and addresses), unless forced.
    pub check_takeover: bool,
    pub force: bool,
    pub dry_run: bool,
}

#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct Timings {
    pub read_ms: f64,
    pub observe_ms: f64,
    pub plan_ms: f64,
    pub apply_ms: f64,
    pub total_ms: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Outcome {
    pub plan: Plan,
    #[serde(serialize_with = "errors_as_strings")]
    pub errors: Vec<OpError>,
    pub vms: usize,
    pub parked: usize,
    pub addresses: usize,
    /// State files that could not be read, as "file: reason".
    pub store_errors: Vec<String>,
    pub conflicts: Vec<String>,
    pub timings: Timings,
    /// The desired state the pass worked from (the FRR side advertises its addresses).
    #[serde(skip)]
    pub desired: Option<Arc<Desired>>,
}

fn errors_as_strings<S: serde::Serializer>(e: &[OpError], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(e.iter().map(|e| e.to_string()))
}

#[derive(Debug, thiserror::Error)]
pub enum PassError {
    /// The bridge belongs to someone else; exit 2 unless `--force`.
    #[error("refusing to take over {}; use --force to take it anyway", .0.join("; "))]
    Refused(Vec<String>),
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

/// The desired state of the last pass, reused while the store returns the same snapshot
/// (the store re-validates it every pass) and the boot id is the same.
#[derive(Default)]
pub struct Memo {
    last: Option<(Arc<Snapshot>, String, Arc<Desired>)>,
}

impl Memo {
    fn desired(&mut self, cfg: &Config, snap: &Arc<Snapshot>, boot_id: &str) -> Arc<Desired> {
        if let Some((s, b, d)) = &self.last
            && Arc::ptr_eq(s, snap)
            && b == boot_id
        {
            return d.clone();
        }
        let d = Arc::new(Desired::build(cfg, snap, boot_id));
        self.last = Some((snap.clone(), boot_id.to_owned(), d.clone()));
        d
    }
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

pub async fn pass<K: Kernel>(
    cfg: &Config,
    store: &Store,
    boot_id: &str,
    kernel: &mut K,
    memo: &mut Memo,
    opts: PassOptions,
) -> Result<Outcome, PassError> {
    let t0 = Instant::now();
    // Shared with other passes, exclusive of writers: a hook that writes its entry and
    // programs the kernel under the store lock is never undone by this pass.
    let _read_lock = store.read_lock()?;
    let snap = store.load()?;
    let desired = memo.desired(cfg, &snap, boot_id);
    let read_ms = ms(t0);

    let t = Instant::now();
    let observed = kernel.observe(&desired).await?;
    let observe_ms = ms(t);

    if opts.check_takeover && !opts.force {
        let why = plan::takeover_refusals(&desired, &observed);
        if !why.is_empty() {
            return Err(PassError::Refused(why));
        }
    }

    let t = Instant::now();
    let p = plan::plan(&desired, &observed, Options { bring_up: opts.bring_up }, cfg.route_protocol);
    let plan_ms = ms(t);

    let t = Instant::now();
    let errors = if opts.dry_run || p.is_empty() { Vec::new() } else { kernel.apply(&p).await };
    let apply_ms = ms(t);

    Ok(Outcome {
        plan: p,
        errors,
        vms: snap.vms.len(),
        parked: desired.parked.len(),
        addresses: desired.addrs.len(),
        store_errors: snap.errors.iter().map(|(f, r)| format!("{f}: {r}")).collect(),
        conflicts: desired.conflicts.clone(),
        desired: Some(desired.clone()),
        timings: Timings { read_ms, observe_ms, plan_ms, apply_ms, total_ms: ms(t0) },
    })
}
