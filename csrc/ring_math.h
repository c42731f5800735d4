// Per-sample ring arithmetic shared by the CPU and CUDA implementations: the
// decision arithmetic of ies_fast/criterion.py (docs/semantics.md), the same fp32
// operations in the same order as ies_fast.ops.ring (torch) and the Triton kernel.
// Only subtractions, fabsf, additions and one comparison: nothing a compiler may
// contract into an FMA, no division. No arrays, so no local-memory stack on CUDA.
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

// The rule's parameters: Δ^order, a window of `window` differences, `k` windows.
struct Rule {
  int order, window, k;
  float threshold;  // fp32(delta * window), computed once on the host
};

// One step of the sliding Δ: p0, p1, p2 hold the previous loss and its first and
// second differences, so a new loss x gives Δ^1 = x - p0, Δ^2 = Δ^1 - p1,
// Δ^3 = Δ^2 - p2: exactly the iterated differences, in three registers.
template <int ORDER>
struct SlidingDifference {
  float p0 = 0.0f, p1 = 0.0f, p2 = 0.0f;
  IES_HD float push(float x) {
    const float d1 = x - p0;
    const float d2 = d1 - p1;
    const float d3 = d2 - p2;
    p0 = x;
    p1 = d1;
    p2 = d2;
    return ORDER == 0 ? x : ORDER == 1 ? d1 : ORDER == 2 ? d2 : d3;
  }
};

// W = |Δ^order| summed left to right over one window of order + window losses
// starting at ring slot `slot`: the first ORDER losses only prime the differences.
template <int ORDER>
IES_HD float window_sum(const float* h, int L, int slot, int window) {
  SlidingDifference<ORDER> diff;
  for (int t = 0; t < ORDER; ++t) {
    diff.push(h[slot]);
    slot = slot + 1 == L ? 0 : slot + 1;
  }
  float s = 0.0f;
  for (int t = 0; t < window; ++t) {
    s += fabsf(diff.push(h[slot]));
    slot = slot + 1 == L ? 0 : slot + 1;
  }
  return s;
}

// T = W_0 + ... + W_{k-1}; window j starts j losses after the oldest used one.
// `first` is the ring slot of the oldest of the order + window + k - 1 used losses.
template <int ORDER>
IES_HD float window_total(const float* h, int L, int first, const Rule& rule) {
  float total = 0.0f;
  for (int j = 0, slot = first; j < rule.k; ++j) {
    total += window_sum<ORDER>(h, L, slot, rule.window);
    slot = slot + 1 == L ? 0 : slot + 1;
  }
  return total;
}

// Close one sample's epoch in place: advance its count, decide `mastered`, and
// reset the next slot to -inf. Mirrors close_epoch_torch step for step.
template <int ORDER>
IES_HD SampleOutcome close_sample(float* h, uint8_t* count, bool* mastered, int L, const Rule& rule) {
  const int c = *count;
  const int cur_slot = c < L ? c : c - L;  // c % L for c in [0, 2L)
  const float cur = h[cur_slot];
  SampleOutcome out;
  out.observed = cur > -INFINITY;
  out.nonfinite = cur == INFINITY;
  const bool finite = out.observed && !out.nonfinite;

  int nc = c + (finite ? 1 : 0);
  if (nc >= 2 * L) nc -= L;
  if (out.nonfinite) nc = 0;
  out.eligible = nc >= L;
  const int next_slot = nc < L ? nc : nc - L;  // nc % L: the oldest loss, and the next write

  bool passed = false;
  if (out.eligible) {
    const int skip = L - (ORDER + rule.window + rule.k - 1);  // 1 under eligibility="official"
    int first = next_slot + skip;
    if (first >= L) first -= L;
    passed = window_total<ORDER>(h, L, first, rule) < rule.threshold;  // NaN never passes
  }

  out.was_mastered = *mastered;
  out.now_mastered = finite ? passed : (out.nonfinite ? false : out.was_mastered);
  *count = static_cast<uint8_t>(nc);
  *mastered = out.now_mastered;
  h[next_slot] = -INFINITY;
  return out;
}

}  // namespace ies_fast
