//! The c10d store and process group, and the collectives the trainer uses.

use std::ffi::CString;
use std::time::{Duration, Instant};

use tch::{Device, Kind, Tensor};

use super::ffi;
use super::DistError;

/// Size of one gradient bucket, as in PyTorch DDP (`bucket_cap_mb=25`).
pub const DEFAULT_BUCKET_BYTES: usize = 25 * 1024 * 1024;

/// Most dimensions [`ProcessGroup::all_gather_varlen`] handles (the shape header is fixed-size).
const MAX_DIMS: usize = 8;

/// Which c10d backend carries the collectives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `ProcessGroupGloo`: CPU tensors, TCP transport. Always available.
    Gloo,
    /// `ProcessGroupNCCL`: CUDA tensors. Only in builds with the `cuda` feature; otherwise
    /// [`ProcessGroup::new`] returns [`DistError::Group`] saying so.
    Nccl,
}

impl Backend {
    fn id(self) -> i32 {
        match self {
            Backend::Gloo => 0,
            Backend::Nccl => 1,
        }
    }

    /// The backend that suits tensors on `device`: NCCL for CUDA, Gloo otherwise.
    pub fn for_device(device: Device) -> Backend {
        match device {
            Device::Cuda(_) => Backend::Nccl,
            _ => Backend::Gloo,
        }
    }
}

/// A c10d `TCPStore`: the key-value rendezvous every rank of a job connects to.
///
/// Rank 0 (`is_master`) hosts the server on `port` (0 lets the OS pick one; read it back with
/// [`Store::port`]); the others connect to `host:port`. Creation returns once all `world_size`
/// participants (the master included) have connected, or fails with [`DistError::Store`] after
/// `timeout`. A store outlives the handle: process groups built on it keep it alive.
pub struct Store {
    raw: *mut ffi::splade_dist_store,
    world_size: usize,
}

// SAFETY: c10d stores are thread-safe (TCPStore serialises client calls internally); the handle
// is only freed in Drop.
unsafe impl Send for Store {}

impl Store {
    /// Connects to (and on the master, hosts) the store at `host:port`.
    pub fn new(host: &str, port: u16, is_master: bool, world_size: usize, timeout: Duration) -> Result<Store, DistError> {
        if world_size == 0 {
            return Err(DistError::InvalidArgument("world_size must be at least 1".into()));
        }
        let c_host = CString::new(host).map_err(|_| DistError::InvalidArgument(format!("store host {host:?} contains a NUL byte")))?;
        let mut raw = std::ptr::null_mut();
        // SAFETY: valid C string and out-pointer; the shim catches every exception.
        let err = unsafe {
            ffi::splade_dist_store_new(c_host.as_ptr(), port, is_master as i32, world_size as i32, timeout_ms(timeout), &mut raw)
        };
        ffi::check(err).map_err(|message| DistError::Store { host: host.to_string(), port, message })?;
        Ok(Store { raw, world_size })
    }

    /// The port the store listens on (on the master, the one the OS picked when asked for 0).
    pub fn port(&self) -> Result<u16, DistError> {
        let mut port = 0u16;
        // SAFETY: `raw` is a live store handle.
        ffi::check(unsafe { ffi::splade_dist_store_port(self.raw, &mut port) }).map_err(DistError::Collective)?;
        Ok(port)
    }

    /// Number of participants the store was created for.
    pub fn world_size(&self) -> usize {
        self.world_size
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // SAFETY: `raw` came from splade_dist_store_new and is freed exactly once.
        unsafe { ffi::splade_dist_store_free(self.raw) }
    }
}

/// How to form one generation's process group.
#[derive(Debug, Clone)]
pub struct GroupOptions {
    pub backend: Backend,
    /// This process's rank, `0..world_size`.
    pub rank: usize,
    pub world_size: usize,
    /// The elastic generation this group belongs to. Every key the group writes to the store is
    /// prefixed with it (`gen<N>/`), so a group re-formed after a failure never reads the
    /// rendezvous keys of an earlier generation, even on the same store.
    pub generation: u64,
    /// Bound on rendezvous and on every collective; a peer that disappears turns into
    /// [`DistError::Collective`] after at most this long instead of a hang.
    pub timeout: Duration,
    /// Gloo only: the address of this process that its peers can reach (the worker's advertised
    /// address; `127.0.0.1` on loopback). `None` uses libtorch's default: the address this
    /// machine's hostname resolves to, falling back to loopback.
    pub gloo_host: Option<String>,
}

