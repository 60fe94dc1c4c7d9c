//! Secure transports with the real binaries: ingest and query-api talk to a
//! redis-server that only accepts TLS (`rediss://`, a private CA) and an ACL
//! user with a password; query-api serves HTTPS with its own certificate.
//! The password never shows in either process's log.

use anyhow::{Context, Result, ensure};
use foldcache::{Process, Stack, eventually, free_port, redis_server_binary};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);
const REDIS_PASSWORD: &str = "tls-acl-pw-5d81c2e7";

/// A private CA and a certificate for 127.0.0.1 / localhost, as PEM files.
struct Pki {
    _dir: tempfile::TempDir,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn pki() -> Result<Pki> {
    let dir = tempfile::tempdir()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    // Distinct names: OpenSSL takes a leaf whose issuer equals its subject
    // for self-signed.
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "foldcache test CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;
    let key = KeyPair::generate()?;
    let mut leaf = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])?;
    leaf.distinguished_name
        .push(DnType::CommonName, "127.0.0.1");
    let cert = leaf.signed_by(&key, &ca)?;
    let write = |name: &str, pem: String| -> Result<PathBuf> {
        let p = dir.path().join(name);
        std::fs::write(&p, pem)?;
        Ok(p)
    };
    Ok(Pki {
        ca: write("ca.pem", ca.pem())?,
        cert: write("server.pem", cert.pem())?,
        key: write("server.key", key.serialize_pem())?,
        _dir: dir,
    })
}

/// redis-server with TLS only (no plain port) and the default user off.
fn tls_redis(pki: &Pki, port: u16) -> Result<Process> {
    let s = |p: &Path| p.to_string_lossy().into_owned();
    let (port, cert, key, ca) = (port.to_string(), s(&pki.cert), s(&pki.key), s(&pki.ca));
    let pw = format!(">{REDIS_PASSWORD}");
    Process::spawn(
        "redis-server-tls",
        &redis_server_binary()?,
        &[
            "--port",
            "0",
            "--tls-port",
            &port,
            "--bind",
            "127.0.0.1",
            "--tls-cert-file",
            &cert,
            "--tls-key-file",
            &key,
            "--tls-ca-cert-file",
            &ca,
            "--tls-auth-clients",
            "no",
            "--save",
            "",
            "--appendonly",
            "no",
            "--user",
            "default",
            "off",
            "--user",
            "foldcache",
            "on",
            &pw,
            "~*",
            "&*",
            "+@all",
        ],
        &[],
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_over_tls_with_an_acl_user_and_https_from_query_api() -> Result<()> {
    foldcache_common::redis_client::install_tls_provider();
    let pki = pki()?;
    let redis_port = free_port();
    let redis = tls_redis(&pki, redis_port)?;
    let stack = Stack::start(1, "").await?;
    let url = format!("rediss://foldcache:{REDIS_PASSWORD}@127.0.0.1:{redis_port}/");
    let ca = pki.ca.to_string_lossy().into_owned();
    let (cert, key) = (
        pki.cert.to_string_lossy().into_owned(),
        pki.key.to_string_lossy().into_owned(),
    );
    let redis_env = [
        ("FOLDCACHE__REDIS__URL", url.as_str()),
        ("FOLDCACHE__REDIS__TLS_CA_FILE", ca.as_str()),
    ];

    // A client with the CA and the password gets in; without the password,
    // the ACL refuses; without the CA, TLS refuses.
    let mut cfg = foldcache_common::config::Config::default().redis;
    cfg.url = foldcache_common::secret::Secret::new(url.clone());
    cfg.tls_ca_file = Some(pki.ca.clone());
    let client = foldcache_common::redis_client::client(&cfg)?;
    let mut con = eventually("TLS redis to answer", WAIT, || {
        let client = client.clone();
        async move { Ok(client.get_multiplexed_async_connection().await.ok()) }
    })
    .await?;
    let pong: String = redis::cmd("PING").query_async(&mut con).await?;
    assert_eq!(pong, "PONG");
    cfg.url = foldcache_common::secret::Secret::new(format!("rediss://127.0.0.1:{redis_port}/"));
    let anonymous = foldcache_common::redis_client::client(&cfg)?;
    let refused = match anonymous.get_multiplexed_async_connection().await {
        Ok(mut c) => redis::cmd("PING")
            .query_async::<String>(&mut c)
            .await
            .is_err(),
        Err(_) => true,
    };
    assert!(
        refused,
        "the default user is off: no command without the ACL password"
    );
    cfg.tls_ca_file = None;
    cfg.url = foldcache_common::secret::Secret::new(url.clone());
    let untrusted = foldcache_common::redis_client::client(&cfg)?;
    assert!(
        untrusted.get_multiplexed_async_connection().await.is_err(),
        "a certificate from an unknown CA is refused"
    );

    let ingest = stack.spawn_ingest_with(&redis_env)?;
    let mut api_env = redis_env.to_vec();
    api_env.push(("FOLDCACHE__HTTP__TLS__CERT_FILE", &cert));
    api_env.push(("FOLDCACHE__HTTP__TLS__KEY_FILE", &key));
    let api = stack.spawn_query_api_with(&api_env)?;

    let producer = stack.producer()?;
    let value = json!({"id": "E1", "name": "Kim"}).to_string();
    stack
        .produce(
            &producer,
            &stack.topics.employees,
            Some(b"E1"),
            Some(value.as_bytes()),
        )
        .await?;
    let https = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(&pki.ca)?)?)
        .build()?;
    let e1 = format!("https://127.0.0.1:{}/v1/employees/E1", stack.http_port);
    let body: serde_json::Value = eventually("E1 over HTTPS", WAIT, || {
        let (https, e1) = (https.clone(), e1.clone());
        async move {
            let Ok(r) = https.get(&e1).send().await else {
                return Ok(None);
            };
            Ok(if r.status() == 200 {
                Some(r.json().await?)
            } else {
                None
            })
        }
    })
    .await?;
    assert_eq!(body, json!({"id": "E1", "name": "Kim"}));
    // The entity really lives in the TLS Redis.
    let g: u64 = redis::cmd("HGET")
        .arg("fc:state")
        .arg("live_gen")
        .query_async(&mut con)
        .await?;
    let name: Option<String> = redis::cmd("HGET")
        .arg(format!("fc:g{g}:employees:E1"))
        .arg("name")
        .query_async(&mut con)
        .await?;
    assert_eq!(name.as_deref(), Some("\"Kim\""));
    // Plain HTTP to the HTTPS port gets no answer.
    let plain = format!("http://127.0.0.1:{}/v1/employees/E1", stack.http_port);
    let plain_ok = reqwest::get(&plain).await.is_ok_and(|r| r.status() == 200);
    assert!(
        !plain_ok,
        "plain HTTP must not be served on the HTTPS listener"
    );

    let logs = [ingest.log_path().to_owned(), api.log_path().to_owned()];
    drop(api);
    drop(ingest);
    drop(redis);
    for p in &logs {
        let log = std::fs::read_to_string(p).with_context(|| p.display().to_string())?;
        ensure!(!log.is_empty(), "{} is empty", p.display());
        ensure!(
            !log.contains(REDIS_PASSWORD),
            "{} shows the Redis password",
            p.display()
        );
    }
    Ok(())
}

