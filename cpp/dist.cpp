// Data parallelism on libtorch's own distributed engine (c10d), the one PyTorch DDP runs on:
// a TCPStore rendezvous, a ProcessGroup with the Gloo backend (CPU) or NCCL (CUDA, built by
// dist_nccl.cpp), its collectives, and DDP's gradient Reducer (flat buckets whose
// all-reduce overlaps the rest of the backward). Nothing here implements a collective or a
// protocol; it only builds c10d's objects and hands them to Rust (src/dist/ffi.rs).
//
// Every entry point returns 0 on success and non-zero on failure, with the message from
// lcm_dist_last_error() on the same thread: no C++ exception crosses into Rust.
#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#ifdef LCM_DIST_GLOO
#define USE_C10D_GLOO
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#endif
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/csrc/distributed/c10d/reducer.hpp>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <string>

namespace {
thread_local std::string last_error;

template <typename F>
int guarded(const char* what, F&& body) {
  try {
    body();
    return 0;
  } catch (const c10::Error& e) {
    last_error = std::string(what) + ": " + e.what_without_backtrace();
  } catch (const std::exception& e) {
    last_error = std::string(what) + ": " + e.what();
  } catch (...) {
    last_error = std::string(what) + ": unknown C++ exception";
  }
  return 1;
}

struct Group {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::ProcessGroup> pg;
};

std::chrono::milliseconds millis(int64_t ms) { return std::chrono::milliseconds(ms); }

c10d::ReduceOp reduce_op(int op) {
  switch (op) {
    case 0: return c10d::ReduceOp::SUM;
    case 1: return c10d::ReduceOp::MAX;
    case 2: return c10d::ReduceOp::MIN;
    case 3: return c10d::ReduceOp::AVG;
  }
  TORCH_CHECK(false, "unknown reduce op ", op);
}
}  // namespace

#ifdef LCM_DIST_NCCL
// dist_nccl.cpp: a ProcessGroupNCCL backend bound to `device`.
c10::intrusive_ptr<c10d::Backend> lcm_make_nccl_backend(const c10::intrusive_ptr<c10d::Store>& store,
                                                        int rank, int world, int64_t timeout_ms,
                                                        int device);
#endif

extern "C" {

const char* lcm_dist_last_error() { return last_error.c_str(); }

// Whether this build can make Gloo process groups.
int lcm_dist_has_gloo() {
#ifdef LCM_DIST_GLOO
  return 1;
#else
  return 0;
#endif
}

// Whether this build can make NCCL process groups.
int lcm_dist_has_nccl() {
#ifdef LCM_DIST_NCCL
  return 1;
#else
  return 0;
#endif
}

// Joins the group of `world` processes whose rank 0 serves the TCPStore at host:port
// (every rank waits for all of them, up to `timeout_ms`). backend: 0 Gloo, 1 NCCL on
// `device`. The timeout also bounds every collective of the group.
int lcm_dist_init(int backend, const char* host, int port, int rank, int world, int64_t timeout_ms,
                  int device, void** out) {
  return guarded("process group", [&] {
    c10d::TCPStoreOptions so;
    so.port = static_cast<uint16_t>(port);
    so.isServer = rank == 0;
    so.numWorkers = world;
    so.waitWorkers = true;
    so.timeout = millis(timeout_ms);
    c10::intrusive_ptr<c10d::Store> store;
    try {
      store = c10::make_intrusive<c10d::TCPStore>(host, so);
    } catch (const std::exception& e) {
      TORCH_CHECK(false, "rank ", rank, " could not ", rank == 0 ? "serve" : "reach",
                  " the rendezvous at MASTER_ADDR:MASTER_PORT = ", host, ":", port, " within ",
                  timeout_ms / 1000, " s (", e.what(), ")");
    }
    auto pg = c10::make_intrusive<c10d::ProcessGroup>(store, rank, world);
    if (backend == 0) {
#ifdef LCM_DIST_GLOO
      auto opts = c10d::ProcessGroupGloo::Options::create(millis(timeout_ms));
      const char* ifname = std::getenv("GLOO_SOCKET_IFNAME");
      opts->devices.push_back(ifname && *ifname
                                  ? c10d::ProcessGroupGloo::createDeviceForInterface(ifname)
                                  : c10d::ProcessGroupGloo::createDefaultDevice());
      auto gloo = c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world, opts);
      pg->setBackend(c10::DeviceType::CPU, c10d::ProcessGroup::BackendType::GLOO, gloo);
      pg->setDefaultBackend(c10d::ProcessGroup::BackendType::GLOO);
#else
      TORCH_CHECK(false, "this lcm was built without Gloo's headers (CPU data parallelism); "
                         "run scripts/setup.sh and rebuild");
#endif
    } else {
#ifdef LCM_DIST_NCCL
      auto nccl = lcm_make_nccl_backend(store, rank, world, timeout_ms, device);
      pg->setBoundDeviceId(at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(device)));
      pg->setBackend(c10::DeviceType::CUDA, c10d::ProcessGroup::BackendType::NCCL, nccl);
      pg->setDefaultBackend(c10d::ProcessGroup::BackendType::NCCL);
#else
      TORCH_CHECK(false, "this lcm was built without NCCL (no CUDA compiler at build time)");
#endif
    }
    pg->setGroupName("lcm");
    *out = new Group{store, pg};
  });
}

void lcm_dist_free(void* group) { delete static_cast<Group*>(group); }

