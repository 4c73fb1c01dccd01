# Builder of a file holding `$text` (what nixpkgs' writeText / writers.writeJSON make).
printf '%s' "$text" >"$out"
