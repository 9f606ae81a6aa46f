//! Pack headers: the length in a pack's last 4 bytes, and the sealed header.
#![no_main]

use baton_format::pack::{
    MAX_HEADER, PackEntry, PackWriter, header_length, parse_header, read_header,
};
use baton_fuzz::{REPO, key, pack_ad, seal, split};
use libfuzzer_sys::fuzz_target;

/// Entries that parsed must tile the pack: back to back from offset 0 up to
/// the sealed header.
fn check_tiling(entries: &[PackEntry], pack_len: usize, sealed_header_len: usize) {
    let mut offset = 0u64;
    for e in entries {
        assert_eq!(e.offset as u64, offset);
        offset += e.length as u64;
    }
    assert_eq!(offset + sealed_header_len as u64 + 4, pack_len as u64);
}

fuzz_target!(|data: &[u8]| {
    let key = key();

    // The input as a whole pack. Only a pack whose header was sealed with
    // the fixed key (a seed) gets past the AEAD.
    if let Ok(entries) = read_header(key, &REPO, data) {
        let n = u32::from_le_bytes(data[data.len() - 4..].try_into().unwrap());
        check_tiling(&entries, data.len(), n as usize);
    }

    // The tail check with an arbitrary pack length.
    if data.len() >= 12 {
        let pack_len = u64::from_le_bytes(data[..8].try_into().unwrap());
        if let Ok(n) = header_length(pack_len, &data[8..12]) {
            assert!(n as u64 + 4 <= pack_len && n as usize <= MAX_HEADER);
        }
    }

    // A pack built from the input: its first part as the blobs, the rest
    // sealed with the fixed key as the header, then the header's length.
    let (blobs, header) = split(data);
    let sealed = seal(&pack_ad(), header);
    let mut pack = blobs.to_vec();
    pack.extend_from_slice(&sealed);
    pack.extend_from_slice(&(sealed.len() as u32).to_le_bytes());
    let direct = parse_header(key, &REPO, &sealed, pack.len() as u64);
    match read_header(key, &REPO, &pack) {
        Ok(entries) => {
            assert_eq!(direct.expect("parse_header agrees"), entries);
            check_tiling(&entries, pack.len(), sealed.len());
            // Writing the same blobs again gives the same header plaintext.
            let mut w = PackWriter::new();
            for e in &entries {
                let b = &pack[e.offset as usize..(e.offset + e.length) as usize];
                w.add(e.blob_type, e.id, b, e.raw_length, e.compressed);
            }
            let (again, written) = w.finish(key, &REPO);
            assert_eq!(written, entries);
            assert_eq!(&again[..blobs.len()], blobs);
            let h = key
                .decrypt(&pack_ad(), &again[blobs.len()..again.len() - 4])
                .expect("own header");
            assert_eq!(h, header, "the header does not re-encode to its bytes");
            assert_eq!(read_header(key, &REPO, &again).expect("re-read"), entries);
            // Bound to the repository: another id does not open it.
            assert!(read_header(key, &baton_types::Id::from_bytes([0; 32]), &again).is_err());
        }
        Err(_) => assert!(direct.is_err(), "read_header and parse_header disagree"),
    }
});
