//! A real application on the pseudo-volume (issue 12): a PostgreSQL data
//! directory on an ext4 image is backed up with `--block`; an instant
//! restore exports it at once; the export is mounted through nbdfuse and a
//! loop device (this kernel has no NBD client); PostgreSQL starts on it
//! while the background restore runs and takes inserts; after the merge
//! PostgreSQL starts on the restored image and every row is there.
//!
//! Needs root (loop devices, mount, FUSE), nbdfuse, mkfs.ext4 and
//! PostgreSQL; skipped without them unless `BATON_TEST_REQUIRE_NBD=1`.

use crate::block::block_backup;
use crate::common::{Env, is_root};
use crate::nbd::{Baton, have};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The newest PostgreSQL's `bin` directory, if one is installed.
pub(crate) fn pg_bin() -> Option<PathBuf> {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("pg_ctl").exists())
        .collect();
    versions.sort();
    versions.pop()
}

/// Runs a shell command (as `user` if given); panics with its output on
/// failure.
pub(crate) fn sh(user: Option<&str>, cmd: &str) -> String {
    let mut c = match user {
        Some(u) => {
            let mut c = Command::new("runuser");
            c.args(["-u", u, "--", "bash", "-c", cmd]);
            c
        }
        None => {
            let mut c = Command::new("bash");
            c.args(["-c", cmd]);
            c
        }
    };
    let out = c
        .env("PATH", "/usr/bin:/usr/sbin:/bin:/sbin")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "`{cmd}` failed:\n{text}");
    text
}

/// Undoes mounts, loop devices, FUSE mounts and servers, whatever happened.
pub(crate) struct Cleanup(pub(crate) Vec<String>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for c in self.0.iter().rev() {
            let _ = Command::new("bash").args(["-c", c]).output();
        }
    }
}

pub(crate) struct Pg {
    pub(crate) bin: PathBuf,
    pub(crate) sockets: PathBuf,
    pub(crate) port: u16,
}

impl Pg {
    pub(crate) fn ctl(&self, data: &Path, what: &str) {
        sh(
            Some("postgres"),
            &format!(
                "{}/pg_ctl -D {} -l {}/log -w -t 60 -o '-p {} -k {} -c listen_addresses=' {what}",
                self.bin.display(),
                data.display(),
                self.sockets.display(),
                self.port,
                self.sockets.display()
            ),
        );
    }
    /// A new cluster in `data` (owned by postgres), started; `cleanup`
    /// stops it whatever happens.
    pub(crate) fn init_and_start(&self, data: &Path, cleanup: &mut Cleanup) {
        sh(
            Some("postgres"),
            &format!(
                "{}/initdb -D {} -U postgres --auth=trust -E UTF8 --locale=C >/dev/null",
                self.bin.display(),
                data.display()
            ),
        );
        cleanup.0.push(format!(
            "runuser -u postgres -- {}/pg_ctl -D {} -m immediate stop",
            self.bin.display(),
            data.display()
        ));
        self.ctl(data, "start");
    }

    pub(crate) fn sql(&self, q: &str) -> String {
        sh(
            Some("postgres"),
            &format!(
                "{}/psql -X -q -At -h {} -p {} -U postgres -d postgres -c \"{q}\"",
                self.bin.display(),
                self.sockets.display(),
                self.port
            ),
        )
        .trim()
        .to_string()
    }
}

