// Conversations in Llama 3's chat template, with the loss mask of
// supervised fine-tuning.
//
// A conversation is a list of messages, each a role (system, user or
// assistant) and a UTF-8 content. Encoded, it is one shard document:
//
//   <|begin_of_text|>
//   per message:  <|start_header_id|> ROLE <|end_header_id|> "\n\n" CONTENT <|eot_id|>
//   <|end_of_text|>
//
// the text Llama 3's (and 3.1's) Hugging Face chat template renders for the
// messages, followed by the EOS every shard document ends with
// (data/shard.h). CONTENT is the message's content with leading and
// trailing white space removed, as the template's `| trim` does (Python's
// str.strip: the characters str.isspace() accepts). No system prompt is
// added: Llama 3.1's template adds a "Cutting Knowledge Date" system turn
// by default, this one does not; put one in the data to train with it.
//
// Tokens: the special tokens are the tokenizer's added tokens of those
// names; ROLE and "\n\n" CONTENT are tokenized with the BPE as ordinary
// text (Tokenizer::EncodeOrdinary), so content that spells a special
// token, such as a user typing "<|eot_id|>", stays text and can never end
// a turn. For content without such text the ids equal Hugging Face's
// tokenization of the rendered conversation.
//
// Loss mask (1 = the token counts as a target): the tokens of each
// assistant message's "\n\n" CONTENT that hold a byte of CONTENT, and its
// closing <|eot_id|> (the model learns to stop). Everything else is 0:
// <|begin_of_text|>, headers, the system and user turns and the final
// <|end_of_text|> (after <|eot_id|> a chat model is not asked for more).
// With packed conversations the next one's <|begin_of_text|> is 0 too, so
// no target crosses a conversation boundary.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"
#include "data/tokenizer.h"

namespace latam::data {

enum class ChatRole { kSystem, kUser, kAssistant };

struct ChatMessage {
  ChatRole role;
  std::string content;
};

// "system", "user", "assistant" and back; other names are nullopt.
std::optional<ChatRole> ChatRoleFromName(std::string_view name);
std::string_view ChatRoleName(ChatRole role);

// `text` without leading and trailing white space (Python's str.strip());
// `text` must be valid UTF-8.
std::string_view StripWhitespace(std::string_view text);

struct EncodedChat {
  std::vector<uint32_t> tokens;
  std::vector<uint8_t> loss_mask;  // one per token: 1 counts in the loss
};

// The Llama 3 special tokens the template needs; each must be an added
// token of the tokenizer.
inline constexpr const char* kChatSpecialTokens[] = {"<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                                                     "<|end_header_id|>", "<|eot_id|>"};

class ChatTemplate {
 public:
  // Finds the special tokens among the tokenizer's added tokens; a missing
  // one is kInvalidInput naming it and `tokenizer_path`. `tokenizer` must
  // outlive the template.
  static Result<ChatTemplate> Create(const Tokenizer* tokenizer, const std::string& tokenizer_path);

  // One conversation (any messages; the caller decides what to refuse).
  EncodedChat Encode(std::span<const ChatMessage> messages, Tokenizer::Cache* cache = nullptr) const;

 private:
  ChatTemplate() = default;
  const Tokenizer* tokenizer_ = nullptr;
  uint32_t begin_of_text_ = 0, end_of_text_ = 0, start_header_ = 0, end_header_ = 0, eot_ = 0;
};

// Parses one conversation from a JSON object text:
//   {"messages": [{"role": "system|user|assistant", "content": "..."}, ...]}
// (other fields are ignored). kInvalidInput, with a message that says what
// is wrong but not where, for: invalid UTF-8, text that is not JSON, no
// "messages" list, a message without a string "role" or "content", an
// unknown role, and a conversation without an assistant message (it would
// train nothing; filter such lines out of the data).
Result<std::vector<ChatMessage>> ParseConversation(std::string_view line);

// Calls on_conversation for each non-blank line of the JSONL file `path`,
// in order; a bad line is kInvalidInput "PATH:LINE: ...". An error from
// on_conversation stops the reading and is returned.
Status ForEachConversation(const std::string& path,
                           const std::function<Status(std::vector<ChatMessage>& messages)>& on_conversation);

}  // namespace latam::data
