#!/usr/bin/env bash
# mail-servers.sh -- real Postfix (SMTP) + Dovecot (IMAP with IDLE) on 127.0.0.1
# for carebridge's email adapter tests and CI. No systemd needed; run as root.
#
#   Postfix  = SMTP server (what lettre talks to): accepts mail for the test
#              domains and hands it to Dovecot over LMTP.
#   Dovecot  = IMAP server (IMAP4rev1 + IDLE + MOVE) serving those mailboxes,
#              plus LMTP delivery and the SASL (AUTH) backend for Postfix.
#
# Debian packages: dovecot-imapd dovecot-lmtpd postfix openssl (installed by
# `start` when missing). Based on the recipe in shared/notes/mail-servers.md.
#
# Usage:
#   mail-servers.sh install             apt-get install the packages (no-op if present)
#   mail-servers.sh start        [DIR]  install if needed, write a FRESH config, certs and
#                                       empty mailboxes into DIR, start both daemons,
#                                       wait until every port answers, print the env
#   mail-servers.sh stop         [DIR]  stop the daemons started from DIR (by pid)
#   mail-servers.sh restart-imap [DIR]  stop and start Dovecot only, keeping config and
#                                       mail (tests use it to cut the IMAP connections)
#   mail-servers.sh status       [DIR]  show pids and listening ports
#   mail-servers.sh env          [DIR]  print the connection settings (= DIR/env)
#   mail-servers.sh check        [DIR]  smoke test with python3: SMTP in, IMAP out, IDLE
#
# DIR defaults to $CAREBRIDGE_MAIL_DIR, else /tmp/carebridge-mail. Every parent of
# DIR must be searchable by other users (the daemons' own users read it): /tmp is
# fine, a checkout under /root is not. Tests find the settings in DIR/env (path in
# $CAREBRIDGE_MAIL_ENV, default /tmp/carebridge-mail/env).
#
# Settings (environment, defaults shown):
#   MAIL_SMTP_PORT=2525    SMTP, plain or STARTTLS, AUTH optional
#   MAIL_SMTPS_PORT=2465   SMTP over implicit TLS, AUTH optional
#   MAIL_IMAP_PORT=1143    IMAP, plain or STARTTLS
#   MAIL_IMAPS_PORT=1993   IMAP over implicit TLS
#   MAIL_LMTP_PORT=2424    internal: Postfix -> Dovecot delivery
#   MAIL_USERS="address:password ..."  (default: see USERS below); their domains
#              become the local domains. Users are fixed at start.
#
# Mail to an address not in MAIL_USERS is refused at RCPT time (550), and so is
# mail for any other domain (554 relay access denied): nothing leaves the machine.
# user+tag@domain is delivered to user's INBOX (the adapter's reply addresses).

set -euo pipefail

CMD=${1:-}
DIR=${2:-${CAREBRIDGE_MAIL_DIR:-/tmp/carebridge-mail}}
SMTP_PORT=${MAIL_SMTP_PORT:-2525}
SMTPS_PORT=${MAIL_SMTPS_PORT:-2465}
IMAP_PORT=${MAIL_IMAP_PORT:-1143}
IMAPS_PORT=${MAIL_IMAPS_PORT:-1993}
LMTP_PORT=${MAIL_LMTP_PORT:-2424}
# clinic/dr.lee/ann: the end-to-end scenario (clinic mailbox, a clinician, a patient).
# box1..box10: one mailbox per test that consumes a mailbox with IDLE or reads one, so
# tests running in parallel never take each other's mail.
DEFAULT_USERS="clinic@clinic.test:clinic-pass dr.lee@clinic.test:lee-pass ann@patients.test:ann-pass"
for i in 1 2 3 4 5 6 7 8 9 10; do DEFAULT_USERS="$DEFAULT_USERS box$i@clinic.test:box$i-pass"; done
USERS=${MAIL_USERS:-$DEFAULT_USERS}
PACKAGES="dovecot-imapd dovecot-lmtpd postfix openssl"

die() { echo "mail-servers: $*" >&2; exit 1; }
log() { echo "mail-servers: $*" >&2; }

