#pragma once
/// @file
/// @brief Fashion-MNIST and any IDX file, plain or gzip-compressed
/// (`psync::data::load_fashion_mnist`, `load_idx`; data/idx.hpp), opt-in: it needs
/// zlib. CMake: link `psync::data` (`find_package(psync COMPONENTS data)`).
/// `psync/psync.hpp` leaves it out; the in-memory datasets (data/dataset.hpp,
/// data/synthetic.hpp) are in it.

#include "psync/data/idx.hpp"
