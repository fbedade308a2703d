// A thin C ABI over libtorch's c10d (TCPStore, PrefixStore, ProcessGroupGloo and, with
// SPLADE_WITH_NCCL, ProcessGroupNCCL) for the Rust `dist` module.
//
// Contract with the Rust side:
//   * every function returns NULL on success or a malloc'ed, NUL-terminated error message that
//     the caller releases with `splade_dist_free_error`; no C++ exception ever crosses this ABI;
//   * tensors are `at::Tensor*` exactly as torch-sys hands them out (`typedef torch::Tensor
//     *tensor` in libtch/torch_api.h); the shim never takes ownership of them;
//   * handles (`splade_dist_store`, `splade_dist_group`) are heap objects owned by the caller
//     and released with the matching `_free` function.
#include <cstdlib>
#include <cstring>
#include <chrono>
#include <exception>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/csrc/distributed/c10d/Work.hpp>
#ifdef SPLADE_WITH_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

extern "C" {

struct splade_dist_store {
  c10::intrusive_ptr<c10d::Store> store;
};

struct splade_dist_group {
  c10::intrusive_ptr<c10d::Backend> backend;
  std::chrono::milliseconds timeout;
};

}  // extern "C"

namespace {

char* dup_error(const std::string& msg) {
  char* out = static_cast<char*>(std::malloc(msg.size() + 1));
  // NULL would read as success; with no memory for a message there is no honest way on.
  if (out == nullptr) std::abort();
  std::memcpy(out, msg.data(), msg.size());
  out[msg.size()] = '\0';
  return out;
}

// Runs `f`, turning any exception into an error string. c10::Error carries a backtrace in
// what(); the backtrace-free message is what a user can act on.
template <typename F>
char* guarded(F&& f) {
  try {
    f();
    return nullptr;
  } catch (const c10::Error& e) {
    return dup_error(e.what_without_backtrace());
  } catch (const std::exception& e) {
    return dup_error(e.what());
  } catch (...) {
    return dup_error("unknown C++ exception in c10d");
  }
}

// Waits for `work`, rethrowing its failure. Work::wait(timeout) returns normally only on
// success; it throws on a collective failure or when the timeout expires.
void wait_work(const c10::intrusive_ptr<c10d::Work>& work, std::chrono::milliseconds timeout) {
  work->wait(timeout);
}

}  // namespace

extern "C" {

void splade_dist_free_error(char* err) { std::free(err); }

char* splade_dist_store_new(const char* host, uint16_t port, int is_master, int world_size,
                            int64_t timeout_ms, splade_dist_store** out) {
  *out = nullptr;
  return guarded([&] {
    c10d::TCPStoreOptions opts;
    opts.port = port;
    opts.isServer = is_master != 0;
    opts.numWorkers = world_size;
    // The master blocks until all `world_size` clients have connected (or the timeout expires),
    // so a missing peer is reported here rather than as a hang in the first collective.
    opts.waitWorkers = true;
    opts.timeout = std::chrono::milliseconds(timeout_ms);
    auto store = c10::make_intrusive<c10d::TCPStore>(std::string(host), opts);
    *out = new splade_dist_store{store};
  });
}

char* splade_dist_store_port(splade_dist_store* s, uint16_t* port) {
  return guarded([&] {
    auto* tcp = dynamic_cast<c10d::TCPStore*>(s->store.get());
    TORCH_CHECK(tcp != nullptr, "store is not a TCPStore");
    *port = tcp->getPort();
  });
}

void splade_dist_store_free(splade_dist_store* s) {
  try {
    delete s;
  } catch (...) {
    // Destructors of c10d objects do not throw in practice; never let one unwind into Rust.
  }
}

// backend: 0 = Gloo, 1 = NCCL. `prefix` namespaces every key this group writes to the store.
// `gloo_host`: address the Gloo transport binds to (NULL or "" = libtorch's default, i.e. the
// address this machine's hostname resolves to, falling back to loopback).
char* splade_dist_group_new(splade_dist_store* s, const char* prefix, int backend, int rank,
                            int world_size, int64_t timeout_ms, const char* gloo_host,
                            splade_dist_group** out) {
  *out = nullptr;
  return guarded([&] {
    auto timeout = std::chrono::milliseconds(timeout_ms);
    auto store = c10::make_intrusive<c10d::PrefixStore>(std::string(prefix), s->store);
    c10::intrusive_ptr<c10d::Backend> pg;
    if (backend == 0) {
      auto opts = c10d::ProcessGroupGloo::Options::create(timeout);
      if (gloo_host != nullptr && gloo_host[0] != '\0') {
        opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(gloo_host));
      } else {
        opts->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
      }
      pg = c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world_size, opts);
    } else if (backend == 1) {
#ifdef SPLADE_WITH_NCCL
      auto opts = c10d::ProcessGroupNCCL::Options::create();
      opts->timeout = timeout;
      pg = c10::make_intrusive<c10d::ProcessGroupNCCL>(store, rank, world_size, opts);
#else
      TORCH_CHECK(false, "NCCL backend requested but splade-worker was built without the `cuda` feature");
#endif
    } else {
      TORCH_CHECK(false, "unknown backend id ", backend);
    }
    *out = new splade_dist_group{pg, timeout};
  });
}

void splade_dist_group_free(splade_dist_group* g) {
  try {
    delete g;
  } catch (...) {
  }
}

// Sums each tensor in `tensors` across ranks in place: one all-reduce per tensor, all launched
// before any is waited on so the backend may overlap them.
char* splade_dist_all_reduce_sum(splade_dist_group* g, at::Tensor** tensors, size_t n) {
  return guarded([&] {
    std::vector<c10::intrusive_ptr<c10d::Work>> works;
    works.reserve(n);
    c10d::AllreduceOptions opts;
    opts.reduceOp = c10d::ReduceOp::SUM;
    for (size_t i = 0; i < n; ++i) {
      std::vector<at::Tensor> one{*tensors[i]};
      works.push_back(g->backend->allreduce(one, opts));
    }
    for (auto& w : works) wait_work(w, g->timeout);
  });
}

// Gathers `input` from every rank into `outputs[0..world_size]` (rank order); each output must
// already have the input's shape, dtype and device.
char* splade_dist_all_gather(splade_dist_group* g, at::Tensor* input, at::Tensor** outputs,
                             size_t world_size) {
  return guarded([&] {
    std::vector<at::Tensor> outs;
    outs.reserve(world_size);
    for (size_t i = 0; i < world_size; ++i) outs.push_back(*outputs[i]);
    std::vector<std::vector<at::Tensor>> out_lists{outs};
    std::vector<at::Tensor> ins{*input};
    wait_work(g->backend->allgather(out_lists, ins), g->timeout);
  });
}

char* splade_dist_broadcast(splade_dist_group* g, at::Tensor* tensor, int root) {
  return guarded([&] {
    c10d::BroadcastOptions opts;
    opts.rootRank = root;
    opts.rootTensor = 0;
    std::vector<at::Tensor> one{*tensor};
    wait_work(g->backend->broadcast(one, opts), g->timeout);
  });
}

char* splade_dist_barrier(splade_dist_group* g) {
  return guarded([&] { wait_work(g->backend->barrier(), g->timeout); });
}

}  // extern "C"
