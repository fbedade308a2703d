//! What the binaries (`splade`, `splade-worker`, `splade-coordinator`) share at their edges: logging
//! set-up, progress reporting, the error report and the exit codes.
//!
//! Guarantees:
//! - Logs go to stderr. `RUST_LOG` sets the filter; without it the level is `info`, or `warn` with
//!   `--quiet`. `--log-format json` writes one tracing JSON object per line.
//! - Colour (ANSI escapes) only when stderr is a terminal and `NO_COLOR` is unset or empty
//!   (<https://no-color.org>); logs redirected to a file or a pipe never carry escape codes.
//! - [`Progress`]: an `indicatif` bar on a terminal; off a terminal (CI, Kubernetes) a plain line every
//!   [`plain_interval`] and one at the end, with no control characters; nothing with `--quiet`.
//! - [`error_report`]: an error and its sources on at most two lines, a source whose text the message
//!   above it already holds left out.
//! - Exit codes ([`EXIT_OK`], [`EXIT_FAILURE`]) are the README's table.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Success, and a clean stop after the first SIGTERM/SIGINT (what Kubernetes expects).
pub const EXIT_OK: i32 = 0;
/// Any error: bad input (config, data, model folder, checkpoint, flags, URL), a failed run, or a second
/// SIGTERM/SIGINT that stopped the process at once.
pub const EXIT_FAILURE: i32 = 1;

static QUIET: AtomicBool = AtomicBool::new(false);

/// `--log-format`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines (coloured on a terminal).
    #[default]
    Text,
    /// One tracing JSON object per line, for log collectors.
    Json,
}

/// The logging flags every binary takes (global: they may follow a subcommand).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct LogArgs {
    /// Warnings and errors only, no progress bars (RUST_LOG still overrides the filter).
    #[arg(long, short = 'q', global = true)]
    pub quiet: bool,
    /// Log format on stderr: text, or json (one JSON object per line).
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
}

/// True when stderr may carry colour: a terminal, and `NO_COLOR` unset or empty.
pub fn colour_enabled() -> bool {
    std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()) && std::io::stderr().is_terminal()
}

/// True after [`init_logging`] with `--quiet`.
pub fn quiet() -> bool {
    QUIET.load(Ordering::Relaxed)
}

/// Installs the process's `tracing` subscriber on stderr (see the module docs). A second call does nothing.
pub fn init_logging(args: &LogArgs) {
    QUIET.store(args.quiet, Ordering::Relaxed);
    let default = if args.quiet { "warn" } else { "info" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| default.into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match args.log_format {
        LogFormat::Text => builder.with_ansi(colour_enabled()).try_init(),
        LogFormat::Json => builder.json().with_ansi(false).try_init(),
    };
}

/// An error and its sources for the terminal: `error: <message>`, then, when the sources add something,
/// `  caused by: <source>: <source>…` on a second line.
pub fn error_report(e: &anyhow::Error) -> String {
    let mut chain = e.chain();
    let top = chain.next().map(|c| c.to_string()).unwrap_or_default();
    let mut seen = top.clone();
    let mut causes = Vec::new();
    for c in chain {
        let text = c.to_string();
        // Most of this project's errors already print their source inline (`path: <io error>`).
        if !text.is_empty() && !seen.contains(&text) {
            seen.push_str(&text);
            causes.push(text);
        }
    }
    let top = top.replace('\n', " ");
    if causes.is_empty() {
        format!("error: {top}")
    } else {
        format!("error: {top}\n  caused by: {}", causes.join(": ").replace('\n', " "))
    }
}

/// Prints [`error_report`] for `program` on stderr and exits with [`EXIT_FAILURE`].
pub fn exit_with(e: &anyhow::Error) -> ! {
    eprintln!("{}", error_report(e));
    std::process::exit(EXIT_FAILURE)
}

/// Parses the command line; help and version exit 0, any other usage error prints clap's message and
/// exits with [`EXIT_FAILURE`] (clap's own default would be 2; the README documents one code for bad input).
pub fn parse_args<P: clap::Parser>() -> P {
    match P::try_parse() {
        Ok(p) => p,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_FAILURE } else { EXIT_OK };
            let _ = e.print();
            std::process::exit(code)
        }
    }
}

/// Seconds between plain progress lines off a terminal: `SPLADE_PROGRESS_SECONDS`, default 10.
pub fn plain_interval() -> Duration {
    let secs = std::env::var("SPLADE_PROGRESS_SECONDS").ok().and_then(|s| s.parse::<f64>().ok()).filter(|s| s.is_finite() && *s >= 0.0);
    Duration::from_secs_f64(secs.unwrap_or(10.0))
}

/// Progress of a long command: `done/total unit`, rate and ETA (see the module docs for where it goes).
pub struct Progress {
    bar: Option<indicatif::ProgressBar>,
    plain: Option<Mutex<Plain>>,
}

struct Plain {
    what: String,
    unit: String,
    total: u64,
    done: u64,
    message: String,
    started: Instant,
    last: Instant,
    every: Duration,
}

