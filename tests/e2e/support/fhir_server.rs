//! A real FHIR R4 server on loopback: Medplum's FHIR router over its in-memory repository,
//! validating every resource it receives (`tests/fhir-server/server.js`, installed by
//! `tests/run.sh` with `npm ci`). The process is killed when this handle drops.
//!
//! Without Node or the installed packages the tests that need it skip with a message, unless
//! `CAREBRIDGE_REQUIRE_FHIR_SERVER` is set (as `tests/run.sh` sets it): then they fail.

use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The token the tests seed and query the server with (and the `bearer` accounts use).
pub const ADMIN_TOKEN: &str = "fhir-admin-test-token";

/// How the server authenticates SMART clients.
pub struct Smart {
    /// The client id carebridge is registered under.
    pub client_id: String,
    /// The client's public key (PEM, SPKI).
    pub public_key: PathBuf,
    /// Lifetime of the access tokens it issues, in seconds.
    pub token_ttl_secs: u64,
}

/// A certificate for the server (HTTPS), and the CA that signed it.
pub struct Tls {
    /// The server's certificate (PEM), for 127.0.0.1 and localhost.
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// The test CA's certificate (PEM): what carebridge's `ca_file` names.
    pub ca: PathBuf,
}

/// Makes a test CA and a server certificate signed by it in `dir`, with the openssl CLI.
pub fn write_tls(dir: &Path) -> Tls {
    let run = |args: &[&str]| {
        let out = Command::new("openssl").args(args).current_dir(dir).output().expect("openssl runs");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    std::fs::write(dir.join("ext.cnf"), "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n")
        .unwrap();
    run(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-subj",
        "/CN=carebridge test CA",
        "-days",
        "2",
    ]);
    run(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ]);
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
    Tls { cert: dir.join("server.pem"), key: dir.join("server.key"), ca: dir.join("ca.pem") }
}

/// A running server.
pub struct FhirServer {
    child: Child,
    /// Its base URL (`http://127.0.0.1:<port>`).
    pub base: String,
    http: reqwest::Client,
}

fn server_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fhir-server")
}

impl FhirServer {
    /// Starts it, or `None` (after saying why) when it is not installed and not required.
    pub fn start(smart: Option<&Smart>) -> Option<FhirServer> {
        Self::start_with(smart, None)
    }

