//! HTTPS on the public listener (`--tls-cert`, `--tls-key`) through the `revoker` binary:
//! TLS 1.2 and 1.3 carry signed deliveries, TLS 1.1 and 1.0 are refused by the server's
//! alert, and a rotated certificate is served without a restart (after
//! a file change and after SIGHUP) while connections opened before keep working; without
//! TLS a SIGHUP is logged and ends nothing.
//! Certificates are made by OpenSSL's command line: a CA per certificate, a leaf for
//! `127.0.0.1` and `localhost` signed by it, so a client that trusts one CA accepts
//! exactly one of them.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use chrono::Duration as Ttl;
use common::*;

/// A CA and a leaf certificate signed by it, in `dir/<name>-*.pem`.
struct Cert {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn make_cert(dir: &Path, name: &str) -> Cert {
    let p = |f: &str| dir.join(format!("{name}-{f}")).display().to_string();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let subject = format!("/CN=revoker test CA {name}");
    openssl(
        &[
            &["req", "-x509"][..],
            &ec,
            &["-keyout", &p("ca-key.pem"), "-out", &p("ca.pem")],
        ]
        .concat()
        .into_iter()
        .chain(["-days", "2", "-subj", &subject])
        .collect::<Vec<_>>(),
    );
    openssl(
        &[
            &["req"][..],
            &ec,
            &["-keyout", &p("key.pem"), "-out", &p("csr.pem")],
        ]
        .concat()
        .into_iter()
        .chain(["-subj", "/CN=localhost"])
        .collect::<Vec<_>>(),
    );
    std::fs::write(
        p("ext.cnf"),
        "basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        &p("csr.pem"),
        "-CA",
        &p("ca.pem"),
        "-CAkey",
        &p("ca-key.pem"),
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        &p("ext.cnf"),
        "-out",
        &p("cert.pem"),
    ]);
    Cert {
        ca: p("ca.pem").into(),
        cert: p("cert.pem").into(),
        key: p("key.pem").into(),
    }
}

/// A client that trusts only `ca`, speaking only `version`.
fn client(ca: &Path, version: reqwest::tls::Version) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(&std::fs::read(ca).unwrap()).unwrap();
    reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca)
        .min_tls_version(version)
        .max_tls_version(version)
        .build()
        .unwrap()
}

fn https(server: &ServeProcess) -> String {
    server.base.replacen("http://", "https://", 1)
}

/// `openssl s_client` against the public listener with `flags`; its whole output.
fn s_client(server: &ServeProcess, flags: &[&str]) -> (bool, String) {
    let mut child = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &server.addr(),
            "-servername",
            "localhost",
        ])
        .args(flags)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl runs");
    drop(child.stdin.take()); // end of input: s_client closes after the handshake
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn serve_tls(db: &TestDb, cert: &Cert, extra: &[&str]) -> ServeProcess {
    let (c, k) = (
        cert.cert.display().to_string(),
        cert.key.display().to_string(),
    );
    let args = [&["--tls-cert", &c, "--tls-key", &k][..], extra].concat();
    ServeProcess::start(db.url(), &args, false)
}

#[tokio::test]
async fn tls_1_2_and_1_3_carry_deliveries_and_older_versions_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let a = make_cert(dir.path(), "a");
    let db = TestDb::new(Kind::Sqlite).await.unwrap();
    let server = serve_tls(&db, &a, &["--header-timeout", "1s"]);
    let store = open_store(db.url()).await;
    let tokens = mint_many(store.as_ref(), "acme/widget", 2, Ttl::hours(1)).await;
    assert!(server.wait_for_log("listening").contains("scheme=https"));

    for (token, version) in tokens.iter().zip([
        reqwest::tls::Version::TLS_1_2,
        reqwest::tls::Version::TLS_1_3,
    ]) {
        let body = alert_body(&[token.expose_secret()]);
        let answer = send_delivery(&client(&a.ca, version), &https(&server), body)
            .await
            .unwrap_or_else(|e| panic!("{version:?}: {e:?}"));
        assert_eq!(answer.status, 200, "{version:?}: {}", answer.text);
        assert_eq!(answer.labels(), ["true_positive"], "{version:?}");
        let row = store.token(&token.hash()).await.unwrap().unwrap();
        assert!(row.revoked_at.is_some(), "{version:?}");
    }

    // What OpenSSL negotiates when it may offer only one version.
    for (flag, shown) in [("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")] {
        let (ok, out) = s_client(&server, &[flag]);
        assert!(ok, "{flag}: {out}");
        assert!(out.contains(&format!("New, {shown}")), "{flag}: {out}");
    }
    // TLS 1.1 and 1.0, allowed on the client's side (security level 0, which the same
    // client shows works with 1.2): the server refuses the handshake with an alert
    // (rustls sends handshake_failure, 40). A client that could not offer them at all
    // would fail with "no protocols available" and no alert.
    let (ok, out) = s_client(&server, &["-tls1_2", "-cipher", "DEFAULT@SECLEVEL=0"]);
    assert!(ok && out.contains("New, TLSv1.2"), "{out}");
    for flag in ["-tls1_1", "-tls1"] {
        let (ok, out) = s_client(&server, &[flag, "-cipher", "DEFAULT@SECLEVEL=0"]);
        assert!(!ok, "{flag} accepted: {out}");
        assert!(out.contains("SSL alert number"), "{flag}: {out}");
        assert!(!out.contains("no protocols available"), "{flag}: {out}");
    }

    // A handshake that stalls (the first bytes of a record, then nothing) is closed at
    // --header-timeout like a head that stalls.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stalled = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    stalled.write_all(&[0x16, 0x03, 0x01, 0x02]).await.unwrap();
    let started = std::time::Instant::now();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(std::time::Duration::from_secs(20), stalled.read(&mut buf))
        .await
        .expect("a stalled handshake is closed, not held");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(started.elapsed() >= std::time::Duration::from_millis(500));
    assert!(
        started.elapsed() < std::time::Duration::from_secs(3),
        "held past the timeout"
    );

    // Plain HTTP on the TLS port gets no HTTP answer.
    let plain = reqwest::Client::new()
        .get(format!("{}/healthz", server.base))
        .send()
        .await;
    assert!(plain.is_err(), "plain HTTP answered: {plain:?}");
    let logs = server.stop();
    assert!(!logs.contains("PRIVATE KEY"), "{logs}");
}

