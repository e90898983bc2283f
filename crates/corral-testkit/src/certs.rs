//! Throwaway TLS material for the real servers tests start (a registry, a directory): a CA and
//! a server certificate for one IP address, made with `openssl`.

use std::path::Path;

use crate::netns::run_ok;

/// Writes `ca.key`, `ca.crt` (named `ca_name`), `server.key` and `server.crt` (for `ip`, as a
/// subject alternative name — Go and rustls ignore the common name) into `dir`, P-256 keys,
/// valid two days.
#[track_caller]
pub fn ca_and_server(dir: &Path, ip: &str, ca_name: &str) {
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let p = |f: &str| dir.join(f).display().to_string();
    // P-256 keys: quick to make, and every TLS stack involved speaks them.
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    let (ca_key, ca_crt) = (p("ca.key"), p("ca.crt"));
    let ca_subj = format!("/CN={ca_name}");
    ca.extend([
        "-keyout",
        &ca_key,
        "-out",
        &ca_crt,
        "-days",
        "2",
        "-subj",
        &ca_subj,
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    run_ok("openssl", &ca);
    let (key, csr, crt, ext) = (
        p("server.key"),
        p("server.csr"),
        p("server.crt"),
        p("server.ext"),
    );
    let subj = format!("/CN={ip}");
    let mut req = vec!["req", "-new"];
    req.extend(ec);
    req.extend(["-keyout", &key, "-out", &csr, "-subj", &subj]);
    run_ok("openssl", &req);
    std::fs::write(
        &ext,
        format!(
            "subjectAltName=IP:{ip}\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
        ),
    )
    .unwrap_or_else(|e| panic!("{ext}: {e}"));
    run_ok(
        "openssl",
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca_crt,
            "-CAkey",
            &ca_key,
            "-set_serial",
            "2",
            "-days",
            "2",
            "-extfile",
            &ext,
            "-out",
            &crt,
        ],
    );
}
