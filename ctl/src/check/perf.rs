//! `check perf`: a minute of rate-limited 1 KiB puts; passes when the cluster keeps above 90% of
//! the model's rate with no request over 500 ms and a latency deviation under 100 ms.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{aftercare, clients, delete_prefix, has_keys, print_errors, put_all, random_put};
use super::{Aftercare, Model, Progress, AFTERCARE_TIMEOUT};
use crate::failure::{CtlResult, ExitCode, Failure};
use crate::global::GlobalFlags;
use crate::output::text::go_quote;

#[derive(clap::Args, Debug)]
pub struct PerfArgs {
    /// The performance check's workload model. Accepted workloads: s(small), m(medium), l(large), xl(xLarge). Different workload models use different configurations in terms of number of clients and expected throughput.
    #[arg(long, default_value = "s")]
    load: String,
    /// The prefix for writing the performance check's keys.
    #[arg(long, default_value = "/etcdctl-check-perf/")]
    prefix: String,
    #[command(flatten)]
    aftercare: Aftercare,
}

/// A model's target rate (puts per second), writers and duration.
struct Workload {
    limit: u32,
    clients: usize,
    duration: Duration,
}

fn workload(model: Model) -> Workload {
    let (limit, clients) = match model {
        Model::Small => (150, 50),
        Model::Medium => (1000, 200),
        Model::Large => (8000, 500),
        Model::XLarge => (15000, 1000),
    };
    Workload {
        limit,
        clients,
        duration: Duration::from_secs(60),
    }
}

const KEY_SIZE: usize = 256;
const VALUE_SIZE: usize = 1024;

pub async fn run(global: &GlobalFlags, args: PerfArgs) -> CtlResult {
    let load = workload(Model::parse(&args.load)?);
    let clients = clients(global, load.clients).await?;
    let first = &clients[0];
    let deadline = Instant::now() + load.duration;

    if has_keys(first, &args.prefix, Some(load.duration)).await? {
        let quoted = go_quote(args.prefix.as_bytes());
        return Err(Failure::new(
            ExitCode::InvalidInput,
            format!(
                "prefix {quoted} has keys. Delete with 'etcdctl del --prefix {}' first",
                args.prefix
            ),
        ));
    }

    let bar = Progress::start(load.duration.as_secs());
    let seconds = bar.progress().clone();
    let ticker = tokio::spawn(async move {
        for _ in 0..load.duration.as_secs() {
            tokio::time::sleep(Duration::from_secs(1)).await;
            seconds.add(1);
        }
    });
    let (requests, received) = mpsc::channel(load.clients);
    let generator = tokio::spawn(generate(
        requests,
        args.prefix.clone(),
        load.limit,
        deadline,
    ));
    let stats = put_all(&clients, received, None).await;
    let _ = generator.await;
    ticker.abort();
    bar.finish();

    // A failed cleanup is reported and the verdict still printed, as etcdctl does.
    let revision = match delete_prefix(first, &args.prefix, Some(AFTERCARE_TIMEOUT)).await {
        Ok(deleted) => deleted.header.map(|h| h.revision),
        Err(e) => {
            println!("FAIL: Cleanup failed during key deletion: ERROR({})", e.0);
            None
        }
    };
    aftercare(first, &args.aftercare, revision).await?;

    let mut ok = true;
    if !stats.errors.is_empty() {
        print_errors(&stats);
        ok = false;
    }
    let throughput = stats.rps as i64 + 1;
    if stats.rps / f64::from(load.limit) <= 0.9 {
        println!("FAIL: Throughput too low: {throughput} writes/s");
        ok = false;
    } else {
        println!("PASS: Throughput is {throughput} writes/s");
    }
    if stats.slowest > 0.5 {
        println!("Slowest request took too long: {:.6}s", stats.slowest);
        ok = false;
    } else {
        println!("PASS: Slowest request took {:.6}s", stats.slowest);
    }
    if stats.stddev > 0.1 {
        println!("Stddev too high: {:.6}s", stats.stddev);
        ok = false;
    } else {
        println!("PASS: Stddev is {:.6}s", stats.stddev);
    }
    if !ok {
        println!("FAIL");
        std::process::exit(ExitCode::Error as i32);
    }
    println!("PASS");
    Ok(())
}

/// Queues puts at `limit` per second until `deadline` or an interrupt (after which the check
/// finishes, cleans up and reports as at the deadline). Like Go's rate limiter with a burst of
/// one, a late tick does not earn a catch-up burst, except within tokio's 1 ms timer
/// granularity, without which high rates could not be reached.
async fn generate(
    requests: mpsc::Sender<oxcd_proto::etcdserverpb::PutRequest>,
    prefix: String,
    limit: u32,
    deadline: Instant,
) {
    let period = Duration::from_secs_f64(1.0 / f64::from(limit));
    let banked = period.max(Duration::from_millis(1));
    let value = vec![0; VALUE_SIZE];
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    let mut next = Instant::now();
    loop {
        next = next.max(Instant::now() - banked) + period;
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => return,
            _ = &mut interrupted => return,
            _ = tokio::time::sleep_until(next) => {}
        }
        if requests
            .send(random_put(&prefix, KEY_SIZE, &value))
            .await
            .is_err()
        {
            return;
        }
    }
}
