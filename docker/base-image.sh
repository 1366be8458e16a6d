#!/usr/bin/env bash
# Makes sure the Debian 12 base images the Dockerfile starts from exist in the local engine:
# debian:bookworm (build stage) and debian:bookworm-slim (runtime stage).
#
#   base-image.sh [--docker PATH]
#
# An image already present is left alone. A missing one is pulled when a registry answers;
# where none does (an air-gapped machine, this project's CI), both are made locally from one
# `debootstrap --variant=minbase bookworm` tree and `docker import`ed under the official names,
# so the Dockerfile works unchanged either way. The -slim one additionally drops documentation,
# man pages and locales, and keeps dpkg from installing them later, as the official slim image
# does. Takes about a minute; needs root, debootstrap and Debian's mirror (the one apt uses).
set -euo pipefail

docker=${DOCKER:-docker}
while [ $# -gt 0 ]; do
  case $1 in
    --docker) docker=$2; shift 2 ;;
    *) echo "usage: $0 [--docker PATH]" >&2; exit 2 ;;
  esac
done
say() { echo "base-image: $*"; }
die() { echo "base-image: $*" >&2; exit 1; }

missing=()
for image in debian:bookworm debian:bookworm-slim; do
  if "$docker" image inspect "$image" >/dev/null 2>&1; then
    say "$image present"
  elif timeout 120 "$docker" pull -q "$image" >/dev/null 2>&1; then
    say "$image pulled"
  else
    missing+=("$image")
  fi
done
[ ${#missing[@]} -gt 0 ] || exit 0

say "no registry has ${missing[*]}: building them with debootstrap"
[ "$(id -u)" -eq 0 ] || die "debootstrap needs root: sudo $0"
command -v debootstrap >/dev/null || die "debootstrap missing: apt-get install debootstrap"

# The mirror apt on this host uses (deb822 or one-line sources), else Debian's default.
mirror=$(grep -hsE '^URIs: *http' /etc/apt/sources.list.d/debian.sources | head -n1 |
  awk '{ print $2 }')
if [ -z "$mirror" ]; then
  mirror=$(grep -hsE '^deb +http[^ ]* +bookworm +' /etc/apt/sources.list | head -n1 |
    awk '{ print $2 }')
fi
mirror=${mirror:-http://deb.debian.org/debian}

tree=$(mktemp -d /tmp/ctsync-rootfs.XXXXXX)
trap 'rm -rf "$tree" "$tree.log"' EXIT
trap 'exit 143' TERM INT
say "debootstrap --variant=minbase bookworm from $mirror (about 45 s)"
if ! timeout 900 debootstrap --variant=minbase bookworm "$tree" "$mirror" >"$tree.log" 2>&1; then
  tail -n 20 "$tree.log" >&2
  die "debootstrap failed or took over 15 min (log above): is $mirror reachable? (apt-get" \
    "update must work)"
fi

# As in Debian's official images: bookworm, its updates and security suites, no package caches,
# no recommends. The security archive as this host's apt has it, else Debian's.
security=$(grep -hsE '^URIs: *http.*security' /etc/apt/sources.list.d/debian.sources | head -n1 |
  awk '{ print $2 }')
if [ -z "$security" ]; then
  security=$(grep -hsE '^deb +http[^ ]* +bookworm-security' /etc/apt/sources.list | head -n1 |
    awk '{ print $2 }')
fi
security=${security:-http://deb.debian.org/debian-security}
cat >"$tree/etc/apt/sources.list" <<EOF
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb $security bookworm-security main
EOF
printf 'APT::Install-Recommends "false";\n' >"$tree/etc/apt/apt.conf.d/90no-recommends"
rm -rf "$tree"/var/cache/apt/archives/*.deb "$tree"/var/lib/apt/lists/*
: >"$tree/etc/hostname"

import() {  # IMAGE
  tar -C "$tree" -c . | "$docker" import -c 'CMD ["bash"]' \
    -m "debootstrap --variant=minbase bookworm ($mirror), by ctsync docker/base-image.sh" \
    - "$1" >/dev/null
  say "$1 imported ($("$docker" image inspect -f '{{.Size}}' "$1" | awk '{ printf "%.0f MB", $1 / 1e6 }'))"
}
[[ " ${missing[*]} " == *" debian:bookworm "* ]] && import debian:bookworm

if [[ " ${missing[*]} " == *" debian:bookworm-slim "* ]]; then
  cat >"$tree/etc/dpkg/dpkg.cfg.d/docker-slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/lintian/*
EOF
  find "$tree/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
  rm -rf "$tree"/usr/share/man/* "$tree"/usr/share/info/* "$tree"/usr/share/locale/*
  import debian:bookworm-slim
fi
