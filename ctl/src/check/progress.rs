//! The progress bar etcdctl's checks draw on stderr (cheggaaa/pb v3's default layout: counters,
//! bar, percentage, speed in 100 columns), redrawn five times a second: in place on a terminal;
//! elsewhere, as pb does, one drawing after the other with nothing between them.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const WIDTH: usize = 100;
const REFRESH: Duration = Duration::from_millis(200);

#[derive(Clone)]
pub struct Progress {
    total: u64,
    current: Arc<AtomicU64>,
    started: Instant,
}

/// Stops redrawing and draws the final state on its own line.
pub struct Drawing {
    progress: Progress,
    task: tokio::task::JoinHandle<()>,
}

impl Progress {
    pub fn start(total: u64) -> Drawing {
        let progress = Progress {
            total,
            current: Arc::new(AtomicU64::new(0)),
            started: Instant::now(),
        };
        let drawn = progress.clone();
        let task = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(REFRESH);
            loop {
                ticks.tick().await;
                drawn.draw(false);
            }
        });
        Drawing { progress, task }
    }

    pub fn add(&self, n: u64) {
        self.current.fetch_add(n, Ordering::Relaxed);
    }

    fn draw(&self, last: bool) {
        let current = self.current.load(Ordering::Relaxed);
        let elapsed = self.started.elapsed().as_secs_f64();
        let speed = (current > 0 && elapsed > 0.0).then(|| current as f64 / elapsed);
        let line = render(current, self.total, speed);
        let mut stderr = std::io::stderr().lock();
        let _ = if stderr.is_terminal() {
            write!(stderr, "\r{line}{}", if last { "\n" } else { "" })
        } else {
            write!(stderr, "{line}")
        };
        let _ = stderr.flush();
    }
}

impl Drawing {
    pub fn progress(&self) -> &Progress {
        &self.progress
    }

    pub fn finish(self) {
        self.task.abort();
        self.progress.draw(true);
    }
}

fn render(current: u64, total: u64, speed: Option<f64>) -> String {
    let fraction = if total == 0 {
        1.0
    } else {
        (current as f64 / total as f64).min(1.0)
    };
    let counters = format!("{current} / {total}");
    let tail = format!(
        "{:.2}% {} p/s",
        fraction * 100.0,
        speed.map_or("?".to_string(), |s| format!("{s:.0}"))
    );
    let inner = WIDTH.saturating_sub(counters.len() + tail.len() + 4);
    let filled = (inner as f64 * fraction) as usize;
    let bar = if current == 0 {
        "_".repeat(inner)
    } else if filled >= inner {
        "-".repeat(inner)
    } else {
        format!("{}>{}", "-".repeat(filled), "_".repeat(inner - filled - 1))
    };
    format!("{counters} [{bar}] {tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_like_pb() {
        // As etcdctl 3.7's checks drew them.
        assert!(render(0, 60, None).starts_with("0 / 60 [_____"));
        let early = render(959, 10000, None);
        assert!(early.starts_with("959 / 10000 [------->____"), "{early}");
        assert!(early.ends_with("_] 9.59% ? p/s"), "{early}");
        assert_eq!(early.chars().count(), WIDTH);
        let done = render(10000, 10000, Some(5727.2));
        assert!(done.ends_with("-] 100.00% 5727 p/s"), "{done}");
        assert_eq!(done.chars().count(), WIDTH);
        assert!(render(59, 60, Some(1.0)).ends_with("---->_] 98.33% 1 p/s"));
    }
}
