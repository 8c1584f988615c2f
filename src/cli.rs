//! The command line (design.md §4): parse, run, map errors to exit codes.
//!
//! Contract: exit 0 ok, 1 runtime failure, 2 usage or invalid input. Errors go to stderr
//! as one sentence naming the bad value; nothing prints a stack trace. Invalid input is
//! rejected before the store is touched, so a refused command leaves the state dir
//! byte-identical. Commands that change the store poke a running daemon so the change
//! lands at once; without a daemon the change waits for the next pass.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use serde::Serialize;

use crate::config::{self, Config};
use crate::control::{self, DaemonStatus, PassSummary, Request, VmReply};
use crate::kernel::Kernel;
use crate::kernel::netlink::Netlink;
use crate::model::{self, HostAddr, IfName, Invalid, Mac, Nic, Source, VmName, VmSpec};
use crate::plan::{self, Desired, Options};
use crate::reconcile::{self, PassError, PassOptions};
use crate::store::{Change, Store};

const AFTER_HELP: &str = "\
Exit codes: 0 ok, 1 runtime failure, 2 usage or invalid input.

Examples:
  hvroute vm add web1 --mac 52:54:00:12:34:56 --ip 192.0.2.29 --ip 2001:db8:103::100
  hvroute vm add db1 --nic mac=52:54:00:00:00:01,ip=192.0.2.30 --nic mac=52:54:00:00:00:02,ip=2001:db8:103::7
  hvroute reconcile --dry-run     show what a pass would change
  hvroute status                  desired state against the kernel
  hvroute hook install            let libvirt's qemu hook route every VM with hvroute metadata
  hvroute configdrive build --name web1 --mac 52:54:00:12:34:56 --ip 192.0.2.29 --out web1.iso";

#[derive(Parser)]
#[command(
    name = "hvroute",
    version,
    about = "Route each VM's /32 and /128 from the hypervisor's bridge: pure L3, no VLAN, no DHCP.",
    after_help = AFTER_HELP
)]
pub struct Cli {
    /// Configuration file.
    #[arg(long, global = true, value_name = "FILE", default_value = config::DEFAULT_PATH)]
    pub config: PathBuf,
    /// How log lines on stderr look: `text` for people, `json` (one object per line) for
    /// journald, Loki or jq. RUST_LOG sets the level (the daemon logs at info, other
    /// commands at warn).
    #[arg(long, global = true, value_enum, value_name = "FORMAT", default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub cmd: Cmd,
}

/// `--log-format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Run the reconciler in the foreground: watch the state dir and the kernel, repair
    /// drift, resync periodically. Stopping it leaves routes in place.
    Daemon {
        /// Take over a bridge that has non-VM ports or foreign addresses.
        #[arg(long)]
        force: bool,
    },
    /// Run one reconcile pass without a daemon.
    Reconcile {
        /// Print the plan and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Take over a bridge that has non-VM ports or foreign addresses.
        #[arg(long)]
        force: bool,
        /// Print the plan, outcome and timings as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Add, remove and list VMs (admin intent; persists across reboots).
    #[command(subcommand)]
    Vm(VmCmd),
    /// Desired state against the kernel, per VM and address, and the daemon's health.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// FRR's config for this host: print it, or put it in place once at install time.
    #[command(subcommand)]
    Frr(FrrCmd),
    /// The libvirt qemu hook, and its installation (docs/libvirt.md).
    #[command(subcommand)]
    Hook(crate::hook::HookCmd),
    /// CloudStack's NIC plug and unplug, as scripts/cloudstack/modifymacip.sh hands them
    /// over (docs/cloudstack.md).
    #[command(subcommand)]
    Shim(crate::hook::shim::ShimCmd),
    /// Build and read the ConfigDrives that configure routed guests (docs/configdrive.md).
    /// Needs no config file and no daemon.
    #[command(subcommand, name = "configdrive")]
    Configdrive(crate::configdrive::cmd::ConfigDriveCmd),
    /// Print a shell completion script for hvroute, generated from these definitions.
    /// Needs no config file.
    #[command(after_help = "\
The Debian package installs them already. By hand:
  hvroute completions bash > /etc/bash_completion.d/hvroute
  hvroute completions zsh > /usr/local/share/zsh/site-functions/_hvroute")]
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page hvroute(1) in roff, or write one page per command to DIR.
    /// For packaging (scripts/package.sh).
    #[command(hide = true)]
    Man {
        /// Write hvroute.1, hvroute-vm.1, hvroute-vm-add.1 ... into DIR instead.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
pub enum FrrCmd {
    /// Print the full frr.conf for this host: BGP session, policies, and a `network` line
    /// for each current VM address and loopback.
    Render,
    /// Show how frr.config_file and FRR's daemons file would change; --write changes them.
    #[command(
        after_help = "With --write, each changed file is first copied to FILE.hvroute-bak-<UTC time>, then replaced\natomically. FRR reads frr.conf only when it starts: restart FRR afterwards.\nThis is for installation: in operation hvroute edits FRR's running config and FRR saves it."
    )]
    Bootstrap {
        /// Write frr.conf (keeping a backup) and set bgpd=yes in FRR's daemons file.
        #[arg(long)]
        write: bool,
    },
}

