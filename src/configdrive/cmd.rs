//! `hvroute configdrive build|show` (design.md §4): parse the flags into a [`Seed`], build
//! the drive through [`content`] and [`image`], and write it in one step; or read a drive
//! back and print what it gives its guest.
//!
//! Contract: invalid input (a bad MAC, address, UUID, key file, MTU) is exit 2 with one
//! sentence naming the value, and `--out` is not touched. The image is written to a
//! temporary file beside `--out` and renamed into place, so `--out` is either the old file
//! or the whole new drive. The same flags give the same bytes. `show` treats the file as
//! untrusted: a bad image is exit 2, an unreadable path exit 1.

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use serde::Serialize;

use super::image::ImageError;
use super::{DriveNic, Flavor, Format, Seed, SeedNic, content, image};
use crate::model::{HostAddr, Invalid, VmName};

/// The largest `--user-data` file: cloud-init reads it whole, and the drive holds it.
pub const MAX_USER_DATA: u64 = 16 << 20;
/// The largest `--ssh-key` file.
pub const MAX_KEY_FILE: u64 = 64 << 10;

const BUILD_HELP: &str = "\
A NIC is --mac with its --ip, or one --nic each; the first NIC is the primary one.
Only the primary NIC's first address of each family carries the gateway (169.254.0.1 for
IPv4, fe80::1 for IPv6), so the guest gets exactly one default route per family; further
addresses (secondary IPs) are plain. An IPv6-only guest gets no IPv4 address and no
169.254.0.1 at all.

Flavours:
  openstack  label config-2, openstack/latest/{meta_data.json,network_data.json,user_data,
             vendor_data.json}: what CloudStack builds. cloud-init 23.1 and later.
  nocloud    label cidata, meta-data, user-data, network-config (netplan v2 with explicit
             on-link routes): older cloud-init on guests that render through netplan.
See docs/configdrive.md for which guests need which.

Examples:
  hvroute configdrive build --name web1 --mac 52:54:00:00:00:01 --ip 192.0.2.29 \\
      --ip 2001:db8:103::100 --dns 192.0.2.53 --ssh-key ~/.ssh/id_ed25519.pub --out web1.iso
  hvroute configdrive build --name db1 --nic mac=52:54:00:00:00:02,ip=2001:db8:103::7 \\
      --flavor nocloud --format vfat --out db1.img
  hvroute configdrive show web1.iso";

#[derive(Subcommand)]
pub enum ConfigDriveCmd {
    /// Build the drive that configures a routed guest: addresses, gateways, DNS, SSH keys
    /// and user-data. Deterministic: the same flags give the same bytes.
    #[command(after_help = BUILD_HELP)]
    Build(BuildArgs),
    /// Print the network configuration a drive gives its guest (openstack or nocloud, ISO
    /// or VFAT). The file is read as untrusted input.
    Show {
        /// The drive image.
        file: PathBuf,
        /// Print JSON (schema in docs/cli.md).
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
pub struct BuildArgs {
    /// The guest's name (and hostname): 1-64 of A-Z a-z 0-9 . _ -.
    #[arg(long)]
    pub name: String,
    /// MAC of the guest's NIC (shorthand for one --nic).
    #[arg(long)]
    pub mac: Option<String>,
    /// A host address of that NIC; repeat for more. The first of each family gets the gateway.
    #[arg(long = "ip", value_name = "ADDR")]
    pub ips: Vec<String>,
    /// A NIC: mac=MAC,ip=ADDR[,ip=ADDR...]; repeat for more NICs.
    #[arg(long = "nic", value_name = "SPEC")]
    pub nics: Vec<String>,
    /// A DNS server for the guest; repeat for more.
    #[arg(long = "dns", value_name = "ADDR")]
    pub dns: Vec<String>,
    /// User-data for cloud-init (#cloud-config, a script, ...), copied as it is.
    #[arg(long, value_name = "FILE")]
    pub user_data: Option<PathBuf>,
    /// An OpenSSH public key file (one key a line); repeat for more.
    #[arg(long = "ssh-key", value_name = "FILE")]
    pub ssh_keys: Vec<PathBuf>,
    /// The instance UUID; default: derived from --name, so a rebuild gives the same drive.
    #[arg(long)]
    pub uuid: Option<String>,
    /// MTU of every NIC.
    #[arg(long, default_value_t = 1500, value_parser = clap::value_parser!(u32).range(1280..=9216))]
    pub mtu: u32,
    #[arg(long, value_enum, default_value = "openstack")]
    pub flavor: Flavor,
    #[arg(long, value_enum, default_value = "iso")]
    pub format: Format,
    /// Where to write the image; an existing file is replaced whole.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Print what was written as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(cmd: ConfigDriveCmd) -> Result<()> {
    match cmd {
        ConfigDriveCmd::Build(a) => build(&a),
        ConfigDriveCmd::Show { file, json } => show(&file, json),
    }
}

/// What `build --json` prints.
#[derive(Serialize)]
struct Built<'a> {
    out: &'a Path,
    flavor: Flavor,
    format: Format,
    label: &'static str,
    bytes: usize,
    uuid: &'a str,
    files: Vec<FileEntry<'a>>,
}

#[derive(Serialize)]
struct FileEntry<'a> {
    path: &'a str,
    bytes: usize,
}