    /// Like [`FhirServer::start`], serving HTTPS with `tls` when given.
    pub fn start_with(smart: Option<&Smart>, tls: Option<&Tls>) -> Option<FhirServer> {
        let dir = server_dir();
        let installed = dir.join("node_modules/@medplum/fhir-router").is_dir()
            && Command::new("node").arg("--version").output().is_ok_and(|o| o.status.success());
        if !installed {
            assert!(
                std::env::var_os("CAREBRIDGE_REQUIRE_FHIR_SERVER").is_none(),
                "CAREBRIDGE_REQUIRE_FHIR_SERVER is set but the FHIR test server is not installed \
                 (node, and `npm ci --prefix tests/fhir-server`)"
            );
            eprintln!(
                "SKIPPED: the FHIR test server is not installed (needs node and `npm ci --prefix tests/fhir-server`; tests/run.sh does both)"
            );
            return None;
        }
        let mut cmd = Command::new("node");
        cmd.arg(dir.join("server.js")).args(["--admin-token", ADMIN_TOKEN]);
        if let Some(s) = smart {
            cmd.args(["--client-id", &s.client_id]).arg("--client-key").arg(&s.public_key);
            cmd.args(["--token-ttl", &s.token_ttl_secs.to_string()]);
        }
        if let Some(t) = tls {
            cmd.arg("--tls-cert").arg(&t.cert).arg("--tls-key").arg(&t.key);
        }
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().expect("node starts");
        let mut first = String::new();
        BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut first).expect("server says its port");
        let port = serde_json::from_str::<Value>(&first).ok().and_then(|v| v["port"].as_u64()).unwrap_or_else(|| {
            let _ = child.kill();
            panic!("the FHIR test server did not start: {first:?}")
        });
        let (scheme, http) = match tls {
            Some(t) => {
                let ca = reqwest::Certificate::from_pem(&std::fs::read(&t.ca).unwrap()).unwrap();
                ("https", reqwest::Client::builder().add_root_certificate(ca).build().unwrap())
            }
            None => ("http", reqwest::Client::new()),
        };
        Some(FhirServer { child, base: format!("{scheme}://127.0.0.1:{port}"), http })
    }

    /// A GET with the admin token; the JSON answer.
    pub async fn get(&self, path_and_query: &str) -> Value {
        let r = self
            .http
            .get(format!("{}/{path_and_query}", self.base))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .expect("the FHIR server answers");
        assert!(r.status().is_success(), "GET {path_and_query}: {}", r.status());
        r.json().await.expect("JSON")
    }

    /// A POST of `body` to `path` with the admin token; status and JSON answer.
    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}/{path}", self.base))
            .bearer_auth(ADMIN_TOKEN)
            .header("content-type", "application/fhir+json")
            .json(body)
            .send()
            .await
            .expect("the FHIR server answers");
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    /// Creates a `Patient` carrying `value` under identifier `system`; answers its id.
    pub async fn add_patient(&self, system: &str, value: &str, family: &str) -> String {
        let (status, p) = self
            .post(
                "Patient",
                &json!({ "resourceType": "Patient", "identifier": [{ "system": system, "value": value }], "name": [{ "family": family }] }),
            )
            .await;
        assert_eq!(status, 201, "{p}");
        p["id"].as_str().unwrap().to_string()
    }

    /// The resources of a search (`Communication?subject=Patient/x`).
    pub async fn search(&self, query: &str) -> Vec<Value> {
        let b = self.get(query).await;
        b["entry"].as_array().into_iter().flatten().map(|e| e["resource"].clone()).collect()
    }

    /// The server's counters (`/_test/stats`).
    pub async fn stats(&self) -> Value {
        self.http.get(format!("{}/_test/stats", self.base)).send().await.unwrap().json().await.unwrap()
    }

    /// Steers the server (`/_test/<what>`), see server.js.
    pub async fn control(&self, what: &str, body: Option<Value>) {
        let mut r = self.http.post(format!("{}/_test/{what}", self.base));
        if let Some(b) = body {
            r = r.json(&b);
        }
        assert!(r.send().await.unwrap().status().is_success());
    }

    /// Waits until `cond` holds for the stats.
    pub async fn wait_stats(&self, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            let s = self.stats().await;
            if cond(&s) {
                return s;
            }
            assert!(Instant::now() < end, "timed out waiting for {what}: {s}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for FhirServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes a new key pair for SMART into `dir` (`client.key.pem`, PKCS#8, and `client.pub.pem`),
/// made by Node's crypto (the test server's own verifier): P-384 for `ES384`, RSA 2048 for
/// `RS384`. Answers the paths.
pub fn write_client_keys(dir: &Path, algorithm: &str) -> (PathBuf, PathBuf) {
    let (private, public) = (dir.join("client.key.pem"), dir.join("client.pub.pem"));
    let kind = match algorithm {
        "ES384" => "'ec',{namedCurve:'P-384'}",
        "RS384" => "'rsa',{modulusLength:2048}",
        other => panic!("no keys for {other}"),
    };
    let script = format!(
        "const c=require('crypto');const fs=require('fs');\
         const {{privateKey,publicKey}}=c.generateKeyPairSync({kind});\
         fs.writeFileSync(process.argv[1],privateKey.export({{type:'pkcs8',format:'pem'}}));\
         fs.writeFileSync(process.argv[2],publicKey.export({{type:'spki',format:'pem'}}));"
    );
    let ok = Command::new("node").args(["-e", &script]).arg(&private).arg(&public).status().expect("node runs");
    assert!(ok.success());
    (private, public)
}
