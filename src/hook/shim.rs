//! The CloudStack entry point: `hvroute shim add|delete`, which
//! `scripts/cloudstack/modifymacip.sh` runs for CloudStack's
//! `modifymacip.sh -o add|delete -b BRIDGE -m MAC [-4 IP]... [-6 IP]...` on every NIC plug
//! and unplug (`vm.network.macip.static=true`).
//!
//! Contract (design.md §3, issue 4):
//! - A shim entry is named after its NIC (`nic-` and the MAC with dashes), source `shim`,
//!   with this boot's id: volatile intent, parked after a reboot like the hook's.
//! - It identifies the NIC by (bridge, MAC). NICs on another bridge are not hvroute's:
//!   exit 0, nothing done. The same MAC with the same addresses from the hook is the same
//!   NIC, never a conflict; only an address another MAC holds is refused (exit 2).
//! - It shares the state of the hook's view of the same NIC ([`crate::plan::Desired`]):
//!   held while an incoming migration is recorded for it, routed (and de-preferred while
//!   arriving) once the hook's `started` ran. With no hook entry for the NIC, it is
//!   routed while its tap (libvirt's tap MAC, `fe:` + the MAC's last five octets) is a
//!   port of the bridge, which is how it works on hosts without the hook.
//! - When the command returns, the kernel holds what that means for the NIC's addresses,
//!   whether or not the daemon runs; FRR is the daemon's, as for the hook.
//! - `delete` of an unknown NIC exits 0 (CloudStack retries and replays).

use std::collections::BTreeSet;
use std::net::IpAddr;

use anyhow::Result;
use clap::{Args, Subcommand};

use super::ops::{addrs_of, check, lock, program, warn_waiting};
use crate::config::Config;
use crate::model::{self, HostAddr, Invalid, Mac, Nic, Source, VmName, VmSpec};
use crate::plan::Desired;

#[derive(Subcommand)]
pub enum ShimCmd {
    /// A NIC was plugged: record its (bridge, MAC) and addresses.
    #[command(after_help = "\
Run by scripts/cloudstack/modifymacip.sh for CloudStack's `-o add`. A NIC on another bridge
than bridge.name is not hvroute's: exit 0, nothing done. Exit codes: 0 ok, 2 invalid or
conflicting input (the state is unchanged), 1 runtime failure. See docs/cloudstack.md.")]
    Add(ShimArgs),
    /// A NIC was unplugged: forget it and withdraw what no other entry wants.
    Delete(ShimArgs),
}

#[derive(Args)]
pub struct ShimArgs {
    /// The bridge CloudStack plugs the NIC into.
    #[arg(long, value_name = "BRIDGE")]
    pub bridge: String,
    /// The NIC's MAC.
    #[arg(long, value_name = "MAC")]
    pub mac: String,
    /// An address of the NIC (IPv4 or IPv6; repeat for several). Ignored by delete.
    #[arg(long = "ip", value_name = "ADDR")]
    pub ips: Vec<String>,
}

/// The name of the shim's entry for the NIC with this MAC.
pub fn entry_name(mac: Mac) -> VmName {
    format!("nic-{}", mac.to_string().replace(':', "-")).parse().expect("a MAC makes a valid name")
}

pub fn run(cfg: &Config, cmd: ShimCmd) -> Result<()> {
    match cmd {
        ShimCmd::Add(a) => add(cfg, &a),
        ShimCmd::Delete(a) => delete(cfg, &a),
    }
}

/// Parses the NIC; `None` when it is on another bridge.
fn nic_of(cfg: &Config, a: &ShimArgs, with_ips: bool) -> Result<Option<Nic>, Invalid> {
    let mac: Mac = a.mac.parse()?;
    if a.bridge != cfg.bridge.name.as_str() {
        eprintln!("hvroute: NIC {mac} is on bridge {:?}, not {}; nothing to do", a.bridge, cfg.bridge.name);
        return Ok(None);
    }
    let mut addresses = BTreeSet::new();
    for ip in a.ips.iter().filter(|_| with_ips) {
        let addr: HostAddr = ip.parse()?;
        model::check_addr(cfg, addr)?;
        if !addresses.insert(addr) {
            return Err(Invalid(format!("address {addr} is given twice")));
        }
    }
    Ok(Some(Nic { mac, addresses, port: None }))
}

fn add(cfg: &Config, a: &ShimArgs) -> Result<()> {
    let Some(nic) = nic_of(cfg, a, true)? else { return Ok(()) };
    let name = entry_name(nic.mac);
    if nic.addresses.is_empty() {
        // CloudStack plugs NICs without a static address too: nothing to route.
        eprintln!("hvroute: NIC {} has no address; nothing to do", nic.mac);
        return Ok(());
    }
    let boot_id = cfg.boot_id()?;
    let l = lock(cfg)?;
    let mut snap = l.snapshot()?;
    let vm = VmSpec {
        name: name.clone(),
        nics: vec![nic],
        source: Source::Shim,
        boot_id: Some(boot_id.clone()),
        migration: None,
    };
    let mut addrs: BTreeSet<IpAddr> = addrs_of(&vm).collect();
    if let Some(old) = snap.vms.get(&name) {
        addrs.extend(addrs_of(old));
    }
    check(&vm, &snap, &boot_id)?;
    if snap.vms.get(&name).map(|v| &**v) != Some(&vm) {
        l.store.put(&l.lock, &vm)?;
    }
    snap.vms.insert(name.clone(), vm.into());
    let d = Desired::build(cfg, &snap, &boot_id);
    warn_waiting(&name, program(cfg, &d, &addrs, false)?);
    Ok(())
}

fn delete(cfg: &Config, a: &ShimArgs) -> Result<()> {
    let Some(nic) = nic_of(cfg, a, false)? else { return Ok(()) };
    let name = entry_name(nic.mac);
    let l = lock(cfg)?;
    let Some(old) = l.store.get(&name)?.filter(|v| v.source == Source::Shim) else {
        eprintln!("hvroute: NIC {} is not known; nothing to do", nic.mac);
        return Ok(());
    };
    l.store.remove(&l.lock, &name)?;
    let boot_id = cfg.boot_id()?;
    let d = Desired::build(cfg, &l.snapshot()?, &boot_id);
    let gone: BTreeSet<IpAddr> = addrs_of(&old).filter(|a| !d.addrs.contains_key(a)).collect();
    if !gone.is_empty() {
        program(cfg, &d, &gone, false)?;
    }
    Ok(())
}