/// Timing and volume of one [`ProcessGroup::all_reduce_sum`] call, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct AllReduceStats {
    /// Wall-clock seconds of the whole call: flattening, the collectives, copying back. With
    /// Gloo the collectives have finished when the call returns. With NCCL, waiting only orders
    /// the current CUDA stream after the collective (PyTorch semantics), so this is host time
    /// unless `TORCH_NCCL_BLOCKING_WAIT=1` makes the wait block.
    pub seconds: f64,
    /// Bytes reduced (the sum of the tensors' sizes).
    pub bytes: usize,
    /// Number of all-reduce collectives issued (one per bucket).
    pub buckets: usize,
}

/// One generation's c10d process group (a `ProcessGroupGloo` or `ProcessGroupNCCL` over a
/// `PrefixStore`). Collectives must be called in the same order on every rank, as in PyTorch.
/// Dropping it tears down its connections; the store stays usable for the next generation.
pub struct ProcessGroup {
    raw: *mut ffi::splade_dist_group,
    opts: GroupOptions,
    // Keeps the store this group was connected with when the group made it itself.
    _store: Option<Store>,
    last_all_reduce: AllReduceStats,
}

// SAFETY: c10d backends may be driven from any thread; `&mut self` on the mutating calls keeps
// one caller at a time, which also keeps the collective order deterministic.
unsafe impl Send for ProcessGroup {}

impl ProcessGroup {
    /// Forms the group on an existing store. Blocks until every rank of `opts.world_size` has
    /// joined under the same generation, or fails with [`DistError::Group`] after `opts.timeout`.
    pub fn new(store: &Store, opts: GroupOptions) -> Result<ProcessGroup, DistError> {
        Self::with_store(store, opts)
    }

    /// Creates the store (hosted by rank 0 at `store_host:store_port`) and forms the group on it;
    /// the group owns the store. The usual entry point of a worker that was told its rank,
    /// world size, generation and store address by the coordinator.
    pub fn connect(store_host: &str, store_port: u16, opts: GroupOptions) -> Result<ProcessGroup, DistError> {
        let store = Store::new(store_host, store_port, opts.rank == 0, opts.world_size, opts.timeout)?;
        let mut pg = Self::with_store(&store, opts)?;
        pg._store = Some(store);
        Ok(pg)
    }

    fn with_store(store: &Store, opts: GroupOptions) -> Result<ProcessGroup, DistError> {
        if opts.world_size == 0 || opts.rank >= opts.world_size {
            return Err(DistError::InvalidArgument(format!(
                "rank {} is out of range for world_size {} (ranks are 0..world_size)",
                opts.rank, opts.world_size
            )));
        }
        if opts.world_size != store.world_size() {
            return Err(DistError::InvalidArgument(format!(
                "group world_size {} differs from the store's {}",
                opts.world_size,
                store.world_size()
            )));
        }
        let prefix = CString::new(format!("gen{}/", opts.generation)).expect("no NUL in a formatted number");
        let host = opts
            .gloo_host
            .as_deref()
            .map(|h| CString::new(h).map_err(|_| DistError::InvalidArgument(format!("gloo host {h:?} contains a NUL byte"))))
            .transpose()?;
        let mut raw = std::ptr::null_mut();
        // SAFETY: live store handle, valid C strings (or NULL), valid out-pointer.
        let err = unsafe {
            ffi::splade_dist_group_new(
                store.raw,
                prefix.as_ptr(),
                opts.backend.id(),
                opts.rank as i32,
                opts.world_size as i32,
                timeout_ms(opts.timeout),
                host.as_ref().map_or(std::ptr::null(), |h| h.as_ptr()),
                &mut raw,
            )
        };
        ffi::check(err).map_err(|message| DistError::Group {
            backend: opts.backend,
            rank: opts.rank,
            world_size: opts.world_size,
            generation: opts.generation,
            message,
        })?;
        Ok(ProcessGroup { raw, opts, _store: None, last_all_reduce: AllReduceStats::default() })
    }

    pub fn rank(&self) -> usize {
        self.opts.rank
    }

    pub fn world_size(&self) -> usize {
        self.opts.world_size
    }

    pub fn generation(&self) -> u64 {
        self.opts.generation
    }

    pub fn backend(&self) -> Backend {
        self.opts.backend
    }

    /// Stats of the latest [`ProcessGroup::all_reduce_sum`] (zeros before the first).
    pub fn last_all_reduce(&self) -> AllReduceStats {
        self.last_all_reduce
    }

    /// Sums every tensor across ranks, in place, with ~25 MB buckets (see
    /// [`ProcessGroup::all_reduce_sum_bucketed`]).
    pub fn all_reduce_sum(&mut self, tensors: &mut [Tensor]) -> Result<AllReduceStats, DistError> {
        self.all_reduce_sum_bucketed(tensors, DEFAULT_BUCKET_BYTES)
    }