/// The files `serve` is given, holding `a`'s pair for a start.
fn served_as(dir: &Path, a: &Cert) -> Cert {
    let served = Cert {
        ca: a.ca.clone(),
        cert: dir.join("served-cert.pem"),
        key: dir.join("served-key.pem"),
    };
    install(a, &served.cert, &served.key);
    served
}

/// Writes `from`'s certificate and key over the served files by rename (as certbot and
/// Kubernetes secret mounts do: each file is whole when it appears).
fn install(from: &Cert, cert: &Path, key: &Path) {
    for (src, dst) in [(&from.key, key), (&from.cert, cert)] {
        let tmp = dst.with_extension("new");
        std::fs::copy(src, &tmp).unwrap();
        std::fs::rename(&tmp, dst).unwrap();
    }
}

#[tokio::test]
async fn a_rotated_certificate_is_served_without_restart_and_open_connections_stay() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (make_cert(dir.path(), "a"), make_cert(dir.path(), "b"));
    let served = served_as(dir.path(), &a);
    let db = TestDb::new(Kind::Sqlite).await.unwrap();
    // A long --header-timeout: the pooled connection must outlive the rotation.
    let server = serve_tls(
        &db,
        &served,
        &["--tls-check-interval", "100ms", "--header-timeout", "60s"],
    );
    let v13 = reqwest::tls::Version::TLS_1_3;
    let trusts_a = client(&a.ca, v13);
    let healthz = |c: &reqwest::Client| {
        let url = format!("{}/healthz", https(&server));
        let c = c.clone();
        async move { c.get(url).send().await.map(|r| r.status().as_u16()) }
    };
    assert_eq!(healthz(&trusts_a).await.unwrap(), 200);
    assert!(
        healthz(&client(&b.ca, v13)).await.is_err(),
        "B before rotation"
    );

    install(&b, &served.cert, &served.key);
    let line = server.wait_for_log("TLS certificate reloaded");
    assert!(line.contains("trigger=changed"), "{line}");

    // New connections get B; a client that trusts only A can no longer connect anew,
    // but its connection opened before the rotation still carries requests.
    assert_eq!(healthz(&client(&b.ca, v13)).await.unwrap(), 200);
    assert!(
        healthz(&client(&a.ca, v13)).await.is_err(),
        "A after rotation"
    );
    assert_eq!(
        healthz(&trusts_a).await.unwrap(),
        200,
        "the connection made before the rotation was dropped"
    );
    let answer = send_delivery(&trusts_a, &https(&server), alert_body(&["junk"]))
        .await
        .unwrap();
    assert_eq!(answer.status, 200, "{}", answer.text);
    server.stop();
}

