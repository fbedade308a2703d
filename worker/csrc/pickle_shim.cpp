// Reading a `torch.save` archive of a state dict (`pytorch_model.bin`, what NorBERT4's converter and
// transformers 4 write) for the Rust weight loader. tch's `loadz_multi` goes through libtorch's
// mobile parameter loader, which rejects the `collections.OrderedDict` that `model.state_dict()`
// pickles as; `torch::pickle_load` is the C++ side of `torch.load` and reads it.
//
// Contract: plain C ABI; returns NULL on success or a malloc'ed, NUL-terminated error message the
// caller releases with `splade_dist_free_error` (the dist shim's); no C++ exception crosses it.
#include <cstdlib>
#include <cstring>
#include <exception>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include <torch/serialize.h>

namespace {
char* error(const std::string& msg) {
  char* out = static_cast<char*>(std::malloc(msg.size() + 1));
  if (out) std::memcpy(out, msg.c_str(), msg.size() + 1);
  return out;
}
}  // namespace

extern "C" {

// Calls `f(ctx, name, tensor)` for every (string key, tensor value) of the dict pickled in `path`;
// `tensor` is a heap-allocated at::Tensor the callee owns. Entries that are not tensors (a
// converter's metadata) are skipped.
char* splade_pickle_load_state_dict(const char* path, void* ctx, void (*f)(void*, const char*, void*)) {
  try {
    std::ifstream in(path, std::ios::binary);
    if (!in) return error("cannot open the file");
    std::vector<char> data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    c10::IValue value = torch::pickle_load(data);
    if (!value.isGenericDict()) return error("holds a " + value.tagKind() + ", not a dict of tensors");
    for (const auto& entry : value.toGenericDict()) {
      if (!entry.key().isString() || !entry.value().isTensor()) continue;
      f(ctx, entry.key().toStringRef().c_str(), new at::Tensor(entry.value().toTensor()));
    }
    return nullptr;
  } catch (const std::exception& e) {
    return error(e.what());
  }
}

}  // extern "C"
