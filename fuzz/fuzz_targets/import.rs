//! Fuzz target `import`: see `concord_fuzz::entry::import` for what it feeds.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(init: concord_fuzz::init(), |data: &[u8]| {
    let _ = concord_fuzz::entry::import(data);
});
