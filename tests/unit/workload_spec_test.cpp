// WorkloadSpec parsing and validation: every rejected input must name the field at fault.
#include "agent/model/workload_spec.h"

#include <gtest/gtest.h>

#include <boost/json.hpp>

namespace meshlane {
namespace {

namespace json = boost::json;

WorkloadSpec minimal_spec() {
    WorkloadSpec spec;
    spec.name = "web-1";
    spec.cgroup_path = "/sys/fs/cgroup/pods/web-1";
    spec.netns_path = "/var/run/netns/web-1";
    return spec;
}

json::object minimal_json() {
    return json::object{{"name", "web-1"},
                        {"cgroup", "/sys/fs/cgroup/pods/web-1"},
                        {"netns", "/var/run/netns/web-1"}};
}

template <typename T>
void expect_error_names(const Result<T>& result, std::string_view field) {
    ASSERT_FALSE(result.ok()) << "expected an error naming " << field;
    EXPECT_EQ(result.error().code, EINVAL);
    EXPECT_NE(result.error().message.find(field), std::string::npos)
        << "\"" << result.error().message << "\" does not name " << field;
}

// --- Cidr ------------------------------------------------------------------------------------

TEST(SpecCidr, ParsesIpv4WithPrefix) {
    auto cidr = Cidr::parse("10.1.0.0/16");
    ASSERT_TRUE(cidr.ok());
    EXPECT_TRUE(cidr->is_v4);
    EXPECT_EQ(cidr->prefix_len, 16);
    EXPECT_EQ(cidr->mapped_prefix_len(), 112);
    EXPECT_EQ(cidr->addr[10], 0xff);
    EXPECT_EQ(cidr->addr[11], 0xff);
    EXPECT_EQ(cidr->addr[12], 10);
    EXPECT_EQ(cidr->addr[13], 1);
    EXPECT_EQ(cidr->to_string(), "10.1.0.0/16");
}

TEST(SpecCidr, BareAddressIsHostRoute) {
    EXPECT_EQ(Cidr::parse("192.168.1.7")->to_string(), "192.168.1.7/32");
    EXPECT_EQ(Cidr::parse("fd00::1")->to_string(), "fd00::1/128");
}

TEST(SpecCidr, ParsesIpv6) {
    auto cidr = Cidr::parse("fd00:10::/64");
    ASSERT_TRUE(cidr.ok());
    EXPECT_FALSE(cidr->is_v4);
    EXPECT_EQ(cidr->mapped_prefix_len(), 64);
    EXPECT_EQ(cidr->to_string(), "fd00:10::/64");
}

TEST(SpecCidr, HostBitsAreClearedLikeIptables) {
    EXPECT_EQ(Cidr::parse("10.0.0.1/8")->to_string(), "10.0.0.0/8");
    EXPECT_EQ(Cidr::parse("10.255.255.255/9")->to_string(), "10.128.0.0/9");
    EXPECT_EQ(Cidr::parse("fd00::ffff/120")->to_string(), "fd00::ff00/120");
    EXPECT_EQ(Cidr::parse("1.2.3.4/0")->to_string(), "0.0.0.0/0");
    EXPECT_EQ(Cidr::parse("1.2.3.4/0")->addr[10], 0xff) << "v4-mapped prefix must stay";
}

TEST(SpecCidr, RejectsGarbage) {
    for (const char* bad :
         {"", "/8", "10.0.0.0/", "10.0.0.0/33", "fd00::/129", "10.0.0/8", "10.0.0.0/-1",
          "10.0.0.0/8x", "300.0.0.1", "fe80::1%eth0", "*", "10.0.0.0/ 8", "0x0a000001"}) {
        EXPECT_FALSE(Cidr::parse(bad).ok()) << bad;
    }
}

// --- lists -----------------------------------------------------------------------------------

TEST(SpecPortList, ParsesSortsAndTrims) {
    auto ports = parse_port_list("443, 80,8080", "exclude-outbound-ports");
    ASSERT_TRUE(ports.ok());
    EXPECT_EQ(*ports, (std::vector<std::uint16_t>{80, 443, 8080}));
    EXPECT_TRUE(parse_port_list("", "f")->empty());
    EXPECT_EQ(*parse_port_list("1,65535", "f"), (std::vector<std::uint16_t>{1, 65535}));
}

TEST(SpecPortList, ErrorsNameFieldAndToken) {
    for (const char* bad : {"0", "65536", "80,,443", "80,", "http", "-1", "+80", "8o", "*"}) {
        auto ports = parse_port_list(bad, "exclude-inbound-ports");
        expect_error_names(ports, "exclude-inbound-ports");
    }
    auto ports = parse_port_list("80,abc", "include-ports");
    expect_error_names(ports, "\"abc\"");
    auto dup = parse_port_list("80,443,80", "exclude-outbound-ports");
    expect_error_names(dup, "exclude-outbound-ports");
    expect_error_names(dup, "80 is listed twice");
}

TEST(SpecCidrList, StarMeansAll) {
    auto all = parse_cidr_list("*", "include-cidrs");
    ASSERT_TRUE(all.ok());
    EXPECT_FALSE(all->has_value());
    auto none = parse_cidr_list("", "include-cidrs");
    ASSERT_TRUE(none.ok());
    ASSERT_TRUE(none->has_value());
    EXPECT_TRUE((*none)->empty());
}

TEST(SpecCidrList, ParsesMixedFamiliesInCanonicalOrder) {
    auto list = parse_cidr_list("fd00::/8, 10.0.0.0/8,192.168.0.0/16", "exclude-cidrs");
    ASSERT_TRUE(list.ok());
    ASSERT_TRUE(list->has_value());
    EXPECT_EQ(format_cidr_list(false, **list), "10.0.0.0/8,192.168.0.0/16,fd00::/8");
}

TEST(SpecCidrList, ErrorsNameField) {
    expect_error_names(parse_cidr_list("10.0.0.0/8,bogus", "include-cidrs"), "include-cidrs");
    expect_error_names(parse_cidr_list("10.0.0.0/8,bogus", "include-cidrs"), "bogus");
    expect_error_names(parse_cidr_list("10.0.0.0/8,*", "include-cidrs"), "include-cidrs");
    expect_error_names(parse_cidr_list("10.0.0.0/8,,", "exclude-cidrs"), "exclude-cidrs");
    // Equal after normalisation.
    expect_error_names(parse_cidr_list("10.0.0.1/8,10.0.0.2/8", "exclude-cidrs"), "listed twice");
}

TEST(SpecFormat, Lists) {
    EXPECT_EQ(format_port_list({}), "");
    EXPECT_EQ(format_port_list({80, 443}), "80,443");
    EXPECT_EQ(format_cidr_list(true, {}), "*");
    EXPECT_EQ(format_cidr_list(false, {}), "");
}

TEST(SpecStartupPolicy, RoundTrip) {
    for (auto policy : {StartupPolicy::kRefuse, StartupPolicy::kPassthrough}) {
        EXPECT_EQ(*parse_startup_policy(to_string(policy)), policy);
    }
    expect_error_names(parse_startup_policy("allow"), "startup_policy");
}

// --- validation ------------------------------------------------------------------------------

TEST(SpecValidateName, AcceptsKubernetesStyleNames) {
    const std::string longest(63, 'a');
    for (const std::string& good : {std::string("a"), std::string("web-1"), std::string("ns.pod_x"),
                                    std::string("0abc"), longest}) {
        EXPECT_TRUE(validate_name(good).ok()) << good;
    }
}

TEST(SpecValidateName, RejectsPathLikeOrOddNames) {
    for (const std::string& bad : {std::string(""), std::string(64, 'a'), std::string("Web"),
                                   std::string("-a"), std::string(".a"), std::string("a/b"),
                                   std::string("a..b"), std::string("a b"), std::string("a\nb")}) {
        expect_error_names(validate_name(bad), "name");
    }
}

TEST(SpecValidate, MinimalSpecIsValid) { EXPECT_TRUE(validate(minimal_spec()).ok()); }

struct BadSpecCase {
    const char* field;
    void (*mutate)(WorkloadSpec&);
};

TEST(SpecValidate, EveryRejectionNamesTheField) {
    const BadSpecCase cases[] = {
        {"name", [](WorkloadSpec& s) { s.name = "Bad/Name"; }},
        {"cgroup", [](WorkloadSpec& s) { s.cgroup_path.clear(); }},
        {"cgroup", [](WorkloadSpec& s) { s.cgroup_path = "pods/../../etc"; }},
        {"netns", [](WorkloadSpec& s) { s.netns_path = "relative/netns"; }},
        {"netns", [](WorkloadSpec& s) { s.netns_path.clear(); }},
        {"proxy_uid", [](WorkloadSpec& s) { s.proxy_uid = 0xffffffff; }},
        {"proxy_gid", [](WorkloadSpec& s) { s.proxy_gid = 0xffffffff; }},
        {"outbound_port", [](WorkloadSpec& s) { s.outbound_port = 0; }},
        {"inbound_port", [](WorkloadSpec& s) { s.inbound_port = 0; }},
        {"inbound_port", [](WorkloadSpec& s) { s.inbound_port = s.outbound_port; }},
        {"inbound_port", [](WorkloadSpec& s) { s.inbound_port = 15008; }},
        {"outbound_port", [](WorkloadSpec& s) { s.outbound_port = 15090; }},
        {"exclude_outbound_ports", [](WorkloadSpec& s) { s.exclude_outbound_ports = {15001}; }},
        {"exclude_outbound_ports", [](WorkloadSpec& s) { s.exclude_outbound_ports = {15006}; }},
        {"exclude_inbound_ports", [](WorkloadSpec& s) { s.exclude_inbound_ports = {15006}; }},
        {"include_outbound_ports", [](WorkloadSpec& s) { s.include_outbound_ports = {15001}; }},
        {"exclude_inbound_ports", [](WorkloadSpec& s) { s.exclude_inbound_ports = {0}; }},
        {"exclude_inbound_ports",
         [](WorkloadSpec& s) {
             s.exclude_inbound_ports = {80, 80};
         }},
        {"include_inbound_ports",
         [](WorkloadSpec& s) {
             s.include_all_inbound_ports = true;
             s.include_inbound_ports = {80};
         }},
        {"include_cidrs",
         [](WorkloadSpec& s) {
             s.include_all_cidrs = true;
             s.include_cidrs = {*Cidr::parse("10.0.0.0/8")};
         }},
        {"exclude_cidrs",
         [](WorkloadSpec& s) {
             Cidr raw = *Cidr::parse("10.0.0.0/8");
             raw.addr[15] = 1;  // host bit set behind the parser's back
             s.exclude_cidrs = {raw};
         }},
        {"exclude_outbound_ports",
         [](WorkloadSpec& s) {
             for (int p = 1; p <= 257; ++p) s.exclude_outbound_ports.push_back(p);
         }},
        {"include_cidrs",
         [](WorkloadSpec& s) {
             s.include_all_cidrs = false;
             for (int i = 0; i < 257; ++i) {
                 s.include_cidrs.push_back(*Cidr::parse("10.0." + std::to_string(i / 256) + "." +
                                                        std::to_string(i % 256) + "/32"));
             }
         }},
    };
    for (const auto& c : cases) {
        auto spec = minimal_spec();
        c.mutate(spec);
        SCOPED_TRACE(c.field);
        expect_error_names(validate(spec), c.field);
    }
}

TEST(SpecValidate, ListsAtTheLimitAreFine) {
    auto spec = minimal_spec();
    for (int p = 1; p <= 256; ++p) spec.exclude_outbound_ports.push_back(p);
    EXPECT_TRUE(validate(spec).ok()) << validate(spec).error().message;
}

TEST(SpecValidate, RelativeCgroupIsFine) {
    auto spec = minimal_spec();
    spec.cgroup_path = "kubepods/pod-1";
    EXPECT_TRUE(validate(spec).ok());
}

TEST(SpecDifferingFields, NamesEachDifference) {
    auto a = minimal_spec();
    auto b = a;
    EXPECT_TRUE(differing_fields(a, b).empty());
    b.inbound_port = 15007;
    b.include_all_cidrs = false;
    b.startup_policy = StartupPolicy::kPassthrough;
    EXPECT_EQ(differing_fields(a, b),
              (std::vector<std::string>{"inbound_port", "include_cidrs", "startup_policy"}));
}

// --- JSON ------------------------------------------------------------------------------------

TEST(SpecJson, MinimalTakesDefaults) {
    auto spec = workload_spec_from_json(minimal_json());
    ASSERT_TRUE(spec.ok()) << spec.error().message;
    EXPECT_EQ(*spec, minimal_spec());
}

TEST(SpecJson, FullRoundTrip) {
    auto spec = minimal_spec();
    spec.proxy_uid = 1000;
    spec.proxy_gid = 1001;
    spec.outbound_port = 16001;
    spec.inbound_port = 16006;
    spec.exclude_outbound_ports = {22, 443};
    spec.exclude_inbound_ports = {9000};
    spec.include_all_cidrs = false;
    spec.include_cidrs = {*Cidr::parse("10.0.0.0/8"), *Cidr::parse("fd00::/8")};
    spec.exclude_cidrs = {*Cidr::parse("169.254.169.254")};
    spec.include_all_inbound_ports = false;
    spec.include_inbound_ports = {8080};
    spec.include_outbound_ports = {3306};
    spec.proxy_self_to_inbound = true;
    spec.startup_policy = StartupPolicy::kPassthrough;
    spec.additional_proxy_uids = {4, 5};
    spec.additional_proxy_gids = {2};
    spec.capture_ipv6 = false;
    spec.host_loopback_cidr = *Cidr::parse("127.0.0.0/8");

    const auto object = to_json(spec);
    EXPECT_EQ(object.at("include_cidrs").at(1).as_string(), "fd00::/8");
    EXPECT_EQ(object.at("startup_policy").as_string(), "passthrough");
    // Through text, as the REST body and the state file travel.
    auto back = workload_spec_from_json(json::parse(json::serialize(object)));
    ASSERT_TRUE(back.ok()) << back.error().message;
    EXPECT_EQ(*back, spec);
}

// istio -u 3,4 / -g 1,2: the order is kept (the first id is special on lo).
TEST(SpecProxyIds, ListKeepsOrderAndRefusesDuplicates) {
    auto ids = parse_id_list("3, 4", "--proxy-uid");
    ASSERT_TRUE(ids.ok());
    EXPECT_EQ(*ids, (std::vector<std::uint32_t>{3, 4}));
    expect_error_names(parse_id_list("3,3", "--proxy-uid"), "--proxy-uid");
    expect_error_names(parse_id_list("", "--proxy-gid"), "--proxy-gid");
    expect_error_names(parse_id_list("x", "--proxy-gid"), "--proxy-gid");
    auto spec = minimal_spec();
    spec.additional_proxy_uids = {1337};  // same as the first
    expect_error_names(validate(spec), "additional_proxy_uids");
}

TEST(SpecCaptureScope, FamiliesAndHostLoopback) {
    auto spec = minimal_spec();
    ASSERT_TRUE(parse_ip_families("ipv4", spec).ok());
    EXPECT_TRUE(spec.capture_ipv4);
    EXPECT_FALSE(spec.capture_ipv6);
    EXPECT_EQ(format_ip_families(spec), "ipv4");
    expect_error_names(parse_ip_families("ipx", spec), "--ip-families");
    spec.capture_ipv4 = false;
    expect_error_names(validate(spec), "capture_ipv4");
    spec = minimal_spec();
    spec.host_loopback_cidr = *Cidr::parse("10.0.0.0/8");  // Istio: must be inside 127/8
    expect_error_names(validate(spec), "host_loopback_cidr");
    spec.host_loopback_cidr = *Cidr::parse("127.0.0.1/8");
    EXPECT_TRUE(validate(spec).ok());
    EXPECT_TRUE(Cidr::parse("127.1.2.0/24")->is_loopback());
    EXPECT_TRUE(Cidr::parse("::1/128")->is_loopback());
    EXPECT_FALSE(Cidr::parse("0.0.0.0/0")->is_loopback());
}

TEST(SpecJson, StarForms) {
    const auto object = to_json(minimal_spec());
    EXPECT_EQ(object.at("include_cidrs").as_string(), "*");
    EXPECT_EQ(object.at("include_inbound_ports").as_string(), "*");
    EXPECT_TRUE(object.at("exclude_cidrs").as_array().empty());
    auto with_lists = minimal_json();
    with_lists["include_cidrs"] = json::array{};
    with_lists["include_inbound_ports"] = json::array{443, 80};
    auto spec = workload_spec_from_json(with_lists);
    ASSERT_TRUE(spec.ok()) << spec.error().message;
    EXPECT_FALSE(spec->include_all_cidrs);
    EXPECT_TRUE(spec->include_cidrs.empty());
    EXPECT_FALSE(spec->include_all_inbound_ports);
    EXPECT_EQ(spec->include_inbound_ports, (std::vector<std::uint16_t>{80, 443}));
}

struct BadJsonCase {
    const char* field;
    json::value value;
};

TEST(SpecJson, EveryBadFieldIsNamed) {
    const BadJsonCase cases[] = {
        {"name", 5},
        {"cgroup", json::array{}},
        {"netns", nullptr},
        {"proxy_uid", -1},
        {"proxy_uid", 4294967296ull},
        {"proxy_uid", "1337"},
        {"proxy_gid", 1.5},
        {"outbound_port", 0},
        {"outbound_port", 65536},
        {"inbound_port", 15006.0},
        {"exclude_outbound_ports", "80,443"},
        {"exclude_outbound_ports", json::array{80, "443"}},
        {"exclude_inbound_ports", json::array{70000}},
        {"exclude_inbound_ports", json::array{80, 80}},
        {"include_outbound_ports", json::array{0}},
        {"include_inbound_ports", "all"},
        {"include_inbound_ports", json::array{-5}},
        {"include_cidrs", "10.0.0.0/8"},
        {"include_cidrs", json::array{"10.0.0.0/33"}},
        {"include_cidrs", json::array{10}},
        {"exclude_cidrs", "*"},
        {"exclude_cidrs", json::array{"nope"}},
        {"proxy_self_to_inbound", "true"},
        {"proxy_self_to_inbound", 1},
        {"startup_policy", "allow"},
        {"startup_policy", true},
    };
    for (const auto& c : cases) {
        auto object = minimal_json();
        object[c.field] = c.value;
        SCOPED_TRACE(std::string(c.field) + " = " + json::serialize(c.value));
        expect_error_names(workload_spec_from_json(object), c.field);
    }
}

TEST(SpecJson, UnknownFieldIsNamed) {
    auto object = minimal_json();
    object["proxy_user"] = 1337;
    expect_error_names(workload_spec_from_json(object), "proxy_user");
}

TEST(SpecJson, RequiredFieldsAreNamed) {
    for (const char* field : {"name", "cgroup", "netns"}) {
        auto object = minimal_json();
        object.erase(field);
        expect_error_names(workload_spec_from_json(object), field);
    }
}

TEST(SpecJson, NotAnObject) {
    EXPECT_FALSE(workload_spec_from_json(json::array{}).ok());
    EXPECT_FALSE(workload_spec_from_json(nullptr).ok());
}

}  // namespace
}  // namespace meshlane

