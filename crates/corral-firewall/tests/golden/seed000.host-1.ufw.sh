#!/bin/sh
# corral firewall for host host-1 as ufw commands (generated). Review, then run as root.
# ufw denies other inbound traffic by default (ufw default deny incoming).
# Outbound flows this machine needs (not enforced here; allowed by the cloud security group or an output policy):
#   8443/tcp to server group (sg-corral-server) [10.0.0.10/32]: Agent dials out to the server (TLS WebSocket, CA pinned); the only control-plane flow, commands come back over it
#   51820/udp to host group (sg-corral-hosts) [10.0.1.11/32 10.0.1.12/32]: Overlay to peer hosts (overlay 51820/udp, encrypted), environment default
#   443/tcp to 0.0.0.0/0, ::/0: Docker pulls images from registries over HTTPS
#   53/udp to 0.0.0.0/0, ::/0: DNS lookups (TCP for large answers)
#   53/tcp to 0.0.0.0/0, ::/0: DNS lookups (TCP for large answers)
#   123/udp to 0.0.0.0/0, ::/0: Time synchronisation (NTP)
set -e
ufw allow in on docker0 proto udp to any port 53 comment 'corral agent DNS responder for containers'
ufw allow in on docker0 proto tcp to any port 53 comment 'corral agent DNS responder for containers'
# ufw cannot match the interface pattern br-*: allow DNS (53) from those bridges by name for the agent's DNS responder
ufw allow proto udp from 10.0.1.11 to any port 51820 comment 'corral overlay between hosts'
ufw allow proto udp from 10.0.1.12 to any port 51820 comment 'corral overlay between hosts'
ufw allow proto tcp from 198.51.100.7 to any port 22 comment 'corral SSH from admin networks'
# ufw enable
