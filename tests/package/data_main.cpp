// psync::data from an installed psync: the IDX reader (zlib) links, and a missing
// file is a DataError that names it.
#include <psync/data/fashion_mnist.hpp>

#include <cstdio>
#include <string>

int main() {
  try {
    psync::data::load_idx("/nonexistent/psync-images-idx3-ubyte.gz", "/nonexistent/psync-labels-idx1-ubyte.gz");
  } catch (const psync::DataError& e) {
    const bool named = std::string(e.what()).find("psync-images-idx3-ubyte.gz") != std::string::npos;
    std::printf("data consumer: %s\n", e.what());
    return named ? 0 : 1;
  }
  return 1;
}
