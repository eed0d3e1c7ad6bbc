//! Store trouble (issue 7, point 3): the disk under SQLite fills up, and the
//! PostgreSQL server crashes and comes back. Requests then fail with a 503
//! problem document, nothing is half-written, and processing resumes when the
//! store returns. (A locked SQLite file is tested in `sqlite_only.rs`, a
//! PostgreSQL database dropped under the service in `operations.rs`.)
//!
//! Both tests run the real binary, so that tearing down the tiny filesystem or
//! the private PostgreSQL server never races a service still using it, and so
//! that a failure shows the service's own log.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::sync::watch;

use crate::helpers::*;

/// Whether this process runs as root (effective uid 0).
fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|status| {
        status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|uids| uids.split_whitespace().nth(1))
            == Some("0")
    })
}

/// Runs a command; its stdout, or an error naming it with what it printed.
fn run(command: &mut Command) -> Result<String, String> {
    let output = command
        .output()
        .map_err(|e| format!("{command:?}: cannot run: {e}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!(
            "{command:?}: {}: {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout).trim(),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// The last `n` lines of the server's log that say more than "a request was
/// answered": what the store and the dispatcher did.
fn trouble(log: &ServerLog, n: usize) -> String {
    let lines: Vec<String> = log
        .lines()
        .into_iter()
        .filter(|l| !l.contains("sluice::api: request "))
        .collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A status answer without its batches' ids, for a failure message.
fn brief(mut status: Value) -> Value {
    for batch in status["batches"].as_array_mut().into_iter().flatten() {
        batch.as_object_mut().unwrap().remove("ids");
    }
    status
}

/// A client that never waits forever: a hang fails the test instead.
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

async fn post_ingest(client: &reqwest::Client, base: &str, ids: &[u64]) -> reqwest::Response {
    client
        .post(format!("{base}/ingest"))
        .json(&json!({"ids": ids, "priority": "MEDIUM"}))
        .send()
        .await
        .expect("POST /ingest answers")
}

async fn get(client: &reqwest::Client, base: &str, path: &str) -> reqwest::Response {
    client
        .get(format!("{base}{path}"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path} answers: {e}"))
}

async fn get_json(client: &reqwest::Client, base: &str, path: &str) -> Value {
    let response = get(client, base, path).await;
    assert_eq!(response.status(), 200, "GET {path}");
    response.json().await.unwrap()
}

/// Asserts that `response` is the store-unavailable problem: a 503 with
/// `Retry-After` and a problem document saying so.
async fn assert_unavailable(response: reqwest::Response, what: &str, log: &ServerLog) {
    let status = response.status();
    let retry_after = response.headers().get("retry-after").cloned();
    let content_type = response.headers().get("content-type").cloned();
    let body = response.text().await.unwrap();
    assert_eq!(
        status,
        503,
        "{what}: {body}\n--- server log ---\n{}",
        trouble(log, 30)
    );
    assert_eq!(
        content_type.as_ref().and_then(|v| v.to_str().ok()),
        Some("application/problem+json"),
        "{what}"
    );
    let retry_after = retry_after.unwrap_or_else(|| panic!("{what}: no Retry-After"));
    assert!(
        retry_after
            .to_str()
            .is_ok_and(|s| s.parse::<u64>().is_ok_and(|secs| secs >= 1)),
        "{what}: Retry-After {retry_after:?}"
    );
    let problem: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(problem["type"], "urn:sluice:problem:unavailable", "{what}");
    assert_eq!(problem["status"], 503, "{what}");
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(
                |d| d.contains("store is") && d.contains("unavailable") || d.contains("not ready")
            ),
        "{what}: detail {}",
        problem["detail"]
    );
}

/// The ids of every request the server holds.
async fn stored_ingestions(client: &reqwest::Client, base: &str) -> BTreeSet<String> {
    get_json(client, base, "/ingestions?limit=500").await["ingestions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["ingestion_id"].as_str().unwrap().to_owned())
        .collect()
}

/// Waits until every request in `ids` is `completed`; panics after `limit`
/// with the status of the first that is not, and the server's log.
async fn wait_all_completed(
    client: &reqwest::Client,
    base: &str,
    ids: &[String],
    limit: Duration,
    log: &ServerLog,
) {
    let deadline = Instant::now() + limit;
    for id in ids {
        loop {
            let status = get_json(client, base, &format!("/status/{id}")).await;
            if status["status"] == "completed" {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{id} not completed {limit:?} after the store came back: {:#}\n\
                 --- stats ---\n{:#}\n--- server log ---\n{}",
                brief(status),
                get_json(client, base, "/stats").await,
                trouble(log, 40)
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

/// The id the gated upstream holds back.
const GATED: u64 = 777_777_777;

/// An upstream on port 0 that answers every id at once but [`GATED`], which it
/// holds until the test opens the gate: the batch holding it is in flight, for
/// sure, until then. Its outcome then has to be recorded in a store in
/// trouble.
struct GatedUpstream {
    /// The `--upstream-url` template.
    url: String,
    arrived: watch::Receiver<bool>,
    open: watch::Sender<bool>,
}

impl GatedUpstream {
    async fn start() -> Self {
        let (arrived_tx, arrived) = watch::channel(false);
        let (open, open_rx) = watch::channel(false);
        let gate = (Arc::new(arrived_tx), open_rx);
        let app = axum::Router::new()
            .route(
                "/items/{id}",
                axum::routing::get(
                    |State((arrived, mut open)): State<(
                        Arc<watch::Sender<bool>>,
                        watch::Receiver<bool>,
                    )>,
                     axum::extract::Path(id): axum::extract::Path<u64>| async move {
                        if id == GATED {
                            arrived.send_replace(true);
                            let _ = open.wait_for(|open| *open).await;
                        }
                        axum::Json(json!({"id": id}))
                    },
                ),
            )
            .with_state(gate);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/items/{{id}}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { url, arrived, open }
    }

    /// Waits until the service asks for [`GATED`]: its batch is in flight.
    async fn wait_for_the_gated_batch(&self) {
        let mut arrived = self.arrived.clone();
        tokio::time::timeout(Duration::from_secs(10), arrived.wait_for(|a| *a))
            .await
            .expect("the batch holding the gated id starts within 10 s")
            .unwrap();
    }

    /// Lets the gated batch end.
    fn open(&self) {
        self.open.send_replace(true);
    }
}

/// The status of the batch holding [`GATED`] in request `id`.
async fn gated_batch_status(client: &reqwest::Client, base: &str, id: &str) -> Value {
    let status = get_json(client, base, &format!("/status/{id}")).await;
    status["batches"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["ids"].as_array().unwrap().contains(&json!(GATED)))
        .expect("a batch holds the gated id")["status"]
        .clone()
}

/// A request for `ids` and [`GATED`], in one batch.
async fn ingest_gated(client: &reqwest::Client, base: &str, ids: &[u64]) -> String {
    let mut ids = ids.to_vec();
    ids.push(GATED);
    ingest_at(client, base, &ids, "HIGH").await
}

fn ids(n: u64) -> Vec<u64> {
    (1..=n).collect()
}

/// SQLite on a full disk. Skipped by the PostgreSQL pass of `scripts/test`
/// (`--skip sqlite_only`): it brings its own SQLite store.
mod sqlite_only {
    use std::io::Write;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    /// The size of the tiny filesystem.
    const FS_MIB: u64 = 8;
    /// Room left free after filling the disk, for some more writes to fit.
    const SLACK: u64 = 1 << 20;
    /// Ids in a large request: more than SQLite's page cache (2 MiB) holds,
    /// and more than the slack.
    const LARGE: u64 = 1_000_000;
    /// How many large requests arrive while the disk fills up.
    const LARGE_REQUESTS: usize = 3;
    /// How long the disk stays full: longer than the dispatcher keeps retrying
    /// to record a finished attempt (200 ms doubling, 5 tries: about 3 s), so
    /// the outcome of a batch in flight must survive a long outage.
    const OUTAGE: Duration = Duration::from_secs(4);

    /// A tiny filesystem mounted for one test: ext4 on a loop device, or tmpfs
    /// where loop devices are missing. Unmounted on drop, even after a failure.
    struct TinyFs {
        mount: PathBuf,
        kind: &'static str,
        _dir: TempDir,
    }

    impl TinyFs {
        /// `None` (after saying why) where this process may not mount.
        fn mount() -> Option<Self> {
            if !running_as_root() {
                eprintln!(
                    "SKIPPED store_trouble full disk: mounting a tiny filesystem needs root, \
                     and this process is not root"
                );
                return None;
            }
            let dir = TempDir::new().unwrap();
            let mount = dir.path().join("mnt");
            std::fs::create_dir(&mount).unwrap();
            let image = dir.path().join("fs.img");
            let ext4 = std::fs::File::create(&image)
                .and_then(|f| f.set_len(FS_MIB << 20))
                .map_err(|e| format!("creating {}: {e}", image.display()))
                .and_then(|()| run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&image)))
                .and_then(|_| {
                    run(Command::new("mount")
                        .args(["-o", "loop"])
                        .arg(&image)
                        .arg(&mount))
                });
            let kind = match ext4 {
                Ok(_) => "ext4 on a loop device",
                Err(ext4_error) => {
                    let _ = std::fs::remove_file(&image);
                    let size = format!("size={FS_MIB}m");
                    match run(Command::new("mount")
                        .args(["-t", "tmpfs", "-o", &size, "tmpfs"])
                        .arg(&mount))
                    {
                        Ok(_) => "tmpfs",
                        Err(tmpfs_error) => {
                            let why = format!("ext4: {ext4_error}; tmpfs: {tmpfs_error}");
                            let lower = why.to_lowercase();
                            if lower.contains("permission denied")
                                || lower.contains("not permitted")
                            {
                                eprintln!(
                                    "SKIPPED store_trouble full disk: mounting is not \
                                     permitted here: {why}"
                                );
                                return None;
                            }
                            panic!("cannot mount a tiny filesystem: {why}");
                        }
                    }
                }
            };
            Some(Self {
                mount,
                kind,
                _dir: dir,
            })
        }
    }

    impl Drop for TinyFs {
        fn drop(&mut self) {
            if run(Command::new("umount").arg(&self.mount)).is_err() {
                // Something still holds a file there: detach it now; the kernel
                // frees it (and its loop device) once the last file is closed.
                if let Err(e) = run(Command::new("umount").arg("-l").arg(&self.mount)) {
                    eprintln!("cannot unmount {}: {e}", self.mount.display());
                }
            }
        }
    }

    /// Fills the filesystem holding `path` with a file of zeros, then gives
    /// `slack` bytes back. Returns the file's size.
    fn fill(path: &Path, slack: u64) -> u64 {
        let mut file = std::fs::File::create(path).unwrap();
        let chunk = vec![0u8; 64 << 10];
        let mut written = 0u64;
        loop {
            match file.write(&chunk) {
                Ok(0) => break,
                Ok(n) => written += n as u64,
                Err(e) if e.kind() == std::io::ErrorKind::StorageFull => break,
                Err(e) => panic!("filling {}: {e}", path.display()),
            }
        }
        let size = written.saturating_sub(slack);
        file.set_len(size).unwrap();
        file.sync_all().unwrap();
        size
    }

    /// The disk under the SQLite store fills up while requests arrive and a
    /// batch is in flight: POST /ingest gets the 503 problem, reads go on, a
    /// refused request leaves nothing behind, and the batch's outcome waits;
    /// once space is freed, requests are accepted again, the outcome is
    /// recorded, and every request accepted before, while the disk filled up
    /// and after ends `completed`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_disk_gives_503_and_processing_resumes_when_space_is_freed() {
        let Some(fs) = TinyFs::mount() else { return };
        let db = format!("sqlite://{}", fs.mount.join("sluice.db").display());
        let upstream = GatedUpstream::start().await;
        // Two batches in flight: the gated one, and the rest of the queue,
        // which keeps writing while the disk fills up. Batches of 10,000 ids
        // make the large requests below cheap to refuse, and every other
        // request a single batch.
        let (server, log) = ServerProcess::start_logged(
            &db,
            &[
                "--interval",
                "10ms",
                "--max-in-flight",
                "2",
                "--batch-size",
                "10000",
                "--upstream-url",
                &upstream.url,
                "--upstream-timeout",
                "60s",
            ],
        );
        let base = server.address.clone();
        let client = client();
        let t0 = Instant::now();

        // The gated batch carries 2,000 ids: recording its outcome takes more
        // room than the few KiB a refused write may leave in the WAL file.
        let gated = ingest_gated(&client, &base, &ids(2000)).await;
        upstream.wait_for_the_gated_batch().await;
        let mut accepted = vec![gated.clone()];
        for priority in ["LOW", "MEDIUM", "HIGH"].repeat(3) {
            accepted.push(ingest_at(&client, &base, &ids(100), priority).await);
        }
        let before = accepted.len();

        // Fill the disk but for some slack. Then large requests, which no longer
        // fit, arrive among small ones, which still do for a while. A large one
        // fails while SQLite spills its page cache to the disk, and SQLite then
        // rolls back the whole transaction of its group of writes (the writer's
        // unit test pins down what must follow: nothing of the group is kept).
        let filler = fs.mount.join("filler");
        let filler_size = fill(&filler, SLACK);
        let large = serde_json::to_vec(&json!({"ids": ids(LARGE), "priority": "LOW"})).unwrap();
        let stop = AtomicBool::new(false);
        let large_requests = async {
            for _ in 0..LARGE_REQUESTS {
                let response = client
                    .post(format!("{base}/ingest"))
                    .header("content-type", "application/json")
                    .body(large.clone())
                    .send()
                    .await
                    .unwrap();
                assert_unavailable(response, "POST /ingest of a large request", &log).await;
            }
            stop.store(true, Ordering::Relaxed);
        };
        let small_requests = |n: u64| {
            let (client, base, stop, log) = (&client, &base, &stop, &log);
            async move {
                let (mut accepted, mut refused) = (Vec::new(), 0);
                while !stop.load(Ordering::Relaxed) {
                    let response = post_ingest(client, base, &[n, n + 1, n + 2]).await;
                    if response.status() == 200 {
                        let body: Value = response.json().await.unwrap();
                        accepted.push(body["ingestion_id"].as_str().unwrap().to_owned());
                    } else {
                        assert_unavailable(response, "POST /ingest as the disk fills", log).await;
                        refused += 1;
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
                (accepted, refused)
            }
        };
        let ((), a, b, c) = tokio::join!(
            large_requests,
            small_requests(1),
            small_requests(4),
            small_requests(7)
        );
        let mut refused_while_filling = 0;
        for (ids, refused) in [a, b, c] {
            accepted.extend(ids);
            refused_while_filling += refused;
        }
        // Then small requests until the disk has no room for them either.
        let deadline = Instant::now() + Duration::from_secs(15);
        let refused = loop {
            let response = post_ingest(&client, &base, &ids(100)).await;
            match response.status().as_u16() {
                200 => {
                    let body: Value = response.json().await.unwrap();
                    accepted.push(body["ingestion_id"].as_str().unwrap().to_owned());
                }
                503 => break response,
                other => panic!(
                    "POST /ingest while the disk fills up: {other} {}\n--- server log ---\n{}",
                    response.text().await.unwrap(),
                    trouble(&log, 30)
                ),
            }
            assert!(
                Instant::now() < deadline,
                "the disk never got full: {} requests accepted after the filler",
                accepted.len() - before
            );
        };
        let full_at = Instant::now();
        let during = accepted.len() - before;
        assert_unavailable(refused, "POST /ingest on a full disk", &log).await;
        let stats = get_json(&client, &base, "/stats").await;
        assert_eq!(
            stats["ingestions"],
            accepted.len(),
            "requests refused with a 503 left nothing behind: {stats:#}\n--- server log ---\n{}",
            trouble(&log, 30)
        );

        // The gated batch ends now, on a full disk: its outcome cannot be
        // recorded. While the disk stays full, every write is refused the same
        // way, every read still answers, and the process stays alive.
        upstream.open();
        let (mut rounds, mut readyz_while_full) = (0, 0);
        while full_at.elapsed() < OUTAGE {
            let response = post_ingest(&client, &base, &[7, 8, 9]).await;
            assert_unavailable(response, "POST /ingest, disk still full", &log).await;
            for id in &accepted {
                assert_eq!(
                    get(&client, &base, &format!("/status/{id}")).await.status(),
                    200,
                    "GET /status of an accepted request while the disk is full"
                );
            }
            assert_eq!(get(&client, &base, "/healthz").await.status(), 200);
            // Not asserted: what readiness says while only writes fail.
            readyz_while_full = get(&client, &base, "/readyz").await.status().as_u16();
            rounds += 1;
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        assert_eq!(
            gated_batch_status(&client, &base, &gated).await,
            "triggered",
            "the gated batch ended, but its outcome waits for room on the disk"
        );
        assert!(
            log.count("cannot record the attempt") > 0,
            "{}",
            trouble(&log, 30)
        );
        let stats = get_json(&client, &base, "/stats").await;
        assert_eq!(stats["ingestions"], accepted.len(), "{stats:#}");
        assert_eq!(
            stored_ingestions(&client, &base).await,
            accepted.iter().cloned().collect(),
            "the store holds exactly the accepted requests"
        );

        // Free the space: requests are accepted again, at once.
        std::fs::remove_file(&filler).unwrap();
        let freed_at = Instant::now();
        let deadline = freed_at + Duration::from_secs(5);
        let mut refused_after_freeing = 0;
        let after = loop {
            let response = post_ingest(&client, &base, &ids(100)).await;
            if response.status() == 200 {
                let body: Value = response.json().await.unwrap();
                break body["ingestion_id"].as_str().unwrap().to_owned();
            }
            assert_unavailable(response, "POST /ingest just after freeing space", &log).await;
            refused_after_freeing += 1;
            assert!(
                Instant::now() < deadline,
                "POST /ingest still refused 5 s after space was freed"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let first_accept = freed_at.elapsed();
        accepted.push(after);

        wait_all_completed(&client, &base, &accepted, Duration::from_secs(30), &log).await;
        let recovered = freed_at.elapsed();
        assert_eq!(
            stored_ingestions(&client, &base).await,
            accepted.iter().cloned().collect(),
            "nothing but the accepted requests is stored"
        );
        let stats = get_json(&client, &base, "/stats").await;
        assert_eq!(stats["ingestions"], accepted.len());
        for (priority, counts) in stats["queue"].as_object().unwrap() {
            for (status, n) in counts.as_object().unwrap() {
                assert!(
                    status == "completed" || n == 0,
                    "{priority}: {n} batches {status}: {stats:#}"
                );
            }
        }
        let gated_status = get_json(&client, &base, &format!("/status/{gated}")).await;
        assert_eq!(
            gated_status["batches"][0]["attempts"], 1,
            "the outcome kept in memory was recorded: no id fetched twice"
        );
        let mut server = server;
        assert!(
            server.child.try_wait().unwrap().is_none(),
            "the server is still running"
        );
        assert_eq!(log.count("panicked"), 0, "{}", trouble(&log, 40));
        eprintln!(
            "full disk on {} ({FS_MIB} MiB, filler {} KiB): {before} requests before, \
             {during} while filling ({refused_while_filling} refused meanwhile), 1 after; \
             first 503 at {:?}; disk full for {:?} ({rounds} rounds of checks, /readyz \
             {readyz_while_full}); first POST \
             accepted {first_accept:?} after freeing ({refused_after_freeing} refused); all \
             completed {recovered:?} after freeing; {} `group commit failed`, {} `rolled \
             back a group`, {} `cannot record the attempt` log lines; {:?} in all",
            fs.kind,
            filler_size >> 10,
            full_at - t0,
            freed_at - full_at,
            log.count("group commit failed"),
            log.count("rolled back a group"),
            log.count("cannot record the attempt"),
            t0.elapsed(),
        );
    }
}

/// A private PostgreSQL server crashes under the service and comes back. It
/// does not depend on `SLUICE_TEST_STORE`, so it runs harmlessly in both
/// passes of `scripts/test`.
mod postgres_restart {
    use super::*;

    /// The longest a request may take to fail while PostgreSQL is down: the
    /// pool's acquire timeout (5 s) plus room for a loaded machine.
    const FAIL_FAST: Duration = Duration::from_secs(8);
    /// How long PostgreSQL stays down: longer than the dispatcher keeps
    /// retrying to record a finished attempt (5 tries, each waiting out the
    /// pool's 5 s acquire timeout, 3 s of backoff between them: about 28 s),
    /// so the outcome of the batch in flight must survive a long outage.
    const PG_OUTAGE: Duration = Duration::from_secs(30);

    /// A PostgreSQL server of its own for one test, on a free port, with trust
    /// authentication. Crashed (immediate stop) on drop.
    struct PrivatePostgres {
        bin: PathBuf,
        data: PathBuf,
        dir: TempDir,
        port: u16,
        /// Run as the `postgres` user: PostgreSQL refuses to run as root.
        as_postgres: bool,
    }

    impl PrivatePostgres {
        fn start() -> Self {
            let bin = std::fs::read_dir("/usr/lib/postgresql")
                .into_iter()
                .flatten()
                .filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .filter(|bin| bin.join("initdb").exists())
                .max_by_key(|bin| {
                    bin.parent()
                        .and_then(|v| v.file_name()?.to_str()?.parse::<u32>().ok())
                        .unwrap_or(0)
                })
                .expect(
                    "PostgreSQL's server binaries in /usr/lib/postgresql/*/bin (scripts/test-deps)",
                );
            let dir = TempDir::new().unwrap();
            let as_postgres = running_as_root();
            if as_postgres {
                run(Command::new("chown").arg("postgres:").arg(dir.path()))
                    .expect("giving the data directory to the postgres user");
            }
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let server = Self {
                bin,
                data: dir.path().join("data"),
                dir,
                port,
                as_postgres,
            };
            server
                .pg("initdb")
                .arg("-D")
                .arg(&server.data)
                .args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"])
                .output()
                .map_err(|e| e.to_string())
                .and_then(|o| {
                    if o.status.success() {
                        Ok(())
                    } else {
                        Err(String::from_utf8_lossy(&o.stderr).into_owned())
                    }
                })
                .expect("initdb");
            server.up();
            server
        }

        /// A command of PostgreSQL's, run as the `postgres` user if we are root.
        fn pg(&self, program: &str) -> Command {
            let program = self.bin.join(program);
            if self.as_postgres {
                let mut command = Command::new("runuser");
                command.args(["-u", "postgres", "--"]).arg(program);
                command
            } else {
                Command::new(program)
            }
        }

        fn url(&self) -> String {
            format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
        }

        /// Starts the server (again), on the same port; waits until it accepts
        /// connections.
        fn up(&self) {
            let options = format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
                self.port,
                self.dir.path().display()
            );
            run(self
                .pg("pg_ctl")
                .arg("-D")
                .arg(&self.data)
                .arg("-l")
                .arg(self.dir.path().join("postgres.log"))
                .args(["-w", "-t", "30", "-o", &options, "start"]))
            .unwrap_or_else(|e| panic!("starting PostgreSQL: {e}\n{}", self.log()));
        }

        /// Crashes the server: `immediate` skips the shutdown checkpoint and
        /// drops every connection, as a crash would.
        fn crash(&self) -> Result<String, String> {
            run(self.pg("pg_ctl").arg("-D").arg(&self.data).args([
                "-w",
                "-t",
                "30",
                "-m",
                "immediate",
                "stop",
            ]))
        }

        fn log(&self) -> String {
            std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
        }
    }

    impl Drop for PrivatePostgres {
        fn drop(&mut self) {
            if self.data.join("postmaster.pid").exists()
                && let Err(e) = self.crash()
            {
                eprintln!("cannot stop the private PostgreSQL: {e}");
            }
        }
    }

    /// Times a request, and checks it does not hang.
    async fn timed<T>(what: &str, request: impl Future<Output = T>) -> (T, Duration) {
        let start = Instant::now();
        let answer = request.await;
        let took = start.elapsed();
        assert!(
            took < FAIL_FAST,
            "{what} took {took:?} while PostgreSQL was down"
        );
        (answer, took)
    }

    /// PostgreSQL crashes while a batch is in flight and stays down half a
    /// minute: writes and reads get the 503 problem within seconds, /readyz
    /// says 503 while /healthz stays 200; once PostgreSQL is back on the same
    /// port, the service is ready again by itself, accepts requests, and every
    /// request acknowledged before the crash ends `completed`: the outcome of
    /// the batch in flight is recorded, no batch is left `triggered`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_restart_gives_503_then_processing_resumes() {
        let postgres = PrivatePostgres::start();
        let upstream = GatedUpstream::start().await;
        // A short lease: a batch whose node stopped renewing it would be
        // rescued within a second or two.
        let (server, log) = ServerProcess::start_logged(
            &postgres.url(),
            &[
                "--interval",
                "10ms",
                "--batch-size",
                "10",
                "--lease",
                "1s",
                "--upstream-url",
                &upstream.url,
                "--upstream-timeout",
                "60s",
            ],
        );
        let base = server.address.clone();
        let client = client();
        let t0 = Instant::now();

        // The gated batch is in flight; three requests wait behind it.
        let gated = ingest_gated(&client, &base, &ids(5)).await;
        upstream.wait_for_the_gated_batch().await;
        let mut accepted = vec![gated.clone()];
        for priority in ["LOW", "MEDIUM", "HIGH"] {
            accepted.push(ingest_at(&client, &base, &ids(20), priority).await);
        }
        postgres
            .crash()
            .unwrap_or_else(|e| panic!("crashing PostgreSQL: {e}"));
        let down_at = Instant::now();
        // The gated batch ends now: its outcome cannot be recorded.
        upstream.open();

        // While it is down, round after round, all at once: a write, reads,
        // readiness and liveness.
        let status_path = format!("/status/{}", accepted[0]);
        let mut slowest = Duration::ZERO;
        let mut rounds = 0;
        while down_at.elapsed() < PG_OUTAGE {
            let (post, status, stats, ready, health) = tokio::join!(
                timed("POST /ingest", post_ingest(&client, &base, &[1, 2, 3])),
                timed("GET /status", get(&client, &base, &status_path)),
                timed("GET /stats", get(&client, &base, "/stats")),
                timed("GET /readyz", get(&client, &base, "/readyz")),
                timed("GET /healthz", get(&client, &base, "/healthz")),
            );
            slowest = slowest.max(post.1).max(status.1).max(stats.1).max(ready.1);
            assert_unavailable(post.0, "POST /ingest with PostgreSQL down", &log).await;
            assert_unavailable(status.0, "GET /status with PostgreSQL down", &log).await;
            assert_unavailable(stats.0, "GET /stats with PostgreSQL down", &log).await;
            assert_unavailable(ready.0, "GET /readyz with PostgreSQL down", &log).await;
            assert_eq!(health.0.status(), 200, "the process itself is alive");
            // A readiness probe hears "not ready" before its own timeout.
            assert!(
                ready.1 < Duration::from_millis(1500),
                "GET /readyz took {:?} with PostgreSQL down",
                ready.1
            );
            assert!(
                health.1 < Duration::from_secs(1),
                "GET /healthz took {:?} with PostgreSQL down",
                health.1
            );
            rounds += 1;
        }
        let outage = down_at.elapsed();

        postgres.up();
        let up_at = Instant::now();
        let deadline = up_at + Duration::from_secs(20);
        loop {
            let ready = get(&client, &base, "/readyz").await;
            if ready.status() == 200 {
                break;
            }
            assert_eq!(ready.status(), 503, "/readyz while PostgreSQL restarts");
            assert!(
                Instant::now() < deadline,
                "/readyz still 503 20 s after PostgreSQL came back:\n{}",
                trouble(&log, 30)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let ready_after = up_at.elapsed();
        let after = post_ingest(&client, &base, &ids(6)).await;
        assert_eq!(
            after.status(),
            200,
            "POST /ingest once ready again: {}\n--- server log ---\n{}",
            after.text().await.unwrap(),
            trouble(&log, 30)
        );
        let body: Value = after.json().await.unwrap();
        accepted.push(body["ingestion_id"].as_str().unwrap().to_owned());

        wait_all_completed(&client, &base, &accepted, Duration::from_secs(30), &log).await;
        let recovered = up_at.elapsed();
        assert_eq!(
            stored_ingestions(&client, &base).await,
            accepted.iter().cloned().collect(),
            "the requests refused during the outage left nothing behind"
        );
        let stats = get_json(&client, &base, "/stats").await;
        assert_eq!(stats["ingestions"], accepted.len(), "{stats:#}");
        assert!(
            stats["processing"].as_array().unwrap().is_empty(),
            "no batch left triggered: {stats:#}"
        );
        let mut server = server;
        assert!(
            server.child.try_wait().unwrap().is_none(),
            "the server is still running"
        );
        assert_eq!(log.count("panicked"), 0, "{}", trouble(&log, 40));
        assert!(
            log.count("cannot record the attempt") > 0,
            "PostgreSQL crashed under a batch in flight, whose outcome had to wait:\n{}",
            trouble(&log, 40)
        );
        let gated_status = get_json(&client, &base, &format!("/status/{gated}")).await;
        assert_eq!(
            gated_status["batches"][0]["attempts"], 1,
            "the outcome kept in memory was recorded: no id fetched twice"
        );
        let most_attempts = {
            let mut most = 0;
            for id in &accepted {
                let status = get_json(&client, &base, &format!("/status/{id}")).await;
                for batch in status["batches"].as_array().unwrap() {
                    most = most.max(batch["attempts"].as_u64().unwrap());
                }
            }
            most
        };
        eprintln!(
            "postgres restart: crash {:?} after start; down {outage:?} ({rounds} rounds of \
             checks, the slowest 503 in {slowest:?}); ready {ready_after:?} after the \
             restart; all completed {recovered:?} after it (at most {most_attempts} \
             attempt(s) a batch); {} `cannot record the attempt`, {} `lease lost`, \
             {} `re-queued` log lines; {:?} in all",
            down_at - t0,
            log.count("cannot record the attempt"),
            log.count("lease lost"),
            log.count("re-queued"),
            t0.elapsed(),
        );
    }
}
