//! Index objects (their decrypted payload).
#![no_main]

use baton_format::index::IndexFile;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(f) = IndexFile::decode(data) {
        // The encoding is canonical: what decodes re-encodes to the same bytes.
        let enc = f.encode();
        assert_eq!(enc, data, "decode accepted a non-canonical encoding");
        assert_eq!(IndexFile::decode(&enc).expect("re-decode"), f);
    }
});
