#!/bin/bash
# Boot step of a testbed host with a real Docker Engine (`testbed up --engine docker`),
# installed as DIR/boot.d/10-dockerd and run inside the host's namespaces by hostinit.sh.
#
# 1. The cgroup hierarchies: `ip netns exec` gave the host a fresh /sys without them, and
#    dockerd needs them. They are mounted again exactly as the machine's init has them
#    (/proc/1/mounts), so cgroup v1, hybrid and v2 machines all work.
# 2. dockerd (Debian's docker.io) with its own data-root (survives a reboot: a disk),
#    exec-root (wiped at boot: it lives in /run on a real machine), pidfile and socket, all
#    under DIR/hosts/HOST/engine/, and its containers under the cgroup parent /NETNS so the
#    testbed can kill every container process of the host (a power cut kills them too).
#    iptables stays on, as on a VM: dockerd runs in the host's network namespace, so it only
#    changes that namespace's tables (the machine's FORWARD policy is untouched).
#    /run/docker.sock points at the socket, so `docker` finds it without DOCKER_HOST.
set -euo pipefail
DIR=$TESTBED_DIR
HOST=$TESTBED_HOST
HD=$DIR/hosts/$HOST
E=$HD/engine
# shellcheck source=/dev/null
. "$HD/engine.env"      # NETNS

if ! mountpoint -q /sys/fs/cgroup; then
    while read -r src mp fstype opts _; do
        case $mp in
        /sys/fs/cgroup | /sys/fs/cgroup/*)
            mkdir -p "$mp"
            mount -t "$fstype" -o "$opts" "$src" "$mp"
            ;;
        esac
    done </proc/1/mounts
fi

rm -rf "$E/exec"
mkdir -p "$E/data" "$E/exec"
rm -f "$E/docker.sock" "$E/docker.pid"
ln -sfn "$E/docker.sock" /run/docker.sock
echo "$(date -Is) dockerd starting" >>"$E/dockerd.log"
exec dockerd --data-root "$E/data" --exec-root "$E/exec" --pidfile "$E/docker.pid" \
    -H "unix://$E/docker.sock" --cgroup-parent "/$NETNS" >>"$E/dockerd.log" 2>&1 &
