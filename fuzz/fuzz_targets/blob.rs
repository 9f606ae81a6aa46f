//! Blobs read from packs: decrypt, decompress to the length the index gives,
//! verify the keyed hash.
#![no_main]

use baton_format::compress::{Compressor, decompress};
use baton_format::pack::open_blob;
use baton_format::role;
use baton_fuzz::{key, seal};
use baton_types::BlobType::{Data, Tree};
use libfuzzer_sys::fuzz_target;
use std::cell::RefCell;

thread_local! {
    static COMPRESSOR: RefCell<Compressor> = RefCell::new(Compressor::new(3));
}

// Input: flags:u8 raw_length:u32le payload (the sealed blob's plaintext).
fuzz_target!(|data: &[u8]| {
    if data.len() < 5 {
        return;
    }
    let key = key();
    let compressed = data[0] & 1 == 1;
    let raw_length = u32::from_le_bytes(data[1..5].try_into().unwrap());
    let payload = &data[5..];

    // Unsealed bytes never open.
    assert!(
        open_blob(
            key,
            Data,
            &key.blob_id(payload),
            payload,
            raw_length,
            compressed
        )
        .is_err()
    );

    let expected = if compressed {
        decompress(payload, raw_length as usize).ok()
    } else {
        Some(payload.to_vec())
    };
    match expected {
        Some(plain) => {
            if compressed {
                assert_eq!(plain.len(), raw_length as usize);
            }
            let id = key.blob_id(&plain);
            let sealed = seal(&role::blob(Data, &id), payload);
            let got =
                open_blob(key, Data, &id, &sealed, raw_length, compressed).expect("valid blob");
            assert_eq!(got, plain);
            // The same bytes under another id, or as a tree, are refused.
            let other = key.blob_id(&[plain.as_slice(), b"+"].concat());
            assert!(open_blob(key, Data, &other, &sealed, raw_length, compressed).is_err());
            assert!(open_blob(key, Tree, &id, &sealed, raw_length, compressed).is_err());
        }
        None => {
            let id = key.blob_id(payload);
            let sealed = seal(&role::blob(Data, &id), payload);
            assert!(open_blob(key, Data, &id, &sealed, raw_length, true).is_err());
        }
    }

    // A chunk stored as backup stores it opens to itself.
    let id = key.blob_id(payload);
    let ad = role::blob(Tree, &id);
    let (stored, z) = match COMPRESSOR.with(|c| c.borrow_mut().compress(payload)) {
        Some(zp) => (seal(&ad, &zp), true),
        None => (seal(&ad, payload), false),
    };
    let got = open_blob(key, Tree, &id, &stored, payload.len() as u32, z).expect("own blob");
    assert_eq!(got, payload);
});
