//! The web UI in a real browser: headless Chromium (DevTools protocol) against a real server,
//! real agents and the machine's dockerd. Logs in, watches hosts come, adds one with the shown
//! command, deploys a stack from a pasted Compose file, reads its logs live, scales it, reads
//! the diagram and the firewall rules, removes it; hostile names and log lines stay text, a
//! request without the CSRF token is refused, and the page raises no script error and no
//! Content-Security-Policy violation. Screenshots of the main pages go to `docs/ui/`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use corral_testkit::Browser;

/// What a hostile name or log line carries: markup that would run script if it were parsed.
const XSS: &str = "<img src=x onerror=alert(1)>";

fn docs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/ui")
}

/// A server the shown agent command can reach (its advertised URL is loopback) and whose
/// firewall rules can be derived (it listens on every address, as a real one does).
fn ui_server(dir: &Path) -> Server {
    let port = free_port();
    let listen = format!("0.0.0.0:{port}");
    let advertise = format!("https://127.0.0.1:{port}");
    Server::start_on(
        dir,
        port,
        &["--listen", &listen, "--advertise-url", &advertise],
    )
}

fn login_with_key(b: &mut Browser, server: &Server) {
    b.goto(&format!("{}/", server.url()));
    b.click("#tab-key");
    b.type_into("#login-key", &server.env.api_key);
    b.click("#login-submit");
    b.wait_for("the hosts page", "document.querySelector('#top:not([hidden]) #nav-hosts.on') && !document.querySelector('#login')");
}

