//! Writes the seed corpora under fuzz/seeds/<target>/: a few small, valid
//! inputs per target, so the fuzzer starts past the format's magic numbers,
//! field names and seals. Deterministic: running it again changes nothing.
//!
//!     cargo run --manifest-path fuzz/Cargo.toml --example seeds

use baton_format::compress::Compressor;
use baton_format::crypto::derive_key;
use baton_format::index::{IndexFile, IndexPack};
use baton_format::object::to_json;
use baton_format::pack::{HEADER_MAGIC, PackEntry};
use baton_fuzz::{ENC, MAC, PASSWORD, cheap_kdf, key, key_wrap_ad, pack_ad, seal, seal_with};
use baton_types::*;
use std::path::Path;

fn id(n: u8) -> Id {
    Id::from_bytes([n; 32])
}

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("seeds")
        .join(target);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), bytes).unwrap();
}

fn node(name: &[u8], kind: NodeKind) -> Node {
    Node {
        name: FsName(name.to_vec()),
        kind,
        mode: 0o644,
        uid: 1000,
        gid: 1000,
        user: Some("ann".into()),
        group: None,
        mtime_ns: 1_700_000_000_123_456_789,
        atime_ns: -1,
        ctime_ns: 0,
        inode: 42,
        device_id: 2049,
        links: 1,
        size: 0,
        rdev: 0,
        content: Vec::new(),
        subtree: None,
        link_target: None,
        xattrs: Vec::new(),
        image: None,
    }
}

fn tree() -> Tree {
    let mut file = node(b"a.txt", NodeKind::File);
    file.size = 5;
    file.content = vec![id(1), id(2)];
    file.xattrs = vec![Xattr {
        name: "user.x".into(),
        value: "00ff".into(),
    }];
    let mut dir = node(b"d", NodeKind::Dir);
    dir.subtree = Some(id(3));
    let mut link = node(b"l\xff", NodeKind::Symlink);
    link.link_target = Some(FsName(b"../\xfe".to_vec()));
    let mut dev = node(b"sda", NodeKind::Blockdev);
    dev.rdev = 0x801;
    Tree {
        nodes: vec![file, dir, link, dev],
    }
}

fn pack_header(entries: &[(BlobType, bool, u32, u32, Id)]) -> Vec<u8> {
    let mut h = HEADER_MAGIC.to_vec();
    h.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for (t, z, len, raw, id) in entries {
        h.push(t.as_byte());
        h.push(*z as u8);
        h.extend_from_slice(&len.to_le_bytes());
        h.extend_from_slice(&raw.to_le_bytes());
        h.extend_from_slice(id.as_bytes());
    }
    h
}

