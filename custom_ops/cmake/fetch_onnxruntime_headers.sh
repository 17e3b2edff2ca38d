#!/usr/bin/env bash
# Fetch the onnxruntime C/C++ headers into a build cache, without touching the system's apt state.
#
#   fetch_onnxruntime_headers.sh CACHE_DIR
#
# The onnxruntime wheel ships no headers; Debian's libonnxruntime-dev does (trixie: 1.21, sid:
# 1.23). The C API is append-only, so these headers work with newer runtimes. We download that
# one package with a private apt state (its own sources list, lists and cache under CACHE_DIR),
# using the archive this machine's apt is already configured for, and unpack it with dpkg -x.
# On success, prints the include directory (the one holding onnxruntime_c_api.h) on stdout.
set -euo pipefail

cache=${1:?usage: fetch_onnxruntime_headers.sh CACHE_DIR}
mkdir -p "$cache"
cache=$(cd "$cache" && pwd)

find_header_dir() {
  local h
  h=$(find "$cache/root" -name onnxruntime_c_api.h -print -quit 2>/dev/null || true)
  [ -n "$h" ] && dirname "$h"
}

if dir=$(find_header_dir) && [ -n "$dir" ]; then
  echo "$dir"
  exit 0
fi

for tool in apt-get dpkg; do
  command -v "$tool" >/dev/null || {
    echo "fetch_onnxruntime_headers: $tool not found (not a Debian-like system)" >&2
    exit 1
  }
done

# The main Debian archive this machine uses: from deb822 .sources files or a one-line list.
archive=$(
  { grep -hE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}'
    grep -hE '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
      sed -E 's/\[[^]]*\]//' | awk '{print $2}'
  } | grep -v -- '-security' | grep -E '/debian/?$' | head -n1 || true
)
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
if [ -z "$archive" ] || [ ! -f "$keyring" ]; then
  echo "fetch_onnxruntime_headers: no Debian archive in the apt configuration, or no $keyring" >&2
  exit 1
fi

apt_state="$cache/apt"
mkdir -p "$apt_state/lists/partial" "$apt_state/cache/archives/partial" "$cache/debs"
for suite in trixie sid; do
  echo "deb [signed-by=$keyring] $archive $suite main" >"$apt_state/sources.list"
  opts=(
    -o "Dir::Etc::SourceList=$apt_state/sources.list"
    -o "Dir::Etc::SourceParts=/dev/null"
    -o "Dir::State::Lists=$apt_state/lists"
    -o "Dir::Cache=$apt_state/cache"
    -o "Debug::NoLocking=1"
    -o "APT::Sandbox::User=root"
    -qq
  )
  if apt-get "${opts[@]}" update >&2 &&
    (cd "$cache/debs" && apt-get "${opts[@]}" download libonnxruntime-dev >&2); then
    break
  fi
  echo "fetch_onnxruntime_headers: libonnxruntime-dev not available from $suite" >&2
done

deb=$(ls "$cache"/debs/libonnxruntime-dev_*.deb 2>/dev/null | head -n1 || true)
if [ -z "$deb" ]; then
  echo "fetch_onnxruntime_headers: could not download libonnxruntime-dev" >&2
  exit 1
fi
dpkg -x "$deb" "$cache/root"
if dir=$(find_header_dir) && [ -n "$dir" ]; then
  echo "$dir"
  exit 0
fi
echo "fetch_onnxruntime_headers: $deb holds no onnxruntime_c_api.h" >&2
exit 1