// In-place all-reduce of `n` tensors (one collective each), waited for.
int lcm_dist_all_reduce(void* group, at::Tensor** tensors, int n, int op) {
  return guarded("all_reduce", [&] {
    auto* g = static_cast<Group*>(group);
    std::vector<at::Tensor> ts;
    for (int i = 0; i < n; ++i) ts.push_back(*tensors[i]);
    c10d::AllreduceOptions opts;
    opts.reduceOp = reduce_op(op);
    g->pg->allreduce(ts, opts)->wait();
  });
}

// `t` from rank `root` into every rank's `t`, waited for.
int lcm_dist_broadcast(void* group, at::Tensor* t, int root) {
  return guarded("broadcast", [&] {
    auto* g = static_cast<Group*>(group);
    std::vector<at::Tensor> ts{*t};
    c10d::BroadcastOptions opts;
    opts.rootRank = root;
    g->pg->broadcast(ts, opts)->wait();
  });
}

// Every rank's `in` (same numel) laid end to end, in rank order, into `out`.
int lcm_dist_all_gather(void* group, at::Tensor* out, at::Tensor* in) {
  return guarded("all_gather", [&] {
    auto* g = static_cast<Group*>(group);
    g->pg->_allgather_base(*out, *in)->wait();
  });
}

int lcm_dist_barrier(void* group) {
  return guarded("barrier", [&] { static_cast<Group*>(group)->pg->barrier()->wait(); });
}

// The rendezvous store as a key-value exchange (results of evaluation ranks).
int lcm_dist_store_set(void* group, const char* key, const uint8_t* data, int64_t len) {
  return guarded("store set", [&] {
    static_cast<Group*>(group)->store->set(key, std::vector<uint8_t>(data, data + len));
  });
}

// Waits for `key` (up to the group's timeout); the bytes are malloc'd, freed by the caller
// with lcm_dist_free_bytes.
int lcm_dist_store_get(void* group, const char* key, uint8_t** data, int64_t* len) {
  return guarded("store get", [&] {
    auto v = static_cast<Group*>(group)->store->get(key);
    *len = static_cast<int64_t>(v.size());
    *data = static_cast<uint8_t*>(std::malloc(v.empty() ? 1 : v.size()));
    if (!v.empty()) std::memcpy(*data, v.data(), v.size());
  });
}

void lcm_dist_free_bytes(uint8_t* data) { std::free(data); }

// DDP's Reducer over `params` (leaf tensors that receive gradients), bucketed as DDP does:
// the parameters taken in reverse (gradients of the last layers are ready first), a small
// first bucket (`first_bucket_bytes`) so communication starts early, then buckets of
// `bucket_bytes`. Gradients are averaged over the group (sum / world). Each gradient is a
// view into its bucket (DDP's gradient_as_bucket_view): after the first step the backward
// accumulates straight into the buckets, so no gradient is copied in or out of them (the
// optimizer zeroes gradients in place, which keeps the views).
int lcm_dist_reducer_new(void* group, at::Tensor** params, int n, int64_t bucket_bytes,
                         int64_t first_bucket_bytes, int find_unused, void** out) {
  return guarded("reducer", [&] {
    auto* g = static_cast<Group*>(group);
    std::vector<at::Tensor> ps;
    std::unordered_map<size_t, std::string> names;
    for (int i = 0; i < n; ++i) ps.push_back(*params[i]);
    std::vector<int64_t> reversed(n);
    for (int i = 0; i < n; ++i) reversed[i] = n - 1 - i;
    std::vector<at::Tensor> in_order(ps.rbegin(), ps.rend());
    auto [buckets, limits] = c10d::compute_bucket_assignment_by_size(
        in_order, {static_cast<size_t>(first_bucket_bytes), static_cast<size_t>(bucket_bytes)},
        std::vector<bool>(n, false), reversed);
    std::vector<int64_t> caps(limits.begin(), limits.end());
    *out = new c10d::Reducer(ps, buckets, g->pg, std::vector<bool>(n, false), bucket_bytes,
                             find_unused != 0, /*gradient_as_bucket_view=*/true, names,
                             first_bucket_bytes, /*skip_all_reduce_unused_params=*/false,
                             /*use_python_reducer=*/false, caps);
  });
}

// The number of buckets and their sizes in bytes (`sizes` holds up to `cap` entries).
int lcm_dist_reducer_buckets(void* reducer, int64_t* sizes, int cap, int* count) {
  return guarded("reducer buckets", [&] {
    auto* r = static_cast<c10d::Reducer*>(reducer);
    auto buckets = r->get_grad_buckets(/*return_zero_tensors=*/true);
    *count = static_cast<int>(buckets.size());
    for (int i = 0; i < *count && i < cap; ++i) {
      auto& b = buckets[i].getBufferRef();
      sizes[i] = b.numel() * b.element_size();
    }
  });
}

// Arms the Reducer for the next backward, the one whose gradients are to be averaged
// (the last micro-step of an accumulation); `loss` is that backward's root, from which
// the Reducer finds parameters the forward did not use.
int lcm_dist_reducer_prepare(void* reducer, at::Tensor* loss) {
  return guarded("reducer prepare", [&] {
    static_cast<c10d::Reducer*>(reducer)->prepare_for_backward({*loss});
  });
}

void lcm_dist_reducer_free(void* reducer) { delete static_cast<c10d::Reducer*>(reducer); }

}  // extern "C"
