//! Backup journal records' JSON.
#![no_main]

use baton_fuzz::json_round_trip;
use baton_types::JournalRecord;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    json_round_trip::<JournalRecord>("journal record", data);
});
