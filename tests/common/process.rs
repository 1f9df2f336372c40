//! The `revoker` binary as a child process.

use std::io::BufRead;
use std::ops::Deref;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::{fixture, Endpoints};

/// The binary the tests run: the one `cargo test` built, or `REVOKER_TEST_BIN` when set
/// (`REVOKER_TEST_BIN=target/release/revoker cargo test --test cli` checks a release
/// build through the same tests).
pub fn revoker_bin() -> std::path::PathBuf {
    match std::env::var_os("REVOKER_TEST_BIN") {
        Some(bin) => std::path::PathBuf::from(bin),
        None => std::path::PathBuf::from(env!("CARGO_BIN_EXE_revoker")),
    }
}

/// `revoker` as a child process ([`revoker_bin`]), with the variables a developer's
/// shell may hold removed.
pub fn revoker_command() -> std::process::Command {
    let mut cmd = std::process::Command::new(revoker_bin());
    cmd.env_remove("DATABASE_URL")
        .env_remove("RUST_LOG")
        .env_remove("RUST_LOG_FORMAT")
        .env_remove("REVOKER_MIGRATE_DATABASE_URL")
        .env_remove("GITHUB_TOKEN");
    cmd
}

/// Runs `cmd` to its end and returns its stdout, failing the test with its stderr if
/// it did not exit 0.
pub fn run_ok(cmd: &mut std::process::Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{:?} exited {:?}: {}{}",
        cmd,
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `revoker token mint --owner OWNER --ttl 30m` on `db_url`, as a user runs it: the
/// raw token, checked to be all of stdout, well-formed, and absent from stderr.
pub fn mint_with_cli(db_url: &str, owner: &str) -> String {
    let out = revoker_command()
        .args(["token", "mint", "--owner", owner, "--ttl", "30m"])
        .args(["--database-url", db_url])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 1, "stdout is only the token");
    let token = stdout.trim().to_owned();
    revoker::domain::token::Token::parse(&token).expect("minted token is well-formed");
    assert!(!String::from_utf8_lossy(&out.stderr).contains(&token));
    token
}

/// Sets the open-file limit (`RLIMIT_NOFILE`, soft and hard, so the binary cannot raise
/// it) of the process `cmd` starts to `limit`, in the child before it runs.
pub fn limit_open_files(cmd: &mut std::process::Command, limit: u64) {
    use std::os::unix::process::CommandExt;
    let limit = libc::rlimit {
        rlim_cur: limit as libc::rlim_t,
        rlim_max: limit as libc::rlim_t,
    };
    // SAFETY: runs in the forked child before exec and calls only setrlimit, which is
    // async-signal-safe; `limit` is a plain value copied into the closure.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// `revoker serve` on `db_url`, both listeners on loopback port 0 (add the scanner
/// and anything else).
pub fn serve_command(db_url: &str) -> std::process::Command {
    let mut cmd = revoker_command();
    cmd.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--database-url",
        db_url,
    ]);
    cmd
}

/// The lines a child has logged so far, and whether its stderr has closed; waiters
/// are woken on each line.
#[derive(Default)]
struct Log {
    lines: Mutex<(Vec<String>, bool)>,
    changed: Condvar,
}

/// A `revoker serve` process on loopback port 0 (public and admin), scanner `github`
/// reading the test keys from their fixture file, logging at debug; its stderr is
/// collected line by line. Dereferences to its [`Endpoints`].
pub struct ServeProcess {
    child: std::process::Child,
    log: Arc<Log>,
    reader: Option<std::thread::JoinHandle<()>>,
    endpoints: Endpoints,
}

impl ServeProcess {
    pub fn start(db_url: &str, extra_args: &[&str], json_logs: bool) -> ServeProcess {
        Self::spawn(Self::command(db_url, extra_args, json_logs))
    }

    /// [`ServeProcess::start`] under an open-file limit ([`limit_open_files`]).
    pub fn start_with_open_file_limit(
        db_url: &str,
        extra_args: &[&str],
        limit: u64,
    ) -> ServeProcess {
        let mut cmd = Self::command(db_url, extra_args, false);
        limit_open_files(&mut cmd, limit);
        Self::spawn(cmd)
    }

    fn command(db_url: &str, extra_args: &[&str], json_logs: bool) -> std::process::Command {
        let mut cmd = serve_command(db_url);
        cmd.args([
            "--scanner",
            &format!("github={}", fixture("keys/test-keys.json").display()),
        ])
        .args(extra_args)
        .env("RUST_LOG", "debug")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
        if json_logs {
            cmd.env("RUST_LOG_FORMAT", "json");
        }
        cmd
    }