#[tokio::test]
async fn sighup_reloads_and_a_broken_pair_keeps_the_served_one() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (make_cert(dir.path(), "a"), make_cert(dir.path(), "b"));
    let served = served_as(dir.path(), &a);
    let db = TestDb::new(Kind::Sqlite).await.unwrap();
    // Checked for changes once an hour: only SIGHUP can reload within this test.
    let server = serve_tls(&db, &served, &["--tls-check-interval", "1h"]);
    let v12 = reqwest::tls::Version::TLS_1_2;
    let hup = || {
        let status = Command::new("kill")
            .args(["-HUP", &server.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    };
    let healthz = |c: reqwest::Client| {
        let url = format!("{}/healthz", https(&server));
        async move { c.get(url).send().await.map(|r| r.status().as_u16()) }
    };

    // Overwritten in place (not renamed), then SIGHUP.
    std::fs::copy(&b.key, &served.key).unwrap();
    std::fs::copy(&b.cert, &served.cert).unwrap();
    hup();
    let line = server.wait_for_log("TLS certificate reloaded");
    assert!(line.contains("trigger=SIGHUP"), "{line}");
    assert_eq!(healthz(client(&b.ca, v12)).await.unwrap(), 200);

    // A's key beside B's certificate: refused, B still served, the process still up.
    std::fs::copy(&a.key, &served.key).unwrap();
    hup();
    let line = server.wait_for_log("TLS certificate not reloaded");
    assert!(line.contains("does not fit the certificate"), "{line}");
    assert_eq!(healthz(client(&b.ca, v12)).await.unwrap(), 200);
    assert!(!server.logs().contains("-----BEGIN"), "PEM in the logs");
    server.stop();
}

#[test]
fn a_key_that_does_not_fit_refuses_to_start_and_says_which_files() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (make_cert(dir.path(), "a"), make_cert(dir.path(), "b"));
    let db_path = dir.path().join("r.db");
    let url = format!("sqlite://{}", db_path.display());
    for (cert, key, expected) in [
        (&a.cert, &b.key, "does not fit the certificate"),
        (&a.key, &a.key, "holds no PEM certificate"),
        (&a.cert, &a.cert, "no PEM private key"),
        (&a.cert, &dir.path().join("missing.pem"), "missing.pem"),
    ] {
        let out = serve_command(&url)
            .args(["--tls-cert"])
            .arg(cert)
            .arg("--tls-key")
            .arg(key)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "started with {cert:?} {key:?}");
        assert!(stderr.contains(expected), "{expected:?} in {stderr}");
        assert!(!stderr.contains("-----BEGIN"), "{stderr}");
    }
    // --tls-cert without --tls-key is a usage error.
    let out = serve_command(&url)
        .arg("--tls-cert")
        .arg(&a.cert)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--tls-key"));
}

#[tokio::test]
async fn sighup_without_tls_is_logged_and_the_server_keeps_serving() {
    let db = TestDb::new(Kind::Sqlite).await.unwrap();
    let server = ServeProcess::start(db.url(), &[], false);
    let status = Command::new("kill")
        .args(["-HUP", &server.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    server.wait_for_log("SIGHUP received: nothing to reload");
    let answer = server.deliver(&Signer::test(), alert_body(&["junk"])).await;
    assert_eq!(answer.labels(), ["false_positive"]);
    server.stop(); // exits 0 after a SIGTERM: SIGHUP did not end it
}

/// A TLS client of `ca` (tokio-rustls, the server's own library).
fn connector(ca: &Path) -> tokio_rustls::TlsConnector {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::CertificateDer;
    use tokio_rustls::rustls::{ClientConfig, RootCertStore};
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = std::sync::Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
}

#[tokio::test]
async fn the_handshake_and_the_first_head_share_one_header_timeout() {
    use tokio::io::AsyncReadExt;
    let dir = tempfile::tempdir().unwrap();
    let a = make_cert(dir.path(), "a");
    let db = TestDb::new(Kind::Sqlite).await.unwrap();
    let server = serve_tls(&db, &a, &["--header-timeout", "4s"]);
    let connected = std::time::Instant::now();
    let tcp = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    // 2 s before the handshake starts (the client's choice), then no request at all.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector(&a.ca).connect(name, tcp).await.unwrap();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(std::time::Duration::from_secs(10), tls.read(&mut buf))
        .await
        .expect("closed, not held");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    // Closed at 4 s from accept; a fresh 4 s after the handshake would be 6 s.
    let held = connected.elapsed();
    assert!(
        held < std::time::Duration::from_millis(5500),
        "held {held:?}"
    );
    assert!(
        held >= std::time::Duration::from_millis(3900),
        "held {held:?}"
    );
    server.stop();
}

#[tokio::test]
async fn sigterm_does_not_wait_for_a_stalled_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let a = make_cert(dir.path(), "a");
    let db = TestDb::new(Kind::Sqlite).await.unwrap();
    let server = serve_tls(&db, &a, &["--header-timeout", "20s"]);
    // A connection that never starts its handshake.
    let _stalled = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    server.wait_for_log("TLS handshake started");
    let started = std::time::Instant::now();
    server.stop();
    let took = started.elapsed();
    assert!(
        took < std::time::Duration::from_secs(10),
        "exit took {took:?}"
    );
}
