#!/usr/bin/env bash
# Install the Bedside service, its screen and its settings on an appliance (run as root):
#
#   systemd/install.sh [--prefix /opt/bedside] [--provision FILE] [--no-screen]
#
# --prefix     where the project is installed (its .venv holds the `bedside` command)
# --provision  a technician provisioning file (password hash; see systemd/README.md), copied to
#              /etc/bedside/technician.toml so that the first start needs no password on screen
# --no-screen  no Chromium on the local display (a headless appliance)
# --app-slots  run <prefix>/app/bin/bedside, the venv that application updates (bedside app install)
#              switch, instead of the <prefix>/.venv that `make install` made
#
# It also installs the Mender update module for model bundles (systemd/mender/bedside-bundle) into
# /usr/share/mender/modules/v3/, where mender-client looks for it.
#
# DESTDIR=/some/dir writes the files under that folder and touches nothing else (no users, no
# systemctl): the tests install there and verify the units.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
prefix=/opt/bedside
provision=""
screen=1
venv=.venv
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) prefix="$2"; shift 2 ;;
    --provision) provision="$2"; shift 2 ;;
    --no-screen) screen=0; shift ;;
    --app-slots) venv=app; shift ;;
    *) echo "install.sh: unknown option $1 (see the comment at the top of this file)" >&2; exit 2 ;;
  esac
done
root="${DESTDIR:-}"

bedside="$prefix/$venv/bin/bedside"
if [ ! -x "$bedside" ]; then
  echo "install.sh: $bedside not found: install the project there first (make install)" >&2
  exit 1
fi
if [ -n "$provision" ] && [ ! -f "$provision" ]; then
  echo "install.sh: provisioning file $provision not found" >&2
  exit 1
fi

if [ -z "$root" ]; then
  getent passwd bedside >/dev/null || useradd --system --home-dir /var/lib/bedside --shell /usr/sbin/nologin bedside
  if [ "$screen" = 1 ]; then
    getent passwd bedside-screen >/dev/null ||
      useradd --system --home-dir /var/lib/bedside-screen --shell /usr/sbin/nologin bedside-screen
  fi
  for group in video render plugdev input; do getent group "$group" >/dev/null || groupadd --system "$group"; done
fi

# The settings: the sample only where there is none yet (an installed config is the technician's).
install -d -m 0755 "$root/etc/bedside"
if [ ! -f "$root/etc/bedside/bedside.toml" ]; then
  install -m 0644 "$here/bedside.toml" "$root/etc/bedside/bedside.toml"
fi
if [ -n "$provision" ]; then
  install -m 0640 "$provision" "$root/etc/bedside/technician.toml"
  [ -z "$root" ] && chgrp bedside "$root/etc/bedside/technician.toml"
fi
# TLS certificates and keys (bedside technician tls-cert --out /etc/bedside/tls, or the site's own):
# only the service user may enter the folder; the kiosk refuses a key other users could read.
install -d -m 0700 "$root/etc/bedside/tls"
[ -z "$root" ] && chown bedside:bedside "$root/etc/bedside/tls"

# The units, with this installation's prefix and the kiosk's address for the screen from the
# settings: its port, or with HTTPS the plain-HTTP loopback port where one is set.
screen_url="$("$prefix/$venv/bin/python" -c 'import sys, tomllib
s = tomllib.load(open(sys.argv[1], "rb")).get("server", {})
loopback = s.get("tls_cert") and s.get("plain_http_loopback_port")
scheme = "https" if s.get("tls_cert") and not loopback else "http"
port = loopback or s.get("port", 8080)
print(f"{scheme}://127.0.0.1:{port}/")' "$root/etc/bedside/bedside.toml")"
install -d -m 0755 "$root/etc/systemd/system"
sed -e "s#/opt/bedside/.venv/bin/bedside#$bedside#g" -e "s#/opt/bedside#$prefix#g" \
  "$here/bedside.service" > "$root/etc/systemd/system/bedside.service"
units=(bedside.service)
if [ "$screen" = 1 ]; then
  sed -e "s#/opt/bedside#$prefix#g" -e "s#http://127.0.0.1:8080/#$screen_url#" \
    "$here/bedside-kiosk.service" > "$root/etc/systemd/system/bedside-kiosk.service"
  units+=(bedside-kiosk.service)
fi
chmod 0644 "$root/etc/systemd/system/"bedside*.service

# The Mender update module for model bundles (payload type bedside-bundle; inert without mender-client).
install -d -m 0755 "$root/usr/share/mender/modules/v3"
sed -e "s#/opt/bedside/.venv/bin/bedside#$bedside#g" "$here/mender/bedside-bundle" \
  > "$root/usr/share/mender/modules/v3/bedside-bundle"
chmod 0755 "$root/usr/share/mender/modules/v3/bedside-bundle"

if [ -z "$root" ]; then
  systemctl daemon-reload
  systemctl enable "${units[@]}"
  echo "Installed ${units[*]}; start with: systemctl start bedside"
else
  echo "Installed ${units[*]} under $root"
fi