[ "$(id -u)" = 0 ] || die "must run as root"
case "$DIR" in /*) ;; *) DIR="$PWD/$DIR" ;; esac
[ "$DIR" != / ] || die "refusing DIR=/"

# ---------------------------------------------------------------- install
do_install() {
    local missing=""
    for p in $PACKAGES; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing="$missing $p"
    done
    if [ -n "$missing" ]; then
        log "installing:$missing"
        export DEBIAN_FRONTEND=noninteractive
        # Postfix: no system-wide config ("No configuration"); this also halves its install time.
        echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
        # Without systemd, package scripts would start the default daemons via
        # /etc/init.d (port 25/143 on all interfaces). A policy-rc.d that says
        # 101 forbids that; the Docker-style images already ship one.
        if [ ! -e /usr/sbin/policy-rc.d ]; then
            printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
            chmod 755 /usr/sbin/policy-rc.d
            trap 'rm -f /usr/sbin/policy-rc.d' EXIT     # removed however we leave
        fi
        # A fresh machine may have no (or stale) package lists: update and retry.
        if ! apt-get install -y -q --no-install-recommends $missing >/dev/null 2>&1; then
            apt-get update -q >/dev/null
            apt-get install -y -q --no-install-recommends $missing >/dev/null
        fi
    fi
    # Mailboxes belong to one unprivileged user (Dovecot refuses uid 0 for mail).
    getent passwd vmail >/dev/null ||
        useradd --system --user-group --no-create-home --home-dir /nonexistent \
                --shell /usr/sbin/nologin vmail
}

# ---------------------------------------------------------------- helpers
pid_alive() {   # pid_alive PIDFILE NAME: true if PIDFILE names a running (not zombie) NAME process
    local pid
    [ -s "$1" ] || return 1
    pid=$(tr -dc 0-9 < "$1")
    [ -n "$pid" ] && [ -r "/proc/$pid/comm" ] && [ "$(cat "/proc/$pid/comm")" = "$2" ] &&
        [ "$(awk '{print $3}' "/proc/$pid/stat")" != Z ]
}

stop_one() {    # stop_one PIDFILE NAME: SIGTERM, wait up to 10 s, then SIGKILL
    local pid i
    pid_alive "$1" "$2" || { rm -f "$1"; return 0; }
    pid=$(tr -dc 0-9 < "$1")
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 100); do
        pid_alive "$1" "$2" || break
        sleep 0.1
    done
    if pid_alive "$1" "$2"; then kill -KILL "$pid" 2>/dev/null || true; sleep 0.2; fi
    log "stopped $2 (pid $pid)"
    rm -f "$1"
}

children_of() {    # children_of PID: "pid:comm" of each direct child (reads /proc; no ps needed)
    local stat pid comm ppid
    for stat in /proc/[0-9]*/stat; do
        read -r pid comm _ ppid _ < "$stat" 2>/dev/null || continue
        [ "$ppid" = "$1" ] && echo "$pid:$comm"
    done
    return 0
}