/// Ingest's every Kafka client (admin for `create-topics`, consumer,
/// dead-letter producer) over TLS with a private CA. Tansu 0.6.0 has no TLS
/// listener of its own, so a TLS terminator stands in front of it and Tansu
/// advertises the terminator's address.
#[tokio::test(flavor = "multi_thread")]
async fn ingest_reads_kafka_over_tls() -> Result<()> {
    use rdkafka::ClientConfig;
    let pki = pki()?;
    let (tansu_port, tls_port) = (free_port(), free_port());
    let broker = foldcache::Broker::spawn(tansu_port, tls_port)?;
    let _proxy = foldcache::TlsProxy::start(tls_port, &pki.cert, &pki.key, tansu_port).await?;
    let ca = pki.ca.to_string_lossy().into_owned();
    let mut tls_client = ClientConfig::new();
    tls_client
        .set("bootstrap.servers", format!("127.0.0.1:{tls_port}"))
        .set("security.protocol", "SSL")
        .set("ssl.ca.location", &ca);
    broker.wait_for_metadata(tls_client.clone()).await?;

    let redis = foldcache::RedisServer::start().await?;
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("foldcache.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[redis]
url = "{redis}"
[kafka]
brokers = "127.0.0.1:{tls_port}"
group_id = "tls-test"
dead_letter_topic = "tls.dead-letter"
[kafka.client]
"security.protocol" = "SSL"
"ssl.ca.location" = "{ca}"
[ingest]
admin_listen = "127.0.0.1:{admin}"
[[sources]]
topic = "tls.employees"
entity = "employees"
"#,
            redis = redis.url(),
            admin = free_port(),
        ),
    )?;
    let ingest_bin = foldcache::foldcache_binary("ingest")?;
    let config_arg = config.to_string_lossy().into_owned();
    let status = std::process::Command::new(&ingest_bin)
        .args([
            "--config",
            &config_arg,
            "create-topics",
            "--partitions",
            "1",
        ])
        .status()?;
    ensure!(status.success(), "create-topics over TLS failed");
    let _ingest = Process::spawn(
        "ingest-tls",
        &ingest_bin,
        &["--config", &config_arg, "run"],
        &[],
    )?;

    let producer: rdkafka::producer::FutureProducer = tls_client.create()?;
    let value = json!({"id": "E7", "name": "Lee"}).to_string();
    producer
        .send(
            rdkafka::producer::FutureRecord::to("tls.employees")
                .key("E7")
                .payload(&value),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)?;
    let mut con = redis.connection().await?;
    eventually("E7 folded from the TLS listener", WAIT, || {
        let mut con = con.clone();
        async move {
            let Some(g) = foldcache::live_generation(&mut con).await? else {
                return Ok(None);
            };
            let name: Option<String> = redis::cmd("HGET")
                .arg(format!("fc:g{g}:employees:E7"))
                .arg("name")
                .query_async(&mut con)
                .await?;
            Ok(name.filter(|n| n == "\"Lee\""))
        }
    })
    .await?;
    let _ = &mut con;
    Ok(())
}

