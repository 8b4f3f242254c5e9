#include "data/chat.h"

#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>

#include "data/corpus.h"
#include "data/utf8.h"

namespace latam::data {

namespace {

// Python's str.isspace(): Unicode category Zs, or bidirectional class WS,
// B or S.
bool IsPythonWhitespace(uint32_t c) {
  return (c >= 0x09 && c <= 0x0d) || (c >= 0x1c && c <= 0x20) || c == 0x85 || c == 0xa0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 || c == 0x202f || c == 0x205f || c == 0x3000;
}

// Byte offset of the first invalid UTF-8 sequence, if any.
std::optional<size_t> FirstInvalidUtf8(std::string_view text) {
  size_t pos = 0;
  while (pos < text.size()) {
    const size_t at = pos;
    if (!NextCodePoint(text, &pos)) return at;
  }
  return std::nullopt;
}

}  // namespace

std::optional<ChatRole> ChatRoleFromName(std::string_view name) {
  if (name == "system") return ChatRole::kSystem;
  if (name == "user") return ChatRole::kUser;
  if (name == "assistant") return ChatRole::kAssistant;
  return std::nullopt;
}

std::string_view ChatRoleName(ChatRole role) {
  switch (role) {
    case ChatRole::kSystem:
      return "system";
    case ChatRole::kUser:
      return "user";
    case ChatRole::kAssistant:
      return "assistant";
  }
  return "";
}

std::string_view StripWhitespace(std::string_view text) {
  size_t begin = text.size(), end = 0, pos = 0;
  while (pos < text.size()) {
    const size_t at = pos;
    const std::optional<uint32_t> c = NextCodePoint(text, &pos);
    if (c && IsPythonWhitespace(*c)) continue;
    if (begin == text.size()) begin = at;
    end = pos;
  }
  return begin < end ? text.substr(begin, end - begin) : std::string_view();
}

Result<ChatTemplate> ChatTemplate::Create(const Tokenizer* tokenizer, const std::string& tokenizer_path) {
  ChatTemplate t;
  t.tokenizer_ = tokenizer;
  uint32_t* ids[] = {&t.begin_of_text_, &t.end_of_text_, &t.start_header_, &t.end_header_, &t.eot_};
  for (size_t i = 0; i < std::size(kChatSpecialTokens); ++i) {
    const std::optional<uint32_t> id = tokenizer->AddedTokenId(kChatSpecialTokens[i]);
    if (!id) {
      return Status::InvalidInput(std::string(tokenizer_path)
                                      .append(": has no added token '")
                                      .append(kChatSpecialTokens[i])
                                      .append("', which Llama 3's chat template needs (latam-data train-tokenizer "
                                              "reserves it by default; a tokenizer trained with --special must "
                                              "list it)"));
    }
    *ids[i] = *id;
  }
  return t;
}

EncodedChat ChatTemplate::Encode(std::span<const ChatMessage> messages, Tokenizer::Cache* cache) const {
  EncodedChat out;
  auto add = [&out](uint32_t id, bool counts) {
    out.tokens.push_back(id);
    out.loss_mask.push_back(counts ? 1 : 0);
  };
  add(begin_of_text_, false);
  for (const ChatMessage& m : messages) {
    const bool counts = m.role == ChatRole::kAssistant;
    add(start_header_, false);
    for (uint32_t id : tokenizer_->EncodeOrdinary(ChatRoleName(m.role), cache)) add(id, false);
    add(end_header_, false);
    // "\n\n" and the content are one segment of the rendered text, tokenized
    // together; a token counts when it holds a byte of the content.
    constexpr size_t kSeparatorBytes = 2;
    std::string segment = "\n\n";
    segment.append(StripWhitespace(m.content));
    size_t end_byte = 0;
    for (uint32_t id : tokenizer_->EncodeOrdinary(segment, cache)) {
      end_byte += tokenizer_->DecodeBytes(std::span<const uint32_t>(&id, 1)).size();
      add(id, counts && end_byte > kSeparatorBytes);
    }
    add(eot_, counts);
  }
  add(end_of_text_, false);
  return out;
}

Result<std::vector<ChatMessage>> ParseConversation(std::string_view line) {
  if (const std::optional<size_t> bad = FirstInvalidUtf8(line)) {
    return Status::InvalidInput(std::string("invalid UTF-8 at byte ").append(std::to_string(*bad + 1)));
  }
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(line);
  } catch (const nlohmann::json::exception& e) {
    return Status::InvalidInput(std::string("not valid JSON: ").append(e.what()));
  }
  if (!j.is_object()) return Status::InvalidInput("not a JSON object with a \"messages\" list");
  const auto messages = j.find("messages");
  if (messages == j.end() || !messages->is_array()) return Status::InvalidInput("no \"messages\" list");
  std::vector<ChatMessage> out;
  bool has_assistant = false;
  for (size_t i = 0; i < messages->size(); ++i) {
    const nlohmann::json& m = (*messages)[i];
    const std::string where = std::string("messages[").append(std::to_string(i)).append("]");
    if (!m.is_object()) return Status::InvalidInput(where + " is not an object");
    const auto role = m.find("role");
    if (role == m.end() || !role->is_string()) return Status::InvalidInput(where + " has no string \"role\"");
    const auto content = m.find("content");
    if (content == m.end()) return Status::InvalidInput(where + " has no \"content\"");
    if (!content->is_string()) {
      return Status::InvalidInput(where + ": \"content\" is " + content->type_name() + ", not a string");
    }
    const std::string& name = role->get_ref<const std::string&>();
    const std::optional<ChatRole> r = ChatRoleFromName(name);
    if (!r) {
      return Status::InvalidInput(where + ": unknown role \"" + name + "\" (system, user or assistant)");
    }
    has_assistant = has_assistant || *r == ChatRole::kAssistant;
    out.push_back(ChatMessage{*r, content->get<std::string>()});
  }
  if (!has_assistant) {
    return Status::InvalidInput("the conversation has no assistant message (nothing to train on; remove the line)");
  }
  return out;
}

Status ForEachConversation(const std::string& path,
                           const std::function<Status(std::vector<ChatMessage>& messages)>& on_conversation) {
  LATAM_RETURN_IF_ERROR(CheckCorpusFile(path));
  std::ifstream in(path, std::ios::binary);
  if (!in) return Status::InvalidInput(path + ": cannot open conversation file");
  std::string line;
  int64_t line_no = 0;
  while (std::getline(in, line)) {
    ++line_no;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    Result<std::vector<ChatMessage>> messages = ParseConversation(line);
    if (!messages.ok()) {
      return Status::InvalidInput(std::string(path)
                                      .append(":")
                                      .append(std::to_string(line_no))
                                      .append(": ")
                                      .append(messages.status().message()));
    }
    LATAM_RETURN_IF_ERROR(on_conversation(*messages));
  }
  if (in.bad()) return Status::IoError(path + ": read error");
  return Status::Ok();
}

}  // namespace latam::data
