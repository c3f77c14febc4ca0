#pragma once
/// @file
/// @brief `AnyTransport`: any `Transport`, chosen at run time, behind one type.
///
/// `Worker<M, T, P>` and `Server<M, P>::run<T>` are templates on the transport, so a
/// program that picks its transport from a flag (TCP, MPI, sharded over either)
/// instantiates every worker and server once per transport and policy and model.
/// Holding the endpoint in an `AnyTransport` instead makes that one instantiation per
/// policy and model; each message then costs one virtual call, which is nothing
/// beside moving it (psync-train compiles its worker role 4x fewer times this way).
/// @code
///   psync::AnyTransport t = use_mpi ? psync::AnyTransport(psync::Mpi(o)) : psync::AnyTransport(psync::Tcp(host, port));
///   psync::Worker<Model, psync::AnyTransport, Policy> worker(model, std::move(t), options);
///   server.run(psync::AnyTransport(std::ref(listener)));  // a view: the listener stays yours
/// @endcode
/// The optional hooks (the server's `reserve_worker_ids` and `expect_dimension`, the
/// worker's `push_segments`) are passed on to the held transport when it has them, and
/// do nothing (or return nothing) when it does not, exactly as `Server::run` and
/// `Worker` treat a transport without them.

#include "psync/concepts.hpp"
#include "psync/core/error.hpp"
#include "psync/core/message.hpp"
#include "psync/core/types.hpp"

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <type_traits>
#include <typeinfo>
#include <utility>
#include <vector>

namespace psync {

namespace detail {
template <class T>
inline constexpr bool is_reference_wrapper = false;
template <class T>
inline constexpr bool is_reference_wrapper<std::reference_wrapper<T>> = true;
}  // namespace detail

/// @brief Owns (or, built from `std::ref(t)`, refers to) one endpoint of any
/// `Transport` type. Move-only; a moved-from `AnyTransport` holds nothing and throws
/// `ConfigError` if used.
class AnyTransport {
 public:
  /// @brief Takes `transport` over (moved in).
  template <Transport T>
    requires(!std::is_same_v<std::remove_cvref_t<T>, AnyTransport> && !std::is_lvalue_reference_v<T>)
  AnyTransport(T&& transport)  // NOLINT(google-explicit-constructor): a transport is an AnyTransport
      : impl_(std::make_unique<Held<T>>(std::move(transport))) {}

  /// @brief Refers to `transport`, which must outlive this object (and every move of it).
  template <Transport T>
  AnyTransport(std::reference_wrapper<T> transport)  // NOLINT(google-explicit-constructor)
      : impl_(std::make_unique<Held<std::reference_wrapper<T>>>(transport)) {}

  AnyTransport(AnyTransport&&) noexcept = default;
  AnyTransport& operator=(AnyTransport&&) noexcept = default;
  AnyTransport(const AnyTransport&) = delete;
  AnyTransport& operator=(const AnyTransport&) = delete;
  ~AnyTransport() = default;

  /// @brief This endpoint's peer id.
  PeerId self() const { return impl().self(); }
  /// @brief Sends `m` to `to` (the held transport's errors pass through).
  void send(PeerId to, Message&& m) { impl().send(to, std::move(m)); }
  /// @brief The next message, or nothing once `deadline` passes.
  std::optional<Envelope> receive(Clock::time_point deadline) { return impl().receive(deadline); }
  /// @brief The next message if one is waiting.
  std::optional<Envelope> try_receive() { return impl().try_receive(); }
  /// @brief Passed on if the held transport assigns worker ids; nothing otherwise.
  void reserve_worker_ids(const std::vector<PeerId>& ids) { impl().reserve_worker_ids(ids); }
  /// @brief Passed on if the held transport checks vector sizes; nothing otherwise.
  void expect_dimension(std::uint64_t dimension) { impl().expect_dimension(dimension); }
  /// @brief The held transport's slice sizes if it cuts pushes over sharded servers
  /// (`Sharded::push_segments`); empty otherwise.
  std::vector<std::uint64_t> push_segments() const { return impl().push_segments(); }

  /// @brief The held transport if it is a `T` (held or referred to), else nullptr.
  template <class T>
  T* target() noexcept {
    return impl_ ? static_cast<T*>(impl_->target(typeid(T))) : nullptr;
  }

 private:
  struct Base {
    virtual ~Base() = default;
    virtual PeerId self() const = 0;
    virtual void send(PeerId to, Message&& m) = 0;
    virtual std::optional<Envelope> receive(Clock::time_point deadline) = 0;
    virtual std::optional<Envelope> try_receive() = 0;
    virtual void reserve_worker_ids(const std::vector<PeerId>& ids) = 0;
    virtual void expect_dimension(std::uint64_t dimension) = 0;
    virtual std::vector<std::uint64_t> push_segments() const = 0;
    virtual void* target(const std::type_info& type) noexcept = 0;
  };

  template <class T>
  struct Held final : Base {
    explicit Held(T t) : t(std::move(t)) {}
    /// The transport itself (through the reference, for a view).
    decltype(auto) get() const noexcept {
      if constexpr (detail::is_reference_wrapper<T>) {
        return t.get();
      } else {
        return (t);
      }
    }
    decltype(auto) get() noexcept {
      if constexpr (detail::is_reference_wrapper<T>) {
        return t.get();
      } else {
        return (t);
      }
    }
    PeerId self() const override { return get().self(); }
    void send(PeerId to, Message&& m) override { get().send(to, std::move(m)); }
    std::optional<Envelope> receive(Clock::time_point deadline) override { return get().receive(deadline); }
    std::optional<Envelope> try_receive() override { return get().try_receive(); }
    void reserve_worker_ids(const std::vector<PeerId>& ids) override {
      auto& u = get();
      if constexpr (requires { u.reserve_worker_ids(ids); }) u.reserve_worker_ids(ids);
    }
    void expect_dimension(std::uint64_t dimension) override {
      auto& u = get();
      if constexpr (requires { u.expect_dimension(dimension); }) u.expect_dimension(dimension);
    }
    std::vector<std::uint64_t> push_segments() const override {
      const auto& u = get();
      if constexpr (requires { u.push_segments(); }) {
        return u.push_segments();
      } else {
        return {};
      }
    }
    void* target(const std::type_info& type) noexcept override {
      auto& u = get();
      return type == typeid(std::remove_cvref_t<decltype(u)>) ? static_cast<void*>(&u) : nullptr;
    }
    T t;
  };

  Base& impl() const {
    if (!impl_) throw ConfigError("AnyTransport: used after it was moved from (it holds no transport)");
    return *impl_;
  }

  std::unique_ptr<Base> impl_;
};

static_assert(Transport<AnyTransport>);

}  // namespace psync
