// Fused USF combination on CUDA:  out = sum_k c_k * in_k  (and optionally out2 = sum_k c2_k * in_k).
//
// One pass over memory with 16-byte vector loads/stores where sizes and alignment allow, float32
// accumulation, coefficients read from device memory ((K,) or per-sample (B, K)) so a CUDA graph
// can replay the kernel with coefficients rewritten in place. `out` may alias an input.
#include <torch/extension.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <cstdint>

namespace {

constexpr int kMaxInputs = 32;

template <typename T>
struct Inputs {
  const T* p[kMaxInputs];
};

template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Vec {
  T v[VEC];
};

template <typename T, int VEC, bool TWO>
__global__ void combine_kernel(Inputs<T> in, int K, const float* __restrict__ c1, const float* __restrict__ c2,
                               bool per_sample, int64_t inner, int64_t n, T* out, T* out2) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x * VEC;
  for (int64_t i = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * VEC; i < n; i += stride) {
    const int64_t base = per_sample ? (i / inner) * K : 0;  // VEC divides inner: one sample per vector
    float acc[VEC];
    float acc2[VEC];
#pragma unroll
    for (int j = 0; j < VEC; ++j) { acc[j] = 0.f; acc2[j] = 0.f; }
    for (int k = 0; k < K; ++k) {
      const float a = c1[base + k];
      const float a2 = TWO ? c2[base + k] : 0.f;
      const Vec<T, VEC> x = *reinterpret_cast<const Vec<T, VEC>*>(in.p[k] + i);
#pragma unroll
      for (int j = 0; j < VEC; ++j) {
        const float v = static_cast<float>(x.v[j]);
        acc[j] += a * v;
        if (TWO) acc2[j] += a2 * v;
      }
    }
    Vec<T, VEC> o;
#pragma unroll
    for (int j = 0; j < VEC; ++j) o.v[j] = static_cast<T>(acc[j]);
    *reinterpret_cast<Vec<T, VEC>*>(out + i) = o;
    if (TWO) {
#pragma unroll
      for (int j = 0; j < VEC; ++j) o.v[j] = static_cast<T>(acc2[j]);
      *reinterpret_cast<Vec<T, VEC>*>(out2 + i) = o;
    }
  }
}

template <typename T, int VEC>
void launch(const Inputs<T>& in, int K, const float* c1, const float* c2, bool per_sample, int64_t inner, int64_t n,
            T* out, T* out2, cudaStream_t stream) {
  const int threads = 256;
  const int64_t want = (n / VEC + threads - 1) / threads;
  const int sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const int blocks = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(want, static_cast<int64_t>(sms) * 16)));
  if (out2)
    combine_kernel<T, VEC, true><<<blocks, threads, 0, stream>>>(in, K, c1, c2, per_sample, inner, n, out, out2);
  else
    combine_kernel<T, VEC, false><<<blocks, threads, 0, stream>>>(in, K, c1, c2, per_sample, inner, n, out, out2);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

bool aligned16(const void* p) { return (reinterpret_cast<std::uintptr_t>(p) % 16) == 0; }

torch::Tensor combine(std::vector<torch::Tensor> inputs, torch::Tensor coefs, torch::Tensor out,
                      c10::optional<torch::Tensor> coefs2, c10::optional<torch::Tensor> out2) {
  const int64_t K = static_cast<int64_t>(inputs.size());
  TORCH_CHECK(K >= 1 && K <= kMaxInputs, "inputs: need 1..", kMaxInputs, " tensors, got ", K);
  TORCH_CHECK(out.is_cuda() && out.is_contiguous() && out.dim() >= 1, "out: must be a contiguous CUDA tensor with a batch dim");
  TORCH_CHECK(out.scalar_type() == torch::kFloat32 || out.scalar_type() == torch::kHalf ||
                  out.scalar_type() == torch::kBFloat16,
              "out: dtype must be float32, float16 or bfloat16");
  for (const auto& t : inputs)
    TORCH_CHECK(t.device() == out.device() && t.is_contiguous() && t.scalar_type() == out.scalar_type() &&
                    t.sizes() == out.sizes(),
                "inputs[k]: must match out (device, dtype, shape, contiguous)");
  const int64_t batch = out.size(0);
  const int64_t n = out.numel();
  const int64_t inner = batch ? n / batch : 0;
  const bool per_sample = coefs.dim() == 2;
  TORCH_CHECK(coefs.device() == out.device() && coefs.scalar_type() == torch::kFloat32 && coefs.is_contiguous(),
              "coefs: must be a contiguous float32 tensor on out's device");
  TORCH_CHECK((coefs.dim() == 1 && coefs.size(0) == K) || (per_sample && coefs.size(0) == batch && coefs.size(1) == K),
              "coefs: shape must be (K,) or (B, K)");
  const bool two = out2.has_value();
  TORCH_CHECK(two == coefs2.has_value(), "coefs2 and out2 go together");
  if (two)
    TORCH_CHECK(out2->sizes() == out.sizes() && out2->scalar_type() == out.scalar_type() && out2->is_contiguous() &&
                    coefs2->sizes() == coefs.sizes() && coefs2->scalar_type() == torch::kFloat32 &&
                    coefs2->device() == out.device(),
                "out2/coefs2: must match out/coefs");
  if (n == 0) return out;
  const c10::cuda::CUDAGuard guard(out.device());
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "usf_combine_cuda", [&] {
    Inputs<scalar_t> in{};
    bool ok = aligned16(out.data_ptr()) && (!two || aligned16(out2->data_ptr()));
    for (int64_t k = 0; k < K; ++k) {
      in.p[k] = inputs[k].data_ptr<scalar_t>();
      ok = ok && aligned16(in.p[k]);
    }
    constexpr int VEC = 16 / sizeof(scalar_t);
    const float* c1 = coefs.data_ptr<float>();
    const float* c2 = two ? coefs2->data_ptr<float>() : nullptr;
    scalar_t* o2 = two ? out2->data_ptr<scalar_t>() : nullptr;
    if (ok && n % VEC == 0 && inner % VEC == 0)
      launch<scalar_t, VEC>(in, static_cast<int>(K), c1, c2, per_sample, inner, n, out.data_ptr<scalar_t>(), o2, stream);
    else
      launch<scalar_t, 1>(in, static_cast<int>(K), c1, c2, per_sample, inner, n, out.data_ptr<scalar_t>(), o2, stream);
  });
  return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "usf_fast fused combination, CUDA";
  m.def("combine", &combine, "out = sum_k coefs[k] * inputs[k] (float32 accumulation)", py::arg("inputs"),
        py::arg("coefs"), py::arg("out"), py::arg("coefs2") = py::none(), py::arg("out2") = py::none());
}