#[derive(Subcommand)]
pub enum VmCmd {
    /// Add a VM. The same spec again is a no-op; a different one needs --replace.
    #[command(
        after_help = "A NIC is --mac with its --ip (and --port), or one --nic each. The first NIC is the primary one.\nAddresses are host addresses: a /32 or /128 suffix is accepted, no other length."
    )]
    Add(AddArgs),
    /// Remove a VM. Removing an unknown VM succeeds and says so.
    Del { name: String },
    /// List the VMs in the state dir.
    List {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
pub struct AddArgs {
    /// VM name: 1-64 of A-Z a-z 0-9 . _ - (CloudStack's i-2-10-VM is fine).
    pub name: String,
    /// MAC of the VM's NIC (shorthand for one --nic).
    #[arg(long)]
    pub mac: Option<String>,
    /// Address of that NIC; repeat for more.
    #[arg(long = "ip", value_name = "ADDR")]
    pub ips: Vec<String>,
    /// Bridge port (tap) of that NIC.
    #[arg(long, value_name = "IFNAME")]
    pub port: Option<String>,
    /// A NIC: mac=MAC,ip=ADDR[,ip=ADDR...][,port=IFNAME]; repeat for more NICs.
    #[arg(long = "nic", value_name = "SPEC")]
    pub nics: Vec<String>,
    /// Replace an existing VM of that name with this spec.
    #[arg(long)]
    pub replace: bool,
}

pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return e.exit_code();
        }
    };
    let format = cli.log_format;
    init_logging(matches!(cli.cmd, Cmd::Daemon { .. }), format);
    match run(cli) {
        Ok(()) => 0,
        Err(e) => {
            let code = exit_code(&e);
            match format {
                LogFormat::Text => eprintln!("hvroute: {e:#}"),
                // The one sentence, as a log object a collector can parse like the rest.
                LogFormat::Json => tracing::error!(exit_code = code, "{e:#}"),
            }
            code
        }
    }
}

fn exit_code(e: &anyhow::Error) -> i32 {
    let usage = e
        .chain()
        .any(|c| c.is::<Invalid>() || matches!(c.downcast_ref::<PassError>(), Some(PassError::Refused(_))));
    if usage { 2 } else { 1 }
}

fn init_logging(daemon: bool, format: LogFormat) {
    let default = if daemon { "info" } else { "warn" };
    // The final error is always shown, whatever RUST_LOG says.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default))
        .add_directive("hvroute::cli=error".parse().expect("a valid directive"));
    use std::io::IsTerminal;
    let fmt = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => fmt.with_ansi(std::io::stderr().is_terminal()).try_init(),
        LogFormat::Json => {
            fmt.json().flatten_event(true).with_current_span(true).with_span_list(false).try_init()
        }
    };
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    // Two workers: the route and neighbour dumps of a pass run in parallel.
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the runtime")
}

pub fn run(cli: Cli) -> Result<()> {
    // The hook loads the config itself: a broken config must not stop VMs that have
    // nothing for hvroute.
    let cmd = match cli.cmd {
        Cmd::Hook(h) => return crate::hook::run(&cli.config, h),
        // A drive is built anywhere, from its flags alone.
        Cmd::Configdrive(c) => return crate::configdrive::cmd::run(c),
        Cmd::Completions { shell } => return cmd_completions(shell),
        Cmd::Man { dir } => return cmd_man(dir.as_deref()),
        cmd => cmd,
    };
    let cfg = Config::load(&cli.config)?;
    match cmd {
        Cmd::Daemon { force } => {
            let rt = runtime()?;
            let r = rt.block_on(crate::daemon::run(cfg, force));
            // Do not wait on an FRR sync or a vtysh that is still running: kernel and FRR
            // state stay as they are, and the next daemon carries on from there.
            rt.shutdown_timeout(Duration::from_secs(2));
            Ok(r?)
        }
        Cmd::Reconcile { dry_run, force, json } => cmd_reconcile(&cfg, dry_run, force, json),
        Cmd::Vm(VmCmd::Add(a)) => cmd_vm_add(&cfg, a),
        Cmd::Vm(VmCmd::Del { name }) => cmd_vm_del(&cfg, &name),
        Cmd::Vm(VmCmd::List { json }) => cmd_vm_list(&cfg, json),
        Cmd::Status { json } => cmd_status(&cfg, json),
        Cmd::Frr(FrrCmd::Render) => cmd_frr_render(&cfg),
        Cmd::Frr(FrrCmd::Bootstrap { write }) => cmd_frr_bootstrap(&cfg, write),
        Cmd::Shim(s) => crate::hook::shim::run(&cfg, s),
        Cmd::Hook(_) | Cmd::Configdrive(_) | Cmd::Completions { .. } | Cmd::Man { .. } => {
            unreachable!("handled above")
        }
    }
}

