#pragma once
/// @file
/// @brief A worker's protocol as a sans-I/O state machine: it owns the local
/// model and the update buffers; the driver computes gradients, moves messages
/// and tells it the time.

#include "psync/compress/codec.hpp"
#include "psync/concepts.hpp"
#include "psync/core/error.hpp"
#include "psync/core/message.hpp"
#include "psync/core/metrics.hpp"
#include "psync/core/transmit.hpp"
#include "psync/optim/optimizer.hpp"
#include "psync/optim/schedule.hpp"
#include "psync/policies/rules.hpp"

#include <Eigen/Core>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace psync {

/// @brief The worker's decisions for model type `M` under policy `P`, with no I/O.
///
/// A driver runs it like this:
/// 1. `start(now)`, send what `poll_transmit()` returns, feed replies to `on_message`
///    until `joined()`.
/// 2. Each step: `begin_step(now)` installs a newly arrived global model (only here
///    do the parameters change under the driver's feet) and says whether the policy
///    lets compute go on. If it does, write the gradient of the loss at `model()`
///    into `gradient()` and call `end_step`; if not, wait for a message.
/// 3. `finish(now)` when no more steps will be taken; keep moving messages until
///    `finished()` (every step pushed and answered, the `Leave` queued).
///
/// The core pushes whenever it has unsent steps and no push in flight, both at a
/// step's end and the moment a reply arrives, which is OSP's background sender
/// and, when the policy waits after each step, a plain synchronous round trip.
///
/// **Rejoining.** When the connection to the server is replaced (the server was
/// restarted, perhaps from a checkpoint), the driver calls `rejoin(now)` and sends
/// the `Join` it queues. The reply's `min_clock` is the clock the server kept for
/// this worker; `on_message` compares it with the worker's own:
/// - equal, with a push in flight: the server kept that push, and the reply is its answer;
/// - equal, nothing in flight: nothing of ours was lost. The worker keeps its model
///   (a valid read at its clock) unless the reply shows the server on another
///   trajectory (the same version with other parameters, or an older version),
///   in which case the reply is installed like any reply;
/// - different: the server lost pushes of ours (it resumed from an older
///   checkpoint, or dropped us and took us back as a late joiner). The push in
///   flight and the unsent steps are dropped (`WorkerReport::pushes_lost`,
///   `steps_discarded`) and the worker continues from the reply's model and clock,
///   as a late joiner does.
/// Until the reply arrives nothing is pushed, and a pending rejoin counts as one
/// uninstalled step, so the synchronous gates (BSP, ASP, SSP) wait for it while
/// OSP's unsent gate lets compute go on.
///
/// **Optimizer.** `O` turns each step's gradient into its update (`optim::Sgd` by
/// default: u = -lr * g, bit for bit what this core always did); the learning rate of
/// step k (0-based, counted over this worker's steps) is `schedule(k)`, or the
/// constant `learning_rate` without a schedule. With `O = optim::OnServer` the worker
/// pushes the sum of its gradients instead and the server's optimizer makes the update
/// (its local model takes plain SGD steps at the rate meanwhile); the `Join` then names
/// the policy with `optim::gradient_suffix`. The policy's combination rule is unchanged.
///
/// **Compression.** `use_codec` makes every push carry its update encoded
/// (docs/compression.md): fp16, top-k or qsgd8, each with error feedback (what a push
/// did not carry is added to the next one). The server decodes before it combines, so
/// the policy's rule applies to the decoded update. Under LOSP the residual counts as
/// unreflected: the installed model is global + unsent steps + residual.
template <ParameterSet M, SyncPolicy P, optim::WorkerRule O = optim::Sgd>
class WorkerCore {
  static constexpr bool pushes_gradients = std::is_same_v<O, optim::OnServer>;

