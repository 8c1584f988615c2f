//! `content::parse_network_data` on arbitrary bytes: Ok or Err, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = hvroute::configdrive::content::parse_network_data(data);
});
