//! `check datascale`: writes the model's number of 1 KiB key-values as fast as the clients go
//! and reports how much the first endpoint's resident memory grew meanwhile.

use tokio::sync::mpsc;

use super::metrics::resident_memory;
use super::{aftercare, clients, delete_prefix, error_lines, has_keys, put_all, random_put};
use super::{Aftercare, Model, Progress};
use crate::failure::{CtlResult, ExitCode, Failure};
use crate::global::GlobalFlags;
use crate::output::text::go_quote;

#[derive(clap::Args, Debug)]
pub struct DatascaleArgs {
    /// The datascale check's workload model. Accepted workloads: s(small), m(medium), l(large), xl(xLarge)
    #[arg(long, default_value = "s")]
    load: String,
    #[arg(
        long,
        default_value = "/etcdctl-check-datascale/",
        help = "The prefix for writing the datascale check's keys."
    )]
    prefix: String,
    #[command(flatten)]
    aftercare: Aftercare,
}

/// A model's number of key-values and writers.
fn workload(model: Model) -> (u64, usize) {
    match model {
        Model::Small => (10_000, 50),
        Model::Medium => (100_000, 200),
        Model::Large => (1_000_000, 500),
        // 3 versions of 1M objects: the most etcd is expected to hold.
        Model::XLarge => (3_000_000, 1000),
    }
}

const KEY_SIZE: usize = 512;
const VALUE_SIZE: usize = 512;

pub async fn run(global: &GlobalFlags, args: DatascaleArgs) -> CtlResult {
    let (limit, writers) = workload(Model::parse(&args.load)?);
    let clients = clients(global, writers).await?;
    let first = &clients[0];
    let endpoint = first.endpoints()[0].clone();

    if has_keys(first, &args.prefix, None).await? {
        let quoted = go_quote(args.prefix.as_bytes());
        return Err(Failure::new(
            ExitCode::InvalidInput,
            format!(
                "prefix {quoted} has keys. Delete with etcdctl del --prefix {} first",
                args.prefix
            ),
        ));
    }

    let before = resident_memory(global, &endpoint).await;
    if before == 0.0 {
        fail("FAIL: Could not read process_resident_memory_bytes before the put operations.");
    }

    println!(
        "Start data scale check for work load [{limit} key-value pairs, {} bytes per key-value, {writers} concurrent clients].",
        KEY_SIZE + VALUE_SIZE
    );
    let bar = Progress::start(limit);
    let (requests, received) = mpsc::channel(writers);
    let prefix = args.prefix.clone();
    let generator = tokio::spawn(async move {
        let value = vec![0; VALUE_SIZE];
        for _ in 0..limit {
            if requests
                .send(random_put(&prefix, KEY_SIZE, &value))
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let stats = put_all(&clients, received, Some(bar.progress().clone())).await;
    let _ = generator.await;
    bar.finish();

    let after = resident_memory(global, &endpoint).await;
    if after == 0.0 {
        fail("FAIL: Could not read process_resident_memory_bytes after the put operations.");
    }

    let deleted = delete_prefix(first, &args.prefix, None).await?;
    aftercare(first, &args.aftercare, deleted.header.map(|h| h.revision)).await?;

    let errors = error_lines(&stats);
    if !errors.is_empty() {
        for line in errors {
            println!("{line}");
        }
        std::process::exit(ExitCode::Error as i32);
    }
    let used_mb = (after - before) / (1024.0 * 1024.0);
    println!("PASS: Approximate system memory used : {used_mb:.2} MB.");
    Ok(())
}

fn fail(line: &str) -> ! {
    println!("{line}");
    std::process::exit(ExitCode::Error as i32);
}
