//! The files of a drive, from a [`Seed`], and the network description read back. Pure.
//! (Skeleton: filled in by the ConfigDrive work.)

use super::{DriveFile, DriveNic, Flavor, Seed};
use crate::model::Invalid;

/// The drive's files for `seed` in `flavor`, in a fixed order. Deterministic.
pub fn files(_seed: &Seed, _flavor: Flavor) -> Vec<DriveFile> {
    Vec::new()
}

/// The NICs an OpenStack `network_data.json` describes. Untrusted input.
pub fn parse_network_data(_bytes: &[u8]) -> Result<Vec<DriveNic>, Invalid> {
    Err(Invalid("reading network_data.json is not built yet".into()))
}

/// Where an openstack drive keeps its network description.
pub const NETWORK_DATA: &str = "openstack/latest/network_data.json";
/// Where a nocloud drive keeps its network description.
pub const NETWORK_CONFIG: &str = "network-config";

/// placeholder
pub fn uuid_for(_name: &crate::model::VmName) -> String {
    String::new()
}

/// placeholder
pub fn parse_network_config(_bytes: &[u8]) -> Result<Vec<DriveNic>, Invalid> {
    Err(Invalid("not built yet".into()))
}
