//! fp16 mixed precision: the loss scaler against `torch.amp.GradScaler`, fp16 training of
//! SPLADE-tiny against fp32, a provoked overflow, and bit-exact resume of an fp16 run.

use std::path::Path;
use std::process::{Command, Stdio};

use splade_common::config::Config;
use splade_worker::train::optim::{AdamW, ParamGroup};
use splade_worker::train::scaler::{GradScaler, ScalerConfig};
use splade_worker::train::Trainer;
use tch::{Device, Kind, Tensor};

use crate::support::*;
use crate::train::{accum_config, all_grads, sigterm_after, small_pairs, spawn_train, tiny_config, train_steps};

/// `torch.amp.GradScaler("cpu")` driving SGD or AdamW over a sequence of gradients: the loss of
/// step i is `(p · g_i).sum()`, so the scaled backward leaves `scale · g_i` in `p.grad`. Prints,
/// per step, the unscaled gradient, whether the step was skipped, the weights after the step and
/// the scale and growth tracker after `update()`. Numbers travel as Python `str(float)` text so
/// inf and NaN survive.
const GRADSCALER_PY: &str = r#"
import json, sys, torch
spec = json.load(sys.stdin)
p = torch.tensor([float(x) for x in spec["p0"]], dtype=torch.float32, requires_grad=True)
if spec["optimizer"] == "sgd":
    opt = torch.optim.SGD([p], lr=spec["lr"])
else:
    opt = torch.optim.AdamW([p], lr=spec["lr"], weight_decay=spec["weight_decay"], foreach=False)
c = spec["scaler"]
scaler = torch.amp.GradScaler("cpu", init_scale=c["init_scale"], growth_factor=c["growth_factor"],
                              backoff_factor=c["backoff_factor"], growth_interval=c["growth_interval"])
out = []
for g in spec["grads"]:
    g = torch.tensor([float(x) for x in g], dtype=torch.float32)
    opt.zero_grad()
    scaler.scale((p * g).sum()).backward()
    scaler.unscale_(opt)
    unscaled = [str(x) for x in p.grad.tolist()]
    skipped = sum(v.item() for v in scaler._found_inf_per_device(opt).values()) > 0
    scaler.step(opt)
    scaler.update()
    out.append({"grad": unscaled, "skipped": skipped, "p": [str(x) for x in p.detach().tolist()],
                "scale": scaler.get_scale(), "tracker": scaler._get_growth_tracker()})
print(json.dumps(out))
"#;

/// The gradient sequence: ordinary values of mixed magnitude, an inf, a NaN, a finite value that
/// overflows fp32 once scaled, and runs of finite steps long enough to grow the scale.
fn gradient_sequence() -> Vec<Vec<f32>> {
    let ordinary = |i: usize| -> Vec<f32> { (0..6).map(|j| ((i * 7 + j * 3) % 11) as f32 * 0.013 - 0.05 + 1e-6 * (j as f32 + 1.0)).collect() };
    let mut seq = Vec::new();
    for i in 0..16 {
        let mut g = ordinary(i);
        match i {
            2 => g[1] = f32::INFINITY,
            3 => g[4] = f32::NAN,
            8 => g[0] = 3e37, // finite, but × scale overflows fp32
            12 => g[5] = f32::NEG_INFINITY,
            _ => {}
        }
        seq.push(g);
    }
    seq
}

fn parse_f32(s: &serde_json::Value) -> f32 {
    s.as_str().unwrap().parse::<f64>().unwrap() as f32
}

fn same(a: f32, b: f32) -> bool {
    a == b || (a.is_nan() && b.is_nan())
}

/// Our scaler, SGD (`p -= lr·g`, lr a power of two so the product is exact whichever way torch
/// fuses it) or our AdamW, on the same sequence; the same records as [`GRADSCALER_PY`].
/// One step's record: unscaled gradient, skipped, weights after, scale and growth tracker after.
type StepRecord = (Vec<f32>, bool, Vec<f32>, f64, i64);

