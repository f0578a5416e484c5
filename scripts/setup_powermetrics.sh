#!/usr/bin/env bash
# setup_powermetrics.sh: let one user run powermetrics through sudo without a password,
# with exactly the arguments energyprof's `powermetrics` source passes (macOS).
#
#   sudo bash scripts/setup_powermetrics.sh              install for the invoking user ($SUDO_USER)
#   sudo bash scripts/setup_powermetrics.sh --user NAME  install for NAME
#   sudo bash scripts/setup_powermetrics.sh --uninstall  remove the rule and the wrapper
#   bash scripts/setup_powermetrics.sh --print [--user NAME]   print the sudoers rule, change nothing
#   bash scripts/setup_powermetrics.sh --print-wrapper         print the wrapper, change nothing
#
# It installs two files:
#   /opt/energyprof/bin/energyprof-powermetrics   a root-owned wrapper (mode 0755) that runs
#       /usr/bin/powermetrics -f plist -i MS --samplers NAME[,NAME...]
#     and refuses any other arguments (so no -o FILE: no file written as root);
#   /etc/sudoers.d/energyprof-powermetrics        whose only rule is
#       NAME ALL = (root) NOPASSWD: /opt/energyprof/bin/energyprof-powermetrics
# energyprof runs `sudo -n /opt/energyprof/bin/energyprof-powermetrics -f plist -i MS
# --samplers ...` when it is not root.  The rule is checked with `visudo -cf` before it is
# moved into place (a broken sudoers file can lock sudo); both files are installed
# atomically, every directory above the wrapper must be root-owned and writable by no one
# else (or the wrapper could be swapped), and a second run with the same content changes
# nothing.
#
# For tests: ENERGYPROF_SUDOERS_DIR replaces /etc/sudoers.d, ENERGYPROF_WRAPPER the
# wrapper's path, ENERGYPROF_POWERMETRICS_BIN the binary the wrapper runs (baked in when
# it is written, never read at run time), VISUDO the visudo to run (default: visudo on
# PATH, then /usr/sbin/visudo).
set -euo pipefail

BIN="${ENERGYPROF_POWERMETRICS_BIN:-/usr/bin/powermetrics}"
WRAPPER="${ENERGYPROF_WRAPPER:-/opt/energyprof/bin/energyprof-powermetrics}"
DIR="${ENERGYPROF_SUDOERS_DIR:-/etc/sudoers.d}"
FILE="$DIR/energyprof-powermetrics"
MODE=install
USER_NAME="${SUDO_USER:-}"

die() { echo "setup_powermetrics: $*" >&2; exit 1; }

while [ $# -gt 0 ]; do
    case "$1" in
        --print) MODE=print ;;
        --print-wrapper) MODE=print-wrapper ;;
        --uninstall) MODE=uninstall ;;
        --user) [ $# -ge 2 ] || die "--user needs a name"; USER_NAME="$2"; shift ;;
        --user=*) USER_NAME="${1#--user=}" ;;
        -h|--help) sed -n '2,29p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option '$1' (see --help)" ;;
    esac
    shift
done

# Paths go into a sudoers rule and a shell script unquoted: plain characters only.
for p in "$BIN" "$WRAPPER"; do
    [[ "$p" =~ ^/[A-Za-z0-9_./-]+$ ]] || die "refusing path '$p' (absolute, letters, digits, _ . / - only)"
done

rule_file() {
    cat <<EOF
# Installed by energyprof (scripts/setup_powermetrics.sh): lets $USER_NAME run
# $WRAPPER as root without a password, and nothing else.
# That wrapper runs $BIN -f plist -i MS --samplers LIST and refuses any other arguments.
# Remove with: sudo bash scripts/setup_powermetrics.sh --uninstall
$USER_NAME ALL = (root) NOPASSWD: $WRAPPER
EOF
}

