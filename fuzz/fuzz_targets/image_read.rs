//! `image::read` on arbitrary bytes: Ok or Err, never a panic, a hang or a huge allocation.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = hvroute::configdrive::image::read(data);
});
