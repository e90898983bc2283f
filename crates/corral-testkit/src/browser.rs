//! A real Chromium, headless, driven over the DevTools protocol (a WebSocket on loopback) for
//! the web UI's tests: navigate, run script in the page, type as a user types (`Input`
//! events), take screenshots. Every script exception and console error of the page
//! (including Content-Security-Policy violations) is collected, so a test can assert there
//! were none.
//!
//! The protocol is a handful of JSON calls; speaking it over the `tungstenite` already in the
//! tree costs less than a client crate's dependency tree.

use std::io::ErrorKind;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};
use tungstenite::{Message, WebSocket};

use crate::proc::Proc;

pub struct Browser {
    proc: Proc,
    socket: WebSocket<TcpStream>,
    /// The page commands go to (one of `pages`).
    session: String,
    pages: Vec<String>,
    next_id: u64,
    /// Exceptions and console errors the page raised, oldest first.
    pub problems: Vec<String>,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts `chromium` headless with a fresh profile (certificate errors ignored: the tests'
    /// servers have certificates of their own CA, on loopback) and opens one page, `width` ×
    /// `height` CSS pixels.
    #[track_caller]
    pub fn launch(width: u32, height: u32) -> Browser {
        crate::require::tool("chromium", "chromium");
        let profile = crate::temp_dir("corral-chromium-");
        let log = profile.path().join("chromium.log");
        let mut cmd = std::process::Command::new("chromium");
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--no-first-run",
            "--no-default-browser-check",
            "--ignore-certificate-errors",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
            &format!("--window-size={width},{height}"),
            &format!("--user-data-dir={}", profile.path().display()),
            "about:blank",
        ]);
        let mut proc = Proc::spawn(cmd, &log);
        // Chromium writes the port it chose into the profile.
        let port_file = profile.path().join("DevToolsActivePort");
        let start = Instant::now();
        let (port, path) = loop {
            if let Ok(text) = std::fs::read_to_string(&port_file) {
                let mut lines = text.lines();
                if let (Some(port), Some(path)) = (lines.next(), lines.next()) {
                    break (port.to_owned(), path.to_owned());
                }
            }
            assert!(
                proc.running(),
                "chromium exited at start:\n{}",
                proc.log_text()
            );
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "chromium did not open its DevTools port within 30 s:\n{}",
                proc.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        let url = format!("ws://127.0.0.1:{port}{path}");
        let stream = TcpStream::connect(format!("127.0.0.1:{port}")).expect("DevTools socket");
        stream
            .set_read_timeout(Some(Duration::from_secs(120)))
            .expect("a read timeout");
        let (socket, _) = tungstenite::client(url.as_str(), stream).expect("DevTools handshake");
        let mut b = Browser {
            proc,
            socket,
            session: String::new(),
            pages: Vec::new(),
            next_id: 0,
            problems: Vec::new(),
            _profile: profile,
        };
        b.new_page(width, height);
        b
    }

    /// Opens another page (a tab) of `width` × `height`; commands go to it from now on.
    /// Returns its number for [`Browser::use_page`].
    pub fn new_page(&mut self, width: u32, height: u32) -> usize {
        let target = self.call_browser("Target.createTarget", json!({"url": "about:blank"}));
        let target_id = target["targetId"].as_str().expect("a target id").to_owned();
        let attached = self.call_browser(
            "Target.attachToTarget",
            json!({"targetId": target_id, "flatten": true}),
        );
        self.session = attached["sessionId"]
            .as_str()
            .expect("a session id")
            .to_owned();
        self.pages.push(self.session.clone());
        self.call("Page.enable", json!({}));
        self.call("Runtime.enable", json!({}));
        self.call("Log.enable", json!({}));
        self.call("Network.enable", json!({}));
        self.set_viewport(width, height, false);
        self.pages.len() - 1
    }

    /// Sends commands to page `n` from now on.
    pub fn use_page(&mut self, n: usize) {
        self.session = self.pages[n].clone();
    }

