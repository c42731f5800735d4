// CUDA implementations of the ies_fast ops: one thread per batch row / sample,
// CUB stream compaction with the count left on the device. Nothing here
// synchronises with the host; everything runs on the current stream.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAException.h>
#include <torch/library.h>

#include <cub/device/device_select.cuh>
#include <thrust/iterator/counting_iterator.h>

#include "checks.h"
#include "ring_math.h"

namespace ies_fast {
namespace {

constexpr int kThreads = 256;

inline unsigned blocks_for(int64_t n) { return static_cast<unsigned>((n + kThreads - 1) / kThreads); }

// Float max via integer atomics: non-negative floats order like signed ints,
// negative ones (sign bit set, -0.0 included) reverse-order like unsigned ints.
__device__ __forceinline__ void atomic_max_float(float* addr, float value) {
  if (!signbit(value))
    atomicMax(reinterpret_cast<int*>(addr), __float_as_int(value));
  else
    atomicMin(reinterpret_cast<unsigned int*>(addr), __float_as_uint(value));
}

__global__ void record_kernel(float* hist, const uint8_t* count, const float* loss, const int64_t* index, int64_t S,
                              int L, int64_t B) {
  const int64_t b = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (b >= B) return;
  const int64_t i = index[b];
  if (i < 0 || i >= S) return;  // -1 rows are skipped; out of range cannot be reported without a sync
  const float v = loss[b];
  atomic_max_float(hist + i * L + count[i] % L, isfinite(v) ? v : INFINITY);
}

template <int ORDER>
__global__ void close_epoch_kernel(float* hist, uint8_t* count, bool* mastered, int64_t S, int L, Rule rule,
                                   unsigned long long* stats) {
  __shared__ unsigned long long block_stats[kNumStats];
  if (threadIdx.x < kNumStats) block_stats[threadIdx.x] = 0;
  __syncthreads();
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i < S) {
    const SampleOutcome o = close_sample<ORDER>(hist + i * L, count + i, mastered + i, L, rule);
    if (o.observed) atomicAdd(&block_stats[kObserved], 1ull);
    if (o.nonfinite) atomicAdd(&block_stats[kNonfinite], 1ull);
    if (o.now_mastered) atomicAdd(&block_stats[kMastered], 1ull);
    if (o.was_mastered && !o.now_mastered) atomicAdd(&block_stats[kReincluded], 1ull);
    if (!o.was_mastered && o.now_mastered) atomicAdd(&block_stats[kNewlyMastered], 1ull);
    if (o.eligible) atomicAdd(&block_stats[kEligible], 1ull);
  }
  __syncthreads();
  if (threadIdx.x < kNumStats && block_stats[threadIdx.x]) atomicAdd(stats + threadIdx.x, block_stats[threadIdx.x]);
}

void record_cuda(at::Tensor hist, const at::Tensor& count, const at::Tensor& loss_in, const at::Tensor& index_in) {
  check_record(hist, count, loss_in, index_in);
  const c10::cuda::CUDAGuard guard(hist.device());
  const at::Tensor loss = loss_in.contiguous();
  const at::Tensor index = index_in.contiguous();
  const int64_t B = loss.size(0);
  if (B == 0) return;
  record_kernel<<<blocks_for(B), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      hist.data_ptr<float>(), count.data_ptr<uint8_t>(), loss.data_ptr<float>(), index.data_ptr<int64_t>(),
      hist.size(0), static_cast<int>(hist.size(1)), B);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor close_epoch_cuda(at::Tensor hist, at::Tensor count, at::Tensor mastered, int64_t order, int64_t window,
                            int64_t k, double threshold) {
  check_close(hist, count, mastered, order, window, k, threshold);
  const c10::cuda::CUDAGuard guard(hist.device());
  const int64_t S = hist.size(0);
  at::Tensor stats = at::zeros({kNumStats}, hist.options().dtype(at::kLong));
  if (S == 0) return stats;
  const Rule rule{static_cast<int>(order), static_cast<int>(window), static_cast<int>(k),
                  static_cast<float>(threshold)};
  const int L = static_cast<int>(hist.size(1));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  float* h = hist.data_ptr<float>();
  uint8_t* c = count.data_ptr<uint8_t>();
  bool* m = mastered.data_ptr<bool>();
  auto* st = reinterpret_cast<unsigned long long*>(stats.data_ptr<int64_t>());
  switch (order) {
    case 0: close_epoch_kernel<0><<<blocks_for(S), kThreads, 0, stream>>>(h, c, m, S, L, rule, st); break;
    case 1: close_epoch_kernel<1><<<blocks_for(S), kThreads, 0, stream>>>(h, c, m, S, L, rule, st); break;
    case 2: close_epoch_kernel<2><<<blocks_for(S), kThreads, 0, stream>>>(h, c, m, S, L, rule, st); break;
    default: close_epoch_kernel<3><<<blocks_for(S), kThreads, 0, stream>>>(h, c, m, S, L, rule, st); break;
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return stats;
}

std::tuple<at::Tensor, at::Tensor> compact_cuda(const at::Tensor& mask_in) {
  check_mask(mask_in);
  const c10::cuda::CUDAGuard guard(mask_in.device());
  const at::Tensor mask = mask_in.reshape(-1).contiguous();
  const int n = static_cast<int>(mask.numel());
  at::Tensor out = at::empty({n}, mask.options().dtype(at::kLong));
  at::Tensor count = at::zeros({}, mask.options().dtype(at::kLong));
  if (n == 0) return {out, count};
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const thrust::counting_iterator<int64_t> positions(0);
  size_t temp_bytes = 0;
  C10_CUDA_CHECK(cub::DeviceSelect::Flagged(nullptr, temp_bytes, positions, mask.data_ptr<bool>(),
                                            out.data_ptr<int64_t>(), count.data_ptr<int64_t>(), n, stream));
  // temp storage from the caching allocator, tied to this stream
  at::Tensor temp = at::empty({static_cast<int64_t>(temp_bytes)}, mask.options().dtype(at::kByte));
  C10_CUDA_CHECK(cub::DeviceSelect::Flagged(temp.data_ptr(), temp_bytes, positions, mask.data_ptr<bool>(),
                                            out.data_ptr<int64_t>(), count.data_ptr<int64_t>(), n, stream));
  return {out, count};
}

}  // namespace
}  // namespace ies_fast

TORCH_LIBRARY_IMPL(ies_fast, CUDA, m) {
  m.impl("record", &ies_fast::record_cuda);
  m.impl("close_epoch", &ies_fast::close_epoch_cuda);
  m.impl("compact", &ies_fast::compact_cuda);
}
