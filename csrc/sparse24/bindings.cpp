// sparsekit._C: argument checks, the torch operators (TORCH_LIBRARY "sparsekit", CUDA and Meta kernels) and
// the Python module.
//
//   torch.ops.sparsekit.sp24_linear(x, values, meta, bias, workspace, rows=0, stages=0, perm=None)  M <= 64 (sp24_decode)
//   torch.ops.sparsekit.sp24_mm(x, values, meta, bias, perm=None)                                 any M (tiled mma.sp)
//   perm: (K,) int32 input permutation, out = x[:, perm] @ W^T (gathered in the kernels' x loads)
//   torch.ops.sparsekit.sp24_decompress(values, meta, out)                           dense W into out (N, K)
//   sparsekit._C.sp24_decode_workspace_bytes(num_sms)  bytes of the sp24_linear workspace (zeros at creation)
//   sparsekit._C.sparse24_mm(...)                       = sp24_mm, kept for older callers
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/extension.h>
#include <torch/library.h>

#include <array>
#include <mutex>

#include "sparse24.h"

#define CHECK_CUDA(x) TORCH_CHECK((x).is_cuda(), #x " must be a CUDA tensor")
#define CHECK_CONTIGUOUS(x) TORCH_CHECK((x).is_contiguous(), #x " must be contiguous (call .contiguous())")
#define CHECK_SHAPE(x, ...) \
  TORCH_CHECK((x).sizes() == torch::IntArrayRef({__VA_ARGS__}), #x " must have shape (" #__VA_ARGS__ "), got ", (x).sizes())
#define CHECK_ALIGNED16(x) \
  TORCH_CHECK(reinterpret_cast<uintptr_t>((x).data_ptr()) % 16 == 0, #x " must be 16-byte aligned (call .contiguous())")

namespace {

struct DeviceInfo {
  int num_sms = 0;
  int max_smem_optin = 0;
};

// Queried once per device: attribute queries on every call cost host time.
const DeviceInfo& device_info(int device) {
  static std::array<DeviceInfo, 64> infos;
  static std::array<std::once_flag, 64> once;
  TORCH_CHECK(device >= 0 && device < 64, "device index ", device, " out of range");
  std::call_once(once[device], [device] {
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&infos[device].num_sms, cudaDevAttrMultiProcessorCount, device));
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&infos[device].max_smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  });
  return infos[device];
}

sparsekit::Sparse24Dtype kernel_dtype(const at::Tensor& x) {
  return x.scalar_type() == at::kBFloat16 ? sparsekit::Sparse24Dtype::kBFloat16 : sparsekit::Sparse24Dtype::kFloat16;
}

// Shape and dtype checks shared by the CUDA and Meta kernels; returns (M, N, K).
std::array<int64_t, 3> check_shapes(const char* op, const at::Tensor& x, const at::Tensor& values, const at::Tensor& meta,
                                    const std::optional<at::Tensor>& bias, int64_t k_multiple) {
  const auto dtype = x.scalar_type();
  TORCH_CHECK(dtype == at::kHalf || dtype == at::kBFloat16, op, " (mma.sp) supports float16 and bfloat16, got ", dtype,
              "; use the triton or torch backend for float32");
  TORCH_CHECK(values.scalar_type() == dtype, "values must have x's dtype ", dtype, ", got ", values.scalar_type());
  TORCH_CHECK(meta.scalar_type() == at::kShort, "meta must be int16 (torch's CUTLASS layout), got ", meta.scalar_type());
  TORCH_CHECK(x.dim() == 2, "x must be 2-D (M, K), got ", x.dim(), "-D");
  TORCH_CHECK(values.dim() == 2, "values must be 2-D (N, K/2), got ", values.dim(), "-D");
  const int64_t M = x.size(0), K = x.size(1), N = values.size(0);
  TORCH_CHECK(N % 32 == 0 && K % k_multiple == 0, op, " needs the weight (N, K) with N % 32 == 0 and K % ", k_multiple,
              " == 0, got (", N, ", ", K, ")");
  TORCH_CHECK(M < (int64_t(1) << 31) && N * K < (int64_t(1) << 40), "problem too large for 32-bit tile indices");
  CHECK_SHAPE(values, N, K / 2);
  CHECK_SHAPE(meta, N, K / 16);
  if (bias.has_value()) {
    CHECK_SHAPE(bias.value(), N);
    TORCH_CHECK(bias->scalar_type() == dtype, "bias must have x's dtype ", dtype, ", got ", bias->scalar_type());
  }
  return {M, N, K};
}

void check_memory(const at::Tensor& x, const at::Tensor& values, const at::Tensor& meta,
                  const std::optional<at::Tensor>& bias) {
  CHECK_CUDA(x);
  CHECK_CUDA(values);
  CHECK_CUDA(meta);
  CHECK_CONTIGUOUS(values);
  CHECK_CONTIGUOUS(meta);
  TORCH_CHECK(x.stride(1) == 1 && x.stride(0) % 8 == 0,
              "x must have unit column stride and a row stride that is a multiple of 8 (call .contiguous())");
  CHECK_ALIGNED16(x);
  CHECK_ALIGNED16(values);
  CHECK_ALIGNED16(meta);
  TORCH_CHECK(values.device() == x.device() && meta.device() == x.device(), "x, values and meta must be on one device");
  if (bias.has_value()) {
    CHECK_CUDA(bias.value());
    CHECK_CONTIGUOUS(bias.value());
    TORCH_CHECK(bias->device() == x.device(), "bias must be on x's device");
  }
}

// perm: (K,) int32, contiguous, 16-byte aligned, on x's device (its content is the caller's: no host sync).
const int32_t* perm_pointer(const std::optional<at::Tensor>& perm, const at::Tensor& x, int64_t K) {
  if (!perm.has_value()) return nullptr;
  const at::Tensor& p = perm.value();
  TORCH_CHECK(p.scalar_type() == at::kInt, "perm must be int32 (the kernels read it as such), got ", p.scalar_type());
  CHECK_SHAPE(p, K);
  CHECK_CUDA(p);
  CHECK_CONTIGUOUS(p);
  CHECK_ALIGNED16(p);
  TORCH_CHECK(p.device() == x.device(), "perm must be on x's device");
  return p.data_ptr<int32_t>();
}

at::Tensor sparse24_mm(const at::Tensor& x, const at::Tensor& values, const at::Tensor& meta,
                       const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& perm) {
  const auto [M, N, K] = check_shapes("sp24_mm", x, values, meta, bias, 64);
  check_memory(x, values, meta, bias);
  const int32_t* perm_ptr = perm_pointer(perm, x, K);
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor out = at::empty({M, N}, x.options());
  sparsekit::Sparse24MmParams params;
  params.x = x.data_ptr();
  params.x_row_stride = x.stride(0);
  params.values = values.data_ptr();
  params.meta = meta.data_ptr<int16_t>();
  params.bias = bias.has_value() ? bias->data_ptr() : nullptr;
  params.out = out.data_ptr();
  params.M = static_cast<int>(M);
  params.N = static_cast<int>(N);
  params.K = static_cast<int>(K);
  params.dtype = kernel_dtype(x);
  params.device = x.get_device();
  params.num_sms = device_info(params.device).num_sms;
  params.perm = perm_ptr;
  const cudaError_t err = sparsekit::run_sparse24_mm(params, c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "sparse24_mm kernel launch failed: ", cudaGetErrorString(err));
  return out;
}

at::Tensor sp24_linear_cuda(const at::Tensor& x, const at::Tensor& values, const at::Tensor& meta,
                            const std::optional<at::Tensor>& bias, const at::Tensor& workspace, int64_t rows,
                            int64_t stages, const std::optional<at::Tensor>& perm) {
  const auto [M, N, K] = check_shapes("sp24_linear", x, values, meta, bias, 32);
  const int32_t* perm_ptr = perm.has_value() ? perm_pointer(perm, x, K) : nullptr;
  TORCH_CHECK(M <= sparsekit::kSp24DecodeMaxM, "sp24_linear is the few-token kernel: M must be <= ",
              sparsekit::kSp24DecodeMaxM, ", got ", M, "; use sp24_mm (or the cublas provider) for more tokens");
  TORCH_CHECK(rows == 0 || rows == 128 || rows == 256, "rows must be 0 (automatic), 128 or 256, got ", rows);
  TORCH_CHECK(stages >= 0 && stages <= 8 && stages != 1, "stages must be 0 (automatic) or 2..8, got ", stages);
  check_memory(x, values, meta, bias);
  CHECK_CUDA(workspace);
  CHECK_CONTIGUOUS(workspace);
  TORCH_CHECK(workspace.device() == x.device(), "workspace must be on x's device");
  const c10::cuda::CUDAGuard guard(x.device());
  const int device = x.get_device();
  const DeviceInfo& info = device_info(device);
  const int64_t need = sparsekit::sp24_decode_workspace_bytes(info.num_sms);
  TORCH_CHECK(workspace.nbytes() >= static_cast<size_t>(need), "workspace has ", workspace.nbytes(), " bytes, needs ",
              need, " (sparsekit._C.sp24_decode_workspace_bytes(num_sms), zero-filled once at creation)");
  CHECK_ALIGNED16(workspace);
  at::Tensor out = at::empty({M, N}, x.options());
  sparsekit::Sp24DecodeParams p;
  p.x = x.data_ptr();
  p.x_row_stride = x.stride(0);
  p.values = values.data_ptr();
  p.meta = meta.data_ptr<int16_t>();
  p.bias = bias.has_value() ? bias->data_ptr() : nullptr;
  p.out = out.data_ptr();
  p.M = static_cast<int>(M);
  p.N = static_cast<int>(N);
  p.K = static_cast<int>(K);
  p.dtype = kernel_dtype(x);
  p.num_sms = info.num_sms;
  p.max_smem_optin = info.max_smem_optin;
  p.device = device;
  p.workspace = workspace.data_ptr();
  p.workspace_bytes = static_cast<int64_t>(workspace.nbytes());
  p.rows = static_cast<int>(rows);
  p.stages = static_cast<int>(stages);
  p.perm = perm_ptr;
  const cudaError_t err = sparsekit::run_sp24_decode(p, c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "sp24_linear (sp24_decode) launch failed: ", cudaGetErrorString(err),
              err == cudaErrorInvalidValue ? " (stages too many for this GPU's shared memory?)" : "");
  return out;
}

void sp24_decompress_cuda(const at::Tensor& values, const at::Tensor& meta, const at::Tensor& out) {
  TORCH_CHECK(values.dim() == 2 && (values.scalar_type() == at::kHalf || values.scalar_type() == at::kBFloat16),
              "values must be a 2-D float16/bfloat16 tensor (N, K/2)");
  const int64_t N = values.size(0), K = values.size(1) * 2;
  TORCH_CHECK(N % 32 == 0 && K % 32 == 0, "sp24_decompress needs N % 32 == 0 and K % 32 == 0, got (", N, ", ", K, ")");
  TORCH_CHECK(meta.scalar_type() == at::kShort, "meta must be int16, got ", meta.scalar_type());
  CHECK_SHAPE(meta, N, K / 16);
  CHECK_SHAPE(out, N, K);
  TORCH_CHECK(out.scalar_type() == values.scalar_type(), "out must have values' dtype");
  TORCH_CHECK(N * K < (int64_t(1) << 40), "weight too large");
  CHECK_CUDA(values);
  CHECK_CUDA(meta);
  CHECK_CUDA(out);
  CHECK_CONTIGUOUS(values);
  CHECK_CONTIGUOUS(meta);
  CHECK_CONTIGUOUS(out);
  CHECK_ALIGNED16(values);
  CHECK_ALIGNED16(meta);
  CHECK_ALIGNED16(out);
  TORCH_CHECK(meta.device() == values.device() && out.device() == values.device(), "values, meta and out must be on one device");
  const c10::cuda::CUDAGuard guard(values.device());
  const cudaError_t err = sparsekit::run_sp24_decompress(values.data_ptr(), meta.data_ptr<int16_t>(), out.data_ptr(),
                                                         static_cast<int>(N), static_cast<int>(K),
                                                         device_info(values.get_device()).num_sms,
                                                         c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "sp24_decompress launch failed: ", cudaGetErrorString(err));
}

at::Tensor sp24_linear_meta(const at::Tensor& x, const at::Tensor& values, const at::Tensor& meta,
                            const std::optional<at::Tensor>& bias, const at::Tensor& workspace, int64_t rows,
                            int64_t stages, const std::optional<at::Tensor>& perm) {
  const auto [M, N, K] = check_shapes("sp24_linear", x, values, meta, bias, 32);
  if (perm.has_value()) CHECK_SHAPE(perm.value(), K);
  TORCH_CHECK(M <= sparsekit::kSp24DecodeMaxM, "sp24_linear: M must be <= ", sparsekit::kSp24DecodeMaxM, ", got ", M);
  return at::empty({M, N}, x.options());
}

at::Tensor sp24_mm_meta(const at::Tensor& x, const at::Tensor& values, const at::Tensor& meta,
                        const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& perm) {
  const auto [M, N, K] = check_shapes("sp24_mm", x, values, meta, bias, 64);
  if (perm.has_value()) CHECK_SHAPE(perm.value(), K);
  return at::empty({M, N}, x.options());
}

void sp24_decompress_meta(const at::Tensor& values, const at::Tensor& meta, const at::Tensor& out) {
  CHECK_SHAPE(out, values.size(0), values.size(1) * 2);
}

}  // namespace

