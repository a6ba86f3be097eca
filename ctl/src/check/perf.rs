//! `check perf`: a minute of rate-limited 1 KiB puts; passes when the cluster keeps above 90% of
//! the model's rate with no request over 500 ms and a latency deviation under 100 ms.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::stats::Stats;
use super::{aftercare, clients, delete_prefix, error_lines, has_keys, put_all, random_put};
use super::{Aftercare, Model, Progress, AFTERCARE_TIMEOUT};
use crate::failure::{CtlResult, ExitCode, Failure};
use crate::global::GlobalFlags;
use crate::output::text::go_quote;

#[derive(clap::Args, Debug)]
pub struct PerfArgs {
    #[arg(
        long,
        default_value = "s",
        help = "The performance check's workload model. Accepted workloads: s(small), m(medium), l(large), xl(xLarge). Different workload models use different configurations in terms of number of clients and expected throughput."
    )]
    load: String,
    #[arg(
        long,
        default_value = "/etcdctl-check-perf/",
        help = "The prefix for writing the performance check's keys."
    )]
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

    let (lines, passed) = verdict(&stats, load.limit);
    for line in lines {
        println!("{line}");
    }
    if !passed {
        std::process::exit(ExitCode::Error as i32);
    }
    Ok(())
}

/// etcdctl's report lines (its wording, including the two failures without `FAIL:`) and
/// whether the check passed.
fn verdict(stats: &Stats, limit: u32) -> (Vec<String>, bool) {
    let mut lines = error_lines(stats);
    let mut passed = lines.is_empty();
    let throughput = stats.rps as i64 + 1;
    if stats.rps / f64::from(limit) <= 0.9 {
        lines.push(format!("FAIL: Throughput too low: {throughput} writes/s"));
        passed = false;
    } else {
        lines.push(format!("PASS: Throughput is {throughput} writes/s"));
    }
    if stats.slowest > 0.5 {
        lines.push(format!(
            "Slowest request took too long: {:.6}s",
            stats.slowest
        ));
        passed = false;
    } else {
        lines.push(format!("PASS: Slowest request took {:.6}s", stats.slowest));
    }
    if stats.stddev > 0.1 {
        lines.push(format!("Stddev too high: {:.6}s", stats.stddev));
        passed = false;
    } else {
        lines.push(format!("PASS: Stddev is {:.6}s", stats.stddev));
    }
    lines.push(if passed { "PASS" } else { "FAIL" }.to_string());
    (lines, passed)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_at_the_rate_with_fast_steady_requests() {
        let stats = Stats {
            rps: 149.3,
            slowest: 0.237_16,
            stddev: 0.013_328,
            ..Stats::default()
        };
        let (lines, passed) = verdict(&stats, 150);
        assert!(passed);
        assert_eq!(
            lines,
            [
                "PASS: Throughput is 150 writes/s",
                "PASS: Slowest request took 0.237160s",
                "PASS: Stddev is 0.013328s",
                "PASS",
            ]
        );
    }

    #[test]
    fn fails_on_errors_low_rate_slow_requests_and_jitter() {
        let stats = Stats {
            rps: 135.0,
            slowest: 0.6,
            stddev: 0.2,
            errors: [("etcdserver: too many requests".to_string(), 3)].into(),
        };
        let (lines, passed) = verdict(&stats, 150);
        assert!(!passed);
        assert_eq!(
            lines,
            [
                "FAIL: too many errors",
                "FAIL: ERROR(etcdserver: too many requests) -> 3",
                "FAIL: Throughput too low: 136 writes/s",
                "Slowest request took too long: 0.600000s",
                "Stddev too high: 0.200000s",
                "FAIL",
            ]
        );
    }
}