fn run_ours(cfg: ScalerConfig, optimizer: &str, lr: f64, wd: f64, p0: &[f32], grads: &[Vec<f32>]) -> Vec<StepRecord> {
    let p = Tensor::from_slice(p0).set_requires_grad(true);
    let mut adamw = AdamW::new(vec![ParamGroup { names: vec!["p".into()], params: vec![p.shallow_clone()], weight_decay: wd, lr_scale: 1.0 }]);
    let mut scaler = GradScaler::new(cfg, Device::Cpu);
    let mut out = Vec::new();
    for g in grads {
        p.shallow_clone().zero_grad();
        scaler.scale_loss(&(&p * Tensor::from_slice(g)).sum(Kind::Float)).backward();
        let found_inf = scaler.unscale_(&[p.shallow_clone()]);
        let unscaled = Vec::<f32>::try_from(&p.grad()).unwrap();
        let skipped = GradScaler::step_was_skipped(&found_inf);
        if !skipped {
            if optimizer == "sgd" {
                tch::no_grad(|| {
                    let _ = p.shallow_clone().g_sub_(&(p.grad() * lr));
                });
            } else {
                adamw.step(lr);
            }
        }
        scaler.update(&found_inf);
        out.push((unscaled, skipped, Vec::<f32>::try_from(&p.detach()).unwrap(), scaler.scale(), scaler.growth_tracker()));
    }
    out
}

