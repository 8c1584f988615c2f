//! What each hook op does to the state dir and the kernel: the hook's imperative shell.
//!
//! Contract:
//! - Every op that reads or changes the state dir or the kernel does it under the state
//!   dir's exclusive lock, from the read to the last kernel op. Concurrent hooks (libvirt
//!   starting 50 VMs at once) therefore see each other's entries, never create the
//!   bridge twice, and never race a pass (passes hold the lock shared).
//! - The hook owns only entries with source `hook`. An entry of the same name from `vm
//!   add` (source `cli`, admin intent) or the shim is never rewritten or removed; its
//!   addresses are what the hook programs and keeps.
//! - Kernel changes go through [`crate::plan::plan_vm`] (through [`crate::reconcile::vm_pass`]): only this VM's addresses (those it has
//!   and those it had), and a missing bridge at `prepare` and `started`. Deletions are of
//!   owned objects that no entry in the store wants any more.
//! - Refusals are [`Invalid`] (exit 2); everything else is a runtime failure (exit 1).
//!   The caller turns both into exit 0 for the ops that must exit 0.
//!
//! Extension points:
//! - Live migration (design.md §5): [`migrate`] records [`Migration::Incoming`] (held, not
//!   routed); [`started`] turns it into [`Migration::Arriving`] (routed, advertised
//!   de-preferred by the daemon). The daemon moves it to `Arrived` when the guest
//!   announces itself here and back to no migration state after the settling window;
//!   `release` on a failed migration removes the entry like any release.
//! - CloudStack shim: its entries describe the same NICs by (bridge, MAC); merging them
//!   with the hook's view belongs to the shim's issue. Until then the hook leaves a shim
//!   entry of the same name alone, as it leaves a `cli` one.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};

use super::Input;
use super::domain::{self, HookView};
use crate::config::Config;
use crate::configdrive::{self, DriveNic};
use crate::control::{self, HookReply, Request};
use crate::kernel::netlink::Netlink;
use crate::model::{self, Invalid, Migration, Source, VmName, VmSpec};
use crate::plan::Desired;
use crate::store::{Snapshot, Store, WriteLock};

/// The domain, when hvroute has something to do with it, with the configuration and
/// the validated name. The configuration is needed only then: a broken config file
/// never stops a VM that has nothing for hvroute.
///
/// A NIC on the managed bridge that the metadata does not name takes its addresses from
/// the domain's `config-2` ConfigDrive (design.md §4). Drives are read only when such a
/// NIC exists; a cdrom that is not a ConfigDrive is passed over quietly, and a ConfigDrive
/// that cannot be read is logged and its NICs are left to the other sources.
fn managed(
    cfg: Result<Config, Invalid>,
    name: &str,
    input: &Input,
) -> Result<Option<(Config, VmName, HookView)>> {
    let dom = domain::parse(input.xml()?)?;
    if !dom.is_managed() && dom.cdroms.is_empty() {
        return Ok(None);
    }
    let cfg = match cfg {
        Ok(c) => c,
        Err(e) if !dom.is_managed() => {
            // Only a cdrom, which may be a ConfigDrive: never stop a VM over a broken
            // config unless its XML names hvroute.
            eprintln!("hvroute: warning: VM {name}: its ConfigDrive is not read: {e}");
            return Ok(None);
        }
        Err(e) => return Err(e.into()),
    };
    let name: VmName = name.parse()?;
    let mut view = domain::spec(&dom, &name, &cfg)?;
    let unnamed = match &view {
        None => true,
        Some(v) => !v.unaddressed.is_empty(),
    };
    if unnamed && !dom.cdroms.is_empty() {
        let drive = drive_nics(&name, &dom.cdroms);
        if !drive.is_empty() {
            view = domain::spec_with_drive(&dom, &name, &cfg, &drive)?;
        }
    }
    let Some(view) = view else { return Ok(None) };
    for mac in &view.unaddressed {
        eprintln!(
            "hvroute: warning: VM {name}: the NIC with MAC {mac} on {} has no hvroute metadata and no \
             address on a ConfigDrive, so it is left to `hvroute vm add` or the CloudStack shim",
            cfg.bridge.name
        );
    }
    Ok(Some((cfg, name, view)))
}

