// Per-sample ring arithmetic shared by the CPU and CUDA implementations, so both
// run the same fp32 operations in the same order as ies_fast.ops.ring (torch).
#pragma once
#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define IES_HD __host__ __device__ __forceinline__
#else
#define IES_HD inline
#endif

namespace ies_fast {

// count is uint8 in [0, 2L): the longest ring it can index.
constexpr int kMaxHistory = 127;

enum Stat { kObserved = 0, kNonfinite, kMastered, kReincluded, kNewlyMastered, kEligible, kNumStats };

struct SampleOutcome {
  bool observed, nonfinite, eligible, was_mastered, now_mastered;
};

// Close one sample's epoch in place: advance its count, decide `mastered`, and
// reset the next slot to -inf. Mirrors close_epoch_torch step for step:
// score = mean |Δ^order| over the chronological window, computed as iterated
// fp32 differences, summed left to right and divided (IEEE) by the window.
IES_HD SampleOutcome close_sample(float* h, uint8_t* count, bool* mastered, int L, int order, float delta) {
  const int c = *count;
  const float cur = h[c % L];
  SampleOutcome out;
  out.observed = cur > -INFINITY;
  out.nonfinite = cur == INFINITY;
  const bool finite = out.observed && !out.nonfinite;

  int nc = c + (finite ? 1 : 0);
  if (nc >= 2 * L) nc -= L;
  if (out.nonfinite) nc = 0;
  out.eligible = nc >= L;

  bool passed = false;
  if (out.eligible) {
    float d[kMaxHistory];
    for (int k = 0; k < L; ++k) d[k] = h[(nc - L + k) % L];
    for (int o = 0; o < order; ++o)
      for (int k = 0; k < L - 1 - o; ++k) d[k] = d[k + 1] - d[k];
    const int w = L - order;
    float s = 0.0f;
    for (int k = 0; k < w; ++k) s += fabsf(d[k]);
    s = s / static_cast<float>(w);
    passed = s < delta;  // NaN (inf - inf in the window) never passes
  }

  out.was_mastered = *mastered;
  out.now_mastered = finite ? passed : (out.nonfinite ? false : out.was_mastered);
  *count = static_cast<uint8_t>(nc);
  *mastered = out.now_mastered;
  h[nc % L] = -INFINITY;
  return out;
}

}  // namespace ies_fast
