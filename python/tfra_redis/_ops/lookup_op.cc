// The native lookup op of tfra-redis: `TfraRedisLookup`, a TensorFlow kernel that reads rows
// from a RedisTable through the Rust core, with no Python and no GIL in the op.
//
// Built by tfra_redis.native_ops.build() (or `tfra-redis build-ops`) against the installed
// TensorFlow's headers, and loaded with tf.load_op_library. The kernel does not link against
// tfra_redis._native: Python passes it the address of the Rust entry point (find_v1 in
// rust/tfra-redis-py/src/native_op.rs) once, through tfra_redis_ops_bind. A graph names its
// table by a registry handle plus the process's token, never by an address, so a graph whose
// table is gone, or that was traced in another process, fails with an error.
//
// The kernel is asynchronous: the Redis round trip runs on the op library's own thread pool
// (TFRA_REDIS_OPS_THREADS threads, default 16), not on one of TensorFlow's inter-op threads,
// of which there are as many as cores. A synchronous kernel would cap the lookups in flight at
// that number however many callers there are: 2 on a 2-core machine, 2 per round trip.
// TFRA_REDIS_OPS_THREADS=0 runs the lookup on the inter-op thread instead, with no hand-off:
// cheaper when Redis is on the same host and the cores, not the round trips, are the limit.

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/platform/env.h"
#include "tensorflow/core/platform/threadpool.h"

namespace {

using tensorflow::AsyncOpKernel;
using tensorflow::DataType;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;
using tensorflow::Tensor;
using tensorflow::TensorShape;
namespace shape_inference = tensorflow::shape_inference;

// Must equal native_op::ABI_VERSION on the Rust side; bind refuses any other version.
constexpr uint32_t kAbiVersion = 1;

// The Rust entry point, ABI version 1 (native_op::find_v1).
typedef int32_t (*FindV1)(uint64_t handle, uint64_t token, int32_t key_kind, const uint8_t* keys,
                          uint64_t n, int32_t value_dtype, const uint8_t* defaults,
                          uint64_t defaults_len, uint8_t* out, uint64_t out_len, uint8_t* exists,
                          uint8_t* message, uint64_t message_len);

// Status codes of find_v1 (native_op::code).
enum : int32_t {
  kOk = 0,
  kInvalidArgument = 1,
  kUnavailable = 2,
  kFailedPrecondition = 3,
  kInternal = 4,
  kPermissionDenied = 5,
};

std::atomic<FindV1> g_find{nullptr};

const uint8_t* bytes_of(const Tensor& t) {
  return reinterpret_cast<const uint8_t*>(t.tensor_data().data());
}

uint8_t* mutable_bytes_of(Tensor* t) {
  // The output tensors are freshly allocated by this kernel and not shared yet.
  return reinterpret_cast<uint8_t*>(const_cast<char*>(t->tensor_data().data()));
}

// The variable naming the lookup thread pool's size, and its default. The default stays below
// the Rust core's default redis_conn_pool_size (20 connections per pool), so the threads do not
// queue for a connection; more threads than connections only wait for one.
constexpr char kThreadsEnv[] = "TFRA_REDIS_OPS_THREADS";
constexpr int kDefaultThreads = 16;
constexpr int kMaxThreads = 1024;

// The threads the lookups run on, one pool per process, created by the first kernel and sized
// by TFRA_REDIS_OPS_THREADS then. Never destroyed: a pool joins its threads when destroyed,
// which at process exit could wait on a lookup that still runs.
struct LookupPool {
  absl::Status status;
  // Null with an OK status for TFRA_REDIS_OPS_THREADS=0: lookups run inline.
  tensorflow::thread::ThreadPool* pool = nullptr;
};

const LookupPool& lookup_pool() {
  static const LookupPool* const shared = [] {
    auto* made = new LookupPool;
    int threads = kDefaultThreads;
    if (const char* text = std::getenv(kThreadsEnv); text != nullptr && *text != 0) {
      char* end = nullptr;
      const long parsed = std::strtol(text, &end, 10);
      if (*end != 0 || parsed < 0 || parsed > kMaxThreads) {
        made->status = absl::InvalidArgumentError(
            absl::StrCat(kThreadsEnv, " must be a whole number from 0 (no pool) to ",
                         kMaxThreads, ", got '", text, "'"));
        return made;
      }
      threads = static_cast<int>(parsed);
    }
    if (threads == 0) return made;
    made->pool = new tensorflow::thread::ThreadPool(tensorflow::Env::Default(),
                                                    "tfra_redis_lookup", threads);
    return made;
  }();
  return *shared;
}

absl::Status status_of(int32_t rc, const std::string& table_name, const uint8_t* message) {
  const std::string text = absl::StrCat("lookup in RedisTable '", table_name,
                                        "': ", reinterpret_cast<const char*>(message));
  switch (rc) {
    case kInvalidArgument:
      return absl::InvalidArgumentError(text);
    case kUnavailable:
      return absl::UnavailableError(text);
    case kFailedPrecondition:
      return absl::FailedPreconditionError(text);
    case kPermissionDenied:
      return absl::PermissionDeniedError(text);
    default:
      return absl::InternalError(text);
  }
}

}  // namespace

extern "C" {

// Called once by tfra_redis.native_ops after tf.load_op_library: the address of find_v1 and
// the ABI version the Python side speaks. Returns 0, or 1 when the versions differ.
int tfra_redis_ops_bind(uint64_t find_address, uint32_t abi_version) {
  if (abi_version != kAbiVersion) return 1;
  g_find.store(reinterpret_cast<FindV1>(find_address), std::memory_order_release);
  return 0;
}

// The ABI version this library was built with.
uint32_t tfra_redis_ops_abi_version() { return kAbiVersion; }

}  // extern "C"