#[test]
fn the_web_ui_end_to_end_in_chromium() {
    require_docker();
    let t = tmp();
    let server = ui_server(&t.path().join("data"));
    let stack = format!("web{}", std::process::id());
    let _cleanup = StackCleanup(stack.clone());

    // A real agent with Docker, with a hostile label value.
    let (_, token) = server.token(&[]);
    let label = format!("note={XSS}");
    let _first = start_agent(
        &server,
        &t.path().join("h1"),
        "h1",
        Some(&token),
        &["--label", "zone=a", "--label", &label],
    );
    wait_until(Duration::from_secs(30), "h1's Docker report", || {
        server
            .hosts()
            .into_iter()
            .any(|h| h["name"] == "h1" && h["docker"]["state"] == "available")
    });

    let mut b = Browser::launch(1280, 900);
    let downloads = t.path().join("downloads");
    std::fs::create_dir_all(&downloads).unwrap();
    b.download_to(&downloads);

    // Logging in sets an HttpOnly cookie: the page's script cannot read it.
    login_with_key(&mut b, &server);
    assert_eq!(
        b.eval("document.cookie"),
        "",
        "the session cookie is HttpOnly"
    );
    b.wait_for(
        "h1 on the hosts page",
        "document.querySelector('#hosts tr[data-name=\"h1\"]')",
    );
    b.wait_for("the live feed", "document.querySelector('#live.on')");
    let row = b.text("#hosts tr[data-name=\"h1\"]");
    assert!(row.contains("active"), "{row}");
    assert!(
        row.contains(XSS),
        "the hostile label is shown as text: {row}"
    );
    assert_eq!(
        b.eval("document.querySelectorAll('img[src=x]').length"),
        0,
        "no element was made from a label"
    );
    // Filtering by label.
    b.type_into("#host-filter", "zone=b");
    b.wait_for(
        "h1 filtered out",
        "document.querySelector('#hosts tr[data-name=\"h1\"]').hidden",
    );
    b.type_into("#host-filter", "zone=a");
    b.wait_for(
        "h1 shown again",
        "!document.querySelector('#hosts tr[data-name=\"h1\"]').hidden",
    );

    // Add a host: the form shows the command of a new one-use token; running it makes the
    // host appear on the open page without a reload.
    b.click("#add-host");
    b.fill("#token-uses", "1");
    b.click("#make-token");
    let command = b
        .wait_for(
            "the agent command",
            "document.querySelector('#agent-command') && document.querySelector('#agent-command').innerText",
        )
        .as_str()
        .unwrap()
        .to_owned();
    b.screenshot(&docs().join("hosts.png"));
    let words: Vec<&str> = command.split_whitespace().collect();
    assert_eq!(&words[..2], ["corral", "agent"], "{command}");
    let h2_dir = t.path().join("h2");
    std::fs::create_dir_all(&h2_dir).unwrap();
    let state_dir = h2_dir.display().to_string();
    let mut args: Vec<&str> = words[1..].to_vec();
    args.extend([
        "--state-dir",
        &state_dir,
        "--name",
        "h2",
        "--overlay-port",
        "0",
        "--no-overlay",
    ]);
    let _second = spawn_corral(&args, t.path().join("h2.log"), &[]);
    b.wait_for(
        "h2 to appear without a reload",
        "document.querySelector('#hosts tr[data-name=\"h2\"]')",
    );
    b.eval("document.querySelector('#host-filter').value = ''; document.querySelector('#host-filter').dispatchEvent(new Event('input'))");

    // Deploy a stack from a pasted Compose file; it converges on the open page.
    b.goto(&format!("{}/ui/#/stacks", server.url()));
    b.wait_for("the stacks page", "document.querySelector('#deploy')");
    // Each line: a counter, the hostile markup, and a red colour code (ANSI escapes).
    let compose = format!(
        "services:\n  web:\n    image: {IMAGE}\n    labels:\n      note: \"{XSS}\"\n    command: [\"sh\", \"-c\", \"i=0; while true; do i=$$((i+1)); printf 'line %s {XSS} \\\\033[31mred\\\\033[0m\\\\n' $$i; sleep 0.3; done\"]\n"
    );
    b.type_into("#stack-name", &stack);
    b.fill("#compose", &compose);
    b.click("#deploy-submit");
    b.wait_for(
        "the stack page",
        &format!("location.hash === '#/stack/{stack}'"),
    );
    b.wait_for(
        "the stack to converge",
        "document.querySelector('#stack-state') && document.querySelector('#stack-state').innerText === 'converged'",
    );
    b.screenshot(&docs().join("stack.png"));

    // Scale it to two from the page.
    b.fill("#scale-web", "2");
    b.click("#scale-web-go");
    b.wait_for(
        "two ready replicas",
        "document.querySelector('tr[data-service=web] .dots').dataset.ready === '2'",
    );

    // The service's logs, merged, live: the hostile line is text, the colour codes are gone.
    b.click("tr[data-service=web] a[href^='#/logs/']");
    b.wait_for(
        "log lines",
        "[...document.querySelectorAll('#logs div')].some(d => d.textContent.includes('line 3'))",
    );
    let logs = b.text("#logs");
    assert!(logs.contains(XSS), "{logs}");
    assert!(logs.contains(" red"), "{logs}");
    assert!(
        !logs.contains('\u{1b}'),
        "escape codes are dropped: {logs:?}"
    );
    assert_eq!(b.eval("document.querySelectorAll('#logs img').length"), 0);
    // Pausing stops the lines; resuming brings them again.
    b.click("#log-pause");
    std::thread::sleep(Duration::from_millis(300)); // let a chunk in flight land
    let paused_at = b.eval("document.querySelectorAll('#logs div').length");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        b.eval("document.querySelectorAll('#logs div').length"),
        paused_at,
        "no line is added while paused"
    );
    b.click("#log-pause");
    b.wait_for(
        "lines again after resuming",
        &format!("document.querySelectorAll('#logs div').length > {paused_at}"),
    );
    // Search hides the lines without the text.
    b.type_into("#log-search", "line 2");
    b.wait_for(
        "lines without the text hidden",
        "[...document.querySelectorAll('#logs div')].some(d => d.classList.contains('hidden'))",
    );

    // A container's page: its spec (the hostile label as text) and its own logs.
    let replica = b
        .eval(&format!(
            "fetch('/v1/stacks/{stack}').then(r => r.json()).then(s => s.services[0].replicas[0].name)"
        ))
        .as_str()
        .unwrap()
        .to_owned();
    b.goto(&format!("{}/ui/#/container/{replica}", server.url()));
    b.wait_for(
        "the container's logs",
        "[...document.querySelectorAll('#logs div')].some(d => d.textContent.includes('line'))",
    );
    assert!(b.text("main").contains(XSS));
    assert_eq!(b.eval("document.querySelectorAll('img[src=x]').length"), 0);
    b.screenshot(&docs().join("container-logs.png"));

    // The network page: the diagram (an image), the rules table, a download, doctor.
    b.goto(&format!("{}/ui/#/network", server.url()));
    b.wait_for(
        "the diagram",
        "document.querySelector('#diagram') && document.querySelector('#diagram').naturalWidth > 0",
    );
    b.wait_for(
        "the services diagram of the environment",
        "document.querySelector('[data-policy=default] img.services-diagram').naturalWidth > 0",
    );
    assert!(
        b.text("[data-policy=default]")
            .contains("no network policy"),
        "{}",
        b.text("[data-policy=default]")
    );
    let flows = b.wait_for(
        "the firewall rules",
        "document.querySelectorAll('#flows tbody tr').length",
    );
    assert!(flows.as_u64().unwrap() >= 3, "{flows}");
    assert!(b.text("#flows").contains("Agents"), "{}", b.text("#flows"));
    b.click("button[data-format=markdown]");
    wait_until(Duration::from_secs(20), "the markdown download", || {
        std::fs::read_dir(&downloads)
            .unwrap()
            .filter_map(Result::ok)
            .any(|e| e.file_name().to_string_lossy().ends_with(".md"))
    });
    b.click("button[data-doctor=h1]");
    b.wait_for(
        "doctor's checks for h1",
        "document.querySelectorAll('table.doctor tbody tr').length",
    );
    b.screenshot(&docs().join("network.png"));

    // A request that changes state with the cookie but without the CSRF token is refused.
    let refused = b.eval(&format!(
        "fetch('/v1/stacks/{stack}/scale', {{method: 'POST', headers: {{'content-type': 'application/json'}}, body: JSON.stringify({{service: 'web', replicas: 0}})}}).then(async r => [r.status, (await r.json()).error])"
    ));
    assert_eq!(refused[0], 403, "{refused}");
    assert!(refused[1].as_str().unwrap().contains("CSRF"), "{refused}");
    assert_eq!(
        server.cli_json(&["ps", "-p", &stack])[0]["services"][0]["desired"],
        2,
        "the refused request changed nothing"
    );

    // A Compose error is shown with its line marked.
    b.goto(&format!("{}/ui/#/stacks", server.url()));
    b.type_into("#stack-name", "broken");
    b.fill(
        "#compose",
        &format!("services:\n  ok:\n    image: {IMAGE}\n  bad:\n    image: {IMAGE}\n    ports: [\"99999:80\"]\n"),
    );
    b.click("#deploy-submit");
    let error = b
        .wait_for(
            "the deploy error",
            "document.querySelector('#deploy-result .error') && document.querySelector('#deploy-result .error').innerText",
        )
        .as_str()
        .unwrap()
        .to_owned();
    assert!(error.contains("99999"), "{error}");
    assert_eq!(
        b.eval("document.querySelector('#error-source .hit').dataset.line"),
        "6",
        "the line of the bad port is marked"
    );

    // Events and the audit log (the deploy and the scale are in it).
    b.goto(&format!("{}/ui/#/events", server.url()));
    b.wait_for(
        "events",
        "document.querySelectorAll('#events tbody tr').length",
    );
    b.screenshot(&docs().join("events.png"));
    b.goto(&format!("{}/ui/#/audit", server.url()));
    b.wait_for(
        "the scale in the audit log",
        "[...document.querySelectorAll('#audit tbody tr')].some(r => r.textContent.includes('/scale'))",
    );

    // The stacks page at a phone's width.
    b.set_viewport(390, 844, true);
    b.goto(&format!("{}/ui/#/stack/{stack}", server.url()));
    b.wait_for("the stack", "document.querySelector('#services')");
    b.screenshot(&docs().join("stack-phone.png"));
    b.set_viewport(1280, 900, false);

    // Remove the stack (confirmed); its containers go.
    b.goto(&format!("{}/ui/#/stack/{stack}", server.url()));
    b.wait_for("the stack", "document.querySelector('#remove-stack')");
    b.eval("window.confirm = () => true");
    b.click("#remove-stack");
    b.wait_for("the stacks page", "location.hash === '#/stacks'");
    wait_until(
        Duration::from_secs(60),
        "the stack's containers gone",
        || {
            let out = docker(&[
                "ps",
                "-aq",
                "--filter",
                &format!("label=io.corral.stack={stack}"),
            ]);
            String::from_utf8_lossy(&out.stdout).trim().is_empty()
        },
    );

    assert!(
        b.problems.is_empty(),
        "the page raised errors (script or Content-Security-Policy): {:?}",
        b.problems
    );
}

