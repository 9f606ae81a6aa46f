//! Every copy is proven (issue 15): PostgreSQL on a loop-mounted btrfs
//! volume under write load (pgbench, and a writer that notes when each of
//! its commits returned) is backed up from a quiesced volume snapshot; the
//! snapshot is replicated to a second site (killed midway: the volume
//! snapshot stays, the transfer resumes); once the second site
//! acknowledges, the volume snapshot is deleted; a fire drill at the second
//! site starts PostgreSQL on the copy, which recovers without errors and
//! holds every transaction committed before the quiesce; a damaged replica
//! makes the drill fail, and the failure is notified.
//!
//! Needs root, btrfs-progs, a loop device and PostgreSQL (with pgbench);
//! skipped without them unless `BATON_TEST_REQUIRE_BTRFS=1`.

use crate::common::{Env, PASSWORD, is_root, run};
use crate::instant_pg::{Cleanup, Pg, pg_bin, sh};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

const SITE2_PASSWORD: &str = "the second site's own password";

pub(crate) fn tools_present() -> bool {
    let have = |t: &str| {
        std::process::Command::new("sh")
            .args(["-c", &format!("command -v {t}")])
            .env("PATH", "/usr/bin:/usr/sbin:/bin:/sbin")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let ok = is_root()
        && pg_bin().is_some_and(|b| b.join("pgbench").exists() || have("pgbench"))
        && ["mkfs.btrfs", "btrfs", "losetup", "runuser", "setpriv"]
            .iter()
            .all(|t| have(t));
    if !ok {
        assert!(
            std::env::var("BATON_TEST_REQUIRE_BTRFS").as_deref() != Ok("1"),
            "needs root, btrfs-progs, losetup, runuser, setpriv and PostgreSQL with pgbench"
        );
        eprintln!("skipped: needs root, btrfs-progs and PostgreSQL with pgbench");
    }
    ok
}

/// `baton` on the second site's repository, as its agent `node`.
fn site2(
    env: &Env,
    site: &Path,
    d: &crate::director::Director,
    node: &Path,
) -> assert_cmd::Command {
    let mut c = env.cmd();
    c.env("BATON_REPOSITORY", site)
        .env("BATON_PASSWORD", SITE2_PASSWORD)
        .env("BATON_DIRECTOR", &d.url)
        .env("BATON_AGENT_STATE", node)
        .env("PATH", "/usr/bin:/usr/sbin:/bin:/sbin");
    c
}

/// `baton` on the source, replicating to `site`, as its agent `node`.
fn source(
    env: &Env,
    site: &Path,
    d: &crate::director::Director,
    node: &Path,
) -> std::process::Command {
    let mut c = env.std_cmd();
    c.env("BATON_REPLICA_PASSWORD", SITE2_PASSWORD)
        .env("BATON_REPLICA_REPOSITORY", site)
        .env("BATON_DIRECTOR", &d.url)
        .env("BATON_AGENT_STATE", node)
        .env("PATH", "/usr/bin:/usr/sbin:/bin:/sbin");
    c
}

fn lines(stdout: &str, message: &str) -> serde_json::Value {
    stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["message_type"] == message)
        .unwrap_or_else(|| panic!("no {message} in {stdout}"))
}

/// A btrfs file system of `size` on a loop file, mounted at `mnt` (made),
/// with a subvolume `vol`; `cleanup` unmounts it. Returns the subvolume.
pub(crate) fn btrfs_volume(env: &Env, size: &str, cleanup: &mut Cleanup) -> std::path::PathBuf {
    let img = env.path("vol.img");
    let mnt = env.path("mnt");
    std::fs::create_dir(&mnt).unwrap();
    sh(
        None,
        &format!(
            "truncate -s {size} {i} && mkfs.btrfs -q {i} && mount -o loop {i} {m}",
            i = img.display(),
            m = mnt.display()
        ),
    );
    cleanup.0.push(format!("umount -l {}", mnt.display()));
    let vol = mnt.join("vol");
    sh(None, &format!("btrfs subvolume create {}", vol.display()));
    vol
}