fn cmd_completions(shell: clap_complete::Shell) -> Result<()> {
    use clap::CommandFactory;
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "hvroute", &mut out);
    std::io::Write::write_all(&mut std::io::stdout().lock(), &out).context("cannot write to stdout")
}

fn cmd_man(dir: Option<&std::path::Path>) -> Result<()> {
    use clap::CommandFactory;
    let cmd = Cli::command();
    match dir {
        Some(d) => clap_mangen::generate_to(cmd, d)
            .with_context(|| format!("cannot write the manual pages into {}", d.display())),
        None => {
            let mut out = Vec::new();
            clap_mangen::Man::new(cmd).render(&mut out).context("cannot render the manual page")?;
            std::io::Write::write_all(&mut std::io::stdout().lock(), &out).context("cannot write to stdout")
        }
    }
}

/// The full frr.conf for this host, with the VM addresses the state dir holds now.
fn frr_conf_now(cfg: &Config) -> Result<String> {
    let boot_id = cfg.boot_id()?;
    let snap = Store::at(&cfg.state_dir).load()?;
    let desired = Desired::build(cfg, &snap, &boot_id);
    for p in snap.errors.iter().map(|(f, r)| format!("state file {f}: {r}")).chain(desired.conflicts.clone())
    {
        eprintln!("hvroute: warning: {p}");
    }
    let prefixes: BTreeSet<std::net::IpAddr> = desired.addrs.keys().copied().collect();
    crate::frr::render::render(cfg, &prefixes)
}

fn cmd_frr_render(cfg: &Config) -> Result<()> {
    print!("{}", frr_conf_now(cfg)?);
    Ok(())
}

fn cmd_frr_bootstrap(cfg: &Config, write: bool) -> Result<()> {
    use crate::frr::bootstrap::Bootstrap;
    let b = Bootstrap::plan(&cfg.frr.config_file, frr_conf_now(cfg)?)?;
    if !b.changed() {
        println!(
            "no change: {} is as hvroute renders it and bgpd is enabled in {}",
            b.frr_conf.path.display(),
            b.daemons_path.display()
        );
        return Ok(());
    }
    print!("{}", b.diff());
    if !write {
        if b.daemons.is_none() {
            eprintln!(
                "hvroute: warning: FRR's daemons file {} does not exist; is FRR installed?",
                b.daemons_path.display()
            );
        }
        eprintln!("hvroute: nothing written; run `hvroute frr bootstrap --write` to make these changes");
        return Ok(());
    }
    let done = b.write(std::time::SystemTime::now())?;
    for (path, backup) in &done.files {
        match backup {
            Some(bak) => println!("wrote {} (the old file is {})", path.display(), bak.display()),
            None => println!("wrote {} (new file)", path.display()),
        }
    }
    println!(
        "FRR reads these files only when it starts: restart FRR to load them (this host's routes are withdrawn briefly)"
    );
    Ok(())
}

/// What the FRR side of a one-shot pass did or would do.
#[derive(Serialize)]
struct FrrOnce {
    /// The vtysh batch (frr.conf syntax); with `--dry-run`, what would be sent.
    batch: String,
    adds: usize,
    dels: usize,
    scaffolding: bool,
    error: Option<String>,
}

async fn frr_once(cfg: &Config, desired: &Desired, dry_run: bool) -> FrrOnce {
    let vtysh = crate::frr::vtysh::Vtysh::from_config(cfg);
    let wanted = crate::frr::Wanted::build(cfg, desired);
    let r = async {
        let scaffolding = crate::frr::scaffolding(cfg)?;
        let running = crate::frr::parse_running(&vtysh.running_config().await?, cfg);
        let p = crate::frr::plan(cfg, &wanted, &running, &scaffolding)?;
        if !dry_run && !p.is_empty() {
            crate::frr::sync(cfg, &vtysh, &wanted, &scaffolding, Some(&running)).await?;
        }
        Ok::<_, anyhow::Error>(p)
    }
    .await;
    match r {
        Ok(p) => {
            FrrOnce { batch: p.text(), adds: p.adds, dels: p.dels, scaffolding: p.scaffolding, error: None }
        }
        Err(e) => FrrOnce {
            batch: String::new(),
            adds: 0,
            dels: 0,
            scaffolding: false,
            error: Some(format!("{e:#}")),
        },
    }
}

