//! A real PgBouncer (Debian's `pgbouncer`, which `.ci/run` installs) on a free loopback
//! port, in transaction mode, in front of the test PostgreSQL server.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running PgBouncer; killed on drop.
pub struct PgBouncer {
    child: Child,
    port: u16,
    bin: PathBuf,
    ini: PathBuf,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

fn binary() -> Option<PathBuf> {
    ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

impl PgBouncer {
    /// PgBouncer in `pool_mode = transaction` with `default_pool_size = pool_size`, in
    /// front of the server `direct_url` names: clients log in by trust, PgBouncer logs in
    /// to the server as `direct_url`'s user with its password, if any.
    /// `None` when the binary is missing (the caller decides whether that is a skip).
    pub fn start(direct_url: &str, pool_size: u32) -> Option<PgBouncer> {
        Self::start_with(direct_url, pool_size, "")
    }

    /// [`PgBouncer::start`] with `extra` lines in its `[pgbouncer]` section.
    pub fn start_with(direct_url: &str, pool_size: u32, extra: &str) -> Option<PgBouncer> {
        let bin = binary()?;
        // From 1.21 PgBouncer can keep prepared statements (from 1.24 by default): these
        // tests want the pooler that does not, as Debian's 1.18.
        let version = Command::new(&bin).arg("--version").output().unwrap();
        let version = String::from_utf8_lossy(&version.stdout).to_string();
        let minor: u32 = version
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.strip_prefix("1."))
            .and_then(|v| v.split('.').next())
            .and_then(|m| m.parse().ok())
            .unwrap_or(0);
        let keep_none = if minor >= 21 {
            "max_prepared_statements = 0\n"
        } else {
            ""
        };
        let server = url::Url::parse(direct_url).unwrap();
        let port = free_port();
        let dir = tempfile::tempdir().unwrap();
        let ini = dir.path().join("pgbouncer.ini");
        let users = dir.path().join("userlist.txt");
        // The URL's user and password, decoded, quoted as PgBouncer reads them (a `"`
        // doubled).
        let quoted = |s: &str| {
            let s = percent_encoding::percent_decode_str(s).decode_utf8_lossy();
            format!("\"{}\"", s.replace('"', "\"\""))
        };
        let user = quoted(server.username());
        std::fs::write(
            &users,
            format!("{user} {}\n", quoted(server.password().unwrap_or_default())),
        )
        .unwrap();
        std::fs::write(
            &ini,
            format!(
                "[databases]\n* = host={} port={}\n\n[pgbouncer]\nlisten_addr = 127.0.0.1\n\
                 listen_port = {port}\nunix_socket_dir =\nauth_type = trust\nauth_file = {}\n\
                 pool_mode = transaction\ndefault_pool_size = {pool_size}\nmax_client_conn = 1000\n\
                 ignore_startup_parameters = extra_float_digits\nadmin_users = {user}\n{keep_none}{extra}",
                server.host_str().unwrap(),
                server.port().unwrap_or(5432),
                users.display(),
                user = percent_encoding::percent_decode_str(server.username()).decode_utf8_lossy(),
            ),
        )
        .unwrap();
        // PgBouncer refuses to run as root: it drops to `postgres`, which must read the
        // files.
        let root = runs_as_root();
        if root {
            use std::os::unix::fs::PermissionsExt;
            for p in [dir.path(), ini.as_path(), users.as_path()] {
                let mode = if p.is_dir() { 0o755 } else { 0o644 };
                std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
            }
        }
        let log = dir.path().join("pgbouncer.log");
        let child = spawn(&bin, &ini, &log);
        let mut bouncer = PgBouncer {
            child,
            port,
            bin,
            ini,
            log,
            _dir: dir,
        };
        bouncer.wait_until_listening();
        Some(bouncer)
    }

    /// One `SHOW …` of PgBouncer's admin console (`SHOW POOLS`, `SHOW CLIENTS`): each
    /// row as column name → value, for the pools of `database` only.
    pub async fn show(
        &self,
        direct_url: &str,
        what: &str,
        database: &str,
    ) -> Vec<std::collections::HashMap<String, String>> {
        use sqlx::{Column, Row};
        let mut conn = self.console(direct_url).await;
        // The console speaks only the simple query protocol, in text.
        let rows = sqlx::raw_sql(&format!("SHOW {what}"))
            .fetch_all(&mut conn)
            .await
            .unwrap();
        rows.iter()
            .map(|row| {
                row.columns()
                    .iter()
                    .map(|c| {
                        let raw = row.try_get_raw(c.ordinal()).unwrap();
                        let text = <&str as sqlx::Decode<sqlx::Postgres>>::decode(raw)
                            .map(str::to_owned)
                            .unwrap_or_default();
                        (c.name().to_owned(), text)
                    })
                    .collect::<std::collections::HashMap<_, _>>()
            })
            .filter(|r| r.get("database").map(String::as_str) == Some(database))
            .collect()
    }

    /// A connection to PgBouncer's admin console as `direct_url`'s user (an admin user).
    async fn console(&self, direct_url: &str) -> sqlx::PgConnection {
        use sqlx::Connection;
        let mut url = url::Url::parse(&self.url(direct_url)).unwrap();
        url.set_path("pgbouncer");
        sqlx::PgConnection::connect(url.as_str()).await.unwrap()
    }

    /// Kills PgBouncer (SIGKILL: every client and server connection drops at once).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Points every database at the server on `port` (the `[databases]` entry rewritten)
    /// and has PgBouncer reload it (`RELOAD` on its console), as an operator does after a
    /// failover; `direct_url` names the console's user.
    pub async fn repoint(&self, direct_url: &str, port: u16) {
        let ini = std::fs::read_to_string(&self.ini).unwrap();
        let line = ini
            .lines()
            .find(|l| l.starts_with("* = host="))
            .expect("the [databases] entry")
            .to_owned();
        let host = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("host="))
            .unwrap();
        let ini = ini.replace(&line, &format!("* = host={host} port={port}"));
        std::fs::write(&self.ini, ini).unwrap();
        let mut conn = self.console(direct_url).await;
        sqlx::raw_sql("RELOAD").execute(&mut conn).await.unwrap();
    }

