//! AWS: the exact input shapes of EC2 `AuthorizeSecurityGroupIngress` and
//! `AuthorizeSecurityGroupEgress` (`GroupId`, `IpPermissions[{IpProtocol, FromPort, ToPort,
//! IpRanges, Ipv6Ranges, UserIdGroupPairs}]`), one request per group per direction. Group
//! peers become `UserIdGroupPairs` (security-group references), CIDRs become `IpRanges` /
//! `Ipv6Ranges`. ICMP uses `FromPort` = type and `ToPort` = code, `icmp` for IPv4 and `icmpv6`
//! for IPv6.
//!
//! The rendered document is `{"AuthorizeSecurityGroupIngress": [...],
//! "AuthorizeSecurityGroupEgress": [...]}`; each array element is one call's input (e.g. for
//! `aws ec2 authorize-security-group-ingress --cli-input-json`). [`aws_requests`] gives the same
//! requests one by one.

use serde::Serialize;

use super::{RenderError, Scope, sanitize, scoped_groups};
use crate::net::{Cidr, Family};
use crate::plan::{Direction, Endpoint, Flow, GroupKind, Plan, Traffic};

/// Which EC2 call a request is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum AwsOperation {
    /// `AuthorizeSecurityGroupIngress`.
    AuthorizeSecurityGroupIngress,
    /// `AuthorizeSecurityGroupEgress`.
    AuthorizeSecurityGroupEgress,
}

impl AwsOperation {
    /// The operation name.
    pub fn name(self) -> &'static str {
        match self {
            AwsOperation::AuthorizeSecurityGroupIngress => "AuthorizeSecurityGroupIngress",
            AwsOperation::AuthorizeSecurityGroupEgress => "AuthorizeSecurityGroupEgress",
        }
    }
}

