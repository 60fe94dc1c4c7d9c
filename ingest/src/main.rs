//! The `ingest` binary: `ingest run` (the default), `ingest create-topics`,
//! `ingest rebuild`, `ingest dead-letters`, `ingest hash-token`,
//! `ingest generate`.

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use foldcache_common::config::Config;
use foldcache_ingest::generate::{GenOptions, Generator};
use foldcache_ingest::generate_merger::{self, MergerTopics};
use foldcache_ingest::{
    Ingest, admin, cluster, console, dead_letter_cli, dead_letter_tools, kafka, produce,
    rebuild_cli, topics,
};
use std::path::PathBuf;

/// Folds compacted Kafka topics of HR entities into Redis.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// TOML config file; `FOLDCACHE__SECTION__KEY` variables override it.
    #[arg(long, short, env = "FOLDCACHE_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Consume the source topics and fold them into Redis (the default).
    Run,
    /// Create the source topics (compacted) and the dead-letter topic.
    CreateTopics {
        /// Partitions per topic.
        #[arg(long, default_value_t = 3)]
        partitions: i32,
        /// Replication factor.
        #[arg(long, default_value_t = 1)]
        replication_factor: i32,
    },
    /// Rebuild the cache from offset zero into a new generation while the
    /// live one keeps serving; readers switch when it has caught up.
    Rebuild {
        /// Start it and return; do not show progress.
        #[arg(long)]
        no_wait: bool,
    },
    /// Inspect the dead-letter topic and re-drive dead letters after the
    /// upstream fix. Values are never shown: they may hold HR data.
    DeadLetters {
        #[command(subcommand)]
        command: DeadLetterCommand,
    },
    /// Print the SHA-256 of a bearer token for `[[auth.tokens]] sha256`.
    /// The token is read from stdin (never an argument, which `ps` shows);
    /// with `--new`, a fresh random token is made and printed with its hash.
    HashToken {
        /// Make a new random token instead of reading one.
        #[arg(long)]
        new: bool,
    },
    /// Produce a deterministic HR data set to the source topics.
    Generate {
        /// RNG seed: the same seed produces the same events.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Employees (and permission records).
        #[arg(long, default_value_t = 10_000)]
        employees: usize,
        /// Teams.
        #[arg(long, default_value_t = 10_000)]
        teams: usize,
        /// Updates of random employees after the initial load.
        #[arg(long, default_value_t = 0)]
        updates: usize,
        /// Tombstones of random employees after the initial load.
        #[arg(long, default_value_t = 0)]
        deletes: usize,
        /// Events per second; 0 = as fast as possible.
        #[arg(long, default_value_t = 0)]
        rate: u64,
    },
    /// Produce the demo's merger data set: two companies' HR systems in
    /// their own shapes (plain JSON and Debezium), the access system's
    /// grants and identity links for the people in both.
    GenerateMerger {
        /// RNG seed: the same seed produces the same records.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// People per company.
        #[arg(long, default_value_t = 2_000)]
        people: usize,
        /// Northwind's topic (plain JSON states).
        #[arg(long, default_value = "northwind.hr.people")]
        northwind_topic: String,
        /// Globex's topic (Debezium events).
        #[arg(long, default_value = "globex.cdc.employees")]
        globex_topic: String,
        /// The access system's topic (grants).
        #[arg(long, default_value = "access.grants")]
        access_topic: String,
        /// The identity links topic.
        #[arg(long, default_value = "hr.identity-links")]
        links_topic: String,
    },
}