#[test]
fn postgres_runs_on_an_instant_restore_and_keeps_its_writes() {
    let tools = ["nbdfuse", "losetup", "mkfs.ext4", "fusermount3", "runuser"];
    let Some(bin) = pg_bin() else {
        assert!(
            std::env::var("BATON_TEST_REQUIRE_NBD").as_deref() != Ok("1"),
            "PostgreSQL is not installed"
        );
        eprintln!("skipped: PostgreSQL is not installed");
        return;
    };
    if !is_root() || !tools.iter().all(|t| have(t)) || !Path::new("/dev/fuse").exists() {
        eprintln!("skipped: needs root, /dev/fuse and {tools:?}");
        return;
    }
    let env = Env::new();
    let d = env.dir.path();
    sh(None, &format!("chmod 755 {}", d.display()));
    let sockets = env.path("pgsock");
    std::fs::create_dir(&sockets).unwrap();
    sh(None, &format!("chown postgres: {}", sockets.display()));
    let port = 20000 + (std::process::id() % 20000) as u16;
    let pg = Pg {
        bin: bin.clone(),
        sockets: sockets.clone(),
        port,
    };
    let mut cleanup = Cleanup(Vec::new());

    // 1. A data directory with 1000 rows, on a fresh ext4 image.
    let root = env.path("fsroot");
    let data = root.join("pgdata");
    std::fs::create_dir_all(&root).unwrap();
    sh(None, &format!("chown postgres: {}", root.display()));
    pg.init_and_start(&data, &mut cleanup);
    pg.sql("CREATE TABLE t(id int primary key, v text); INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1,1000) g;");
    pg.ctl(&data, "stop");
    let img = env.path("pg.img");
    sh(
        None,
        &format!(
            "mkfs.ext4 -q -F -d {} {} 384M",
            root.display(),
            img.display()
        ),
    );
    block_backup(&env, &img, &[]);

    // 2. Instant restore: the export is up at once; the copy is throttled
    //    so that PostgreSQL runs while it is still going on.
    let dest = env.path("restored.img");
    let sock = env.path("i.sock");
    let args = [
        "restore",
        "--instant",
        "latest",
        "--target",
        dest.to_str().unwrap(),
        "--listen",
        &format!("unix:{}", sock.display()),
        "--copy-limit",
        "4MiB",
    ];
    let mut b = Baton::start(&env, &args);

    // 3. nbdfuse + losetup + mount, PostgreSQL on the pseudo-volume.
    let fuse = env.path("fuse");
    let mnt = env.path("mnt");
    std::fs::create_dir_all(&fuse).unwrap();
    std::fs::create_dir_all(&mnt).unwrap();
    let mut nbdfuse = Command::new("nbdfuse")
        .arg(fuse.join("vol"))
        .arg(&b.uri)
        .env("PATH", "/usr/bin:/usr/sbin:/bin:/sbin")
        .spawn()
        .unwrap();
    cleanup.0.push(format!("fusermount3 -u {}", fuse.display()));
    let vol = fuse.join("vol");
    for _ in 0..100 {
        if vol.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let loopdev = sh(None, &format!("losetup -f --show {}", vol.display()))
        .trim()
        .to_string();
    cleanup.0.push(format!("losetup -d {loopdev}"));
    sh(None, &format!("mount {loopdev} {}", mnt.display()));
    cleanup.0.push(format!("umount {}", mnt.display()));
    let live = mnt.join("pgdata");
    cleanup.0.push(format!(
        "runuser -u postgres -- {}/pg_ctl -D {} -m immediate stop",
        bin.display(),
        live.display()
    ));
    pg.ctl(&live, "start");
    assert_eq!(pg.sql("SELECT count(*) FROM t"), "1000");
    pg.sql("INSERT INTO t SELECT g, 'instant' FROM generate_series(1001,1500) g; CHECKPOINT;");
    pg.sql("INSERT INTO t SELECT g, 'after checkpoint' FROM generate_series(1501,1600) g;");
    b.drain();
    assert!(
        !b.seen.iter().any(|v| v["phase"] == "copied"),
        "the copy finished before PostgreSQL ran on the export"
    );
    // Stop the application: PostgreSQL (a clean shutdown writes through the
    // export), then the mount, the loop device and the FUSE client.
    pg.ctl(&live, "stop -m fast");
    sh(None, &format!("umount {}", mnt.display()));
    sh(None, &format!("losetup -d {loopdev}"));
    // The loop device lets go of the export's file shortly after
    // `losetup -d`: the unmount is tried again while it says busy.
    sh(
        None,
        &format!(
            "for i in $(seq 50); do fusermount3 -u {f} 2>/dev/null && exit 0; sleep 0.2; done; fusermount3 -u {f}",
            f = fuse.display()
        ),
    );
    let _ = nbdfuse.wait();

    // 4. The restore finishes: merged, verified, overlay gone.
    assert_eq!(b.wait(Duration::from_secs(300)), 0, "{}", b.stderr());
    let summary = b
        .seen
        .iter()
        .find(|v| v["message_type"] == "summary")
        .cloned()
        .expect("summary");
    assert!(summary["merged_bytes"].as_u64().unwrap() > 0, "{summary}");
    assert!(
        summary["time_to_first_byte_ms"].as_f64().is_some(),
        "{summary}"
    );

    // 5. PostgreSQL on the restored image has every row.
    let loop2 = sh(None, &format!("losetup -f --show {}", dest.display()))
        .trim()
        .to_string();
    cleanup.0.push(format!("losetup -d {loop2}"));
    sh(None, &format!("mount {loop2} {}", mnt.display()));
    cleanup.0.push(format!("umount {}", mnt.display()));
    pg.ctl(&live, "start");
    assert_eq!(pg.sql("SELECT count(*) FROM t"), "1600");
    assert_eq!(pg.sql("SELECT count(*) FROM t WHERE v = 'instant'"), "500");
    pg.ctl(&live, "stop -m fast");
}
