"""A deploy of the files tunnelfleet deployed (copied from h1 by scripts/bench-peers) as a
pyinfra deploy: .env, the three certificates, the compose file and the proxy config, then
`docker compose up -d`. On a fleet that has them, the benchmark's no-op deploy. Inputs from the
environment: PEERS_FILES (files and modes.json), PEERS_DEPLOY_DIR, PEERS_PROJECT."""
import json
import os

from pyinfra.operations import files, server

F = os.environ["PEERS_FILES"]
D = os.environ["PEERS_DEPLOY_DIR"]
P = os.environ["PEERS_PROJECT"]
with open(f"{F}/modes.json") as f:
    MODES = json.load(f)

files.put(name="write .env", src=f"{F}/env", dest=f"{D}/shared/.env", mode=MODES["env"])
for name in ("ca.crt", "tls.crt", "tls.key"):
    files.put(name=f"write {name}", src=f"{F}/{name}", dest=f"{D}/shared/data/{name}",
              mode=MODES[name])
files.put(name="write the compose file", src=f"{F}/docker-compose.yaml",
          dest=f"{D}/current/docker-compose.yaml", mode=MODES["docker-compose.yaml"])
files.put(name="write the proxy config", src=f"{F}/mcp-proxy.yaml",
          dest=f"{D}/current/config/mcp-proxy.yaml", mode=MODES["mcp-proxy.yaml"])
server.shell(
    name="compose up",
    commands=[f"docker compose -p {P} --project-directory {D}/current "
              f"-f {D}/current/docker-compose.yaml up -d"],
)
