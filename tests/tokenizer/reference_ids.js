// Token ids from an independent implementation, for comparison in tests.
//
//   node reference_ids.js NODE_MODULES TOKENIZER_JSON TOKENIZER_CONFIG_JSON|- TEXT_FILE...
//
// Loads TOKENIZER_JSON with @lenml/tokenizers (a JavaScript port of
// transformers.js tokenizers) and prints, for each text file, one line of
// space-separated ids for its contents encoded without added special
// tokens. Files are decoded as UTF-8 with replacement (U+FFFD per maximal
// invalid subpart), the string a JavaScript or Python program would hold.
"use strict";
const fs = require("fs");
const path = require("path");

const [modules, tokenizerPath, configPath, ...texts] = process.argv.slice(2);
const { TokenizerLoader } = require(path.join(modules, "@lenml", "tokenizers"));
const tokenizerJSON = JSON.parse(fs.readFileSync(tokenizerPath, "utf8"));
const tokenizerConfig =
  configPath === "-"
    ? { tokenizer_class: "PreTrainedTokenizerFast", clean_up_tokenization_spaces: false }
    : JSON.parse(fs.readFileSync(configPath, "utf8"));
const tokenizer = TokenizerLoader.fromPreTrained({ tokenizerJSON, tokenizerConfig });
const decoder = new TextDecoder("utf-8", { fatal: false });
for (const file of texts) {
  const text = decoder.decode(fs.readFileSync(file));
  const ids = tokenizer.encode(text, { add_special_tokens: false });
  process.stdout.write(ids.join(" ") + "\n");
}
