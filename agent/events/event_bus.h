// An in-agent publish/subscribe bus for the event streams (REST /v1/events, gRPC StreamEvents).
// Publishers never block on subscribers: each subscriber has a bounded queue, and an event that
// does not fit is dropped for that subscriber only and counted; the subscriber then receives a
// lost-events notice before its next event (Hubble's LostEvent, never a silent gap).
// A bounded history of recent events lets a new subscriber start with what just happened.
//
// Threading: every member is safe to call from any thread. Publishers are the workload manager
// today and the observer later; event types are free-form snake_case strings, documented in
// api/openapi.yaml and api/meshlane.proto.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <variant>
#include <vector>

namespace meshlane::events {

// Event types published by the agent itself.
inline constexpr const char* kWorkloadEnrolled = "workload_enrolled";
inline constexpr const char* kWorkloadUnenrolled = "workload_unenrolled";
// The workload's netns or cgroup disappeared (pod deleted) and the agent removed its state.
inline constexpr const char* kWorkloadRemoved = "workload_removed";

struct Event {
    std::uint64_t sequence = 0;     // assigned by publish(): bus-wide, strictly increasing
    std::int64_t unix_time_ms = 0;  // assigned by publish() when left 0
    std::string type;
    std::string workload;  // empty for agent-wide events
    std::map<std::string, std::string> details;
    // An agent-wide notice every stream gets whatever its workload/type filter (the observer's
    // kernel-side lost events): a filtered stream must not have a silent gap either.
    bool notice = false;
};

// "count events matching this subscription were dropped because its queue was full".
struct LostEvents {
    std::uint64_t count = 0;
    std::int64_t unix_time_ms = 0;
};

using StreamItem = std::variant<Event, LostEvents>;

struct EventFilter {
    std::string workload;            // empty: any
    std::set<std::string> types;     // empty: any
    std::int64_t since_unix_ms = 0;  // history only: events at or after this time
    // Notices (Event::notice) match whatever the workload and types.
    bool matches(const Event& event) const;
};

struct EventBusOptions {
    std::size_t queue_capacity = 1024;  // per subscriber
    std::size_t history_capacity = 1024;
};

struct EventBusStats {
    std::uint64_t published = 0;
    std::uint64_t dropped = 0;  // summed over subscribers, including departed ones
    std::size_t subscribers = 0;
};

namespace detail {
struct BusState;
struct SubscriberState;
}  // namespace detail

class Subscription {
  public:
    ~Subscription();  // unsubscribes
    Subscription(const Subscription&) = delete;
    Subscription& operator=(const Subscription&) = delete;

    // Up to `max` items without blocking; a pending lost-events notice comes first.
    std::vector<StreamItem> poll(std::size_t max);
    // Blocks until an item is available, the bus is closed, or `timeout` passes.
    std::vector<StreamItem> wait(std::size_t max, std::chrono::milliseconds timeout);
    // Called (from the publisher's thread, with no bus lock held) whenever items become
    // available or the bus closes. Must be cheap and must not call back into the bus.
    void set_notifier(std::function<void()> notifier);
    // The bus was closed (agent shutting down): nothing more will arrive after the queue.
    bool closed() const;
    std::uint64_t dropped() const;

  private:
    friend class EventBus;
    Subscription(std::shared_ptr<detail::BusState> bus,
                 std::shared_ptr<detail::SubscriberState> me);
    std::shared_ptr<detail::BusState> bus_;
    std::shared_ptr<detail::SubscriberState> me_;
};

class EventBus {
  public:
    explicit EventBus(EventBusOptions options = {});
    ~EventBus();  // close()
    EventBus(const EventBus&) = delete;
    EventBus& operator=(const EventBus&) = delete;

    void publish(Event event);
    // Atomically: the matching history (oldest first, into `history`) and a live subscription
    // that starts right after it, so nothing is missed or repeated in between.
    std::unique_ptr<Subscription> subscribe(const EventFilter& filter,
                                            std::vector<Event>* history = nullptr);
    // The matching history only (a non-follow request).
    std::vector<Event> history(const EventFilter& filter) const;
    // Wakes every subscriber; later subscriptions start closed.
    void close();
    EventBusStats stats() const;

  private:
    std::shared_ptr<detail::BusState> state_;
};

std::int64_t unix_time_ms_now();

}  // namespace meshlane::events