 public:
  /// @brief Worker `id` starting from `model` (replaced by the server's at join), turning
  /// gradients into updates with `optimizer` at `schedule`'s rate (empty: the constant
  /// `learning_rate`, which must be positive and finite either way).
  WorkerCore(M model, PeerId id, float learning_rate, P policy, O optimizer = {}, optim::Schedule schedule = {})
      : model_(std::move(model)),
        policy_(std::move(policy)),
        id_(id),
        learning_rate_(learning_rate),
        optimizer_(std::move(optimizer)),
        schedule_(std::move(schedule)) {
    if (!(learning_rate_ > 0) || !std::isfinite(learning_rate_)) {
      throw ConfigError(who() + ": learning rate must be positive and finite, got " + std::to_string(learning_rate_));
    }
    if constexpr (pushes_gradients) {
      if constexpr (!installs_global<P>) {
        // Compensation adds the worker's own unreflected *updates* to the global model;
        // with the server's optimizer making the updates, the worker does not know them.
        throw ConfigError(who() + ": policy '" + policy_.name() + "' installs '" + P::Install::name +
                          "' models (LOSP's local compensation), which a server-side optimizer (optim::OnServer) "
                          "cannot support: run the optimizer on the workers, or use a policy that installs the "
                          "global model");
      }
    }
    const auto n = model_.parameters().size();
    if constexpr (!pushes_gradients) optimizer_.reset(n);
    grad_ = Eigen::VectorXf::Zero(n);
    accumulated_ = Eigen::VectorXf::Zero(n);
    spare_.reserve(4);
    install_.reset(n);
    outbox_.reserve(4);
    report_.id = id;
  }

  /// @brief This worker's id; a worker created as `any_worker` takes the id its join reply assigns.
  PeerId id() const noexcept { return id_; }
  /// @brief The model to compute the next gradient on (stable between `begin_step` calls).
  M& model() noexcept { return model_; }
  /// @brief The model.
  const M& model() const noexcept { return model_; }
  /// @brief Where the driver writes the gradient before `end_step`; sized to the model.
  Eigen::VectorXf& gradient() noexcept { return grad_; }
  /// @brief The policy.
  const P& policy() const noexcept { return policy_; }
  /// @brief True once the server's initial model is installed.
  bool joined() const noexcept { return joined_; }
  /// @brief True once every step is pushed and answered and the `Leave` is queued.
  bool finished() const noexcept { return finished_; }
  /// @brief True while a push awaits its reply.
  bool awaiting_reply() const noexcept { return in_flight_active_; }
  /// @brief True between `rejoin` and the reply to its `Join`.
  bool rejoining() const noexcept { return rejoining_; }
  /// @brief When the push in flight (or the join) was sent.
  Clock::time_point sent_at() const noexcept { return sent_at_; }
  /// @brief This worker's clock: pushes sent so far (from the join clock on).
  std::uint64_t clock() const noexcept { return clock_; }
  /// @brief Version of the installed global model.
  std::uint64_t version() const noexcept { return version_; }
  /// @brief The slowest live clock the server reported with the last model.
  std::uint64_t last_min_clock() const noexcept { return last_min_clock_; }
  /// @brief Local steps counted as the gates count them.
  StepCounts counts() const noexcept {
    // A pending rejoin is a read in flight: the synchronous gates wait for its answer.
    const std::uint32_t pending = rejoining_ && !in_flight_active_ ? 1 : 0;
    return {unsent_, in_flight_, unsent_ + in_flight_ + inbox_steps_ + pending};
  }
  /// @brief The optimizer (`optim::OnServer` when the server runs it).
  const O& optimizer() const noexcept { return optimizer_; }
  /// @brief The learning rate of the last step taken (of the next one before any step).
  float learning_rate() const noexcept { return last_lr_; }
  /// @brief The learning rate step `step` (0-based) takes: the schedule's, or the constant one.
  float learning_rate_at(std::uint64_t step) const { return optim::rate_at(schedule_, learning_rate_, step, [this] { return who(); }); }
  /// @brief What the core measured (steps, pushes, installs, round trips, staleness).
  const WorkerReport& report() const noexcept { return report_; }
  /// @brief The codec pushes are encoded with ("none" unless `use_codec` chose one).
  const compress::Codec& codec() const noexcept { return encoder_.codec(); }
  /// @brief What error feedback holds back for the next push (empty without a codec).
  const Eigen::VectorXf& residual() const noexcept { return encoder_.residual(); }

  /// @brief Encodes every push with `codec` from now on; `seed` seeds its random draws
  /// (qsgd8), so a run is reproducible. Must be called before the first push (else
  /// `ConfigError`). "none" keeps the dense push, bit for bit. `segments`: the slice
  /// sizes of sharded servers (`Sharded::push_segments`), which the push is cut into
  /// (`compress::split`); empty for one server.
  void use_codec(const compress::Codec& codec, std::uint64_t seed = 1, std::vector<std::uint64_t> segments = {}) {
    if (report_.pushes != 0) throw ConfigError(who() + ": the codec must be chosen before the first push");
    encoder_ = compress::Encoder(codec, seed);
    encoder_.reset(grad_.size(), std::move(segments));
  }

  /// @brief The next message to send to the server, or nothing.
  std::optional<Transmit> poll_transmit() { return outbox_.poll(); }

