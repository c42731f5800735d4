// ies_fast._C: op schemas, CPU (OpenMP) implementations, and the Python module.
#include <Python.h>
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <omp.h>

#include <algorithm>
#include <array>
#include <limits>
#include <vector>

#include "checks.h"
#include "ring_math.h"

namespace ies_fast {
namespace {

// Serial: a batch is small next to the state, and duplicates in `index` would
// otherwise need atomics.
void record_cpu(at::Tensor hist, const at::Tensor& count, const at::Tensor& loss_in, const at::Tensor& index_in) {
  check_record(hist, count, loss_in, index_in);
  const at::Tensor loss = loss_in.contiguous();
  const at::Tensor index = index_in.contiguous();
  const int64_t S = hist.size(0), L = hist.size(1), B = loss.size(0);
  float* h = hist.data_ptr<float>();
  const uint8_t* c = count.data_ptr<uint8_t>();
  const float* v = loss.data_ptr<float>();
  const int64_t* idx = index.data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b) {
    const int64_t i = idx[b];
    if (i < 0) continue;
    TORCH_CHECK_INDEX(i < S, "index[", b, "] = ", i, " is out of range for ", S, " samples");
    const float value = std::isfinite(v[b]) ? v[b] : INFINITY;
    float& slot = h[i * L + c[i] % L];
    if (value > slot) slot = value;
  }
}

// record(hist, count, -logp[b, target[b]], index) straight from the log-probabilities
// [B, C] (fp32 or fp64; the value is negated, then rounded to fp32 as record's
// loss.float() is), skipping rows whose target is ignore_index: F.nll_loss's
// per-row value, without the nll_loss / masked_fill / float ops around record.
// `validate`: first raise the selector's error for an index outside [0, S) and
// F.nll_loss's for a target outside [0, C), writing nothing (the CPU loss calls it
// before nll_loss, in place of the selector's own index check).
template <typename T>
void record_nll_rows(float* h, const uint8_t* c, int64_t S, int64_t L, const T* lp, int64_t s0, int64_t s1,
                     const int64_t* t, int64_t st, const int64_t* idx, int64_t si, int64_t B, int64_t C,
                     int64_t ignore_index) {
  for (int64_t b = 0; b < B; ++b) {
    const int64_t i = idx[b * si];
    const int64_t y = t[b * st];
    if (i < 0 || y == ignore_index) continue;
    TORCH_CHECK_INDEX(i < S, "index[", b, "] = ", i, " is out of range for ", S, " samples");
    TORCH_CHECK_INDEX(y >= 0 && y < C, "Target ", y, " is out of bounds.");
    const float v = static_cast<float>(-lp[b * s0 + y * s1]);
    const float value = std::isfinite(v) ? v : INFINITY;
    float& slot = h[i * L + c[i] % L];
    if (value > slot) slot = value;
  }
}

void record_nll_cpu(at::Tensor hist, const at::Tensor& count, const at::Tensor& logp, const at::Tensor& target,
                    const at::Tensor& index, int64_t ignore_index, bool validate) {
  check_state(hist, count);
  TORCH_CHECK_VALUE(logp.dim() == 2 && (logp.scalar_type() == at::kFloat || logp.scalar_type() == at::kDouble),
                    "logp must be a float32 or float64 [B, C] tensor, got ", logp.scalar_type(), " ", logp.sizes());
  const int64_t B = logp.size(0), C = logp.size(1);
  TORCH_CHECK_VALUE(target.dim() == 1 && target.scalar_type() == at::kLong && target.size(0) == B,
                    "target must be an int64 [B] tensor with B = logp.size(0) = ", B, ", got ", target.scalar_type(),
                    " ", target.sizes());
  TORCH_CHECK_VALUE(index.dim() == 1 && index.scalar_type() == at::kLong && index.size(0) == B,
                    "index must be an int64 [B] tensor with B = logp.size(0) = ", B, ", got ", index.scalar_type(),
                    " ", index.sizes());
  TORCH_CHECK_VALUE(logp.device() == hist.device() && target.device() == hist.device() &&
                        index.device() == hist.device(),
                    "logp, target and index must be on hist's device ", hist.device());
  float* h = hist.data_ptr<float>();
  const uint8_t* c = count.data_ptr<uint8_t>();
  const int64_t S = hist.size(0), L = hist.size(1);
  const int64_t* t = target.data_ptr<int64_t>();
  const int64_t* idx = index.data_ptr<int64_t>();
  if (validate) {  // before any write: the selector's index check, then F.nll_loss's target check
    for (int64_t b = 0; b < B; ++b) {
      const int64_t i = idx[b * index.stride(0)];
      TORCH_CHECK_VALUE(i >= 0 && i < S, "index out of range [0, ", S, "): got ", i);
    }
    for (int64_t b = 0; b < B; ++b) {
      const int64_t y = t[b * target.stride(0)];
      TORCH_CHECK_INDEX(y == ignore_index || (y >= 0 && y < C), "Target ", y, " is out of bounds.");
    }
  }
  if (logp.scalar_type() == at::kFloat) {
    record_nll_rows<float>(h, c, S, L, logp.data_ptr<float>(), logp.stride(0), logp.stride(1), t, target.stride(0),
                           idx, index.stride(0), B, C, ignore_index);
  } else {
    record_nll_rows<double>(h, c, S, L, logp.data_ptr<double>(), logp.stride(0), logp.stride(1), t,
                            target.stride(0), idx, index.stride(0), B, C, ignore_index);
  }
}

template <int ORDER>
std::array<int64_t, kNumStats> close_all_cpu(float* h, uint8_t* c, bool* m, int64_t S, int L, const Rule& rule) {
  int64_t observed = 0, nonfinite = 0, now = 0, reincluded = 0, newly = 0, eligible = 0;
#pragma omp parallel for num_threads(at::get_num_threads()) schedule(static) if (S > 4096) \
    reduction(+ : observed, nonfinite, now, reincluded, newly, eligible)
  for (int64_t i = 0; i < S; ++i) {
    const SampleOutcome o = close_sample<ORDER>(h + i * L, c + i, m + i, L, rule);
    observed += o.observed;
    nonfinite += o.nonfinite;
    now += o.now_mastered;
    reincluded += o.was_mastered && !o.now_mastered;
    newly += !o.was_mastered && o.now_mastered;
    eligible += o.eligible;
  }
  std::array<int64_t, kNumStats> s{};
  s[kObserved] = observed;
  s[kNonfinite] = nonfinite;
  s[kMastered] = now;
  s[kReincluded] = reincluded;
  s[kNewlyMastered] = newly;
  s[kEligible] = eligible;
  return s;
}

at::Tensor close_epoch_cpu(at::Tensor hist, at::Tensor count, at::Tensor mastered, int64_t order, int64_t window,
                           int64_t k, double threshold) {
  check_close(hist, count, mastered, order, window, k, threshold);
  const int64_t S = hist.size(0);
  const int L = static_cast<int>(hist.size(1));
  const Rule rule{static_cast<int>(order), static_cast<int>(window), static_cast<int>(k),
                  static_cast<float>(threshold)};  // exact: check_close requires an fp32 value
  float* h = hist.data_ptr<float>();
  uint8_t* c = count.data_ptr<uint8_t>();
  bool* m = mastered.data_ptr<bool>();
  std::array<int64_t, kNumStats> s{};
  switch (order) {
    case 0: s = close_all_cpu<0>(h, c, m, S, L, rule); break;
    case 1: s = close_all_cpu<1>(h, c, m, S, L, rule); break;
    case 2: s = close_all_cpu<2>(h, c, m, S, L, rule); break;
    default: s = close_all_cpu<3>(h, c, m, S, L, rule); break;
  }
  at::Tensor stats = at::empty({kNumStats}, hist.options().dtype(at::kLong));
  std::copy(s.begin(), s.end(), stats.data_ptr<int64_t>());
  return stats;
}

// One sample's report of the epoch not yet closed (before close_epoch), from its
// ring row and count: the current-slot value (the loss where finite) ...
inline float current_value(const float* row, int cnt, int L) { return row[cnt < L ? cnt : cnt - L]; }

// ... and the mean |Δ^ORDER| over the order + window losses ending with it: NaN
// unless count + 1 >= order + window and the result is finite.
template <int ORDER>
inline float current_window_score(const float* row, int cnt, int L, int window) {
  const int span = ORDER + window, cur = cnt < L ? cnt : cnt - L;
  if (cnt + 1 < span) return std::numeric_limits<float>::quiet_NaN();
  const int first = cur + 1 - span < 0 ? cur + 1 - span + L : cur + 1 - span;
  const float mean = window_sum<ORDER>(row, L, first, window) / static_cast<float>(window);
  return std::isfinite(mean) ? mean : std::numeric_limits<float>::quiet_NaN();
}

// Both for every sample in one pass over the ring: epoch_report_torch, bit for bit
// (the loss NaN unless finite).
template <int ORDER>
void epoch_report_all_cpu(const float* h, const uint8_t* c, float* loss, float* score, int64_t S, int L, int window) {
  // score == nullptr: the losses only
  const float nan = std::numeric_limits<float>::quiet_NaN();
#pragma omp parallel for num_threads(at::get_num_threads()) schedule(static) if (S > 4096)
  for (int64_t i = 0; i < S; ++i) {
    const float v = current_value(h + i * L, c[i], L);
    loss[i] = std::isfinite(v) ? v : nan;
    if (score != nullptr) score[i] = current_window_score<ORDER>(h + i * L, c[i], L, window);
  }
}

void check_report(const at::Tensor& hist, const at::Tensor& count, int64_t order, int64_t window) {
  check_state(hist, count);
  TORCH_CHECK_VALUE(order >= 0 && order <= 3, "order must be in 0..3, got ", order);
  TORCH_CHECK_VALUE(window >= 1 && order + window <= hist.size(1), "window must be in 1..L - order = ",
                    hist.size(1) - order, ", got ", window);
}

std::tuple<at::Tensor, at::Tensor> epoch_report_cpu(const at::Tensor& hist, const at::Tensor& count, int64_t order,
                                                    int64_t window, bool with_score) {
  check_report(hist, count, order, window);
  const int64_t S = hist.size(0);
  const int L = static_cast<int>(hist.size(1)), w = static_cast<int>(window);
  at::Tensor loss = at::empty({S}, hist.options()), score = at::empty({with_score ? S : 0}, hist.options());
  const float* h = hist.data_ptr<float>();
  const uint8_t* c = count.data_ptr<uint8_t>();
  float *l = loss.data_ptr<float>(), *sc = with_score ? score.data_ptr<float>() : nullptr;
  switch (order) {
    case 0: epoch_report_all_cpu<0>(h, c, l, sc, S, L, w); break;
    case 1: epoch_report_all_cpu<1>(h, c, l, sc, S, L, w); break;
    case 2: epoch_report_all_cpu<2>(h, c, l, sc, S, L, w); break;
    default: epoch_report_all_cpu<3>(h, c, l, sc, S, L, w); break;
  }
  return {loss, score};
}

// epoch_report folded into a run's per-sample counters in the same pass over the
// ring, in place (fold_epoch_report_torch, bit for bit): where the current-slot loss
// v is finite, loss_sum += double(v), loss_count += 1, last_loss = v (elsewhere
// loss_sum += 0.0); where the score is not NaN, last_score = score.
template <int ORDER>
void fold_epoch_report_all_cpu(const float* h, const uint8_t* c, int64_t S, int L, int window, double* loss_sum,
                               int32_t* loss_count, float* last_loss, float* last_score) {
#pragma omp parallel for num_threads(at::get_num_threads()) schedule(static) if (S > 4096)
  for (int64_t i = 0; i < S; ++i) {
    const float v = current_value(h + i * L, c[i], L);
    const bool seen = std::isfinite(v);
    loss_sum[i] += seen ? static_cast<double>(v) : 0.0;
    loss_count[i] += seen;
    if (seen) last_loss[i] = v;
    const float score = current_window_score<ORDER>(h + i * L, c[i], L, window);
    if (!std::isnan(score)) last_score[i] = score;
  }
}

// A per-sample counter: contiguous `dtype` [S], on the device of `like` (whose size(0) is S).
void check_counter(const at::Tensor& t, const char* name, at::ScalarType dtype, const at::Tensor& like) {
  TORCH_CHECK_VALUE(t.dim() == 1 && t.scalar_type() == dtype && t.is_contiguous() && t.size(0) == like.size(0) &&
                        t.device() == like.device(),
                    name, " must be a contiguous ", dtype, " [S] tensor on ", like.device(), " with S = ",
                    like.size(0), ", got ", t.scalar_type(), " ", t.sizes(), " on ", t.device());
}

void fold_epoch_report_cpu(const at::Tensor& hist, const at::Tensor& count, int64_t order, int64_t window,
                           at::Tensor loss_sum, at::Tensor loss_count, at::Tensor last_loss, at::Tensor last_score) {
  check_report(hist, count, order, window);
  check_counter(loss_sum, "loss_sum", at::kDouble, hist);
  check_counter(loss_count, "loss_count", at::kInt, hist);
  check_counter(last_loss, "last_loss", at::kFloat, hist);
  check_counter(last_score, "last_score", at::kFloat, hist);
  const int64_t S = hist.size(0);
  const int L = static_cast<int>(hist.size(1)), w = static_cast<int>(window);
  const float* h = hist.data_ptr<float>();
  const uint8_t* c = count.data_ptr<uint8_t>();
  double* ls = loss_sum.data_ptr<double>();
  int32_t* lc = loss_count.data_ptr<int32_t>();
  float *ll = last_loss.data_ptr<float>(), *sc = last_score.data_ptr<float>();
  switch (order) {
    case 0: fold_epoch_report_all_cpu<0>(h, c, S, L, w, ls, lc, ll, sc); break;
    case 1: fold_epoch_report_all_cpu<1>(h, c, S, L, w, ls, lc, ll, sc); break;
    case 2: fold_epoch_report_all_cpu<2>(h, c, S, L, w, ls, lc, ll, sc); break;
    default: fold_epoch_report_all_cpu<3>(h, c, S, L, w, ls, lc, ll, sc); break;
  }
}

// The removal half of a run's per-sample counters, in one pass, in place
// (fold_removed_torch, bit for bit): epochs_removed += removed; came_back += prev_removed
// && !removed (if count_came_back); first_mastered = epoch where removed and it is < 0;
// prev_removed = removed.
void fold_removed_cpu(const at::Tensor& removed, at::Tensor prev_removed, at::Tensor epochs_removed,
                      at::Tensor came_back, at::Tensor first_mastered, int64_t epoch, bool count_came_back) {
  TORCH_CHECK_VALUE(removed.dim() == 1 && removed.scalar_type() == at::kBool && removed.is_contiguous(),
                    "removed must be a contiguous bool [S] tensor, got ", removed.scalar_type(), " ",
                    removed.sizes());
  check_counter(prev_removed, "prev_removed", at::kBool, removed);
  check_counter(epochs_removed, "epochs_removed", at::kInt, removed);
  check_counter(came_back, "came_back", at::kInt, removed);
  check_counter(first_mastered, "first_mastered", at::kInt, removed);
  TORCH_CHECK_VALUE(epoch >= 0 && epoch <= std::numeric_limits<int32_t>::max(), "epoch must be in 0..2^31 - 1, got ",
                    epoch);
  const int64_t S = removed.size(0);
  const bool* r = removed.data_ptr<bool>();
  bool* prev = prev_removed.data_ptr<bool>();
  int32_t *er = epochs_removed.data_ptr<int32_t>(), *cb = came_back.data_ptr<int32_t>(),
          *fm = first_mastered.data_ptr<int32_t>();
  const int32_t e = static_cast<int32_t>(epoch), back = count_came_back ? 1 : 0;
#pragma omp parallel for num_threads(at::get_num_threads()) schedule(static) if (S > 65536)
  for (int64_t i = 0; i < S; ++i) {  // branch-free, so it vectorises
    const int32_t now = r[i], before = prev[i];
    er[i] += now;
    cb[i] += back & before & (now ^ 1);
    const int32_t f = fm[i];
    fm[i] = (now & (f < 0)) ? e : f;
    prev[i] = now;
  }
}

// Two passes over equal chunks: count per chunk, exclusive prefix, write. The
// output is allocated after the count, with exactly `count` entries: on the CPU
// the count is on the host anyway, and kept_indices() then needs no copy.
constexpr int64_t kCompactTile = 512;

std::tuple<at::Tensor, at::Tensor> compact_cpu(const at::Tensor& mask_in) {
  check_mask(mask_in);
  const at::Tensor mask = mask_in.reshape(-1).contiguous();
  const int64_t n = mask.numel();
  const bool* f = mask.data_ptr<bool>();
  const int threads = n > 65536 ? std::max(1, at::get_num_threads()) : 1;
  std::vector<int64_t> offset(threads + 1, 0);
  at::Tensor out;
  int64_t* o = nullptr;
  int64_t total = 0;
#pragma omp parallel num_threads(threads)
  {
    const int t = omp_get_thread_num(), nt = omp_get_num_threads();
    const int64_t chunk = (n + nt - 1) / nt;
    const int64_t begin = std::min(n, t * chunk), end = std::min(n, begin + chunk);
    int64_t k = 0;
    for (int64_t i = begin; i < end; ++i) k += f[i];
    offset[t + 1] = k;
#pragma omp barrier
#pragma omp single
    {
      for (int j = 0; j < nt; ++j) offset[j + 1] += offset[j];
      total = offset[nt];
      out = at::empty({total}, mask.options().dtype(at::kLong));
      o = out.data_ptr<int64_t>();
    }  // implicit barrier
    // branch-free (a random mask mispredicts a branch per element): every position
    // goes into a small local tile, the cursor advances by the flag, the tile's
    // kept prefix is copied out
    int64_t w = offset[t];
    int64_t tile[kCompactTile];
    for (int64_t i0 = begin; i0 < end; i0 += kCompactTile) {
      const int64_t i1 = std::min(end, i0 + kCompactTile);
      int64_t m = 0;
      for (int64_t i = i0; i < i1; ++i) {
        tile[m] = i;
        m += f[i];
      }
      std::copy(tile, tile + m, o + w);
      w += m;
    }
  }
  return {out, at::scalar_tensor(total, mask.options().dtype(at::kLong))};
}

}  // namespace
}  // namespace ies_fast