fn assert_matches_gradscaler(cfg: ScalerConfig, optimizer: &str, lr: f64) {
    let wd = 0.01;
    let p0: Vec<f32> = vec![0.5, -1.25, 2.0, 0.1, -0.3, 1.0];
    let grads = gradient_sequence();
    let spec = serde_json::json!({
        "p0": p0.iter().map(|x| format!("{x:?}")).collect::<Vec<_>>(),
        "grads": grads.iter().map(|g| g.iter().map(|x| format!("{x:?}")).collect::<Vec<_>>()).collect::<Vec<_>>(),
        "optimizer": optimizer, "lr": lr, "weight_decay": wd,
        "scaler": {"init_scale": cfg.init_scale, "growth_factor": cfg.growth_factor,
                   "backoff_factor": cfg.backoff_factor, "growth_interval": cfg.growth_interval},
    });
    let mut child = Command::new(ref_python())
        .args(["-c", GRADSCALER_PY])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the reference python (run scripts/setup.sh --reference)");
    use std::io::Write;
    child.stdin.take().unwrap().write_all(spec.to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "GradScaler reference failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let theirs: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let ours = run_ours(cfg, optimizer, lr, wd, &p0, &grads);
    assert_eq!(ours.len(), theirs.len());
    let (mut skips, mut grows) = (0, 0);
    let mut prev_scale = cfg.init_scale;
    for (i, ((grad, skipped, p, scale, tracker), t)) in ours.iter().zip(&theirs).enumerate() {
        let what = format!("{optimizer} {cfg:?} step {i}");
        assert_eq!(*skipped, t["skipped"].as_bool().unwrap(), "{what}: skipped");
        assert_eq!(*scale, t["scale"].as_f64().unwrap(), "{what}: scale after update");
        assert_eq!(*tracker, t["tracker"].as_i64().unwrap(), "{what}: growth tracker");
        let tg: Vec<f32> = t["grad"].as_array().unwrap().iter().map(parse_f32).collect();
        assert!(grad.iter().zip(&tg).all(|(a, b)| same(*a, *b)), "{what}: unscaled gradient ours {grad:?} vs torch {tg:?}");
        let tp: Vec<f32> = t["p"].as_array().unwrap().iter().map(parse_f32).collect();
        assert!(p.iter().zip(&tp).all(|(a, b)| same(*a, *b)), "{what}: weights ours {p:?} vs torch {tp:?}");
        skips += *skipped as usize;
        grows += (*scale > prev_scale) as usize;
        prev_scale = *scale;
    }
    // The sequence must have exercised both directions, or the comparison proves little.
    assert_eq!(skips, 4, "{optimizer}: the inf, NaN, -inf and overflowing steps are skipped");
    assert!(grows >= 2, "{optimizer} {cfg:?}: the scale never grew");
}

#[test]
fn scaler_matches_torch_gradscaler_with_sgd_and_adamw() {
    // Defaults except a short growth interval, and odd factors whose scale is no power of two (so
    // unscaling rounds, and the float64 reciprocal matters).
    let defaults = ScalerConfig { growth_interval: 3, ..Default::default() };
    let odd = ScalerConfig { init_scale: 1000.0, growth_factor: 3.0, backoff_factor: 0.3, growth_interval: 2 };
    for cfg in [defaults, odd] {
        assert_matches_gradscaler(cfg, "sgd", 0.25);
        assert_matches_gradscaler(cfg, "adamw", 1e-2);
    }
}

/// Every model variable, copied, sorted by name.
fn weights(t: &Trainer) -> Vec<(String, Tensor)> {
    let mut v: Vec<(String, Tensor)> = t.model.vs.variables().into_iter().map(|(n, v)| (n, v.detach().copy())).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn tiny_trainer(dir: &Path, data: &Path, training: &str) -> Trainer {
    let text = tiny_config(&dir.join("o"), data, training, "");
    Trainer::new(Config::from_str(&text, "amp.yaml").unwrap(), Device::Cpu, 16, 1).unwrap()
}

#[test]
fn fp16_training_tracks_fp32() {
    let tmp = tempfile::tempdir().unwrap();
    let data = repo().join("data/norquad/train.jsonl.gz");
    let steps = 4;
    let mut fp32 = tiny_trainer(tmp.path(), &data, &format!("  max_steps: {steps}"));
    let mut fp16 = tiny_trainer(tmp.path(), &data, &format!("  max_steps: {steps}\n  fp16: true"));
    assert_eq!(fp16.scaler.as_ref().map(GradScaler::scale), Some(65536.0), "GradScaler's default initial scale");
    assert!(fp32.scaler.is_none());
    // At the default 2^16 SPLADE-tiny overflows on step 2 and skips it, after which the two runs
    // have taken different updates. Started at 2^10 no step overflows, so both runs take the same
    // updates and only fp16's rounding separates them.
    fp16.scaler = Some(GradScaler::new(ScalerConfig { init_scale: 1024.0, ..Default::default() }, Device::Cpu));
    let mut losses = Vec::new();
    for _ in 0..steps {
        let (a, b) = (fp32.train_step().unwrap(), fp16.train_step().unwrap());
        assert!(b.loss.is_finite() && b.grad_norm.is_finite(), "fp16 step {}: loss {} grad norm {}", b.step, b.loss, b.grad_norm);
        assert!(!b.optimizer_step_skipped, "fp16 step {} overflowed at scale {:?}", b.step, b.loss_scale);
        assert_eq!(b.loss_scale, Some(1024.0));
        assert!(a.loss_scale.is_none() && !a.optimizer_step_skipped);
        losses.push((a.loss, b.loss, a.grad_norm, b.grad_norm));
    }
    // Tolerance 1e-2 relative. fp16 keeps 11 significant bits (relative rounding 4.9e-4); the
    // encoder's matmuls round their inputs and outputs to it, which moved the step-1 loss by 7e-4
    // relative here; four AdamW steps at lr ≤ 1e-4 from near-identical gradients add little. 1e-2
    // leaves room for that drift, yet a lost scale (unscaling by the wrong factor) or an update
    // skipped or applied twice moves the loss or the gradient norm by far more (a skipped step-2
    // update alone moved the step-3 loss by 6%).
    for (i, (a, b, na, nb)) in losses.iter().enumerate() {
        assert!((a - b).abs() <= 1e-2 * a.abs(), "step {}: fp32 loss {a} vs fp16 {b}", i + 1);
        assert!((na - nb).abs() <= 1e-2 * na.abs(), "step {}: fp32 grad norm {na} vs fp16 {nb}", i + 1);
    }
    assert!(losses.iter().any(|(a, b, _, _)| a != b), "fp16 left every loss bit-identical: autocast did not engage");
}

/// Relative L2 distance between two gradient lists (as `all_grads` returns them).
fn rel_l2(a: &[(String, Tensor)], b: &[(String, Tensor)]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|((_, x), (_, y))| (x - y).square().sum(Kind::Double).double_value(&[])).sum();
    let den: f64 = b.iter().map(|(_, y)| y.square().sum(Kind::Double).double_value(&[])).sum();
    assert!(den > 0.0, "reference gradients are all zero");
    (num / den).sqrt()
}

#[test]
fn fp16_gradient_cache_scales_once() {
    // Gradient cache back-propagates the scaled loss to the cached embeddings, then each
    // micro-batch's surrogate carries those (already scaled) embedding gradients: the parameters
    // must end up with scale × gradient, as the full batch does, not scale² × gradient.
    let tmp = tempfile::tempdir().unwrap();
    let data = repo().join("data/norquad/train.jsonl.gz");
    let mk = |gc: bool, accum: usize, fp16: bool| {
        let text = accum_config(&tmp.path().join("o"), &data, 2, 16, gc, accum, &format!("\n  fp16: {fp16}"));
        let mut t = Trainer::new(Config::from_str(&text, "gc16.yaml").unwrap(), Device::Cpu, 16, accum).unwrap();
        if fp16 {
            t.scaler = Some(GradScaler::new(ScalerConfig { init_scale: 1024.0, ..Default::default() }, Device::Cpu));
        }
        t
    };
    let (fp32, full, cached) = (mk(false, 1, false), mk(false, 1, true), mk(true, 4, true));
    let batch = fp32.plan.step(1).unwrap().clone();
    for t in [&fp32, &full, &cached] {
        t.forward_backward(&t.examples(&batch, &batch.rows)).unwrap();
    }
    let g32: Vec<(String, Tensor)> = all_grads(&fp32).into_iter().map(|(n, g)| (n, g * 1024.0)).collect();
    let (g_full, g_cached) = (all_grads(&full), all_grads(&cached));
    // fp16 rounding of the encoder separates fp16 from fp32 by 2.1e-3 relative (L2) here; a
    // missing or doubled scale would be off by a factor of 1024.
    let (e_full, e_cached) = (rel_l2(&g_full, &g32), rel_l2(&g_cached, &g32));
    eprintln!("fp16 vs fp32 scaled gradients, relative L2: full batch {e_full:.2e}, gradient cache {e_cached:.2e}");
    assert!(e_full < 2e-2, "full-batch fp16 scaled gradients vs 1024 × fp32: relative L2 {e_full}");
    assert!(e_cached < 2e-2, "gradient-cache fp16 scaled gradients vs 1024 × fp32: relative L2 {e_cached}");
    // After unscaling, the cached run's gradients are the fp32 ones up to fp16 rounding.
    let params: Vec<Tensor> = cached.opt.params();
    let found_inf = cached.scaler.as_ref().unwrap().unscale_(&params);
    assert!(!GradScaler::step_was_skipped(&found_inf));
    let e = rel_l2(&all_grads(&cached), &all_grads(&fp32));
    assert!(e < 2e-2, "unscaled gradient-cache fp16 gradients vs fp32: relative L2 {e}");
}

#[test]
fn fp16_overflow_skips_the_step_and_backs_off() {
    let tmp = tempfile::tempdir().unwrap();
    let data = repo().join("data/norquad/train.jsonl.gz");
    // max_steps 8, warmup_ratio 0.1: one warm-up step, so the schedule reads lr(0) = 0, lr(1) = 1e-4.
    let mut t = tiny_trainer(tmp.path(), &data, "  max_steps: 8\n  fp16: true");
    // 2^40 × any gradient of the fp16 encoder backward is far beyond fp16's 65504.
    let huge = 2f64.powi(40);
    t.scaler = Some(GradScaler::new(ScalerConfig { init_scale: huge, ..Default::default() }, Device::Cpu));
    let before = weights(&t);
    assert_eq!(t.learning_rate(), 0.0);
    let s = t.train_step().unwrap();
    assert!(s.optimizer_step_skipped, "a 2^40 loss scale must overflow");
    assert_eq!(s.loss_scale, Some(huge));
    assert!(!s.grad_norm.is_finite(), "the skipped step's gradient norm is {}", s.grad_norm);
    assert!(s.loss.is_finite(), "the loss itself is unscaled and finite: {}", s.loss);
    let after = weights(&t);
    for ((n, a), (_, b)) in before.iter().zip(&after) {
        assert!(a.equal(b), "{n} changed on a skipped step");
    }
    assert_eq!(t.opt.step, 0, "AdamW must not count a skipped step");
    assert_eq!((t.state.global_step, t.state.skipped_steps), (1, 1));
    assert_eq!(t.scaler.as_ref().unwrap().scale(), huge / 2.0, "backoff_factor 0.5");
    assert_eq!(t.learning_rate(), 0.0, "a skipped step does not advance the LR schedule (HF Trainer)");
    // At a workable scale the next step updates: at lr(0) = 0 only AdamW's moments and step move,
    // the step after moves the weights at lr(1).
    t.scaler = Some(GradScaler::new(ScalerConfig { init_scale: 1024.0, ..Default::default() }, Device::Cpu));
    let s = t.train_step().unwrap();
    assert!(!s.optimizer_step_skipped && s.grad_norm.is_finite(), "scale 1024 overflowed: {s:?}");
    assert_eq!((t.opt.step, t.state.global_step, t.state.skipped_steps), (1, 2, 1));
    assert!((t.learning_rate() - 1e-4).abs() < 1e-12, "lr after one taken step: {}", t.learning_rate());
    let s = t.train_step().unwrap();
    assert!(!s.optimizer_step_skipped);
    assert_eq!(t.scaler.as_ref().unwrap().growth_tracker(), 2);
    let moved = weights(&t).iter().zip(&after).filter(|((_, a), (_, b))| !a.equal(b)).count();
    assert!(moved > 0, "finite fp16 steps left every weight unchanged");
}

/// `(step, loss scale, skipped)` of each training record of a `metrics.jsonl`.
fn scale_series(metrics: &Path) -> Vec<(u64, f64, f64)> {
    train_steps(metrics)
        .iter()
        .map(|v| {
            let scale = v["train/loss_scale"].as_f64().unwrap_or_else(|| panic!("no train/loss_scale in {v}"));
            (v["step"].as_u64().unwrap(), scale, v["train/optimizer_step_skipped"].as_f64().unwrap())
        })
        .collect()
}

#[test]
fn fp16_resume_after_sigterm_is_bitwise_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let data = small_pairs(tmp.path(), 120);
    let training = "  max_steps: 40\n  fp16: true\n  per_device_train_batch_size: 4\n  save_strategy: steps\n  save_steps: 5\n  max_seq_length: 32";
    let run = |out: &Path, resume: bool| -> std::process::Child {
        let text = tiny_config(out, &data, training, "");
        spawn_train(out, &text, resume)
    };
    let straight = tmp.path().join("straight");
    assert!(run(&straight, false).wait().unwrap().success());
    let straight_scales = scale_series(&straight.join("metrics.jsonl"));
    assert_eq!(straight_scales.len(), 40);
    // SPLADE-tiny overflows at the default 2^16 on its first steps (2 skips, then 2^14 here): the
    // scaler's state at the stop differs from a fresh one's, so the resume below depends on it.
    assert!(
        straight_scales[..20].iter().any(|s| s.2 > 0.0),
        "no step before 20 was skipped, so this test no longer checks the restored scale: {straight_scales:?}"
    );

    let stopped = tmp.path().join("stopped");
    let mut child = run(&stopped, false);
    let metrics = stopped.join("metrics.jsonl");
    sigterm_after(&mut child, &metrics, 20);
    let stop = train_steps(&metrics).len();
    assert!(stop < 35, "stopped at step {stop}, too late to compare checkpoint-35");
    let ck = stopped.join(format!("checkpoint-{stop}"));
    assert!(ck.join("manifest.json").exists(), "checkpoint of the stop step");
    let manifest = std::fs::read_to_string(ck.join("manifest.json")).unwrap();
    assert!(manifest.contains("scaler.json"), "the manifest must cover scaler.json: {manifest}");

    assert!(run(&stopped, true).wait().unwrap().success());
    assert_eq!(
        std::fs::read(straight.join("final/model.safetensors")).unwrap(),
        std::fs::read(stopped.join("final/model.safetensors")).unwrap(),
        "resumed fp16 run's final weights differ from the straight run's"
    );
    // The scale, the skips and the growth tracker continue where they stopped: a resumed scaler
    // starting afresh would count its growth tracker from the stop step and repeat early skips.
    assert_eq!(scale_series(&metrics), straight_scales, "loss scale / skipped series after resume");
    let read = |dir: &Path, f: &str| -> serde_json::Value { serde_json::from_str(&std::fs::read_to_string(dir.join(f)).unwrap()).unwrap() };
    let (a, b) = (read(&straight.join("checkpoint-35"), "scaler.json"), read(&stopped.join("checkpoint-35"), "scaler.json"));
    assert_eq!(a, b, "checkpoint-35 scaler state: straight vs resumed");
    let (sa, sb) = (read(&straight.join("checkpoint-35"), "trainer_state.json"), read(&stopped.join("checkpoint-35"), "trainer_state.json"));
    assert_eq!(sa["skipped_steps"], sb["skipped_steps"]);
    let skipped = straight_scales.iter().filter(|s| s.2 > 0.0).count() as u64;
    assert_eq!(sa["skipped_steps"].as_u64().unwrap(), straight_scales.iter().take(35).filter(|s| s.2 > 0.0).count() as u64);
    eprintln!("straight run skipped {skipped} of 40 steps; checkpoint-35 scaler {a}");
}