  /// @brief Queues the `Join`.
  void start(Clock::time_point now) {
    msg::Join j;
    j.worker = id_;
    j.dimension = static_cast<std::uint64_t>(grad_.size());
    j.policy = join_policy();
    outbox_.push(server_peer, std::move(j));
    sent_at_ = now;
  }

  /// @brief The connection to the server was replaced: drops what was queued for
  /// the old one and queues a `Join` under this worker's id. Nothing is pushed until
  /// its reply arrives; the reply's clock says what the server kept (see the class
  /// comment). Before the first join reply this simply joins again.
  void rejoin(Clock::time_point now) {
    while (outbox_.poll()) {
    }
    if (!joined_) {
      start(now);
      return;
    }
    if (!rejoining_ && !in_flight_active_) {
      // Nothing in flight, so nothing unsent either (a push would have left): the newest
      // global model we hold, kept to tell a server on another trajectory from one that moved on.
      held_version_ = inbox_ ? inbox_version_ : version_;
      if (inbox_) {
        held_global_ = inbox_->values();
      } else {
        held_global_ = model_.parameters();
      }
    }
    rejoining_ = true;
    // A Leave that may not have reached the server is queued again after the reply.
    finished_ = false;
    msg::Join j;
    j.worker = id_;
    j.dimension = static_cast<std::uint64_t>(grad_.size());
    j.policy = join_policy();
    outbox_.push(server_peer, std::move(j));
  }

  /// @brief Handles a message from the server. Throws `ProtocolError` for a refusal
  /// or an unexpected message (`ServerStoppingError` for `shutting_down`, `IdInUseError`
  /// for a join refused as `duplicate_worker`),
  /// `TransportError` when the server is gone.
  void on_message(Message&& m, Clock::time_point now) {
    if (auto* model = std::get_if<msg::Model>(&m)) return on_model(std::move(*model), now);
    if (auto* e = std::get_if<msg::Error>(&m)) {
      std::string text = who() + ": server refused " + (joined_ && !rejoining_ ? "push" : "join") + ": " +
                         std::string(error_code_name(e->code)) + ": " + e->text;
      if (e->code == msg::ErrorCode::shutting_down) throw ServerStoppingError(std::move(text));
      if (e->code == msg::ErrorCode::duplicate_worker && (!joined_ || rejoining_)) throw IdInUseError(std::move(text));
      throw ProtocolError(std::move(text));
    }
    if (std::holds_alternative<msg::Leave>(m)) {
      throw TransportError(who() + ": lost the server" + (in_flight_active_ || !joined_ ? " while waiting for a model" : ""));
    }
    throw ProtocolError(who() + ": unexpected '" + std::string(message_name(m)) + "' message from the server");
  }

  /// @brief A step boundary: installs the newest global model if one arrived, then
  /// returns whether the policy lets the next step start.
  bool begin_step(Clock::time_point) {
    if (inbox_) install_inbox();
    report_.max_unsent = std::max(report_.max_unsent, unsent_);
    return policy_.compute_may_continue(counts());
  }

  /// @brief The driver wrote the gradient of one step on `samples` samples into
  /// `gradient()`: turns it into the update u (the optimizer's, at this step's rate),
  /// applies u locally, accumulates it for the next push, and pushes if nothing is in
  /// flight. With `optim::OnServer` the gradient itself is accumulated and the local
  /// model takes u = -lr * g. `loss` is the batch's loss (NaN if unknown).
  void end_step(std::uint64_t samples, double loss, Clock::time_point now) {
    const float lr = learning_rate_at(report_.steps);
    last_lr_ = lr;
    if (unsent_ == 0) accumulated_base_ = version_;
    if constexpr (pushes_gradients) {
      accumulated_ += grad_;
      model_.parameters() -= lr * grad_;
    } else {
      optimizer_.apply(grad_, lr);
      model_.parameters() += grad_;
      accumulated_ += grad_;
      install_.on_local_update(grad_);
    }
    ++unsent_;
    ++report_.steps;
    report_.samples += samples;
    report_.last_loss = loss;
    maybe_push(now);
  }

  /// @brief No more steps: pushes what is left and, once everything is answered,
  /// installs the last model and queues the `Leave`.
  void finish(Clock::time_point now) {
    finishing_ = true;
    maybe_push(now);
    maybe_leave();
  }

 private:
  std::string who() const { return "worker " + std::to_string(id_); }

