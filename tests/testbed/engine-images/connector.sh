# test image: a connector answering /ready with an id of its own on the first free port of
# 20241-20245 (ignores its arguments); stops at once on SIGTERM.
CONNECTOR_ID=$(cat /proc/sys/kernel/random/uuid)
export CONNECTOR_ID
echo "Generated Connector ID: $CONNECTOR_ID"
for port in 20241 20242 20243 20244 20245; do
    nc -ll -p "$port" -e /bin/sh /ready.sh &
    pid=$!
    trap 'kill $pid; exit 0' TERM INT
    sleep 0.2
    if kill -0 "$pid" 2>/dev/null; then
        echo "metrics on 127.0.0.1:$port"
        wait "$pid"
        exit 1
    fi
done
echo "no free metrics port" >&2
exit 1
