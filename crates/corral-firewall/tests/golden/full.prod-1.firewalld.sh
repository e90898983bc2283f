#!/bin/sh
# corral firewall for host prod-1 as firewalld commands (generated). Review, then run as root.
# Outbound flows this machine needs (not enforced here; allowed by the cloud security group or an output policy):
#   8443/tcp to server group (sg-0123456789abcdef0) [10.0.0.10/32 10.0.0.11/32 10.0.2.11/32 2001:db8::10/128 2001:db8::11/128]: Agent dials out to the server (TLS WebSocket, CA pinned); the only control-plane flow, commands come back over it
#   51820/udp to hosts of environment prod [10.0.1.11/32 10.0.1.12/32 2001:db8:1::11/128 2001:db8:1::12/128]: Overlay to peer hosts (overlay 51820/udp, encrypted), environment prod
#   443/tcp to 0.0.0.0/0, ::/0: Docker pulls images from registries over HTTPS
#   53/udp to 10.0.0.2/32: DNS lookups (TCP for large answers)
#   53/tcp to 10.0.0.2/32: DNS lookups (TCP for large answers)
#   123/udp to 169.254.169.123/32: Time synchronisation (NTP)
set -e
# Re-running: firewall-cmd --permanent --delete-zone=corral first.
firewall-cmd --permanent --new-zone=corral
firewall-cmd --permanent --zone=corral --set-target=DROP
# corral overlay between hosts
firewall-cmd --permanent --zone=corral --add-rich-rule='rule family="ipv4" source address="10.0.1.11/32" port port="51820" protocol="udp" accept'
firewall-cmd --permanent --zone=corral --add-rich-rule='rule family="ipv4" source address="10.0.1.12/32" port port="51820" protocol="udp" accept'
firewall-cmd --permanent --zone=corral --add-rich-rule='rule family="ipv6" source address="2001:db8:1::11/128" port port="51820" protocol="udp" accept'
firewall-cmd --permanent --zone=corral --add-rich-rule='rule family="ipv6" source address="2001:db8:1::12/128" port port="51820" protocol="udp" accept'
# corral published shop/web
firewall-cmd --permanent --zone=corral --add-port=80/tcp
# corral published shop/web
firewall-cmd --permanent --zone=corral --add-port=443/tcp
# corral published media
firewall-cmd --permanent --zone=corral --add-rich-rule='rule family="ipv4" source address="198.51.100.0/24" port port="30000-30010" protocol="udp" accept'
firewall-cmd --permanent --zone=corral --add-rich-rule='rule family="ipv6" source address="2001:db8:ffff::/48" port port="30000-30010" protocol="udp" accept'
# corral SSH from admin networks
firewall-cmd --permanent --zone=corral --add-rich-rule='rule family="ipv4" source address="203.0.113.0/24" port port="22" protocol="tcp" accept'
firewall-cmd --permanent --zone=corral --add-rich-rule='rule family="ipv6" source address="2001:db8:aaaa::/48" port port="22" protocol="tcp" accept'
# corral path MTU discovery
firewall-cmd --permanent --zone=corral --add-rich-rule='rule family="ipv4" icmp-type name="fragmentation-needed" accept'
firewall-cmd --permanent --zone=corral --add-rich-rule='rule family="ipv6" icmp-type name="packet-too-big" accept'
# Container bridges (docker0, br-*) stay in their own zone (Docker's zone): the agent's DNS responder on the bridge address is reached from there.
# corral published media: Docker-published ports are forwarded, not input; enforce this source restriction with the nftables or iptables output
# Bind the zone to the interface facing the network (moves it out of its current zone):
# firewall-cmd --permanent --zone=corral --change-interface=eth0
firewall-cmd --reload