  std::string join_policy() const {
    if constexpr (pushes_gradients) {
      return policy_.name() + optim::gradient_suffix;
    } else {
      return policy_.name();
    }
  }

  // A buffer the server handed back, or a received vector once read: the next push's.
  void keep_spare(Eigen::VectorXf&& v) {
    // Bounded: an encoding worker takes no spare per push, so they would pile up.
    if (v.size() == grad_.size() && spare_.size() < 4) spare_.push_back(std::move(v));
  }

  // An encoded push's byte buffer the server handed back: the next encoded push's.
  void keep_spare_payload(std::vector<std::byte>&& b) {
    if (b.capacity() != 0 && spare_payloads_.size() < 4) spare_payloads_.push_back(std::move(b));
  }

  // Done with a received model: its vectors become spares; a shared snapshot is let go.
  void release(msg::Model& m) {
    keep_spare(std::move(m.parameters));
    keep_spare(std::move(m.spare));
    keep_spare_payload(std::move(m.spare_payload));
    m.shared.reset();
  }

  // The reply reflects every push so far: LOSP's unreflected sum is the unsent steps
  // plus what error feedback still holds back.
  void note_reply() {
    install_.on_reply(accumulated_);
    if (encoder_.encodes()) install_.on_local_update(encoder_.residual());
  }

  void on_model(msg::Model&& m, Clock::time_point now) {
    if (m.values().size() != grad_.size()) {
      throw ProtocolError(who() + ": server sent " + std::to_string(m.values().size()) + " parameters, model has " +
                          std::to_string(grad_.size()));
    }
    keep_spare(std::move(m.spare));
    keep_spare_payload(std::move(m.spare_payload));
    last_min_clock_ = m.min_clock;
    if (!joined_) {
      if (id_ == any_worker) {
        // We joined without an id: the reply names the one the server assigned, ours from now on.
        if (m.worker >= any_worker) {
          throw ProtocolError(who() + ": the join reply assigns worker id " + std::to_string(m.worker));
        }
        id_ = m.worker;
        report_.id = id_;
      }
      // The join reply: the initial model, and the clock this worker starts at (a late joiner's is not 0).
      model_.parameters() = m.values();
      version_ = m.version;
      clock_ = m.min_clock;
      joined_ = true;
      release(m);
      return;
    }
    if (rejoining_) {
      rejoining_ = false;
      ++report_.rejoins;
      if (!take_rejoin_reply(m, now)) return;
      // The server kept the push in flight: this is its answer.
    }
    if (!in_flight_active_) throw ProtocolError(who() + ": the server sent a model no push asked for");
    const double total = std::chrono::duration<double>(now - sent_at_).count();
    const double held = std::min(total, static_cast<double>(m.held_ns) * 1e-9);
    report_.held_s += held;
    report_.comm_s += total - held;
    report_.clock_staleness.add(clock_ > m.min_clock ? clock_ - m.min_clock : 0);
    if (inbox_) {
      // Not installed yet: the newer model supersedes it and covers both pushes' steps.
      release(*inbox_);
      inbox_steps_ += in_flight_;
    } else {
      inbox_steps_ = in_flight_;
    }
    inbox_version_ = m.version;
    // Kept as it came (a shared snapshot stays shared): installing reads it once.
    inbox_ = std::move(m);
    in_flight_ = 0;
    in_flight_active_ = false;
    note_reply();
    maybe_push(now);
    maybe_leave();
  }

  /// Handles the reply to a rejoin; true if it answers the push in flight (the caller
  /// then takes it as that push's reply), false if it was dealt with here.
  bool take_rejoin_reply(msg::Model& m, Clock::time_point now) {
    const std::uint64_t kept = m.min_clock;
    if (kept == clock_) {
      if (in_flight_active_) return true;
      // Nothing of ours was lost. Keep our model (a valid read at our clock) unless the
      // server is on another trajectory than the newest model we hold.
      const bool diverged =
          m.version < held_version_ || (m.version == held_version_ && held_global_ != m.values());
      held_global_.resize(0);
      if (!diverged) {
        release(m);
      } else {
        if (inbox_) release(*inbox_);
        inbox_version_ = m.version;
        inbox_ = std::move(m);
        inbox_steps_ = 0;
        note_reply();
        if (unsent_ > 0) accumulated_base_ = std::min(accumulated_base_, m.version);
      }
      maybe_push(now);
      maybe_leave();
      return false;
    }
    // The server lost pushes of ours: continue from its model and clock, like a late joiner.
    report_.pushes_lost += clock_ > kept ? clock_ - kept : 0;
    report_.steps_discarded += unsent_ + (in_flight_active_ ? in_flight_ : 0);
    in_flight_ = 0;
    in_flight_active_ = false;
    unsent_ = 0;
    accumulated_.setZero();
    encoder_.clear_residual();  // it belongs to the pushes the server lost
    if (inbox_) {
      release(*inbox_);
      inbox_.reset();
    }
    inbox_steps_ = 0;
    install_.on_reply(accumulated_);  // nothing is unreflected any more
    model_.parameters() = m.values();
    version_ = m.version;
    clock_ = kept;
    held_global_.resize(0);
    release(m);
    maybe_leave();
    return false;
  }

