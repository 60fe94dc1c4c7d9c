//! librdkafka client settings shared by every Kafka client ingest makes.

use foldcache_common::config::Config;
use rdkafka::config::ClientConfig;

/// A librdkafka config with the brokers and the extra `[kafka.client]`
/// properties (security settings, `session.timeout.ms` and the like).
pub fn kafka_client_config(config: &Config) -> ClientConfig {
    let mut cc = ClientConfig::new();
    cc.set("bootstrap.servers", &config.kafka.brokers);
    for (k, v) in &config.kafka.client {
        cc.set(k, v.expose());
    }
    cc
}
