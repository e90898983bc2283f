# corral firewall: security groups and rules (generated; edit the topology, not this file).
# Hosts open no port to the server: agents dial out on 8443/tcp. No server-to-host rule exists.

variable "vpc_id" {
  type        = string
  description = "VPC holding the corral server and hosts"
}

resource "aws_security_group" "corral_server" {
  name        = "corral-server"
  description = "corral server: API and agent tunnel on 8443/tcp"
  vpc_id      = var.vpc_id
  tags = {
    Name = "corral-server"
  }
}

resource "aws_security_group" "corral_hosts" {
  name        = "corral-hosts"
  description = "corral hosts: agents dial out; overlay between hosts; published ports"
  vpc_id      = var.vpc_id
  tags = {
    Name = "corral-hosts"
  }
}

resource "aws_security_group" "corral_datastore" {
  name        = "corral-datastore"
  description = "corral PostgreSQL datastore on 5432/tcp"
  vpc_id      = var.vpc_id
  tags = {
    Name = "corral-datastore"
  }
}

resource "aws_vpc_security_group_ingress_rule" "corral_server_in_tcp_8443_any_v4" {
  security_group_id            = aws_security_group.corral_server.id
  description                  = "Users and the CLI reach the server API over HTTPS"
  ip_protocol                  = "tcp"
  from_port                    = 8443
  to_port                      = 8443
  cidr_ipv4                    = "0.0.0.0/0"
}

resource "aws_vpc_security_group_ingress_rule" "corral_server_in_tcp_8443_any_v6" {
  security_group_id            = aws_security_group.corral_server.id
  description                  = "Users and the CLI reach the server API over HTTPS"
  ip_protocol                  = "tcp"
  from_port                    = 8443
  to_port                      = 8443
  cidr_ipv6                    = "::/0"
}

resource "aws_vpc_security_group_ingress_rule" "corral_server_in_tcp_8443_hosts" {
  security_group_id            = aws_security_group.corral_server.id
  description                  = "Agents dial out to the server: one TLS WebSocket per host carries every command and reply; the server never connects to hosts"
  ip_protocol                  = "tcp"
  from_port                    = 8443
  to_port                      = 8443
  referenced_security_group_id = aws_security_group.corral_hosts.id
}

resource "aws_vpc_security_group_ingress_rule" "corral_server_in_tcp_8443_server" {
  security_group_id            = aws_security_group.corral_server.id
  description                  = "Server replicas relay their clients connections to the active server (TLS, the deployment s CA)"
  ip_protocol                  = "tcp"
  from_port                    = 8443
  to_port                      = 8443
  referenced_security_group_id = aws_security_group.corral_server.id
}

resource "aws_vpc_security_group_ingress_rule" "corral_server_in_tcp_22_203_0_113_0_24" {
  security_group_id            = aws_security_group.corral_server.id
  description                  = "SSH administration from the admin networks"
  ip_protocol                  = "tcp"
  from_port                    = 22
  to_port                      = 22
  cidr_ipv4                    = "203.0.113.0/24"
}

resource "aws_vpc_security_group_ingress_rule" "corral_server_in_tcp_22_2001_db8_aaaa_48" {
  security_group_id            = aws_security_group.corral_server.id
  description                  = "SSH administration from the admin networks"
  ip_protocol                  = "tcp"
  from_port                    = 22
  to_port                      = 22
  cidr_ipv6                    = "2001:db8:aaaa::/48"
}

resource "aws_vpc_security_group_ingress_rule" "corral_server_in_icmp_pmtu_any_v4" {
  security_group_id            = aws_security_group.corral_server.id
  description                  = "Path MTU discovery: ICMP fragmentation needed and ICMPv6 packet too big"
  ip_protocol                  = "icmp"
  from_port                    = 3
  to_port                      = 4
  cidr_ipv4                    = "0.0.0.0/0"
}

resource "aws_vpc_security_group_ingress_rule" "corral_server_in_icmpv6_pmtu_any_v6" {
  security_group_id            = aws_security_group.corral_server.id
  description                  = "Path MTU discovery: ICMP fragmentation needed and ICMPv6 packet too big"
  ip_protocol                  = "icmpv6"
  from_port                    = 2
  to_port                      = 0
  cidr_ipv6                    = "::/0"
}

resource "aws_vpc_security_group_egress_rule" "corral_server_out_tcp_5432_datastore" {
  security_group_id            = aws_security_group.corral_server.id
  description                  = "Server replicas read and write the shared PostgreSQL datastore (TLS)"
  ip_protocol                  = "tcp"
  from_port                    = 5432
  to_port                      = 5432
  referenced_security_group_id = aws_security_group.corral_datastore.id
}

resource "aws_vpc_security_group_egress_rule" "corral_server_out_tcp_8443_server" {
  security_group_id            = aws_security_group.corral_server.id
  description                  = "A waiting server relays its clients connections to the active one"
  ip_protocol                  = "tcp"
  from_port                    = 8443
  to_port                      = 8443
  referenced_security_group_id = aws_security_group.corral_server.id
}

