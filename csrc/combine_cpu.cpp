// Fused USF combination on the CPU:  out = sum_k c_k * in_k  (and optionally out2 = sum_k c2_k * in_k).
//
// One pass over memory: each chunk of a sample reads its K inputs once, accumulates in float32
// (vectorised inner loop) and writes one or two outputs. Chunks are spread over threads with
// at::parallel_for (OpenMP) in grains of at least kMinWorkPerThread. Coefficients are (K,) for the whole batch or (B, K) per sample.
// `out` may alias an input: a chunk is fully read before it is written.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

namespace {

constexpr int64_t kChunk = 2048;
// Below this many element reads + writes per thread, threads cost more than they save (waking an
// OpenMP team is ~5-50 us, far more on a busy machine): small tensors run on the calling thread.
constexpr int64_t kMinWorkPerThread = int64_t(1) << 18;

template <typename T>
void combine_kernel(const std::vector<const T*>& in, const float* c1, const float* c2, bool per_sample,
                    int64_t batch, int64_t inner, T* out, T* out2) {
  const int64_t K = static_cast<int64_t>(in.size());
  if (!per_sample) {  // one long sample: better balance across threads
    inner *= batch;
    batch = 1;
  }
  const int64_t chunks = (inner + kChunk - 1) / kChunk;
  const int64_t work_per_job = std::min(kChunk, inner) * (K + (out2 ? 2 : 1));
  const int64_t grain = std::max<int64_t>(1, kMinWorkPerThread / std::max<int64_t>(1, work_per_job));
  at::parallel_for(0, batch * chunks, grain, [&](int64_t begin, int64_t end) {
    alignas(64) float acc[kChunk];
    alignas(64) float acc2[kChunk];
    for (int64_t job = begin; job < end; ++job) {
      const int64_t b = job / chunks;
      const int64_t start = b * inner + (job % chunks) * kChunk;
      const int64_t len = std::min(kChunk, (b + 1) * inner - start);
      const float* w1 = c1 + (per_sample ? b * K : 0);
      const float* w2 = out2 ? c2 + (per_sample ? b * K : 0) : nullptr;
      {
        const T* p = in[0] + start;
        const float a = w1[0];
#pragma omp simd
        for (int64_t j = 0; j < len; ++j) acc[j] = a * static_cast<float>(p[j]);
        if (w2) {
          const float a2 = w2[0];
#pragma omp simd
          for (int64_t j = 0; j < len; ++j) acc2[j] = a2 * static_cast<float>(p[j]);
        }
      }
      for (int64_t k = 1; k < K; ++k) {
        const T* p = in[k] + start;
        const float a = w1[k];
        if (w2) {
          const float a2 = w2[k];
#pragma omp simd
          for (int64_t j = 0; j < len; ++j) {
            const float v = static_cast<float>(p[j]);
            acc[j] += a * v;
            acc2[j] += a2 * v;
          }
        } else {
#pragma omp simd
          for (int64_t j = 0; j < len; ++j) acc[j] += a * static_cast<float>(p[j]);
        }
      }
      T* o = out + start;
#pragma omp simd
      for (int64_t j = 0; j < len; ++j) o[j] = static_cast<T>(acc[j]);
      if (w2) {
        T* o2 = out2 + start;
#pragma omp simd
        for (int64_t j = 0; j < len; ++j) o2[j] = static_cast<T>(acc2[j]);
      }
    }
  });
}

void check(const torch::Tensor& t, const torch::Tensor& ref, const char* what) {
  TORCH_CHECK(t.device().is_cpu(), what, ": must be a CPU tensor");
  TORCH_CHECK(t.is_contiguous(), what, ": must be contiguous");
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), what, ": dtype differs from out");
  TORCH_CHECK(t.sizes() == ref.sizes(), what, ": shape differs from out");
}

torch::Tensor combine(std::vector<torch::Tensor> inputs, torch::Tensor coefs, torch::Tensor out,
                      c10::optional<torch::Tensor> coefs2, c10::optional<torch::Tensor> out2) {
  const int64_t K = static_cast<int64_t>(inputs.size());
  TORCH_CHECK(K >= 1, "inputs: need at least one tensor");
  TORCH_CHECK(out.dim() >= 1, "out: needs a batch dimension");
  check(out, out, "out");
  for (const auto& t : inputs) check(t, out, "inputs[k]");
  const int64_t batch = out.size(0);
  const int64_t inner = batch ? out.numel() / batch : 0;
  TORCH_CHECK(coefs.scalar_type() == torch::kFloat32 && coefs.device().is_cpu() && coefs.is_contiguous(),
              "coefs: must be a contiguous float32 CPU tensor");
  const bool per_sample = coefs.dim() == 2;
  TORCH_CHECK((coefs.dim() == 1 && coefs.size(0) == K) || (per_sample && coefs.size(0) == batch && coefs.size(1) == K),
              "coefs: shape must be (K,) or (B, K)");
  const bool two = out2.has_value();
  TORCH_CHECK(two == coefs2.has_value(), "coefs2 and out2 go together");
  if (two) {
    check(*out2, out, "out2");
    TORCH_CHECK(coefs2->sizes() == coefs.sizes() && coefs2->scalar_type() == torch::kFloat32 && coefs2->is_contiguous(),
                "coefs2: must match coefs");
  }
  TORCH_CHECK(out.scalar_type() == torch::kFloat32 || out.scalar_type() == torch::kHalf ||
                  out.scalar_type() == torch::kBFloat16,
              "out: dtype must be float32, float16 or bfloat16 (accumulation is float32)");
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "usf_combine_cpu", [&] {
    std::vector<const scalar_t*> ptrs;
    ptrs.reserve(K);
    for (const auto& t : inputs) ptrs.push_back(t.data_ptr<scalar_t>());
    combine_kernel<scalar_t>(ptrs, coefs.data_ptr<float>(), two ? coefs2->data_ptr<float>() : nullptr, per_sample,
                             batch, inner, out.data_ptr<scalar_t>(), two ? out2->data_ptr<scalar_t>() : nullptr);
  });
  return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "usf_fast fused combination, CPU (OpenMP)";
  m.def("combine", &combine, "out = sum_k coefs[k] * inputs[k] (float32 accumulation)", py::arg("inputs"),
        py::arg("coefs"), py::arg("out"), py::arg("coefs2") = py::none(), py::arg("out2") = py::none());
}
