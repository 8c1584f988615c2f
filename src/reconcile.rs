//! One reconcile pass: read the store, observe the kernel, plan, apply.
//!
//! Contract: [`pass`] (everything) and [`vm_pass`] (one VM's addresses) are the code paths
//! that plan kernel changes from observation. The daemon, the `reconcile` command and the
//! libvirt hook are shells around them; the daemon's quick additions
//! ([`plan::quick_adds`], [`plan::additions`]) only add what the next pass would. A pass
//! re-reads everything (level-triggered); it never trusts what an event said. Both take the
//! kernel as a [`Kernel`] so loop tests can run them against the fake.

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
    /// Apply the routes and neighbours of addresses new since the last pass before
    /// observing the kernel ([`plan::quick_adds`]); for a daemon whose bridge is up.
    pub quick: bool,
}

/// The most addresses [`plan::quick_adds`] handles; a bigger change waits for the full pass.
pub const QUICK_MAX: usize = 64;

#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct Timings {
    pub read_ms: f64,
    /// The quick additions before observing (0 when there were none).
    #[serde(default)]
    pub quick_ms: f64,
    pub observe_ms: f64,
    pub plan_ms: f64,
    pub apply_ms: f64,
    pub total_ms: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Outcome {
    pub plan: Plan,
    /// Ops applied as quick additions before the plan (see [`PassOptions::quick`]).
    pub quick_ops: usize,
    #[serde(serialize_with = "errors_as_strings")]
    pub errors: Vec<OpError>,
    pub vms: usize,
    pub parked: usize,
    pub addresses: usize,
    /// State files that could not be read, as "file: reason".
    pub store_errors: Vec<String>,
    pub conflicts: Vec<String>,
    pub timings: Timings,
    /// hvroute's routes and neighbours in the kernel once the pass's ops are applied.
    #[serde(skip)]
    pub programmed: Programmed,
    /// The desired state the pass worked from (the FRR side advertises its addresses).
    #[serde(skip)]
    pub desired: Option<Arc<Desired>>,
}

/// hvroute's routes and neighbours in the kernel, by family (IPv4, IPv6): what the pass
/// observed, changed by the ops that succeeded (the metrics' `hvroute_routes_programmed`
/// and `hvroute_neighbours_programmed`). Counted without copying the observation: at
/// 10,000 VMs a pass already holds 40,000 observed objects.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Programmed {
    pub routes: [i64; 2],
    pub neighbours: [i64; 2],
}

impl Programmed {
    fn after(o: &plan::Observed, p: &Plan, errors: &[OpError]) -> Programmed {
        use crate::plan::{Op, RouteKey};
        let fam = |a: &std::net::IpAddr| usize::from(a.is_ipv6());
        let br = o.bridge.as_ref().map(|b| b.ifindex);
        let mut c = Programmed::default();
        for r in &o.routes {
            c.routes[fam(&r.addr)] += 1;
        }
        for (a, i) in o.neighs.keys() {
            if Some(*i) == br {
                c.neighbours[fam(a)] += 1;
            }
        }
        let has_route = |a: std::net::IpAddr| {
            let from = RouteKey { addr: a, metric: 0, ifindex: 0 };
            o.routes.range(from..).next().is_some_and(|r| r.addr == a)
        };
        for op in applied(&p.ops, errors) {
            match op {
                Op::ReplaceRoute { addr } if !has_route(*addr) => c.routes[fam(addr)] += 1,
                Op::DelRoute { addr, .. } => c.routes[fam(addr)] -= 1,
                Op::ReplaceNeigh { addr, .. } if br.is_none_or(|b| !o.neighs.contains_key(&(*addr, b))) => {
                    c.neighbours[fam(addr)] += 1
                }
                Op::DelNeigh { addr, ifindex } if Some(*ifindex) == br => c.neighbours[fam(addr)] -= 1,
                _ => {}
            }
        }
        c
    }
}

/// The ops of a plan that did not fail. An op counts as failed when one of the same kind
/// and address failed (for ops without an address: of the same kind), so that this stays
/// linear when thousands of ops fail at once.
pub fn applied<'a>(ops: &'a [plan::Op], errors: &[OpError]) -> impl Iterator<Item = &'a plan::Op> {
    let failed: std::collections::BTreeSet<(&str, Option<std::net::IpAddr>)> =
        errors.iter().map(|e| (e.op.kind(), e.op.addr())).collect();
    ops.iter().filter(move |op| failed.is_empty() || !failed.contains(&(op.kind(), op.addr())))
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
    /// The desired state of the last pass, if any.
    pub fn last(&self) -> Option<Arc<Desired>> {
        self.last.as_ref().map(|(_, _, d)| d.clone())
    }

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
    pass_with(cfg, store, boot_id, kernel, memo, opts, |_| {}).await
}

