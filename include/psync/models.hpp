#pragma once
/// @file
/// @brief The bundled models and the data they train on, opt-in beside the umbrella
/// `psync/psync.hpp` (same CMake target, `psync::psync`; Eigen and the standard
/// library only): `models::LinearRegression`, `models::SoftmaxRegression`,
/// `models::Mlp`, `models::Cnn`, `data::Dataset` / `data::Batch` and the synthetic
/// data sets. A program that trains its own model does not need it.

#include "psync/data/dataset.hpp"
#include "psync/data/synthetic.hpp"
#include "psync/models/cnn.hpp"
#include "psync/models/linear.hpp"
#include "psync/models/mlp.hpp"
#include "psync/models/softmax.hpp"