#[derive(Debug, Subcommand)]
enum DeadLetterCommand {
    /// Counts per reason and the latest dead letters of each: position,
    /// time, origin, key, value size and SHA-256, error.
    List {
        /// Dead letters shown per reason.
        #[arg(long, default_value_t = 5)]
        latest: usize,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// One dead letter's metadata (never its value).
    Show {
        /// Its position on the dead-letter topic, `PARTITION:OFFSET`.
        #[arg(value_parser = dead_letter_tools::parse_position)]
        position: (i32, i64),
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Produce selected dead letters again, to their origin topic and
    /// partition (or `--to`), refusing envelopes, records that would still
    /// fail decoding under the current config, and records the cache has
    /// already superseded.
    Redrive {
        /// Positions on the dead-letter topic, `PARTITION:OFFSET`.
        #[arg(value_parser = dead_letter_tools::parse_position)]
        positions: Vec<(i32, i64)>,
        /// Every dead letter of this reason (repeatable).
        #[arg(long = "reason")]
        reasons: Vec<String>,
        /// Every dead letter.
        #[arg(long)]
        all: bool,
        /// Produce to this topic instead of each letter's origin topic.
        #[arg(long)]
        to: Option<String>,
        /// Say what would happen; produce nothing.
        #[arg(long)]
        dry_run: bool,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// mimalloc instead of the system allocator: the fold and, above all, the
/// per-source jq programs allocate many small short-lived values, and
/// glibc's malloc/free took about a third of a mapped record's CPU
/// (docs/BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run_main());
    // A blocking call still waiting on an unreachable broker or Redis must
    // not hold the exit back: SIGTERM ends the process in bounded time.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    // One clear line per error (causes joined), never a backtrace.
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn hash_token(new: bool) -> anyhow::Result<()> {
    use base64::Engine;
    use foldcache_common::secret::token_hash_hex;
    let token = if new {
        let bytes: [u8; 32] = rand::random();
        let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        println!("token:  {token}");
        token
    } else {
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .context("reading the token from stdin")?;
        let token = line.trim_end_matches(['\n', '\r']).to_owned();
        anyhow::ensure!(!token.is_empty(), "no token on stdin");
        token
    };
    println!("sha256: {}", token_hash_hex(&token));
    Ok(())
}

async fn run_main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = Config::load(cli.config.as_deref())?;
    kafka::check_properties(&config)?;
    foldcache_common::telemetry::init(&config.log);
    foldcache_common::redis_client::install_tls_provider();
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => run(config).await,
        Command::CreateTopics {
            partitions,
            replication_factor,
        } => topics::create_topics(&config, partitions, replication_factor).await,
        Command::Rebuild { no_wait } => rebuild_cli::run(&config, !no_wait).await,
        Command::HashToken { new } => hash_token(new),
        Command::DeadLetters { command } => match command {
            DeadLetterCommand::List { latest, json } => {
                dead_letter_cli::list(&config, latest, json).await
            }
            DeadLetterCommand::Show { position, json } => {
                dead_letter_cli::show(&config, position, json).await
            }
            DeadLetterCommand::Redrive {
                positions,
                reasons,
                all,
                to,
                dry_run,
                json,
            } => {
                let selection = dead_letter_tools::Selection {
                    all,
                    reasons,
                    positions,
                };
                dead_letter_cli::redrive(&config, selection, to, dry_run, json).await
            }
        },
        Command::Generate {
            seed,
            employees,
            teams,
            updates,
            deletes,
            rate,
        } => {
            let opts = GenOptions {
                seed,
                employees,
                teams,
                updates,
                deletes,
            };
            let sent = tokio::task::spawn_blocking(move || {
                produce::produce(&config, Generator::new(opts).events(), rate)
            })
            .await??;
            tracing::info!(events = sent, "data set produced");
            println!("produced {sent} events");
            Ok(())
        }
        Command::GenerateMerger {
            seed,
            people,
            northwind_topic,
            globex_topic,
            access_topic,
            links_topic,
        } => {
            let topics = MergerTopics {
                northwind: northwind_topic,
                globex: globex_topic,
                access: access_topic,
                links: links_topic,
            };
            let records = generate_merger::records(seed, people, &topics);
            let sent = tokio::task::spawn_blocking(move || {
                produce::produce_records(&config, records.into_iter().map(Ok), 0)
            })
            .await??;
            tracing::info!(records = sent, "merger data set produced");
            println!("produced {sent} records");
            Ok(())
        }
    }
}

async fn run(config: Config) -> anyhow::Result<()> {
    let metrics = admin::install_metrics()?;
    let listener = tokio::net::TcpListener::bind(config.ingest.admin_listen)
        .await
        .with_context(|| format!("binding ingest.admin_listen {}", config.ingest.admin_listen))?;
    tracing::info!(addr = %listener.local_addr()?, "admin endpoints listening");
    let admins = admin::AdminTokens::new(&config);
    let ingest = Ingest::new(config.clone())?;
    let latest = cluster::Latest::default();
    // The console's view of the dead-letter topic, on its own thread (a
    // blocking consumer); it stops when the admin endpoints are gone.
    let dead_letters = dead_letter_tools::Live::default();
    {
        let (config, live) = (config.clone(), dead_letters.clone());
        std::thread::Builder::new()
            .name("dead-letters".into())
            .spawn(move || dead_letter_tools::follow(&config, &live))
            .context("starting the dead-letter reader")?;
    }
    let watcher = tokio::spawn(cluster::watch(
        config.clone(),
        ingest.redis().clone(),
        latest.clone(),
    ));
    let admin_task = tokio::spawn(admin::serve(
        listener,
        admin::AdminState {
            metrics,
            ready: ingest.ready(),
            statuses: ingest.statuses(),
            rebuilds: ingest.rebuilds().clone(),
            redis: ingest.redis().clone(),
            admins,
            config: std::sync::Arc::new(config.clone()),
            cluster: latest,
            dead_letters: dead_letters.clone(),
            sessions: console::Sessions::default(),
            redrive_lock: std::sync::Arc::default(),
        },
    ));
    let result = ingest
        .run(foldcache_common::runtime::shutdown_signal())
        .await;
    admin_task.abort();
    watcher.abort();
    tracing::info!("ingest stopped");
    result
}
