#pragma once
// The synthetic classification task the training and process tests share; it is
// also psync-train's `--data synthetic` (tools/psync_train.cpp): 6000 blobs, 20
// features, 4 classes, noise 1.0, data seed 11; the last 1000 samples are the test set.
#include <psync/data/synthetic.hpp>

namespace psync_test {

inline const psync::data::Dataset& synthetic() {
  static const psync::data::Dataset d = [] {
    psync::data::SyntheticOptions o;
    o.samples = 6000;
    o.dimension = 20;
    o.classes = 4;
    o.noise = 1.0f;
    o.seed = 11;
    return psync::data::make_synthetic_classification(o);
  }();
  return d;
}

}  // namespace psync_test