fn cmd_reconcile(cfg: &Config, dry_run: bool, force: bool, json: bool) -> Result<()> {
    let boot_id = cfg.boot_id()?;
    let store = Store::at(&cfg.state_dir);
    let rt = runtime()?;
    let out = rt.block_on(async {
        let mut k = Netlink::connect(cfg.bridge.name.as_str(), cfg.route_protocol)?;
        let opts = PassOptions { bring_up: true, check_takeover: true, force, dry_run, quick: false };
        Ok::<_, anyhow::Error>(
            reconcile::pass(cfg, &store, &boot_id, &mut k, &mut reconcile::Memo::default(), opts).await?,
        )
    })?;
    let frr = match (&out.desired, cfg.frr.enabled) {
        (Some(d), true) => Some(rt.block_on(frr_once(cfg, d, dry_run))),
        _ => None,
    };
    if json {
        #[derive(Serialize)]
        struct Both<'a> {
            #[serde(flatten)]
            kernel: &'a reconcile::Outcome,
            frr: &'a Option<FrrOnce>,
        }
        println!("{}", serde_json::to_string_pretty(&Both { kernel: &out, frr: &frr })?);
    } else if dry_run {
        print!("{}", out.plan);
        if out.plan.is_empty() {
            println!("# nothing to do in the kernel: it matches the state dir");
        }
        if let Some(f) = &frr {
            if f.error.is_none() && f.batch.is_empty() {
                println!("# nothing to do in FRR: bgpd holds exactly the VM prefixes");
            }
            for l in f.batch.lines() {
                println!("frr> {l}");
            }
        }
    } else {
        let counts: Vec<String> = out.plan.counts().iter().map(|(k, v)| format!("{v} {k}")).collect();
        println!(
            "applied {} ops{} in {:.0} ms ({} VMs, {} addresses, {} parked)",
            out.plan.ops.len() - out.errors.len(),
            if counts.is_empty() { String::new() } else { format!(" ({})", counts.join(", ")) },
            out.timings.total_ms,
            out.vms,
            out.addresses,
            out.parked
        );
        if let Some(w) = &out.plan.waiting {
            println!("waiting: {w}");
        }
        if let Some(f) = frr.as_ref().filter(|f| f.error.is_none()) {
            println!(
                "told FRR: {} network lines added, {} removed{}",
                f.adds,
                f.dels,
                if f.scaffolding { ", hvroute's base config re-asserted" } else { "" }
            );
        }
    }
    for p in out.store_errors.iter().chain(&out.conflicts) {
        eprintln!("hvroute: warning: {p}");
    }
    if let Some(first) = out.errors.first() {
        anyhow::bail!("{} of {} ops failed; first: {first}", out.errors.len(), out.plan.ops.len());
    }
    if let Some(e) = frr.as_ref().and_then(|f| f.error.as_ref()) {
        anyhow::bail!("the kernel is done, but FRR was not told: {e}");
    }
    Ok(())
}

/// Parses `mac=MAC,ip=ADDR[,ip=ADDR...][,port=IFNAME]`.
fn parse_nic(spec: &str) -> Result<Nic, Invalid> {
    let a: model::NicArg = spec.parse()?;
    Ok(Nic { mac: a.mac, addresses: a.addresses.into_iter().collect(), port: a.port })
}

fn spec_from_args(cfg: &Config, a: &AddArgs) -> Result<VmSpec, Invalid> {
    let name: VmName = a.name.parse()?;
    let mut nics = Vec::new();
    match (&a.mac, a.ips.is_empty()) {
        (Some(mac), _) => {
            let mut addresses = BTreeSet::new();
            for ip in &a.ips {
                if !addresses.insert(ip.parse::<HostAddr>()?) {
                    return Err(Invalid(format!("address {ip} is given twice")));
                }
            }
            if addresses.is_empty() {
                return Err(Invalid("--mac needs at least one --ip".into()));
            }
            let port = a.port.as_deref().map(str::parse).transpose()?;
            nics.push(Nic { mac: mac.parse()?, addresses, port });
        }
        (None, false) => return Err(Invalid("--ip needs --mac (or use --nic mac=...,ip=...)".into())),
        (None, true) if a.port.is_some() => return Err(Invalid("--port needs --mac".into())),
        (None, true) => {}
    }
    for n in &a.nics {
        nics.push(parse_nic(n)?);
    }
    if nics.is_empty() {
        return Err(Invalid(format!("VM {name} needs a NIC: give --mac and --ip, or --nic")));
    }
    let vm = VmSpec { name, nics, source: Source::Cli, boot_id: None, migration: None };
    vm.check_shape()?;
    for (_, addr) in vm.addresses() {
        model::check_addr(cfg, addr)?;
    }
    Ok(vm)
}