resource "aws_vpc_security_group_egress_rule" "corral_server_out_udp_53_10_0_0_2_32" {
  security_group_id            = aws_security_group.corral_server.id
  description                  = "DNS lookups (TCP for large answers)"
  ip_protocol                  = "udp"
  from_port                    = 53
  to_port                      = 53
  cidr_ipv4                    = "10.0.0.2/32"
}

resource "aws_vpc_security_group_egress_rule" "corral_server_out_tcp_53_10_0_0_2_32" {
  security_group_id            = aws_security_group.corral_server.id
  description                  = "DNS lookups (TCP for large answers)"
  ip_protocol                  = "tcp"
  from_port                    = 53
  to_port                      = 53
  cidr_ipv4                    = "10.0.0.2/32"
}

resource "aws_vpc_security_group_egress_rule" "corral_server_out_udp_123_169_254_169_123_32" {
  security_group_id            = aws_security_group.corral_server.id
  description                  = "Time synchronisation (NTP)"
  ip_protocol                  = "udp"
  from_port                    = 123
  to_port                      = 123
  cidr_ipv4                    = "169.254.169.123/32"
}

resource "aws_vpc_security_group_ingress_rule" "corral_hosts_in_udp_51820_hosts" {
  security_group_id            = aws_security_group.corral_hosts.id
  description                  = "Encrypted overlay between hosts (WireGuard protocol), environment prod"
  ip_protocol                  = "udp"
  from_port                    = 51820
  to_port                      = 51820
  referenced_security_group_id = aws_security_group.corral_hosts.id
}

resource "aws_vpc_security_group_ingress_rule" "corral_hosts_in_udp_4789_hosts" {
  security_group_id            = aws_security_group.corral_hosts.id
  description                  = "Unencrypted vxlan overlay between hosts (trusted networks only), environment lab"
  ip_protocol                  = "udp"
  from_port                    = 4789
  to_port                      = 4789
  referenced_security_group_id = aws_security_group.corral_hosts.id
}

resource "aws_vpc_security_group_ingress_rule" "corral_hosts_in_tcp_80_any_v4" {
  security_group_id            = aws_security_group.corral_hosts.id
  description                  = "Service shop/web publishes 80/tcp on every host"
  ip_protocol                  = "tcp"
  from_port                    = 80
  to_port                      = 80
  cidr_ipv4                    = "0.0.0.0/0"
}

resource "aws_vpc_security_group_ingress_rule" "corral_hosts_in_tcp_80_any_v6" {
  security_group_id            = aws_security_group.corral_hosts.id
  description                  = "Service shop/web publishes 80/tcp on every host"
  ip_protocol                  = "tcp"
  from_port                    = 80
  to_port                      = 80
  cidr_ipv6                    = "::/0"
}

resource "aws_vpc_security_group_ingress_rule" "corral_hosts_in_tcp_443_any_v4" {
  security_group_id            = aws_security_group.corral_hosts.id
  description                  = "Service shop/web publishes 443/tcp on every host"
  ip_protocol                  = "tcp"
  from_port                    = 443
  to_port                      = 443
  cidr_ipv4                    = "0.0.0.0/0"
}

resource "aws_vpc_security_group_ingress_rule" "corral_hosts_in_tcp_443_any_v6" {
  security_group_id            = aws_security_group.corral_hosts.id
  description                  = "Service shop/web publishes 443/tcp on every host"
  ip_protocol                  = "tcp"
  from_port                    = 443
  to_port                      = 443
  cidr_ipv6                    = "::/0"
}

resource "aws_vpc_security_group_ingress_rule" "corral_hosts_in_udp_30000_30010_198_51_100_0_24" {
  security_group_id            = aws_security_group.corral_hosts.id
  description                  = "Service media publishes 30000-30010/udp on host prod-1"
  ip_protocol                  = "udp"
  from_port                    = 30000
  to_port                      = 30010
  cidr_ipv4                    = "198.51.100.0/24"
}

resource "aws_vpc_security_group_ingress_rule" "corral_hosts_in_udp_30000_30010_2001_db8_ffff_48" {
  security_group_id            = aws_security_group.corral_hosts.id
  description                  = "Service media publishes 30000-30010/udp on host prod-1"
  ip_protocol                  = "udp"
  from_port                    = 30000
  to_port                      = 30010
  cidr_ipv6                    = "2001:db8:ffff::/48"
}

resource "aws_vpc_security_group_ingress_rule" "corral_hosts_in_tcp_8080_10_0_0_0_8" {
  security_group_id            = aws_security_group.corral_hosts.id
  description                  = "Service admin-ui publishes 8080/tcp on host prod-2"
  ip_protocol                  = "tcp"
  from_port                    = 8080
  to_port                      = 8080
  cidr_ipv4                    = "10.0.0.0/8"
}

resource "aws_vpc_security_group_ingress_rule" "corral_hosts_in_tcp_22_203_0_113_0_24" {
  security_group_id            = aws_security_group.corral_hosts.id
  description                  = "SSH administration from the admin networks"
  ip_protocol                  = "tcp"
  from_port                    = 22
  to_port                      = 22
  cidr_ipv4                    = "203.0.113.0/24"
}