impl Plain {
    fn line(&self) -> String {
        let secs = self.started.elapsed().as_secs_f64().max(1e-9);
        let rate = self.done as f64 / secs;
        let eta = if rate > 0.0 && self.total > self.done { format!(", ETA {}", fmt_secs((self.total - self.done) as f64 / rate)) } else { String::new() };
        let pct = if self.total > 0 { 100.0 * self.done as f64 / self.total as f64 } else { 100.0 };
        let msg = if self.message.is_empty() { String::new() } else { format!(", {}", self.message) };
        format!("{}: {}/{} {} ({pct:.0}%), {rate:.1} {}/s{eta}{msg}", self.what, self.done, self.total, self.unit, self.unit)
    }
}

fn fmt_secs(s: f64) -> String {
    let s = s.round() as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, s % 3600 / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

impl Progress {
    /// Progress of `what` over `total` `unit`s (e.g. `("encode", 755, "texts")`).
    pub fn new(what: &str, total: u64, unit: &str) -> Progress {
        if quiet() {
            return Progress { bar: None, plain: None };
        }
        if std::io::stderr().is_terminal() {
            let bar = indicatif::ProgressBar::new(total);
            let template = format!("{what} {{bar:30}} {{pos}}/{{len}} {unit} {{per_sec}} [{{elapsed_precise}}<{{eta_precise}}] {{msg}}");
            bar.set_style(indicatif::ProgressStyle::with_template(&template).unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()));
            return Progress { bar: Some(bar), plain: None };
        }
        let now = Instant::now();
        let plain = Plain {
            what: what.into(),
            unit: unit.into(),
            total,
            done: 0,
            message: String::new(),
            started: now,
            last: now,
            every: plain_interval(),
        };
        Progress { bar: None, plain: Some(Mutex::new(plain)) }
    }

    /// Sets the number done.
    pub fn set_position(&self, done: u64) {
        if let Some(b) = &self.bar {
            b.set_position(done);
        }
        if let Some(p) = &self.plain {
            let mut p = p.lock().unwrap_or_else(|e| e.into_inner());
            p.done = done;
            if p.last.elapsed() >= p.every {
                p.last = Instant::now();
                eprintln!("{}", p.line());
            }
        }
    }

    /// Adds `n` done.
    pub fn inc(&self, n: u64) {
        let done = match (&self.bar, &self.plain) {
            (Some(b), _) => b.position() + n,
            (_, Some(p)) => p.lock().unwrap_or_else(|e| e.into_inner()).done + n,
            _ => return,
        };
        self.set_position(done);
    }

    /// A short status after the counts (e.g. `workers 2/2`).
    pub fn set_message(&self, msg: impl Into<String>) {
        let msg = msg.into();
        if let Some(b) = &self.bar {
            b.set_message(msg.clone());
        }
        if let Some(p) = &self.plain {
            p.lock().unwrap_or_else(|e| e.into_inner()).message = msg;
        }
    }

    /// Changes the total (e.g. when the plan's length becomes known).
    pub fn set_total(&self, total: u64) {
        if let Some(b) = &self.bar {
            b.set_length(total);
        }
        if let Some(p) = &self.plain {
            p.lock().unwrap_or_else(|e| e.into_inner()).total = total;
        }
    }

    /// Runs `f` with the bar hidden (for log lines), else just runs it.
    pub fn suspend<R>(&self, f: impl FnOnce() -> R) -> R {
        match &self.bar {
            Some(b) => b.suspend(f),
            None => f(),
        }
    }

    /// Ends the progress: the bar stays at its last state; off a terminal one last line.
    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish();
        }
        if let Some(p) = &self.plain {
            let p = p.lock().unwrap_or_else(|e| e.into_inner());
            eprintln!("{}", p.line());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer {0}")]
    struct Outer(String, #[source] std::io::Error);

    #[test]
    fn error_report_is_one_or_two_lines_without_repeats() {
        let io = || std::io::Error::new(std::io::ErrorKind::Other, "No space left on device");
        // A source the message already shows is not repeated.
        let e = anyhow::Error::new(Outer("/x: No space left on device".into(), io()));
        assert_eq!(error_report(&e), "error: outer /x: No space left on device");
        // A source that adds something goes on the second line.
        let e = anyhow::Error::new(Outer("/x".into(), io())).context("writing checkpoint-4");
        assert_eq!(error_report(&e), "error: writing checkpoint-4\n  caused by: outer /x: No space left on device");
    }

    #[test]
    fn plain_progress_lines_hold_counts_rate_and_eta_and_no_control_characters() {
        let now = Instant::now() - Duration::from_secs(2);
        let p = Plain {
            what: "encode".into(),
            unit: "texts".into(),
            total: 100,
            done: 50,
            message: String::new(),
            started: now,
            last: now,
            every: Duration::ZERO,
        };
        let line = p.line();
        assert!(line.starts_with("encode: 50/100 texts (50%), "), "{line}");
        assert!(line.contains(" texts/s, ETA "), "{line}");
        assert!(!line.chars().any(|c| c.is_control()), "{line:?}");
    }
}
