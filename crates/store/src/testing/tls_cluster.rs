//! A PostgreSQL cluster of a test's own that accepts TLS connections only, with a
//! certificate from a certificate authority made for the test.
//!
//! The server's certificate names `localhost` only, so a test can connect by the name (which
//! `verify-full` accepts) or by `127.0.0.1` (which only `verify-ca` and weaker accept).
//! Plain TCP connections are refused by `pg_hba.conf`. Needs PostgreSQL's server programs
//! (`initdb`, `pg_ctl`) and `openssl`; without them [`TlsCluster::start`] skips visibly, or
//! fails under `TASKHOOK_TEST_REQUIRE_SERVICES=1`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A running cluster; stopped and removed when dropped.
pub struct TlsCluster {
    dir: PathBuf,
    bin: PathBuf,
    pub port: u16,
    /// The authority that signed the server's certificate (PEM).
    pub ca_file: PathBuf,
    /// Another authority, which signed nothing the server presents (PEM).
    pub other_ca_file: PathBuf,
}

impl TlsCluster {
    /// Starts the cluster, or returns `None` after a visible message when the machine lacks
    /// PostgreSQL's server programs or `openssl`.
    pub fn start() -> Option<TlsCluster> {
        let Some(bin) = server_bin_dir() else {
            return super::skip_or_fail("PostgreSQL's initdb and pg_ctl are not installed");
        };
        if Command::new("openssl").arg("version").output().is_err() {
            return super::skip_or_fail("openssl is not installed");
        }
        let dir = std::env::temp_dir().join(format!(
            "taskhook-test-pgtls-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let port = free_port();
        let cluster = TlsCluster {
            ca_file: dir.join("ca.pem"),
            other_ca_file: dir.join("other-ca.pem"),
            dir,
            bin,
            port,
        };
        cluster.make_certificates();
        cluster.init_and_start();
        Some(cluster)
    }

    /// The directory of the cluster's Unix socket (connections there need no TLS).
    pub fn socket_dir(&self) -> &Path {
        &self.dir
    }

    /// A URL for the cluster's `postgres` database at `host` with the given query.
    pub fn url(&self, host: &str, query: &str) -> String {
        format!("postgres://postgres@{host}:{}/postgres?{query}", self.port)
    }

    fn make_certificates(&self) {
        let d = &self.dir;
        for name in ["ca", "other-ca"] {
            openssl(
                d,
                &[
                    "req",
                    "-x509",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:P-256",
                    "-nodes",
                    "-days",
                    "2",
                    "-subj",
                    &format!("/CN=taskhook test {name}"),
                    "-keyout",
                    &format!("{name}.key"),
                    "-out",
                    &format!("{name}.pem"),
                ],
            );
        }
        openssl(
            d,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-subj",
                "/CN=localhost",
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
            ],
        );
        std::fs::write(
            d.join("server.ext"),
            "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        openssl(
            d,
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                "server.ext",
                "-out",
                "server.pem",
            ],
        );
    }

    fn init_and_start(&self) {
        let data = self.dir.join("data");
        // initdb and the server refuse to run as root: they run as `postgres` then.
        let root = is_root();
        if root {
            run(Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&self.dir));
        }
        let as_owner = |program: &str| {
            let mut c = if root {
                let mut c = Command::new("runuser");
                c.args(["-u", "postgres", "--"]).arg(self.bin.join(program));
                c
            } else {
                Command::new(self.bin.join(program))
            };
            c.stdout(Stdio::null());
            c
        };
        run(as_owner("initdb")
            .args(["-U", "postgres", "--auth=trust", "--no-sync", "-D"])
            .arg(&data));
        let conf = format!(
            "\nport = {}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
             ssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\nfsync = off\n",
            self.port,
            self.dir.display(),
            self.dir.join("server.pem").display(),
            self.dir.join("server.key").display(),
        );
        append(&data.join("postgresql.conf"), &conf);
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostnossl all all 127.0.0.1/32 reject\n",
        )
        .unwrap();
        run(as_owner("pg_ctl")
            .args(["-w", "-t", "30", "-l"])
            .arg(self.dir.join("server.log"))
            .arg("-D")
            .arg(&data)
            .arg("start"));
    }
}

impl Drop for TlsCluster {
    fn drop(&mut self) {
        let data = self.dir.join("data");
        let mut c = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"])
                .arg(self.bin.join("pg_ctl"));
            c
        } else {
            Command::new(self.bin.join("pg_ctl"))
        };
        let _ = c
            .args(["-m", "immediate", "-D"])
            .arg(&data)
            .arg("stop")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The directory of `initdb` and `pg_ctl`: `pg_config --bindir`, else Debian's layout.
fn server_bin_dir() -> Option<PathBuf> {
    let from_pg_config = Command::new("pg_config")
        .arg("--bindir")
        .output()
        .ok()
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    let debian = std::fs::read_dir("/usr/lib/postgresql")
        .ok()
        .and_then(|entries| {
            let mut dirs: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
                .collect();
            dirs.sort();
            dirs.pop()
        });
    [from_pg_config, debian]
        .into_iter()
        .flatten()
        .find(|d| d.join("initdb").is_file() && d.join("pg_ctl").is_file())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn openssl(dir: &Path, args: &[&str]) {
    run(Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null()));
}

fn run(cmd: &mut Command) {
    let out = cmd.stderr(Stdio::piped()).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn append(path: &Path, text: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    f.write_all(text.as_bytes()).unwrap();
}
