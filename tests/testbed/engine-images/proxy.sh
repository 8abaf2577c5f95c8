# test image: the proxy's place in the stack: TLS on :8080 with the stack's certificate
# (ignores its arguments); stops at once on SIGTERM.
export OPENSSL_CONF=/dev/null
openssl s_server -quiet -accept 0.0.0.0:8080 -cert /data/tls.crt -key /data/tls.key -www &
pid=$!
trap 'kill $pid; exit 0' TERM INT
wait $pid
