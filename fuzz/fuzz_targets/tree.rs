//! Tree blobs' JSON.
#![no_main]

use baton_fuzz::json_round_trip;
use baton_types::Tree;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(mut t) = json_round_trip::<Tree>("tree", data) else {
        return;
    };
    // Once sorted, every entry is found by its name.
    t.sort();
    for n in &t.nodes {
        assert_eq!(t.find(&n.name.0).map(|m| &m.name), Some(&n.name));
    }
});