/// The NICs of the first `config-2` drive among the domain's cdroms; empty when there is
/// none or it cannot be read (logged).
fn drive_nics(name: &VmName, cdroms: &[String]) -> Vec<DriveNic> {
    for path in cdroms {
        match configdrive::network_of(std::path::Path::new(path)) {
            Ok(None) => continue,
            Ok(Some(nics)) => return nics,
            Err(e) => {
                eprintln!(
                    "hvroute: warning: VM {name}: ConfigDrive {path}: {e:#}; its NICs are left to the other sources"
                );
                return Vec::new();
            }
        }
    }
    Vec::new()
}

/// The entry the hook records for this VM now.
fn entry(name: &VmName, view: &HookView, boot_id: &str, migration: Option<Migration>) -> VmSpec {
    VmSpec {
        name: name.clone(),
        nics: view.nics.clone(),
        source: Source::Hook,
        boot_id: Some(boot_id.to_owned()),
        migration,
    }
}

/// The state dir, locked.
pub(super) struct Locked {
    pub(super) store: Store,
    pub(super) lock: WriteLock,
}

impl Locked {
    /// Everything the state dir holds now.
    pub(super) fn snapshot(&self) -> Result<Snapshot> {
        Ok((*self.store.load()?).clone())
    }
}

pub(super) fn lock(cfg: &Config) -> Result<Locked> {
    let store = Store::open(&cfg.state_dir)?;
    let lock = store.lock()?;
    Ok(Locked { store, lock })
}

pub fn addrs_of(vm: &VmSpec) -> impl Iterator<Item = IpAddr> + '_ {
    vm.addresses().map(|(_, a)| a.0)
}

/// Refuses an address another VM on this host holds with a different MAC.
pub(super) fn check(vm: &VmSpec, snap: &Snapshot, boot_id: &str) -> Result<(), Invalid> {
    model::check_conflicts(vm, snap.vms.values().map(|v| &**v), boot_id)
}

/// Another writer's entry under this VM's name: left as it is.
fn foreign(snap: &Snapshot, name: &VmName) -> Option<Arc<VmSpec>> {
    snap.vms.get(name).filter(|e| e.source != Source::Hook).cloned()
}

/// Observes the kernel and applies [`plan::plan_vm`] for `addrs`. Returns why route work
/// waits, if it does (the bridge is down).
pub(super) fn program(
    cfg: &Config,
    d: &Desired,
    addrs: &BTreeSet<IpAddr>,
    create_bridge: bool,
) -> Result<Option<String>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    rt.block_on(async {
        let mut k = Netlink::connect(cfg.bridge.name.as_str(), cfg.route_protocol)?;
        let p = crate::reconcile::vm_pass(&mut k, d, addrs, create_bridge, cfg.route_protocol).await?;
        if p.held_deletions > 0 {
            eprintln!(
                "hvroute: warning: {} deletions held back: a state file is unreadable (see `hvroute status`)",
                p.held_deletions
            );
        }
        Ok(p.waiting)
    })
}

pub(super) fn warn_waiting(name: &VmName, waiting: Option<String>) {
    if let Some(w) = waiting {
        eprintln!("hvroute: warning: VM {name} is recorded, but its routes wait: {w}");
    }
}

/// `prepare begin`: validate against the configuration and the other VMs; create the
/// bridge if it is missing. Writes no entry.
pub fn prepare(cfg: Result<Config, Invalid>, name: &str, input: &Input) -> Result<()> {
    let Some((cfg, name, view)) = managed(cfg, name, input)? else { return Ok(()) };
    let boot_id = cfg.boot_id()?;
    let l = lock(&cfg)?;
    let snap = l.snapshot()?;
    check(&entry(&name, &view, &boot_id, None), &snap, &boot_id)?;
    let d = Desired::build(&cfg, &snap, &boot_id);
    program(&cfg, &d, &BTreeSet::new(), true).context("cannot create the bridge")?;
    drop(l);
    Ok(())
}

/// `started begin` (and `reconnect begin`): record the entry, then program the VM's
/// routes and neighbours. When this returns `Ok`, they exist (unless the admin has the
/// bridge down, which is said on stderr).
pub fn started(cfg: Result<Config, Invalid>, name: &str, input: &Input) -> Result<()> {
    let Some((cfg, name, view)) = managed(cfg, name, input)? else { return Ok(()) };
    assert_view_anywhere(&cfg, &name, &view)
}

