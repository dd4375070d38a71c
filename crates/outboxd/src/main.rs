//! The `outboxd` command line. See the README for the commands.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use outboxd::check::{check, status, Level};
use outboxd::config::{Config, LogFormat};
use outboxd::demo::{demo, DemoOptions};
use outboxd::metrics::Metrics;
use outboxd::replay::{replay, ReplayOptions};
use outboxd::run::{run_from, shutdown_signal};
use outboxd::setup::setup;
use outboxd::sink::SinkKind;
use pgoutput::Lsn;
use tracing_subscriber::EnvFilter;

#[derive(Debug, Parser)]
#[command(
    name = "outboxd",
    version,
    about = "Streams transactional-outbox rows from PostgreSQL to Kafka, RabbitMQ or Redis"
)]
struct Cli {
    /// The TOML config file (see outboxd.example.toml); OUTBOXD_* variables and flags override it.
    #[arg(long, short, global = true, env = "OUTBOXD_CONFIG")]
    config: Option<PathBuf>,
    /// Overrides postgres.url.
    #[arg(long, global = true)]
    postgres_url: Option<String>,
    /// Overrides kafka.brokers.
    #[arg(long, global = true)]
    kafka_brokers: Option<String>,
    /// Overrides log.format (text or json).
    #[arg(long, global = true)]
    log_format: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Stream the outbox to the configured broker until SIGTERM/SIGINT.
    Run {
        /// Start at this saved position instead of the checkpoint (not older than the slot).
        #[arg(long)]
        start_lsn: Option<Lsn>,
    },
    /// Check PostgreSQL and the broker for everything outboxd needs; exit code 1 on any failure.
    Check,
    /// Slot, checkpoint, lag, retained WAL and the replay window.
    Status,
    /// Re-publish the outbox events committed after a saved LSN, with an outboxd.replay header.
    Replay {
        /// Re-publish events of transactions ending after this LSN (e.g. a saved checkpoint).
        #[arg(long)]
        from: Lsn,
        /// Stop before transactions committed at or after this LSN (default: the end of WAL now).
        #[arg(long)]
        to: Option<Lsn>,
        /// Publish to this topic (RabbitMQ: routing key; Redis: stream) instead of the routed ones.
        #[arg(long)]
        topic_override: Option<String>,
        /// List what would be re-published; publish nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Create the publication, the slot and the RabbitMQ exchange (and the outbox table with
    /// --create-table); idempotent.
    Setup {
        /// Also create missing outbox tables with the default columns.
        #[arg(long)]
        create_table: bool,
    },
    /// A throwaway PostgreSQL, a broker (in-process Kafka, or the machine's RabbitMQ or Redis), a
    /// simulated shop.
    Demo {
        /// Stop after this many events (default: until Ctrl-C).
        #[arg(long)]
        events: Option<u64>,
        /// Orders per second.
        #[arg(long, default_value_t = 5.0)]
        rate: f64,
        /// Partitions of the demo topic (Kafka).
        #[arg(long, default_value_t = 3)]
        partitions: i32,
        /// The broker: `kafka` (in-process, the default), `redis` (the machine's, or
        /// OUTBOXD_REDIS_URL) or `rabbitmq` (the machine's, or OUTBOXD_RABBITMQ_URL);
        /// default `[sink] kind` / OUTBOXD_SINK.
        #[arg(long, value_parser = parse_sink)]
        sink: Option<SinkKind>,
    },
    /// Print the effective configuration (secrets redacted) and check it.
    Config,
}

fn load(cli: &Cli) -> anyhow::Result<Config> {
    let env = std::env::vars().filter(|(k, _)| k != "OUTBOXD_CONFIG");
    let mut config = Config::load(cli.config.as_deref(), env)?;
    if let Some(url) = &cli.postgres_url {
        config.postgres.url = url.clone();
    }
    if let Some(brokers) = &cli.kafka_brokers {
        config.kafka.brokers = Some(brokers.clone());
    }
    if let Some(format) = &cli.log_format {
        config.log.format = match format.as_str() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => anyhow::bail!("--log-format {other:?}: expected text or json"),
        };
    }
    Ok(config)
}

fn init_logging(config: &Config) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.log.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    // Colours only on a terminal: log files and collectors get plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match config.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match load(&cli) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("outboxd: {err:#}");
            return ExitCode::from(2);
        }
    };
    let demo_command = matches!(cli.command, Command::Demo { .. });
    if demo_command {
        // The demo prints its own story; keep the logs to warnings.
        let mut quiet = config.clone();
        quiet.log.level = "warn".into();
        init_logging(&quiet);
    } else {
        init_logging(&config);
        for warning in config.warnings(cli.config.as_deref()) {
            tracing::warn!("{warning}");
        }
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("outboxd: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result: anyhow::Result<()> = runtime.block_on(async {
        match cli.command {
            Command::Run { start_lsn } => {
                run_from(&config, Metrics::new(), start_lsn, shutdown_signal()).await?;
                Ok(())
            }
            Command::Check => {
                let findings = check(&config).await;
                for finding in &findings {
                    println!("{finding}");
                }
                let failed = findings.iter().filter(|f| f.level == Level::Fail).count();
                let warned = findings.iter().filter(|f| f.level == Level::Warn).count();
                println!("\n{} checks: {failed} failed, {warned} warnings", findings.len());
                if failed > 0 {
                    anyhow::bail!("{failed} check(s) failed");
                }
                Ok(())
            }
            Command::Status => {
                for (key, value) in status(&config).await? {
                    println!("{key:<20} {value}");
                }
                Ok(())
            }
            Command::Replay {
                from,
                to,
                topic_override,
                dry_run,
            } => {
                let options = ReplayOptions {
                    from,
                    to,
                    topic_override,
                    dry_run,
                };
                let verb = if dry_run {
                    "would re-publish"
                } else {
                    "re-published"
                };
                let summary = replay(&config, &options, |e| {
                    println!(
                        "{} {:>12} {:>5}  {}  {}  key={}",
                        verb, e.commit_lsn, e.index, e.id, e.topic, e.key
                    )
                })
                .await?;
                if dry_run {
                    println!("{verb} {} events committed after {from}", summary.events);
                } else {
                    println!(
                        "{verb} {} events committed after {from}; the broker acknowledged all {}",
                        summary.events, summary.delivered
                    );
                }
                Ok(())
            }
            Command::Setup { create_table } => {
                for line in setup(&config, create_table).await? {
                    println!("{line}");
                }
                Ok(())
            }
            Command::Demo {
                events,
                rate,
                partitions,
                sink,
            } => {
                demo(DemoOptions {
                    events,
                    rate,
                    partitions,
                    sink: sink.unwrap_or(config.sink.kind),
                    settings: config.clone(),
                })
                .await
            }
            Command::Config => {
                config.validate()?;
                println!("{config:#?}");
                match config.sink.kind {
                    SinkKind::Kafka => {
                        println!("kafka properties (effective): {:#?}", config.kafka()?.redacted())
                    }
                    SinkKind::Redis => println!("redis (effective): {:#?}", config.redis()?),
                    SinkKind::RabbitMq => println!("rabbitmq (effective): {:#?}", config.rabbitmq()?),
                }
                Ok(())
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // The demo talks to a terminal: one line, not a log line too.
            if !demo_command {
                tracing::error!("{err:#}");
            }
            eprintln!("outboxd: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn parse_sink(value: &str) -> Result<SinkKind, String> {
    SinkKind::parse(value).ok_or_else(|| format!("expected one of {}", SinkKind::ALL.join(", ")))
}