    fn spawn(mut cmd: std::process::Command) -> ServeProcess {
        let mut child = cmd.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Log::default());
        let sink = Arc::clone(&log);
        let reader = std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                sink.lines.lock().unwrap().0.push(line);
                sink.changed.notify_all();
            }
            sink.lines.lock().unwrap().1 = true;
            sink.changed.notify_all();
        });
        let Some(listening) = wait_for_line(&log, "listening", Duration::from_secs(60)) else {
            let _ = child.kill();
            panic!(
                "serve did not start:\n{}",
                log.lines.lock().unwrap().0.join("\n")
            );
        };
        // Plain: `... addr=127.0.0.1:P admin=127.0.0.1:Q`; JSON: `"addr":"127.0.0.1:P"`.
        let addrs: Vec<String> = listening
            .split(|c: char| c.is_whitespace() || matches!(c, '"' | ',' | '}' | '=' | ':'))
            .collect::<Vec<_>>()
            .windows(2)
            .filter(|w| w[0] == "127.0.0.1" && w[1].parse::<u16>().is_ok())
            .map(|w| format!("127.0.0.1:{}", w[1]))
            .collect();
        assert_eq!(addrs.len(), 2, "addresses in {listening}");
        ServeProcess {
            child,
            log,
            reader: Some(reader),
            endpoints: Endpoints {
                base: format!("http://{}", addrs[0]),
                admin: format!("http://{}", addrs[1]),
                client: reqwest::Client::new(),
            },
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// (current RSS, peak RSS) in KiB, from /proc.
    pub fn memory_kib(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap_or_else(|| panic!("{name} in /proc status"))
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// Everything logged so far.
    pub fn logs(&self) -> String {
        self.log.lines.lock().unwrap().0.join("\n")
    }

    /// Blocks until a line containing `needle` has been logged (panics after 10 s, or
    /// when the process closes its stderr first); returns that line.
    pub fn wait_for_log(&self, needle: &str) -> String {
        wait_for_line(&self.log, needle, Duration::from_secs(10))
            .unwrap_or_else(|| panic!("no {needle:?} in the logs:\n{}", self.logs()))
    }

    /// Blocks until `n` lines containing `needle` have been logged (panics after 30 s,
    /// or when the process closes its stderr first).
    pub fn wait_for_log_count(&self, needle: &str, n: usize) {
        wait_for_lines(&self.log, needle, n, Duration::from_secs(30))
            .unwrap_or_else(|| panic!("fewer than {n} {needle:?} in the logs:\n{}", self.logs()));
    }

    /// Sends SIGTERM without waiting.
    pub fn terminate(&self) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
    }

    /// SIGKILL (nothing runs after it: no shutdown, no last writes) and wait for it.
    pub fn kill(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(reader) = self.reader.take() {
            reader.join().unwrap();
        }
        self.logs()
    }

    /// SIGTERM, wait for a clean exit, return everything logged.
    pub fn stop(mut self) -> String {
        self.terminate();
        self.wait_for_exit()
    }

    /// Waits for the process to exit (asserting it exited 0) and returns its logs.
    pub fn wait_for_exit(&mut self) -> String {
        let status = self.child.wait().unwrap();
        assert!(
            status.success(),
            "serve exited with {status}:\n{}",
            self.logs()
        );
        if let Some(reader) = self.reader.take() {
            reader.join().unwrap(); // the pipe closed: everything is read
        }
        self.logs()
    }
}

/// The first line containing `needle`; `None` when stderr closes or `within` passes
/// without one.
fn wait_for_line(log: &Log, needle: &str, within: Duration) -> Option<String> {
    wait_for_lines(log, needle, 1, within)
}

/// The `n`th line containing `needle`; `None` when stderr closes or `within` passes
/// before there are `n`.
fn wait_for_lines(log: &Log, needle: &str, n: usize, within: Duration) -> Option<String> {
    let deadline = Instant::now() + within;
    let mut lines = log.lines.lock().unwrap();
    loop {
        if let Some(line) = lines.0.iter().filter(|l| l.contains(needle)).nth(n - 1) {
            return Some(line.clone());
        }
        let left = deadline.checked_duration_since(Instant::now())?;
        if lines.1 {
            return None;
        }
        lines = log.changed.wait_timeout(lines, left).unwrap().0;
    }
}

impl Deref for ServeProcess {
    type Target = Endpoints;
    fn deref(&self) -> &Endpoints {
        &self.endpoints
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        // A failed test must not leave a server behind.
        if self.reader.is_some() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