// ---------------------------------------------------------------------------------------------
// Data-parallel fp16: two ranks over Gloo on loopback, each a child process of this test binary
// running only the ignored `amp::child_entry` (as `dist.rs` does for its scenarios).

const CHILD_ENV: &str = "SPLADE_AMP_DIST_CHILD";
const WORLD: usize = 2;

fn dist_config(out: &Path, data: &Path) -> Config {
    // warmup_ratio 0: step 1 runs at the full learning rate, so the weights move.
    let text = tiny_config(out, data, "  max_steps: 4\n  fp16: true\n  per_device_train_batch_size: 4\n  max_seq_length: 32\n  warmup_ratio: 0.0", "");
    Config::from_str(&text, "amp-dist.yaml").unwrap()
}

/// All weights, flattened and concatenated in name order.
fn flat_weights(t: &Trainer) -> Tensor {
    let w: Vec<Tensor> = weights(t).into_iter().map(|(_, v)| v.flatten(0, -1)).collect();
    Tensor::cat(&w, 0)
}

/// One rank: step 1 at scale 2^10 (finite everywhere), then step 2 with a 2^40 scale on rank 1
/// only, so only rank 1's local gradients overflow. Writes the weights after each step and the
/// step stats.
fn child_fp16(rank: usize, port: u16, out: &Path, data: &Path) -> anyhow::Result<()> {
    use splade_common::data::plan::slice_for_rank;
    use splade_worker::dist::{Backend, GroupOptions, ProcessGroup};
    let opts = GroupOptions {
        backend: Backend::Gloo,
        rank,
        world_size: WORLD,
        generation: 1,
        timeout: std::time::Duration::from_secs(60),
        gloo_host: Some("127.0.0.1".into()),
    };
    let mut pg = ProcessGroup::connect("127.0.0.1", port, opts)?;
    let mut t = Trainer::new(dist_config(&out.join(format!("o{rank}")), data), Device::Cpu, 4 * WORLD, 1)?;
    t.scaler = Some(GradScaler::new(ScalerConfig { init_scale: 1024.0, ..Default::default() }, Device::Cpu));
    let mut stats = Vec::new();
    for step in 1..=2u64 {
        if step == 2 && rank == 1 {
            t.scaler = Some(GradScaler::new(ScalerConfig { init_scale: 2f64.powi(40), ..Default::default() }, Device::Cpu));
        }
        let t0 = std::time::Instant::now();
        let batch = t.plan.step(step).unwrap().clone();
        let lr = t.learning_rate();
        t.model.vs.unfreeze();
        let global = t.examples(&batch, &batch.rows);
        let local = t.examples(&batch, slice_for_rank(&batch, rank, WORLD));
        let (mut s, _) = t.forward_backward_distributed(&global, &local, &mut pg)?;
        t.finish_step(&mut s, &batch, lr, t0);
        flat_weights(&t).save(out.join(format!("w{step}_rank{rank}.pt")))?;
        stats.push(serde_json::json!({
            "skipped": s.optimizer_step_skipped, "loss_scale": s.loss_scale, "grad_norm": s.grad_norm.to_string(),
            "scale_after": t.scaler.as_ref().unwrap().scale(), "adamw_steps": t.opt.step,
        }));
    }
    std::fs::write(out.join(format!("stats_rank{rank}.json")), serde_json::to_string(&stats)?)?;
    pg.barrier()?;
    Ok(())
}

