//! `deploy/`: the systemd unit is what `systemd-analyze verify` accepts without a warning,
//! hardened as README "Running on a server" says, and sets only variables `serve` reads;
//! the nginx example keeps TLS 1.2+ and GitHub's 15 s.

mod common;

use std::process::Command;

use common::*;

fn deploy(file: &str) -> String {
    std::fs::read_to_string(fixture(&format!("../deploy/{file}"))).unwrap()
}

#[test]
fn the_systemd_unit_is_hardened_and_sets_only_what_serve_reads() {
    let unit = deploy("revoker.service");
    for line in [
        "ExecStart=/usr/local/bin/revoker serve",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "EnvironmentFile=-/etc/revoker/revoker.env",
        "DynamicUser=yes",
        "StateDirectory=revoker",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=",
        "Environment=DATABASE_URL=sqlite:///var/lib/revoker/revoker.db",
    ] {
        assert!(unit.lines().any(|l| l == line), "the unit lacks {line}");
    }
    // Every variable it sets is one `serve --help` names.
    let help = revoker_command()
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    for line in unit.lines().filter_map(|l| l.strip_prefix("Environment=")) {
        let name = line.split('=').next().unwrap();
        assert!(help.contains(name), "serve reads no {name}");
    }
    // TimeoutStopSec leaves room for --shutdown-timeout's 30 s.
    assert!(unit.contains("TimeoutStopSec=45s"));
}

#[test]
fn systemd_analyze_verifies_the_unit_without_a_warning() {
    let Ok(version) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("systemd-analyze is not installed: the unit is not verified here");
        assert!(!in_ci() || !std::path::Path::new("/usr/bin/systemd-analyze").exists());
        return;
    };
    assert!(version.status.success());
    // The unit as installed, but pointing at this build's binary (verify checks that
    // ExecStart is executable).
    let dir = tempfile::tempdir().unwrap();
    let unit = deploy("revoker.service")
        .replace("/usr/local/bin/revoker", revoker_bin().to_str().unwrap());
    let path = dir.path().join("revoker.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{said}");
    // An unknown or misspelt key is only a warning to systemd: none here.
    assert!(
        said.trim().is_empty(),
        "systemd-analyze verify said:\n{said}"
    );
}

#[test]
fn the_nginx_example_keeps_tls_1_2_and_the_15_s() {
    let conf = deploy("nginx.conf");
    assert!(conf.contains("ssl_protocols TLSv1.2 TLSv1.3;"));
    assert!(conf.contains("proxy_read_timeout 14s;"));
    assert!(conf.contains("location /secret-scanning/"));
    // The holder endpoints, with the client address for their rate limit.
    assert!(conf.contains("location /oauth/"));
    assert!(conf.contains("X-Forwarded-For $proxy_add_x_forwarded_for"));
    assert!(conf.contains("proxy_pass http://127.0.0.1:8080;"));
    // The admin listener is never proxied.
    assert!(!conf.contains("9090;"));
}
