#!/usr/bin/env bash
# Builds the sample corpus (launch/get-sample-corpus.sh) twice into a fresh
# temporary directory and checks it: files present and non-empty, one valid
# JSON object with a non-empty "text" per line, valid UTF-8, no OSIS markup
# left in the Bible text, expected characters and languages, eval disjoint
# from train, minimum sizes, idempotent re-run, byte-identical rebuild.
# Exits 0 on success, 1 on failure, 77 (skipped) when the packages are
# missing and this machine cannot install them.
set -euo pipefail
cd "$(dirname "$0")/../.."

fail() { echo "FAIL: $*" >&2; exit 1; }
skip() { echo "SKIP: $*"; exit 77; }

command -v dpkg-query >/dev/null 2>&1 || skip "not a Debian/Ubuntu system; cannot install the corpus packages"
if ! missing=$(launch/install-deps.sh --check $(launch/get-sample-corpus.sh --print-packages)); then
  command -v apt-get >/dev/null 2>&1 || skip "packages missing (${missing#*missing }) and no apt-get"
  if [ "$(id -u)" -ne 0 ] && ! sudo -n true >/dev/null 2>&1; then
    skip "packages missing (${missing#*missing }) and no root or password-less sudo to install them"
  fi
fi

T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT

launch/get-sample-corpus.sh "$T/a" >"$T/log-a" 2>&1 || { cat "$T/log-a" >&2; fail "get-sample-corpus.sh $T/a exited non-zero"; }
cat "$T/log-a"

groups=(es pt indigenous)

# jq -R reads one raw line per input, so each line must hold exactly one
# JSON object with a non-empty string "text".
bad_lines='try (fromjson | if type == "object" and (.text | type) == "string" and (.text | length) > 0
                           then empty else "line \(input_line_number): no non-empty string text" end)
           catch "line \(input_line_number): not one JSON value"'
for g in "${groups[@]}"; do
  for s in train eval; do
    f=$T/a/$g/$s.jsonl
    [ -s "$f" ] || fail "$g/$s.jsonl missing or empty"
    iconv -f utf-8 -t utf-8 "$f" >/dev/null 2>&1 || fail "$g/$s.jsonl is not valid UTF-8"
    jq -R -r "$bad_lines" "$f" >"$T/errs" || fail "$g/$s.jsonl: jq failed"
    [ ! -s "$T/errs" ] || fail "$g/$s.jsonl: $(head -n 3 "$T/errs")"
  done
  # No eval document may also be a train document.
  dup=$(awk 'NR == FNR { t[$0] = 1; next } ($0 in t) { print FNR; exit }' "$T/a/$g/train.jsonl" "$T/a/$g/eval.jsonl")
  [ -z "$dup" ] || fail "$g/eval.jsonl line $dup also appears in $g/train.jsonl"
  ntrain=$(wc -l <"$T/a/$g/train.jsonl"); neval=$(wc -l <"$T/a/$g/eval.jsonl")
  [ $((neval * 4)) -lt "$ntrain" ] || fail "$g: eval ($neval docs) is not a small held-out part of train ($ntrain docs)"
done

# Decoded text of each group, in files (grep -q on a pipe trips pipefail).
for g in "${groups[@]}"; do
  jq -r '.text' "$T/a/$g/train.jsonl" "$T/a/$g/eval.jsonl" >"$T/$g.txt"
done

# es: the Bible chapters are the long single-paragraph documents.
bible=$(jq -r 'select((.text | test("\n") | not) and (.text | length) >= 300) | .text' "$T/a/es/train.jsonl" "$T/a/es/eval.jsonl")
[ "$(printf '%s\n' "$bible" | wc -l)" -ge 1000 ] || fail "es/*.jsonl: fewer than 1000 Bible chapter documents"
tag=$(printf '%s\n' "$bible" | grep -m 1 -o '<[A-Za-z/][^>]\{0,40\}' || true)
[ -z "$tag" ] || fail "es/*.jsonl: markup left in Bible text: $tag"
osis=$(grep -m 1 -o -E '</?(w|transChange|note|chapter|verse|div|milestone|title|q|lg|l|divineName|rdg|reference)( [^>]*)?/?>' "$T/es.txt" || true)
[ -z "$osis" ] || fail "es/*.jsonl: OSIS element left: $osis"
grep -q 'En el principio' "$T/es.txt" || fail "es/*.jsonl: no \"En el principio\""
grep -q 'ñ' "$T/es.txt" || fail "es/*.jsonl: no ñ"
grep -q 'ç' "$T/pt.txt" || fail "pt/*.jsonl: no ç"
grep -q 'ã' "$T/pt.txt" || fail "pt/*.jsonl: no ã"
if grep -q -e 'Ã§' -e 'Ã£' "$T/pt.txt"; then fail "pt/*.jsonl: looks double-encoded (Ã§ or Ã£)"; fi

# One word or phrase from UDHR article 1 in each indigenous language.
words=(
  "runamasinwantaqmi:Quechua (Cusco)"
  "yvypóra:Guaraní"
  "amuyasiñapansa:Aymara"
  "tlakamej:Nahuatl"
  "mogence:Mapudungun"
  "wíinik:Yucatec Maya"
  "winaq:K'iche'"
  "Inuit tamarmik:Greenlandic"
  "Bilaʼashdaʼii:Navajo"
)
found=()
for w in "${words[@]}"; do
  if grep -q -F "${w%%:*}" "$T/indigenous.txt"; then found+=("${w#*:}"); fi
done
[ ${#found[@]} -ge 5 ] || fail "indigenous/*.jsonl: text from only ${#found[@]} known languages (${found[*]:-none}), want 5"
echo "indigenous languages recognised: ${found[*]}"

bytes() { cat "$T/a/$1/train.jsonl" "$T/a/$1/eval.jsonl" | wc -c; }
[ "$(bytes es)" -ge 3000000 ] || fail "es/*.jsonl: only $(bytes es) bytes, want at least 3 MB"
[ "$(bytes pt)" -ge 2000000 ] || fail "pt/*.jsonl: only $(bytes pt) bytes, want at least 2 MB"

# Idempotent: a second run without --force keeps the files as they are.
cp -r "$T/a" "$T/a-copy"
launch/get-sample-corpus.sh "$T/a" >"$T/log-a2" 2>&1 || { cat "$T/log-a2" >&2; fail "second run into $T/a exited non-zero"; }
grep -q 'already exist' "$T/log-a2" || fail "second run without --force did not report existing outputs"
diff -r "$T/a" "$T/a-copy" >/dev/null || fail "second run without --force changed the outputs"

# Deterministic: a forced rebuild elsewhere gives byte-identical files.
launch/get-sample-corpus.sh --force "$T/b" >"$T/log-b" 2>&1 || { cat "$T/log-b" >&2; fail "get-sample-corpus.sh --force $T/b exited non-zero"; }
for g in "${groups[@]}"; do
  for s in train eval; do
    cmp -s "$T/a/$g/$s.jsonl" "$T/b/$g/$s.jsonl" || fail "$g/$s.jsonl differs between two builds"
  done
done
# No work directories left behind next to the outputs.
left=$(find "$T" -maxdepth 1 -name '.*.tmp' | head -n 1)
[ -z "$left" ] || fail "temporary directory left behind: $left"

echo "PASS: sample corpus checks"
