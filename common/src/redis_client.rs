//! The Redis client both binaries use, built from `[redis]`: `redis://` or,
//! with TLS, `rediss://` (ACL user and password in the URL or in a secret
//! file, see [`crate::secret`]); a private CA (`tls_ca_file`) and a client
//! certificate for mutual TLS (`tls_cert_file` + `tls_key_file`) are
//! optional.

use crate::config::{ConfigError, RedisConfig};

/// Opens a client (no I/O yet). Errors name the setting, never the URL
/// (it may hold a password).
pub fn client(cfg: &RedisConfig) -> Result<redis::Client, ConfigError> {
    let url = cfg.url.expose().as_str();
    let invalid = |what: &str| ConfigError::Invalid(format!("redis: {what}"));
    let tls = url.starts_with("rediss://");
    if !tls && (cfg.tls_ca_file.is_some() || cfg.tls_cert_file.is_some()) {
        return Err(invalid(
            "tls_ca_file / tls_cert_file are set but redis.url is not rediss://",
        ));
    }
    if !tls || (cfg.tls_ca_file.is_none() && cfg.tls_cert_file.is_none()) {
        // rediss:// without files trusts the system's root certificates.
        return redis::Client::open(url).map_err(|e| {
            invalid(&format!(
                "redis.url is not a valid Redis URL ({})",
                e.category()
            ))
        });
    }
    let read = |path: &std::path::Path, what: &str| {
        std::fs::read(path).map_err(|e| invalid(&format!("reading {what} {}: {e}", path.display())))
    };
    let root_cert = cfg
        .tls_ca_file
        .as_deref()
        .map(|p| read(p, "tls_ca_file"))
        .transpose()?;
    let client_tls = match (&cfg.tls_cert_file, &cfg.tls_key_file) {
        (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
            client_cert: read(cert, "tls_cert_file")?,
            client_key: read(key, "tls_key_file")?,
        }),
        (None, None) => None,
        _ => return Err(invalid("tls_cert_file and tls_key_file go together")),
    };
    redis::Client::build_with_tls(
        url,
        redis::TlsCertificates {
            client_tls,
            root_cert,
        },
    )
    .map_err(|e| invalid(&format!("TLS set-up failed ({})", e.category())))
}

/// Installs rustls' `ring` crypto provider for the process (TLS to Redis
/// and query-api's HTTPS). Call once at start; later calls do nothing.
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
