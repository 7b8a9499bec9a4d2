#!/usr/bin/env bash
# Writes the King James Version of the Bible as plain text (4.3 MB, one verse per line, each
# book's chapters under a "Book N" heading) to the file given (default: data/kjv.txt), for
# examples/retnet_train. The text comes from Debian's bible-kjv package (installed here with
# apt-get); the translation dates from 1611 and its copyright has expired (the package's
# copyright file says so; in the United Kingdom the Crown's perpetual patent still restricts
# printing, which is why we fetch it rather than commit it).
# Usage: scripts/get_kjv_text.sh [OUTPUT]
set -euo pipefail
out="${1:-data/kjv.txt}"
if ! command -v bible >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bible-kjv >/dev/null
fi
mkdir -p "$(dirname "$out")"
# -l10000: one line per verse; drop the verse numbers and blank lines.
bible -l10000 Gen1:1-Rev22:21 | sed -e 's/^ *[0-9]\+ //' -e '/^$/d' > "$out"
echo "wrote $out: $(wc -c < "$out") bytes"
