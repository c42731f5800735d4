// Argument checks shared by the CPU and CUDA implementations (errors name the argument).
#pragma once
#include <ATen/ATen.h>

#include "ring_math.h"

namespace ies_fast {

inline void check_state(const at::Tensor& hist, const at::Tensor& count) {
  TORCH_CHECK_VALUE(hist.dim() == 2 && hist.scalar_type() == at::kFloat && hist.is_contiguous(),
                    "hist must be a contiguous float32 [S, L] tensor, got ", hist.scalar_type(), " ", hist.sizes());
  TORCH_CHECK_VALUE(hist.size(1) >= 1 && hist.size(1) <= kMaxHistory, "hist must have 1 <= L <= ", kMaxHistory,
                    " columns, got ", hist.size(1));
  TORCH_CHECK_VALUE(count.dim() == 1 && count.scalar_type() == at::kByte && count.is_contiguous() &&
                        count.size(0) == hist.size(0),
                    "count must be a contiguous uint8 [S] tensor with S = hist.size(0) = ", hist.size(0), ", got ",
                    count.scalar_type(), " ", count.sizes());
  TORCH_CHECK_VALUE(count.device() == hist.device(), "count must be on hist's device ", hist.device(), ", got ",
                    count.device());
}

inline void check_record(const at::Tensor& hist, const at::Tensor& count, const at::Tensor& loss,
                         const at::Tensor& index) {
  check_state(hist, count);
  TORCH_CHECK_VALUE(loss.dim() == 1 && loss.scalar_type() == at::kFloat, "loss must be a float32 [B] tensor, got ",
                    loss.scalar_type(), " ", loss.sizes());
  TORCH_CHECK_VALUE(index.dim() == 1 && index.scalar_type() == at::kLong && index.size(0) == loss.size(0),
                    "index must be an int64 [B] tensor with B = loss.size(0) = ", loss.size(0), ", got ",
                    index.scalar_type(), " ", index.sizes());
  TORCH_CHECK_VALUE(loss.device() == hist.device() && index.device() == hist.device(),
                    "loss and index must be on hist's device ", hist.device());
}

inline void check_close(const at::Tensor& hist, const at::Tensor& count, const at::Tensor& mastered, int64_t order,
                        int64_t window, int64_t k, double threshold) {
  check_state(hist, count);
  TORCH_CHECK_VALUE(mastered.dim() == 1 && mastered.scalar_type() == at::kBool && mastered.is_contiguous() &&
                        mastered.size(0) == hist.size(0) && mastered.device() == hist.device(),
                    "mastered must be a contiguous bool [S] tensor on hist's device with S = ", hist.size(0),
                    ", got ", mastered.scalar_type(), " ", mastered.sizes());
  TORCH_CHECK_VALUE(order >= 0 && order <= 3, "order must be in 0..3, got ", order);
  TORCH_CHECK_VALUE(window >= 1, "window must be >= 1, got ", window);
  TORCH_CHECK_VALUE(k >= 1, "k must be >= 1, got ", k);
  TORCH_CHECK_VALUE(order + window + k - 1 <= hist.size(1), "order + window + k - 1 must be at most L = ",
                    hist.size(1), " (the ring length), got ", order + window + k - 1);
  TORCH_CHECK_VALUE(threshold >= 0 && static_cast<double>(static_cast<float>(threshold)) == threshold,
                    "threshold must be a non-negative fp32 value (fp32(delta * window)), got ", threshold);
}

inline void check_mask(const at::Tensor& mask) {
  TORCH_CHECK_VALUE(mask.scalar_type() == at::kBool, "mask must be a bool tensor, got ", mask.scalar_type());
  TORCH_CHECK_VALUE(mask.numel() < (int64_t{1} << 31), "mask must have fewer than 2^31 elements, got ",
                    mask.numel());
}

}  // namespace ies_fast
