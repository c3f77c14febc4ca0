#pragma once
// psync-train's task: the data (Fashion-MNIST or the fixed synthetic task) and the model --model names.

#include "cli.hpp"

#include <psync/data/dataset.hpp>
#include <psync/models/mlp.hpp>
#include <psync/models/softmax.hpp>

#include <Eigen/Core>

#include <utility>
#include <vector>

namespace psync_train {

struct TrainTest {
  psync::data::Dataset train;
  psync::data::Dataset test;
};

/// The half of the data this role needs (the server evaluates, workers train).
TrainTest load_data(const Config& c);

/// Calls `f(model)` with the model --model names, initialized from --init-seed (the
/// same on every process, though workers take the server's model at join anyway).
template <class F>
int with_model(const Config& c, Eigen::Index inputs, int classes, F&& f) {
  if (c.hidden.empty()) {
    psync::models::SoftmaxRegression m(inputs, classes);
    m.initialize(c.model_seed());
    return f(std::move(m));
  }
  std::vector<Eigen::Index> layers{inputs};
  layers.insert(layers.end(), c.hidden.begin(), c.hidden.end());
  layers.push_back(classes);
  psync::models::Mlp m(std::move(layers));
  m.initialize(c.model_seed());
  return f(std::move(m));
}
}  // namespace psync_train
