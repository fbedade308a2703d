//! The c10d data plane across real processes on loopback (Gloo).
//!
//! Each multi-process test re-executes this test binary once per rank, running only the ignored
//! `dist::child_entry` test with `SPLADE_DIST_CHILD` naming the scenario. Every test is bounded in
//! time: the parent kills its children when the deadline passes. Tests that start processes are
//! named `dist_*` so the nextest configuration can run them one at a time.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use splade_worker::dist::{gather_global_batch, Backend, DistError, GroupOptions, ProcessGroup, Store};
use tch::{Device, Kind, Tensor};

const CHILD_ENV: &str = "SPLADE_DIST_CHILD";
const WORLD: usize = 2;
/// Bound on rendezvous and collectives inside the children.
const GROUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on a whole multi-process test.
const TEST_DEADLINE: Duration = Duration::from_secs(120);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Runs `scenario` in `WORLD` child processes and waits for all of them (killing them all at the
/// deadline). Panics with every rank's output when one fails or the deadline passes.
fn run_ranks(scenario: &str, out: &Path) {
    let port = free_port();
    let exe = std::env::current_exe().unwrap();
    let log = |r: usize| out.join(format!("rank{r}.log"));
    let mut children: Vec<Option<Child>> = (0..WORLD)
        .map(|r| {
            let f = std::fs::File::create(log(r)).unwrap();
            Some(
                Command::new(&exe)
                    .args(["dist::child_entry", "--exact", "--ignored", "--nocapture", "--test-threads=1"])
                    .env(CHILD_ENV, scenario)
                    .env("SPLADE_DIST_RANK", r.to_string())
                    .env("SPLADE_DIST_PORT", port.to_string())
                    .env("SPLADE_DIST_OUT", out)
                    .stdin(Stdio::null())
                    .stdout(f.try_clone().unwrap())
                    .stderr(f)
                    .spawn()
                    .expect("spawn child rank"),
            )
        })
        .collect();
    let logs = || (0..WORLD).map(|r| format!("--- rank {r} ---\n{}", std::fs::read_to_string(log(r)).unwrap_or_default())).collect::<Vec<_>>().join("\n");
    let start = Instant::now();
    let mut failed = Vec::new();
    while children.iter().any(Option::is_some) {
        if start.elapsed() > TEST_DEADLINE {
            for c in children.iter_mut().flatten() {
                let _ = c.kill();
                let _ = c.wait();
            }
            panic!("scenario {scenario} did not finish within {TEST_DEADLINE:?}; children killed\n{}", logs());
        }
        for (r, slot) in children.iter_mut().enumerate() {
            if let Some(c) = slot {
                if let Some(status) = c.try_wait().unwrap() {
                    if !status.success() {
                        failed.push((r, status));
                    }
                    *slot = None;
                }
            }
        }
        if !failed.is_empty() {
            // One rank failed: the others would only wait for it until their timeout.
            for c in children.iter_mut().flatten() {
                let _ = c.kill();
                let _ = c.wait();
            }
            panic!("scenario {scenario}: ranks failed {failed:?}\n{}", logs());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn gloo(rank: usize, generation: u64) -> GroupOptions {
    GroupOptions {
        backend: Backend::Gloo,
        rank,
        world_size: WORLD,
        generation,
        timeout: GROUP_TIMEOUT,
        gloo_host: Some("127.0.0.1".into()),
    }
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

/// The child side: runs the scenario named by `SPLADE_DIST_CHILD` as one rank. Ignored so that
/// only the `dist_*` tests run it (as a subprocess).
#[test]
#[ignore = "runs only as a child process of the dist_* tests"]
fn child_entry() -> Result<()> {
    let Ok(scenario) = std::env::var(CHILD_ENV) else {
        eprintln!("child_entry: {CHILD_ENV} not set; this is a subprocess of the dist_* tests, nothing to do");
        return Ok(());
    };
    let rank: usize = std::env::var("SPLADE_DIST_RANK")?.parse()?;
    let port: u16 = std::env::var("SPLADE_DIST_PORT")?.parse()?;
    let out = PathBuf::from(std::env::var("SPLADE_DIST_OUT")?);
    match scenario.as_str() {
        "collectives" => child_collectives(rank, port),
        "reform" => child_reform(rank, port, &out),
        "grad" => child_grad(rank, port, &out),
        "peer_dies" => child_peer_dies(rank, port),
        other => bail!("unknown scenario {other}"),
    }
}

fn child_collectives(rank: usize, port: u16) -> Result<()> {
    let mut pg = ProcessGroup::connect("127.0.0.1", port, gloo(rank, 1))?;
    let f = (rank + 1) as f64; // rank r contributes (r+1)×base; the sum over 2 ranks is 3×base
    let total = 3.0;

    // Mixed dtypes, a non-contiguous tensor and one larger than a 25 MB bucket.
    let base = [
        Tensor::arange(10, (Kind::Float, Device::Cpu)),
        Tensor::arange(12, (Kind::Double, Device::Cpu)).view([3, 4]),
        Tensor::arange(12, (Kind::Float, Device::Cpu)).view([3, 4]).transpose(0, 1),
        Tensor::linspace(-1.0, 1.0, 7_000_000, (Kind::Float, Device::Cpu)),
        Tensor::arange(5, (Kind::Int64, Device::Cpu)),
    ];
    // (An f64 scalar would promote the Int64 tensor to Float.)
    let mut ts: Vec<Tensor> = base.iter().map(|b| if b.kind() == Kind::Int64 { b * (rank as i64 + 1) } else { b * f }).collect();
    let stats = pg.all_reduce_sum(&mut ts)?;
    for (i, (t, b)) in ts.iter().zip(&base).enumerate() {
        ensure!(t.size() == b.size(), "tensor {i}: shape changed to {:?}", t.size());
        ensure!(t.kind() == b.kind(), "tensor {i}: dtype changed to {:?}", t.kind());
        let err = max_abs_diff(&t.to_kind(Kind::Double), &(b.to_kind(Kind::Double) * total));
        ensure!(err < 1e-5, "tensor {i}: all_reduce_sum differs from the sum by {err}");
    }
    ensure!(stats.buckets >= 4, "expected separate buckets per dtype and for the large tensor, got {stats:?}");
    ensure!(stats.seconds > 0.0 && stats.bytes == 10 * 4 + 12 * 8 + 12 * 4 + 7_000_000 * 4 + 5 * 8, "{stats:?}");
    ensure!(pg.last_all_reduce() == stats);

    // Tiny buckets: every tensor still summed exactly once.
    let mut small: Vec<Tensor> = (0..6).map(|i| Tensor::full([3], (i as f64 + 1.0) * f, (Kind::Float, Device::Cpu))).collect();
    let stats = pg.all_reduce_sum_bucketed(&mut small, 24)?;
    ensure!(stats.buckets == 3, "{stats:?}");
    for (i, t) in small.iter().enumerate() {
        let want = Tensor::full([3], (i as f64 + 1.0) * total, (Kind::Float, Device::Cpu));
        ensure!(max_abs_diff(t, &want) == 0.0, "small tensor {i}: {t}");
    }

    // all_gather: rank order.
    let mine = Tensor::arange(6, (Kind::Float, Device::Cpu)).view([2, 3]) + 100.0 * rank as f64;
    let got = pg.all_gather(&mine)?;
    ensure!(got.len() == WORLD);
    for (r, g) in got.iter().enumerate() {
        let want = Tensor::arange(6, (Kind::Float, Device::Cpu)).view([2, 3]) + 100.0 * r as f64;
        ensure!(max_abs_diff(g, &want) == 0.0, "all_gather slot {r} is not rank {r}'s tensor: {g}");
    }

    // all_gather_varlen: rank r has r+1 rows.
    let rows = |r: usize| Tensor::full([r as i64 + 1, 3], r as f64 + 0.5, (Kind::Float, Device::Cpu));
    let got = pg.all_gather_varlen(&rows(rank))?;
    for (r, g) in got.iter().enumerate() {
        ensure!(g.size() == rows(r).size() && max_abs_diff(g, &rows(r)) == 0.0, "varlen slot {r}: {g}");
    }
    // Differing trailing dims are refused on every rank, without desynchronising the group.
    let odd = Tensor::zeros([2, 3 + rank as i64], (Kind::Float, Device::Cpu));
    match pg.all_gather_varlen(&odd) {
        Err(DistError::ShapeMismatch { .. }) => {}
        other => bail!("expected ShapeMismatch, got {:?}", other.map(|v| v.len())),
    }

    // broadcast from rank 1 into a non-contiguous view.
    let mut t = if rank == 1 { Tensor::full([4, 2], 42.0, (Kind::Float, Device::Cpu)) } else { Tensor::zeros([4, 2], (Kind::Float, Device::Cpu)) };
    let mut tt = t.transpose(0, 1);
    pg.broadcast(&mut tt, 1)?;
    ensure!(max_abs_diff(&t, &Tensor::full([4, 2], 42.0, (Kind::Float, Device::Cpu))) == 0.0, "broadcast: {t}");
    t = Tensor::zeros([1], (Kind::Float, Device::Cpu));
    ensure!(matches!(pg.broadcast(&mut t, 2), Err(DistError::InvalidArgument(_))));

    pg.barrier()?;
    Ok(())
}

fn child_reform(rank: usize, port: u16, out: &Path) -> Result<()> {
    // One store for the job; generation 1's group, then generation 2's on the same store. Without
    // the generation prefix the second rendezvous would read the first one's (stale) keys.
    let store = Store::new("127.0.0.1", port, rank == 0, WORLD, GROUP_TIMEOUT)?;
    {
        let mut g1 = ProcessGroup::new(&store, gloo(rank, 1))?;
        let mut t = [Tensor::full([4], rank as f64 + 1.0, (Kind::Float, Device::Cpu))];
        g1.all_reduce_sum(&mut t)?;
        ensure!(max_abs_diff(&t[0], &Tensor::full([4], 3.0, (Kind::Float, Device::Cpu))) == 0.0, "gen 1: {}", t[0]);
        g1.barrier()?;
    } // generation 1 torn down, as when a peer fails
    let mut g2 = ProcessGroup::new(&store, gloo(rank, 2))?;
    ensure!(g2.generation() == 2);
    let mut t = [Tensor::full([4], 10.0 * (rank as f64 + 1.0), (Kind::Float, Device::Cpu))];
    g2.all_reduce_sum(&mut t)?;
    ensure!(max_abs_diff(&t[0], &Tensor::full([4], 30.0, (Kind::Float, Device::Cpu))) == 0.0, "gen 2: {}", t[0]);
    let got = g2.all_gather(&Tensor::from_slice(&[rank as i64]))?;
    ensure!(got.iter().enumerate().all(|(r, g)| g.int64_value(&[0]) == r as i64), "gen 2 all_gather: {got:?}");
    g2.barrier()?;
    drop(g2);
    drop(store);

    // A restart where rank 0 hosts a brand-new store on the same port (the coordinator reuses the
    // address): clients retry until the new server is up. Rank 1 must not reach the old server
    // before it is gone (in a real restart the coordinator orders this), hence the marker file.
    let marker = out.join("gen2-store-dropped");
    if rank == 0 {
        std::fs::write(&marker, b"")?;
    } else {
        let start = Instant::now();
        while !marker.exists() {
            ensure!(start.elapsed() < GROUP_TIMEOUT, "rank 0 never dropped the generation-2 store");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let mut g3 = ProcessGroup::connect("127.0.0.1", port, gloo(rank, 3))?;
    let mut t = [Tensor::full([2], rank as f64 - 1.0, (Kind::Float, Device::Cpu))];
    g3.all_reduce_sum(&mut t)?;
    ensure!(max_abs_diff(&t[0], &Tensor::full([2], -1.0, (Kind::Float, Device::Cpu))) == 0.0, "gen 3: {}", t[0]);
    g3.barrier()?;
    Ok(())
}

fn child_peer_dies(rank: usize, port: u16) -> Result<()> {
    let timeout = Duration::from_secs(5);
    let mut pg = ProcessGroup::connect("127.0.0.1", port, GroupOptions { timeout, ..gloo(rank, 1) })?;
    pg.barrier()?;
    if rank == 1 {
        // Vanish without a goodbye, like a killed worker.
        std::process::exit(0);
    }
    let start = Instant::now();
    let mut t = [Tensor::ones([1000], (Kind::Float, Device::Cpu))];
    let mut res = Ok(Default::default());
    // The first collective may still complete into socket buffers; the dead peer shows up soon after.
    for _ in 0..10 {
        res = pg.all_reduce_sum(&mut t);
        if res.is_err() {
            break;
        }
    }
    let elapsed = start.elapsed();
    ensure!(matches!(res, Err(DistError::Collective(_))), "all_reduce with a dead peer returned {res:?}");
    ensure!(elapsed < timeout * 3, "the dead peer was noticed only after {elapsed:?}");
    eprintln!("dead peer reported after {elapsed:?}: {}", res.unwrap_err());
    Ok(())
}

// ---- the gradient-equivalence scenario ----

const B: i64 = 8; // global queries
const K: i64 = 2; // documents per query (positive first)
const IN: i64 = 12;
const V: i64 = 50;
const LAMBDA_Q: f64 = 0.3;
const LAMBDA_D: f64 = 0.1;

/// The toy problem, identical in every process: inputs and the initial weights.
fn toy_problem() -> (Tensor, Tensor, Tensor) {
    tch::manual_seed(7);
    let xq = Tensor::randn([B, IN], (Kind::Float, Device::Cpu));
    let xd = Tensor::randn([B * K, IN], (Kind::Float, Device::Cpu));
    let w = Tensor::randn([IN, V], (Kind::Float, Device::Cpu)) * 0.5;
    (xq, xd, w)
}

/// SPLADE-shaped toy encoder: log(1 + relu(x·W)).
fn encode(x: &Tensor, w: &Tensor) -> Tensor {
    x.matmul(w).relu().log1p()
}

/// Σ_j (mean_i e_ij)²
fn flops(e: &Tensor) -> Tensor {
    e.mean_dim(0, false, Kind::Float).square().sum(Kind::Float)
}

/// In-batch-negatives cross-entropy (query i's positive is document i·K) plus FLOPS terms, over
/// the whole batch given.
fn global_loss(q: &Tensor, d: &Tensor) -> Tensor {
    let scores = q.matmul(&d.tr());
    let labels = Tensor::arange(q.size()[0], (Kind::Int64, Device::Cpu)) * K;
    scores.cross_entropy_for_logits(&labels) + flops(q) * LAMBDA_Q + flops(d) * LAMBDA_D
}

fn child_grad(rank: usize, port: u16, out: &Path) -> Result<()> {
    let mut pg = ProcessGroup::connect("127.0.0.1", port, gloo(rank, 1))?;
    let (xq, xd, w) = toy_problem();
    let w = w.set_requires_grad(true);
    let b = B / WORLD as i64;
    let q_local = encode(&xq.narrow(0, rank as i64 * b, b), &w);
    let d_local = encode(&xd.narrow(0, rank as i64 * b * K, b * K), &w);
    let batch = gather_global_batch(&mut pg, &q_local, &d_local)?;
    ensure!(batch.q.size() == [B, V] && batch.d.size() == [B * K, V]);
    ensure!(batch.q_rows == (rank as i64 * b..(rank as i64 + 1) * b), "{:?}", batch.q_rows);
    let loss = global_loss(&batch.q, &batch.d);
    loss.backward();
    let mut grads = [w.grad()];
    let local = grads[0].copy();
    pg.all_reduce_sum(&mut grads)?;
    loss.detach().save(out.join(format!("loss{rank}.pt")))?;
    local.save(out.join(format!("local{rank}.pt")))?;
    grads[0].save(out.join(format!("grad{rank}.pt")))?;
    pg.barrier()?;
    Ok(())
}

fn rel_l2(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).norm().double_value(&[]) / b.norm().double_value(&[])
}

#[test]
fn dist_all_reduce_gather_broadcast_across_two_processes() {
    let out = tempfile::tempdir().unwrap();
    run_ranks("collectives", out.path());
}

#[test]
fn dist_reformed_generations_on_the_same_and_a_new_store() {
    let out = tempfile::tempdir().unwrap();
    run_ranks("reform", out.path());
}

#[test]
fn dist_dead_peer_fails_the_collective_instead_of_hanging() {
    let out = tempfile::tempdir().unwrap();
    run_ranks("peer_dies", out.path());
}

#[test]
fn dist_global_batch_gradient_equals_single_process_gradient() {
    let out = tempfile::tempdir().unwrap();
    run_ranks("grad", out.path());

    // The reference: one process, the full batch.
    let (xq, xd, w) = toy_problem();
    let w = w.set_requires_grad(true);
    let loss = global_loss(&encode(&xq, &w), &encode(&xd, &w));
    loss.backward();
    let want = w.grad();
    ensure_nontrivial(&want);

    let load = |name: String| Tensor::load(out.path().join(&name)).with_context(|| name).unwrap();
    let mut locals = Vec::new();
    for r in 0..WORLD {
        let got = load(format!("grad{r}.pt"));
        let err = rel_l2(&got, &want);
        assert!(err < 1e-5, "rank {r}: all-reduced gradient is {err:e} (relative L2) from the single-process one");
        let l = load(format!("loss{r}.pt")).double_value(&[]);
        assert!((l - loss.double_value(&[])).abs() < 1e-5, "rank {r} computed loss {l}, single process {}", loss.double_value(&[]));
        locals.push(load(format!("local{r}.pt")));
    }
    // Each rank alone holds only its own term: neither local gradient is the full one, and an
    // average of the two would be half of it.
    for (r, l) in locals.iter().enumerate() {
        assert!(rel_l2(l, &want) > 1e-2, "rank {r}'s local gradient already equals the full gradient");
    }
    let mean = (&locals[0] + &locals[1]) / 2.0;
    assert!(rel_l2(&mean, &want) > 0.4, "averaging should not match the global-loss gradient");
}

fn ensure_nontrivial(g: &Tensor) {
    assert!(g.norm().double_value(&[]) > 1e-3, "reference gradient is (near) zero: the toy problem is degenerate");
}

#[test]
fn dist_single_rank_group_and_argument_errors() {
    // World size 1 needs no peer: the store and the group form in-process.
    let store = Store::new("127.0.0.1", 0, true, 1, Duration::from_secs(10)).unwrap();
    assert_ne!(store.port().unwrap(), 0);
    let opts = GroupOptions { world_size: 1, ..gloo(0, 3) };
    let mut pg = ProcessGroup::new(&store, opts.clone()).unwrap();
    let mut ts = [Tensor::arange(4, (Kind::Float, Device::Cpu))];
    pg.all_reduce_sum(&mut ts).unwrap();
    assert_eq!(max_abs_diff(&ts[0], &Tensor::arange(4, (Kind::Float, Device::Cpu))), 0.0);
    let got = pg.all_gather(&ts[0]).unwrap();
    assert_eq!(got.len(), 1);
    pg.barrier().unwrap();

    let bad_rank = ProcessGroup::new(&store, GroupOptions { rank: 1, ..opts.clone() });
    assert!(matches!(bad_rank, Err(DistError::InvalidArgument(ref m)) if m.contains("rank 1")), "{:?}", bad_rank.err());
    let bad_world = ProcessGroup::new(&store, GroupOptions { world_size: 2, ..opts.clone() });
    assert!(matches!(bad_world, Err(DistError::InvalidArgument(_))), "{:?}", bad_world.err());
    if !cfg!(feature = "cuda") {
        let nccl = ProcessGroup::new(&store, GroupOptions { backend: Backend::Nccl, generation: 4, ..opts });
        let msg = nccl.err().expect("NCCL without the cuda feature must fail").to_string();
        assert!(msg.contains("cuda"), "{msg}");
    }
}

#[test]
fn dist_missing_peer_is_a_store_error_within_the_timeout() {
    let start = Instant::now();
    let res = Store::new("127.0.0.1", free_port(), true, 2, Duration::from_secs(2));
    let elapsed = start.elapsed();
    assert!(matches!(res, Err(DistError::Store { .. })), "{:?}", res.err());
    assert!(elapsed < Duration::from_secs(20), "took {elapsed:?}");
}