/// One EC2 API call.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AwsRequest {
    /// Which call.
    pub operation: AwsOperation,
    /// Which group it authorizes rules in.
    pub group: GroupKind,
    /// The call's input document.
    pub input: serde_json::Value,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Input {
    group_id: String,
    ip_permissions: Vec<Permission>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Permission {
    ip_protocol: String,
    from_port: i64,
    to_port: i64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    ip_ranges: Vec<IpRange>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    ipv6_ranges: Vec<Ipv6Range>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    user_id_group_pairs: Vec<GroupPair>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct IpRange {
    cidr_ip: String,
    description: String,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Ipv6Range {
    cidr_ipv6: String,
    description: String,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct GroupPair {
    group_id: String,
    description: String,
}

/// `(IpProtocol, FromPort, ToPort)` of a flow for a family (`None`: family-neutral, used for
/// group references of TCP/UDP).
fn proto_ports(t: &Traffic, family: Family) -> (String, i64, i64) {
    match t {
        Traffic::Tcp { ports } => (
            "tcp".to_string(),
            i64::from(ports.from()),
            i64::from(ports.to()),
        ),
        Traffic::Udp { ports } => (
            "udp".to_string(),
            i64::from(ports.from()),
            i64::from(ports.to()),
        ),
        Traffic::Icmp { icmp } => match family {
            Family::V4 => {
                let (ty, code) = icmp.v4_type_code();
                ("icmp".to_string(), i64::from(ty), i64::from(code))
            }
            Family::V6 => {
                let (ty, code) = icmp.v6_type_code();
                ("icmpv6".to_string(), i64::from(ty), i64::from(code))
            }
        },
    }
}

fn permission(perms: &mut Vec<Permission>, key: (String, i64, i64)) -> Option<&mut Permission> {
    let pos = match perms
        .iter()
        .position(|p| p.ip_protocol == key.0 && p.from_port == key.1 && p.to_port == key.2)
    {
        Some(i) => i,
        None => {
            perms.push(Permission {
                ip_protocol: key.0,
                from_port: key.1,
                to_port: key.2,
                ip_ranges: Vec::new(),
                ipv6_ranges: Vec::new(),
                user_id_group_pairs: Vec::new(),
            });
            perms.len() - 1
        }
    };
    perms.get_mut(pos)
}

fn add_flow(plan: &Plan, perms: &mut Vec<Permission>, flow: &Flow) {
    let description = sanitize(&flow.purpose, 255);
    match flow.peer() {
        Endpoint::Cidrs(cidrs) => {
            for c in cidrs {
                add_cidr(perms, &flow.traffic, c, &description);
            }
        }
        other => {
            let Some(kind) = other.group() else {
                return;
            };
            let Some(group) = plan.group(kind) else {
                return;
            };
            let families: &[Family] = match flow.traffic {
                Traffic::Icmp { .. } => &[Family::V4, Family::V6],
                _ => &[Family::V4],
            };
            for fam in families {
                let Some(p) = permission(perms, proto_ports(&flow.traffic, *fam)) else {
                    continue;
                };
                if !p.user_id_group_pairs.iter().any(|g| g.group_id == group.id) {
                    p.user_id_group_pairs.push(GroupPair {
                        group_id: group.id.clone(),
                        description: description.clone(),
                    });
                }
            }
        }
    }
}

fn add_cidr(perms: &mut Vec<Permission>, traffic: &Traffic, c: &Cidr, description: &str) {
    let Some(p) = permission(perms, proto_ports(traffic, c.family())) else {
        return;
    };
    let text = c.to_cidr_string();
    match c.family() {
        Family::V4 => {
            if !p.ip_ranges.iter().any(|r| r.cidr_ip == text) {
                p.ip_ranges.push(IpRange {
                    cidr_ip: text,
                    description: description.to_string(),
                });
            }
        }
        Family::V6 => {
            if !p.ipv6_ranges.iter().any(|r| r.cidr_ipv6 == text) {
                p.ipv6_ranges.push(Ipv6Range {
                    cidr_ipv6: text,
                    description: description.to_string(),
                });
            }
        }
    }
}

/// The EC2 requests for a scope, ingress then egress per group; groups without rules in a
/// direction get no request.
pub fn aws_requests(plan: &Plan, scope: &Scope) -> Result<Vec<AwsRequest>, RenderError> {
    let mut out = Vec::new();
    for (kind, flows) in scoped_groups(plan, scope)? {
        let Some(group) = plan.group(kind) else {
            continue;
        };
        for (dir, op) in [
            (
                Direction::Inbound,
                AwsOperation::AuthorizeSecurityGroupIngress,
            ),
            (
                Direction::Outbound,
                AwsOperation::AuthorizeSecurityGroupEgress,
            ),
        ] {
            let mut perms = Vec::new();
            for f in flows.iter().filter(|f| f.direction == dir) {
                add_flow(plan, &mut perms, f);
            }
            if perms.is_empty() {
                continue;
            }
            let input = Input {
                group_id: group.id.clone(),
                ip_permissions: perms,
            };
            let value = serde_json::to_value(&input).unwrap_or(serde_json::Value::Null);
            out.push(AwsRequest {
                operation: op,
                group: kind,
                input: value,
            });
        }
    }
    Ok(out)
}

pub(super) fn render(plan: &Plan, scope: &Scope) -> Result<String, RenderError> {
    let requests = aws_requests(plan, scope)?;
    let mut doc = serde_json::Map::new();
    for op in [
        AwsOperation::AuthorizeSecurityGroupIngress,
        AwsOperation::AuthorizeSecurityGroupEgress,
    ] {
        let list: Vec<serde_json::Value> = requests
            .iter()
            .filter(|r| r.operation == op)
            .map(|r| r.input.clone())
            .collect();
        doc.insert(op.name().to_string(), serde_json::Value::Array(list));
    }
    let mut s = serde_json::to_string_pretty(&serde_json::Value::Object(doc))
        .unwrap_or_else(|_| "{}".to_string());
    s.push('\n');
    Ok(s)
}