#[test]
fn a_quiesced_postgres_snapshot_is_replicated_and_proven_by_a_drill() {
    if !tools_present() {
        return;
    }
    let bin = pg_bin().unwrap();
    let env = Env::new();
    let d = env.dir.path();
    sh(None, &format!("chmod 755 {}", d.display()));
    let mut cleanup = Cleanup(Vec::new());
    // A director: the first site's agent reports its replications, the
    // second site's its drills; failures reach the webhook.
    let (hook, events) = crate::director::receiver();
    let director =
        crate::director::Director::start(&env, &env.path("director"), None, &["--webhook", &hook]);
    let site1_node = director.enrolled(&env, "agent", "site-1");
    let site2_node = director.enrolled(&env, "agent", "site-2");

    // 1. btrfs on a loop file; a subvolume holding a PostgreSQL cluster.
    let vol = btrfs_volume(&env, "2G", &mut cleanup);
    sh(None, &format!("chown postgres: {}", vol.display()));
    let data = vol.join("pgdata");
    let sockets = env.path("pgsock");
    std::fs::create_dir(&sockets).unwrap();
    sh(None, &format!("chown postgres: {}", sockets.display()));
    let port = 21000 + (std::process::id() % 20000) as u16;
    let pg = Pg {
        bin: bin.clone(),
        sockets: sockets.clone(),
        port,
    };
    pg.init_and_start(&data, &mut cleanup);
    pg.sql("CREATE TABLE marks(id bigserial PRIMARY KEY, at timestamptz NOT NULL DEFAULT clock_timestamp())");
    let pgbench = if bin.join("pgbench").exists() {
        bin.join("pgbench").display().to_string()
    } else {
        "pgbench".to_string()
    };
    sh(
        Some("postgres"),
        &format!(
            "{pgbench} -i -q -s 4 -h {} -p {port} -U postgres postgres >/dev/null 2>&1",
            sockets.display()
        ),
    );

    // 2. Write load: pgbench, and a writer that notes each commit's return.
    let stop = Arc::new(AtomicBool::new(false));
    let mut bench = std::process::Command::new("runuser")
        .args(["-u", "postgres", "--", &pgbench])
        .args(["-n", "-c", "2", "-T", "300", "-h"])
        .arg(&sockets)
        .args(["-p", &port.to_string(), "-U", "postgres", "postgres"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let writer = {
        let (stop, bin, sockets) = (stop.clone(), bin.clone(), sockets.clone());
        std::thread::spawn(move || {
            let mut committed: Vec<(u64, SystemTime)> = Vec::new();
            // One psql reading statements from a pipe: each INSERT returns
            // its id once committed (autocommit).
            let mut child = std::process::Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(bin.join("psql"))
                .args(["-X", "-q", "-At", "-h"])
                .arg(&sockets)
                .args(["-p", &port.to_string(), "-U", "postgres", "postgres"])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            let mut input = child.stdin.take().unwrap();
            let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
            use std::io::{BufRead, Write};
            while !stop.load(Ordering::Relaxed) {
                writeln!(input, "INSERT INTO marks DEFAULT VALUES RETURNING id;").unwrap();
                input.flush().unwrap();
                let mut line = String::new();
                if out.read_line(&mut line).unwrap() == 0 {
                    break;
                }
                committed.push((line.trim().parse().unwrap(), SystemTime::now()));
            }
            drop(input);
            let _ = child.wait();
            committed
        })
    };
    std::thread::sleep(Duration::from_secs(2));

    // 3. The backup reads a quiesced snapshot; the snapshot is kept.
    let url = format!(
        "postgres://postgres@localhost/postgres?host={}&port={port}",
        sockets.display()
    );
    let site = env.path("site2");
    let b = run(
        assert_cmd::Command::from_std(source(&env, &site, &director, &site1_node)).args([
            "backup",
            "--json",
            "--volume-snapshot",
            "--quiesce-postgres",
            &url,
            "--keep-volume-snapshot",
            "--tag",
            "drill",
            data.to_str().unwrap(),
        ]),
    )
    .ok();
    let taken = lines(&b.stdout, "volume_snapshot");
    let summary = lines(&b.stdout, "summary");
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    let committed = writer.join().unwrap();
    let _ = bench.kill();
    let _ = bench.wait();
    let snapshot_dir = std::path::PathBuf::from(taken["snapshot"].as_str().unwrap());
    assert_eq!(taken["kept"], true, "{taken}");
    assert!(taken["held_ms"].as_u64().unwrap() < 60_000, "{taken}");
    assert!(snapshot_dir.join("pgdata/backup_label").exists());
    assert!(!snapshot_dir.join("pgdata/postmaster.pid").exists());
    assert!(
        sh(
            None,
            &format!("btrfs property get -ts {} ro", snapshot_dir.display())
        )
        .contains("ro=true")
    );
    let quiesced: SystemTime =
        humantime::parse_rfc3339_weak(taken["quiesced_at"].as_str().unwrap())
            .or_else(|_| humantime::parse_rfc3339(taken["quiesced_at"].as_str().unwrap()))
            .unwrap();
    let before: Vec<u64> = committed
        .iter()
        .filter(|(_, t)| *t < quiesced)
        .map(|(id, _)| *id)
        .collect();
    let after = committed.len() - before.len();
    assert!(
        before.len() > 10 && after > 0,
        "{} before, {after} after",
        before.len()
    );
    let n = *before.iter().max().unwrap();
    // The snapshot records the original path, not the snapshot's.
    let snap_id = summary["snapshot_id"].as_str().unwrap().to_string();
    let ls = env
        .run(&["ls", "--json", &snap_id, data.to_str().unwrap()])
        .ok();
    assert!(ls.stdout.contains("PG_VERSION"), "{}", ls.stdout);

    // 4. Replication to the second site, killed midway: the volume
    //    snapshot stays; run again, it resumes, is acknowledged, and only
    //    then is the volume snapshot deleted.
    run(site2(&env, &site, &director, &site2_node).args([
        "init",
        "--kdf-memory",
        "8192",
        "--kdf-iterations",
        "1",
        "--pack-size",
        "1",
    ]))
    .ok();
    let mut child = source(&env, &site, &director, &site1_node)
        .args(["replicate", "--limit-upload", "8192"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let packs = || {
        std::fs::read_dir(site.join("data"))
            .map(|rd| {
                rd.flatten()
                    .map(|d| std::fs::read_dir(d.path()).map_or(0, |r| r.count()))
                    .sum::<usize>()
            })
            .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    while packs() < 3 {
        assert!(Instant::now() < deadline, "the replication stored no packs");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the replication ended early"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        snapshot_dir.exists(),
        "the volume snapshot went before the copy arrived"
    );
    let r = run(
        assert_cmd::Command::from_std(source(&env, &site, &director, &site1_node))
            .args(["replicate", "--json"]),
    )
    .ok()
    .json();
    let rep = &r["replicated"][0];
    assert_eq!(rep["state"], "acknowledged", "{r}");
    assert_eq!(rep["volume_snapshot_deleted"], true, "{r}");
    assert!(
        rep["blobs_sent"].as_u64().unwrap() < rep["blobs_acknowledged"].as_u64().unwrap(),
        "the resumed transfer sent everything again: {r}"
    );
    assert!(!snapshot_dir.exists(), "the volume snapshot is still there");
    // Nothing left waiting.
    let again = run(
        assert_cmd::Command::from_std(source(&env, &site, &director, &site1_node))
            .args(["replicate", "--json"]),
    )
    .ok()
    .json();
    assert_eq!(again["replicated"].as_array().unwrap().len(), 0, "{again}");

    // 5. The fire drill at the second site: PostgreSQL recovers on the copy
    //    and holds every transaction committed before the quiesce.
    let work = env.path("drills");
    let drill_args = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = [
            "drill",
            "--json",
            "--tag",
            "drill",
            "--postgres",
            data.to_str().unwrap(),
            "--check-sql",
            &format!("SELECT count(*) FROM marks WHERE id <= {n}"),
            "--expect",
            &n.to_string(),
            "--work-dir",
            work.to_str().unwrap(),
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        v.extend(extra.iter().map(|a| a.to_string()));
        v
    };
    let drill = run(site2(&env, &site, &director, &site2_node).args(drill_args(&[])));
    assert_eq!(drill.code, 0, "{}{}", drill.stdout, drill.stderr);
    let result = drill.json();
    assert_eq!(result["passed"], true, "{result}");
    assert!(result["rto_s"].as_f64().unwrap() > 0.0, "{result}");
    assert!(result["rpo_s"].as_f64().unwrap() >= 0.0, "{result}");
    eprintln!(
        "drill: RTO {:.2} s (restore {:.2} s, recovery {:.2} s), RPO {:.1} s, {} bytes; {} commits before the quiesce, {after} after",
        result["rto_s"].as_f64().unwrap(),
        result["restore_s"].as_f64().unwrap(),
        result["recovery_s"].as_f64().unwrap(),
        result["rpo_s"].as_f64().unwrap(),
        result["bytes_restored"],
        before.len()
    );
    // Torn down.
    assert_eq!(std::fs::read_dir(&work).unwrap().count(), 0);

    // 6. A damaged replica: the drill fails, says why, and notifies.
    let mut biggest: Option<(u64, std::path::PathBuf)> = None;
    for dir in std::fs::read_dir(site.join("data")).unwrap().flatten() {
        for f in std::fs::read_dir(dir.path()).unwrap().flatten() {
            let len = f.metadata().unwrap().len();
            if biggest.as_ref().is_none_or(|(l, _)| len > *l) {
                biggest = Some((len, f.path()));
            }
        }
    }
    let (_, pack) = biggest.unwrap();
    let mut bytes = std::fs::read(&pack).unwrap();
    for b in bytes.iter_mut().skip(100).step_by(4096).take(64) {
        *b ^= 0x5a;
    }
    sh(None, &format!("chmod u+w {}", pack.display()));
    std::fs::write(&pack, &bytes).unwrap();
    let note = env.path("notified.json");
    let notify = format!("printf '%s' \"$BATON_DRILL\" > {}", note.display());
    let failed =
        run(site2(&env, &site, &director, &site2_node)
            .args(drill_args(&["--notify-command", &notify])));
    assert_eq!(failed.code, 1, "{}{}", failed.stdout, failed.stderr);
    let result = failed.json();
    assert_eq!(result["passed"], false, "{result}");
    assert!(!result["reason"].as_str().unwrap().is_empty(), "{result}");
    let notified: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&note).unwrap()).unwrap();
    assert_eq!(notified["passed"], false);
    assert_eq!(std::fs::read_dir(&work).unwrap().count(), 0);

    // 7. The director holds the drill history with RTO and RPO, the
    //    replication's state, and sent the failure to the webhook.
    let drills = director.ctl(&env, &["drills", "--json"]).ok().json();
    let list = drills["drills"].as_array().unwrap();
    assert_eq!(list.len(), 2, "{drills}");
    // The latest first: the failed drill, then the one that passed.
    assert_eq!(
        (list[0]["passed"].clone(), list[1]["passed"].clone()),
        (false.into(), true.into()),
        "{drills}"
    );
    assert_eq!(list[1]["agent"], "site-2");
    assert_eq!(list[1]["name"], "drill");
    assert!(list[1]["rto_s"].as_f64().unwrap() > 0.0);
    let reps = director.ctl(&env, &["replications", "--json"]).ok().json();
    let acked: Vec<&serde_json::Value> = reps["replications"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["state"] == "acknowledged")
        .collect();
    assert_eq!(acked.len(), 1, "{reps}");
    assert_eq!(acked[0]["applied_seq"], 1);
    assert_eq!(acked[0]["agent"], "site-1");
    let metrics = director.ctl(&env, &["drills"]).ok();
    assert!(metrics.stdout.contains("FAILED"), "{}", metrics.stdout);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut got = Vec::new();
    while Instant::now() < deadline {
        if let Ok((_, body)) = events.recv_timeout(Duration::from_millis(200)) {
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            got.push(v["event"].as_str().unwrap().to_string());
            if got.iter().any(|e| e == "drill_failed") {
                break;
            }
        }
    }
    assert!(got.iter().any(|e| e == "drill_failed"), "{got:?}");
    let _ = PASSWORD;
    drop(cleanup);
}

/// `--quiesce-fsfreeze`: an ext4 file system in an image file on the btrfs
/// subvolume, written to while the backup starts, is frozen around the
/// subvolume's snapshot and thawed at once; the image backed up is clean
/// (e2fsck finds nothing to repair, no journal to replay). Freezing the
/// btrfs itself is refused (its snapshot would wait for ever).
#[test]
fn a_frozen_file_system_image_is_backed_up_clean() {
    if !tools_present() {
        return;
    }
    let env = Env::new();
    let mut cleanup = Cleanup(Vec::new());
    let vol = btrfs_volume(&env, "1G", &mut cleanup);
    let mnt = vol.parent().unwrap().to_path_buf();
    let disk = vol.join("disk.img");
    let inner = env.path("inner");
    std::fs::create_dir(&inner).unwrap();
    sh(
        None,
        &format!(
            "mkfs.ext4 -q -F {d} 96M && mount -o loop {d} {i}",
            d = disk.display(),
            i = inner.display()
        ),
    );
    cleanup.0.push(format!(
        "fsfreeze -u {} ; umount -l {}",
        inner.display(),
        inner.display()
    ));
    // A writer on the inner file system while the backup runs.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, inner) = (stop.clone(), inner.clone());
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let _ =
                    std::fs::write(inner.join(format!("f{}", n % 200)), vec![n as u8; 64 << 10]);
                n += 1;
            }
            n
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let b = env
        .run(&[
            "backup",
            "--json",
            "--volume-snapshot",
            "--quiesce-fsfreeze",
            inner.to_str().unwrap(),
            disk.to_str().unwrap(),
        ])
        .ok();
    stop.store(true, Ordering::Relaxed);
    let writes = writer.join().unwrap();
    let taken = lines(&b.stdout, "volume_snapshot");
    assert_eq!(taken["quiesce"], "fsfreeze", "{taken}");
    assert_eq!(taken["kept"], false, "{taken}");
    assert!(writes > 10, "the writer wrote {writes} files");
    // Thawed: the inner file system takes writes again.
    std::fs::write(inner.join("after"), b"thawed").unwrap();
    // The image restored is a clean file system.
    let out = env.path("restored");
    env.restore("latest", &out, &[]).ok();
    let restored = out.join(disk.strip_prefix("/").unwrap());
    let fsck = std::process::Command::new("e2fsck")
        .arg("-fn")
        .arg(&restored)
        .env("PATH", "/usr/bin:/usr/sbin:/bin:/sbin")
        .output()
        .unwrap();
    assert!(
        fsck.status.success(),
        "e2fsck: {}{}",
        String::from_utf8_lossy(&fsck.stdout),
        String::from_utf8_lossy(&fsck.stderr)
    );
    // A backup killed after its snapshot leaves a record; the next backup
    // deletes what that process left.
    let orphan = vol.join(".baton-snapshots/orphan");
    sh(
        None,
        &format!(
            "btrfs subvolume snapshot -r {} {}",
            vol.display(),
            orphan.display()
        ),
    );
    let dead = {
        let mut c = std::process::Command::new("true").spawn().unwrap();
        c.wait().unwrap();
        c.id()
    };
    let records = env.path(".local/state/baton/volume-snapshots");
    std::fs::write(
        records.join("taking-orphan.json"),
        serde_json::json!({"pid": dead, "snapshot": orphan}).to_string(),
    )
    .unwrap();
    env.run(&["backup", "--volume-snapshot", disk.to_str().unwrap()])
        .ok();
    assert!(!orphan.exists(), "the orphaned snapshot is still there");
    assert!(!records.join("taking-orphan.json").exists());
    // Freezing the btrfs that is snapshotted is refused, not a hang.
    let refused = env.run(&[
        "backup",
        "--volume-snapshot",
        "--quiesce-fsfreeze",
        mnt.to_str().unwrap(),
        disk.to_str().unwrap(),
    ]);
    assert_ne!(refused.code, 0);
    assert!(refused.stderr.contains("is btrfs"), "{}", refused.stderr);
    drop(cleanup);
}
