//! Key files: their JSON, unwrapping the master key with the KDF parameters
//! they carry, and the wrapped master key's own JSON.
#![no_main]

use baton_format::FormatError;
use baton_format::crypto::{
    MAX_KDF_ITERATIONS, MAX_KDF_MEMORY_KIB, MAX_KDF_PARALLELISM, MIN_KDF_MEMORY_KIB, MasterKey,
    derive_key,
};
use baton_fuzz::{json_round_trip, key_wrap_ad, seal_with};
use baton_types::{KdfParams, KeyFile, hex_encode};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

/// Argon2id parameters of the second half, and the key they derive.
fn fixed() -> &'static (KdfParams, [u8; 32]) {
    static F: OnceLock<(KdfParams, [u8; 32])> = OnceLock::new();
    F.get_or_init(|| {
        let p = baton_fuzz::cheap_kdf();
        let kek = derive_key(baton_fuzz::PASSWORD, &p).expect("valid parameters");
        (p, kek)
    })
}

fuzz_target!(|data: &[u8]| {
    // 1. A stored key file, unwrapped with the parameters it carries.
    //    Parameters beyond the format's limits are refused before Argon2 runs;
    //    within them, memory and passes are capped here (not in the format) so
    //    that one run takes microseconds. Every other field, the salt and the
    //    algorithm included, is the input's.
    if let Some(kf) = json_round_trip::<KeyFile>("key file", data) {
        let mut kdf = kf.kdf.clone();
        let ad = key_wrap_ad(&kf);
        if kdf.memory_kib > MAX_KDF_MEMORY_KIB
            || kdf.iterations > MAX_KDF_ITERATIONS
            || kdf.parallelism > MAX_KDF_PARALLELISM
            || kdf.memory_kib < MIN_KDF_MEMORY_KIB
            || kdf.iterations == 0
            || kdf.parallelism == 0
        {
            let r = MasterKey::unwrap(&kf.data, baton_fuzz::PASSWORD, &kdf, &ad);
            assert!(
                matches!(r, Err(FormatError::Kdf(_) | FormatError::Malformed { .. })),
                "{r:?}"
            );
            return;
        }
        kdf.memory_kib = MIN_KDF_MEMORY_KIB;
        kdf.iterations = 1;
        kdf.parallelism = 1;
        let _ = MasterKey::unwrap(&kf.data, baton_fuzz::PASSWORD, &kdf, &ad);
    }

    // 2. The input as the plaintext of a wrapped master key: sealed under the
    //    key-encryption key, so it gets past the AEAD to the JSON decoder.
    let (kdf, kek) = fixed();
    let ad = b"fields";
    let wrapped = hex_encode(&seal_with(kek, ad, data));
    match MasterKey::unwrap(&wrapped, baton_fuzz::PASSWORD, kdf, ad) {
        Ok(k) => {
            // Wrapping the key again and unwrapping it gives the same key.
            let again = k.wrap(baton_fuzz::PASSWORD, kdf, ad).expect("wrap");
            let k2 = MasterKey::unwrap(&again, baton_fuzz::PASSWORD, kdf, ad).expect("unwrap");
            assert_eq!(k.blob_id(b"x"), k2.blob_id(b"x"));
            assert_eq!(
                k2.decrypt(b"r", &k.encrypt(b"r", b"x")).expect("same key"),
                b"x"
            );
            // Other bound fields: no key.
            assert!(MasterKey::unwrap(&again, baton_fuzz::PASSWORD, kdf, b"edited").is_err());
        }
        // The seal is valid, so a failure is about its content, never the AEAD.
        Err(e) => assert!(!matches!(e, FormatError::Decrypt), "{e}"),
    }
});
