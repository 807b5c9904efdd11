//! A private CA and the certificates it signs, made with `openssl`, for
//! the TLS listeners of the harness, and self-signed certificates for the
//! TLS suites.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{Context, bail};

/// `openssl req` making a P-256 key and an X.509 certificate valid 2 days,
/// unencrypted: what every test certificate starts from.
pub const OPENSSL_REQ: [&str; 9] = [
    "req",
    "-x509",
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:prime256v1",
    "-nodes",
    "-days",
    "2",
];

/// Make, with `openssl`, a CA (`ca.pem`, `ca.key`) and a server certificate
/// it signs (`server.pem`, `server.key`) in `dir`: P-256 keys, valid 2 days;
/// the server's for `localhost` and `127.0.0.1`, not a CA itself, for server
/// authentication (what webpki, and so rustls, wants of it).
pub async fn ca_and_server_cert(dir: &Path) -> anyhow::Result<()> {
    let openssl = |args: &[&str]| {
        let mut command = tokio::process::Command::new("openssl");
        command
            .current_dir(dir)
            .args(OPENSSL_REQ)
            .args(args)
            .stdin(Stdio::null());
        command
    };
    let steps: [(&str, &[&str]); 2] = [
        (
            "CA",
            &[
                "-subj",
                "/CN=idem RabbitNode test CA",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
            ],
        ),
        (
            "server certificate",
            &[
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-subj",
                "/CN=localhost",
                "-addext",
                "subjectAltName=DNS:localhost,IP:127.0.0.1",
                "-addext",
                "basicConstraints=critical,CA:FALSE",
                "-addext",
                "extendedKeyUsage=serverAuth",
                "-keyout",
                "server.key",
                "-out",
                "server.pem",
            ],
        ),
    ];
    for (what, args) in steps {
        let output = openssl(args)
            .output()
            .await
            .context("running openssl (apt-get install openssl)")?;
        if !output.status.success() {
            bail!(
                "openssl req ({what}) failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }
    Ok(())
}

/// A self-signed certificate for `localhost` and `127.0.0.1` (not a CA, as
/// webpki wants of a server certificate), made by `openssl`.
pub fn self_signed(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let out = std::process::Command::new("openssl")
        .args(OPENSSL_REQ)
        .args([
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-addext",
            "basicConstraints=critical,CA:FALSE",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl runs (apt-get install openssl)");
    assert!(
        out.status.success(),
        "openssl req: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert, key)
}