fn cmd_vm_add(cfg: &Config, a: AddArgs) -> Result<()> {
    let vm = spec_from_args(cfg, &a)?;
    let req = Request::VmAdd { vm: vm.clone(), replace: a.replace };
    if let Some(done) = through_daemon(cfg, req, &vm.name)? {
        return Ok(done);
    }
    // No daemon: the same rules, checked here against the whole state dir.
    let boot_id = cfg.boot_id()?;
    match Store::open(&cfg.state_dir)?.add(&vm, a.replace, &boot_id)? {
        Change::Unchanged => println!("VM {} is already present with this spec; nothing to do", vm.name),
        _ => println!(
            "VM {} stored; no daemon answers at {}, so it applies at the next `hvroute reconcile` or daemon start",
            vm.name,
            cfg.socket.display()
        ),
    }
    Ok(())
}

fn cmd_vm_del(cfg: &Config, name: &str) -> Result<()> {
    let name: VmName = name.parse()?;
    if let Some(done) = through_daemon(cfg, Request::VmDel { name: name.clone() }, &name)? {
        return Ok(done);
    }
    match Store::open(&cfg.state_dir)?.del(&name)? {
        Change::Unknown => eprintln!("hvroute: VM {name} is not known; nothing to do"),
        _ => println!(
            "VM {name} removed; no daemon answers at {}, so it applies at the next `hvroute reconcile` or daemon start",
            cfg.socket.display()
        ),
    }
    Ok(())
}

/// Hands `vm add`/`vm del` to a running daemon, which checks and writes with the store's
/// rules and applies the change at once. `Ok(None)`: no daemon listens, do it here.
fn through_daemon(cfg: &Config, req: Request, name: &VmName) -> Result<Option<()>> {
    let reply = match control::request::<VmReply>(&cfg.socket, req, Duration::from_secs(10)) {
        Ok(None) => return Ok(None),
        Ok(Some(r)) => r,
        Err(e) => {
            return Err(e.context(format!(
                "the daemon did not confirm the change to VM {name}; `hvroute vm list` shows whether it was stored"
            )));
        }
    };
    if let Some(why) = reply.invalid {
        return Err(Invalid(why).into());
    }
    if let Some(e) = reply.error {
        anyhow::bail!("the daemon could not change VM {name}: {e}");
    }
    let applied = |p: &Option<PassSummary>| match p {
        Some(p) if p.errors.is_empty() => format!("applied by the daemon (pass {}, {} ops)", p.pass, p.ops),
        Some(p) => format!("the daemon's pass {} had errors and will retry: {}", p.pass, p.errors.join("; ")),
        None => "the daemon applies it with its next pass".into(),
    };
    match reply.change {
        Some(Change::Stored) => println!("VM {name} stored; {}", applied(&reply.pass)),
        Some(Change::Removed) => println!("VM {name} removed; {}", applied(&reply.pass)),
        Some(Change::Unchanged) => println!("VM {name} is already present with this spec; nothing to do"),
        Some(Change::Unknown) => eprintln!("hvroute: VM {name} is not known; nothing to do"),
        None => anyhow::bail!("the daemon's answer about VM {name} says nothing"),
    }
    Ok(Some(()))
}

#[derive(Serialize)]
struct VmView<'a> {
    name: &'a VmName,
    source: Source,
    state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    boot_id: Option<&'a str>,
    nics: &'a [Nic],
}

#[derive(Serialize)]
struct ErrorView<'a> {
    file: &'a str,
    reason: &'a str,
}

/// How an entry stands: `active` (routed), `parked` (a volatile entry of an earlier boot)
/// or `incoming` (a live migration announced by `migrate begin`, not routed here yet).
fn entry_state(v: &VmSpec, boot_id: &str) -> &'static str {
    if v.is_parked(boot_id) {
        "parked"
    } else if v.is_incoming() {
        "incoming"
    } else {
        "active"
    }
}