fn build(a: &BuildArgs) -> Result<()> {
    let seed = seed_from_args(a)?;
    if a.out.is_dir() {
        return Err(
            Invalid(format!("--out {} is a directory; give the image's file name", a.out.display())).into()
        );
    }
    let files = content::files(&seed, a.flavor);
    let label = a.flavor.label();
    let bytes = image::write(a.format, label, &files).map_err(|e| match e {
        ImageError::TooLarge(_) => Invalid(e.to_string()).into(),
        other => anyhow::Error::new(other),
    })?;
    write_atomically(&a.out, &bytes)?;
    let built = Built {
        out: &a.out,
        flavor: a.flavor,
        format: a.format,
        label,
        bytes: bytes.len(),
        uuid: &seed.uuid,
        files: files.iter().map(|f| FileEntry { path: &f.path, bytes: f.data.len() }).collect(),
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&built)?);
    } else {
        let addrs: usize = seed.nics.iter().map(|n| n.addresses.len()).sum();
        println!(
            "wrote {}: {} {}, label {label}, {} bytes; {} NIC{}, {addrs} address{}, uuid {}",
            a.out.display(),
            flavor_name(a.flavor),
            format_name(a.format),
            bytes.len(),
            seed.nics.len(),
            if seed.nics.len() == 1 { "" } else { "s" },
            if addrs == 1 { "" } else { "es" },
            seed.uuid
        );
    }
    Ok(())
}

fn flavor_name(f: Flavor) -> &'static str {
    match f {
        Flavor::OpenStack => "openstack",
        Flavor::NoCloud => "nocloud",
    }
}

fn format_name(f: Format) -> &'static str {
    match f {
        Format::Iso => "ISO 9660",
        Format::Vfat => "VFAT",
    }
}

/// The seed the flags describe; every refusal names the bad value.
pub fn seed_from_args(a: &BuildArgs) -> Result<Seed> {
    let name: VmName = a.name.parse()?;
    let mut nics = Vec::new();
    match (&a.mac, a.ips.is_empty()) {
        (Some(mac), _) => {
            let mut addresses = Vec::new();
            for ip in &a.ips {
                addresses.push(guest_addr(ip)?);
            }
            if addresses.is_empty() {
                return Err(Invalid("--mac needs at least one --ip".into()).into());
            }
            nics.push(SeedNic { mac: mac.parse()?, addresses });
        }
        (None, false) => return Err(Invalid("--ip needs --mac (or use --nic mac=...,ip=...)".into()).into()),
        (None, true) => {}
    }
    for n in &a.nics {
        nics.push(parse_nic(n)?);
    }
    if nics.is_empty() {
        return Err(
            Invalid(format!("the drive for {name} needs a NIC: give --mac and --ip, or --nic")).into()
        );
    }
    check_unique(&nics)?;
    let mut dns = Vec::new();
    for d in &a.dns {
        let ip: IpAddr =
            d.parse().map_err(|_| Invalid(format!("invalid --dns {d:?}: not an IPv4 or IPv6 address")))?;
        if ip.is_unspecified() || ip.is_multicast() {
            return Err(Invalid(format!("invalid --dns {d:?}: not a unicast address")).into());
        }
        if dns.contains(&ip) {
            return Err(Invalid(format!("DNS server {ip} is given twice")).into());
        }
        dns.push(ip);
    }
    let uuid = match &a.uuid {
        Some(u) => parse_uuid(u)?,
        None => content::uuid_for(&name),
    };
    let mut ssh_keys = Vec::new();
    for f in &a.ssh_keys {
        ssh_keys.extend(read_keys(f)?);
    }
    let user_data = match &a.user_data {
        Some(f) => Some(read_bounded(f, MAX_USER_DATA, "--user-data")?),
        None => None,
    };
    Ok(Seed { name, uuid, nics, dns, ssh_keys, user_data, mtu: a.mtu })
}