resource "aws_vpc_security_group_ingress_rule" "corral_hosts_in_tcp_22_2001_db8_aaaa_48" {
  security_group_id            = aws_security_group.corral_hosts.id
  description                  = "SSH administration from the admin networks"
  ip_protocol                  = "tcp"
  from_port                    = 22
  to_port                      = 22
  cidr_ipv6                    = "2001:db8:aaaa::/48"
}

resource "aws_vpc_security_group_ingress_rule" "corral_hosts_in_icmp_pmtu_any_v4" {
  security_group_id            = aws_security_group.corral_hosts.id
  description                  = "Path MTU discovery: ICMP fragmentation needed and ICMPv6 packet too big"
  ip_protocol                  = "icmp"
  from_port                    = 3
  to_port                      = 4
  cidr_ipv4                    = "0.0.0.0/0"
}

resource "aws_vpc_security_group_ingress_rule" "corral_hosts_in_icmpv6_pmtu_any_v6" {
  security_group_id            = aws_security_group.corral_hosts.id
  description                  = "Path MTU discovery: ICMP fragmentation needed and ICMPv6 packet too big"
  ip_protocol                  = "icmpv6"
  from_port                    = 2
  to_port                      = 0
  cidr_ipv6                    = "::/0"
}

resource "aws_vpc_security_group_egress_rule" "corral_hosts_out_tcp_8443_server" {
  security_group_id            = aws_security_group.corral_hosts.id
  description                  = "Agent dials out to the server (TLS WebSocket, CA pinned); the only control-plane flow, commands come back over it"
  ip_protocol                  = "tcp"
  from_port                    = 8443
  to_port                      = 8443
  referenced_security_group_id = aws_security_group.corral_server.id
}

resource "aws_vpc_security_group_egress_rule" "corral_hosts_out_udp_51820_hosts" {
  security_group_id            = aws_security_group.corral_hosts.id
  description                  = "Overlay to peer hosts (overlay 51820/udp, encrypted), environment prod"
  ip_protocol                  = "udp"
  from_port                    = 51820
  to_port                      = 51820
  referenced_security_group_id = aws_security_group.corral_hosts.id
}

resource "aws_vpc_security_group_egress_rule" "corral_hosts_out_udp_4789_hosts" {
  security_group_id            = aws_security_group.corral_hosts.id
  description                  = "Overlay to peer hosts (vxlan 4789/udp, cleartext), environment lab"
  ip_protocol                  = "udp"
  from_port                    = 4789
  to_port                      = 4789
  referenced_security_group_id = aws_security_group.corral_hosts.id
}

resource "aws_vpc_security_group_egress_rule" "corral_hosts_out_tcp_443_any_v4" {
  security_group_id            = aws_security_group.corral_hosts.id
  description                  = "Docker pulls images from registries over HTTPS"
  ip_protocol                  = "tcp"
  from_port                    = 443
  to_port                      = 443
  cidr_ipv4                    = "0.0.0.0/0"
}

resource "aws_vpc_security_group_egress_rule" "corral_hosts_out_tcp_443_any_v6" {
  security_group_id            = aws_security_group.corral_hosts.id
  description                  = "Docker pulls images from registries over HTTPS"
  ip_protocol                  = "tcp"
  from_port                    = 443
  to_port                      = 443
  cidr_ipv6                    = "::/0"
}

resource "aws_vpc_security_group_egress_rule" "corral_hosts_out_udp_53_10_0_0_2_32" {
  security_group_id            = aws_security_group.corral_hosts.id
  description                  = "DNS lookups (TCP for large answers)"
  ip_protocol                  = "udp"
  from_port                    = 53
  to_port                      = 53
  cidr_ipv4                    = "10.0.0.2/32"
}

resource "aws_vpc_security_group_egress_rule" "corral_hosts_out_tcp_53_10_0_0_2_32" {
  security_group_id            = aws_security_group.corral_hosts.id
  description                  = "DNS lookups (TCP for large answers)"
  ip_protocol                  = "tcp"
  from_port                    = 53
  to_port                      = 53
  cidr_ipv4                    = "10.0.0.2/32"
}

resource "aws_vpc_security_group_egress_rule" "corral_hosts_out_udp_123_169_254_169_123_32" {
  security_group_id            = aws_security_group.corral_hosts.id
  description                  = "Time synchronisation (NTP)"
  ip_protocol                  = "udp"
  from_port                    = 123
  to_port                      = 123
  cidr_ipv4                    = "169.254.169.123/32"
}

resource "aws_vpc_security_group_ingress_rule" "corral_datastore_in_tcp_5432_server" {
  security_group_id            = aws_security_group.corral_datastore.id
  description                  = "Server replicas use the shared PostgreSQL datastore"
  ip_protocol                  = "tcp"
  from_port                    = 5432
  to_port                      = 5432
  referenced_security_group_id = aws_security_group.corral_server.id
}