fn cmd_vm_list(cfg: &Config, json: bool) -> Result<()> {
    let boot_id = cfg.boot_id()?;
    let snap = Store::at(&cfg.state_dir).load()?;
    let vms: Vec<VmView> = snap
        .vms
        .values()
        .map(|v| VmView {
            name: &v.name,
            source: v.source,
            state: entry_state(v, &boot_id),
            boot_id: v.boot_id.as_deref(),
            nics: &v.nics,
        })
        .collect();
    let errors: Vec<ErrorView> = snap.errors.iter().map(|(f, r)| ErrorView { file: f, reason: r }).collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "vms": vms, "errors": errors }))?);
        return Ok(());
    }
    println!("{:<20} {:<6} {:<7} {:<17} {:<10} ADDRESSES", "NAME", "SOURCE", "STATE", "MAC", "PORT");
    for v in &vms {
        for (i, n) in v.nics.iter().enumerate() {
            let addrs: Vec<String> = n.addresses.iter().map(|a| a.to_string()).collect();
            let (name, src, st) = if i == 0 {
                (v.name.to_string(), v.source.to_string(), v.state)
            } else {
                (String::new(), String::new(), "")
            };
            let port = n.port.as_ref().map_or("-".to_string(), |p| p.to_string());
            println!("{name:<20} {src:<6} {st:<7} {:<17} {port:<10} {}", n.mac.to_string(), addrs.join(" "));
        }
    }
    for e in &errors {
        eprintln!("hvroute: warning: state file {} is unusable: {}", e.file, e.reason);
    }
    Ok(())
}

#[derive(Serialize)]
struct AddrStatus {
    address: HostAddr,
    route: bool,
    neighbour: bool,
    /// bgpd holds the prefix as a valid local best path (null when FRR is not asked).
    advertised: Option<bool>,
}

#[derive(Serialize)]
struct NicStatus {
    mac: Mac,
    #[serde(skip_serializing_if = "Option::is_none")]
    port: Option<IfName>,
    addresses: Vec<AddrStatus>,
}

#[derive(Serialize)]
struct VmStatus {
    name: VmName,
    source: Source,
    state: &'static str,
    nics: Vec<NicStatus>,
    /// Null when `guard.enabled` is false.
    guard: Option<VmGuard>,
}

/// A VM's guards (docs/guards.md).
#[derive(Serialize)]
struct VmGuard {
    /// Frames from its ports the guards dropped (spoofed sources, foreign MACs, router
    /// advertisements, ...), summed over its NICs since their rules were first installed.
    drops: u64,
    /// The ports its NICs are guarded on, by MAC; a NIC missing here forwards nothing yet.
    ports: std::collections::BTreeMap<Mac, String>,
}

/// The bridge's guards as a whole.
#[derive(Serialize)]
struct GuardsStatus {
    enabled: bool,
    /// Frames from ports bound to no VM.
    unbound_drops: u64,
    /// Packets from VMs to the host that the host protection dropped.
    to_host_drops: u64,
    /// Packets from VMs that may not be forwarded where they were going.
    forward_drops: u64,
    uplinks: Vec<String>,
}

#[derive(Serialize)]
struct BridgeStatus {
    name: String,
    exists: bool,
    up: bool,
    mac: Option<Mac>,
    mtu: u32,
    gateways: bool,
    ports: Vec<plan::PortObs>,
}

#[derive(Serialize)]
struct Status {
    bridge: BridgeStatus,
    daemon: Option<DaemonStatus>,
    /// Null when `frr.enabled` is false.
    frr: Option<FrrView>,
    vms: Vec<VmStatus>,
    guards: GuardsStatus,
    store_errors: Vec<String>,
    conflicts: Vec<String>,
    pending_ops: usize,
    waiting: Option<String>,
}

#[derive(Serialize)]
struct FrrView {
    reachable: bool,
    error: Option<String>,
    peers: Vec<crate::frr::PeerView>,
}

