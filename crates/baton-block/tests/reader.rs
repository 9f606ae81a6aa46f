//! The random-access reader and the pseudo-volume, on a real repository in
//! a directory: bytes fetched are bounded (each chunk once, however often
//! it is read), random reads equal the image, a hostile fixed index is
//! refused, and instant restore's merge and verification hold.

use baton_block::instant::{self, Destination};
use baton_block::{
    BlockBackupOptions, BlockSource, ImageReader, Overlay, PseudoVolume, ReaderConfig,
};
use baton_repo::{Cancel, InitOptions, NoProgress, Repository};
use baton_storage::LocalStorage;
use baton_testing::Rng;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

const MIB: u64 = 1 << 20;

fn repo(dir: &Path) -> Repository {
    let opts = InitOptions {
        pack_size: 4 << 20,
        kdf: baton_repo::kdf_params(8192, 1),
        ..InitOptions::default()
    };
    Repository::init(Arc::new(LocalStorage::new(dir.join("repo"))), b"pw", &opts).unwrap()
}

/// An image with random data in some chunks and holes elsewhere, backed up
/// with 64 KiB chunks; returns its bytes and the repository, indexed.
fn backed_up(dir: &Path, size: u64, seed: u64) -> (Vec<u8>, Repository) {
    let img = dir.join("img");
    let mut rng = Rng::new(seed);
    let mut bytes = vec![0u8; size as usize];
    let mut pos = 0;
    while pos < size {
        let len = rng.range(1, 200_000).min(size - pos);
        if rng.chance(50) {
            rng.fill(&mut bytes[pos as usize..(pos + len) as usize]);
        }
        pos += len + rng.below(300_000);
    }
    std::fs::write(&img, &bytes).unwrap();
    let mut r = repo(dir);
    let opts = BlockBackupOptions {
        chunk_size: 64 << 10,
        ..BlockBackupOptions::default()
    };
    baton_block::backup_block(
        &mut r,
        BlockSource::Path(img),
        &opts,
        &NoProgress,
        &Cancel::new(),
    )
    .unwrap();
    r.load_index().unwrap();
    (bytes, r)
}

fn open(r: Repository, cfg: ReaderConfig) -> ImageReader {
    let (_, snap) = r.find_snapshot("latest").unwrap();
    let node = baton_block::find_image(&r, &snap, None).unwrap();
    ImageReader::open(Arc::new(r), &node, cfg).unwrap()
}

#[test]
fn random_reads_equal_the_image_and_each_chunk_is_fetched_once() {
    let dir = tempfile::tempdir().unwrap();
    let size = 6 * MIB + 4321;
    let (want, r) = backed_up(dir.path(), size, 1);
    let reader = open(
        r,
        ReaderConfig {
            cache_bytes: 64 * MIB,
            read_ahead: 0,
            threads: 1,
        },
    );
    let data_chunks = (0..reader.layout().chunk_count())
        .filter(|&i| reader.chunk_id(i).unwrap().is_some())
        .count() as u64;
    let mut rng = Rng::new(2);
    for _ in 0..500 {
        let len = rng.range(1, 300_000).min(size);
        let off = rng.below(size - len + 1);
        let mut buf = vec![0xaa; len as usize];
        reader.read_at(off, &mut buf).unwrap();
        assert!(
            buf == want[off as usize..(off + len) as usize],
            "read at {off}+{len} differs"
        );
    }
    // The whole image fits the cache: no chunk is fetched twice.
    assert!(
        reader.fetches() <= data_chunks,
        "{} fetches for {data_chunks} chunks",
        reader.fetches()
    );
    let mut past = [0u8; 2];
    assert!(
        reader.read_at(size - 1, &mut past).is_err(),
        "a read past the end must fail"
    );
    // Extents: holes exactly where the fixed index has them.
    let ext = reader.extents(0, size, &|_, _| false).unwrap();
    assert_eq!(ext.iter().map(|e| e.0).sum::<u64>(), size);
}

