// Python bindings of sparsekit._C: argument checks and the module definition only.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/extension.h>

#include "sparse24.h"

#define CHECK_CUDA(x) TORCH_CHECK((x).is_cuda(), #x " must be a CUDA tensor")
#define CHECK_CONTIGUOUS(x) TORCH_CHECK((x).is_contiguous(), #x " must be contiguous (call .contiguous())")
#define CHECK_SHAPE(x, ...) \
  TORCH_CHECK((x).sizes() == torch::IntArrayRef({__VA_ARGS__}), #x " must have shape (" #__VA_ARGS__ "), got ", (x).sizes())
#define CHECK_ALIGNED16(x) \
  TORCH_CHECK(reinterpret_cast<uintptr_t>((x).data_ptr()) % 16 == 0, #x " must be 16-byte aligned (call .contiguous())")

namespace {

at::Tensor sparse24_mm(const at::Tensor& x, const at::Tensor& values, const at::Tensor& meta,
                       const std::optional<at::Tensor>& bias) {
  CHECK_CUDA(x);
  CHECK_CUDA(values);
  CHECK_CUDA(meta);
  const auto dtype = x.scalar_type();
  TORCH_CHECK(dtype == at::kHalf || dtype == at::kBFloat16,
              "sparse24_mm (mma.sp) supports float16 and bfloat16, got ", dtype,
              "; use the triton or torch backend for float32");
  TORCH_CHECK(values.scalar_type() == dtype, "values must have x's dtype ", dtype, ", got ", values.scalar_type());
  TORCH_CHECK(meta.scalar_type() == at::kShort, "meta must be int16 (torch's CUTLASS layout), got ", meta.scalar_type());
  TORCH_CHECK(x.dim() == 2, "x must be 2-D (M, K), got ", x.dim(), "-D");
  const int64_t M = x.size(0), K = x.size(1), N = values.size(0);
  TORCH_CHECK(N % 32 == 0 && K % 64 == 0, "the weight must be (N, K) with N % 32 == 0 and K % 64 == 0, got (", N, ", ",
              K, ")");
  TORCH_CHECK(M < (int64_t(1) << 31) && N * K < (int64_t(1) << 40), "problem too large for 32-bit tile indices");
  CHECK_SHAPE(values, N, K / 2);
  CHECK_SHAPE(meta, N, K / 16);
  CHECK_CONTIGUOUS(values);
  CHECK_CONTIGUOUS(meta);
  TORCH_CHECK(x.stride(1) == 1 && x.stride(0) % 8 == 0,
              "x must have unit column stride and a row stride that is a multiple of 8 (call .contiguous())");
  CHECK_ALIGNED16(x);
  CHECK_ALIGNED16(values);
  CHECK_ALIGNED16(meta);
  TORCH_CHECK(values.device() == x.device() && meta.device() == x.device(), "x, values and meta must be on one device");
  const void* bias_ptr = nullptr;
  if (bias.has_value()) {
    const at::Tensor& b = bias.value();
    CHECK_CUDA(b);
    CHECK_CONTIGUOUS(b);
    CHECK_SHAPE(b, N);
    TORCH_CHECK(b.scalar_type() == dtype, "bias must have x's dtype ", dtype, ", got ", b.scalar_type());
    TORCH_CHECK(b.device() == x.device(), "bias must be on x's device");
    bias_ptr = b.data_ptr();
  }

  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor out = at::empty({M, N}, x.options());
  sparsekit::Sparse24MmParams params;
  params.x = x.data_ptr();
  params.x_row_stride = x.stride(0);
  params.values = values.data_ptr();
  params.meta = meta.data_ptr<int16_t>();
  params.bias = bias_ptr;
  params.out = out.data_ptr();
  params.M = static_cast<int>(M);
  params.N = static_cast<int>(N);
  params.K = static_cast<int>(K);
  params.dtype = dtype == at::kBFloat16 ? sparsekit::Sparse24Dtype::kBFloat16 : sparsekit::Sparse24Dtype::kFloat16;
  int num_sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&num_sms, cudaDevAttrMultiProcessorCount, x.get_device()));
  params.num_sms = num_sms;
  const cudaError_t err = sparsekit::run_sparse24_mm(params, c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "sparse24_mm kernel launch failed: ", cudaGetErrorString(err));
  return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "sparsekit CUDA kernels";
  m.def("sparse24_mm", &sparse24_mm,
        "out (M, N) = x (M, K) @ W^T (+ bias) for a 2:4 weight W given as values (N, K/2) and CUTLASS meta (N, K/16), "
        "on sparse tensor cores (mma.sp, sm_80+)",
        py::arg("x"), py::arg("values"), py::arg("meta"), py::arg("bias") = py::none());
}
