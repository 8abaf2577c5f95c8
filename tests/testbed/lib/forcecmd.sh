#!/bin/bash
# sshd ForceCommand wrapper of every testbed host.
#
# 1. Records the session: one JSON line
#      {"t_ms":<epoch ms>,"host":"h1","cmd":<SSH_ORIGINAL_COMMAND or null>}
#    appended to DIR/hosts/HOST/commands.log and to DIR/commands.log
#    (cmd is null for an interactive session without a command; an SFTP
#    subsystem session is logged as "internal-sftp").
# 2. Puts DIR/bin (testbed stand-ins such as `docker`) first on PATH.
# 3. Runs what sshd would have run: `$SHELL -c "$SSH_ORIGINAL_COMMAND"` with
#    root's shell (bash), an interactive login shell when there is no command,
#    and the SFTP server for the sftp subsystem. (With ForceCommand set, sshd
#    hands a subsystem request to this wrapper with SSH_ORIGINAL_COMMAND set to
#    the subsystem's command, here "internal-sftp", which is not an executable:
#    we run the sftp-server binary, which speaks the same protocol.)
#
# Kept free of forks on the common path so remote command timings stay
# realistic.
DIR=${BASH_SOURCE[0]%/lib/*}
HOST=$HOSTNAME

_json_str() {   # JSON string literal of $1 into REPLY
    local s=$1 c i
    s=${s//\\/\\\\}
    s=${s//\"/\\\"}
    s=${s//$'\n'/\\n}
    s=${s//$'\r'/\\r}
    s=${s//$'\t'/\\t}
    if [[ $s == *[$'\x01'-$'\x1f']* ]]; then
        for i in {1..31}; do
            printf -v c "\\x$(printf %02x "$i")"
            s=${s//$c/$(printf '\\u%04x' "$i")}
        done
    fi
    REPLY="\"$s\""
}

t=${EPOCHREALTIME/[.,]/}
t_ms=${t:0:${#t}-3}
if [[ -v SSH_ORIGINAL_COMMAND ]]; then
    _json_str "$SSH_ORIGINAL_COMMAND"
    cmd_json=$REPLY
else
    cmd_json=null
fi
line="{\"t_ms\":$t_ms,\"host\":\"$HOST\",\"cmd\":$cmd_json}"
_log() {   # append $line to file $1 atomically w.r.t. other writers
    # One write(2) of a short line with O_APPEND is atomic on Linux; long
    # lines (big scripts) may be split by stdio, so they take a lock.
    local LC_ALL=C
    if (( ${#line} < 3500 )); then
        printf '%s\n' "$line" >>"$1"
    else
        { flock 9; printf '%s\n' "$line" >&9; } 9>>"$1"
    fi
}
_log "$DIR/hosts/$HOST/commands.log" 2>/dev/null
_log "$DIR/commands.log" 2>/dev/null

export PATH="$DIR/bin:$PATH"
# As if sshd had started the shell itself (bash decides whether to read
# ~/.bashrc from SHLVL).
unset SHLVL line cmd_json t t_ms REPLY DIR HOST
unset -f _json_str _log

if [[ ! -v SSH_ORIGINAL_COMMAND ]]; then
    exec -a -bash /bin/bash
elif [[ $SSH_ORIGINAL_COMMAND == internal-sftp* ]]; then
    exec /usr/lib/openssh/sftp-server
else
    exec /bin/bash -c "$SSH_ORIGINAL_COMMAND"
fi