/// [`pass`], calling `on_desired` once with the desired state, as early as it helps. The
/// daemon tells FRR from there.
/// - A small change in a quick pass (see [`PassOptions::quick`]): right after the quick
///   additions, before the kernel is observed. The new routes already exist, so bgpd's
///   import-check lets the new lines out at once, while the full pass goes on.
/// - Otherwise after the kernel work. At 10,000 VMs, 20,000 `network` lines sent while
///   zebra is still taking in 40,000 routes and neighbours cost bgpd two to four times
///   as long (measured: a cold start's FRR sync took 5.3 to 9.8 s beside the kernel
///   pass, against 2.2 to 5.1 s after it).
pub async fn pass_with<K: Kernel>(
    cfg: &Config,
    store: &Store,
    boot_id: &str,
    kernel: &mut K,
    memo: &mut Memo,
    opts: PassOptions,
    on_desired: impl FnOnce(&Arc<Desired>),
) -> Result<Outcome, PassError> {
    let t0 = Instant::now();
    // Shared with other passes, exclusive of writers: a hook that writes its entry and
    // programs the kernel under the store lock is never undone by this pass.
    let _read_lock = store.read_lock()?;
    let snap = store.load()?;
    let prev = memo.last();
    let desired = memo.desired(cfg, &snap, boot_id);
    let read_ms = ms(t0);

    // A VM just added: its route first, so that import-check can advertise it while the
    // full pass is still observing 40,000 objects.
    let t = Instant::now();
    let mut quick_ops = 0;
    let mut on_desired = Some(on_desired);
    if opts.quick
        && !opts.dry_run
        && let Some(q) =
            prev.as_ref().and_then(|p| plan::quick_adds(p, &desired, cfg.route_protocol, QUICK_MAX))
    {
        if !q.is_empty() {
            // Failures are left to the full pass below, which plans from what it observes.
            let failed = kernel.apply(&q).await.len();
            quick_ops = q.ops.len() - failed;
        }
        if let Some(f) = on_desired.take() {
            f(&desired);
        }
    }
    let quick_ms = ms(t);

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
    let programmed = Programmed::after(&observed, &p, &errors);
    if !opts.dry_run
        && let Some(f) = on_desired.take()
    {
        f(&desired);
    }

    Ok(Outcome {
        plan: p,
        quick_ops,
        errors,
        vms: snap.vms.len(),
        parked: desired.parked.len(),
        addresses: desired.addrs.len(),
        store_errors: snap.errors.iter().map(|(f, r)| format!("{f}: {r}")).collect(),
        conflicts: desired.conflicts.clone(),
        desired: Some(desired.clone()),
        programmed,
        timings: Timings { read_ms, quick_ms, observe_ms, plan_ms, apply_ms, total_ms: ms(t0) },
    })
}

/// The pass for one VM's addresses (the libvirt hook's `started` and `release`, in the hook
/// itself or handed to the daemon): observe `addrs` only ([`Kernel::observe_addrs`]), plan
/// with [`plan::plan_vm`], apply. Fails when any op fails; returns the plan (why route work
/// waits, deletions held back).
pub async fn vm_pass<K: Kernel>(
    kernel: &mut K,
    desired: &Desired,
    addrs: &std::collections::BTreeSet<std::net::IpAddr>,
    create_bridge: bool,
    proto: u8,
) -> anyhow::Result<Plan> {
    let t = Instant::now();
    let o = kernel.observe_addrs(desired, addrs).await?;
    let p = plan::plan_vm(desired, &o, addrs, create_bridge, proto);
    tracing::debug!(observe_ms = ms(t), ops = p.ops.len(), "plan for one VM");
    if !p.is_empty() {
        let errors = kernel.apply(&p).await;
        if let Some(first) = errors.first() {
            anyhow::bail!("{} of {} kernel ops failed; first: {first}", errors.len(), p.ops.len());
        }
    }
    Ok(p)
}