wrapper_file() {
    cat <<EOF
#!/bin/sh
# energyprof-powermetrics: installed by energyprof (scripts/setup_powermetrics.sh) and
# run through sudo by energyprof's powermetrics source.  It runs
#   $BIN -f plist -i MS --samplers NAME[,NAME...]
# with MS a whole number of milliseconds (1..3600000) and NAME a sampler name
# (a-z, 0-9, _), and refuses any other arguments: no -o (a file written as root), no
# other flags.  Remove with: sudo bash scripts/setup_powermetrics.sh --uninstall
PATH=/usr/bin:/bin:/usr/sbin:/sbin
export PATH
refuse() {
    echo "energyprof-powermetrics: refused: \$1" >&2
    echo "  allowed: -f plist -i MS --samplers NAME[,NAME...]" >&2
    exit 64
}
[ "\$#" -eq 6 ] || refuse "expected 6 arguments, got \$#"
[ "\$1" = -f ] && [ "\$2" = plist ] || refuse "'\$1 \$2' (only -f plist)"
[ "\$3" = -i ] || refuse "'\$3' (expected -i)"
case "\$4" in ''|*[!0-9]*|0*) refuse "interval '\$4' (whole milliseconds, 1..3600000)" ;; esac
[ "\${#4}" -le 7 ] && [ "\$4" -le 3600000 ] || refuse "interval '\$4' (whole milliseconds, 1..3600000)"
[ "\$5" = --samplers ] || refuse "'\$5' (expected --samplers)"
case "\$6" in ''|,*|*,|*,,*|*[!a-z0-9_,]*) refuse "samplers '\$6' (names of a-z, 0-9, _ joined by commas)" ;; esac
[ "\${#6}" -le 255 ] || refuse "samplers: longer than 255 characters"
exec $BIN -f plist -i "\$4" --samplers "\$6"
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

# Every directory from / down to the wrapper's must belong to root and be writable by
# root alone (a sticky world-writable one, like /tmp, keeps root's entries safe too):
# otherwise another account could replace the wrapper that sudo runs as root.
check_dirs_safe() {
    local d="$1" owner mode
    while :; do
        owner="$(stat -c %u "$d" 2>/dev/null || stat -f %u "$d")"
        mode="$(stat -c %a "$d" 2>/dev/null || stat -f %Lp "$d")"
        [ "$owner" = 0 ] || die "$d is not owned by root: the wrapper would not be safe there"
        if (( (8#$mode & 8#022) != 0 && (8#$mode & 8#1000) == 0 )); then
            die "$d is writable by others (mode $mode): the wrapper would not be safe there"
        fi
        [ "$d" = / ] && break
        d="$(dirname "$d")"
    done
}

same() { [ -e "$2" ] && cmp -s "$1" "$2"; }

case "$MODE" in
    print)
        check_user
        rule_file
        ;;
    print-wrapper)
        wrapper_file
        ;;
    uninstall)
        need_write --uninstall
        removed=0
        for f in "$FILE" "$WRAPPER"; do
            if [ -e "$f" ]; then rm -f "$f"; echo "removed $f"; removed=1; fi
        done
        [ "$removed" = 1 ] || echo "nothing to remove: neither $FILE nor $WRAPPER exists"
        ;;
    install)
        check_user
        need_write
        [ -x "$BIN" ] || echo "setup_powermetrics: warning: $BIN not found (not macOS?); installing anyway" >&2
        [ "$(id -u)" = 0 ] || die "the wrapper must be owned by root: run with sudo"
        VISUDO_BIN="$(find_visudo)"
        wdir="$(dirname "$WRAPPER")"
        mkdir -p "$wdir"
        chmod 0755 "$wdir"
        check_dirs_safe "$wdir"
        tmp_rule="$(mktemp "$DIR/.energyprof-powermetrics.XXXXXX")"
        tmp_wrap="$(mktemp "$wdir/.energyprof-powermetrics.XXXXXX")"
        trap 'rm -f "$tmp_rule" "$tmp_wrap"' EXIT
        rule_file >"$tmp_rule"
        wrapper_file >"$tmp_wrap"
        chmod 0440 "$tmp_rule"
        chmod 0755 "$tmp_wrap"
        chown 0:0 "$tmp_rule" "$tmp_wrap"
        sh -n "$tmp_wrap" || die "the generated wrapper does not parse; nothing installed"
        "$VISUDO_BIN" -cf "$tmp_rule" >/dev/null || die "visudo rejected the generated rule; nothing installed"
        if same "$tmp_rule" "$FILE" && same "$tmp_wrap" "$WRAPPER"; then
            echo "already installed: $FILE and $WRAPPER (unchanged)"
            exit 0
        fi
        # The wrapper first: the rule never points at a missing or old wrapper.  Each is a
        # rename within its own directory: atomic, never a half-written file.
        mv -f "$tmp_wrap" "$WRAPPER"
        mv -f "$tmp_rule" "$FILE"
        trap - EXIT
        echo "installed $WRAPPER and $FILE: $USER_NAME may run sudo -n $WRAPPER -f plist -i MS --samplers LIST"
        ;;
esac
