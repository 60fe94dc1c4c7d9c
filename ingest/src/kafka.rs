//! librdkafka client settings shared by every Kafka client ingest makes.

use foldcache_common::config::Config;
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;

/// The kind of client a config is for: `[kafka.consumer]` and
/// `[kafka.producer]` reach only their own kind (librdkafka warns, at
/// every start, about a consumer property given to a producer and the
/// other way round); `[kafka.client]` reaches every kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientKind {
    /// Reads records: the generation consumers, the dead-letter readers.
    Consumer,
    /// Writes records: dead letters, re-drives, `ingest generate`.
    Producer,
    /// Asks the broker about topics (metadata, creation).
    Admin,
}

/// A librdkafka config with the brokers, the extra `[kafka.client]`
/// properties (security settings, `session.timeout.ms` and the like), then
/// those of `kind`'s own section, which win over `[kafka.client]`.
pub fn kafka_client_config(config: &Config, kind: ClientKind) -> ClientConfig {
    let mut cc = ClientConfig::new();
    cc.set("bootstrap.servers", &config.kafka.brokers);
    let own = match kind {
        ClientKind::Consumer => Some(&config.kafka.consumer),
        ClientKind::Producer => Some(&config.kafka.producer),
        ClientKind::Admin => None,
    };
    for (k, v) in config.kafka.client.iter().chain(own.into_iter().flatten()) {
        cc.set(k, v.expose());
    }
    cc
}

/// Every `[kafka.client]`, `[kafka.consumer]` and `[kafka.producer]`
/// property as librdkafka takes it, checked once at start: an unknown
/// property or a value librdkafka refuses stops ingest with one line that
/// names the section and the property, never the value (it may be a
/// credential, and librdkafka's own message quotes it).
pub fn check_properties(config: &Config) -> anyhow::Result<()> {
    for (section, name, value) in config.kafka.properties() {
        let mut one = ClientConfig::new();
        one.set(name, value.expose());
        let Err(e) = one.create_native_config() else {
            continue;
        };
        let why = match e {
            KafkaError::ClientConfig(_, description, _, _) => description,
            other => other.to_string(),
        };
        let value = value.expose();
        let why = if value.is_empty() {
            why
        } else {
            why.replace(value.as_str(), "[redacted]")
        };
        anyhow::bail!(
            "configuration: kafka.{section}.{name:?} = [redacted]: librdkafka refuses it: {why}"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use foldcache_common::secret::Secret;

    #[test]
    fn each_section_reaches_its_own_kind_of_client_and_wins_over_client() {
        let property = |k: &str, v: &str| (k.to_owned(), Secret::new(v.to_owned()));
        let mut c = Config::default();
        c.kafka.client.extend([
            property("client.id", "everyone"),
            property("fetch.max.bytes", "1048576"),
        ]);
        c.kafka
            .consumer
            .extend([property("fetch.max.bytes", "3145728")]);
        c.kafka
            .producer
            .extend([property("compression.type", "lz4")]);
        let consumer = kafka_client_config(&c, ClientKind::Consumer);
        let producer = kafka_client_config(&c, ClientKind::Producer);
        let admin = kafka_client_config(&c, ClientKind::Admin);
        for cc in [&consumer, &producer, &admin] {
            assert_eq!(cc.get("client.id"), Some("everyone"));
            assert_eq!(cc.get("bootstrap.servers"), Some("127.0.0.1:9092"));
        }
        assert_eq!(consumer.get("fetch.max.bytes"), Some("3145728"));
        assert_eq!(consumer.get("compression.type"), None);
        assert_eq!(producer.get("compression.type"), Some("lz4"));
        assert_eq!(producer.get("fetch.max.bytes"), Some("1048576"));
        assert_eq!(admin.get("fetch.max.bytes"), Some("1048576"));
        assert_eq!(admin.get("compression.type"), None);
    }

    #[test]
    fn a_property_librdkafka_refuses_is_one_line_without_its_value() {
        let line = |section: &str, name: &str, value: &str| {
            let mut c = Config::default();
            let map = match section {
                "client" => &mut c.kafka.client,
                "consumer" => &mut c.kafka.consumer,
                _ => &mut c.kafka.producer,
            };
            map.insert(name.into(), Secret::new(value.into()));
            check_properties(&c).map_err(|e| format!("{e:#}"))
        };
        let unknown = line("consumer", "sasl.pasword", "hunter2-b7").unwrap_err();
        assert!(
            unknown.starts_with("configuration: kafka.consumer.\"sasl.pasword\" = [redacted]"),
            "{unknown}"
        );
        assert!(
            unknown.contains("No such configuration property"),
            "{unknown}"
        );
        assert!(!unknown.contains("hunter2-b7"), "{unknown}");
        let invalid = line("producer", "compression.type", "zstd-9c1f").unwrap_err();
        assert!(
            invalid.starts_with("configuration: kafka.producer.\"compression.type\""),
            "{invalid}"
        );
        assert!(!invalid.contains("zstd-9c1f"), "{invalid}");
        assert!(
            !line("client", "fetch.max.bytes", "x-4e2d")
                .unwrap_err()
                .contains("x-4e2d")
        );
        line("client", "security.protocol", "SASL_SSL").unwrap();
        line("consumer", "fetch.max.bytes", "3145728").unwrap();
        line("producer", "compression.type", "lz4").unwrap();
    }
}
