//! CSR in the cluster: two `splade-worker` processes against a coordinator train the same model as one process.

use splade_tests::fixtures::*;
use splade_worker::model::{LoadOptions, SparseEncoder, TextKind};
use tch::Device;

/// Two workers train CSR for 20 steps over a data plan; one process training the same global batches
/// must end with the same model: the probe texts' CSR embeddings agree within 1e-4.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csr_two_worker_cluster_equals_single_process() {
    use crate::cluster::{exit_ok, finish, job_yaml, parse, spawn_worker, start_coordinator, write_data, TOKEN};
    use splade_coordinator::JobOutcome;
    use splade_worker::train::Trainer;
    use std::time::Duration;
    use tch::Tensor;

    let tmp = tempfile::tempdir().unwrap();
    let dir = st_csr_folder(tmp.path(), &["--hidden-dim", "512", "--k", "16", "--k-aux", "64", "--dead-threshold", "5", "--max-length", "32"]);
    let steps = 20;
    let data = write_data(tmp.path(), 8 * steps);
    let out = tmp.path().join("out");
    let yaml = job_yaml(&out, &data, 4, 8, steps, 100, (2, 2))
        .replace(&format!("base_model: {}", model("splade-tiny").display()), &format!("base_model: {}\n  architecture: csr", dir.display()))
        .replace("type: splade_loss", "type: csr_loss")
        .replace("learning_rate: 1.0e-3", "learning_rate: 1.0e-4");
    assert!(yaml.contains("architecture: csr") && yaml.contains("csr_loss"));
    let handle = start_coordinator(&parse(&yaml)).await;
    let addr = handle.local_addr();
    let mut procs: Vec<_> = (0..2).map(|i| spawn_worker(addr, &format!("w{i}"), tmp.path(), TOKEN, &[], None)).collect();
    let outcome = finish(handle, &mut procs).await;
    assert_eq!(outcome, JobOutcome::Completed { final_step: steps as u64 }, "w0:\n{}", procs[0].log());
    for w in &mut procs {
        assert!(exit_ok(w, Duration::from_secs(60)), "{}:\n{}", w.id, w.log());
    }
    let mut single_cfg = parse(&yaml);
    single_cfg.training.output_dir = tmp.path().join("single").display().to_string();
    let mut trainer = Trainer::new(single_cfg, Device::Cpu, 8, 1).unwrap();
    for _ in 0..steps {
        trainer.train_step().unwrap();
    }
    let cluster_model = SparseEncoder::load(&out.join("final"), Device::Cpu, &LoadOptions::default()).unwrap();
    assert!(cluster_model.csr().is_some(), "the cluster's final model is a CSR folder");
    let probes: Vec<String> = (0..20).map(|i| format!("probe {i}: fjell og kyst i {} tiåret", 1900 + 10 * i)).collect();
    let texts: Vec<&str> = probes.iter().map(String::as_str).collect();
    let embed = |m: &SparseEncoder| -> Tensor {
        tch::no_grad(|| {
            let b = m.tokenize(&texts, TextKind::Document).unwrap();
            m.forward_kind(&b, TextKind::Document, false)
        })
    };
    let (a, b) = (embed(&cluster_model), embed(&trainer.model));
    let diff = f64::try_from((&a - &b).abs().max()).unwrap();
    let base = SparseEncoder::load(&dir, Device::Cpu, &LoadOptions::default()).unwrap();
    let moved = f64::try_from((&embed(&base) - &b).abs().max()).unwrap();
    let (ca, cb) = (cluster_model.csr().unwrap(), trainer.model.csr().unwrap());
    eprintln!("CSR 2 workers vs 1 process: probe embeddings differ by at most {diff:e}; training moved them by {moved:e}; dead latents {} vs {}", ca.dead_latents(), cb.dead_latents());
    assert_eq!(ca.stats_sum(), cb.stats_sum(), "the saved dead-latent counters equal the single process's");
    assert!(moved > 1e-3, "20 steps barely changed the model ({moved:e})");
    assert!(diff <= 1e-4, "cluster vs single process: {diff:e}");
}

