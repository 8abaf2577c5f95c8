# Entrypoint of the test image tunnelfleet-test/cloudflared (engine-images/build): the
# compiled stand-in cloudflared with its metrics server on 0.0.0.0 and the first free port of
# 20241-20245 (what cloudflared does in a container; the stand-in takes either a fixed
# --metrics address or the loopback range). A port is taken when a socket of this network
# namespace listens on it (/proc/net/tcp, state 0A). The exec leaves the stand-in as PID 1,
# so SIGTERM reaches it (drain) as it reaches cloudflared.
for port in 20241 20242 20243 20244 20245; do
    hex=$(printf '%04X' "$port")
    if ! cat /proc/net/tcp /proc/net/tcp6 2>/dev/null | grep -q ":$hex [0-9A-F:]* 0A "; then
        exec /usr/local/bin/cloudflared "$@" --metrics "0.0.0.0:$port"
    fi
done
echo "failed to start the metrics server: no free port in 0.0.0.0:20241-20245" >&2
exit 1