  void install_inbox() {
    // The one copy of a received model: into the local model, on the worker's own thread.
    install_.install(model_.parameters(), inbox_->values());
    version_ = inbox_version_;
    ++report_.installs;
    release(*inbox_);
    inbox_.reset();
    inbox_steps_ = 0;
  }

  void maybe_push(Clock::time_point now) {
    if (in_flight_active_ || rejoining_ || unsent_ == 0) return;
    if (encoder_.encodes()) {
      // Encoded (with error feedback) into a byte buffer the server hands back; the
      // accumulated sum stays ours and starts again from zero.
      std::vector<std::byte> bytes;
      if (!spare_payloads_.empty()) {
        bytes = std::move(spare_payloads_.back());
        spare_payloads_.pop_back();
      }
      encoder_.encode(accumulated_, bytes);
      accumulated_.setZero();
      report_.pushed_bytes += bytes.size();
      msg::Push p{clock_, accumulated_base_, unsent_, Eigen::VectorXf(), encoder_.codec().encoding,
                  static_cast<std::uint64_t>(grad_.size()), std::move(bytes)};
      outbox_.push(server_peer, std::move(p));
      sent_push();
      sent_at_ = now;
      return;
    }
    Eigen::VectorXf payload = std::move(accumulated_);
    if (spare_.empty()) {
      // Only transports that do not hand buffers back (a socket) get here.
      accumulated_ = Eigen::VectorXf::Zero(payload.size());
    } else {
      accumulated_ = std::move(spare_.back());
      spare_.pop_back();
      accumulated_.setZero();
    }
    report_.pushed_bytes += static_cast<std::uint64_t>(payload.size()) * sizeof(float);
    outbox_.push(server_peer, msg::Push{clock_, accumulated_base_, unsent_, std::move(payload)});
    sent_push();
    sent_at_ = now;
  }

  void sent_push() {
    ++clock_;
    ++report_.pushes;
    report_.steps_per_push.add(unsent_);
    in_flight_ = unsent_;
    unsent_ = 0;
    in_flight_active_ = true;
  }

  void maybe_leave() {
    if (!finishing_ || finished_ || rejoining_ || unsent_ > 0 || in_flight_active_) return;
    if (inbox_) install_inbox();
    outbox_.push(server_peer, msg::Leave{msg::LeaveReason::finished});
    finished_ = true;
  }

  M model_;
  [[no_unique_address]] P policy_;
  typename P::Install install_;
  PeerId id_;
  float learning_rate_;
  O optimizer_;
  optim::Schedule schedule_;
  float last_lr_ = learning_rate_;
  Eigen::VectorXf grad_;
  Eigen::VectorXf accumulated_;  // local updates not yet taken by a push
  std::vector<Eigen::VectorXf> spare_;
  compress::Encoder encoder_;                      // dense unless use_codec chose a codec
  std::vector<std::vector<std::byte>> spare_payloads_;  // encoded pushes' buffers, back from the server
  std::optional<msg::Model> inbox_;       // newest global model not yet installed
  Eigen::VectorXf held_global_;           // at a rejoin with nothing in flight: the newest global held
  std::uint64_t held_version_ = 0;        // and its version
  std::uint64_t inbox_version_ = 0;
  std::uint32_t inbox_steps_ = 0;  // own steps that model reflects and the installed one does not
  std::uint32_t unsent_ = 0;
  std::uint32_t in_flight_ = 0;
  bool in_flight_active_ = false;
  std::uint64_t accumulated_base_ = 0;
  std::uint64_t clock_ = 0;
  std::uint64_t version_ = 0;
  std::uint64_t last_min_clock_ = 0;
  bool joined_ = false;
  bool rejoining_ = false;
  bool finishing_ = false;
  bool finished_ = false;
  Clock::time_point sent_at_{};
  detail::Outbox outbox_;
  WorkerReport report_;
};

}  // namespace psync
