//! etcd's logging flags: `--logger zap`, `--log-level`, `--log-outputs` and `--log-format`.
//! The JSON format writes the lines etcd's zap logger writes: `level`, `ts`, `logger` (for a
//! library's lines, as etcd names bbolt's and raft's), `caller`, `msg`, then the event's fields,
//! so log pipelines built for etcd read oxcd's lines unchanged.

use std::fmt;
use std::time::SystemTime;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::writer::{BoxMakeWriter, MakeWriterExt};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use crate::config::Config;

/// Installs the process's logger as the flags ask; `OXCD_LOG` (an `EnvFilter`) overrides the
/// level per module.
pub fn init(config: &Config) -> anyhow::Result<()> {
    // etcd's levels; panic and fatal only ever log errors.
    let level = match config.log_level.as_str() {
        "debug" => "debug",
        "warn" => "warn",
        "error" | "panic" | "fatal" => "error",
        _ => "info",
    };
    // openraft's info level narrates every vote and replication step; it never says more than
    // warnings, and no more than the chosen level.
    let openraft = if level == "error" { "error" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("OXCD_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!("{level},openraft={openraft}"))
    });
    let outputs = &config.log_outputs;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(log_writer(outputs)?)
        .with_ansi(
            config.log_format == "console"
                && outputs
                    .iter()
                    .all(|o| matches!(o.as_str(), "default" | "stderr")),
        );
    match config.log_format.as_str() {
        "json" => builder.event_format(ZapJson).try_init(),
        "console" => builder.try_init(),
        other => anyhow::bail!("unknown log format: {other}, supported values json, console"),
    }
    .map_err(|e| anyhow::anyhow!("cannot install the logger: {e}"))
}

/// etcd's --log-outputs: `default`/`stderr`, `stdout`, or files, every line to each of them.
fn log_writer(outputs: &[String]) -> anyhow::Result<BoxMakeWriter> {
    let mut writer: Option<BoxMakeWriter> = None;
    for output in outputs {
        let next = match output.as_str() {
            "default" | "stderr" => BoxMakeWriter::new(std::io::stderr),
            "stdout" => BoxMakeWriter::new(std::io::stdout),
            path => {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| anyhow::anyhow!("cannot open --log-outputs file {path}: {e}"))?;
                BoxMakeWriter::new(std::sync::Mutex::new(file))
            }
        };
        writer = Some(match writer {
            Some(before) => BoxMakeWriter::new(before.and(next)),
            None => next,
        });
    }
    Ok(writer.unwrap_or_else(|| BoxMakeWriter::new(std::io::stderr)))
}

/// One JSON object per line, keyed as zap's production encoder keys etcd's lines.
struct ZapJson;

impl<S, N> FormatEvent<S, N> for ZapJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        writer.write_str(&zap_line(event, SystemTime::now()))?;
        writer.write_char('\n')
    }
}

fn zap_line(event: &Event<'_>, now: SystemTime) -> String {
    let meta = event.metadata();
    let mut fields = Fields::default();
    event.record(&mut fields);
    let mut pairs = vec![
        ("level", zap_level(meta.level()).into()),
        ("ts", zap_timestamp(now).into()),
    ];
    let library = meta.target().split("::").next().unwrap_or_default();
    if library != env!("CARGO_CRATE_NAME") {
        pairs.push(("logger", library.into()));
    }
    if let (Some(file), Some(line)) = (meta.file(), meta.line()) {
        pairs.push(("caller", format!("{}:{line}", short_caller(file)).into()));
    }
    pairs.push(("msg", fields.message.unwrap_or_default().into()));
    ordered_object(
        pairs.into_iter().chain(
            fields
                .rest
                .iter()
                .map(|(name, value)| (name.as_str(), value.clone())),
        ),
    )
}

/// A JSON object with its keys in the given order (serde_json's map sorts them).
fn ordered_object<'a>(pairs: impl Iterator<Item = (&'a str, serde_json::Value)>) -> String {
    let members: Vec<String> = pairs
        .map(|(key, value)| format!("{}:{value}", serde_json::Value::from(key)))
        .collect();
    format!("{{{}}}", members.join(","))
}

