//! Extra CA roots for an `https://` charge API (`IDEM_CHARGE_API_CA_FILE`).

use std::path::PathBuf;

use anyhow::{Context, ensure};

/// CA certificates read from a PEM file at start.
#[derive(Debug, Clone)]
pub struct CaBundle {
    /// Where they came from (for messages).
    pub path: PathBuf,
    /// The file's content: one or more PEM certificates.
    pub pem: Vec<u8>,
}

impl CaBundle {
    /// Read and check `path` (at least one certificate, all parseable);
    /// errors name `var` and the path.
    pub fn read(var: &str, path: &std::path::Path) -> anyhow::Result<Self> {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let shown = path.display();
        let pem = std::fs::read(path).with_context(|| format!("cannot read {var}={shown}"))?;
        let certs = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| anyhow::anyhow!("{var}={shown} is not a PEM certificate file: {e}"))?;
        ensure!(
            !certs.is_empty(),
            "{var}={shown} holds no certificate (expected PEM: -----BEGIN CERTIFICATE-----)"
        );
        Ok(Self {
            path: path.to_owned(),
            pem,
        })
    }
}
