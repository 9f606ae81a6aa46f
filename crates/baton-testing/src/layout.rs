//! Which entries go where (see [`generate_tree`](crate::generate_tree) for the table).

use std::fs::{self, File, Permissions};
use std::io;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::sys::stat::{Mode, SFlag, makedev, mknod};

use crate::content::{WORDS, small_content, write_medium};
use crate::generate::{Gen, name, ts};
use crate::rng::Rng;

impl Gen<'_> {
    pub(crate) fn small(&mut self) -> io::Result<()> {
        let mut rng = Rng::derive(self.opts.seed, "small");
        let mut dirs: Vec<(PathBuf, usize)> = vec![(self.dir("small")?, 0)];
        for i in 0..(self.opts.small_files / 12).max(3) {
            let (parent, depth) = dirs[rng.index(dirs.len())].clone();
            let (parent, depth) = if depth >= 5 {
                dirs[0].clone()
            } else {
                (parent, depth)
            };
            let d = parent.join(format!("d{i:03}-{}", WORDS[rng.index(13)]));
            dirs.push((self.dir(&d)?, depth + 1));
        }
        for i in 0..self.opts.small_files {
            let len = match rng.below(100) {
                0..5 => 0,
                5..50 => rng.range(1, 1024),
                50..90 => rng.range(1024, 16 * 1024),
                _ => rng.range(16 * 1024, 64 * 1024),
            } as usize;
            let ext = [".txt", ".bin", ".dat", ""][rng.index(4)];
            let rel = dirs[rng.index(dirs.len())].0.join(format!("f{i:04}{ext}"));
            self.file(&rel, &small_content(&mut rng, len))?;
            if rng.chance(10) {
                self.xattr(&rel, "user.small", format!("file {i}").as_bytes())?;
            }
        }
        Ok(())
    }

    pub(crate) fn deep(&mut self) -> io::Result<()> {
        let mut rel = self.dir("deep")?;
        for level in 1..=self.opts.max_depth {
            rel.push(format!("level-{level:02}"));
            self.dir(&rel)?;
            if level % 4 == 0 {
                self.file(rel.join(format!("note-{level}.txt")), b"halfway down\n")?;
            }
        }
        self.file(rel.join("bottom.txt"), b"the bottom of the deep chain\n")?;
        Ok(())
    }

    pub(crate) fn medium(&mut self) -> io::Result<()> {
        let mut rng = Rng::derive(self.opts.seed, "medium");
        self.dir("medium")?;
        for i in 0..self.opts.medium_files {
            let kind = i % 4;
            let len = rng.range(64 * 1024, 3 * 1024 * 1024 + 1);
            let rel = PathBuf::from(format!(
                "medium/medium-{i}-{}",
                ["text.txt", "random.bin", "repeated.dat", "mixed.img"][kind]
            ));
            write_medium(&self.abs(&rel), len, kind, &mut rng)?;
            fs::set_permissions(self.abs(&rel), Permissions::from_mode(0o644))?;
            if i % 2 == 0 {
                self.xattr(&rel, "user.mime_type", b"application/x-baton-test")?;
            }
        }
        Ok(())
    }

    pub(crate) fn names(&mut self) -> io::Result<()> {
        let mut names: Vec<Vec<u8>> = [
            "naïve ☃ file",
            "with space",
            " leading space",
            "trailing space ",
            "-rf",
            "--help",
            "line\nbreak",
            "tab\there",
            "cr\rname",
            "back\\slash",
            "quote\"s'and`ticks",
            "*glob?[x]",
            ".hidden",
            "..dots",
            "emoji 😀",
            "日本語のファイル",
            "colon:name",
            "percent%41",
            "~tilde",
        ]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect();
        names.push([b"long-".as_slice(), &[b'x'; 250]].concat()); // 255 bytes
        names.push(["é".repeat(127).as_bytes(), b"x"].concat()); // 255 bytes
        names.push(b"latin1-caf\xe9".to_vec());
        names.push(b"\xff\xfe raw bytes".to_vec());
        for n in &names {
            let rel = Path::new("names").join(name(n));
            self.file(&rel, &[n.as_slice(), b"\n"].concat())?;
        }
        self.file("names/dir ☃ with\nnewline/inside.txt", b"inside\n")?;
        self.file(
            Path::new("names")
                .join(name(b"dir-\xff"))
                .join(name(b"\xfe\xfd")),
            b"raw\n",
        )?;
        Ok(())
    }

    pub(crate) fn empty(&mut self) -> io::Result<()> {
        self.dir("empty/empty-dir")?;
        self.dir("empty/nested/a/b/c")?;
        self.file("empty/empty-file", b"")?;
        for n in ["1", "2", "3"] {
            self.file(format!("empty/dir-with-empty-files/{n}"), b"")?;
        }
        Ok(())
    }

    pub(crate) fn links(&mut self) -> io::Result<()> {
        self.file("links/target.txt", b"symlink target\n")?;
        self.symlink("target.txt", "links/rel-file")?;
        self.symlink("../target.txt", "links/sub/up-link")?;
        self.symlink("/etc/passwd", "links/abs")?;
        self.symlink("/nonexistent/baton-testing/target", "links/abs-dangling")?;
        self.symlink("does/not/exist", "links/dangling")?;
        self.symlink("../deep", "links/dir-link")?;
        self.symlink("rel-file", "links/link-to-link")?;
        self.symlink("self-loop", "links/self-loop")?;
        self.symlink(name(b"target-\xff\xfe"), "links/non-utf8-target")?;
        self.symlink("a/".repeat(500), "links/long-target")?;
        self.symlink("naïve ☃ file", "links/unicode ☃ link")?;
        Ok(())
    }

    pub(crate) fn hardlinks(&mut self) -> io::Result<()> {
        let mut rng = Rng::derive(self.opts.seed, "hardlinks");
        let one = self.file("hardlinks/a/one", &small_content(&mut rng, 5000))?;
        self.hard_link(&one, "hardlinks/b/two")?;
        self.hard_link(&one, "hardlinks/c/three")?;
        self.xattr(&one, "user.link", b"group of three")?;
        self.chmod(&one, 0o640);
        self.chown(&one, 1234, 5678);
        let p1 = self.file("hardlinks/pair-1", &small_content(&mut rng, 20000))?;
        self.hard_link(&p1, "hardlinks/pair-2")?;
        self.chmod(&p1, 0o600);
        let e1 = self.file("hardlinks/empty-1", b"")?;
        self.hard_link(&e1, "hardlinks/d/empty-2")?;
        Ok(())
    }

    pub(crate) fn special(&mut self) -> io::Result<()> {
        self.dir("special")?;
        self.fifo("special/fifo", 0o644)?;
        self.fifo("special/fifo-0600", 0o600)?;
        if !self.is_root {
            self.notes.push("not root: device nodes skipped".into());
            return Ok(());
        }
        let devs = [
            ("special/null", SFlag::S_IFCHR, 0o666, makedev(1, 3)),
            ("special/loop200", SFlag::S_IFBLK, 0o660, makedev(7, 200)),
        ];
        for (rel, kind, mode, dev) in devs {
            let abs = self.abs(Path::new(rel));
            match mknod(&abs, kind, Mode::from_bits_truncate(0o600), dev) {
                Ok(()) => fs::set_permissions(&abs, Permissions::from_mode(mode))?,
                Err(e) => self
                    .notes
                    .push(format!("{rel}: mknod refused ({e}), skipped")),
            }
        }
        Ok(())
    }

    pub(crate) fn perms(&mut self) -> io::Result<()> {
        for (n, mode) in [
            ("mode-0600", 0o600),
            ("mode-0755", 0o755),
            ("mode-0444", 0o444),
            ("setuid", 0o4755),
            ("setgid", 0o2755),
            ("setuid-setgid", 0o6750),
            ("sticky-file", 0o1644),
        ] {
            let rel = self.file(format!("perms/{n}"), format!("{n}\n").as_bytes())?;
            self.chmod(&rel, mode);
        }
        for (n, mode) in [
            ("sticky-dir", 0o1777),
            ("setgid-dir", 0o2775),
            ("dir-0700", 0o700),
        ] {
            let rel = self.dir(format!("perms/{n}"))?;
            self.file(rel.join("file"), b"in a special dir\n")?;
            self.chmod(&rel, mode);
        }
        let ro = self.dir("perms/dir-0500")?;
        self.file(ro.join("inside-1"), b"one\n")?;
        self.file(ro.join("inside-2"), b"two\n")?;
        self.file(ro.join("sub/file"), b"below a read-only dir\n")?;
        self.chmod(&ro, 0o500);
        Ok(())
    }

    pub(crate) fn owners(&mut self) -> io::Result<()> {
        if self.opts.ownership && !self.is_root {
            self.notes
                .push("not root: ownership changes skipped".into());
        }
        for (n, uid, gid) in [
            ("uid-1234", 1234, 5678),
            ("root", 0, 0),
            ("nobody", 65534, 65534),
        ] {
            let rel = self.file(format!("owners/{n}"), n.as_bytes())?;
            self.chown(&rel, uid, gid);
        }
        let d = self.dir("owners/dir-1234")?;
        self.chown(&d, 1234, 5678);
        let f = self.file("owners/dir-1234/inside", b"inside\n")?;
        self.chown(&f, 4321, 8765);
        let l = self.symlink("uid-1234", "owners/link-4321")?;
        self.chown(&l, 4321, 8765);
        let s = self.file("owners/setuid-1234", b"#!/bin/false\n")?;
        self.chown(&s, 1234, 5678);
        self.chmod(&s, 0o4750);
        let g = self.dir("owners/setgid-dir")?;
        self.chown(&g, 1234, 5678);
        self.chmod(&g, 0o2770);
        if self.opts.special_files {
            let p = self.fifo("owners/fifo-65534", 0o640)?;
            self.chown(&p, 65534, 65534);
        }
        Ok(())
    }

    pub(crate) fn xattrs(&mut self) -> io::Result<()> {
        let mut rng = Rng::derive(self.opts.seed, "xattrs");
        let p = self.file("xattrs/plain", b"plain\n")?;
        self.xattr(&p, "user.comment", b"hello world")?;
        let b = self.file("xattrs/binary", b"binary\n")?;
        self.xattr(&b, "user.binary", &(0..=255u8).collect::<Vec<_>>())?;
        let e = self.file("xattrs/empty-value", b"")?;
        self.xattr(&e, "user.empty", b"")?;
        let m = self.file("xattrs/many", b"many\n")?;
        for i in 0..10 {
            let mut v = vec![0u8; rng.range(1, 40) as usize];
            rng.fill(&mut v);
            self.xattr(&m, &format!("user.attr-{i:02}"), &v)?;
        }
        let l = self.file("xattrs/large", b"large\n")?;
        let mut v = vec![0u8; 3000];
        rng.fill(&mut v);
        self.xattr(&l, "user.large", &v)?;
        let d = self.dir("xattrs/dir")?;
        self.xattr(&d, "user.dir", b"directory attribute")?;
        self.file("xattrs/dir/file", b"file in a dir with xattrs\n")?;
        let r = self.file("xattrs/readonly", b"read-only\n")?;
        self.xattr(&r, "user.ro", b"set before chmod 0444")?;
        self.chmod(&r, 0o444);
        let u = self.file("xattrs/unicode", b"unicode\n")?;
        self.xattr(&u, "user.naïve", "☃".as_bytes())?;
        Ok(())
    }

    pub(crate) fn times_dir(&mut self) -> io::Result<()> {
        let specs = [
            (
                "pre-epoch",
                ts(-1_000_000_000, 987_654_321),
                ts(-999_999_000, 123_456_789),
            ),
            (
                "far-future",
                ts(4_102_444_800, 123_456_789),
                ts(4_102_444_799, 999_999_999),
            ),
            ("one-ns", ts(1_234_567_890, 1), ts(1_234_567_890, 1)),
        ];
        for (n, atime, mtime) in specs {
            let rel = self.file(format!("times/{n}"), n.as_bytes())?;
            self.times.insert(rel, (atime, mtime));
        }
        Ok(())
    }

    pub(crate) fn sparse(&mut self) -> io::Result<()> {
        let size = self.opts.sparse_file_size;
        let rel = self.dir("sparse")?.join("sparse.img");
        let f = File::create(self.abs(&rel))?;
        f.set_len(size)?;
        const ISLAND: u64 = 64 * 1024;
        let mut rng = Rng::derive(self.opts.seed, "sparse");
        let mut offsets = vec![
            0,
            (size / 2) & !(ISLAND - 1),
            size.saturating_sub(3 * ISLAND) & !(ISLAND - 1),
        ];
        offsets.sort_unstable();
        offsets.dedup();
        let mut buf = vec![0u8; ISLAND as usize];
        for off in offsets {
            let n = ISLAND.min(size - off) as usize;
            rng.fill(&mut buf[..n]);
            f.write_all_at(&buf[..n], off)?;
        }
        f.sync_all()?;
        fs::set_permissions(self.abs(&rel), Permissions::from_mode(0o644))
    }
}