/// Parses `mac=MAC,ip=ADDR[,ip=ADDR...]` (as `vm add` does), keeping the addresses' order.
fn parse_nic(spec: &str) -> Result<SeedNic, Invalid> {
    let a: crate::model::NicArg = spec.parse()?;
    if a.port.is_some() {
        return Err(Invalid(format!(
            "invalid --nic {spec:?}: port= names a bridge port on a hypervisor and has no place on a drive"
        )));
    }
    for addr in &a.addresses {
        guest_addr(&addr.to_string())?;
    }
    Ok(SeedNic { mac: a.mac, addresses: a.addresses })
}

/// A guest's host address: unicast, and not one a routed guest cannot hold (the gateways,
/// link-local, loopback).
fn guest_addr(s: &str) -> Result<HostAddr, Invalid> {
    let a: HostAddr = s.parse()?;
    let why = match a.0 {
        IpAddr::V4(v) if v.is_unspecified() || v.is_broadcast() || v.is_multicast() => {
            Some("not a unicast address")
        }
        IpAddr::V4(v) if v.is_loopback() => Some("a loopback address"),
        IpAddr::V4(v) if v.is_link_local() => {
            Some("a link-local address (169.254.0.0/16 holds the gateway 169.254.0.1)")
        }
        IpAddr::V6(v) if v.is_unspecified() || v.is_multicast() => Some("not a unicast address"),
        IpAddr::V6(v) if v.is_loopback() => Some("a loopback address"),
        IpAddr::V6(v) if v.is_unicast_link_local() => {
            Some("a link-local address (the guest makes its own; fe80::1 is the gateway)")
        }
        IpAddr::V6(v) if v.to_ipv4_mapped().is_some() => Some("an IPv4-mapped address"),
        _ => None,
    };
    match why {
        Some(w) => Err(Invalid(format!("invalid address {s:?}: {w}"))),
        None => Ok(a),
    }
}

fn check_unique(nics: &[SeedNic]) -> Result<(), Invalid> {
    let mut macs = std::collections::BTreeSet::new();
    let mut seen = std::collections::BTreeMap::new();
    for n in nics {
        if !macs.insert(n.mac) {
            return Err(Invalid(format!("MAC {} is given to two NICs", n.mac)));
        }
        for a in &n.addresses {
            if let Some(first) = seen.insert(*a, n.mac) {
                return Err(Invalid(if first == n.mac {
                    format!("address {a} is given twice for MAC {}", n.mac)
                } else {
                    format!("address {a} is given to both MAC {first} and MAC {}", n.mac)
                }));
            }
        }
    }
    Ok(())
}

/// A UUID in its 8-4-4-4-12 hex form, lowercased.
fn parse_uuid(s: &str) -> Result<String, Invalid> {
    let groups: Vec<&str> = s.split('-').collect();
    let ok = groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.chars().all(|c| c.is_ascii_hexdigit()));
    if !ok {
        return Err(Invalid(format!(
            "invalid --uuid {s:?}: expected 8-4-4-4-12 hex digits like 6ccbd4a4-3b2b-5b54-9d77-2f1b1d1e6a10"
        )));
    }
    Ok(s.to_ascii_lowercase())
}

/// The public keys of an OpenSSH key file: one a line, blank lines and `#` comments skipped.
fn read_keys(path: &Path) -> Result<Vec<String>> {
    let bytes = read_bounded(path, MAX_KEY_FILE, "--ssh-key")?;
    let shown = path.display();
    let text =
        String::from_utf8(bytes).map_err(|_| Invalid(format!("--ssh-key {shown} is not UTF-8 text")))?;
    let mut keys = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line.contains("PRIVATE KEY") {
            return Err(Invalid(format!(
                "--ssh-key {shown} is a private key; give the public key (the .pub file)"
            ))
            .into());
        }
        let kind = line.split_whitespace().next().unwrap_or("");
        let known = kind.starts_with("ssh-") || kind.starts_with("ecdsa-") || kind.starts_with("sk-");
        let b64 = line.split_whitespace().nth(1).unwrap_or("");
        let b64_ok = !b64.is_empty() && b64.chars().all(|c| c.is_ascii_alphanumeric() || "+/=".contains(c));
        if !known || !b64_ok || line.chars().any(|c| c.is_control()) {
            return Err(Invalid(format!(
                "--ssh-key {shown} line {}: expected a public key like \"ssh-ed25519 AAAA... comment\", not {:?}",
                i + 1,
                truncate(line, 40)
            ))
            .into());
        }
        keys.push(line.to_string());
    }
    if keys.is_empty() {
        return Err(Invalid(format!("--ssh-key {shown} holds no public key")).into());
    }
    Ok(keys)
}

fn truncate(s: &str, n: usize) -> String {
    match s.char_indices().nth(n) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}

