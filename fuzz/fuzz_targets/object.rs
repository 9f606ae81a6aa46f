//! Stored objects (config, snapshots, index, journal records): the sealed
//! encoding byte and payload, raw or zstd of unknown length.
#![no_main]

use baton_format::compress::{Compressor, decompress_unknown};
use baton_format::object::{MAX_OBJECT, open_object, seal_object};
use baton_fuzz::{key, object_ad, seal};
use libfuzzer_sys::fuzz_target;
use std::cell::RefCell;

/// A small bound, to check that the decompression limit is honoured without
/// needing gigabyte outputs.
const SMALL: usize = 1000;

thread_local! {
    static COMPRESSOR: RefCell<Compressor> = RefCell::new(Compressor::new(3));
}

fuzz_target!(|data: &[u8]| {
    let key = key();
    let ad = object_ad();

    // Unsealed bytes: never decrypt (the AEAD cannot be forged by mutation).
    let _ = open_object(key, &ad, data);

    // The input as the plaintext of an object sealed with the fixed key.
    let sealed_input = seal(&ad, data);
    // In any other role it does not open.
    assert!(open_object(key, b"another role", &sealed_input).is_err());
    let opened = open_object(key, &ad, &sealed_input);
    match data.split_first() {
        Some((0, rest)) => assert_eq!(opened.expect("raw object"), rest),
        Some((1, rest)) => {
            // Arbitrary zstd frames: bounded by MAX_OBJECT, and the bound
            // behaves the same at a small limit.
            let small = decompress_unknown(rest, SMALL);
            match (&opened, small) {
                (Ok(v), Ok(s)) => {
                    assert!(v.len() <= SMALL);
                    assert_eq!(&s, v);
                }
                (Ok(v), Err(_)) => assert!(v.len() > SMALL && v.len() <= MAX_OBJECT),
                (Err(_), Ok(s)) => {
                    panic!("fits in {SMALL} bytes ({}) but not in MAX_OBJECT", s.len())
                }
                (Err(_), Err(_)) => {}
            }
        }
        _ => assert!(opened.is_err(), "unknown encoding byte accepted"),
    }

    // Sealing the input as an object and opening it gives it back.
    let sealed = COMPRESSOR.with(|c| seal_object(key, &ad, &mut c.borrow_mut(), data));
    assert_eq!(open_object(key, &ad, &sealed).expect("own object"), data);
});
