//! Helpers shared by the fuzz targets and the seed generator: a fixed master
//! key, sealing with a fixed nonce (so one input always maps to the same sealed
//! bytes and a crash reproduces exactly), and the JSON round-trip property.

use baton_format::crypto::MasterKey;
use baton_format::object::{from_json, to_json};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use std::sync::OnceLock;

/// Encryption half of the fixed master key.
pub const ENC: [u8; 32] = [0x11; 32];
/// Chunk-id (MAC) half of the fixed master key.
pub const MAC: [u8; 32] = [0x22; 32];
const NONCE: [u8; 24] = [0x33; 24];

/// The fixed master key every target decrypts with.
pub fn key() -> &'static MasterKey {
    static KEY: OnceLock<MasterKey> = OnceLock::new();
    KEY.get_or_init(|| MasterKey::from_parts(ENC, MAC))
}

/// Seals `plain` bound to `ad` under `enc` exactly as `MasterKey::encrypt`
/// does (`nonce || ciphertext || tag`), but with a fixed nonce.
pub fn seal_with(enc: &[u8; 32], ad: &[u8], plain: &[u8]) -> Vec<u8> {
    let cipher = XChaCha20Poly1305::new(&(*enc).into());
    let ct = cipher
        .encrypt(
            &XNonce::from(NONCE),
            Payload {
                msg: plain,
                aad: ad,
            },
        )
        .expect("sealing an in-memory buffer cannot fail");
    let mut out = NONCE.to_vec();
    out.extend_from_slice(&ct);
    out
}

/// Seals `plain` bound to `ad` under the fixed master key, so that it gets
/// past the AEAD when opened in that role.
pub fn seal(ad: &[u8], plain: &[u8]) -> Vec<u8> {
    seal_with(&ENC, ad, plain)
}

/// The repository id the targets bind pack headers and objects to.
pub const REPO: baton_types::Id = baton_types::Id::from_bytes([0x44; 32]);

/// The role stored objects are sealed with in the targets.
pub fn object_ad() -> Vec<u8> {
    baton_format::role::object("snapshots", &REPO, "")
}

/// The role of a pack header in the targets.
pub fn pack_ad() -> Vec<u8> {
    baton_format::role::pack_header(&REPO)
}

/// What a key file's wrap is bound to.
pub fn key_wrap_ad(kf: &baton_types::KeyFile) -> Vec<u8> {
    baton_format::role::key_wrap(&to_json(&kf.fields()))
}

/// Splits an input in two at a position given by its first two bytes
/// (little-endian, clamped to the rest's length).
pub fn split(data: &[u8]) -> (&[u8], &[u8]) {
    if data.len() < 2 {
        return (&[], data);
    }
    let at = u16::from_le_bytes([data[0], data[1]]) as usize;
    let rest = &data[2..];
    rest.split_at(at.min(rest.len()))
}

/// Decodes `data` as `T` with the format's JSON decoder. When that succeeds,
/// the canonical encoding must decode to the same value and re-encode to the
/// same bytes (tree ids depend on the encoding being deterministic).
pub fn json_round_trip<T>(what: &'static str, data: &[u8]) -> Option<T>
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let v: T = from_json(what, data).ok()?;
    let enc = to_json(&v);
    let again: T = from_json(what, &enc).unwrap_or_else(|e| {
        panic!(
            "{what}: canonical JSON does not decode: {e}\n{}",
            String::from_utf8_lossy(&enc)
        )
    });
    assert_eq!(again, v, "{what}: decode(encode(x)) != x");
    assert_eq!(to_json(&again), enc, "{what}: encoding is not stable");
    Some(v)
}

/// Password of the key files the `key_file` target builds.
pub const PASSWORD: &[u8] = b"fuzz";

/// The cheapest Argon2id parameters the format accepts, with a fixed salt.
pub fn cheap_kdf() -> baton_types::KdfParams {
    baton_types::KdfParams {
        algorithm: "argon2id".into(),
        memory_kib: baton_format::crypto::MIN_KDF_MEMORY_KIB,
        iterations: 1,
        parallelism: 1,
        salt: "00112233445566778899aabbccddeeff".into(),
    }
}