TORCH_LIBRARY(ies_fast, m) {
  m.def("record(Tensor(a!) hist, Tensor count, Tensor loss, Tensor index) -> ()");
  m.def("record_nll(Tensor(a!) hist, Tensor count, Tensor logp, Tensor target, Tensor index, int ignore_index, bool validate=False) -> ()");
  m.def(
      "close_epoch(Tensor(a!) hist, Tensor(b!) count, Tensor(c!) mastered, int order, int window, int k, "
      "float threshold) -> Tensor");
  m.def("compact(Tensor mask) -> (Tensor, Tensor)");
  m.def("epoch_report(Tensor hist, Tensor count, int order, int window, bool with_score=True) -> (Tensor, Tensor)");
  m.def(
      "fold_epoch_report(Tensor hist, Tensor count, int order, int window, Tensor(a!) loss_sum, "
      "Tensor(b!) loss_count, Tensor(c!) last_loss, Tensor(d!) last_score) -> ()");
  m.def(
      "fold_removed(Tensor removed, Tensor(a!) prev_removed, Tensor(b!) epochs_removed, Tensor(c!) came_back, "
      "Tensor(d!) first_mastered, int epoch, bool count_came_back) -> ()");
}

TORCH_LIBRARY_IMPL(ies_fast, CPU, m) {
  m.impl("record", &ies_fast::record_cpu);
  m.impl("record_nll", &ies_fast::record_nll_cpu);
  m.impl("close_epoch", &ies_fast::close_epoch_cpu);
  m.impl("compact", &ies_fast::compact_cpu);
  m.impl("epoch_report", &ies_fast::epoch_report_cpu);
  m.impl("fold_epoch_report", &ies_fast::fold_epoch_report_cpu);
  m.impl("fold_removed", &ies_fast::fold_removed_cpu);
}

// ---- the Python module: importing it loads the ops above; cuda_built() says
// whether the CUDA implementations were compiled in. Plain C API (no pybind11)
// keeps the build short.

static PyObject* cuda_built(PyObject*, PyObject*) {
#ifdef IES_FAST_WITH_CUDA
  Py_RETURN_TRUE;
#else
  Py_RETURN_FALSE;
#endif
}

static PyMethodDef methods[] = {
    {"cuda_built", cuda_built, METH_NOARGS, "Whether the CUDA implementations of the ies_fast ops were compiled."},
    {nullptr, nullptr, 0, nullptr}};

static PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C",
                                 "Native ies_fast ops, registered as torch.ops.ies_fast.{record,record_nll,close_epoch,compact}.",
                                 -1, methods};

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&module_def); }
