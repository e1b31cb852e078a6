#include "agent/events/event_bus.h"

#include <algorithm>

namespace meshlane::events {

struct detail::SubscriberState {
    EventFilter filter;
    std::deque<Event> queue;
    std::uint64_t dropped_pending = 0;  // not yet reported in a LostEvents notice
    std::uint64_t dropped_total = 0;
    std::function<void()> notifier;
};

struct detail::BusState {
    explicit BusState(EventBusOptions opts) : options(opts) {}
    const EventBusOptions options;
    mutable std::mutex mutex;
    std::condition_variable changed;
    std::deque<Event> history;
    std::set<std::shared_ptr<SubscriberState>> subscribers;
    std::uint64_t next_sequence = 1;
    std::uint64_t published = 0;
    std::uint64_t dropped_by_departed = 0;
    bool closed = false;
};

std::int64_t unix_time_ms_now() {
    return std::chrono::duration_cast<std::chrono::milliseconds>(
               std::chrono::system_clock::now().time_since_epoch())
        .count();
}

bool EventFilter::matches(const Event& event) const {
    if (event.notice) return event.unix_time_ms >= since_unix_ms;
    if (!workload.empty() && event.workload != workload) return false;
    if (!types.empty() && !types.contains(event.type)) return false;
    return event.unix_time_ms >= since_unix_ms;
}

namespace {

std::vector<Event> matching_history(const detail::BusState& state, const EventFilter& filter) {
    std::vector<Event> out;
    for (const auto& event : state.history)
        if (filter.matches(event)) out.push_back(event);
    return out;
}

}  // namespace

// ---------------------------------------------------------------------------------------------

Subscription::Subscription(std::shared_ptr<detail::BusState> bus,
                           std::shared_ptr<detail::SubscriberState> me)
    : bus_(std::move(bus)), me_(std::move(me)) {}

Subscription::~Subscription() {
    std::lock_guard lock(bus_->mutex);
    bus_->dropped_by_departed += me_->dropped_total;
    bus_->subscribers.erase(me_);
}

std::vector<StreamItem> Subscription::poll(std::size_t max) {
    std::vector<StreamItem> items;
    std::lock_guard lock(bus_->mutex);
    if (max == 0) return items;
    if (me_->dropped_pending > 0) {
        items.emplace_back(LostEvents{me_->dropped_pending, unix_time_ms_now()});
        me_->dropped_pending = 0;
    }
    while (items.size() < max && !me_->queue.empty()) {
        items.emplace_back(std::move(me_->queue.front()));
        me_->queue.pop_front();
    }
    return items;
}

std::vector<StreamItem> Subscription::wait(std::size_t max, std::chrono::milliseconds timeout) {
    {
        std::unique_lock lock(bus_->mutex);
        bus_->changed.wait_for(lock, timeout, [&] {
            return bus_->closed || !me_->queue.empty() || me_->dropped_pending > 0;
        });
    }
    return poll(max);
}

void Subscription::set_notifier(std::function<void()> notifier) {
    std::lock_guard lock(bus_->mutex);
    me_->notifier = std::move(notifier);
}

bool Subscription::closed() const {
    std::lock_guard lock(bus_->mutex);
    return bus_->closed;
}

std::uint64_t Subscription::dropped() const {
    std::lock_guard lock(bus_->mutex);
    return me_->dropped_total;
}

// ---------------------------------------------------------------------------------------------

EventBus::EventBus(EventBusOptions options) : state_(std::make_shared<detail::BusState>(options)) {}

EventBus::~EventBus() { close(); }

void EventBus::publish(Event event) {
    std::vector<std::function<void()>> notify;
    {
        std::lock_guard lock(state_->mutex);
        if (state_->closed) return;
        event.sequence = state_->next_sequence++;
        if (event.unix_time_ms == 0) event.unix_time_ms = unix_time_ms_now();
        ++state_->published;
        for (const auto& subscriber : state_->subscribers) {
            if (!subscriber->filter.matches(event)) continue;
            // Full queue: this subscriber is too slow; drop for it alone and say so later.
            if (subscriber->queue.size() >= state_->options.queue_capacity) {
                ++subscriber->dropped_pending;
                ++subscriber->dropped_total;
            } else {
                subscriber->queue.push_back(event);
            }
            if (subscriber->notifier) notify.push_back(subscriber->notifier);
        }
        state_->history.push_back(std::move(event));
        while (state_->history.size() > state_->options.history_capacity)
            state_->history.pop_front();
    }
    state_->changed.notify_all();
    for (const auto& callback : notify) callback();
}

std::unique_ptr<Subscription> EventBus::subscribe(const EventFilter& filter,
                                                  std::vector<Event>* history) {
    auto me = std::make_shared<detail::SubscriberState>();
    me->filter = filter;
    // `since` selects history; live events are all newer than the subscription anyway.
    me->filter.since_unix_ms = 0;
    std::lock_guard lock(state_->mutex);
    if (history != nullptr) *history = matching_history(*state_, filter);
    state_->subscribers.insert(me);
    return std::unique_ptr<Subscription>(new Subscription(state_, std::move(me)));
}

std::vector<Event> EventBus::history(const EventFilter& filter) const {
    std::lock_guard lock(state_->mutex);
    return matching_history(*state_, filter);
}

void EventBus::close() {
    std::vector<std::function<void()>> notify;
    {
        std::lock_guard lock(state_->mutex);
        if (state_->closed) return;
        state_->closed = true;
        for (const auto& subscriber : state_->subscribers)
            if (subscriber->notifier) notify.push_back(subscriber->notifier);
    }
    state_->changed.notify_all();
    for (const auto& callback : notify) callback();
}

EventBusStats EventBus::stats() const {
    std::lock_guard lock(state_->mutex);
    EventBusStats stats{state_->published, state_->dropped_by_departed, state_->subscribers.size()};
    for (const auto& subscriber : state_->subscribers) stats.dropped += subscriber->dropped_total;
    return stats;
}

}  // namespace meshlane::events