fn cmd_status(cfg: &Config, json: bool) -> Result<()> {
    let boot_id = cfg.boot_id()?;
    let snap = Store::at(&cfg.state_dir).load()?;
    let desired = Desired::build(cfg, &snap, &boot_id);
    let rt = runtime()?;
    let observed = rt.block_on(async {
        let mut k = Netlink::connect(cfg.bridge.name.as_str(), cfg.route_protocol)?;
        k.observe(&desired).await
    })?;
    let bgp = cfg
        .frr
        .enabled
        .then(|| rt.block_on(crate::frr::observe_bgp(&crate::frr::vtysh::Vtysh::from_config(cfg))));
    let advertised = |ip: std::net::IpAddr| match &bgp {
        Some(Ok(view)) => Some(view.local.contains(&ipnet::IpNet::from(ip))),
        _ => None,
    };
    let daemon =
        control::request::<DaemonStatus>(&cfg.socket, Request::Status, Duration::from_secs(5)).ok().flatten();
    let pending = plan::plan(&desired, &observed, Options::default(), cfg.route_protocol);
    let br_index = observed.bridge.as_ref().map(|b| b.ifindex);
    let guard_want = crate::guard::want(&desired, &observed);
    let drops = if cfg.guard.enabled { crate::kernel::nft::guard_drops() } else { Default::default() };
    let nic_port: std::collections::BTreeMap<Mac, String> = guard_want
        .iter()
        .flat_map(|w| w.bound.iter())
        .filter(|(port, nic)| observed.guard.map.get(*port).is_some_and(|(c, _)| *c == nic.chain()))
        .map(|(port, nic)| (nic.mac, port.clone()))
        .collect();
    let vm_guard = |v: &VmSpec| {
        cfg.guard.enabled.then(|| VmGuard {
            drops: v
                .nics
                .iter()
                .map(|n| drops.get(&crate::guard::NicRules::counter_name(&n.mac)).copied().unwrap_or(0))
                .sum(),
            ports: v.nics.iter().filter_map(|n| nic_port.get(&n.mac).map(|p| (n.mac, p.clone()))).collect(),
        })
    };
    let vms = snap
        .vms
        .values()
        .map(|v| VmStatus {
            name: v.name.clone(),
            source: v.source,
            state: entry_state(v, &boot_id),
            nics: v
                .nics
                .iter()
                .map(|n| NicStatus {
                    mac: n.mac,
                    port: n.port.clone(),
                    addresses: n
                        .addresses
                        .iter()
                        .map(|a| AddrStatus {
                            address: *a,
                            route: observed
                                .routes
                                .iter()
                                .any(|r| r.addr == a.0 && Some(r.ifindex) == br_index),
                            neighbour: br_index
                                .is_some_and(|i| observed.neighs.get(&(a.0, i)) == Some(&Some(n.mac))),
                            advertised: advertised(a.0),
                        })
                        .collect(),
                })
                .collect(),
            guard: vm_guard(v),
        })
        .collect();
    let b = observed.bridge.as_ref();
    let status = Status {
        bridge: BridgeStatus {
            name: cfg.bridge.name.to_string(),
            exists: b.is_some(),
            up: b.is_some_and(|b| b.up),
            mac: b.and_then(|b| b.mac),
            mtu: b.map_or(0, |b| b.mtu),
            gateways: b.is_some_and(|b| desired.bridge.addrs.is_subset(&b.addrs)),
            ports: b.map(|b| b.ports.clone()).unwrap_or_default(),
        },
        daemon,
        frr: bgp.map(|r| match r {
            Ok(v) => FrrView { reachable: true, error: None, peers: v.peers },
            Err(e) => FrrView { reachable: false, error: Some(format!("{e:#}")), peers: Vec::new() },
        }),
        vms,
        guards: GuardsStatus {
            enabled: cfg.guard.enabled,
            unbound_drops: drops.get(crate::guard::UNBOUND_COUNTER).copied().unwrap_or(0),
            to_host_drops: drops.get(crate::guard::HOST_COUNTER).copied().unwrap_or(0),
            forward_drops: drops.get(crate::guard::FORWARD_COUNTER).copied().unwrap_or(0),
            uplinks: guard_want.map(|w| w.base.uplinks.into_iter().collect()).unwrap_or_default(),
        },
        store_errors: snap.errors.iter().map(|(f, r)| format!("{f}: {r}")).collect(),
        conflicts: desired.conflicts.clone(),
        pending_ops: pending.ops.len(),
        waiting: pending.waiting.clone(),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(());
    }
    print_status(&status);
    Ok(())
}

