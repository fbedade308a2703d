//! Memory that does not grow with text length: the coordinator and `splade train` plan 200,000 rows through the
//! streaming pass (a few bytes of summary per row), so the same rows with texts 4x as long give the same peak
//! resident memory (`VmHWM` of the real process, read from `/proc/<pid>/status`) within 10%. Loading the rows
//! (what both did before) costs their text: about 4x the file size more for the long texts.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use splade_tests::fixtures::{bin, model};

const ROWS: usize = 200_000;

/// `ROWS` query/passage pairs with `scale` times the base text length (a 40-character query and a
/// 250-character passage, NorQuAD-like), every text distinct.
fn write_rows(dir: &Path, scale: usize) -> PathBuf {
    let path = dir.join(format!("rows-x{scale}.jsonl"));
    let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    let words = ["fjord", "bokmål", "nynorsk", "skole", "havet", "fjellet", "byen", "kongen", "elva", "landet"];
    for i in 0..ROWS {
        let text = |n: usize, salt: usize| {
            let mut s = format!("{i}-{salt}");
            let mut k = i.wrapping_mul(2654435761).wrapping_add(salt);
            while s.len() < n * scale {
                k = k.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                s.push(' ');
                s.push_str(words[(k >> 33) % words.len()]);
            }
            s
        };
        writeln!(f, "{{\"anchor\": \"{}\", \"positive\": \"{}\"}}", text(40, 1), text(250, 2)).unwrap();
    }
    f.flush().unwrap();
    path
}

fn config(dir: &Path, data: &Path, tag: &str) -> PathBuf {
    let yaml = format!(
        "model:\n  base_model: {model}\ntraining:\n  output_dir: {out}\n  per_device_train_batch_size: 32\n  max_steps: -1\n  \
         num_train_epochs: 1\n  batch_sampler: no_duplicates\n  max_seq_length: 32\n  report_to: none\n  save_strategy: no\n\
         datasets:\n  rows:\n    source: {data}\n    split_ratio: 0.001\nhardware:\n  device: cpu\n  num_threads: 1\n\
         cluster:\n  min_workers: 1\n  max_workers: 1\n",
        model = model("splade-tiny").display(),
        out = dir.join(format!("out-{tag}")).display(),
        data = data.display()
    );
    let p = dir.join(format!("{tag}.yaml"));
    std::fs::write(&p, yaml).unwrap();
    p
}

/// Runs `cmd` until a stderr line contains `marker`, then reads the process's peak resident memory (VmHWM,
/// bytes) and kills it. Panics with the output when it exits first or takes over 5 minutes.
fn peak_rss_at(mut cmd: Command, marker: &str) -> (u64, String) {
    let mut child: Child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let pid = child.id();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let start = Instant::now();
    let mut seen = Vec::new();
    let found = loop {
        let line = match lines.next() {
            Some(Ok(l)) => l,
            _ => {
                let _ = child.kill();
                panic!("exited before `{marker}`:\n{}", seen.join("\n"));
            }
        };
        if line.contains(marker) {
            break line;
        }
        seen.push(line);
        assert!(start.elapsed() < Duration::from_secs(300), "no `{marker}` in 5 minutes:\n{}", seen.join("\n"));
    };
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb = |key: &str| -> u64 {
        let line = status.lines().find(|l| l.starts_with(key)).unwrap_or_else(|| panic!("no {key} in {status}"));
        line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
    };
    let peak = kb("VmHWM:");
    eprintln!("{marker}: peak {} MB, resident now {} MB", peak >> 20, kb("VmRSS:") >> 20);
    child.kill().unwrap();
    child.wait().unwrap();
    (peak, found)
}

fn assert_within_10_percent(what: &str, short: u64, long: u64, long_file: u64) {
    let (lo, hi) = (short.min(long) as f64, short.max(long) as f64);
    assert!(
        hi / lo <= 1.10,
        "{what}: peak {} MB with short texts, {} MB with 4x longer ones (the long file is {} MB)",
        short >> 20,
        long >> 20,
        long_file >> 20
    );
}

/// The coordinator up to "data plan published" (streaming pass, plan, artifact written).
#[test]
fn multi_process_coordinator_peak_rss_does_not_grow_with_text_length() {
    let dir = tempfile::tempdir().unwrap();
    let mut peaks = Vec::new();
    for scale in [1, 4] {
        let data = write_rows(dir.path(), scale);
        let cfg = config(dir.path(), &data, &format!("coord-x{scale}"));
        let mut cmd = Command::new(bin("splade-coordinator"));
        cmd.args(["--config", cfg.to_str().unwrap(), "--listen", "127.0.0.1:0"]).env("SPLADE_CLUSTER_TOKEN", "memory-test-token");
        let (peak, line) = peak_rss_at(cmd, "data plan published");
        // Every row was planned: 199,800 training rows (0.1% held out), all texts distinct, batches of 32.
        assert!(line.contains("steps=6243"), "{line}");
        peaks.push((peak, std::fs::metadata(&data).unwrap().len()));
        std::fs::remove_file(&data).unwrap();
    }
    assert_within_10_percent("coordinator", peaks[0].0, peaks[1].0, peaks[1].1);
}

/// `splade train` up to its last line before step 1 (plan built and published, model loaded, dev rows read).
#[test]
fn multi_process_splade_train_peak_rss_before_step_1_does_not_grow_with_text_length() {
    let dir = tempfile::tempdir().unwrap();
    let mut peaks = Vec::new();
    for scale in [1, 4] {
        let data = write_rows(dir.path(), scale);
        let cfg = config(dir.path(), &data, &format!("train-x{scale}"));
        let mut cmd = Command::new(bin("splade"));
        cmd.args(["train", "--config", cfg.to_str().unwrap()]);
        let (peak, _) = peak_rss_at(cmd, "reading the rows of each step through the data plan's index");
        peaks.push((peak, std::fs::metadata(&data).unwrap().len()));
        std::fs::remove_file(&data).unwrap();
    }
    assert_within_10_percent("splade train", peaks[0].0, peaks[1].0, peaks[1].1);
}
