#include "data/corpus.h"

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

namespace latam::data {

namespace {
bool EndsWith(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}
}  // namespace

Status CheckCorpusFile(const std::string& path) {
  std::error_code ec;
  const auto status = std::filesystem::status(path, ec);
  if (ec) return Status::InvalidInput(path + ": cannot open corpus file: " + ec.message());
  if (std::filesystem::is_directory(status)) {
    return Status::InvalidInput(path + ": is a directory, not a corpus file (.jsonl or text)");
  }
  return Status::Ok();
}

Status ForEachDocument(const std::string& path, const std::string& text_field,
                       const std::function<bool(std::string_view)>& on_document) {
  LATAM_RETURN_IF_ERROR(CheckCorpusFile(path));
  std::ifstream in(path, std::ios::binary);
  if (!in) return Status::InvalidInput(path + ": cannot open corpus file");
  if (!EndsWith(path, ".jsonl")) {
    std::stringstream text;
    text << in.rdbuf();
    on_document(text.str());
    return Status::Ok();
  }
  std::string line;
  int64_t line_no = 0;
  while (std::getline(in, line)) {
    ++line_no;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception& e) {
      return Status::InvalidInput(path + ":" + std::to_string(line_no) + ": not valid JSON: " + e.what());
    }
    if (!j.is_object() || !j.contains(text_field) || !j[text_field].is_string()) {
      return Status::InvalidInput(path + ":" + std::to_string(line_no) + ": no string field \"" + text_field + "\"");
    }
    if (!on_document(j[text_field].get_ref<const std::string&>())) break;
  }
  if (in.bad()) return Status::IoError(path + ": read error");
  return Status::Ok();
}

}  // namespace latam::data