fn print_status(s: &Status) {
    let b = &s.bridge;
    if b.exists {
        println!(
            "bridge {}: {}, mac {}, mtu {}, gateways {}, {} ports",
            b.name,
            if b.up { "up" } else { "DOWN" },
            b.mac.map_or("-".into(), |m| m.to_string()),
            b.mtu,
            if b.gateways { "present" } else { "MISSING" },
            b.ports.len()
        );
    } else {
        println!("bridge {}: MISSING (the daemon or `hvroute reconcile` creates it)", b.name);
    }
    match &s.daemon {
        Some(d) => {
            let last = d.last_pass.as_ref().map_or("none yet".to_string(), |p| {
                format!("pass {} with {} ops in {:.1} ms", p.pass, p.ops, p.total_ms)
            });
            println!("daemon: running, pid {}, up {:.0} s, last {last}", d.pid, d.uptime_s);
            if let Some(e) = &d.last_error {
                println!("daemon: last error: {e}");
            }
        }
        None => println!("daemon: not running"),
    }
    if let Some(fs) = s.daemon.as_ref().and_then(|d| d.frr.as_ref()) {
        let last = fs
            .last
            .as_ref()
            .map_or(String::new(), |l| format!(", last sync +{} -{} in {:.0} ms", l.adds, l.dels, l.ms));
        println!(
            "daemon: FRR {} ({} syncs{last})",
            if fs.in_sync { "in sync" } else { "NOT in sync" },
            fs.syncs
        );
        if let Some(e) = &fs.last_error {
            println!("daemon: FRR error: {e}");
        }
    }
    match &s.frr {
        None => println!("frr: not used (frr.enabled = false)"),
        Some(f) if !f.reachable => println!("frr: UNREACHABLE: {}", f.error.as_deref().unwrap_or("")),
        Some(f) => {
            println!("frr: {} BGP sessions", f.peers.len());
            if !f.peers.is_empty() {
                println!(
                    "  {:<24} {:<5} {:<12} {:<10} {:>5} {:>5}",
                    "PEER", "AFI", "STATE", "UPTIME", "SENT", "RCVD"
                );
            }
            for p in &f.peers {
                println!(
                    "  {:<24} {:<5} {:<12} {:<10} {:>5} {:>5}",
                    p.name, p.family, p.state, p.uptime, p.prefixes_sent, p.prefixes_received
                );
            }
        }
    }
    println!();
    println!(
        "{:<20} {:<6} {:<7} {:<17} {:<28} {:<7} {:<7} BGP",
        "VM", "SOURCE", "STATE", "MAC", "ADDRESS", "ROUTE", "NEIGH"
    );
    let yes = |b: bool| if b { "ok" } else { "MISSING" };
    for v in &s.vms {
        let mut first = true;
        for n in &v.nics {
            for a in &n.addresses {
                let (name, src, st) = if first {
                    (v.name.to_string(), v.source.to_string(), v.state)
                } else {
                    (String::new(), String::new(), "")
                };
                first = false;
                let routed = v.state == "active";
                let (r, nb) = if !routed { ("-", "-") } else { (yes(a.route), yes(a.neighbour)) };
                let bgp = match a.advertised {
                    None => "-",
                    Some(true) => "ok",
                    Some(false) if !routed => "-",
                    Some(false) => "MISSING",
                };
                println!(
                    "{name:<20} {src:<6} {st:<7} {:<17} {:<28} {r:<7} {nb:<7} {bgp}",
                    n.mac.to_string(),
                    a.address.to_string()
                );
            }
        }
    }
    let g = &s.guards;
    if g.enabled {
        println!();
        println!(
            "guards: on; uplinks {}; dropped from unbound ports {}, to the host {}, forwarding {}",
            if g.uplinks.is_empty() {
                "NONE (VMs reach only each other)".to_string()
            } else {
                g.uplinks.join(",")
            },
            g.unbound_drops,
            g.to_host_drops,
            g.forward_drops
        );
        for v in s.vms.iter().filter(|v| v.state == "active") {
            if let Some(vg) = &v.guard {
                let unguarded = v.nics.iter().filter(|n| !vg.ports.contains_key(&n.mac)).count();
                let ports: Vec<&str> = vg.ports.values().map(String::as_str).collect();
                println!(
                    "  {:<20} ports {:<12} dropped {}{}",
                    v.name.to_string(),
                    if ports.is_empty() { "-".to_string() } else { ports.join(",") },
                    vg.drops,
                    if unguarded > 0 {
                        format!("  ({unguarded} NIC without a port: forwards nothing)")
                    } else {
                        String::new()
                    }
                );
            }
        }
    } else {
        println!("guards: OFF (guard.enabled = false): VMs are not filtered on the bridge");
    }
    for e in &s.store_errors {
        println!("state file error: {e}");
    }
    for c in &s.conflicts {
        println!("conflict: {c}");
    }
    if let Some(w) = &s.waiting {
        println!("waiting: {w}");
    }
    if s.pending_ops > 0 {
        println!("{} ops pending; `hvroute reconcile --dry-run` lists them", s.pending_ops);
    } else {
        println!("in sync: the kernel matches the state dir");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nic_specs() {
        let n = parse_nic("mac=52:54:00:00:00:01,ip=192.0.2.1,ip=2001:db8:100::1/128,port=vnet0").unwrap();
        assert_eq!(n.addresses.len(), 2);
        assert_eq!(n.port.unwrap().as_str(), "vnet0");
        for bad in [
            "ip=192.0.2.1",
            "mac=52:54:00:00:00:01",
            "mac=52:54:00:00:00:01,ip=192.0.2.1,foo=1",
            "mac=52:54:00:00:00:01,ip=192.0.2.1,ip=192.0.2.1",
            "mac=52:54:00:00:00:01,mac=52:54:00:00:00:02,ip=192.0.2.1",
        ] {
            assert!(parse_nic(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
