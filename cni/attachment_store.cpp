#include "cni/attachment_store.h"

#include <unistd.h>

#include <boost/json.hpp>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace meshlane::cni {

namespace fs = std::filesystem;
namespace json = boost::json;

namespace {

std::optional<Attachment> read_record(const fs::path& file) {
    std::ifstream in(file);
    if (!in) return std::nullopt;
    std::stringstream text;
    text << in.rdbuf();
    boost::system::error_code ec;
    auto doc = json::parse(text.str(), ec);
    if (ec || !doc.is_object()) return std::nullopt;
    Attachment attachment;
    for (auto [key, field] :
         {std::pair{"containerID", &attachment.container_id},
          std::pair{"ifname", &attachment.ifname}, std::pair{"workload", &attachment.workload}}) {
        const auto* v = doc.get_object().if_contains(key);
        if (v == nullptr || !v->is_string() || v->get_string().empty()) return std::nullopt;
        *field = std::string(v->get_string());
    }
    return attachment;
}

}  // namespace

AttachmentStore::AttachmentStore(const std::string& data_dir, const std::string& network)
    : dir_(data_dir + "/" + network) {}

std::string AttachmentStore::path(const std::string& container_id,
                                  const std::string& ifname) const {
    return dir_ + "/" + container_id + "-" + ifname;
}

Status AttachmentStore::record(const Attachment& attachment) const {
    std::error_code ec;
    fs::create_directories(dir_, ec);
    if (ec) return Error::from_errno(ec.value(), "create " + dir_);
    const std::string final_path = path(attachment.container_id, attachment.ifname);
    const std::string temp_path = final_path + ".tmp." + std::to_string(::getpid());
    {
        std::ofstream out(temp_path, std::ios::trunc);
        out << json::serialize(json::object{{"containerID", attachment.container_id},
                                            {"ifname", attachment.ifname},
                                            {"workload", attachment.workload}});
        if (!out.flush()) {
            fs::remove(temp_path, ec);
            return Error::invalid("write " + temp_path + ": failed");
        }
    }
    fs::rename(temp_path, final_path, ec);
    if (ec) {
        std::error_code ignored;
        fs::remove(temp_path, ignored);
        return Error::from_errno(ec.value(), "rename " + temp_path);
    }
    return Ok{};
}

std::optional<Attachment> AttachmentStore::find(const std::string& container_id,
                                                const std::string& ifname) const {
    auto record = read_record(path(container_id, ifname));
    if (record && record->container_id == container_id && record->ifname == ifname) return record;
    return std::nullopt;
}

Status AttachmentStore::forget(const std::string& container_id, const std::string& ifname) const {
    std::error_code ec;
    fs::remove(path(container_id, ifname), ec);
    if (ec) return Error::from_errno(ec.value(), "remove " + path(container_id, ifname));
    return Ok{};
}

std::vector<Attachment> AttachmentStore::list(std::vector<std::string>* skipped) const {
    std::vector<Attachment> out;
    std::error_code ec;
    for (fs::directory_iterator it(dir_, ec), end; !ec && it != end; it.increment(ec)) {
        const auto name = it->path().filename().string();
        if (name.find(".tmp.") != std::string::npos) continue;  // a concurrent record()
        auto record = read_record(it->path());
        if (record && path(record->container_id, record->ifname) == it->path().string())
            out.push_back(std::move(*record));
        else if (skipped != nullptr)
            skipped->push_back(name);
    }
    return out;
}

}  // namespace meshlane::cni
