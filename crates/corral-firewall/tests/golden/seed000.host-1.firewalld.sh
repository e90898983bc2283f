#!/bin/sh
# corral firewall for host host-1 as firewalld commands (generated). Review, then run as root.
# Outbound flows this machine needs (not enforced here; allowed by the cloud security group or an output policy):
#   8443/tcp to server group (sg-corral-server) [10.0.0.10/32]: Agent dials out to the server (TLS WebSocket, CA pinned); the only control-plane flow, commands come back over it
#   51820/udp to host group (sg-corral-hosts) [10.0.1.11/32 10.0.1.12/32]: Overlay to peer hosts (overlay 51820/udp, encrypted), environment default
#   443/tcp to 0.0.0.0/0, ::/0: Docker pulls images from registries over HTTPS
#   53/udp to 0.0.0.0/0, ::/0: DNS lookups (TCP for large answers)
#   53/tcp to 0.0.0.0/0, ::/0: DNS lookups (TCP for large answers)
#   123/udp to 0.0.0.0/0, ::/0: Time synchronisation (NTP)
set -e
# Re-running: firewall-cmd --permanent --delete-zone=corral first.
firewall-cmd --permanent --new-zone=corral
firewall-cmd --permanent --zone=corral --set-target=DROP
# corral overlay between hosts
firewall-cmd --permanent --zone=corral --add-rich-rule='rule family="ipv4" source address="10.0.1.11/32" port port="51820" protocol="udp" accept'
firewall-cmd --permanent --zone=corral --add-rich-rule='rule family="ipv4" source address="10.0.1.12/32" port port="51820" protocol="udp" accept'
# corral SSH from admin networks
firewall-cmd --permanent --zone=corral --add-rich-rule='rule family="ipv4" source address="198.51.100.7/32" port port="22" protocol="tcp" accept'
# Container bridges (docker0, br-*) stay in their own zone (Docker's zone): the agent's DNS responder on the bridge address is reached from there.
# Bind the zone to the interface facing the network (moves it out of its current zone):
# firewall-cmd --permanent --zone=corral --change-interface=eth0
firewall-cmd --reload
