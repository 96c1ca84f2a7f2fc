// PROTOTYPE: a TF kernel that calls the Rust core's find through a C function pointer, no GIL.
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"

using namespace tensorflow;

REGISTER_OP("TfraRedisProtoFind")
    .Input("keys: int64")
    .Input("default_row: float")
    .Output("values: float")
    .Attr("table: int")
    .Attr("find_fn: int")
    .Attr("dim: int")
    .SetIsStateful()
    .SetShapeFn([](shape_inference::InferenceContext* c) {
      int dim;
      TF_RETURN_IF_ERROR(c->GetAttr("dim", &dim));
      shape_inference::ShapeHandle out;
      TF_RETURN_IF_ERROR(c->Concatenate(c->input(0), c->Vector(dim), &out));
      c->set_output(0, out);
      return OkStatus();
    });

typedef int (*FindFn)(size_t, const int64_t*, size_t, const uint8_t*, size_t, uint8_t*, size_t,
                      uint8_t*, size_t);

class TfraRedisProtoFindOp : public OpKernel {
 public:
  explicit TfraRedisProtoFindOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    int64_t t, f;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("table", &t));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("find_fn", &f));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("dim", &dim_));
    table_ = static_cast<size_t>(t);
    fn_ = reinterpret_cast<FindFn>(f);
  }
  void Compute(OpKernelContext* ctx) override {
    const Tensor& keys = ctx->input(0);
    const Tensor& def = ctx->input(1);
    TensorShape shape = keys.shape();
    shape.AddDim(dim_);
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, shape, &out));
    const size_t n = keys.NumElements();
    uint8_t err[512];
    int rc = fn_(table_, keys.flat<int64_t>().data(), n,
                 reinterpret_cast<const uint8_t*>(def.flat<float>().data()), dim_ * 4,
                 reinterpret_cast<uint8_t*>(out->flat<float>().data()), n * dim_ * 4, err,
                 sizeof err);
    OP_REQUIRES(ctx, rc == 0, errors::Unavailable(reinterpret_cast<char*>(err)));
  }
 private:
  size_t table_;
  FindFn fn_;
  int dim_;
};

REGISTER_KERNEL_BUILDER(Name("TfraRedisProtoFind").Device(DEVICE_CPU), TfraRedisProtoFindOp);
