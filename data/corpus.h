// Reading text corpora document by document.
//
// A `.jsonl` file holds one JSON object per line whose `text_field`
// (default "text") is one document; blank lines are skipped. Any other file
// is read as UTF-8 text and is one document. Errors name the file and line;
// a path that is missing, too long or a directory is a bad-input error.
#pragma once

#include <functional>
#include <string>
#include <string_view>

#include "core/status.h"

namespace latam::data {

// Whether `path` can be a corpus file: it exists and is not a directory
// (a FIFO such as /dev/stdin is fine).
Status CheckCorpusFile(const std::string& path);

// Calls on_document(text) for every document of `path`, in file order.
// on_document returns false to stop early.
Status ForEachDocument(const std::string& path, const std::string& text_field,
                       const std::function<bool(std::string_view)>& on_document);

}  // namespace latam::data
