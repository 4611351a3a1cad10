#!/usr/bin/env bash
# A rootful podman that runs containers on this kind of machine, and a stand-in for the public base image built
# from Debian packages (registries such as Docker Hub are unreachable from CI; PyPI and the Debian mirror are not).
# Idempotent: what is already in place is kept (REBUILD_BASE=1 rebuilds the base image).
#
#   sudo tools/podman/engine-up.sh            # prints the base image's name on its last line
#
# Env: BASE_IMAGE (default localhost/atlaspatch-base:bookworm-py3.11), DEBIAN_MIRROR (default: the mirror apt uses)
set -euo pipefail

BASE_IMAGE="${BASE_IMAGE:-localhost/atlaspatch-base:bookworm-py3.11}"
say() { printf '[engine-up] %s\n' "$*" >&2; }
started=$SECONDS

missing_packages() {
  local pkg
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || echo "$pkg"
  done
}

install_packages() {
  local need
  mapfile -t need < <(missing_packages podman runc mmdebstrap uidmap)
  [ ${#need[@]} -eq 0 ] && return
  say "apt-get install ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
}

# crun refuses hybrid (v1+v2) cgroups, so runc; and the sandbox forbids raising rlimits above the host's hard
# limits, which podman's defaults (nofile 1048576, nproc unlimited) would do.
write_containers_conf() {
  local nofile conf=/etc/containers/containers.conf want
  nofile="$(ulimit -Hn)"
  if [ "$nofile" = unlimited ] || [ "$nofile" -gt 65536 ]; then nofile=65536; fi
  want="# written by tools/podman/engine-up.sh
[containers]
default_ulimits = [
  \"nofile=${nofile}:${nofile}\",
  \"nproc=32768:32768\",
]

[engine]
runtime = \"runc\""
  if [ -f "$conf" ] && [ "$(cat "$conf")" = "$want" ]; then return; fi
  if [ -f "$conf" ] && ! grep -q 'engine-up.sh' "$conf"; then cp -n "$conf" "$conf.orig"; fi
  mkdir -p /etc/containers
  printf '%s\n' "$want" > "$conf"
  say "wrote $conf (runtime runc, nofile ${nofile})"
}

debian_mirror() {
  if [ -n "${DEBIAN_MIRROR:-}" ]; then echo "$DEBIAN_MIRROR"; return; fi
  local mirror
  mirror="$(awk '/^URIs:/ { print $2; exit }' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)"
  [ -n "$mirror" ] || mirror="$(awk '$1 == "deb" { print $2; exit }' /etc/apt/sources.list 2>/dev/null || true)"
  [ -n "$mirror" ] || { echo "engine-up.sh: no Debian mirror found in apt's sources; set DEBIAN_MIRROR" >&2; exit 2; }
  echo "$mirror"
}

# Like python:3.11-slim-bookworm: Debian's python3 (3.11) in a venv first on PATH (so pip installs as root there
# without PEP 668's refusal), the CA bundle for pip, procps for Nextflow's task metrics.
build_base_image() {
  if [ "${REBUILD_BASE:-0}" != 1 ] && podman image exists "$BASE_IMAGE"; then return; fi
  local rootfs
  rootfs="$(mktemp -d)/rootfs.tar"
  say "mmdebstrap bookworm -> $BASE_IMAGE"
  mmdebstrap --quiet --variant=minbase --include=python3,python3-venv,ca-certificates,procps \
    --customize-hook='chroot "$1" python3 -m venv /opt/venv' \
    --customize-hook='printf "[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n" > "$1/etc/pip.conf"' \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin' \
    bookworm "$rootfs" "$(debian_mirror)"
  podman import \
    --change 'ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    "$rootfs" "$BASE_IMAGE" >/dev/null
  rm -rf "$(dirname "$rootfs")"
}

probe() {
  local out
  out="$(podman run --rm "$BASE_IMAGE" sh -c 'command -v python; python -c "import sys; print(sys.version_info[:2])"')"
  echo "$out" | grep -q '^/opt/venv/bin/python$' || { echo "engine-up.sh: probe failed: $out" >&2; exit 1; }
  say "probe: $(echo "$out" | tr '\n' ' ')"
}

[ "$(id -u)" = 0 ] || { echo "engine-up.sh: run as root (apt-get, rootful podman)" >&2; exit 2; }
install_packages
write_containers_conf
build_base_image
probe
say "ready in $((SECONDS - started)) s"
echo "$BASE_IMAGE"
