//! The S3 backend against a real Ceph RADOS Gateway (started by the tests,
//! see `baton_testing::s3`): each storage operation's contract.

use baton_s3::{PART_SIZE, S3Config, S3Storage};
use baton_storage::{ObjectKind, Storage};
use baton_testing::s3::{gateway, unique_bucket};

fn storage() -> Option<S3Storage> {
    let gw = gateway()?;
    let url = gw.location(&unique_bucket(), "repo");
    let cfg =
        S3Config::from_location_with(url.strip_prefix("s3:").unwrap(), &|k| gw.var(k)).unwrap();
    let s = S3Storage::new(cfg).unwrap();
    s.create().unwrap();
    Some(s)
}

fn hex(i: usize) -> String {
    format!("{i:064x}")
}

#[test]
fn create_only_puts_ranges_and_bounds() {
    let Some(s) = storage() else { return };
    assert!(s.atomic_create());
    assert!(s.is_remote());
    assert!(!s.exists().unwrap());
    s.put(ObjectKind::Config, "", b"config bytes").unwrap();
    assert!(s.exists().unwrap());
    // A second create of one name fails, whatever the bytes.
    let e = s.put(ObjectKind::Config, "", b"other").unwrap_err();
    assert!(e.is_already_exists(), "{e}");
    s.put(ObjectKind::Lock, &hex(1), b"lock").unwrap();
    assert!(
        s.put(ObjectKind::Lock, &hex(1), b"x")
            .unwrap_err()
            .is_already_exists()
    );
    // Reads: whole, bounded, ranged, size, missing.
    assert_eq!(s.get(ObjectKind::Config, "").unwrap(), b"config bytes");
    let e = s.get_limited(ObjectKind::Config, "", 5).unwrap_err();
    assert!(e.to_string().contains("more than"), "{e}");
    assert_eq!(s.get_range(ObjectKind::Config, "", 7, 5).unwrap(), b"bytes");
    assert!(s.get_range(ObjectKind::Config, "", 10, 50).is_err());
    assert_eq!(s.size(ObjectKind::Lock, &hex(1)).unwrap(), 4);
    assert!(s.get(ObjectKind::Lock, &hex(2)).unwrap_err().is_not_found());
    // Names outside the format are refused before any request.
    assert!(s.put(ObjectKind::Index, "../x", b"1").is_err());
    // Deleting a missing object is no error.
    s.remove(ObjectKind::Lock, &hex(2)).unwrap();
    s.remove(ObjectKind::Lock, &hex(1)).unwrap();
    assert!(s.list(ObjectKind::Lock).unwrap().is_empty());
}

/// A pack larger than a part goes up in parts and reads back exactly, by
/// range too; a second put of it reports that it exists.
#[test]
fn large_objects_go_up_in_parts() {
    let Some(s) = storage() else { return };
    let data: Vec<u8> = (0..(2 * PART_SIZE + 12345))
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    let name = baton_format_free_name(&data);
    let before = s.requests();
    s.put(ObjectKind::Pack, &name, &data).unwrap();
    // HEAD, create, 3 parts, complete, HEAD.
    assert!(s.requests() - before >= 6, "not uploaded in parts");
    assert_eq!(s.size(ObjectKind::Pack, &name).unwrap(), data.len() as u64);
    assert_eq!(s.get(ObjectKind::Pack, &name).unwrap(), data);
    let off = PART_SIZE as u64 - 10;
    assert_eq!(
        s.get_range(ObjectKind::Pack, &name, off, 20).unwrap(),
        &data[off as usize..off as usize + 20]
    );
    assert!(
        s.put(ObjectKind::Pack, &name, &data)
            .unwrap_err()
            .is_already_exists()
    );
    assert_eq!(
        s.list_prefix(ObjectKind::Pack, &name[..4]).unwrap().len(),
        1
    );
}

fn baton_format_free_name(data: &[u8]) -> String {
    // Any 64-hex name will do for the storage layer.
    let mut h: u64 = 0xcbf29ce484222325;
    for b in data.iter().step_by(4096) {
        h = (h ^ u64::from(*b)).wrapping_mul(0x100000001b3);
    }
    format!("{h:016x}").repeat(4)
}

/// Listings page past the server's 1000 keys; prefixes narrow them; a batch
/// delete removes them all.
#[test]
fn listings_page_and_batch_deletes() {
    let Some(s) = storage() else { return };
    let n = 1234;
    for i in 0..n {
        s.put(ObjectKind::Index, &hex(i), b"i").unwrap();
    }
    let listed = s.list(ObjectKind::Index).unwrap();
    assert_eq!(listed.len(), n);
    assert!(listed.windows(2).all(|w| w[0].name < w[1].name));
    let job = "ab".repeat(32);
    for r in 0..3 {
        s.put(ObjectKind::Journal, &format!("{job}/{r:08}"), b"r")
            .unwrap();
    }
    s.put(
        ObjectKind::Journal,
        &format!("{}/00000000", "cd".repeat(32)),
        b"r",
    )
    .unwrap();
    assert_eq!(
        s.list_prefix(ObjectKind::Journal, &format!("{job}/"))
            .unwrap()
            .len(),
        3
    );
    let names: Vec<String> = listed.into_iter().map(|o| o.name).collect();
    let before = s.requests();
    s.remove_many(ObjectKind::Index, &names).unwrap();
    assert!(s.requests() - before <= 3, "not deleted in batches");
    assert!(s.list(ObjectKind::Index).unwrap().is_empty());
}

/// Permanent errors are never retried: wrong credentials (403) and a
/// missing object (404) cost one request each.
#[test]
fn permanent_errors_are_not_retried() {
    let Some(gw) = gateway() else { return };
    let Some(good) = storage() else { return };
    let before = good.requests();
    assert!(
        good.get(ObjectKind::Lock, &hex(9))
            .unwrap_err()
            .is_not_found()
    );
    assert_eq!(good.requests() - before, 1, "a 404 was retried");
    let lookup = |k: &str| match k {
        "AWS_SECRET_ACCESS_KEY" => Some("not the secret".to_string()),
        _ => gw.var(k),
    };
    let url = gw.location(&unique_bucket(), "repo");
    let cfg = S3Config::from_location_with(url.strip_prefix("s3:").unwrap(), &lookup).unwrap();
    let bad = S3Storage::new(cfg).unwrap();
    let e = bad.put(ObjectKind::Lock, &hex(1), b"x").unwrap_err();
    assert_eq!(e.kind, baton_storage::ErrorKind::PermissionDenied, "{e}");
    assert_eq!(bad.requests(), 1, "a 403 was retried");
}