/// zap's level names; tracing's TRACE has no zap level and logs as debug.
fn zap_level(level: &Level) -> &'static str {
    match *level {
        Level::ERROR => "error",
        Level::WARN => "warn",
        Level::INFO => "info",
        _ => "debug",
    }
}

/// RFC 3339 in UTC with microseconds, as etcd's zap config writes `ts`
/// ("2026-12-05T18:41:24.146102Z").
fn zap_timestamp(now: SystemTime) -> String {
    let t = time::OffsetDateTime::from(now);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.microsecond()
    )
}

/// zap's short caller: the file's directory and name ("etcdmain/etcd.go").
fn short_caller(file: &str) -> &str {
    let mut slashes = file.rmatch_indices(['/', '\\']).map(|(i, _)| i);
    match (slashes.next(), slashes.next()) {
        (Some(_), Some(before)) => &file[before + 1..],
        _ => file,
    }
}

/// An event's message and its other fields as JSON values.
#[derive(Default)]
struct Fields {
    message: Option<String>,
    rest: Vec<(String, serde_json::Value)>,
}

impl Fields {
    fn add(&mut self, field: &Field, value: serde_json::Value) {
        if field.name() == "message" {
            self.message = Some(match value {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            });
        } else {
            self.rest.push((field.name().to_string(), value));
        }
    }
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.add(field, value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.add(field, value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.add(field, value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.add(field, value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.add(field, value.into());
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.add(field, value.to_string().into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.add(field, format!("{value:?}").into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::layer::SubscriberExt;

    /// The lines one `tracing::warn!` makes, captured through the JSON formatter.
    fn logged(emit: impl FnOnce()) -> Vec<serde_json::Value> {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let sink = buffer.clone();
        let layer = tracing_subscriber::fmt::layer()
            .event_format(ZapJson)
            .with_writer(move || Capture(sink.clone()));
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, emit);
        let text = String::from_utf8(buffer.lock().unwrap().clone()).unwrap();
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    struct Capture(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn json_lines_have_zaps_keys_in_zaps_order() {
        let lines = logged(
            || tracing::warn!(member_id = "8e9e05c52164694d", took_ms = 12u64, quoted = %"a \"b\"", "apply request took too long"),
        );
        assert_eq!(lines.len(), 1);
        let line = lines[0].as_object().unwrap();
        assert_eq!(line["level"], "warn");
        assert_eq!(line["msg"], "apply request took too long");
        assert_eq!(line["member_id"], "8e9e05c52164694d");
        assert_eq!(line["took_ms"], 12);
        assert_eq!(line["quoted"], "a \"b\"");
        assert!(line["caller"]
            .as_str()
            .unwrap()
            .starts_with("src/logging.rs:"));
        let ts = line["ts"].as_str().unwrap();
        assert_eq!((ts.len(), &ts[10..11], &ts[26..]), (27, "T", "Z"), "{ts}");
    }

    #[test]
    fn a_librarys_lines_name_it_as_zaps_named_loggers_do() {
        let lines = logged(|| tracing::info!(target: "openraft::engine", "startup done"));
        assert_eq!(lines[0]["logger"], "openraft");
        let lines = logged(|| tracing::info!("oxcd is serving"));
        assert!(lines[0].get("logger").is_none());
    }

    #[test]
    fn key_order_is_levels_first() {
        let text = ordered_object(
            [
                ("level", "info".into()),
                ("ts", "t".into()),
                ("msg", "m".into()),
            ]
            .into_iter(),
        );
        assert_eq!(text, r#"{"level":"info","ts":"t","msg":"m"}"#);
    }

    #[test]
    fn zap_shapes() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_micros(1_796_000_000_123_456);
        assert_eq!(zap_timestamp(t), "2026-11-30T00:53:20.123456Z");
        assert_eq!(short_caller("server/src/node.rs"), "src/node.rs");
        assert_eq!(short_caller("node.rs"), "node.rs");
        assert_eq!(zap_level(&Level::TRACE), "debug");
    }
}
