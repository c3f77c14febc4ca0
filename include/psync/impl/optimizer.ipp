#pragma once
/// @file
/// @brief The bodies of psync/optim/optimizer.hpp's functions (psync/detail/config.hpp).

#include "psync/optim/optimizer.hpp"

#if defined(__SSE__) || defined(_M_X64)
#include <xmmintrin.h>  // SSE only: <immintrin.h> (every AVX-512 header) costs a TU ~0.6 s with GCC 12
#endif

namespace psync::optim {

PSYNC_DECL void put_u64(std::vector<std::byte>& out, std::uint64_t v) {
  const auto* p = reinterpret_cast<const std::byte*>(&v);
  out.insert(out.end(), p, p + sizeof v);
}

PSYNC_DECL void put_string(std::vector<std::byte>& out, const std::string& s) {
  put_u64(out, s.size());
  const auto* p = reinterpret_cast<const std::byte*>(s.data());
  out.insert(out.end(), p, p + s.size());
}

PSYNC_DECL void put_floats(std::vector<std::byte>& out, const Eigen::VectorXf& v) {
  put_u64(out, static_cast<std::uint64_t>(v.size()));
  const auto* p = reinterpret_cast<const std::byte*>(v.data());
  out.insert(out.end(), p, p + static_cast<std::size_t>(v.size()) * sizeof(float));
}

namespace detail {

PSYNC_DECL std::string num(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", v);
  return buf;
}

PSYNC_DECL void check_unit(const char* who, const char* what, double v) {
  if (!(v >= 0 && v < 1)) throw ConfigError(std::string(who) + ": " + what + " must be in [0, 1), got " + num(v));
}

PSYNC_DECL void fit(Eigen::VectorXf& state, Eigen::Index n, const char* who) {
  if (state.size() == n) return;
  if (state.size() != 0) {
    throw ConfigError(std::string(who) + ": state sized for " + std::to_string(state.size()) + " parameters, got a gradient of " +
                      std::to_string(n));
  }
  state = Eigen::VectorXf::Zero(n);
}

}  // namespace detail

PSYNC_DECL std::uint64_t StateReader::u64() {
  std::uint64_t v = 0;
  take(&v, sizeof v);
  return v;
}

PSYNC_DECL std::string StateReader::string() {
  const std::uint64_t n = u64();
  if (n > left()) fail("a string of " + std::to_string(n) + " bytes");
  std::string s(static_cast<std::size_t>(n), '\0');
  take(s.data(), s.size());
  return s;
}

PSYNC_DECL void StateReader::floats(Eigen::VectorXf& out, Eigen::Index expected) {
  const std::uint64_t n = u64();
  if (n != static_cast<std::uint64_t>(expected)) {
    throw ConfigError("optimizer state: a vector of " + std::to_string(n) + " floats, the model has " +
                      std::to_string(expected));
  }
  out.resize(expected);
  take(out.data(), static_cast<std::size_t>(n) * sizeof(float));
}

PSYNC_DECL void StateReader::fail(const std::string& what) const {
  throw ConfigError("optimizer state: truncated (" + what + " at byte " + std::to_string(at_) + " of " +
                    std::to_string(bytes_.size()) + ")");
}

PSYNC_DECL void StateReader::take(void* to, std::size_t n) {
  if (n > left()) fail(std::to_string(n) + " more bytes");
  if (n) std::memcpy(to, bytes_.data() + at_, n);
  at_ += n;
}

PSYNC_DECL Momentum::Momentum(float mu, bool nesterov) : mu_(mu), nesterov_(nesterov) {
  detail::check_unit("momentum optimizer", "momentum", mu);
}

PSYNC_DECL void Momentum::apply(Eigen::Ref<Eigen::VectorXf> g, float lr) {
  detail::fit(v_, g.size(), "momentum optimizer");
  v_ = mu_ * v_ + g;
  if (nesterov_) {
    g = -lr * (g + mu_ * v_);
  } else {
    g = -lr * v_;
  }
}

PSYNC_DECL void Momentum::restore(StateReader& in) {
  Eigen::VectorXf v;
  in.floats(v, v_.size());
  v_ = std::move(v);
}

PSYNC_DECL Adam::Adam(float beta1, float beta2, float eps) : b1_(beta1), b2_(beta2), eps_(eps) {
  detail::check_unit("adam optimizer", "beta1", beta1);
  detail::check_unit("adam optimizer", "beta2", beta2);
  if (!(eps > 0) || !std::isfinite(eps)) throw ConfigError("adam optimizer: eps must be positive and finite, got " + detail::num(eps));
}

PSYNC_DECL void Adam::reset(Eigen::Index n) {
  m_ = Eigen::VectorXf::Zero(n);
  v_ = Eigen::VectorXf::Zero(n);
  t_ = 0;
}

PSYNC_DECL void Adam::apply(Eigen::Ref<Eigen::VectorXf> g, float lr) {
  detail::fit(m_, g.size(), "adam optimizer");
  detail::fit(v_, g.size(), "adam optimizer");
  ++t_;
  m_ = b1_ * m_ + (1 - b1_) * g;
  v_.array() = b2_ * v_.array() + (1 - b2_) * g.array().square();
  const double t = static_cast<double>(t_);
  const auto c1 = static_cast<float>(1.0 / (1.0 - std::pow(static_cast<double>(b1_), t)));
  const auto c2 = static_cast<float>(1.0 / (1.0 - std::pow(static_cast<double>(b2_), t)));
  // A correctly rounded sqrt in every lane (sqrtps, then std::sqrt for the tail), with
  // the same operations in the same order, so an element's update does not depend on
  // where it lies: Eigen's vectorized float sqrt (EIGEN_FAST_MATH, its default) is off
  // in the last bits, and an element would take it or not by its slice's alignment,
  // so a sharded server's Adam would differ from one server's.
  const float* m = m_.data();
  const float* v = v_.data();
  float* out = g.data();
  const Eigen::Index n = g.size();
  Eigen::Index i = 0;
#if defined(__SSE__) || defined(_M_X64)
  const __m128 lr4 = _mm_set1_ps(-lr), c14 = _mm_set1_ps(c1), c24 = _mm_set1_ps(c2), eps4 = _mm_set1_ps(eps_);
  for (; i + 4 <= n; i += 4) {
    const __m128 root = _mm_sqrt_ps(_mm_mul_ps(_mm_loadu_ps(v + i), c24));
    _mm_storeu_ps(out + i, _mm_div_ps(_mm_mul_ps(lr4, _mm_mul_ps(_mm_loadu_ps(m + i), c14)), _mm_add_ps(root, eps4)));
  }
#endif
  for (; i < n; ++i) out[i] = -lr * (m[i] * c1) / (std::sqrt(v[i] * c2) + eps_);
}

PSYNC_DECL void Adam::save(std::vector<std::byte>& out) const {
  put_u64(out, t_);
  put_floats(out, m_);
  put_floats(out, v_);
}

PSYNC_DECL void Adam::restore(StateReader& in) {
  const std::uint64_t t = in.u64();
  Eigen::VectorXf m, v;
  in.floats(m, m_.size());
  in.floats(v, v_.size());
  t_ = t;
  m_ = std::move(m);
  v_ = std::move(v);
}

}  // namespace psync::optim
