//! Progress of an `orcaseed` run: a bar with bytes, rate and ETA (indicatif) when stderr is a
//! terminal, otherwise one plain line per object on stdout, which scripts and CI logs can read.
//! Both end with one summary line.

use indicatif::{HumanBytes, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Counts objects and bytes done and shows them.
pub struct Progress {
    /// The bar, on a terminal; `None` prints plain lines.
    bar: Option<ProgressBar>,
    /// `put`, `delete`...: the verb of the plain lines.
    verb: &'static str,
    objects: u64,
    objects_done: AtomicU64,
    bytes_done: AtomicU64,
    started: Instant,
}

impl Progress {
    /// Progress of `objects` objects holding `bytes` bytes (a bar when stderr is a terminal
    /// and `plain` is false).
    pub fn new(verb: &'static str, objects: u64, bytes: u64, plain: bool) -> Self {
        let bar = (!plain && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::with_draw_target(Some(bytes), ProgressDrawTarget::stderr());
            let style = ProgressStyle::with_template(
                "{msg:>12} [{bar:32}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
            bar.set_style(style);
            bar.set_message(format!("0/{objects}"));
            bar
        });
        Progress {
            bar,
            verb,
            objects,
            objects_done: AtomicU64::new(0),
            bytes_done: AtomicU64::new(0),
            started: Instant::now(),
        }
    }

    /// `n` more bytes were sent.
    pub fn bytes(&self, n: u64) {
        self.bytes_done.fetch_add(n, Ordering::Relaxed);
        if let Some(bar) = &self.bar {
            bar.inc(n);
        }
    }

    /// One object is done: `url` of `size` bytes.
    pub fn object(&self, url: &str, size: u64) {
        let done = self.objects_done.fetch_add(1, Ordering::Relaxed) + 1;
        match &self.bar {
            Some(bar) => bar.set_message(format!("{done}/{}", self.objects)),
            None => println!(
                "{} {url} ({}) [{done}/{}]",
                self.verb,
                HumanBytes(size),
                self.objects
            ),
        }
    }

    /// Ends the bar (if any) and prints `what` with the totals and the rate.
    pub fn finish(&self, what: &str) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        let bytes = self.bytes_done.load(Ordering::Relaxed);
        let objects = self.objects_done.load(Ordering::Relaxed);
        println!(
            "{what}: {objects} object{}, {} in {secs:.1}s ({}/s)",
            if objects == 1 { "" } else { "s" },
            HumanBytes(bytes),
            HumanBytes((bytes as f64 / secs) as u64)
        );
    }

    /// Hides the bar for a message (an error) so the two do not mix.
    pub fn abandon(&self) {
        if let Some(bar) = &self.bar {
            bar.abandon();
        }
    }
}
