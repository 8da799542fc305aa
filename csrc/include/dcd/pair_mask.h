// Which (image i, text j) entries enter the row and column log-sum-exps of the contrastive term.
// A pair sharing an id is excluded unless it is that row's (or column's) positive. Torch-free.
#pragma once

#include "dcd/macros.h"

namespace dcd {

struct PairMask {
  const index_t* img_ids;  // [N] or nullptr (no id masking)
  const index_t* txt_ids;  // [M] or nullptr
  const index_t* pos_row;  // [N], -1 for rows without a term
  const index_t* pos_col;  // [M], -1 for columns without a term

  DCD_HOST_DEVICE bool has_ids() const { return img_ids != nullptr; }
  DCD_HOST_DEVICE bool in_row(index_t i, index_t j) const {
    return img_ids == nullptr || img_ids[i] != txt_ids[j] || pos_row[i] == j;
  }
  DCD_HOST_DEVICE bool in_col(index_t i, index_t j) const {
    return img_ids == nullptr || img_ids[i] != txt_ids[j] || pos_col[j] == i;
  }
};

}  // namespace dcd