/// [`assert_view`] by a running daemon when one answers (it holds every VM in memory, so
/// the hook reads no state file), else here.
fn assert_view_anywhere(cfg: &Config, name: &VmName, view: &HookView) -> Result<()> {
    let req = Request::HookStarted { name: name.clone(), nics: view.nics.clone() };
    if via_daemon(cfg, name, req)? {
        return Ok(());
    }
    assert_view(cfg, name, view)
}

/// How long the hook waits for a daemon's answer before doing the op itself.
const DAEMON_WAIT: Duration = Duration::from_secs(3);

/// Hands an op to a running daemon. `Ok(true)`: it is done. `Ok(false)`: no daemon
/// answers, or it could not do it: the caller does it here (every op is idempotent, so a
/// daemon that died half-way is no harm). A refusal is the daemon's [`Invalid`].
fn via_daemon(cfg: &Config, name: &VmName, req: Request) -> Result<bool> {
    let reply = match control::request::<HookReply>(&cfg.socket, req, DAEMON_WAIT) {
        Ok(Some(r)) => r,
        Ok(None) => return Ok(false),
        Err(e) => {
            tracing::debug!(error = %format!("{e:#}"), "no answer from the daemon; the hook does it itself");
            return Ok(false);
        }
    };
    if let Some(w) = &reply.warning {
        eprintln!("hvroute: warning: {w}");
    }
    if let Some(why) = reply.invalid {
        return Err(Invalid(why).into());
    }
    if let Some(e) = reply.error {
        tracing::debug!(error = %e, "the daemon could not; the hook does it itself");
        return Ok(false);
    }
    warn_waiting(name, reply.waiting);
    Ok(true)
}

/// What `started` (and `reconnect`) records for a VM whose domain shows NICS: the hook's
/// entry (`None` when another source's entry of that name stays as it is), the addresses
/// to program (the VM's, and those it had), and a warning for the admin. Pure: the hook
/// and the daemon (when the hook hands `started` to it) decide alike.
pub fn started_decision(
    name: &VmName,
    nics: &[crate::model::Nic],
    existing: Option<&VmSpec>,
    boot_id: &str,
) -> (Option<VmSpec>, BTreeSet<IpAddr>, Option<String>) {
    let mut addrs: BTreeSet<IpAddr> = nics.iter().flat_map(|n| n.addresses.iter().map(|a| a.0)).collect();
    match existing {
        Some(e) if e.source != Source::Hook => {
            let mine: BTreeSet<IpAddr> = addrs_of(e).collect();
            let warning = (mine != addrs).then(|| {
                format!(
                    "VM {name} is in the state dir from source {} with other addresses; \
                     the hook leaves that entry as it is and programs what it says",
                    e.source
                )
            });
            addrs.extend(mine);
            (None, addrs, warning)
        }
        _ => {
            let migration = match existing {
                Some(e) if e.boot_id.as_deref() == Some(boot_id) => match e.migration {
                    Some(Migration::Incoming | Migration::Arriving) => Some(Migration::Arriving),
                    // Re-asserted (`reconnect`) after the guest arrived: keep its window.
                    arrived @ Some(Migration::Arrived { .. }) => arrived,
                    None => None,
                },
                _ => None,
            };
            let vm = VmSpec {
                name: name.clone(),
                nics: nics.to_vec(),
                source: Source::Hook,
                boot_id: Some(boot_id.to_owned()),
                migration,
            };
            if let Some(e) = existing {
                addrs.extend(addrs_of(e));
            }
            (Some(vm), addrs, None)
        }
    }
}

fn assert_view(cfg: &Config, name: &VmName, view: &HookView) -> Result<()> {
    let boot_id = cfg.boot_id()?;
    let t = std::time::Instant::now();
    let l = lock(cfg)?;
    let mut snap = l.snapshot()?;
    let read_ms = t.elapsed().as_secs_f64() * 1e3;
    let existing = snap.vms.get(name).cloned();
    let (vm, addrs, warning) = started_decision(name, &view.nics, existing.as_deref(), &boot_id);
    if let Some(w) = warning {
        eprintln!("hvroute: warning: {w}");
    }
    if let Some(vm) = vm {
        check(&vm, &snap, &boot_id)?;
        let t = std::time::Instant::now();
        if existing.as_deref() != Some(&vm) {
            l.store.put(&l.lock, &vm)?;
        }
        tracing::debug!(read_ms, put_ms = t.elapsed().as_secs_f64() * 1e3, "hook store");
        snap.vms.insert(name.clone(), Arc::new(vm));
    }
    let t = std::time::Instant::now();
    let d = Desired::build(cfg, &snap, &boot_id);
    tracing::debug!(desired_ms = t.elapsed().as_secs_f64() * 1e3, "hook desired");
    warn_waiting(name, program(cfg, &d, &addrs, true)?);
    drop(l);
    Ok(())
}

