//! A throwaway PostgreSQL cluster.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::binaries::{self, check, output};
use crate::os_user::ServerUser;
use crate::process::{process_alive, process_mentions};
use crate::HarnessError;

/// How to stop the server (`pg_ctl -m`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    /// Disconnect clients, checkpoint, stop. Each walsender first sends
    /// all WAL up to the shutdown checkpoint and waits until its client
    /// reports it flushed (or written, if the client reports no flush
    /// position): a connected replication client that does not confirm the
    /// end of the WAL makes this slow, up to failing at `pg_ctl`'s 60 s
    /// timeout.
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

impl PasswordAuth {
    /// The `password_encryption` value, which is also the `pg_hba.conf` method.
    fn method(self) -> &'static str {
        match self {
            PasswordAuth::Md5 => "md5",
            PasswordAuth::ScramSha256 => "scram-sha-256",
        }
    }
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

    /// Serves TLS (`ssl = on`) with this certificate chain and private key,
    /// both PEM; they are written to `server.crt` and `server.key` (mode 0600,
    /// owned by the server's OS user) in the data directory.
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
    // Dropped after `Drop::drop` has stopped the server.
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
    ("logging_collector", "off"),
    ("log_min_messages", "warning"),
];

const HBA_TRUST: &str = "\
local all all trust
local replication all trust
host all all 127.0.0.1/32 trust
host replication all 127.0.0.1/32 trust
";

/// What the server log says when another process holds our port.
const PORT_TAKEN: &str = "Address already in use";

/// How many times to pick another port when the one we probed was taken.
const PORT_ATTEMPTS: u32 = 6;

/// How long `pg_ctl` may wait for a start or stop.
const PG_CTL_TIMEOUT_SECS: &str = "60";

