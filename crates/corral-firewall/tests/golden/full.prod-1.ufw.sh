#!/bin/sh
# corral firewall for host prod-1 as ufw commands (generated). Review, then run as root.
# ufw denies other inbound traffic by default (ufw default deny incoming).
# Outbound flows this machine needs (not enforced here; allowed by the cloud security group or an output policy):
#   8443/tcp to server group (sg-0123456789abcdef0) [10.0.0.10/32 10.0.0.11/32 10.0.2.11/32 2001:db8::10/128 2001:db8::11/128]: Agent dials out to the server (TLS WebSocket, CA pinned); the only control-plane flow, commands come back over it
#   51820/udp to hosts of environment prod [10.0.1.11/32 10.0.1.12/32 2001:db8:1::11/128 2001:db8:1::12/128]: Overlay to peer hosts (overlay 51820/udp, encrypted), environment prod
#   443/tcp to 0.0.0.0/0, ::/0: Docker pulls images from registries over HTTPS
#   53/udp to 10.0.0.2/32: DNS lookups (TCP for large answers)
#   53/tcp to 10.0.0.2/32: DNS lookups (TCP for large answers)
#   123/udp to 169.254.169.123/32: Time synchronisation (NTP)
set -e
ufw allow in on docker0 proto udp to any port 53 comment 'corral agent DNS responder for containers'
ufw allow in on docker0 proto tcp to any port 53 comment 'corral agent DNS responder for containers'
# ufw cannot match the interface pattern br-*: allow DNS (53) from those bridges by name for the agent's DNS responder
ufw allow proto udp from 10.0.1.11 to any port 51820 comment 'corral overlay between hosts'
ufw allow proto udp from 10.0.1.12 to any port 51820 comment 'corral overlay between hosts'
ufw allow proto udp from 2001:db8:1::11 to any port 51820 comment 'corral overlay between hosts'
ufw allow proto udp from 2001:db8:1::12 to any port 51820 comment 'corral overlay between hosts'
ufw allow proto tcp from any to any port 80 comment 'corral published shop/web'
ufw allow proto tcp from any to any port 443 comment 'corral published shop/web'
ufw allow proto udp from 198.51.100.0/24 to any port 30000:30010 comment 'corral published media'
ufw allow proto udp from 2001:db8:ffff::/48 to any port 30000:30010 comment 'corral published media'
ufw allow proto tcp from 203.0.113.0/24 to any port 22 comment 'corral SSH from admin networks'
ufw allow proto tcp from 2001:db8:aaaa::/48 to any port 22 comment 'corral SSH from admin networks'
# corral path MTU discovery: ufw has no command for ICMP; its default before.rules already accept destination-unreachable (IPv4) and packet-too-big (IPv6)
# corral published media: Docker-published ports bypass ufw (they are DNAT'd and forwarded, not input); enforce this source restriction with the nftables or iptables output
# ufw enable