#[test]
fn a_small_cache_still_reads_right_and_read_ahead_fetches_each_chunk_once() {
    let dir = tempfile::tempdir().unwrap();
    let size = 4 * MIB;
    let (want, r) = backed_up(dir.path(), size, 3);
    let reader = open(
        r,
        ReaderConfig {
            cache_bytes: 0,
            read_ahead: 8,
            threads: 2,
        },
    );
    let data_chunks = (0..reader.layout().chunk_count())
        .filter(|&i| reader.chunk_id(i).unwrap().is_some())
        .count() as u64;
    let mut got = vec![0u8; size as usize];
    for (i, c) in got.chunks_mut(32 << 10).enumerate() {
        reader.read_at(i as u64 * (32 << 10), c).unwrap();
    }
    assert!(got == want);
    // Sequential: read-ahead and the reader share fetches (a chunk being
    // fetched is waited for, not fetched again), read-ahead never runs
    // further than the cache (four chunks here) holds, and hints the reader
    // has passed are dropped; at most a hint in flight while the reader
    // passes it (the read-ahead distance, 2 here) is fetched again. (Before
    // these rules a loaded machine fetched 35 times for 18 chunks.)
    assert!(
        reader.fetches() <= data_chunks + 2,
        "{} fetches for {data_chunks} chunks",
        reader.fetches()
    );
}

#[test]
fn instant_restore_merges_and_verifies_and_a_bad_merge_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let size = 3 * MIB + 100;
    let (mut want, r) = backed_up(dir.path(), size, 5);
    let reader = Arc::new(open(r, ReaderConfig::default()));
    let l = *reader.layout();
    let dest_path = dir.path().join("dest");
    let ov_path = dir.path().join("ov");
    let dest = Arc::new(
        Destination::open(
            &dest_path,
            &ov_path,
            size,
            l.chunk_count(),
            "id",
            instant::OpenMode::Fresh,
        )
        .unwrap(),
    );
    let overlay = Overlay::open(&ov_path, size, "id").unwrap();
    let vol = PseudoVolume::new(reader.clone(), overlay, Some(dest.clone()));
    // Writes straddling chunk and block boundaries, and a zeroed range.
    for (off, len, v) in [
        (65_530u64, 20usize, 1u8),
        (200_000, 70_000, 2),
        (size - 7, 7, 3),
    ] {
        vol.write(off, &vec![v; len], false).unwrap();
        want[off as usize..off as usize + len].fill(v);
    }
    vol.zero(1_000_000, 9000, true).unwrap();
    want[1_000_000..1_009_000].fill(0);
    let failed =
        instant::copy_to_destination(&vol, &dest, 4, None, &|_, _| {}, &Cancel::new()).unwrap();
    assert!(failed.is_empty());
    let mut through = vec![0u8; size as usize];
    vol.read(0, &mut through).unwrap();
    assert!(
        through == want,
        "the volume does not read as snapshot + writes"
    );
    instant::merge(vol.overlay(), &dest).unwrap();
    assert!(
        std::fs::read(&dest_path).unwrap() == want,
        "merged destination differs"
    );
    let rep = instant::verify(&vol, &dest, &Cancel::new()).unwrap();
    assert!(rep.mismatches.is_empty(), "{rep:?}");
    assert!(rep.with_overlay >= 3 && rep.by_hash > 0, "{rep:?}");
    // A byte of the destination changed behind its back is found.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&dest_path)
        .unwrap();
    f.write_all_at(&[0x77], 2 * MIB + 5).unwrap();
    f.write_all_at(&[0x77], 200_001).unwrap();
    let rep = instant::verify(&vol, &dest, &Cancel::new()).unwrap();
    assert_eq!(rep.mismatches.len(), 2, "{rep:?}");
}

#[test]
fn a_fixed_index_that_disagrees_with_its_node_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_, r) = backed_up(dir.path(), MIB, 7);
    let (_, snap) = r.find_snapshot("latest").unwrap();
    let mut node = baton_block::find_image(&r, &snap, None).unwrap();
    node.size += 1;
    let e = ImageReader::open(Arc::new(r), &node, ReaderConfig::default())
        .err()
        .unwrap();
    assert!(e.to_string().contains("fixed index covers"), "{e}");
}
