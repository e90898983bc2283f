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

resource "aws_vpc_security_group_ingress_rule" "corral_server_in_tcp_8443_203_0_113_0_24" {
  security_group_id            = aws_security_group.corral_server.id
  description                  = "Users and the CLI reach the server API over HTTPS from the admin networks"
  ip_protocol                  = "tcp"
  from_port                    = 8443
  to_port                      = 8443
  cidr_ipv4                    = "203.0.113.0/24"
}

resource "aws_vpc_security_group_ingress_rule" "corral_server_in_tcp_8443_hosts" {
  security_group_id            = aws_security_group.corral_server.id
  description                  = "Agents dial out to the server: one TLS WebSocket per host carries every command and reply; the server never connects to hosts"
  ip_protocol                  = "tcp"
  from_port                    = 8443
  to_port                      = 8443
  referenced_security_group_id = aws_security_group.corral_hosts.id
}

resource "aws_vpc_security_group_ingress_rule" "corral_server_in_tcp_22_203_0_113_0_24" {
  security_group_id            = aws_security_group.corral_server.id
  description                  = "SSH administration from the admin networks"
  ip_protocol                  = "tcp"
  from_port                    = 22
  to_port                      = 22
  cidr_ipv4                    = "203.0.113.0/24"
}

resource "aws_vpc_security_group_egress_rule" "corral_server_out_udp_53_any_v4" {
  security_group_id            = aws_security_group.corral_server.id
  description                  = "DNS lookups (TCP for large answers)"
  ip_protocol                  = "udp"
  from_port                    = 53
  to_port                      = 53
  cidr_ipv4                    = "0.0.0.0/0"
}

resource "aws_vpc_security_group_egress_rule" "corral_server_out_udp_53_any_v6" {
  security_group_id            = aws_security_group.corral_server.id
  description                  = "DNS lookups (TCP for large answers)"
  ip_protocol                  = "udp"
  from_port                    = 53
  to_port                      = 53
  cidr_ipv6                    = "::/0"
}

resource "aws_vpc_security_group_egress_rule" "corral_server_out_tcp_53_any_v4" {
  security_group_id            = aws_security_group.corral_server.id
  description                  = "DNS lookups (TCP for large answers)"
  ip_protocol                  = "tcp"
  from_port                    = 53
  to_port                      = 53
  cidr_ipv4                    = "0.0.0.0/0"
}

resource "aws_vpc_security_group_egress_rule" "corral_server_out_tcp_53_any_v6" {
  security_group_id            = aws_security_group.corral_server.id
  description                  = "DNS lookups (TCP for large answers)"
  ip_protocol                  = "tcp"
  from_port                    = 53
  to_port                      = 53
  cidr_ipv6                    = "::/0"
}

resource "aws_vpc_security_group_egress_rule" "corral_server_out_udp_123_any_v4" {
  security_group_id            = aws_security_group.corral_server.id
  description                  = "Time synchronisation (NTP)"
  ip_protocol                  = "udp"
  from_port                    = 123
  to_port                      = 123
  cidr_ipv4                    = "0.0.0.0/0"
}

resource "aws_vpc_security_group_egress_rule" "corral_server_out_udp_123_any_v6" {
  security_group_id            = aws_security_group.corral_server.id
  description                  = "Time synchronisation (NTP)"
  ip_protocol                  = "udp"
  from_port                    = 123
  to_port                      = 123
  cidr_ipv6                    = "::/0"
}

resource "aws_vpc_security_group_ingress_rule" "corral_hosts_in_udp_51820_hosts" {
  security_group_id            = aws_security_group.corral_hosts.id
  description                  = "Encrypted overlay between hosts (WireGuard protocol), environment default"
  ip_protocol                  = "udp"
  from_port                    = 51820
  to_port                      = 51820
  referenced_security_group_id = aws_security_group.corral_hosts.id
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

resource "aws_vpc_security_group_ingress_rule" "corral_hosts_in_tcp_9100_10_0_0_0_16" {
  security_group_id            = aws_security_group.corral_hosts.id
  description                  = "Service ops/metrics publishes 9100/tcp on host db-1"
  ip_protocol                  = "tcp"
  from_port                    = 9100
  to_port                      = 9100
  cidr_ipv4                    = "10.0.0.0/16"
}

resource "aws_vpc_security_group_ingress_rule" "corral_hosts_in_tcp_22_203_0_113_0_24" {
  security_group_id            = aws_security_group.corral_hosts.id
  description                  = "SSH administration from the admin networks"
  ip_protocol                  = "tcp"
  from_port                    = 22
  to_port                      = 22
  cidr_ipv4                    = "203.0.113.0/24"
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
  description                  = "Overlay to peer hosts (overlay 51820/udp, encrypted), environment default"
  ip_protocol                  = "udp"
  from_port                    = 51820
  to_port                      = 51820
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

resource "aws_vpc_security_group_egress_rule" "corral_hosts_out_udp_53_any_v4" {
  security_group_id            = aws_security_group.corral_hosts.id
  description                  = "DNS lookups (TCP for large answers)"
  ip_protocol                  = "udp"
  from_port                    = 53
  to_port                      = 53
  cidr_ipv4                    = "0.0.0.0/0"
}

resource "aws_vpc_security_group_egress_rule" "corral_hosts_out_udp_53_any_v6" {
  security_group_id            = aws_security_group.corral_hosts.id
  description                  = "DNS lookups (TCP for large answers)"
  ip_protocol                  = "udp"
  from_port                    = 53
  to_port                      = 53
  cidr_ipv6                    = "::/0"
}

resource "aws_vpc_security_group_egress_rule" "corral_hosts_out_tcp_53_any_v4" {
  security_group_id            = aws_security_group.corral_hosts.id
  description                  = "DNS lookups (TCP for large answers)"
  ip_protocol                  = "tcp"
  from_port                    = 53
  to_port                      = 53
  cidr_ipv4                    = "0.0.0.0/0"
}

resource "aws_vpc_security_group_egress_rule" "corral_hosts_out_tcp_53_any_v6" {
  security_group_id            = aws_security_group.corral_hosts.id
  description                  = "DNS lookups (TCP for large answers)"
  ip_protocol                  = "tcp"
  from_port                    = 53
  to_port                      = 53
  cidr_ipv6                    = "::/0"
}

resource "aws_vpc_security_group_egress_rule" "corral_hosts_out_udp_123_any_v4" {
  security_group_id            = aws_security_group.corral_hosts.id
  description                  = "Time synchronisation (NTP)"
  ip_protocol                  = "udp"
  from_port                    = 123
  to_port                      = 123
  cidr_ipv4                    = "0.0.0.0/0"
}

resource "aws_vpc_security_group_egress_rule" "corral_hosts_out_udp_123_any_v6" {
  security_group_id            = aws_security_group.corral_hosts.id
  description                  = "Time synchronisation (NTP)"
  ip_protocol                  = "udp"
  from_port                    = 123
  to_port                      = 123
  cidr_ipv6                    = "::/0"
}
