// The event bus: filters, history + live without gaps, bounded queues that drop per subscriber
// and report the loss first, notifiers, close.
#include "agent/events/event_bus.h"

#include <gtest/gtest.h>

#include <atomic>
#include <thread>

#include "agent/events/event_json.h"

namespace meshlane::events {
namespace {

using namespace std::chrono_literals;

Event event(std::string type, std::string workload) {
    return Event{.type = std::move(type), .workload = std::move(workload)};
}

const Event& as_event(const StreamItem& item) { return std::get<Event>(item); }

// Agent-wide loss notices (the observer's kernel-side losses) reach filtered streams too.
TEST(EventBus, NoticesReachEveryFilteredSubscriber) {
    EventBus bus;
    auto web = bus.subscribe({.workload = "web", .types = {kWorkloadEnrolled}});
    bus.publish(Event{.type = "observe_lost_events", .details = {{"lost", "3"}}, .notice = true});
    bus.publish(Event{.type = "observe_lost_events"});  // not a notice: filtered out
    auto got = web->poll(10);
    ASSERT_EQ(got.size(), 1u);
    EXPECT_EQ(as_event(got[0]).type, "observe_lost_events");
    EXPECT_EQ(bus.history({.workload = "web", .types = {"drop"}}).size(), 1u);
}

TEST(EventBus, FiltersByWorkloadAndType) {
    EventBus bus;
    auto web = bus.subscribe({.workload = "web"});
    auto removed = bus.subscribe({.types = {kWorkloadRemoved}});
    bus.publish(event(kWorkloadEnrolled, "web"));
    bus.publish(event(kWorkloadEnrolled, "db"));
    bus.publish(event(kWorkloadRemoved, "db"));
    auto got = web->poll(10);
    ASSERT_EQ(got.size(), 1u);
    EXPECT_EQ(as_event(got[0]).workload, "web");
    EXPECT_EQ(as_event(got[0]).sequence, 1u);
    EXPECT_GT(as_event(got[0]).unix_time_ms, 0);
    got = removed->poll(10);
    ASSERT_EQ(got.size(), 1u);
    EXPECT_EQ(as_event(got[0]).type, kWorkloadRemoved);
    EXPECT_EQ(as_event(got[0]).sequence, 3u);
}

TEST(EventBus, HistoryThenLiveWithoutGapOrRepeat) {
    EventBus bus({.queue_capacity = 8, .history_capacity = 3});
    for (int i = 0; i < 5; ++i) bus.publish(event(kWorkloadEnrolled, "w" + std::to_string(i)));
    std::vector<Event> history;
    auto live = bus.subscribe({}, &history);
    ASSERT_EQ(history.size(), 3u);  // bounded history keeps the newest
    EXPECT_EQ(history.front().sequence, 3u);
    EXPECT_EQ(history.back().sequence, 5u);
    bus.publish(event(kWorkloadUnenrolled, "w0"));
    auto got = live->poll(10);
    ASSERT_EQ(got.size(), 1u);
    EXPECT_EQ(as_event(got[0]).sequence, 6u);
    EXPECT_EQ(bus.history({.workload = "w4"}).size(), 1u);
    EXPECT_EQ(bus.history({.since_unix_ms = unix_time_ms_now() + 60'000}).size(), 0u);
}

TEST(EventBus, SlowSubscriberLosesOnlyItsOwnEventsAndIsTold) {
    EventBus bus({.queue_capacity = 2, .history_capacity = 16});
    auto slow = bus.subscribe({});
    auto fast = bus.subscribe({});
    for (int i = 0; i < 5; ++i) {
        bus.publish(event(kWorkloadEnrolled, "w"));
        EXPECT_EQ(fast->poll(10).size(), 1u);
    }
    auto got = slow->poll(10);
    ASSERT_EQ(got.size(), 3u);
    ASSERT_TRUE(std::holds_alternative<LostEvents>(got[0]));
    EXPECT_EQ(std::get<LostEvents>(got[0]).count, 3u);
    EXPECT_EQ(as_event(got[1]).sequence, 1u);
    EXPECT_EQ(as_event(got[2]).sequence, 2u);
    EXPECT_EQ(slow->dropped(), 3u);
    EXPECT_EQ(fast->dropped(), 0u);
    EXPECT_EQ(bus.stats().dropped, 3u);
    EXPECT_EQ(bus.stats().published, 5u);
    slow.reset();
    EXPECT_EQ(bus.stats().dropped, 3u) << "losses of departed subscribers stay counted";
    EXPECT_EQ(bus.stats().subscribers, 1u);
}

TEST(EventBus, NotifierAndWaitWakeOnPublishAndClose) {
    EventBus bus;
    auto sub = bus.subscribe({});
    std::atomic<int> notified{0};
    sub->set_notifier([&] { ++notified; });
    std::thread publisher([&] {
        std::this_thread::sleep_for(50ms);
        bus.publish(event(kWorkloadEnrolled, "web"));
    });
    auto got = sub->wait(10, 5s);
    publisher.join();
    EXPECT_EQ(got.size(), 1u);
    EXPECT_EQ(notified, 1);
    EXPECT_FALSE(sub->closed());
    std::thread closer([&] {
        std::this_thread::sleep_for(50ms);
        bus.close();
    });
    const auto start = std::chrono::steady_clock::now();
    EXPECT_TRUE(sub->wait(10, 5s).empty());
    closer.join();
    EXPECT_LT(std::chrono::steady_clock::now() - start, 2s);
    EXPECT_TRUE(sub->closed());
    EXPECT_EQ(notified, 2);
    bus.publish(event(kWorkloadEnrolled, "late"));  // ignored after close
    EXPECT_EQ(bus.stats().published, 1u);
}

TEST(EventJson, LinesAreOneJsonObjectEach) {
    Event e = event(kWorkloadRemoved, "web");
    e.sequence = 9;
    e.unix_time_ms = 1000;
    e.details = {{"reason", "netns \"gone\"\n"}};
    EXPECT_EQ(to_ndjson(e),
              "{\"type\":\"workload_removed\",\"sequence\":9,\"time_unix_ms\":1000,"
              "\"workload\":\"web\",\"details\":{\"reason\":\"netns \\\"gone\\\"\\n\"}}\n");
    EXPECT_EQ(to_ndjson(LostEvents{4, 5}),
              "{\"type\":\"lost_events\",\"lost\":4,\"time_unix_ms\":5}\n");
}

}  // namespace
}  // namespace meshlane::events
