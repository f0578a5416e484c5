#!/usr/bin/env bash
# setup_powermetrics.sh: let one user run /usr/bin/powermetrics through sudo without a
# password, so energyprof's `powermetrics` source works (macOS).
#
#   sudo bash scripts/setup_powermetrics.sh              install for the invoking user ($SUDO_USER)
#   sudo bash scripts/setup_powermetrics.sh --user NAME  install for NAME
#   sudo bash scripts/setup_powermetrics.sh --uninstall  remove the rule
#   bash scripts/setup_powermetrics.sh --print [--user NAME]   print the rule, change nothing
#
# It writes one sudoers drop-in, /etc/sudoers.d/energyprof-powermetrics, whose only rule is
#   NAME ALL = (root) NOPASSWD: /usr/bin/powermetrics
# i.e. exactly that binary (with any arguments) as root, nothing else.  The file is
# checked with `visudo -cf` before it is moved into place (a broken sudoers file can
# lock sudo), installed atomically with mode 0440, and a second run with the same
# content changes nothing.
#
# Caveat, stated in docs/sources.md: powermetrics can write its output to a file of
# the caller's choice (-o), as root.  The rule therefore gives NAME's processes
# password-less root file writes through powermetrics.  Only an administrator can
# install it (it needs sudo), for an account they trust; --uninstall removes it.
#
# For tests: ENERGYPROF_SUDOERS_DIR replaces /etc/sudoers.d (no root needed there) and
# VISUDO names the visudo to run (default: visudo on PATH, then /usr/sbin/visudo).
set -euo pipefail

BIN=/usr/bin/powermetrics
DIR="${ENERGYPROF_SUDOERS_DIR:-/etc/sudoers.d}"
FILE="$DIR/energyprof-powermetrics"
MODE=install
USER_NAME="${SUDO_USER:-}"

die() { echo "setup_powermetrics: $*" >&2; exit 1; }

while [ $# -gt 0 ]; do
    case "$1" in
        --print) MODE=print ;;
        --uninstall) MODE=uninstall ;;
        --user) [ $# -ge 2 ] || die "--user needs a name"; USER_NAME="$2"; shift ;;
        --user=*) USER_NAME="${1#--user=}" ;;
        -h|--help) sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option '$1' (see --help)" ;;
    esac
    shift
done

rule_file() {
    cat <<EOF
# Installed by energyprof (scripts/setup_powermetrics.sh): lets $USER_NAME run
# $BIN as root without a password, and nothing else.
# Remove with: sudo bash scripts/setup_powermetrics.sh --uninstall
$USER_NAME ALL = (root) NOPASSWD: $BIN
EOF
}

check_user() {
    [ -n "$USER_NAME" ] || die "no user: run it with sudo from your own account (SUDO_USER is empty), or pass --user NAME"
    [ "$USER_NAME" != root ] || die "root needs no sudoers rule; run it with sudo from the account that profiles"
    # A sudoers user name: no spaces, commas, '=', '#' or other syntax that would change the rule.
    [[ "$USER_NAME" =~ ^[A-Za-z_][A-Za-z0-9_.-]*$ ]] || die "refusing user name '$USER_NAME' (letters, digits, _ . - only)"
}

need_write() {
    if [ ! -w "$DIR" ]; then
        [ -d "$DIR" ] || die "$DIR does not exist"
        die "cannot write $DIR: run with sudo (sudo bash $0 ${*:-})"
    fi
}

find_visudo() {
    if [ -n "${VISUDO:-}" ]; then echo "$VISUDO"; return; fi
    command -v visudo 2>/dev/null && return
    [ -x /usr/sbin/visudo ] && { echo /usr/sbin/visudo; return; }
    die "visudo not found: it ships with sudo; the rule is never installed unchecked"
}

case "$MODE" in
    print)
        check_user
        rule_file
        ;;
    uninstall)
        need_write --uninstall
        if [ -e "$FILE" ]; then
            rm -f "$FILE"
            echo "removed $FILE"
        else
            echo "nothing to remove: $FILE does not exist"
        fi
        ;;
    install)
        check_user
        need_write
        [ -x "$BIN" ] || echo "setup_powermetrics: warning: $BIN not found (not macOS?); installing the rule anyway" >&2
        VISUDO_BIN="$(find_visudo)"
        tmp="$(mktemp "$DIR/.energyprof-powermetrics.XXXXXX")"
        trap 'rm -f "$tmp"' EXIT
        rule_file >"$tmp"
        chmod 0440 "$tmp"
        "$VISUDO_BIN" -cf "$tmp" >/dev/null || die "visudo rejected the generated rule; nothing installed"
        if [ -e "$FILE" ] && cmp -s "$tmp" "$FILE"; then
            echo "already installed: $FILE (unchanged)"
            exit 0
        fi
        if [ "$(id -u)" = 0 ]; then
            chown root "$tmp"
            chgrp "$(id -gn root)" "$tmp"
        fi
        mv -f "$tmp" "$FILE"   # same directory: an atomic rename, never a half-written sudoers file
        trap - EXIT
        echo "installed $FILE: $USER_NAME may run sudo -n $BIN"
        ;;
esac
