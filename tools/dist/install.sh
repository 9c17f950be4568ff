#!/bin/sh
# Installs this Presage release (README "Installing from the tarball"):
#   ./install.sh [--prefix /usr/local] [--sysconfdir /etc] [--unitdir /etc/systemd/system]
# Copies the binaries to PREFIX/bin, the example config to SYSCONFDIR/presage, the systemd unit
# (presage@.service, its paths filled in) to UNITDIR, the dashboard and alert rules to
# PREFIX/share/presage/monitoring and the docs to PREFIX/share/doc/presage. Creates no user
# and starts nothing: it prints the steps that follow.
set -eu
prefix=/usr/local
sysconfdir=/etc
unitdir=/etc/systemd/system
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) prefix=$2; shift 2 ;;
    --sysconfdir) sysconfdir=$2; shift 2 ;;
    --unitdir) unitdir=$2; shift 2 ;;
    -h|--help) sed -n '2,7p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
here=$(cd "$(dirname "$0")" && pwd)
bindir=$prefix/bin
docdir=$prefix/share/doc/presage
install -d "$bindir" "$sysconfdir/presage" "$unitdir" "$prefix/share/presage/monitoring" "$docdir"
install -m 0755 "$here"/bin/presage "$here"/bin/presage-ctl "$here"/bin/presage-bench "$bindir/"
install -m 0644 "$here/etc/presage/node.example.toml" "$sysconfdir/presage/"
sed -e "s|@BINDIR@|$bindir|g" -e "s|@SYSCONFDIR@|$sysconfdir|g" -e "s|@DOCDIR@|$docdir|g" \
  "$here/lib/systemd/system/presage@.service" > "$unitdir/presage@.service"
chmod 0644 "$unitdir/presage@.service"
install -m 0644 "$here"/share/presage/monitoring/* "$prefix/share/presage/monitoring/"
install -m 0644 "$here"/share/doc/presage/* "$docdir/"
cat <<NEXT
Presage installed under $prefix. Next, for each node on this machine (say node1):
  useradd --system --home /var/lib/presage presage      # once
  $bindir/presage cert ...; $bindir/presage user ...     # certificates and users (README)
  cp $sysconfdir/presage/node.example.toml $sysconfdir/presage/node1.toml   # then edit it
  systemctl daemon-reload && systemctl enable --now presage@node1
NEXT