// --- DNS capture ---------------------------------------------------------------------------

namespace meshlane {
namespace {

TEST(SpecDns, OffByDefaultWithIstiosListenerPort) {
    auto spec = workload_spec_from_json(minimal_json());
    ASSERT_TRUE(spec) << spec.error().message;
    EXPECT_EQ(spec->dns_capture, DnsCapture::kOff);
    EXPECT_EQ(spec->dns_port, 15053);
    EXPECT_TRUE(spec->dns_servers.empty());
    EXPECT_TRUE(validate(*spec));
}

TEST(SpecDns, NameserversRoundTripThroughJson) {
    auto object = minimal_json();
    object["dns_capture"] = "nameservers";
    object["dns_port"] = 15054;
    object["dns_servers"] = json::array{"fd00::a", "10.96.0.10"};
    auto spec = workload_spec_from_json(object);
    ASSERT_TRUE(spec) << spec.error().message;
    ASSERT_TRUE(validate(*spec)) << validate(*spec).error().message;
    EXPECT_EQ(spec->dns_capture, DnsCapture::kNameservers);
    EXPECT_EQ(format_address_list(spec->dns_servers), "10.96.0.10,fd00::a");
    auto back = to_json(*spec);
    EXPECT_EQ(back["dns_capture"], "nameservers");
    EXPECT_EQ(back["dns_servers"], (json::array{"10.96.0.10", "fd00::a"}));
    auto again = workload_spec_from_json(back);
    ASSERT_TRUE(again);
    EXPECT_EQ(*again, *spec);
}

TEST(SpecDns, RefusesWhatWouldBeSilentlyWrong) {
    auto spec = minimal_spec();
    spec.dns_capture = DnsCapture::kNameservers;  // and no servers
    expect_error_names(validate(spec), "dns_servers");
    spec.dns_capture = DnsCapture::kAll;
    spec.dns_servers = *parse_address_list("10.0.0.10", "x");
    expect_error_names(validate(spec), "dns_servers");  // ignored with "all": say so
    spec.dns_servers.clear();
    spec.dns_port = 53;
    expect_error_names(validate(spec), "dns_port");
    spec.dns_port = 15001;
    expect_error_names(validate(spec), "dns_port");
    expect_error_names(parse_dns_capture("yes"), "dns_capture");
    expect_error_names(parse_address_list("10.0.0.0/8", "--dns-servers"), "--dns-servers");
    auto object = minimal_json();
    object["dns_servers"] = json::array{"10.0.0.10/32"};
    expect_error_names(workload_spec_from_json(object), "dns_servers");
}

TEST(SpecDns, DifferingFieldsNameDns) {
    auto a = minimal_spec();
    auto b = a;
    b.dns_capture = DnsCapture::kAll;
    EXPECT_EQ(differing_fields(a, b), (std::vector<std::string>{"dns_capture"}));
}

}  // namespace
}  // namespace meshlane