#[test]
fn password_login_session_cookie_csrf_and_logout() {
    let t = tmp();
    let server = ui_server(&t.path().join("data"));
    let password = "a long enough password";
    server.cli_with_stdin(
        &["user", "passwd", "admin", "--password-stdin"],
        &format!("{password}\n"),
    );
    let mut b = Browser::launch(1280, 900);
    b.goto(&format!("{}/", server.url()));
    // The page carries its policy; no inline script could run under it.
    let csp = b.eval(
        "fetch('/ui/').then(r => [r.headers.get('content-security-policy'), r.headers.get('x-frame-options')])",
    );
    let policy = csp[0].as_str().unwrap();
    assert!(policy.contains("script-src 'self'"), "{policy}");
    assert!(!policy.contains("unsafe-inline"), "{policy}");
    assert!(policy.contains("frame-ancestors 'none'"), "{policy}");
    assert_eq!(csp[1], "DENY");

    // Logins that are not one: each refused with a status and a reason.
    let bad = b.eval(
        r#"Promise.all([
            {},
            {user: 'admin', password: 'x', key: 'crl_key_x'},
            {user: 'admin'},
            {key: 'not a key'},
            {key: 'crl_reg_' + '0'.repeat(64)},
            {user: 'admin', password: 'x', extra: 1},
        ].map(body => fetch('/ui/login', {method: 'POST', headers: {'content-type': 'application/json'}, body: JSON.stringify(body)})
            .then(async r => [r.status, (await r.text()).slice(0, 200)])))"#,
    );
    let statuses: Vec<u64> = bad
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v[0].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, [400, 400, 400, 401, 403, 422], "{bad}");
    assert!(bad[5][1].as_str().unwrap().contains("extra"), "{bad}");
    // A cookie that is no session is no login.
    b.eval("document.cookie = '__Host-corral-session=crl_key_forged; Path=/; Secure'");
    assert_eq!(b.eval("fetch('/ui/session').then(r => r.status)"), 401);

    // A wrong password is refused on the page.
    b.type_into("#login-user", "admin");
    b.type_into("#login-password", "not the password");
    b.click("#login-submit");
    let error = b
        .wait_for(
            "the refusal",
            "document.querySelector('#login .error') && document.querySelector('#login .error').innerText",
        )
        .as_str()
        .unwrap()
        .to_owned();
    assert!(error.contains("wrong user name or password"), "{error}");

    b.type_into("#login-password", password);
    b.click("#login-submit");
    b.wait_for("the hosts page", "document.querySelector('#top:not([hidden]) #nav-hosts.on') && !document.querySelector('#login')");
    assert!(b.text("#who").contains("admin"));
    // The cookie: __Host-, HttpOnly, Secure, SameSite=Strict.
    b.call("Network.enable", serde_json::json!({}));
    let cookies = b.call("Network.getCookies", serde_json::json!({}));
    let cookie = cookies["cookies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == corral_proto::api::WEB_SESSION_COOKIE)
        .cloned()
        .unwrap_or_else(|| panic!("no session cookie: {cookies}"));
    assert_eq!(cookie["httpOnly"], true, "{cookie}");
    assert_eq!(cookie["secure"], true, "{cookie}");
    assert_eq!(cookie["sameSite"], "Strict", "{cookie}");
    assert_eq!(cookie["path"], "/", "{cookie}");
    // The session is a key of the user's own, named `web`, that expires.
    let keys = server.cli_json(&["key", "ls"]);
    assert!(
        keys.as_array()
            .unwrap()
            .iter()
            .any(|k| k["name"] == "web" && k["state"] == "active" && !k["expires_at"].is_null()),
        "{keys}"
    );

    // Without the CSRF token, a change is refused; with it, it is done.
    let without = b.eval(
        "fetch('/v1/environments', {method: 'POST', headers: {'content-type': 'application/json'}, body: JSON.stringify({name: 'staging'})}).then(r => r.status)",
    );
    assert_eq!(without, 403);
    let wrong = b.eval(
        "fetch('/v1/environments', {method: 'POST', headers: {'content-type': 'application/json', 'x-corral-csrf': 'f'.repeat(64)}, body: JSON.stringify({name: 'staging'})}).then(r => r.status)",
    );
    assert_eq!(wrong, 403);
    let with = b.eval(
        "fetch('/ui/session').then(r => r.json()).then(s => fetch('/v1/environments', {method: 'POST', headers: {'content-type': 'application/json', 'x-corral-csrf': s.csrf}, body: JSON.stringify({name: 'staging'})})).then(r => r.status)",
    );
    assert_eq!(with, 201);
    // Reads need no token.
    assert_eq!(
        b.eval("fetch('/v1/hosts').then(r => r.status)"),
        200,
        "a read with the cookie"
    );

    // Log out: the session's key is revoked and the cookie cleared; the login page is back.
    b.click("#logout");
    b.wait_for("the login page", "document.querySelector('#login')");
    assert_eq!(
        b.eval("fetch('/ui/session').then(r => r.status)"),
        204,
        "the cookie is gone: not logged in, which is no refusal"
    );
    let keys = server.cli_json(&["key", "ls"]);
    assert!(
        keys.as_array()
            .unwrap()
            .iter()
            .filter(|k| k["name"] == "web")
            .all(|k| k["state"] == "revoked"),
        "{keys}"
    );
    // A session whose key is revoked behind its back (here with the CLI, as an admin
    // removing a user would) is over: the next page the user opens is the login page.
    b.type_into("#login-user", "admin");
    b.type_into("#login-password", password);
    b.click("#login-submit");
    b.wait_for("the hosts page", "document.querySelector('#top:not([hidden]) #nav-hosts.on') && !document.querySelector('#login')");
    let keys = server.cli_json(&["key", "ls"]);
    let web = keys
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "web" && k["state"] == "active")
        .unwrap_or_else(|| panic!("{keys}"))["id"]
        .as_str()
        .unwrap()
        .to_owned();
    server.cli_ok(&["key", "rm", &web]);
    b.click("#nav-stacks");
    b.wait_for("the login page", "document.querySelector('#login')");
    assert!(b.problems.is_empty(), "{:?}", b.problems);
}
