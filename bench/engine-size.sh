#!/usr/bin/env bash
# Stripped size of a release hello-world with #[single_instance], with and
# without the engine features, and with `url` (each engine): what enabling
# `postgres`/`redis` anywhere in a build costs a program that never uses
# `url` (features are unified across a build). Optionally the same for
# another checkout of pidlock (PIDLOCK_BEFORE=/path), for a before/after.
# Usage: bash bench/engine-size.sh   (from the repository root; ~5 minutes)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
# One target directory: the dependencies build once.
export CARGO_TARGET_DIR="$scratch/target"

make_crate() { # name, pidlock root, features, attribute arguments
  local dir="$scratch/$1"
  mkdir -p "$dir/src"
  cat > "$dir/Cargo.toml" <<TOML
[package]
name = "$1"
version = "0.0.0"
edition = "2024"
[dependencies]
pidlock-core = { path = "$2/pidlock-core", features = [$3] }
[workspace]
TOML
  printf '#[pidlock_core::single_instance(%s)]\nfn main() { println!("hello"); }\n' "$4" > "$dir/src/main.rs"
  cp "$root/Cargo.lock" "$dir/Cargo.lock"
}

size() { # name -> stripped bytes
  (cd "$scratch/$1" && cargo build --release -q 2>/dev/null)
  strip -o "$scratch/$1.stripped" "$CARGO_TARGET_DIR/release/$1"
  stat -c %s "$scratch/$1.stripped"
}

row() { # label, name, base bytes
  local bytes
  bytes=$(size "$2")
  if [ -n "${3:-}" ]; then
    printf '| %s | %s | %+.1f KiB |\n' "$1" "$bytes" "$(echo "($bytes - $3) / 1024" | bc -l)"
  else
    printf '| %s | %s | |\n' "$1" "$bytes"
  fi
  echo "$bytes" > "$scratch/$2.bytes"
}

path='path = "/tmp/engine-size.pid"'
make_crate plain "$root" '' "$path"
make_crate engines "$root" '"postgres", "redis"' "$path"
make_crate with-redis-url "$root" '"postgres", "redis"' 'url = "redis://127.0.0.1/0", key = "k"'
make_crate with-pg-url "$root" '"postgres", "redis"' 'url = "postgres://127.0.0.1/x", key = "k"'
echo "| hello-world with #[single_instance] | stripped bytes | delta |"
echo "|---|---:|---:|"
row "no engine feature" plain
base=$(cat "$scratch/plain.bytes")
row "\`postgres\` and \`redis\` on, no \`url\`" engines "$base"
row "\`url = \"redis://…\"\`" with-redis-url "$base"
row "\`url = \"postgres://…\"\`" with-pg-url "$base"
if [ -n "${PIDLOCK_BEFORE:-}" ]; then
  make_crate before-plain "$PIDLOCK_BEFORE" '' "$path"
  make_crate before-postgres "$PIDLOCK_BEFORE" '"postgres"' "$path"
  row "before: no engine feature" before-plain
  row "before: \`postgres\` on, no \`url\`" before-postgres "$(cat "$scratch/before-plain.bytes")"
fi
