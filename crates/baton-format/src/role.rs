//! What a sealed unit is: the associated data every seal is bound to
//! (format version 2).
//!
//! Every seal in a repository uses the same master key, so the ciphertext
//! alone does not say what it is: in format version 1 a backed-up file whose
//! bytes looked like a snapshot could be copied out of its pack and would
//! open as a snapshot. Version 2 seals every unit with associated data that
//! names its role, and opens it only with the associated data of the role the
//! reader expects. A unit presented as anything else fails authentication,
//! exactly like a damaged one.
//!
//! ```text
//! ad = "baton/2/" label 0x00 fields
//! blob         label "blob"         fields = type:u8 id:[32]
//! pack header  label "pack-header"  fields = repository id:[32]
//! object       label = object kind  fields = repository id:[32] name
//! key wrap     label "key"          fields = canonical JSON of the key file's other fields
//! ```
//! Object kinds are `config`, `index`, `snapshots`, `locks`, `journal`; the
//! name is the object's name where it is not derived from the sealed bytes
//! (a journal record's `<job>/<sequence>`) and empty otherwise (content-named
//! objects are bound to their name by their hash). Binding to the repository
//! id keeps an object of one repository from opening in another that shares
//! the master key.

use baton_types::{BlobType, Id};

/// Prefix of every associated data: the format and its version.
pub const DOMAIN: &[u8; 8] = b"baton/2/";

/// Length of a blob's associated data.
pub const BLOB_AD_LEN: usize = DOMAIN.len() + 5 + 1 + 32;

/// Associated data of a blob: its type and id. Fixed size, no allocation
/// (one per chunk on the hot path).
pub fn blob(blob_type: BlobType, id: &Id) -> [u8; BLOB_AD_LEN] {
    let mut ad = [0u8; BLOB_AD_LEN];
    ad[..8].copy_from_slice(DOMAIN);
    ad[8..13].copy_from_slice(b"blob\0");
    ad[13] = blob_type.as_byte();
    ad[14..].copy_from_slice(id.as_bytes());
    ad
}

fn labelled(label: &[u8], fields: &[&[u8]]) -> Vec<u8> {
    let len = DOMAIN.len() + label.len() + 1 + fields.iter().map(|f| f.len()).sum::<usize>();
    let mut ad = Vec::with_capacity(len);
    ad.extend_from_slice(DOMAIN);
    ad.extend_from_slice(label);
    ad.push(0);
    for f in fields {
        ad.extend_from_slice(f);
    }
    ad
}

/// Associated data of a pack's header.
pub fn pack_header(repository: &Id) -> Vec<u8> {
    labelled(b"pack-header", &[repository.as_bytes()])
}

/// Associated data of a stored object of `kind` (the storage directory name:
/// `config`, `index`, `snapshots`, `locks`, `journal`), in `repository`, with
/// the name it is stored under when that name is not its hash (else empty).
pub fn object(kind: &str, repository: &Id, name: &str) -> Vec<u8> {
    labelled(kind.as_bytes(), &[repository.as_bytes(), name.as_bytes()])
}

/// Associated data of a key file's wrapped master key: every other field of
/// the key file, canonically encoded by the caller.
pub fn key_wrap(fields: &[u8]) -> Vec<u8> {
    labelled(b"key", &[fields])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_never_share_associated_data() {
        let id = Id::from_bytes([7; 32]);
        let all = [
            blob(BlobType::Data, &id).to_vec(),
            blob(BlobType::Tree, &id).to_vec(),
            pack_header(&id),
            object("config", &id, ""),
            object("snapshots", &id, ""),
            object("index", &id, ""),
            object("locks", &id, ""),
            object("journal", &id, "a/1"),
            object("journal", &id, "a/2"),
            key_wrap(b"{}"),
        ];
        for (i, a) in all.iter().enumerate() {
            for b in &all[i + 1..] {
                assert_ne!(a, b);
            }
        }
        assert_ne!(
            blob(BlobType::Data, &id),
            blob(BlobType::Data, &Id::from_bytes([8; 32]))
        );
    }
}
