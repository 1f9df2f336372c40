//! A real PostgreSQL primary with a hot standby, made for one test: `initdb`, the
//! standby by `pg_basebackup -R -X stream`, each server on its own loopback port under a
//! temp dir, replication synchronous (`synchronous_standby_names = '*'`,
//! `synchronous_commit = on`) or not. The server binaries are Debian's PostgreSQL 15
//! ones (`/usr/lib/postgresql/15/bin`, on the machine with the server `.ci/run` uses);
//! as root (CI) they run as the `postgres` user, as initdb and the server refuse root.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::pgbouncer::{free_port, runs_as_root};

/// How the standby follows the primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replication {
    /// A commit returns once the standby has the WAL flushed (`synchronous_commit = on`).
    Synchronous,
    /// A commit returns once the primary has it; the standby follows when it can.
    Asynchronous,
}

/// A primary and a standby; both stopped (immediately) and removed on drop.
pub struct Cluster {
    bin: PathBuf,
    dir: tempfile::TempDir,
    pub primary_port: u16,
    pub standby_port: u16,
    pub database: String,
}

const BIN_DIRS: &[&str] = &["/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/16/bin"];

impl Cluster {
    /// Starts both servers and creates the database `revoker` on the primary; waits
    /// until the standby streams (and, synchronous, is the synchronous one). `None`
    /// (after a note on stderr) when the server binaries are missing, unless `CI` is set.
    pub async fn start(replication: Replication) -> Option<Cluster> {
        let Some(bin) = BIN_DIRS
            .iter()
            .map(PathBuf::from)
            .find(|d| d.join("initdb").exists())
        else {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI: PostgreSQL's server binaries (initdb, pg_ctl, pg_basebackup) are missing"
            );
            eprintln!("skipped: no PostgreSQL server binaries in {BIN_DIRS:?}");
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        if runs_as_root() {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(ok.success(), "chown the cluster's dir to postgres");
        }
        let cluster = Cluster {
            bin,
            dir,
            primary_port: free_port(),
            standby_port: free_port(),
            database: "revoker".into(),
        };
        let primary = cluster.data("primary");
        cluster.run(
            "initdb",
            &[
                "-D",
                path(&primary),
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-sync",
                "--no-instructions",
            ],
        );
        let sync_names = match replication {
            Replication::Synchronous => "*",
            Replication::Asynchronous => "",
        };
        let conf = format!(
            "\nport = {}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
             wal_level = replica\nmax_wal_senders = 5\nhot_standby = on\n\
             synchronous_commit = on\nsynchronous_standby_names = '{sync_names}'\n\
             shared_buffers = 32MB\nmax_connections = 60\nwal_keep_size = 128MB\n\
             fsync = off\n",
            cluster.primary_port,
            cluster.dir.path().display(),
        );
        cluster.append(&primary.join("postgresql.conf"), &conf);
        cluster.pg_ctl("primary", &["start", "-w", "-t", "30"]);
        let standby = cluster.data("standby");
        cluster.run(
            "pg_basebackup",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &cluster.primary_port.to_string(),
                "-U",
                "postgres",
                "-D",
                path(&standby),
                "-R",
                "-X",
                "stream",
                "--no-sync",
            ],
        );
        cluster.append(
            &standby.join("postgresql.conf"),
            // Promoted, it has no standby of its own: with the primary's
            // synchronous_standby_names every commit would wait for one forever (what
            // Patroni and friends rewrite on a failover).
            &format!(
                "\nport = {}\nsynchronous_standby_names = ''\n",
                cluster.standby_port
            ),
        );
        cluster.pg_ctl("standby", &["start", "-w", "-t", "30"]);
        let wanted = match replication {
            Replication::Synchronous => "sync",
            Replication::Asynchronous => "async",
        };
        let started = Instant::now();
        loop {
            let states = cluster
                .texts(
                    cluster.primary_port,
                    "postgres",
                    "SELECT sync_state FROM pg_stat_replication WHERE state = 'streaming'",
                )
                .await
                .unwrap_or_default();
            if states == [wanted] {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the standby streams ({states:?})"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        cluster
            .texts(cluster.primary_port, "postgres", "CREATE DATABASE revoker")
            .await
            .unwrap();
        Some(cluster)
    }

    fn data(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Server binary `name`, run as `postgres` when this process is root.
    fn command(&self, name: &str) -> Command {
        let bin = self.bin.join(name);
        if runs_as_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(bin);
            c
        } else {
            Command::new(bin)
        }
    }

    /// Runs server binary `name` with `args` (as `postgres` when root); panics with its
    /// output unless it succeeds.
    fn run(&self, name: &str, args: &[&str]) {
        let out = self
            .command(name)
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{name} {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn pg_ctl(&self, server: &str, args: &[&str]) {
        let data = self.data(server);
        let log = self.data(&format!("{server}.log"));
        let mut all = vec!["-D", path(&data), "-l", path(&log)];
        all.extend_from_slice(args);
        self.run("pg_ctl", &all);
    }

    fn append(&self, file: &Path, text: &str) {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(file).unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }

    /// The URL of one server's `revoker` database.
    pub fn url(&self, port: u16) -> String {
        format!("postgres://postgres@127.0.0.1:{port}/{}", self.database)
    }

    /// One URL naming the primary, then the standby, with `target_session_attrs`.
    pub fn multi_host_url(&self, attrs: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/{}?target_session_attrs={attrs}&connect_timeout=2",
            self.primary_port, self.standby_port, self.database
        )
    }

    /// Kills the primary as a crash would (`pg_ctl -m immediate stop`).
    pub fn kill_primary(&self) {
        self.pg_ctl("primary", &["-m", "immediate", "stop"]);
    }

    /// Promotes the standby and waits until it takes writes.
    pub fn promote_standby(&self) {
        self.pg_ctl("standby", &["promote", "-w", "-t", "30"]);
    }

    /// A query's rows as text on server `port`, database `db` (simple protocol).
    pub async fn texts(&self, port: u16, db: &str, sql: &str) -> Result<Vec<String>, sqlx::Error> {
        use sqlx::{Connection, Row};
        let url = format!("postgres://postgres@127.0.0.1:{port}/{db}");
        let mut conn = sqlx::PgConnection::connect(&url).await?;
        let rows = sqlx::raw_sql(sql).fetch_all(&mut conn).await?;
        let _ = conn.close().await;
        Ok(rows.iter().map(|r| r.get::<String, _>(0)).collect())
    }
}

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 temp path")
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for server in ["primary", "standby"] {
            if self.data(server).join("postmaster.pid").exists() {
                let data = self.data(server);
                let _ = self
                    .command("pg_ctl")
                    .args(["-D", path(&data), "-m", "immediate", "stop"])
                    .output();
            }
        }
    }
}
