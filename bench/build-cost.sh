#!/usr/bin/env bash
# Extra clean-build time and syn builds that depending on pidlock-core adds to
# a hello-world, with and without tokio's macros (which already build syn).
# Usage: bash bench/build-cost.sh   (from the repository root; ~5 minutes)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

make_crate() { # name, with_tokio, with_pidlock
  local dir="$scratch/$1"
  mkdir -p "$dir/src"
  {
    echo "[package]"; echo "name = \"$1\""; echo 'version = "0.0.0"'; echo 'edition = "2024"'
    echo "[dependencies]"
    [ "$2" = yes ] && echo 'tokio = { version = "1", features = ["macros", "rt-multi-thread"] }'
    [ "$3" = yes ] && echo "pidlock-core = { path = \"$root/pidlock-core\" }"
    echo "[workspace]"
  } > "$dir/Cargo.toml"
  local attrs="" sig="fn main()"
  [ "$3" = yes ] && attrs="#[pidlock_core::single_instance]"
  [ "$2" = yes ] && attrs="$attrs
#[tokio::main]" && sig="async fn main()"
  printf '%s\n%s { println!("hello"); }\n' "$attrs" "$sig" > "$dir/src/main.rs"
  # The same dependency versions as the workspace, so only the crate differs.
  cp "$root/Cargo.lock" "$dir/Cargo.lock"
}

build() { # name -> "seconds syn-builds"
  local dir="$scratch/$1" log="$scratch/$1.log" start end
  (cd "$dir" && cargo fetch -q >/dev/null 2>&1)
  start=$(date +%s.%N)
  (cd "$dir" && cargo build --release --target-dir "$dir/target" 2> "$log")
  end=$(date +%s.%N)
  printf '%.1f %s\n' "$(echo "$end - $start" | bc)" "$(grep -c 'Compiling syn ' "$log" || true)"
}

echo "| hello-world | clean release build | syn builds |"
echo "|---|---:|---:|"
for tokio in no yes; do
  for pidlock in no yes; do
    name="hello-tokio-$tokio-pidlock-$pidlock"
    make_crate "$name" "$tokio" "$pidlock"
    read -r secs syn < <(build "$name")
    echo "| tokio: $tokio, pidlock: $pidlock | ${secs} s | $syn |"
  done
done