/// How long to wait for a started server to answer over TCP, or for a
/// configuration reload to take effect.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

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
        // Directly under /tmp whatever TMPDIR says: Unix socket paths are
        // limited to ~107 bytes.
        let dir = tempfile::Builder::new()
            .prefix("outboxd-pg-")
            .tempdir_in("/tmp")?;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
        user.own(dir.path())?;
        let data = dir.path().join("data");

        let mut initdb = user.command(&bindir.join("initdb"));
        initdb.current_dir(dir.path()).arg("-D").arg(&data).args([
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        ]);
        check(&output(&mut initdb, "initdb")?, "initdb")?;

        let mut conf = String::from("\n# outboxd test harness\ninclude_if_exists 'harness.conf'\n");
        writeln!(conf, "unix_socket_directories = '{}'", dir.path().display()).ok();
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
                // The server refuses a key readable by others.
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
        cluster.start_on_free_port()?;
        Ok(cluster)
    }

    /// Another test may take the port between our probe and the server's
    /// bind: then, and only then, try again with another port.
    fn start_on_free_port(&self) -> Result<(), HarnessError> {
        let mut attempt = 1;
        loop {
            self.set_port(free_port()?)?;
            let log_start = self.log_len();
            match self.start_again() {
                Ok(()) => return Ok(()),
                Err(_) if attempt < PORT_ATTEMPTS && self.log_since(log_start).contains(PORT_TAKEN) => {
                    attempt += 1;
                }
                Err(err) => return Err(err),
            }
        }
    }

    /// The port lives in its own included file so that a retry can change it.
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

    /// A superuser connection to `postgres`; its connection task is spawned
    /// on the current tokio runtime.
    pub async fn connect(&self) -> Result<tokio_postgres::Client, HarnessError> {
        let (client, connection) = self
            .config("postgres", "postgres")
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(|e| {
                HarnessError::new(format!(
                    "connecting to the test cluster on port {}: {e}",
                    self.port()
                ))
            })?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }

    /// Runs SQL through `psql` as the superuser, statement by statement (not
    /// in one transaction), stopping at the first error; returns the
    /// unaligned, tuples-only output. The error carries psql's message.
    pub fn psql(&self, sql: &str) -> Result<String, HarnessError> {
        let mut child = binaries::command(&self.bindir.join("psql"))
            .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1"])
            .args(["-h", "127.0.0.1", "-U", "postgres", "-d", "postgres"])
            .args(["-p", &self.port().to_string(), "-f", "-"])
            .env("PGCONNECT_TIMEOUT", "10")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| HarnessError::new(format!("could not run psql: {e}")))?;
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

    /// `ALTER SYSTEM SET name = 'value'`, then reloads and waits until new
    /// sessions see the reloaded configuration. Settings that only the
    /// postmaster reads (`wal_level`, `max_wal_senders`, `max_*`,
    /// `shared_buffers`, `track_commit_timestamp`, …) take effect only after
    /// [`PgCluster::restart`].
    pub fn set_parameter(&self, name: &str, value: &str) -> Result<(), HarnessError> {
        self.psql(&format!(
            "alter system set {name} = '{}'",
            value.replace('\'', "''")
        ))?;
        self.reload()
    }

    /// `pg_reload_conf()` only signals the postmaster: wait until a new
    /// session sees a newer `pg_conf_load_time()`, so the next connection
    /// uses the new settings and `pg_hba.conf`.
    fn reload(&self) -> Result<(), HarnessError> {
        let before = self.psql("select pg_conf_load_time()")?;
        self.psql("select pg_reload_conf()")?;
        let deadline = Instant::now() + READY_TIMEOUT;
        while Instant::now() < deadline {
            if self.psql("select pg_conf_load_time()")? != before {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(HarnessError::new(format!(
            "the server did not reload its configuration within {READY_TIMEOUT:?}\nserver log:\n{}",
            self.log_tail()
        )))
    }

    /// Stops the server and waits until the postmaster process is gone
    /// (`pg_ctl -w` returns once `postmaster.pid` is removed, a moment earlier).
    pub fn stop(&self, mode: StopMode) -> Result<(), HarnessError> {
        let pid = self.postmaster_pid();
        let mut pg_ctl = self.pg_ctl();
        pg_ctl.args(["-m", mode.as_arg(), "-w", "-t", PG_CTL_TIMEOUT_SECS, "stop"]);
        check(&output(&mut pg_ctl, "pg_ctl stop")?, "pg_ctl stop")?;
        match pid {
            Some(pid) if !self.wait_gone(pid) => Err(HarnessError::new(format!(
                "postmaster {pid} still running 5 s after pg_ctl stop"
            ))),
            _ => Ok(()),
        }
    }

    fn wait_gone(&self, pid: u32) -> bool {
        for _ in 0..200 {
            if !process_alive(pid) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        false
    }

    /// Starts the stopped server again, same port and directory, and waits
    /// until it accepts connections over TCP.
    pub fn start_again(&self) -> Result<(), HarnessError> {
        let log_start = self.log_len();
        let mut pg_ctl = self.pg_ctl();
        pg_ctl
            .args(["-w", "-t", PG_CTL_TIMEOUT_SECS, "-l"])
            .arg(self.log_path())
            .arg("start");
        let out = output(&mut pg_ctl, "pg_ctl start")?;
        if !out.status.success() {
            return Err(HarnessError::new(format!(
                "PostgreSQL did not start on port {}: {}\nserver log:\n{}",
                self.port(),
                String::from_utf8_lossy(&out.stderr).trim(),
                self.log_since(log_start).trim_end()
            )));
        }
        // pg_ctl -w waits until the server accepts connections on one of its
        // sockets; make sure TCP answers too.
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut last = None;
        while Instant::now() < deadline {
            match self.psql("select 1") {
                Ok(_) => return Ok(()),
                Err(err) => last = Some(err),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(HarnessError::new(format!(
            "PostgreSQL started but does not answer on 127.0.0.1:{} within {READY_TIMEOUT:?}: {}\nserver log:\n{}",
            self.port(),
            last.map(|e| e.to_string()).unwrap_or_default(),
            self.log_tail()
        )))
    }

    /// Stops and starts again, same port and directory.
    pub fn restart(&self, mode: StopMode) -> Result<(), HarnessError> {
        self.stop(mode)?;
        self.start_again()
    }

    /// A second cluster made from a file-level copy of this one's data
    /// directory, started as a standby (`standby.signal`, no upstream) on
    /// its own port and socket directory: the same system identifier, the
    /// same data, and the same replication slots (they live in `pg_replslot`,
    /// which the copy carries). Promote it (`select pg_promote()`) to get a
    /// new primary on the next timeline, as after a failover.
    ///
    /// For a consistent copy this cluster is stopped (fast) while its files
    /// are copied, then started again on its port.
    pub fn standby_copy(&self) -> Result<PgCluster, HarnessError> {
        self.stop(StopMode::Fast)?;
        let copied = self.copy_stopped();
        let restarted = self.start_again();
        let copy = copied?;
        restarted?;
        copy.start_on_free_port()?;
        Ok(copy)
    }

    fn copy_stopped(&self) -> Result<PgCluster, HarnessError> {
        let dir = tempfile::Builder::new()
            .prefix("outboxd-pg-")
            .tempdir_in("/tmp")?;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
        self.user.own(dir.path())?;
        let data = dir.path().join("data");
        let mut cp = self.user.command(Path::new("cp"));
        cp.arg("-a").arg(&self.data).arg(&data);
        check(&output(&mut cp, "cp -a")?, "cp -a")?;
        // Later lines win: the copy gets its own socket directory.
        std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))?
            .write_all(format!("unix_socket_directories = '{}'\n", dir.path().display()).as_bytes())?;
        let signal = data.join("standby.signal");
        std::fs::write(&signal, "")?;
        self.user.own(&signal)?;
        Ok(PgCluster {
            bindir: self.bindir.clone(),
            user: self.user,
            dir,
            data,
            port: Mutex::new(0),
        })
    }

    /// PID of the postmaster, from `postmaster.pid` (None when stopped).
    pub fn postmaster_pid(&self) -> Option<u32> {
        let text = std::fs::read_to_string(self.data.join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }

    /// `server_version_num`, e.g. 150020.
    pub fn server_version_num(&self) -> Result<u32, HarnessError> {
        let text = self.psql("show server_version_num")?;
        text.trim()
            .parse()
            .map_err(|_| HarnessError::new(format!("unexpected server_version_num {text:?}")))
    }

    /// A `LOGIN REPLICATION` role whose password is stored with `auth`'s
    /// encryption and must be given with that method over TCP, for normal and
    /// replication connections alike (`pg_hba.conf` lines ahead of the trust
    /// lines). Connections without a password fail for this user.
    pub fn create_user(&self, name: &str, password: &str, auth: PasswordAuth) -> Result<(), HarnessError> {
        let method = auth.method();
        self.psql(&format!(
            "set password_encryption = '{method}';\ncreate role \"{name}\" login replication password '{}';",
            password.replace('\'', "''")
        ))?;
        self.prepend_hba(&[
            &format!("host all \"{name}\" 127.0.0.1/32 {method}"),
            &format!("host replication \"{name}\" 127.0.0.1/32 {method}"),
        ])?;
        self.reload()
    }

    /// Puts a line at the top of `pg_hba.conf` (the first matching line wins)
    /// and reloads.
    pub fn add_hba_line(&self, line: &str) -> Result<(), HarnessError> {
        self.prepend_hba(&[line])?;
        self.reload()
    }

    fn prepend_hba(&self, lines: &[&str]) -> Result<(), HarnessError> {
        let path = self.data.join("pg_hba.conf");
        let current = std::fs::read_to_string(&path)?;
        let mut text = String::new();
        for line in lines {
            writeln!(text, "{line}").ok();
        }
        text.push_str(&current);
        std::fs::write(&path, text)?;
        Ok(())
    }

    fn pg_ctl(&self) -> Command {
        let mut command = self.user.command(&self.bindir.join("pg_ctl"));
        command.current_dir(self.dir.path()).arg("-D").arg(&self.data);
        command
    }

    /// The server log (`pg_ctl -l`), next to the data directory.
    fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    fn log_len(&self) -> u64 {
        std::fs::metadata(self.log_path()).map_or(0, |m| m.len())
    }

    fn log_since(&self, offset: u64) -> String {
        let log = std::fs::read(self.log_path()).unwrap_or_default();
        let from = usize::try_from(offset).unwrap_or(usize::MAX).min(log.len());
        String::from_utf8_lossy(&log[from..]).into_owned()
    }

    fn log_tail(&self) -> String {
        let log = self.log_since(0);
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let Some(pid) = self.postmaster_pid() else {
            return;
        };
        if self.stop(StopMode::Immediate).is_ok() {
            return;
        }
        // pg_ctl failed (or timed out): kill the postmaster ourselves before
        // its directory goes, but only if that PID is still our server (a
        // stale postmaster.pid may name a reused PID); its children exit when
        // they notice the postmaster is gone.
        if process_alive(pid) && process_mentions(pid, &self.data) {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            self.wait_gone(pid);
        }
    }
}

fn free_port() -> Result<u16, HarnessError> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
