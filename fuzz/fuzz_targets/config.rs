//! The `config` object's JSON, and the chunker a valid config sets up.
#![no_main]

use baton_format::chunker::Chunker;
use baton_fuzz::json_round_trip;
use baton_types::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(c) = json_round_trip::<Config>("config", data) else {
        return;
    };
    // Parameters that pass validation (as a repository checks at open) must
    // make a chunker that cuts without panicking, within the bounds.
    if c.chunker.validate().is_ok() {
        let mut total = 0;
        for chunk in Chunker::new(data, &c.chunker) {
            let chunk = chunk.expect("reading from a slice cannot fail");
            assert!(chunk.len() <= c.chunker.max_size as usize);
            total += chunk.len();
        }
        assert_eq!(total, data.len());
    }
});
