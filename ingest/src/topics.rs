//! Creates the source and links topics (compacted) and the dead-letter
//! topic.

use crate::kafka::{ClientKind, kafka_client_config};
use anyhow::Context as _;
use foldcache_common::config::Config;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;

/// Creates every configured source and links topic with `cleanup.policy=compact`, and
/// the dead-letter topic with `cleanup.policy=delete`. Topics that exist are
/// left as they are.
pub async fn create_topics(
    config: &Config,
    partitions: i32,
    replication: i32,
) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = kafka_client_config(config, ClientKind::Admin)
        .create()
        .context("creating the Kafka admin client")?;
    let links = config
        .entities
        .values()
        .filter_map(|e| e.links_topic.as_ref());
    let mut topics: Vec<NewTopic<'_>> = config
        .sources
        .iter()
        .map(|s| &s.topic)
        .chain(links)
        .map(|topic| {
            NewTopic::new(topic, partitions, TopicReplication::Fixed(replication))
                .set("cleanup.policy", "compact")
        })
        .collect();
    topics.push(
        NewTopic::new(
            &config.kafka.dead_letter_topic,
            partitions,
            TopicReplication::Fixed(replication),
        )
        .set("cleanup.policy", "delete"),
    );
    let results = admin
        .create_topics(&topics, &AdminOptions::new())
        .await
        .context("CreateTopics request")?;
    for r in results {
        match r {
            Ok(topic) => tracing::info!(%topic, partitions, "topic created"),
            Err((topic, RDKafkaErrorCode::TopicAlreadyExists)) => {
                tracing::info!(%topic, "topic exists")
            }
            Err((topic, code)) => anyhow::bail!("creating topic {topic}: {code}"),
        }
    }
    Ok(())
}