stop_dovecot() {
    # Dovecot's master does not take logged-in imap processes down with it: they stay
    # (orphaned) and keep serving their clients. Note its children first, end them after.
    local kids="" kid pid comm i
    if pid_alive "$DOVECOT_PID" dovecot; then kids=$(children_of "$(tr -dc 0-9 < "$DOVECOT_PID")"); fi
    stop_one "$DOVECOT_PID" dovecot
    for i in 1 2; do
        for kid in $kids; do
            pid=${kid%%:*}; comm=${kid#*:}
            [ -r "/proc/$pid/stat" ] && [ "$(awk '{print $2}' "/proc/$pid/stat")" = "$comm" ] || continue
            if [ "$i" = 1 ]; then kill -TERM "$pid" 2>/dev/null || true; else kill -KILL "$pid" 2>/dev/null || true; fi
        done
        if [ "$i" = 1 ] && [ -n "$kids" ]; then sleep 0.5; fi
    done
    return 0
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_ports() {
    local p i
    for p in "$@"; do
        for i in $(seq 100); do port_open "$p" && break; sleep 0.1; done
        port_open "$p" || { tail -n 20 "$DIR"/log/*.log >&2 || true; die "port $p did not open"; }
    done
}

DOVECOT_PID="$DIR/run/dovecot/master.pid"
POSTFIX_PID="$DIR/spool/pid/master.pid"

# ---------------------------------------------------------------- configure
write_config() {
    # Fresh state every start: remove only what this script creates.
    rm -rf "$DIR"/{tls,dovecot,postfix,mail,spool,data,run,state,log,env}
    mkdir -p "$DIR"/{tls,dovecot,postfix,mail,spool,data,run,state,log}
    chmod 755 "$DIR"
    runuser -u vmail -- test -x "$DIR" ||
        die "$DIR is not reachable by other users; pick a DIR whose parents are o+x (e.g. under /tmp)"

    # --- TLS: a throwaway CA and a server cert for localhost / 127.0.0.1.
    # Not a lone "openssl req -x509" cert: that one is marked CA:TRUE and rustls
    # refuses it as a server cert (CaUsedAsEndEntity). Tests trust $DIR/tls/ca.pem.
    (
        cd "$DIR/tls"
        openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=mail-test CA" \
            -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
            -keyout ca.key -out ca.pem 2>/dev/null
        openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout server.key -out server.csr 2>/dev/null
        printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" \
            "extendedKeyUsage=serverAuth" "subjectAltName=DNS:localhost,IP:127.0.0.1" > server.ext
        openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 3650 \
            -extfile server.ext -out server.pem 2>/dev/null
        chmod 600 ca.key server.key     # both daemons read keys as root before dropping privileges
    )

    # --- users: one Dovecot passwd-file (IMAP logins, LMTP recipients, SMTP AUTH)
    # and one Postfix list of valid recipients. The six trailing colons matter:
    # without the empty uid/gid/home fields Dovecot says "missing userdb info".
    local u addr pass domains=""
    : > "$DIR/dovecot/users"; : > "$DIR/postfix/vmailbox"
    for u in $USERS; do
        addr=${u%%:*}; pass=${u#*:}
        echo "$addr:{PLAIN}$pass::::::" >> "$DIR/dovecot/users"
        echo "$addr OK" >> "$DIR/postfix/vmailbox"
        case " $domains " in *" ${addr#*@} "*) ;; *) domains="$domains ${addr#*@}" ;; esac
    done
    domains=${domains# }
    chown root:dovecot "$DIR/dovecot/users"; chmod 640 "$DIR/dovecot/users"
    chown vmail:vmail "$DIR/mail"
    chown postfix "$DIR/data"

    # --- Dovecot: a complete config of its own; nothing from /etc/dovecot is read.
    cat > "$DIR/dovecot/dovecot.conf" <<EOF
# Generated by mail-servers.sh
protocols = imap lmtp
listen = 127.0.0.1
base_dir = $DIR/run/dovecot
state_dir = $DIR/state
instance_name = carebridge-mail-$IMAP_PORT
log_path = $DIR/log/dovecot.log
auth_verbose = yes

ssl = yes
ssl_cert = <$DIR/tls/server.pem
ssl_key = <$DIR/tls/server.key
# plain-text LOGIN allowed on the non-TLS port too (tests may use either)
disable_plaintext_auth = no
auth_mechanisms = plain login
# answer a wrong password at once (default: 2 s pause), so negative tests stay fast
auth_failure_delay = 0

# All mailboxes are owned by vmail, under $DIR/mail/<domain>/<user>/Maildir
first_valid_uid = $(id -u vmail)
mail_location = maildir:~/Maildir
passdb {
  driver = passwd-file
  args = scheme=PLAIN username_format=%u $DIR/dovecot/users
}
userdb {
  driver = passwd-file
  args = username_format=%u $DIR/dovecot/users
  default_fields = uid=vmail gid=vmail home=$DIR/mail/%d/%n
}
namespace inbox {
  inbox = yes
  separator = /
  mailbox Sent {
    special_use = \\Sent
    auto = subscribe
  }
  mailbox Trash {
    special_use = \\Trash
    auto = subscribe
  }
  mailbox Archive {
    special_use = \\Archive
    auto = subscribe
  }
}
# tests open many sessions for one user from 127.0.0.1 (default limit: 10)
protocol imap {
  mail_max_userip_connections = 200
}

service imap-login {
  inet_listener imap {
    address = 127.0.0.1
    port = $IMAP_PORT
  }
  inet_listener imaps {
    address = 127.0.0.1
    port = $IMAPS_PORT
    ssl = yes
  }
}
service lmtp {
  inet_listener lmtp {
    address = 127.0.0.1
    port = $LMTP_PORT
  }
}
protocol lmtp {
  postmaster_address = postmaster@${domains%% *}
}
# SASL socket for Postfix's AUTH (Postfix runs unchrooted, so an absolute path works)
service auth {
  unix_listener auth-postfix {
    mode = 0666
  }
}
EOF

    # --- Postfix: its own config directory, queue and log; no chroot, no syslog.
    cat > "$DIR/postfix/main.cf" <<EOF
# Generated by mail-servers.sh
compatibility_level = 3.6
queue_directory = $DIR/spool
data_directory = $DIR/data
mail_owner = postfix
setgid_group = postdrop
# No syslogd on CI machines: log to a file (the prefix list must allow the path)
maillog_file_prefixes = $DIR/log
maillog_file = $DIR/log/postfix.log

myhostname = mail.${domains%% *}
mydomain = ${domains%% *}
myorigin = \$mydomain
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
alias_maps =
alias_database =
biff = no
smtpd_peername_lookup = no
message_size_limit = 52428800

# Test domains are "virtual mailbox" domains delivered by Dovecot over LMTP.
virtual_mailbox_domains = ${domains// /, }
virtual_mailbox_maps = texthash:$DIR/postfix/vmailbox
virtual_transport = lmtp:inet:127.0.0.1:$LMTP_PORT
# user+anything@domain is accepted and lands in user's INBOX (Dovecot's
# recipient_delimiter is "+" by default): one mailbox, unique addresses per test.
recipient_delimiter = +
# Never relay elsewhere; unknown local users are refused at RCPT.
smtpd_relay_restrictions = reject_unauth_destination
smtpd_recipient_restrictions = reject_unlisted_recipient
# Retry quickly if Dovecot was briefly unavailable.
queue_run_delay = 5s
minimal_backoff_time = 5s
maximal_backoff_time = 10s

# AUTH PLAIN/LOGIN against Dovecot's users; optional, also offered without TLS.
smtpd_sasl_auth_enable = yes
smtpd_sasl_type = dovecot
smtpd_sasl_path = $DIR/run/dovecot/auth-postfix
smtpd_tls_auth_only = no

smtpd_tls_cert_file = $DIR/tls/server.pem
smtpd_tls_key_file = $DIR/tls/server.key
smtpd_tls_security_level = may
EOF
    # chroot column "n" everywhere: Debian's stock master.cf chroots smtpd into
    # the queue directory, which would hide the Dovecot socket and the certs.
    cat > "$DIR/postfix/master.cf" <<EOF
# service           type  private unpriv chroot wakeup maxproc command
127.0.0.1:$SMTP_PORT  inet  n       -      n      -      -       smtpd
127.0.0.1:$SMTPS_PORT inet  n       -      n      -      -       smtpd -o smtpd_tls_wrappermode=yes
pickup     unix  n       -      n      60     1       pickup
cleanup    unix  n       -      n      -      0       cleanup
qmgr       unix  n       -      n      300    1       qmgr
tlsmgr     unix  -       -      n      1000?  1       tlsmgr
rewrite    unix  -       -      n      -      -       trivial-rewrite
bounce     unix  -       -      n      -      0       bounce
defer      unix  -       -      n      -      0       bounce
trace      unix  -       -      n      -      0       bounce
verify     unix  -       -      n      -      1       verify
flush      unix  n       -      n      1000?  0       flush
proxymap   unix  -       -      n      -      -       proxymap
proxywrite unix  -       -      n      -      1       proxymap
smtp       unix  -       -      n      -      -       smtp
relay      unix  -       -      n      -      -       smtp
showq      unix  n       -      n      -      -       showq
error      unix  -       -      n      -      -       error
retry      unix  -       -      n      -      -       error
discard    unix  -       -      n      -      -       discard
lmtp       unix  -       -      n      -      -       lmtp
anvil      unix  -       -      n      -      1       anvil
scache     unix  -       -      n      -      1       scache
postlog    unix-dgram n  -      n      -      1       postlogd
EOF

    # --- what tests need to connect (sourceable shell, also fine for dotenv parsers)
    cat > "$DIR/env" <<EOF
MAIL_DIR=$DIR
MAIL_HOST=127.0.0.1
MAIL_TLS_NAME=localhost
MAIL_TLS_CA=$DIR/tls/ca.pem
MAIL_SMTP_PORT=$SMTP_PORT
MAIL_SMTPS_PORT=$SMTPS_PORT
MAIL_IMAP_PORT=$IMAP_PORT
MAIL_IMAPS_PORT=$IMAPS_PORT
MAIL_LMTP_PORT=$LMTP_PORT
MAIL_USERS="$USERS"
MAIL_DOMAINS="$domains"
EOF
}

# ---------------------------------------------------------------- commands
do_stop() {
    stop_one "$POSTFIX_PID" master      # Postfix's master; SIGTERM stops its children
    stop_dovecot
}

do_start() {
    do_install
    do_stop                                       # restart cleanly if already running
    local p
    for p in "$SMTP_PORT" "$SMTPS_PORT" "$IMAP_PORT" "$IMAPS_PORT" "$LMTP_PORT"; do
        ! port_open "$p" || die "port $p on 127.0.0.1 is already in use"
    done
    write_config
    # Both daemonize. Their stdio goes to files: the Dovecot master keeps its
    # stderr open for good, so a caller reading our output through a pipe
    # (CI log capture, Command::output() in Rust) would otherwise never see EOF.
    start_dovecot
    # "postfix start" also creates the queue directories with the right owners.
    # Postfix reports errors to its log file (or a tty), not to stderr.
    postfix -c "$DIR/postfix" start </dev/null >>"$DIR/log/postfix.stderr" 2>&1 ||
        { tail -n 20 "$DIR/log/postfix.log" >&2 || true; die "postfix start failed"; }
    wait_ports "$IMAP_PORT" "$IMAPS_PORT" "$LMTP_PORT" "$SMTP_PORT" "$SMTPS_PORT"
    log "running: dovecot pid $(cat "$DOVECOT_PID"), postfix pid $(tr -dc 0-9 < "$POSTFIX_PID"); config in $DIR"
    cat "$DIR/env"
}

start_dovecot() {
    dovecot -c "$DIR/dovecot/dovecot.conf" </dev/null >>"$DIR/log/dovecot.stderr" 2>&1 ||
        { cat "$DIR/log/dovecot.stderr" >&2; die "dovecot failed to start"; }
}

do_restart_imap() {     # cut every IMAP connection, keep config and mail (UIDVALIDITY stays)
    [ -f "$DIR/dovecot/dovecot.conf" ] && [ -f "$DIR/env" ] || die "not started? ($DIR/env missing)"
    # The ports the running instance was started with, whatever this shell's environment says.
    IMAP_PORT=$(sed -n 's/^MAIL_IMAP_PORT=//p' "$DIR/env")
    IMAPS_PORT=$(sed -n 's/^MAIL_IMAPS_PORT=//p' "$DIR/env")
    LMTP_PORT=$(sed -n 's/^MAIL_LMTP_PORT=//p' "$DIR/env")
    LMTP_PORT=${LMTP_PORT:-2424}
    stop_dovecot
    local p
    for p in "$IMAP_PORT" "$IMAPS_PORT" "$LMTP_PORT"; do
        for _ in $(seq 50); do port_open "$p" || break; sleep 0.1; done
    done
    start_dovecot
    wait_ports "$IMAP_PORT" "$IMAPS_PORT" "$LMTP_PORT"
    log "dovecot restarted: pid $(cat "$DOVECOT_PID")"
}

do_status() {
    pid_alive "$DOVECOT_PID" dovecot && echo "dovecot: pid $(cat "$DOVECOT_PID")" || echo "dovecot: stopped"
    pid_alive "$POSTFIX_PID" master && echo "postfix: pid $(tr -dc 0-9 < "$POSTFIX_PID")" || echo "postfix: stopped"
    ss -ltnH 2>/dev/null | awk '{print "listening: " $4}' |
        grep -E ":($SMTP_PORT|$SMTPS_PORT|$IMAP_PORT|$IMAPS_PORT|$LMTP_PORT)\$" || true
}

do_check() {    # end-to-end smoke test: every user gets a message, one IDLE push, TLS both ways
    [ -f "$DIR/env" ] || die "not started? ($DIR/env missing)"
    command -v python3 >/dev/null || die "check needs python3"
    set -a; . "$DIR/env"; set +a
    python3 - <<'EOF'
import imaplib, os, smtplib, ssl, time, uuid
from email.message import EmailMessage
H, ctx = os.environ["MAIL_HOST"], ssl.create_default_context(cafile=os.environ["MAIL_TLS_CA"])
name = os.environ["MAIL_TLS_NAME"]
users = dict(u.split(":", 1) for u in os.environ["MAIL_USERS"].split())
port = lambda k: int(os.environ[k])
tag = uuid.uuid4().hex[:8]
def msg(to, subj):
    m = EmailMessage(); m["From"] = "check@example.test"; m["To"] = to; m["Subject"] = subj
    m.set_content("smoke test"); return m
def imap(user, tls):
    i = imaplib.IMAP4_SSL(name, port("MAIL_IMAPS_PORT"), ssl_context=ctx) if tls else imaplib.IMAP4(H, port("MAIL_IMAP_PORT"))
    i.login(user, users[user]); i.select("INBOX"); return i
# plain SMTP to every user; STARTTLS+AUTH and SMTPS+AUTH to the first user
with smtplib.SMTP(H, port("MAIL_SMTP_PORT")) as s:
    for u in users: s.send_message(msg(u, f"plain-{tag}"))
first, pw = next(iter(users.items()))
with smtplib.SMTP(name, port("MAIL_SMTP_PORT")) as s:
    s.starttls(context=ctx); s.login(first, pw); s.send_message(msg(first, f"starttls-{tag}"))
with smtplib.SMTP_SSL(name, port("MAIL_SMTPS_PORT"), context=ctx) as s:
    s.login(first, pw); s.send_message(msg(first, f"smtps-{tag}"))
for rcpt in ("nobody@" + first.split("@")[1], "someone@elsewhere.example"):
    try:
        with smtplib.SMTP(H, port("MAIL_SMTP_PORT")) as s: s.send_message(msg(rcpt, "x"))
        raise SystemExit(f"FAIL: {rcpt} was accepted")
    except smtplib.SMTPRecipientsRefused: pass
want = [(u, f"plain-{tag}", False) for u in users] + [(first, f"starttls-{tag}", True), (first, f"smtps-{tag}", True)]
deadline = time.time() + 15
for user, subj, tls in want:
    while True:
        i = imap(user, tls); found = i.search(None, "SUBJECT", subj)[1][0]; i.logout()
        if found: break
        if time.time() > deadline: raise SystemExit(f"FAIL: {subj} never reached {user}")
        time.sleep(0.1)
# IDLE: the server must push EXISTS when new mail arrives
i = imap(first, False); i.send(b"T1 IDLE\r\n"); assert i.readline().startswith(b"+")
t0 = time.time()
with smtplib.SMTP(H, port("MAIL_SMTP_PORT")) as s: s.send_message(msg(first, f"idle-{tag}"))
i.sock.settimeout(30); line = i.readline()
assert b"EXISTS" in line, line
i.send(b"DONE\r\n")
while not i.readline().startswith(b"T1 "): pass
i.logout()
print(f"check ok: {len(want)} messages delivered, IDLE push after {time.time() - t0:.2f}s")
EOF
}

case "$CMD" in
    install) do_install ;;
    start)   do_start ;;
    stop)    do_stop ;;
    restart-imap) do_restart_imap ;;
    status)  do_status ;;
    env)     cat "$DIR/env" ;;
    check)   do_check ;;
    *) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 2 ;;
esac