#[test]
#[ignore = "runs only as a child process of amp::fp16_data_parallel_*"]
fn child_entry() -> anyhow::Result<()> {
    let Ok(scenario) = std::env::var(CHILD_ENV) else {
        eprintln!("child_entry: {CHILD_ENV} not set; this is a subprocess of amp::fp16_data_parallel_*, nothing to do");
        return Ok(());
    };
    anyhow::ensure!(scenario == "fp16", "unknown scenario {scenario}");
    let rank: usize = std::env::var("SPLADE_AMP_RANK")?.parse()?;
    let port: u16 = std::env::var("SPLADE_AMP_PORT")?.parse()?;
    let out = std::path::PathBuf::from(std::env::var("SPLADE_AMP_OUT")?);
    child_fp16(rank, port, &out, &out.join("pairs.jsonl"))
}

#[test]
fn fp16_data_parallel_unscales_after_the_all_reduce_and_skips_on_every_rank() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path();
    let data = small_pairs(out, 40);
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let exe = std::env::current_exe().unwrap();
    let log = |r: usize| out.join(format!("rank{r}.log"));
    let mut children: Vec<std::process::Child> = (0..WORLD)
        .map(|r| {
            let f = std::fs::File::create(log(r)).unwrap();
            Command::new(&exe)
                .args(["amp::child_entry", "--exact", "--ignored", "--nocapture", "--test-threads=1"])
                .env(CHILD_ENV, "fp16")
                .env("SPLADE_AMP_RANK", r.to_string())
                .env("SPLADE_AMP_PORT", port.to_string())
                .env("SPLADE_AMP_OUT", out)
                .stdin(Stdio::null())
                .stdout(f.try_clone().unwrap())
                .stderr(f)
                .spawn()
                .unwrap()
        })
        .collect();
    let logs = || (0..WORLD).map(|r| format!("--- rank {r} ---\n{}", std::fs::read_to_string(log(r)).unwrap_or_default())).collect::<Vec<_>>().join("\n");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    let mut done = [false; WORLD];
    while done.iter().any(|d| !d) {
        for (r, c) in children.iter_mut().enumerate() {
            if !done[r] {
                if let Some(status) = c.try_wait().unwrap() {
                    done[r] = true;
                    if !status.success() {
                        children.iter_mut().for_each(|c| {
                            let _ = c.kill();
                            let _ = c.wait();
                        });
                        panic!("rank {r} failed ({status})\n{}", logs());
                    }
                }
            }
        }
        if std::time::Instant::now() > deadline {
            children.iter_mut().for_each(|c| {
                let _ = c.kill();
                let _ = c.wait();
            });
            panic!("the ranks did not finish within 300 s; killed\n{}", logs());
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let stats: Vec<Vec<serde_json::Value>> = (0..WORLD)
        .map(|r| serde_json::from_str(&std::fs::read_to_string(out.join(format!("stats_rank{r}.json"))).unwrap()).unwrap())
        .collect();
    let w = |step: u64, r: usize| Tensor::load(out.join(format!("w{step}_rank{r}.pt"))).unwrap();

    // Step 1: the all-reduced (scaled) gradients are the same on both ranks, so is the update.
    assert!(w(1, 0).equal(&w(1, 1)), "step 1: the ranks' weights differ");
    for (r, s) in stats.iter().enumerate() {
        assert_eq!(s[0]["skipped"], false, "rank {r} step 1: {}", s[0]);
        assert_eq!(s[0]["loss_scale"], 1024.0);
    }
    // The unscaled global gradient norm equals one process's on the whole global batch: the
    // all-reduce summed scaled gradients and the unscale came after it (a missing or doubled
    // unscale would be off by 1024×).
    let mut single = Trainer::new(dist_config(&out.join("single"), &data), Device::Cpu, 4 * WORLD, 1).unwrap();
    single.scaler = Some(GradScaler::new(ScalerConfig { init_scale: 1024.0, ..Default::default() }, Device::Cpu));
    let before = flat_weights(&single);
    let s = single.train_step().unwrap();
    let norm0: f64 = stats[0][0]["grad_norm"].as_str().unwrap().parse().unwrap();
    assert!((norm0 - s.grad_norm).abs() <= 1e-3 * s.grad_norm, "global grad norm: 2 ranks {norm0} vs 1 process {}", s.grad_norm);
    let moved = (&w(1, 0) - &before).norm().double_value(&[]);
    let diff = (&w(1, 0) - flat_weights(&single)).norm().double_value(&[]);
    assert!(moved > 0.0 && diff <= 1e-2 * moved, "step-1 update: 2 ranks vs 1 process differ by {diff} (update {moved})");

    // Step 2: only rank 1's local gradients overflowed, yet both ranks see the inf after the
    // all-reduce: both skip, neither moves, each backs off its own scale.
    for (r, s) in stats.iter().enumerate() {
        assert_eq!(s[1]["skipped"], true, "rank {r} step 2 must skip: {}", s[1]);
        assert_eq!(s[1]["adamw_steps"], 1, "rank {r}: AdamW stepped on a skipped step");
        assert!(w(2, r).equal(&w(1, r)), "rank {r}: weights changed on a skipped step");
    }
    assert_eq!(stats[0][1]["scale_after"], 512.0);
    assert_eq!(stats[1][1]["scale_after"], 2f64.powi(39));
}