// The workspace is scratch that every call leaves as it found it (counters back to zero), so the schema does
// not mark it as mutated: torch.compile then neither clones nor reorders around it. One per stream.
TORCH_LIBRARY(sparsekit, m) {
  m.def("sp24_linear(Tensor x, Tensor values, Tensor meta, Tensor? bias, Tensor workspace, int rows=0, int stages=0, "
        "Tensor? perm=None) -> Tensor");
  m.def("sp24_mm(Tensor x, Tensor values, Tensor meta, Tensor? bias, Tensor? perm=None) -> Tensor");
  m.def("sp24_decompress(Tensor values, Tensor meta, Tensor(a!) out) -> ()");
}

TORCH_LIBRARY_IMPL(sparsekit, CUDA, m) {
  m.impl("sp24_linear", &sp24_linear_cuda);
  m.impl("sp24_mm", &sparse24_mm);
  m.impl("sp24_decompress", &sp24_decompress_cuda);
}

TORCH_LIBRARY_IMPL(sparsekit, Meta, m) {
  m.impl("sp24_linear", &sp24_linear_meta);
  m.impl("sp24_mm", &sp24_mm_meta);
  m.impl("sp24_decompress", &sp24_decompress_meta);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "sparsekit CUDA kernels (the operators are torch.ops.sparsekit.sp24_linear / sp24_mm)";
  m.def("sparse24_mm", &sparse24_mm,
        "out (M, N) = x (M, K) @ W^T (+ bias) for a 2:4 weight W given as values (N, K/2) and CUTLASS meta (N, K/16), "
        "on sparse tensor cores (mma.sp, sm_80+)",
        py::arg("x"), py::arg("values"), py::arg("meta"), py::arg("bias") = py::none(), py::arg("perm") = py::none());
  m.def("sp24_decode_workspace_bytes", &sparsekit::sp24_decode_workspace_bytes,
        "bytes of the sp24_linear workspace for a device with num_sms SMs (allocate zero-filled, one per stream)",
        py::arg("num_sms"));
  m.def("sp24_decode_flag_bytes", &sparsekit::sp24_decode_flag_bytes,
        "leading bytes of the workspace holding the split-tile counters (zero between calls)", py::arg("num_sms"));
}