fn main() {
    let k = key();

    // config
    let mut config = Config {
        version: FORMAT_VERSION,
        id: id(9),
        chunker: ChunkerParams::with_seed(0x0123_4567_89ab_cdef),
        compression: 3,
        pack_size: 16 << 20,
        block_size: 1 << 20,
    };
    write("config", "default.json", &to_json(&config));
    config.chunker = ChunkerParams {
        min_size: 64,
        avg_size: 256,
        max_size: 1024,
        seed: 1,
    };
    config.compression = 0;
    write("config", "small_chunks.json", &to_json(&config));

    // key_file: a key file that unwraps with the target's password, and the
    // plaintext of a wrapped master key.
    let kdf = cheap_kdf();
    let master = format!(
        r#"{{"encrypt":"{}","mac":"{}"}}"#,
        hex_encode(&ENC),
        hex_encode(&MAC)
    );
    let kek = derive_key(PASSWORD, &kdf).unwrap();
    let mut kf = KeyFile {
        version: 2,
        repository: Some(baton_fuzz::REPO),
        created: "2026-01-02T03:04:05Z".into(),
        hostname: "host".into(),
        username: "root".into(),
        kdf: kdf.clone(),
        data: String::new(),
        append_only: false,
    };
    kf.data = hex_encode(&seal_with(&kek, &key_wrap_ad(&kf), master.as_bytes()));
    write("key_file", "key.json", &to_json(&kf));
    write(
        "key_file",
        "append_only.json",
        &to_json(&KeyFile {
            append_only: true,
            ..kf
        }),
    );
    write("key_file", "master_key.json", master.as_bytes());

    // index
    write("index", "empty", &IndexFile::default().encode());
    let entry = |t, offset, length, raw_length, compressed, n| PackEntry {
        blob_type: t,
        id: id(n),
        offset,
        length,
        raw_length,
        compressed,
    };
    let idx = IndexFile {
        supersedes: vec![id(7)],
        packs: vec![
            IndexPack {
                id: id(5),
                blobs: vec![
                    entry(BlobType::Data, 0, 100, 60, false, 1),
                    entry(BlobType::Tree, 100, 80, 200, true, 2),
                ],
            },
            IndexPack {
                id: id(6),
                blobs: vec![],
            },
        ],
        damaged: vec![(id(5), id(1))],
    };
    write("index", "two_packs", &idx.encode());

    // pack_header: split position (u16le), blobs, header plaintext.
    let b1 = seal(
        &baton_format::role::blob(BlobType::Data, &k.blob_id(b"hello")),
        b"hello",
    );
    let b2 = seal(
        &baton_format::role::blob(BlobType::Tree, &id(4)),
        &[7u8; 50],
    );
    let h = pack_header(&[
        (
            BlobType::Data,
            false,
            b1.len() as u32,
            5,
            k.blob_id(b"hello"),
        ),
        (BlobType::Tree, true, b2.len() as u32, 300, id(4)),
    ]);
    let blobs = [b1.as_slice(), b2.as_slice()].concat();
    let mut s = (blobs.len() as u16).to_le_bytes().to_vec();
    s.extend_from_slice(&blobs);
    s.extend_from_slice(&h);
    write("pack_header", "two_blobs", &s);
    let h0 = pack_header(&[]);
    let mut s = vec![0, 0];
    s.extend_from_slice(&h0);
    write("pack_header", "empty", &s);
    // A whole pack whose header is sealed with the fixed key.
    let sealed = seal(&pack_ad(), &h);
    let mut pack = blobs.clone();
    pack.extend_from_slice(&sealed);
    pack.extend_from_slice(&(sealed.len() as u32).to_le_bytes());
    write("pack_header", "whole_pack", &pack);

    // tree
    write("tree", "four_nodes.json", &to_json(&tree()));
    write("tree", "empty.json", &to_json(&Tree::default()));

    // snapshot
    let mut snap = Snapshot {
        time: "2026-01-02T03:04:05.123456789Z".into(),
        tree: id(3),
        paths: vec!["/home".into(), "/etc".into()],
        hostname: "host".into(),
        username: "root".into(),
        tags: vec!["nightly".into()],
        parent: Some(id(8)),
        program_version: "baton 0.1.0".into(),
        job: Some(id(10)),
        original: None,
        summary: None,
    };
    write("snapshot", "minimal.json", &to_json(&snap));
    snap.original = Some(id(12));
    snap.summary = Some(SnapshotSummary {
        files_new: 3,
        files_changed: 1,
        files_unmodified: 10,
        dirs: 2,
        others: 1,
        bytes_total: 12345,
        bytes_read: 1000,
        bytes_stored: 900,
        blobs_new: 4,
        bytes_resumed: 5,
        resumed_job: Some(id(11)),
        backup_start: "2026-01-02T03:04:00Z".into(),
        backup_end: "2026-01-02T03:04:05Z".into(),
        // A measured duration whose shortest decimal needs 17 digits.
        duration_s: 198.62006851766338,
        errors: vec![BackupErrorEntry {
            path: "/etc/shadow".into(),
            message: "permission denied".into(),
        }],
    });
    write("snapshot", "summary.json", &to_json(&snap));

    // journal_record
    let rec = JournalRecord {
        job: id(10),
        seq: 0,
        time: "2026-01-02T03:04:05Z".into(),
        manifest: Some(JobManifest {
            hostname: "host".into(),
            paths: vec!["/home".into()],
            tags: vec!["t".into()],
            parent: Some(id(8)),
            started: "2026-01-02T03:04:00Z".into(),
            image: None,
        }),
        packs: vec![JournalPack {
            id: id(5),
            blobs: vec![JournalBlob {
                id: id(1),
                blob_type: BlobType::Data,
                offset: 0,
                length: 100,
                raw_length: 60,
                compressed: false,
            }],
        }],
        position: 60,
        catalog: vec![CatalogEntry {
            path: "/home/a.txt".into(),
            depth: 2,
            offset: 60,
            node: tree().nodes.remove(0),
        }],
        completed_sources: vec!["/home".into()],
        segments: Vec::new(),
    };
    write("journal_record", "first.json", &to_json(&rec));
    let later = JournalRecord {
        seq: 1,
        manifest: None,
        packs: Vec::new(),
        catalog: Vec::new(),
        completed_sources: Vec::new(),
        ..rec
    };
    write("journal_record", "later.json", &to_json(&later));
    let block = JournalRecord {
        seq: 2,
        segments: vec![
            JournalSegment {
                index: 0,
                id: id(11),
            },
            JournalSegment {
                index: 1,
                id: id(12),
            },
        ],
        ..later.clone()
    };
    write("journal_record", "block.json", &to_json(&block));

    // fixed: an image's fixed index root and a segment with a hole.
    let layout = baton_format::fixed::Layout::new(4096, 4, 4096 * 13 + 7).unwrap();
    let root = baton_format::fixed::FixedRoot {
        layout,
        segments: (0..layout.segment_count())
            .map(|i| id(20 + i as u8))
            .collect(),
    };
    write("fixed", "root", &root.encode());
    let seg = baton_format::fixed::FixedSegment {
        first_chunk: 4,
        chunks: vec![Some(id(1)), None, Some(id(2)), Some(id(1))],
    };
    write("fixed", "segment", &seg.encode());

    // object: encoding byte then payload.
    let json = to_json(&snap);
    write("object", "raw", &[&[0u8][..], &json].concat());
    let mut c = Compressor::new(3);
    let z = c.compress(&[json.as_slice(); 4].concat()).unwrap();
    write("object", "zstd", &[&[1u8][..], &z].concat());
    let bomb = c.compress(&vec![0u8; 64 << 10]).unwrap();
    write("object", "zstd_64k_zeros", &[&[1u8][..], &bomb].concat());

    // blob: flags, raw length (u32le), payload.
    let chunk = to_json(&tree());
    let mut b = vec![0u8];
    b.extend_from_slice(&(chunk.len() as u32).to_le_bytes());
    b.extend_from_slice(&chunk);
    write("blob", "raw_tree", &b);
    let z = c.compress(&chunk).unwrap();
    let mut b = vec![1u8];
    b.extend_from_slice(&(chunk.len() as u32).to_le_bytes());
    b.extend_from_slice(&z);
    write("blob", "zstd_tree", &b);
}
