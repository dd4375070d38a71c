//! Messages per second through `Inbox::process` against the same handler
//! without the inbox: same run, same throwaway database, same connection.
//!
//! ```sh
//! cargo run --release -p outbox-inbox --example inbox-bench -- [--messages 20000] [--rounds 3]
//! ```
//!
//! The handler is trivial on purpose (one INSERT), so the figure is the
//! inbox's own cost: the claim statement (and, with the guard, one more).
//! Each message is its own transaction in all three modes, as a consumer
//! processes them. The throwaway cluster runs with `fsync=off` (the test
//! harness's setting): cheap commits make the inbox's share of the time as
//! large as it gets; with durable commits the ratio is closer to 1. Modes
//! alternate order per round; medians are printed.

use std::time::Instant;

use outbox_inbox::{Envelope, HandlerFuture, Inbox, Lsn, Position};
use tokio_postgres::types::Type;
use tokio_postgres::{Client, Transaction};

const EFFECT: &str = "insert into bench_effect (id, amount) values ($1, $2)";

fn handler<'a>(
    tx: &'a Transaction<'a>,
    id: String,
    amount: i64,
) -> HandlerFuture<'a, (), tokio_postgres::Error> {
    Box::pin(async move {
        tx.execute_typed(EFFECT, &[(&id, Type::TEXT), (&amount, Type::INT8)])
            .await?;
        Ok(())
    })
}

#[derive(Clone, Copy, Debug)]
enum Mode {
    Bare,
    Inbox,
    Guarded,
}

async fn run(client: &mut Client, mode: Mode, round: usize, messages: u64) -> f64 {
    let inbox = Inbox::new();
    let guarded = Inbox::new().with_aggregate_guard();
    let started = Instant::now();
    for n in 0..messages {
        let id = format!("{mode:?}-{round}-{n}");
        let amount = (n % 1000) as i64;
        match mode {
            Mode::Bare => {
                let tx = client.transaction().await.unwrap();
                handler(&tx, id, amount).await.unwrap();
                tx.commit().await.unwrap();
            }
            Mode::Inbox | Mode::Guarded => {
                let envelope = Envelope::new(id.clone())
                    .with_aggregate(format!("order-{}", n % 100))
                    .with_position(Position {
                        commit_lsn: Lsn::new(0x1_0000_0000 + (round as u64) * messages * 0x100 + n * 0x100),
                        index: 0,
                    });
                let inbox = if matches!(mode, Mode::Guarded) {
                    &guarded
                } else {
                    &inbox
                };
                let outcome = inbox
                    .process(client, "bench", &envelope, |tx| handler(tx, id, amount))
                    .await
                    .unwrap();
                assert!(outcome.is_processed());
            }
        }
    }
    messages as f64 / started.elapsed().as_secs_f64()
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (mut messages, mut rounds) = (20_000u64, 3usize);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or("a flag needs a value")?;
        match flag.as_str() {
            "--messages" => messages = value.parse()?,
            "--rounds" => rounds = value.parse()?,
            _ => return Err(format!("unknown flag {flag} (--messages N, --rounds N)").into()),
        }
    }
    let cluster = tokio::task::spawn_blocking(testkit::PgCluster::start).await??;
    let mut client = cluster.connect().await?;
    outbox_inbox::setup(&client).await?;
    client
        .batch_execute("create table bench_effect (id text not null, amount bigint not null)")
        .await?;
    println!("inbox-bench: {messages} messages per mode per round, {rounds} rounds, one connection, throwaway cluster on port {}", cluster.port());

    // Warm up the connection and the tables.
    run(&mut client, Mode::Bare, 9_999, 500).await;
    run(&mut client, Mode::Inbox, 9_999, 500).await;

    let modes = [Mode::Bare, Mode::Inbox, Mode::Guarded];
    let mut rates: [Vec<f64>; 3] = Default::default();
    for round in 0..rounds {
        for k in 0..modes.len() {
            let i = (k + round) % modes.len();
            let rate = run(&mut client, modes[i], round, messages).await;
            println!(
                "round {round}  {:<8} {rate:>9.0} msg/s",
                format!("{:?}", modes[i])
            );
            rates[i].push(rate);
        }
    }
    let [bare, inbox, guarded] = rates.map(median);
    println!("\nmedian of {rounds} rounds:");
    println!("  handler alone          {bare:>9.0} msg/s");
    println!(
        "  through Inbox::process {inbox:>9.0} msg/s  = {:.0} % of the handler alone, {:.1} µs more per message",
        100.0 * inbox / bare,
        1e6 / inbox - 1e6 / bare
    );
    println!(
        "  with aggregate guard   {guarded:>9.0} msg/s  = {:.0} % of the handler alone, {:.1} µs more per message",
        100.0 * guarded / bare,
        1e6 / guarded - 1e6 / bare
    );
    Ok(())
}
