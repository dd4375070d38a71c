//! A throwaway PostgreSQL cluster.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use tempfile::TempDir;

use crate::binaries;
use crate::os_user::ServerUser;
use crate::HarnessError;

/// How to stop the server (`pg_ctl -m`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    /// Disconnect clients, checkpoint, stop.
    Fast,
    /// Stop at once, without a checkpoint: the next start runs crash recovery.
    Immediate,
}

impl StopMode {
    fn as_arg(self) -> &'static str {
        match self {
            StopMode::Fast => "fast",
            StopMode::Immediate => "immediate",
        }
    }
}

/// How a user's password is stored and checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PasswordAuth {
    /// `md5`.
    Md5,
    /// `scram-sha-256`.
    ScramSha256,
}

/// Settings for a cluster before it starts.
#[derive(Debug, Clone, Default)]
pub struct PgClusterBuilder {
    settings: Vec<(String, String)>,
    ssl: Option<(Vec<u8>, Vec<u8>)>,
}

impl PgClusterBuilder {
    /// A `postgresql.conf` setting; overrides the harness's defaults.
    pub fn setting(mut self, name: &str, value: &str) -> Self {
        self.settings.push((name.to_owned(), value.to_owned()));
        self
    }

    /// `wal_level` (the default is `logical`).
    pub fn wal_level(self, level: &str) -> Self {
        self.setting("wal_level", level)
    }

    /// Serves TLS with this certificate chain and key (PEM).
    pub fn ssl(mut self, cert_pem: impl Into<Vec<u8>>, key_pem: impl Into<Vec<u8>>) -> Self {
        self.ssl = Some((cert_pem.into(), key_pem.into()));
        self
    }

    /// Creates and starts the cluster.
    pub fn start(self) -> Result<PgCluster, HarnessError> {
        PgCluster::create(self)
    }
}

/// A PostgreSQL cluster in a temporary directory, on a free port, with its
/// own socket directory; `wal_level=logical` unless told otherwise. Stopped
/// (immediately) and removed on drop.
#[derive(Debug)]
pub struct PgCluster {
    bindir: PathBuf,
    user: ServerUser,
    // Dropped last: the directory goes after the server has stopped.
    dir: TempDir,
    data: PathBuf,
    port: Mutex<u16>,
}

/// The settings every cluster gets; builder settings come after and win.
const DEFAULTS: &[(&str, &str)] = &[
    ("listen_addresses", "'127.0.0.1'"),
    ("wal_level", "logical"),
    ("max_replication_slots", "20"),
    ("max_wal_senders", "20"),
    ("fsync", "off"),
    ("full_page_writes", "off"),
    ("shared_buffers", "32MB"),
    ("max_connections", "50"),
    ("log_min_messages", "warning"),
];

const HBA_TRUST: &str = "\
local all all trust
local replication all trust
host all all 127.0.0.1/32 trust
host replication all 127.0.0.1/32 trust
";

impl PgCluster {
    /// A cluster with the defaults.
    pub fn start() -> Result<Self, HarnessError> {
        PgClusterBuilder::default().start()
    }

    /// Settings first, then `.start()`.
    pub fn builder() -> PgClusterBuilder {
        PgClusterBuilder::default()
    }

    fn create(builder: PgClusterBuilder) -> Result<Self, HarnessError> {
        let bindir = binaries::bindir()?;
        let user = ServerUser::detect()?;
        // Short path: Unix socket paths are limited to ~107 bytes.
        let dir = tempfile::Builder::new()
            .prefix("outboxd-pg-")
            .tempdir_in("/tmp")?;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
        user.own(dir.path())?;
        let data = dir.path().join("data");

        let out = user
            .command(&bindir.join("initdb"))
            .current_dir(dir.path())
            .args(["-D"])
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .output()?;
        check(&out, "initdb")?;

        let mut conf = String::from("\n# outboxd test harness\ninclude_if_exists 'harness.conf'\n");
        conf.push_str(&format!("unix_socket_directories = '{}'\n", dir.path().display()));
        for (name, value) in DEFAULTS {
            writeln!(conf, "{name} = {value}").ok();
        }
        for (name, value) in &builder.settings {
            writeln!(conf, "{name} = '{}'", value.replace('\'', "''")).ok();
        }
        if let Some((cert, key)) = &builder.ssl {
            for (file, pem) in [("server.crt", cert), ("server.key", key)] {
                let path = data.join(file);
                std::fs::write(&path, pem)?;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
                user.own(&path)?;
            }
            conf.push_str("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
        }
        std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))?
            .write_all(conf.as_bytes())?;
        std::fs::write(data.join("pg_hba.conf"), HBA_TRUST)?;

