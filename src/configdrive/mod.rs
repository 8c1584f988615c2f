//! ConfigDrive: the drives that configure routed guests (design.md §4, §6).
//!
//! A routed VM has no DHCP and no virtual router: its addresses, gateways, DNS, SSH keys and
//! user-data come only from the drive it boots with. This module builds those drives and
//! reads them back, in two layers:
//! - [`content`] (pure): a [`Seed`] becomes the drive's files ([`DriveFile`]) in the chosen
//!   [`Flavor`], and a drive's network file becomes [`DriveNic`]s again.
//! - [`image`]: files become image bytes (ISO 9660 or VFAT, [`Format`]) and back. Reading
//!   treats the image as untrusted input: bounded in size, entries and depth, and a bad image
//!   is an error, never a panic or a hang.
//!
//! Data flows `Seed -> content::files -> image::write` to build, and
//! `image::read -> content::parse_network_data (config-2) | content::parse_network_config
//! (cidata) -> DriveNic` to read. The CLI
//! (`hvroute configdrive build|show`) and the hook's fallback for NICs without metadata are
//! the shells around it.

pub mod cmd;
pub mod content;
pub mod image;

use std::net::IpAddr;

use serde::Serialize;

use crate::model::{HostAddr, Mac, VmName};

/// The gateway every routed guest uses for IPv4 (on-link: the bridge carries it).
pub const GATEWAY4: &str = "169.254.0.1";
/// The gateway every routed guest uses for IPv6 (the bridge's link-local address).
pub const GATEWAY6: &str = "fe80::1";

/// Which cloud-init data source the drive is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Flavor {
    /// Label `config-2`, `openstack/latest/...`: what CloudStack builds; cloud-init 23.1 and
    /// later render the on-link IPv4 default from it.
    #[value(name = "openstack")]
    OpenStack,
    /// Label `cidata`, `meta-data`, `user-data`, `network-config` (netplan v2 with explicit
    /// `on-link: true`): for older cloud-init that renders through netplan.
    #[value(name = "nocloud")]
    NoCloud,
}

impl Flavor {
    /// The volume label cloud-init looks for.
    pub fn label(self) -> &'static str {
        match self {
            Flavor::OpenStack => "config-2",
            Flavor::NoCloud => "cidata",
        }
    }
}

/// The image format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// ISO 9660 with Joliet and Rock Ridge names, as CloudStack's genisoimage writes it.
    Iso,
    /// A FAT file system image.
    Vfat,
}

/// One file of a drive: its path inside the image (`/`-separated, relative, e.g.
/// `openstack/latest/meta_data.json`) and its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriveFile {
    pub path: String,
    pub data: Vec<u8>,
}

/// One NIC of a guest: its MAC and its host addresses, in the order given (the first of each
/// family is the one that carries the gateway on the primary NIC).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SeedNic {
    pub mac: Mac,
    pub addresses: Vec<HostAddr>,
}

/// Everything a drive says about one guest. The first NIC is the primary one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seed {
    pub name: VmName,
    /// `meta_data.json`'s uuid: given, or derived from the name (see [`content::uuid_for`]).
    pub uuid: String,
    pub nics: Vec<SeedNic>,
    pub dns: Vec<IpAddr>,
    /// OpenSSH public key lines, one key each.
    pub ssh_keys: Vec<String>,
    pub user_data: Option<Vec<u8>>,
    /// The MTU of every link.
    pub mtu: u32,
}

/// A NIC as a drive describes it, read back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DriveNic {
    pub mac: Mac,
    pub mtu: Option<u32>,
    /// The host addresses, in the drive's order.
    pub addresses: Vec<HostAddr>,
    /// The default gateways the drive gives this NIC (169.254.0.1, fe80::1 for hvroute's
    /// drives), in the drive's order.
    pub gateways: Vec<IpAddr>,
    /// The DNS servers: a nocloud NIC's `nameservers`; an openstack drive's `dns`
    /// services, which are global, are reported on its first NIC (where hvroute's nocloud
    /// flavour puts them too).
    pub dns: Vec<IpAddr>,
}

/// The most bytes of a drive image that [`network_of`] reads: a `config-2` drive is small,
/// and anything bigger (an installer ISO in the same cdrom slot) is not one.
pub const MAX_PROBE_BYTES: u64 = image::MAX_IMAGE_BYTES;

/// What the `config-2` drive at `path` says of the guest's NICs, for the hook's fallback:
/// `Ok(None)` when the file is not a `config-2` drive (another cdrom: an installer, a
/// `cidata` drive), `Err` when it is one but cannot be read. Untrusted input: bounded in
/// size, never a panic.
pub fn network_of(path: &std::path::Path) -> anyhow::Result<Option<Vec<DriveNic>>> {
    use anyhow::Context;
    match image::probe_label(path)? {
        Some(label) if label.eq_ignore_ascii_case(Flavor::OpenStack.label()) => {}
        _ => return Ok(None),
    }
    let img = image::read_path(path)?;
    let file = img
        .files
        .iter()
        .find(|f| f.path == content::NETWORK_DATA)
        .with_context(|| format!("the drive has no {}", content::NETWORK_DATA))?;
    Ok(Some(content::parse_network_data(&file.data)?))
}
