#!/bin/bash
# Boot of one testbed host: the host's "init". Started by `testbed` as
#   ip netns exec NS unshare --mount --uts --propagation private bash hostinit.sh DIR HOST
# so this process already sits in the host's network namespace and in a fresh,
# private mount + UTS namespace. Its PID is the host's anchor: `testbed exec`
# nsenters it, and the host is "powered off" by killing every process of its
# network namespace (this one included), which also drops the mount namespace
# and so the tmpfs /run.
set -euo pipefail
DIR=$1
HOST=$2
HD=$DIR/hosts/$HOST
# shellcheck source=/dev/null
. "$HD/host.env"        # RELAY_MAPS (space-separated --map specs, may be empty)

hostname "$HOST"
# Per-host "disks": survive a reboot because they live in DIR.
mount --bind "$HD/srv" /srv
mount --bind "$HD/home" /root
mount --bind "$HD/docker" /var/lib/standin-docker
mount --bind "$HD/etc/hostname" /etc/hostname
[ -f "$HD/etc/hosts" ] && mount --bind "$HD/etc/hosts" /etc/hosts
# /run is volatile like on a real machine: lost on reboot. mode=755 or sshd
# refuses /run/sshd.
mount -t tmpfs -o mode=755,size=64m tmpfs /run
mkdir -p /run/sshd /run/lock

echo "$(date -Is) boot $HOST pid $$"
/usr/sbin/sshd -D -f "$HD/sshd_config" -E "$HD/sshd.log" &
if [ -n "${RELAY_MAPS:-}" ]; then
    # shellcheck disable=SC2086
    "$DIR/lib/standin" relay $RELAY_MAPS >>"$HD/relay.log" 2>&1 &
fi

# boot.d: every executable in the host's and the shared boot.d, in the
# background, in name order, with the testbed PATH (stand-in docker first).
export PATH="$DIR/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
export HOME=/root TESTBED_DIR="$DIR" TESTBED_HOST="$HOST"
(
    cd /
    for f in "$HD"/boot.d/* "$DIR"/boot.d/*; do
        if [ -f "$f" ] && [ -x "$f" ]; then
            echo "$(date -Is) boot.d: $f"
            "$f" </dev/null || echo "$(date -Is) boot.d: $f exited $?"
        fi
    done
) &

# Stay alive as the anchor; reaps sshd/relay/boot.d children as they exit.
wait || true
exec sleep infinity