        let cluster = PgCluster {
            bindir,
            user,
            dir,
            data,
            port: Mutex::new(0),
        };
        // Another test may take the port between our probe and the server's bind: retry.
        let mut last = None;
        for _ in 0..5 {
            cluster.set_port(free_port()?)?;
            match cluster.start_again() {
                Ok(()) => return Ok(cluster),
                Err(err) => last = Some(err),
            }
        }
        Err(last.unwrap_or_else(|| HarnessError::new("cluster did not start")))
    }

    fn set_port(&self, port: u16) -> Result<(), HarnessError> {
        *self.port.lock().unwrap_or_else(|e| e.into_inner()) = port;
        let path = self.data.join("harness.conf");
        std::fs::write(&path, format!("port = {port}\n"))?;
        self.user.own(&path)
    }

    /// The TCP port (on 127.0.0.1).
    pub fn port(&self) -> u16 {
        *self.port.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `127.0.0.1`.
    pub fn host(&self) -> &str {
        "127.0.0.1"
    }

    /// The directory holding the server's Unix socket.
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// `postgresql://user@127.0.0.1:PORT/database`.
    pub fn url(&self, user: &str, database: &str) -> String {
        format!("postgresql://{user}@127.0.0.1:{}/{database}", self.port())
    }

    /// A client configuration for `user` on `database` over TCP.
    pub fn config(&self, user: &str, database: &str) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        config
            .host("127.0.0.1")
            .port(self.port())
            .user(user)
            .dbname(database);
        config
    }

    /// A superuser connection to `postgres`; its connection task runs on the current runtime.
    pub async fn connect(&self) -> Result<tokio_postgres::Client, HarnessError> {
        let (client, connection) = self
            .config("postgres", "postgres")
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(|e| HarnessError::new(format!("connecting to the test cluster: {e}")))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }

    /// Runs SQL through `psql` as the superuser, statement by statement (not
    /// in one transaction); returns the unaligned, tuples-only output.
    pub fn psql(&self, sql: &str) -> Result<String, HarnessError> {
        let mut child = Command::new(self.bindir.join("psql"))
            .args([
                "-X",
                "-A",
                "-t",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-d",
                "postgres",
            ])
            .args(["-p", &self.port().to_string(), "-f", "-"])
            .env("LC_ALL", "C")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(sql.as_bytes())?;
        }
        let out = child.wait_with_output()?;
        if !out.status.success() {
            return Err(HarnessError::new(format!(
                "psql failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_owned())
    }

    /// `ALTER SYSTEM SET` and reload. Settings that need a restart
    /// (`wal_level`, `max_*`) take effect after [`PgCluster::restart`].
    pub fn set_parameter(&self, name: &str, value: &str) -> Result<(), HarnessError> {
        self.psql(&format!(
            "alter system set {name} = '{}';\nselect pg_reload_conf();",
            value.replace('\'', "''")
        ))?;
        settle_reload();
        Ok(())
    }

    /// Stops the server.
    /// Stops the server and waits until the postmaster process is gone
    /// (`pg_ctl -w` returns once `postmaster.pid` is removed, a moment earlier).
    pub fn stop(&self, mode: StopMode) -> Result<(), HarnessError> {
        let pid = self.postmaster_pid();
        let out = self
            .pg_ctl()
            .args(["-m", mode.as_arg(), "-w", "-t", "60", "stop"])
            .output()?;
        check(&out, "pg_ctl stop")?;
        if let Some(pid) = pid {
            for _ in 0..200 {
                if !process_alive(pid) {
                    return Ok(());
                }
                std::thread::sleep(Duration::from_millis(25));
            }
            return Err(HarnessError::new(format!(
                "postmaster {pid} still running 5 s after pg_ctl stop"
            )));
        }
        Ok(())
    }

    /// Starts the stopped server again, same port and directory, and waits
    /// until it accepts connections.
    pub fn start_again(&self) -> Result<(), HarnessError> {
        let log = self.dir.path().join("server.log");
        let out = self
            .pg_ctl()
            .args(["-w", "-t", "60", "-l"])
            .arg(&log)
            .arg("start")
            .output()?;
        if !out.status.success() {
            let tail = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = tail.lines().rev().take(15).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            return Err(HarnessError::new(format!(
                "PostgreSQL did not start on port {}: {}\nserver log:\n{}",
                self.port(),
                String::from_utf8_lossy(&out.stderr).trim(),
                tail.join("\n")
            )));
        }
        // pg_ctl -w waits for the socket; make sure TCP answers too.
        for _ in 0..100 {
            if self.psql("select 1").is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(HarnessError::new(format!(
            "PostgreSQL started but does not answer on port {}",
            self.port()
        )))
    }

    /// Stops and starts again.
    pub fn restart(&self, mode: StopMode) -> Result<(), HarnessError> {
        self.stop(mode)?;
        self.start_again()
    }

    /// PID of the postmaster, from `postmaster.pid` (None when stopped).
    pub fn postmaster_pid(&self) -> Option<u32> {
        let text = std::fs::read_to_string(self.data.join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }

    /// `server_version_num`, e.g. 150019.
    pub fn server_version_num(&self) -> Result<u32, HarnessError> {
        let text = self.psql("show server_version_num")?;
        text.trim()
            .parse()
            .map_err(|_| HarnessError::new(format!("unexpected server_version_num {text:?}")))
    }

    /// A `LOGIN REPLICATION` role whose password is stored and checked with
    /// `auth` over TCP (for both normal and replication connections).
    pub fn create_user(&self, name: &str, password: &str, auth: PasswordAuth) -> Result<(), HarnessError> {
        let (encryption, method) = match auth {
            PasswordAuth::Md5 => ("md5", "md5"),
            PasswordAuth::ScramSha256 => ("scram-sha-256", "scram-sha-256"),
        };
        self.psql(&format!(
            "set password_encryption = '{encryption}';\ncreate role \"{name}\" login replication password '{}';",
            password.replace('\'', "''")
        ))?;
        self.add_hba_line(&format!("host replication \"{name}\" 127.0.0.1/32 {method}"))?;
        self.add_hba_line(&format!("host all \"{name}\" 127.0.0.1/32 {method}"))
    }

    /// Puts a line at the top of `pg_hba.conf` (first match wins) and reloads.
    pub fn add_hba_line(&self, line: &str) -> Result<(), HarnessError> {
        let path = self.data.join("pg_hba.conf");
        let current = std::fs::read_to_string(&path)?;
        std::fs::write(&path, format!("{line}\n{current}"))?;
        self.psql("select pg_reload_conf()")?;
        settle_reload();
        Ok(())
    }

    fn pg_ctl(&self) -> Command {
        let mut command = self.user.command(&self.bindir.join("pg_ctl"));
        command.current_dir(self.dir.path()).arg("-D").arg(&self.data);
        command
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if self.postmaster_pid().is_some() {
            let _ = self.stop(StopMode::Immediate);
        }
    }
}

/// pg_reload_conf() only signals the postmaster; give it a moment to re-read.
fn settle_reload() {
    std::thread::sleep(Duration::from_millis(200));
}

/// Whether `pid` is a live process (a zombie awaiting its reaper is not).
pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

fn free_port() -> Result<u16, HarnessError> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn check(out: &Output, what: &str) -> Result<(), HarnessError> {
    if out.status.success() {
        Ok(())
    } else {
        Err(HarnessError::new(format!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}