    /// Sums every tensor across ranks, in place: afterwards each tensor on every rank holds the
    /// element-wise SUM of that tensor over all ranks (not the mean; see the `dist` module docs
    /// for why the trainer wants the sum).
    ///
    /// Like PyTorch DDP, consecutive tensors of the same dtype and device are packed into one
    /// contiguous flat buffer of up to `bucket_bytes` (a tensor larger than that gets a bucket of
    /// its own), each bucket is all-reduced with one collective, and the results are copied back.
    /// All buckets are launched before any is waited on. Every rank must pass tensors of the same
    /// shapes, dtypes and order. Tensors are written through, so gradients obtained from
    /// `param.grad()` are updated in the parameters. No autograd graph is recorded.
    pub fn all_reduce_sum_bucketed(&mut self, tensors: &mut [Tensor], bucket_bytes: usize) -> Result<AllReduceStats, DistError> {
        let start = Instant::now();
        for (i, t) in tensors.iter().enumerate() {
            if !t.defined() {
                return Err(DistError::InvalidArgument(format!(
                    "all_reduce_sum: tensor {i} is undefined (a parameter without a gradient?); zero it so every rank reduces the same list"
                )));
            }
        }
        let buckets = plan_buckets(tensors, bucket_bytes);
        let bytes = tensors.iter().map(byte_size).sum();
        tch::no_grad(|| -> Result<(), DistError> {
            // A lone contiguous tensor is reduced in place; everything else through a flat buffer.
            let mut flats: Vec<Tensor> = Vec::with_capacity(buckets.len());
            for b in &buckets {
                let flat = if b.len() == 1 && tensors[b.start].is_contiguous() {
                    tensors[b.start].shallow_clone()
                } else {
                    let views: Vec<Tensor> = tensors[b.clone()].iter().map(|t| t.reshape([-1])).collect();
                    Tensor::f_cat(&views, 0)?
                };
                flats.push(flat);
            }
            let ptrs: Vec<*mut torch_sys::C_tensor> = flats.iter_mut().map(|t| t.as_mut_ptr()).collect();
            // SAFETY: live group; `ptrs` point at tensors alive for the whole call.
            ffi::check(unsafe { ffi::splade_dist_all_reduce_sum(self.raw, ptrs.as_ptr(), ptrs.len()) })
                .map_err(DistError::Collective)?;
            for (b, flat) in buckets.iter().zip(&flats) {
                if b.len() == 1 && tensors[b.start].is_contiguous() {
                    continue;
                }
                let mut offset = 0i64;
                for t in &mut tensors[b.clone()] {
                    let n = t.numel() as i64;
                    let src = flat.f_narrow(0, offset, n)?.f_view(t.size().as_slice())?;
                    t.f_copy_(&src)?;
                    offset += n;
                }
            }
            Ok(())
        })?;
        let stats = AllReduceStats { seconds: start.elapsed().as_secs_f64(), bytes, buckets: buckets.len() };
        self.last_all_reduce = stats;
        Ok(stats)
    }

    /// Gathers `t` from every rank: element `r` of the result is rank `r`'s tensor (this rank's
    /// own entry is a copy). Every rank must pass the same shape and dtype; use
    /// [`ProcessGroup::all_gather_varlen`] when dim 0 may differ. The results carry no autograd
    /// history (c10d collectives are not differentiable).
    pub fn all_gather(&mut self, t: &Tensor) -> Result<Vec<Tensor>, DistError> {
        tch::no_grad(|| {
            let mut input = t.f_detach()?.f_contiguous()?;
            let mut outs: Vec<Tensor> = (0..self.world_size()).map(|_| input.f_empty_like()).collect::<Result<_, _>>()?;
            let ptrs: Vec<*mut torch_sys::C_tensor> = outs.iter_mut().map(|o| o.as_mut_ptr()).collect();
            // SAFETY: live group; input and outputs alive for the call, outputs shaped like input.
            ffi::check(unsafe { ffi::splade_dist_all_gather(self.raw, input.as_mut_ptr(), ptrs.as_ptr(), ptrs.len()) })
                .map_err(DistError::Collective)?;
            Ok(outs)
        })
    }