/// The documented production config (deploy/foldcache.kafka.toml: Kafka
/// over SASL_SSL with SCRAM-SHA-512, Redis over TLS, HTTPS, tokens), with
/// its secret files in place, loads; librdkafka (built with OpenSSL and
/// SASL) accepts every `[kafka.client]` property for ingest's clients; the
/// secrets come from their files and never show in the config's Debug
/// output. Tansu 0.6.0 cannot run SASL here (its SCRAM users can only be
/// created through the broker once authentication is already required, with
/// nothing persisted), so the SASL handshake itself is not exercised.
#[test]
fn the_sasl_ssl_deploy_config_loads_and_librdkafka_accepts_it() -> Result<()> {
    use rdkafka::consumer::BaseConsumer;
    let pki = pki()?;
    let dir = tempfile::tempdir()?;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("deploy/foldcache.kafka.toml"))?
        .replace(
            "/run/secrets/foldcache/",
            &format!("{}/secrets/", dir.path().display()),
        )
        .replace("/etc/foldcache/", &format!("{}/etc/", dir.path().display()));
    std::fs::create_dir_all(dir.path().join("secrets"))?;
    std::fs::create_dir_all(dir.path().join("etc"))?;
    let kafka_pw = "scram-pw-1e5f9a";
    let redis_url = "rediss://foldcache:redis-pw-77aa01@127.0.0.1:6380/";
    std::fs::write(
        dir.path().join("secrets/kafka-password"),
        format!("{kafka_pw}\n"),
    )?;
    std::fs::write(dir.path().join("secrets/redis-url"), redis_url)?;
    std::fs::copy(&pki.key, dir.path().join("secrets/query-api.key"))?;
    for ca in ["kafka-ca.pem", "redis-ca.pem"] {
        std::fs::copy(&pki.ca, dir.path().join("etc").join(ca))?;
    }
    std::fs::copy(&pki.cert, dir.path().join("etc/query-api.pem"))?;
    let path = dir.path().join("foldcache.toml");
    std::fs::write(&path, text)?;

    let config = foldcache_common::config::Config::load(Some(&path))?;
    assert_eq!(config.kafka.client["sasl.password"].expose(), kafka_pw);
    assert_eq!(config.redis.url.expose(), redis_url);
    let debug = format!("{config:?}");
    assert!(!debug.contains(kafka_pw) && !debug.contains("redis-pw-77aa01"));
    assert!(!config.auth_is_open());
    foldcache_common::redis_client::install_tls_provider();
    foldcache_common::redis_client::client(&config.redis)?;

    let consumer: Result<BaseConsumer, _> = foldcache_ingest::kafka::kafka_client_config(
        &config,
        foldcache_ingest::kafka::ClientKind::Consumer,
    )
    .set("group.id", "config-check")
    .create();
    assert!(
        consumer.is_ok(),
        "librdkafka refused the SASL_SSL config: {:?}",
        consumer.err()
    );
    Ok(())
}