    /// The page's size (and whether it is a phone: touch, mobile layout).
    pub fn set_viewport(&mut self, width: u32, height: u32, mobile: bool) {
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile}),
        );
    }

    /// Downloads go to `dir` (the browser saves them; the test reads them there).
    pub fn download_to(&mut self, dir: &Path) {
        self.call_browser(
            "Browser.setDownloadBehavior",
            json!({"behavior": "allow", "downloadPath": dir.display().to_string()}),
        );
    }

    fn call_browser(&mut self, method: &str, params: Value) -> Value {
        self.send(None, method, params)
    }

    /// A command to the page; panics with the browser's error.
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        let session = self.session.clone();
        self.send(Some(&session), method, params)
    }

    fn send(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        self.socket
            .send(Message::text(msg.to_string()))
            .unwrap_or_else(|e| panic!("sending {method} to chromium: {e}"));
        loop {
            let frame = match self.socket.read() {
                Ok(f) => f,
                Err(tungstenite::Error::Io(e))
                    if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
                {
                    panic!("chromium did not answer {method} within 120 s")
                }
                Err(e) => panic!("reading chromium's answer to {method}: {e}"),
            };
            let Message::Text(text) = frame else {
                continue;
            };
            let v: Value = serde_json::from_str(text.as_str()).expect("DevTools JSON");
            if v["id"].as_u64() == Some(id) {
                if let Some(err) = v.get("error") {
                    panic!("chromium refused {method}: {err}");
                }
                return v["result"].clone();
            }
            self.note_event(&v);
        }
    }

    fn note_event(&mut self, v: &Value) {
        match v["method"].as_str() {
            Some("Runtime.exceptionThrown") => {
                let d = &v["params"]["exceptionDetails"];
                let text = d["exception"]["description"]
                    .as_str()
                    .or(d["text"].as_str())
                    .unwrap_or("an exception");
                self.problems.push(format!("exception: {text}"));
            }
            Some("Log.entryAdded") => {
                let e = &v["params"]["entry"];
                // Failed requests (a refused login, a 403 the test asked for) are answers,
                // not faults of the page; the tests assert on those themselves.
                if e["level"] == "error" && e["source"] != "network" {
                    self.problems.push(format!(
                        "console ({}): {}",
                        e["source"].as_str().unwrap_or(""),
                        e["text"].as_str().unwrap_or("")
                    ));
                }
            }
            // A request that broke (not one the page cancelled, as leaving a page does, nor
            // one Chromium dropped because the machine's interfaces changed: Docker on the same
            // machine adds one per container, and the pages must recover from it, which the
            // tests check by what the page shows afterwards).
            Some("Network.loadingFailed")
                if v["params"]["canceled"] != true
                    && v["params"]["errorText"] != "net::ERR_ABORTED"
                    && v["params"]["errorText"] != "net::ERR_NETWORK_CHANGED" =>
            {
                self.problems.push(format!(
                    "request failed: {} {}",
                    v["params"]["errorText"].as_str().unwrap_or(""),
                    v["params"]["type"].as_str().unwrap_or("")
                ));
            }
            Some("Runtime.consoleAPICalled") if v["params"]["type"] == "error" => {
                self.problems
                    .push(format!("console.error: {}", v["params"]["args"]));
            }
            _ => {}
        }
    }

    /// Opens `url` and waits until the document has loaded.
    pub fn goto(&mut self, url: &str) {
        self.call("Page.navigate", json!({"url": url}));
        self.wait_for("the page to load", "document.readyState === 'complete'");
    }

    /// Runs `expression` in the page (a promise is awaited) and returns its value.
    #[track_caller]
    pub fn eval(&mut self, expression: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": expression, "awaitPromise": true, "returnByValue": true, "userGesture": true}),
        );
        if let Some(e) = r.get("exceptionDetails") {
            panic!("script failed: {expression}\n{e}");
        }
        r["result"]["value"].clone()
    }

    /// Waits (up to 60 s) until `expression` is truthy in the page, and returns its value.
    #[track_caller]
    pub fn wait_for(&mut self, what: &str, expression: &str) -> Value {
        self.wait_for_within(Duration::from_secs(60), what, expression)
    }

    #[track_caller]
    pub fn wait_for_within(&mut self, limit: Duration, what: &str, expression: &str) -> Value {
        let start = Instant::now();
        let guarded = format!(
            "(() => {{ try {{ return ({expression}); }} catch (_) {{ return null; }} }})()"
        );
        loop {
            let v = self.eval(&guarded);
            let truthy = match &v {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
                Value::String(s) => !s.is_empty(),
                _ => true,
            };
            if truthy {
                return v;
            }
            if start.elapsed() > limit {
                let body = self.eval("document.body ? document.body.innerText.slice(0, 3000) : ''");
                panic!(
                    "waited {limit:?} for {what} ({expression}); the page shows:\n{}\nproblems: {:?}",
                    body.as_str().unwrap_or(""),
                    self.problems
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Clicks the element `selector` names (waiting for it to exist).
    #[track_caller]
    pub fn click(&mut self, selector: &str) {
        let q = serde_json::to_string(selector).expect("a selector");
        self.wait_for(
            &format!("{selector} to exist"),
            &format!("document.querySelector({q})"),
        );
        self.eval(&format!("document.querySelector({q}).click()"));
    }

    /// Focuses the field `selector`, clears it and types `text` into it as keyboard input.
    #[track_caller]
    pub fn type_into(&mut self, selector: &str, text: &str) {
        let q = serde_json::to_string(selector).expect("a selector");
        self.wait_for(
            &format!("{selector} to exist"),
            &format!("document.querySelector({q})"),
        );
        self.eval(&format!(
            "(() => {{ const e = document.querySelector({q}); e.focus(); e.value = ''; }})()"
        ));
        self.call("Input.insertText", json!({"text": text}));
    }

    /// Sets a field's value and tells the page (for long texts, where typing is slow).
    #[track_caller]
    pub fn fill(&mut self, selector: &str, text: &str) {
        let q = serde_json::to_string(selector).expect("a selector");
        let t = serde_json::to_string(text).expect("a text");
        self.wait_for(
            &format!("{selector} to exist"),
            &format!("document.querySelector({q})"),
        );
        self.eval(&format!(
            "(() => {{ const e = document.querySelector({q}); e.value = {t}; e.dispatchEvent(new Event('input', {{bubbles: true}})); }})()"
        ));
    }

    /// The page's text content of `selector` ('' when absent).
    pub fn text(&mut self, selector: &str) -> String {
        let q = serde_json::to_string(selector).expect("a selector");
        self.eval(&format!(
            "(() => {{ const e = document.querySelector({q}); return e ? e.innerText : ''; }})()"
        ))
        .as_str()
        .unwrap_or_default()
        .to_owned()
    }

    /// A PNG of the whole page (beyond the viewport too) into `path`.
    pub fn screenshot(&mut self, path: &Path) {
        let r = self.call(
            "Page.captureScreenshot",
            json!({"format": "png", "captureBeyondViewport": true}),
        );
        let png = base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().expect("screenshot data"))
            .expect("base64 PNG");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("screenshot dir");
        }
        std::fs::write(path, png).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    }

    /// Where the browser's own output goes.
    pub fn log(&self) -> PathBuf {
        self.proc.log.clone()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.socket.close(None);
        self.proc.stop();
    }
}
