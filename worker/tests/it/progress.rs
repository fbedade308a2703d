//! Progress of `splade encode` (issue #17): on a terminal a bar that advances; redirected, plain lines
//! with counts, rate and ETA and no control characters.

use std::process::Command;

use crate::support::model;

fn input(dir: &std::path::Path, n: usize) -> std::path::PathBuf {
    let p = dir.join("texts.txt");
    let text: String = (0..n).map(|i| format!("Dette er tekst nummer {i} om flyplassen i Moss og andre ting.\n")).collect();
    std::fs::write(&p, text).unwrap();
    p
}

/// Under a pseudo-terminal (`script`), the bar is drawn at several positions on its way to 400/400.
#[test]
fn encode_progress_bar_advances_on_a_terminal() {
    let tmp = tempfile::tempdir().unwrap();
    let texts = input(tmp.path(), 400);
    let typescript = tmp.path().join("typescript");
    let cmd = format!(
        "{} encode --device cpu --batch-size 4 --model {} --input {} >/dev/null",
        env!("CARGO_BIN_EXE_splade"),
        model("splade-tiny").display(),
        texts.display()
    );
    let status = Command::new("script")
        .args(["-qfec", &cmd])
        .arg(&typescript)
        .env("TERM", "xterm-256color")
        .env_remove("NO_COLOR")
        .status()
        .expect("util-linux `script` runs");
    assert!(status.success(), "{status}");
    let shown = String::from_utf8_lossy(&std::fs::read(&typescript).unwrap()).to_string();
    // Positions drawn, in order: "<n>/400 texts".
    let positions: Vec<u64> = shown
        .match_indices("/400 texts")
        .filter_map(|(i, _)| shown[..i].rsplit(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
        .collect();
    assert!(positions.windows(2).all(|w| w[0] <= w[1]), "the bar went back: {positions:?}");
    assert!(positions.iter().any(|&p| p > 0 && p < 400), "no intermediate position drawn: {positions:?}\n{shown:?}");
    assert_eq!(positions.last(), Some(&400), "{shown:?}");
    assert!(shown.contains('\r') || shown.contains("\x1b["), "a terminal bar redraws in place: {shown:?}");
}

/// Redirected to a file: plain lines (`SPLADE_PROGRESS_SECONDS=0`: one per batch), no control characters.
#[test]
fn encode_progress_redirected_is_plain_lines_without_control_characters() {
    let tmp = tempfile::tempdir().unwrap();
    let texts = input(tmp.path(), 40);
    let log = tmp.path().join("stderr.log");
    let status = Command::new(env!("CARGO_BIN_EXE_splade"))
        .args(["encode", "--device", "cpu", "--batch-size", "8", "--model"])
        .arg(model("splade-tiny"))
        .arg("--input")
        .arg(&texts)
        .env("SPLADE_PROGRESS_SECONDS", "0")
        .env("TERM", "xterm-256color")
        .env_remove("NO_COLOR")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .status()
        .unwrap();
    assert!(status.success());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.chars().any(|c| c.is_control() && c != '\n'), "control characters in redirected output: {text:?}");
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("encode: ")).collect();
    assert!(lines.len() >= 5, "one line per batch of 8 and a last one: {text}");
    assert!(lines.last().unwrap().starts_with("encode: 40/40 texts (100%), "), "{text}");
    assert!(lines.iter().any(|l| l.contains(" texts/s, ETA ")), "{text}");
    // --quiet: no progress at all.
    let quiet = Command::new(env!("CARGO_BIN_EXE_splade"))
        .args(["encode", "--quiet", "--device", "cpu", "--model"])
        .arg(model("splade-tiny"))
        .arg("--input")
        .arg(&texts)
        .env("SPLADE_PROGRESS_SECONDS", "0")
        .output()
        .unwrap();
    assert!(quiet.status.success());
    assert_eq!(String::from_utf8_lossy(&quiet.stderr), "", "--quiet prints nothing on success");
}

/// Logs: no ANSI colour off a terminal, and `--log-format json` is one JSON object per line.
#[test]
fn logs_redirected_carry_no_colour_and_json_format_is_json_lines() {
    let tmp = tempfile::tempdir().unwrap();
    let data = crate::train::small_pairs(tmp.path(), 8);
    let run = |name: &str, extra: &[&str]| {
        let out_dir = tmp.path().join(name);
        let cfg = tmp.path().join(format!("{name}.yaml"));
        let training = "  max_steps: 1\n  per_device_train_batch_size: 4\n  max_seq_length: 32";
        std::fs::write(&cfg, crate::train::tiny_config(&out_dir, &data, training, "")).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_splade"))
            .args(extra)
            .args(["train", "--config"])
            .arg(&cfg)
            .env_remove("RUST_LOG")
            .env("TERM", "xterm-256color")
            .env_remove("NO_COLOR")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(out.status.success(), "{text}");
        text
    };
    let text = run("text", &[]);
    assert!(text.contains("INFO") && text.contains("final model written"), "{text}");
    assert!(!text.contains('\x1b'), "ANSI escapes in redirected logs: {text:?}");
    let json = run("json", &["--log-format", "json"]);
    let logs: Vec<serde_json::Value> =
        json.lines().filter(|l| l.starts_with('{')).map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect();
    assert!(logs.iter().any(|v| v["level"] == "INFO" && v["fields"]["message"] == "final model written"), "{json}");
    assert!(logs.iter().all(|v| v["level"].is_string() && v["fields"].is_object()), "{json}");
    assert!(!json.contains('\x1b'), "{json:?}");
}
