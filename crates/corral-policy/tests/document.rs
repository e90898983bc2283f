//! Reading policy documents: what is accepted, and what each mistake says.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use corral_policy::{Action, Scope, Within, parse};

#[test]
fn a_full_document_reads_and_writes_back_the_same() {
    let text = "
default: deny
egress: deny
allow:
  - name: web-to-api
    from: { labels: { zone: dmz } }
    to: { stack: shop, service: api }
    ports: [8080/tcp, 9000-9010/udp, 5432]
  - within: stack
  - between: { groupBy: zone }
  - to: { cidr: 10.0.0.0/8 }
    ports: [53/udp]
deny:
  - from: { cidr: 0.0.0.0/0 }
    to: { labels: { zone: db } }
";
    let doc = parse(text).unwrap();
    assert_eq!(doc.default, Action::Deny);
    assert_eq!(doc.ingress, Action::Allow);
    assert_eq!(doc.egress, Action::Deny);
    assert_eq!(doc.allow.len(), 4);
    assert_eq!(doc.allow[0].name.as_deref(), Some("web-to-api"));
    assert_eq!(doc.allow[0].ports.len(), 3);
    assert_eq!(doc.allow[0].ports[2].to_string(), "5432/tcp");
    assert!(matches!(doc.allow[1].scope, Scope::Within(Within::Stack)));
    assert!(matches!(&doc.allow[2].scope, Scope::GroupBy(l) if l == "zone"));
    assert!(matches!(doc.allow[3].scope, Scope::Egress { .. }));
    assert!(matches!(doc.deny[0].scope, Scope::Ingress { .. }));
    let json = serde_json::to_string(&doc).unwrap();
    let back: corral_policy::Document = serde_json::from_str(&json).unwrap();
    assert_eq!(back, doc);
}

#[test]
fn an_empty_document_allows_everything() {
    let doc = parse("  \n").unwrap();
    assert_eq!(doc.default, Action::Allow);
    assert!(doc.allow.is_empty() && doc.deny.is_empty());
}

fn error(text: &str) -> String {
    parse(text).unwrap_err().to_string()
}

#[test]
fn mistakes_are_named_with_their_place() {
    let e = error("default: maybe\n");
    assert!(e.contains("line 1"), "{e}");
    let e = error("allow:\n  - from: { labels: { zone: dmz } }\n    port: [80]\n");
    assert!(e.contains("port") && e.contains("line 3"), "{e}");
    let e = error("allow:\n  - ports: [80/tcp, 99999/tcp]\n");
    assert!(e.starts_with("allow[0].ports[1]: line 2 column"), "{e}");
    assert!(e.contains("99999"), "{e}");
    let e = error("deny:\n  - from: { cidr: 10.0.0.1/8 }\n");
    assert!(e.contains("host bits") && e.contains("line 2"), "{e}");
    let e = error("allow:\n  - within: stack\n    from: { stack: a }\n");
    assert!(e.contains("within"), "{e}");
    let e = error("allow:\n  - from: { cidr: 0.0.0.0/0 }\n    to: { cidr: 10.0.0.0/8 }\n");
    assert!(e.contains("outside the overlay"), "{e}");
    let e = error("allow:\n  - from: { cidr: 0.0.0.0/0, stack: a }\n");
    assert!(e.contains("cannot be combined"), "{e}");
    let e = error("allow:\n  - within: zone\n");
    assert!(e.contains("line 2"), "{e}");
    let e = error("colour: blue\n");
    assert!(e.contains("colour"), "{e}");
}

#[test]
fn sizes_are_bounded() {
    let big = format!("# {}\n", "x".repeat(260 * 1024));
    assert!(error(&big).contains("limit"));
    let many: String = (0..1001).map(|_| "  - within: stack\n").collect();
    assert!(error(&format!("allow:\n{many}")).contains("1000"));
    let ports: Vec<String> = (1..=65).map(|p| format!("{p}/tcp")).collect();
    let e = error(&format!("allow:\n  - ports: [{}]\n", ports.join(", ")));
    assert!(e.contains("64"), "{e}");
    let long = "s".repeat(200);
    assert!(error(&format!("allow:\n  - from: {{ stack: {long} }}\n")).contains("128"));
    // An alias bomb is refused by the reader's budget.
    let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
    let mut prev = 'a';
    for c in 'b'..='k' {
        bomb.push_str(&format!("{c}: &{c} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"));
        prev = c;
    }
    assert!(parse(&bomb).is_err());
}