    /// Starts PgBouncer again, on the same port with the same settings.
    pub fn restart(&mut self) {
        self.kill();
        self.child = spawn(&self.bin, &self.ini, &self.log);
        self.wait_until_listening();
    }

    fn wait_until_listening(&mut self) {
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            let why = || std::fs::read_to_string(&self.log).unwrap_or_default();
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("pgbouncer exited {status}: {}", why());
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "pgbouncer did not listen on {}: {}",
                self.port,
                why()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `direct_url` with its host and port replaced by this pooler's.
    pub fn url(&self, direct_url: &str) -> String {
        let mut url = url::Url::parse(direct_url).unwrap();
        url.set_host(Some("127.0.0.1")).unwrap();
        url.set_port(Some(self.port)).unwrap();
        url.to_string()
    }
}

/// A free loopback port below Linux's ephemeral range (32768 and up), so that no
/// outgoing connection of the tests takes it while PgBouncer is down between a kill and
/// a restart.
pub(crate) fn free_port() -> u16 {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    loop {
        let port = rng.gen_range(20_000..32_000);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// PgBouncer on `ini`, its stderr appended to `log`. As root it drops to `postgres`
/// (it refuses to run as root), which must read the files.
fn spawn(bin: &std::path::Path, ini: &std::path::Path, log: &std::path::Path) -> Child {
    let mut cmd = Command::new(bin);
    if runs_as_root() {
        cmd.args(["-u", "postgres"]);
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    cmd.arg(ini)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("pgbouncer starts")
}

/// Whether this process runs as root (from `/proc/self/status`, no libc call).
pub(crate) fn runs_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
