use aion_events::topics;
use aion_kafka::TopicSpec;
use anyhow::Result;
use clap::Subcommand;

use crate::Context;

#[derive(Debug, Subcommand)]
pub enum Action {
    /// Create topics; existing ones are left untouched. Without names: every product topic and
    /// its dead-letter topic.
    Create {
        /// Topic names (default: the product topics).
        names: Vec<String>,
        /// Partitions per topic (overrides `kafka.partitions`).
        #[arg(long, env = "AION_PARTITIONS")]
        partitions: Option<i32>,
        /// Replication factor (overrides `kafka.replication`).
        #[arg(long, env = "AION_REPLICATION")]
        replication: Option<i32>,
    },
    /// Print the partition count of each product topic.
    List,
}

/// The topics AION Stream itself needs: inputs with their dead-letter and late side outputs, the
/// window results and the enriched retrievals (and their dead letters, for the gate and the
/// shard stage), training triggers (and theirs), status and control, index rebuilds, and the
/// human labels (and theirs).
pub fn product_topics() -> Vec<String> {
    topics::INPUTS
        .iter()
        .flat_map(|t| [t.to_string(), topics::dlq(t), topics::late(t)])
        .chain([
            topics::METRICS.to_string(),
            topics::dlq(topics::METRICS),
            topics::TRAIN_TRIGGER.to_string(),
            topics::dlq(topics::TRAIN_TRIGGER),
            topics::TRAIN_STATUS.to_string(),
            topics::TRAIN_CONTROL.to_string(),
            topics::INDEX_REBUILD.to_string(),
            topics::RETRIEVAL_ENRICHED.to_string(),
            topics::dlq(topics::RETRIEVAL_ENRICHED),
            topics::LABELS.to_string(),
            topics::dlq(topics::LABELS),
        ])
        .collect()
}

pub async fn create(
    ctx: &Context,
    names: &[String],
    partitions: Option<i32>,
    replication: Option<i32>,
) -> Result<Vec<String>> {
    let specs: Vec<TopicSpec> = names
        .iter()
        .map(|name| TopicSpec {
            name: name.clone(),
            partitions: partitions.unwrap_or(ctx.config.kafka.partitions),
            replication: replication.unwrap_or(ctx.config.kafka.replication),
        })
        .collect();
    Ok(aion_kafka::create_topics(&ctx.kafka, &specs).await?)
}

pub async fn run(action: Action, ctx: &Context) -> Result<()> {
    match action {
        Action::Create {
            names,
            partitions,
            replication,
        } => {
            let names = if names.is_empty() {
                product_topics()
            } else {
                names
            };
            let created = create(ctx, &names, partitions, replication).await?;
            for name in &names {
                let state = if created.contains(name) {
                    "created"
                } else {
                    "exists"
                };
                println!("{state:8} {name}");
            }
        }
        Action::List => {
            for name in product_topics() {
                match aion_kafka::partition_count(&ctx.kafka, &name) {
                    Ok(n) => println!("{name:24} {n} partitions"),
                    Err(e) => println!("{name:24} {e}"),
                }
            }
        }
    }
    Ok(())
}