REGISTER_OP("TfraRedisLookup")
    .Input("keys: Tkeys")
    .Input("defaults: value_dtype")
    .Output("values: value_dtype")
    .Output("exists: bool")
    .Attr("Tkeys: {int32, int64}")
    .Attr("value_dtype: {float, double, half, bfloat16, int32, int64, int8}")
    .Attr("table_handle: int")
    .Attr("process_token: int")
    .Attr("table_name: string = ''")
    .Attr("dim: int >= 1")
    .Attr("return_exists: bool = false")
    // Reads Redis: never constant-folded, deduplicated or cached.
    .SetIsStateful()
    // It talks to a server over the network: without this TensorFlow replaces the
    // UnavailableError of a transient Redis failure by an InternalError.
    .SetIsDistributedCommunication()
    .SetShapeFn([](shape_inference::InferenceContext* c) {
      int64_t dim;
      bool return_exists;
      TF_RETURN_IF_ERROR(c->GetAttr("dim", &dim));
      TF_RETURN_IF_ERROR(c->GetAttr("return_exists", &return_exists));
      shape_inference::ShapeHandle values;
      TF_RETURN_IF_ERROR(c->Concatenate(c->input(0), c->Vector(dim), &values));
      c->set_output(0, values);
      c->set_output(1, return_exists ? c->input(0) : c->Vector(0));
      return absl::OkStatus();
    })
    .Doc(R"doc(
Rows of a tfra-redis RedisTable for `keys`, shaped keys.shape + [dim]. Missing keys get
`defaults`: one row ([dim]) or one row per key (keys.shape + [dim]). With return_exists,
`exists` says which keys were stored (else it is empty).
)doc");

class TfraRedisLookupOp : public AsyncOpKernel {
 public:
  explicit TfraRedisLookupOp(OpKernelConstruction* ctx) : AsyncOpKernel(ctx) {
    int64_t handle, token;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("table_handle", &handle));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("process_token", &token));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("table_name", &table_name_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("dim", &dim_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("return_exists", &return_exists_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("value_dtype", &value_dtype_));
    OP_REQUIRES_OK(ctx, lookup_pool().status);
    handle_ = static_cast<uint64_t>(handle);
    token_ = static_cast<uint64_t>(token);
  }

  void ComputeAsync(OpKernelContext* ctx, DoneCallback done) override {
    FindV1 find = g_find.load(std::memory_order_acquire);
    OP_REQUIRES_ASYNC(
        ctx, find != nullptr,
        absl::FailedPreconditionError(
            "the tfra-redis op library is loaded but not bound to tfra_redis._native; "
            "load it with tfra_redis.native_ops.load(), not tf.load_op_library alone"),
        done);
    // Tensors share their buffers: these copies keep the inputs alive on the pool's thread.
    const Tensor keys = ctx->input(0);
    const Tensor defaults = ctx->input(1);
    const int64_t n = keys.NumElements();
    TensorShape values_shape = keys.shape();
    OP_REQUIRES_OK_ASYNC(ctx, values_shape.AddDimWithStatus(dim_), done);
    Tensor* values = nullptr;
    OP_REQUIRES_OK_ASYNC(ctx, ctx->allocate_output(0, values_shape, &values), done);
    Tensor* exists = nullptr;
    OP_REQUIRES_OK_ASYNC(
        ctx, ctx->allocate_output(1, return_exists_ ? keys.shape() : TensorShape({0}), &exists),
        done);
    if (n == 0) {  // any defaults fit no keys, per-key ones of shape [0, dim] too
      done();
      return;
    }
    OP_REQUIRES_ASYNC(ctx, defaults.NumElements() == dim_ || defaults.NumElements() == n * dim_,
                      absl::InvalidArgumentError(absl::StrCat(
                          "lookup in RedisTable '", table_name_, "': defaults must hold one row of ",
                          dim_, " values or one row per key (", n, " keys), got shape ",
                          defaults.shape().DebugString())),
                      done);

    // ctx and the outputs stay valid until done() is called; the kernel (this) outlives it.
    auto run = [this, ctx, find, keys, defaults, n, values, exists, done = std::move(done)]() {
      const int32_t key_kind = keys.dtype() == tensorflow::DT_INT64 ? 0 : 1;
      uint8_t message[1024];
      message[0] = 0;
      const int32_t rc = find(
          handle_, token_, key_kind, bytes_of(keys), static_cast<uint64_t>(n),
          static_cast<int32_t>(value_dtype_), bytes_of(defaults), defaults.tensor_data().size(),
          mutable_bytes_of(values), values->tensor_data().size(),
          return_exists_ ? mutable_bytes_of(exists) : nullptr, message, sizeof message);
      if (rc != kOk) ctx->SetStatus(status_of(rc, table_name_, message));
      done();
    };
    if (tensorflow::thread::ThreadPool* pool = lookup_pool().pool) {
      pool->Schedule(std::move(run));
    } else {
      run();
    }
  }

 private:
  uint64_t handle_;
  uint64_t token_;
  std::string table_name_;
  int64_t dim_;
  bool return_exists_;
  DataType value_dtype_;
};

REGISTER_KERNEL_BUILDER(Name("TfraRedisLookup").Device(tensorflow::DEVICE_CPU), TfraRedisLookupOp);