/// A regular file's bytes, refused (naming it) when larger than `max`.
fn read_bounded(path: &Path, max: u64, flag: &str) -> Result<Vec<u8>> {
    let shown = path.display();
    let meta = std::fs::metadata(path).with_context(|| format!("cannot read {flag} {shown}"))?;
    if !meta.is_file() {
        return Err(Invalid(format!("{flag} {shown} is not a regular file")).into());
    }
    if meta.len() > max {
        return Err(
            Invalid(format!("{flag} {shown} has {} bytes, more than the {max} allowed", meta.len())).into()
        );
    }
    let data = std::fs::read(path).with_context(|| format!("cannot read {flag} {shown}"))?;
    if data.len() as u64 > max {
        return Err(
            Invalid(format!("{flag} {shown} grew past the {max} bytes allowed while it was read")).into()
        );
    }
    Ok(data)
}

/// Writes `bytes` to `out` through a temporary file in the same directory and a rename:
/// `out` is never half-written. The file gets the usual 0666 less the umask.
fn write_atomically(out: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match out.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".hvroute-drive-")
        .tempfile_in(dir)
        .with_context(|| format!("cannot write in {}", dir.display()))?;
    tmp.write_all(bytes).with_context(|| format!("cannot write {}", out.display()))?;
    tmp.as_file().sync_all().with_context(|| format!("cannot write {}", out.display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        // SAFETY: umask only swaps the process's mask; the CLI is single-threaded here.
        let mask = unsafe {
            let m = libc::umask(0o022);
            libc::umask(m);
            m
        };
        let mode = 0o666 & !(mask as u32);
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("cannot write {}", out.display()))?;
    }
    tmp.persist(out).map_err(|e| e.error).with_context(|| format!("cannot write {}", out.display()))?;
    Ok(())
}

/// What `show --json` prints (docs/cli.md).
#[derive(Serialize)]
pub struct Shown {
    pub path: PathBuf,
    pub format: Format,
    pub label: String,
    /// `openstack` or `nocloud`, from the label.
    pub flavor: Flavor,
    pub nics: Vec<DriveNic>,
    pub files: Vec<ShownFile>,
}

#[derive(Serialize)]
pub struct ShownFile {
    pub path: String,
    pub bytes: usize,
}

/// Reads the drive at `path`: its format, label, flavour, NICs and files.
pub fn read_drive(path: &Path) -> Result<Shown> {
    // A file that cannot be opened is a runtime failure (exit 1); one that is not a good
    // image is bad input (exit 2).
    let img = image::read_path(path).map_err(|e| match e {
        ImageError::Io { .. } => anyhow::Error::new(e),
        bad => Invalid(bad.to_string()).into(),
    })?;
    let (flavor, network_file) = if img.label.eq_ignore_ascii_case(Flavor::OpenStack.label()) {
        (Flavor::OpenStack, content::NETWORK_DATA)
    } else if img.label.eq_ignore_ascii_case(Flavor::NoCloud.label()) {
        (Flavor::NoCloud, content::NETWORK_CONFIG)
    } else {
        return Err(Invalid(format!(
            "{}: the volume label is {:?}; a ConfigDrive has config-2 (openstack) or cidata (nocloud)",
            path.display(),
            img.label
        ))
        .into());
    };
    let file = img.files.iter().find(|f| f.path == network_file).ok_or_else(|| {
        Invalid(format!("{}: the {} drive has no {network_file}", path.display(), flavor_name(flavor)))
    })?;
    let parsed = match flavor {
        Flavor::OpenStack => content::parse_network_data(&file.data),
        Flavor::NoCloud => content::parse_network_config(&file.data),
    };
    let nics = parsed.map_err(|e| Invalid(format!("{}: {network_file}: {}", path.display(), e.0)))?;
    Ok(Shown {
        path: path.to_path_buf(),
        format: img.format,
        label: img.label.clone(),
        flavor,
        nics,
        files: img.files.iter().map(|f| ShownFile { path: f.path.clone(), bytes: f.data.len() }).collect(),
    })
}

fn show(path: &Path, json: bool) -> Result<()> {
    let s = read_drive(path)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(());
    }
    println!(
        "{}: {}, label {} ({} flavour)",
        path.display(),
        format_name(s.format),
        s.label,
        flavor_name(s.flavor)
    );
    for n in &s.nics {
        match n.mtu {
            Some(m) => println!("NIC {}, MTU {m}", n.mac),
            None => println!("NIC {}", n.mac),
        }
        for a in &n.addresses {
            let len = if a.0.is_ipv4() { 32 } else { 128 };
            println!("  address {a}/{len}");
        }
        for g in &n.gateways {
            println!("  default via {g}");
        }
        for d in &n.dns {
            println!("  dns {d}");
        }
    }
    println!("files:");
    for f in &s.files {
        println!("  {:<40} {} bytes", f.path, f.bytes);
    }
    Ok(())
}
