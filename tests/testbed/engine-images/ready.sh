# test image (engine-images/build): answers one /ready request (nc -e runs this per connection).
cr=$(printf '\r')
while IFS= read -r l; do case "$l" in "" | "$cr") break ;; esac; done
body="{\"status\":200,\"readyConnections\":4,\"connectorId\":\"$CONNECTOR_ID\"}"
printf 'HTTP/1.0 200 OK\r\nContent-Type: application/json\r\nContent-Length: %s\r\n\r\n%s' "${#body}" "$body"
