//! Encryption and keys.
//!
//! Every stored object and every blob is sealed with XChaCha20-Poly1305 under
//! the repository's encryption key: `nonce (24 random bytes) || ciphertext ||
//! tag (16)`, with associated data that names what the unit is (see
//! [`crate::role`]). Random 24-byte nonces are safe across many concurrent writers.
//! Chunk ids are BLAKE3 in keyed mode with a second repository secret. The two
//! secrets form the master key, which is stored only wrapped (sealed) under a
//! key derived from a password with Argon2id, once per key file.

use crate::FormatError;
use baton_types::{Id, KdfParams, hex_decode, hex_encode};
use chacha20poly1305::aead::{AeadInOut, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use zeroize::{Zeroize, Zeroizing};

/// Bytes added to a plaintext by sealing it.
pub const OVERHEAD: usize = NONCE_LEN + 16;
const NONCE_LEN: usize = 24;

/// The repository secrets: the encryption key and the chunk-id (MAC) key.
#[derive(Clone)]
pub struct MasterKey {
    enc: [u8; 32],
    mac: [u8; 32],
    cipher: XChaCha20Poly1305,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct MasterKeyJson {
    encrypt: String,
    mac: String,
}

impl Drop for MasterKeyJson {
    fn drop(&mut self) {
        self.encrypt.zeroize();
        self.mac.zeroize();
    }
}

impl MasterKey {
    pub fn from_parts(enc: [u8; 32], mac: [u8; 32]) -> Self {
        let cipher = XChaCha20Poly1305::new(&enc.into());
        MasterKey { enc, mac, cipher }
    }

    pub fn generate() -> Self {
        let mut enc = [0u8; 32];
        let mut mac = [0u8; 32];
        crate::random_bytes(&mut enc);
        crate::random_bytes(&mut mac);
        Self::from_parts(enc, mac)
    }

    /// This key's encryption key with `other`'s MAC key: a repository
    /// sealed apart from `other`'s that names blobs as it does.
    pub fn with_ids_of(&self, other: &MasterKey) -> MasterKey {
        Self::from_parts(self.enc, other.mac)
    }

    /// Seals `plain` bound to `ad` (its role, see [`crate::role`]):
    /// nonce || ciphertext || tag.
    pub fn encrypt(&self, ad: &[u8], plain: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        self.encrypt_into(ad, plain, &mut out);
        out
    }

    /// Like [`MasterKey::encrypt`], into `out` (cleared first), so a caller
    /// sealing many blobs can reuse its buffers.
    pub fn encrypt_into(&self, ad: &[u8], plain: &[u8], out: &mut Vec<u8>) {
        seal_into(&self.cipher, ad, plain, out)
    }

    /// Opens what [`MasterKey::encrypt`] sealed with the same `ad`; any
    /// other associated data fails like damage.
    pub fn decrypt(&self, ad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, FormatError> {
        let mut out = Vec::new();
        self.decrypt_into(ad, sealed, &mut out)?;
        Ok(out)
    }

    /// Like [`MasterKey::decrypt`], into `out` (cleared first): decrypts in
    /// place, so a caller opening many blobs can reuse its buffer.
    pub fn decrypt_into(
        &self,
        ad: &[u8],
        sealed: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), FormatError> {
        open_into(&self.cipher, ad, sealed, out)
    }

    /// The keyed hash that names a blob with this plaintext.
    pub fn blob_id(&self, plain: &[u8]) -> Id {
        Id::from_bytes(*blake3::keyed_hash(&self.mac, plain).as_bytes())
    }

    /// A hasher for computing a blob id incrementally.
    pub fn blob_hasher(&self) -> blake3::Hasher {
        blake3::Hasher::new_keyed(&self.mac)
    }

    fn to_json(&self) -> Zeroizing<Vec<u8>> {
        let j = MasterKeyJson {
            encrypt: hex_encode(&self.enc),
            mac: hex_encode(&self.mac),
        };
        Zeroizing::new(serde_json::to_vec(&j).expect("serializing two strings cannot fail"))
    }

    fn from_json(b: &[u8]) -> Result<Self, FormatError> {
        let j: MasterKeyJson = serde_json::from_slice(b).map_err(|source| FormatError::Json {
            what: "master key",
            source,
        })?;
        let part = |s: &str| {
            let v = Zeroizing::new(hex_decode(s).unwrap_or_default());
            let mut out = [0u8; 32];
            if v.len() != 32 {
                return Err(FormatError::malformed(
                    "master key",
                    "key part is not 32 hex bytes",
                ));
            }
            out.copy_from_slice(&v);
            Ok(out)
        };
        let mut enc = part(&j.encrypt)?;
        let mut mac = part(&j.mac)?;
        let key = Self::from_parts(enc, mac);
        enc.zeroize();
        mac.zeroize();
        Ok(key)
    }

    /// Wraps this master key under `password`, bound to `ad` (see
    /// [`crate::role::key_wrap`]), returning the hex of the sealed key for a
    /// [`baton_types::KeyFile`].
    pub fn wrap(&self, password: &[u8], kdf: &KdfParams, ad: &[u8]) -> Result<String, FormatError> {
        let kek = Zeroizing::new(derive_key(password, kdf)?);
        let cipher = XChaCha20Poly1305::new(&(*kek).into());
        let mut sealed = Vec::new();
        seal_into(&cipher, ad, &self.to_json(), &mut sealed);
        Ok(hex_encode(&sealed))
    }

    /// Unwraps a master key sealed by [`MasterKey::wrap`] with the same
    /// `ad`. A wrong password, or associated data that differs (a key file
    /// whose plaintext fields were edited), gives [`FormatError::Decrypt`].
    pub fn unwrap(
        data_hex: &str,
        password: &[u8],
        kdf: &KdfParams,
        ad: &[u8],
    ) -> Result<Self, FormatError> {
        let sealed = hex_decode(data_hex)
            .ok_or_else(|| FormatError::malformed("key file", "data is not hex"))?;
        let kek = Zeroizing::new(derive_key(password, kdf)?);
        let cipher = XChaCha20Poly1305::new(&(*kek).into());
        let mut plain = Zeroizing::new(Vec::new());
        open_into(&cipher, ad, &sealed, &mut plain)?;
        Self::from_json(&plain)
    }
}

impl Drop for MasterKey {
    fn drop(&mut self) {
        // The cipher's own copy of the key is wiped by chacha20poly1305's
        // `zeroize` feature.
        self.enc.zeroize();
        self.mac.zeroize();
    }
}

/// `nonce || ciphertext || tag` into `out`, encrypting in place (one copy
/// of the plaintext, no allocation when `out` has room).
fn seal_into(cipher: &XChaCha20Poly1305, ad: &[u8], plain: &[u8], out: &mut Vec<u8>) {
    let mut nonce = [0u8; NONCE_LEN];
    crate::random_bytes(&mut nonce);
    out.clear();
    out.reserve(plain.len() + OVERHEAD);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(plain);
    let tag = cipher
        .encrypt_inout_detached(&XNonce::from(nonce), ad, out[NONCE_LEN..].as_mut().into())
        .expect("XChaCha20-Poly1305 encryption of an in-memory buffer cannot fail");
    out.extend_from_slice(&tag);
}

/// Opens `nonce || ciphertext || tag` into `out` (cleared first; left empty
/// on failure), decrypting in place.
fn open_into(
    cipher: &XChaCha20Poly1305,
    ad: &[u8],
    sealed: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), FormatError> {
    out.clear();
    if sealed.len() < OVERHEAD {
        return Err(FormatError::Decrypt);
    }
    let (nonce, rest) = sealed.split_at(NONCE_LEN);
    let (ct, tag) = rest.split_at(rest.len() - 16);
    let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| FormatError::Decrypt)?;
    let tag: [u8; 16] = tag.try_into().map_err(|_| FormatError::Decrypt)?;
    out.extend_from_slice(ct);
    let opened = cipher.decrypt_inout_detached(
        &XNonce::from(nonce),
        ad,
        out.as_mut_slice().into(),
        &tag.into(),
    );
    if opened.is_err() {
        out.clear();
        return Err(FormatError::Decrypt);
    }
    Ok(())
}

/// Default Argon2id parameters: 64 MiB, 3 passes, 1 lane (OWASP's guidance).
pub fn default_kdf_params() -> KdfParams {
    kdf_params(64 * 1024, 3)
}

/// Argon2id parameters with a fresh random salt.
pub fn kdf_params(memory_kib: u32, iterations: u32) -> KdfParams {
    let mut salt = [0u8; 16];
    crate::random_bytes(&mut salt);
    KdfParams {
        algorithm: "argon2id".into(),
        memory_kib,
        iterations,
        parallelism: 1,
        salt: hex_encode(&salt),
    }
}

/// Most Argon2id memory accepted, in KiB (4 GiB). Key files are plaintext and
/// unauthenticated: a damaged one must not make `open` allocate and fill more.
pub const MAX_KDF_MEMORY_KIB: u32 = 4 << 20;
/// Least Argon2id memory accepted, in KiB (8 MiB): below it a stolen key
/// file's password can be guessed too cheaply. Checked when a key is made
/// and when one is opened.
pub const MIN_KDF_MEMORY_KIB: u32 = 8 * 1024;
/// Most Argon2id passes accepted (a damaged key file must not make `open` hang).
pub const MAX_KDF_ITERATIONS: u32 = 64;
/// Most Argon2id lanes accepted.
pub const MAX_KDF_PARALLELISM: u32 = 64;

/// Checks that KDF parameters are within the floor and the limits.
pub fn check_kdf_floor(p: &KdfParams) -> Result<(), FormatError> {
    if p.algorithm != "argon2id" {
        return Err(FormatError::Kdf(format!(
            "unknown algorithm {:?}",
            p.algorithm
        )));
    }
    if p.memory_kib < MIN_KDF_MEMORY_KIB || p.iterations == 0 || p.parallelism == 0 {
        return Err(FormatError::Kdf(format!(
            "parameters below the floor: {} KiB (at least {MIN_KDF_MEMORY_KIB}), \
             {} passes (at least 1), {} lanes (at least 1)",
            p.memory_kib, p.iterations, p.parallelism
        )));
    }
    if p.memory_kib > MAX_KDF_MEMORY_KIB
        || p.iterations > MAX_KDF_ITERATIONS
        || p.parallelism > MAX_KDF_PARALLELISM
    {
        return Err(FormatError::Kdf(format!(
            "parameters beyond the limits: {} KiB (at most {MAX_KDF_MEMORY_KIB}), \
             {} passes (at most {MAX_KDF_ITERATIONS}), {} lanes (at most {MAX_KDF_PARALLELISM})",
            p.memory_kib, p.iterations, p.parallelism
        )));
    }
    Ok(())
}

/// Derives a 32-byte key from a password.
pub fn derive_key(password: &[u8], p: &KdfParams) -> Result<[u8; 32], FormatError> {
    check_kdf_floor(p)?;
    let salt = hex_decode(&p.salt).ok_or_else(|| FormatError::Kdf("salt is not hex".into()))?;
    let params = argon2::Params::new(p.memory_kib, p.iterations, p.parallelism, Some(32))
        .map_err(|e| FormatError::Kdf(e.to_string()))?;
    let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut out = [0u8; 32];
    a.hash_password_into(password, &salt, &mut out)
        .map_err(|e| FormatError::Kdf(e.to_string()))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn seal_round_trip(data in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let k = MasterKey::generate();
            let s = k.encrypt(b"ad", &data);
            prop_assert_eq!(s.len(), data.len() + OVERHEAD);
            prop_assert_eq!(&k.decrypt(b"ad", &s).unwrap(), &data);
            let mut out = vec![9u8; 3];
            k.decrypt_into(b"ad", &s, &mut out).unwrap();
            prop_assert_eq!(out, data);
            prop_assert!(k.decrypt(b"other role", &s).is_err());
            prop_assert!(k.decrypt(b"", &s).is_err());
        }

        #[test]
        fn any_flipped_bit_is_detected(data in proptest::collection::vec(any::<u8>(), 1..256), pos in any::<usize>(), bit in 0u8..8) {
            let k = MasterKey::generate();
            let mut s = k.encrypt(b"ad", &data);
            let i = pos % s.len();
            s[i] ^= 1 << bit;
            prop_assert!(k.decrypt(b"ad", &s).is_err());
            let mut out = Vec::new();
            prop_assert!(k.decrypt_into(b"ad", &s, &mut out).is_err());
            prop_assert!(out.is_empty());
        }
    }

    #[test]
    fn wrong_key_and_short_input_fail() {
        let a = MasterKey::generate();
        let b = MasterKey::generate();
        assert!(b.decrypt(b"", &a.encrypt(b"", b"x")).is_err());
        assert!(a.decrypt(b"", &[0u8; 10]).is_err());
    }

    #[test]
    fn wrap_unwrap_with_password() {
        let k = MasterKey::generate();
        let p = kdf_params(MIN_KDF_MEMORY_KIB, 1);
        let w = k.wrap(b"secret", &p, b"fields").unwrap();
        let u = MasterKey::unwrap(&w, b"secret", &p, b"fields").unwrap();
        assert_eq!(u.blob_id(b"a"), k.blob_id(b"a"));
        assert!(matches!(
            MasterKey::unwrap(&w, b"wrong", &p, b"fields"),
            Err(FormatError::Decrypt)
        ));
        // Edited plaintext fields (say, append_only removed) do not open.
        assert!(matches!(
            MasterKey::unwrap(&w, b"secret", &p, b"fields edited"),
            Err(FormatError::Decrypt)
        ));
    }

    /// A key file's KDF parameters are unauthenticated bytes from storage:
    /// absurd ones are refused at once, before Argon2 allocates or runs.
    #[test]
    fn kdf_parameters_beyond_the_limits_are_refused() {
        let k = MasterKey::generate();
        let p = kdf_params(MIN_KDF_MEMORY_KIB, 1);
        let w = k.wrap(b"pw", &p, b"").unwrap();
        for (m, t, l) in [
            (8, 1, 1),
            (MIN_KDF_MEMORY_KIB - 1, 1, 1),
            (MIN_KDF_MEMORY_KIB, 0, 1),
            (MIN_KDF_MEMORY_KIB, 1, 0),
            (u32::MAX, 1, 1),
            (MAX_KDF_MEMORY_KIB + 1, 1, 1),
            (1024, u32::MAX, 1),
            (1024, MAX_KDF_ITERATIONS + 1, 1),
            (u32::MAX, 1, MAX_KDF_PARALLELISM + 1),
        ] {
            let bad = KdfParams {
                memory_kib: m,
                iterations: t,
                parallelism: l,
                ..p.clone()
            };
            let t0 = std::time::Instant::now();
            assert!(matches!(
                MasterKey::unwrap(&w, b"pw", &bad, b""),
                Err(FormatError::Kdf(_))
            ));
            assert!(t0.elapsed() < std::time::Duration::from_secs(1));
        }
        assert!(MasterKey::unwrap(&w, b"pw", &p, b"").is_ok());
    }

    #[test]
    fn ids_are_keyed() {
        let a = MasterKey::generate();
        let b = MasterKey::generate();
        assert_ne!(a.blob_id(b"same"), b.blob_id(b"same"));
        let mut h = a.blob_hasher();
        h.update(b"sa");
        h.update(b"me");
        assert_eq!(Id::from_bytes(*h.finalize().as_bytes()), a.blob_id(b"same"));
    }
}