/// `reconnect begin` (libvirtd restarted; the VM runs): re-assert as `started` does. With
/// an unusable XML, the VM's own hook entry, if any, is re-asserted instead.
pub fn reconnect(cfg: Result<Config, Invalid>, name: &str, input: &Input) -> Result<()> {
    let problem = match managed(cfg.clone(), name, input) {
        Ok(None) => return Ok(()),
        Ok(Some((cfg, name, view))) => return assert_view_anywhere(&cfg, &name, &view),
        Err(e) => e,
    };
    let (Ok(cfg), Ok(vm_name)) = (cfg, name.parse::<VmName>()) else { return Err(problem) };
    let Some(e) = Store::at(&cfg.state_dir).get(&vm_name).ok().flatten().filter(|e| e.source == Source::Hook)
    else {
        return Err(problem);
    };
    eprintln!("hvroute: warning: VM {vm_name}: {problem:#}; re-asserting its recorded entry instead");
    let view = HookView { nics: e.nics.clone(), ..HookView::default() };
    assert_view(&cfg, &vm_name, &view)
}

/// `stopped end` and `release end`: remove the VM's hook entry and withdraw the kernel
/// objects of its addresses (recorded, and named by the XML when it is readable) that no
/// other entry wants.
pub fn release(cfg: Result<Config, Invalid>, name: &str, input: &Input) -> Result<()> {
    // Nothing can be stored under a name that is not a valid VM name.
    let Ok(name) = name.parse::<VmName>() else { return Ok(()) };
    // The XML is optional here: the entry says what to withdraw.
    let dom = input.xml().ok().and_then(|x| domain::parse(x).ok()).filter(|d| d.name == name.as_str());
    let from_xml: BTreeSet<IpAddr> =
        dom.as_ref().map(|d| d.meta_addresses().into_iter().map(|a| a.0).collect()).unwrap_or_default();
    let cfg = match cfg {
        Ok(c) => c,
        // A domain without hvroute metadata is no concern of a broken config.
        Err(_) if dom.as_ref().is_some_and(|d| !d.is_managed()) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    if via_daemon(&cfg, &name, Request::HookRelease { name: name.clone(), addrs: from_xml.clone() })? {
        return Ok(());
    }
    let boot_id = cfg.boot_id();
    let l = lock(&cfg)?;
    let mut addrs = from_xml;
    // An unreadable file of this name means "VM in error": it stays, and so do its routes.
    let own = l.store.get(&name)?.filter(|e| e.source == Source::Hook);
    if own.is_none() && addrs.is_empty() {
        // The common case of a VM hvroute never knew: one stat, no full read.
        return Ok(());
    }
    if let Some(e) = &own {
        l.store.remove(&l.lock, &name)?;
        addrs.extend(addrs_of(e));
    }
    let boot_id = boot_id?;
    let d = Desired::build(&cfg, &l.snapshot()?, &boot_id);
    addrs.retain(|a| !d.addrs.contains_key(a));
    if !addrs.is_empty() {
        program(&cfg, &d, &addrs, false)?;
    }
    drop(l);
    Ok(())
}

/// `migrate begin` on the destination: record the incoming migration. The entry holds
/// the VM's addresses against other VMs but is not routed until `started`. Ports are
/// dropped: the XML names the source's taps.
pub fn migrate(cfg: Result<Config, Invalid>, name: &str, input: &Input) -> Result<()> {
    let Some((cfg, name, mut view)) = managed(cfg, name, input)? else { return Ok(()) };
    view.nics.iter_mut().for_each(|n| n.port = None);
    let boot_id = cfg.boot_id()?;
    let l = lock(&cfg)?;
    let snap = l.snapshot()?;
    if let Some(e) = foreign(&snap, &name) {
        eprintln!(
            "hvroute: warning: VM {name} is in the state dir from source {}; the hook records no incoming migration for it",
            e.source
        );
        return Ok(());
    }
    let vm = entry(&name, &view, &boot_id, Some(Migration::Incoming));
    check(&vm, &snap, &boot_id)?;
    l.store.put(&l.lock, &vm)?;
    drop(l);
    Ok(())
}
