"""The naive rotation as a pyinfra deploy (scripts/bench-peers): write .env (0600) with the
new TUNNEL_TOKEN (uploaded over SFTP), then `docker compose ... up -d cloudflared`, which
recreates the connector. Inputs from the environment: PEERS_FILES (controller dir with
env.next), PEERS_DEPLOY_DIR, PEERS_PROJECT."""
import os

from pyinfra.operations import files, server

F = os.environ["PEERS_FILES"]
D = os.environ["PEERS_DEPLOY_DIR"]
P = os.environ["PEERS_PROJECT"]

files.put(name="write .env with the new token", src=f"{F}/env.next", dest=f"{D}/shared/.env",
          mode="600")
server.shell(
    name="recreate the connector on the new token",
    commands=[f"docker compose -p {P} --project-directory {D}/current "
              f"-f {D}/current/docker-compose.yaml up -d cloudflared"],
)