    /// Like [`ProcessGroup::all_gather`], but ranks may differ in dim 0 (e.g. a short last batch):
    /// the shapes are gathered first, every tensor is padded to the longest and trimmed back.
    /// Fails with [`DistError::ShapeMismatch`] on every rank when the other dimensions or the
    /// number of dimensions differ between ranks.
    pub fn all_gather_varlen(&mut self, t: &Tensor) -> Result<Vec<Tensor>, DistError> {
        let shape = t.size();
        if shape.is_empty() || shape.len() > MAX_DIMS {
            return Err(DistError::InvalidArgument(format!(
                "all_gather_varlen needs a tensor of 1 to {MAX_DIMS} dimensions, got shape {shape:?}"
            )));
        }
        let mut header = vec![0i64; MAX_DIMS + 1];
        header[0] = shape.len() as i64;
        header[1..=shape.len()].copy_from_slice(&shape);
        let header = Tensor::from_slice(&header).to_device(t.device());
        let headers = self.all_gather(&header)?;
        let shapes: Vec<Vec<i64>> = headers
            .iter()
            .map(|h| {
                let v = Vec::<i64>::try_from(h.to_device(Device::Cpu))?;
                Ok(v[1..=(v[0] as usize).min(MAX_DIMS)].to_vec())
            })
            .collect::<Result<_, tch::TchError>>()?;
        for (r, s) in shapes.iter().enumerate() {
            if s.len() != shape.len() || s[1..] != shape[1..] {
                return Err(DistError::ShapeMismatch { rank: r, theirs: s.clone(), ours: shape.clone() });
            }
        }
        let max0 = shapes.iter().map(|s| s[0]).max().unwrap_or(0);
        let padded = if shape[0] == max0 {
            t.shallow_clone()
        } else {
            let mut pad_shape = shape.clone();
            pad_shape[0] = max0 - shape[0];
            let pad = Tensor::f_zeros(pad_shape.as_slice(), (t.kind(), t.device()))?;
            tch::no_grad(|| Tensor::f_cat(&[t.detach(), pad], 0))?
        };
        let gathered = self.all_gather(&padded)?;
        gathered.into_iter().zip(&shapes).map(|(g, s)| Ok(g.f_narrow(0, 0, s[0])?)).collect()
    }

    /// Overwrites `t` on every rank with rank `root`'s value. Shapes and dtypes must match.
    pub fn broadcast(&mut self, t: &mut Tensor, root: usize) -> Result<(), DistError> {
        if root >= self.world_size() {
            return Err(DistError::InvalidArgument(format!("broadcast root {root} is not a rank of world_size {}", self.world_size())));
        }
        tch::no_grad(|| {
            let contiguous = t.is_contiguous();
            let mut buf = if contiguous { t.shallow_clone() } else { t.f_contiguous()? };
            // SAFETY: live group; `buf` alive for the call.
            ffi::check(unsafe { ffi::splade_dist_broadcast(self.raw, buf.as_mut_ptr(), root as i32) })
                .map_err(DistError::Collective)?;
            if !contiguous {
                t.f_copy_(&buf)?;
            }
            Ok(())
        })
    }

    /// Returns once every rank has reached the barrier (or fails after the group's timeout).
    pub fn barrier(&mut self) -> Result<(), DistError> {
        // SAFETY: live group.
        ffi::check(unsafe { ffi::splade_dist_barrier(self.raw) }).map_err(DistError::Collective)
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        // SAFETY: `raw` came from splade_dist_group_new and is freed exactly once.
        unsafe { ffi::splade_dist_group_free(self.raw) }
    }
}

fn timeout_ms(d: Duration) -> i64 {
    d.as_millis().min(i64::MAX as u128) as i64
}

fn byte_size(t: &Tensor) -> usize {
    t.numel() * t.kind().elt_size_in_bytes()
}

/// Splits `tensors` into runs of the same dtype and device of at most `bucket_bytes` each
/// (a single larger tensor forms its own run).
fn plan_buckets(tensors: &[Tensor], bucket_bytes: usize) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut size = 0;
    let mut key: Option<(Kind, Device)> = None;
    for (i, t) in tensors.iter().enumerate() {
        let k = (t.kind(), t.device());
        let b = byte_size(t);
        if i > start && (key != Some(k) || size + b > bucket_bytes) {
            out.push(start..i);
            start = i;
            size = 0;
        }
        key = Some(k);
        size += b;
    }
    if start < tensors.len() {
        out.push(start..tensors.len());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_respect_size_and_dtype() {
        let t = |n: i64, k: Kind| Tensor::zeros([n], (k, Device::Cpu));
        // 4-byte floats: 10 elements = 40 bytes.
        let ts = [t(10, Kind::Float), t(10, Kind::Float), t(10, Kind::Float), t(30, Kind::Float), t(2, Kind::Double), t(1, Kind::Float)];
        assert_eq!(plan_buckets(&ts, 80), vec![0..2, 2..3, 3..4, 4..5, 5..6]);
        assert_eq!(plan_buckets(&ts, 1 << 20), vec![0..4, 4..5, 5..6]);
        assert!(plan_buckets(&[], 80).is_empty());
    }
}
