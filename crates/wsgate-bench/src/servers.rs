//! The servers under test as child processes: wsgate with the benchmark configuration, the
//! baselines (this binary's `baseline` command), nginx, each pinned, under callgrind if asked,
//! and stopped when dropped; plus what is read of them (CPU seconds, RSS, the open-files limit).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running server under test.
pub struct Server {
    pub name: &'static str,
    pub child: Child,
    pub addr: SocketAddr,
    pub _config: Option<tempdir::Dir>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub mod tempdir {
    /// A directory removed on drop.
    pub struct Dir(pub std::path::PathBuf);
    impl Dir {
        /// A new, uniquely named directory under the system's temporary directory.
        pub fn new(kind: &str) -> Result<Dir, String> {
            let dir = std::env::temp_dir().join(format!(
                "wsgate-bench-{kind}-{}-{}",
                std::process::id(),
                super::rand_suffix()
            ));
            std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
            Ok(Dir(dir))
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// HS256 secret of the admission-cost route; the token below is signed with it (exp far ahead).
const SECRET: &str = "wsgate-bench-secret-of-at-least-32-bytes";

pub fn bench_config() -> String {
    format!(
        r#"[[listener]]
address = "127.0.0.1:0"
[limits]
max_connections = 1000000
max_message_bytes = 16777216
ping_interval = "5m"
idle_timeout = "10m"
[logging]
level = "warn"
[[route]]
path = "/ws/echo"
kind = "echo"
[[route]]
path = "/ws/echo-contextual"
kind = "echo"
compression = "contextual"
[[route]]
path = "/ws/chat/{{room}}"
kind = "channel"
[[route]]
path = "/ws/fan/{{room}}"
kind = "channel"
deliver_to_sender = false
[[route]]
path = "/ws/policy"
kind = "echo"
origins = ["https://bench.test"]
firewall = {{ allow = ["127.0.0.0/8"] }}
[route.auth]
sources = ["cookie:token"]
[[route.auth.jwt]]
secret = "{SECRET}"
"#
    )
}

/// A JWT HS256 for the policy route, made here so the harness needs no extra tool.
pub fn token() -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B;
    use base64::Engine as _;
    let header = B.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let payload = B.encode(br#"{"sub":"bench","exp":4102444800}"#);
    let msg = format!("{header}.{payload}");
    let sig = hmac_sha256(SECRET.as_bytes(), msg.as_bytes());
    format!("{msg}.{}", B.encode(sig))
}

/// HMAC-SHA256 with ring (already the workspace's crypto provider).
pub fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let tag = ring::hmac::sign(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key), msg);
    let mut out = [0u8; 32];
    out.copy_from_slice(tag.as_ref());
    out
}

/// The machine's cores, read once before this process pins itself to one of them (after
/// which `available_parallelism` would say 1, and children inherit the pin).
pub fn machine_cores() -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CORES.get_or_init(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    })
}

pub fn pinned(core: usize, program: &PathBuf) -> Command {
    if machine_cores() >= 2 && which("taskset") {
        let mut c = Command::new("taskset");
        c.arg("-c").arg(core.to_string()).arg(program);
        c
    } else {
        Command::new(program)
    }
}

pub fn which(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
}

/// Bun's binary: `WSGATE_BUN`, else the npm package `@oven/bun-linux-x64` in
/// `WSGATE_NODE_MODULES` (or `tests/node/node_modules`, where `scripts/test` installs it), else
/// `bun` on the PATH.
pub fn bun_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("WSGATE_BUN") {
        return Some(PathBuf::from(p));
    }
    let modules = std::env::var_os("WSGATE_NODE_MODULES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("tests/node/node_modules"));
    let packaged = modules.join("@oven/bun-linux-x64/bin/bun");
    if packaged.is_file() {
        return Some(packaged);
    }
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("bun"))
            .find(|b| b.is_file())
    })
}

/// What to do when Bun is missing.
pub fn bun_missing() -> String {
    "Bun is missing: `cd tests/node && npm ci` installs it (@oven/bun-linux-x64), or set WSGATE_BUN to its binary".into()
}

pub fn start(name: &'static str, wsgate: &PathBuf) -> Result<Server, String> {
    start_with(name, wsgate, Launch::Pinned(0), bench_config())
}

/// How a server process is started.
pub enum Launch {
    /// Pinned to this core.
    Pinned(usize),
    /// On any core.
    Unpinned,
    /// Under `valgrind --tool=callgrind`, writing to this file.
    Callgrind(PathBuf),
}

pub fn start_with(
    name: &'static str,
    wsgate: &PathBuf,
    launch: Launch,
    config: String,
) -> Result<Server, String> {
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let program = if name == "wsgate" { wsgate } else { &me };
    let pinned = |program: &PathBuf| match &launch {
        Launch::Pinned(core) => pinned(*core, program),
        Launch::Unpinned => Command::new(program),
        Launch::Callgrind(out) => {
            let mut c = Command::new("valgrind");
            c.arg("--tool=callgrind")
                .arg(format!("--callgrind-out-file={}", out.display()))
                .arg(program);
            c
        }
    };
    let (mut cmd, dir) = if name == "bun" {
        let bun = bun_binary().ok_or_else(bun_missing)?;
        let dir = tempdir::Dir::new("bun")?;
        let script = dir.0.join("bun.js");
        std::fs::write(&script, include_str!("../peers/bun.js")).map_err(|e| e.to_string())?;
        let mut c = pinned(&bun);
        c.arg(&script);
        (c, Some(dir))
    } else if name == "wsgate" {
        let dir = tempdir::Dir::new("wsgate")?;
        let cfg = dir.0.join("bench.toml");
        std::fs::write(&cfg, config).map_err(|e| e.to_string())?;
        let mut c = pinned(program);
        c.args(["serve", "--admin", "off", "--config"]).arg(&cfg);
        (c, Some(dir))
    } else {
        let mut c = pinned(program);
        c.args(["baseline", name]);
        (c, None)
    };
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start {name}: {e}"))?;
    let (addr, _) = read_banner(&mut child, name, false)?;
    Ok(Server {
        name,
        child,
        addr,
        _config: dir,
    })
}

/// Reads a server's start-up banner up to its `listening ws://` line (and, with `admin`, its
/// `admin http://` line), then keeps draining stdout so the server never blocks on a full pipe.
pub fn read_banner(
    child: &mut Child,
    name: &str,
    admin: bool,
) -> Result<(SocketAddr, Option<SocketAddr>), String> {
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let (mut addr, mut admin_addr) = (None, None);
    while addr.is_none() || (admin && admin_addr.is_none()) {
        match lines.next() {
            Some(Ok(l)) => {
                if let Some(rest) = l.strip_prefix("listening ws://") {
                    let a = rest.split_whitespace().next().unwrap_or("");
                    addr = Some(
                        a.parse::<SocketAddr>()
                            .map_err(|e| format!("{name} printed {l:?}: {e}"))?,
                    );
                }
                if let Some(rest) = l.strip_prefix("admin http://") {
                    admin_addr = rest.split('/').next().and_then(|a| a.parse().ok());
                }
            }
            _ => {
                let _ = child.kill();
                return Err(format!("{name} did not start"));
            }
        }
    }
    std::thread::spawn(move || for _ in lines {});
    match addr {
        Some(a) => Ok((a, admin_addr)),
        None => Err(format!("{name} printed no address")),
    }
}

pub fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(0)
}

/// CPU seconds (user + system) of a process.
pub fn cpu_secs(pid: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|u| u.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    ticks / 100.0
}

pub fn rss_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|k| k.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// This process's soft limit on open files, raised to the hard limit first (the servers it
/// starts inherit it).
pub fn open_files_limit() -> Option<u64> {
    let _ = wsgate_server::fdlimit::raise_open_files();
    wsgate_server::fdlimit::open_files().map(|(soft, _)| soft)
}

/// The server's PID inside `taskset` (which execs the program, so it is the same PID).
pub fn pid(s: &Server) -> u32 {
    s.child.id()
}

pub fn nginx_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("nginx"))
            .find(|f| f.is_file())
    }) {
        return Some(p);
    }
    let sbin = PathBuf::from("/usr/sbin/nginx");
    sbin.is_file().then_some(sbin)
}

pub fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}

/// nginx (Debian's) as a WebSocket reverse proxy to `upstream`, one process pinned to core 0:
/// the configuration its documentation gives for WebSocket proxying.
pub fn start_nginx(upstream: SocketAddr) -> Result<Server, String> {
    let exe = nginx_binary()
        .ok_or("nginx is missing (Debian package nginx): the proxy mode measures against it")?;
    let dir = tempdir::Dir::new("nginx")?;
    let d = dir.0.display();
    let port = free_port()?;
    let conf = format!(
        r#"worker_processes 1;
master_process off;
daemon off;
pid {d}/nginx.pid;
error_log stderr error;
worker_rlimit_nofile 65536;
events {{ worker_connections 16384; }}
http {{
    access_log off;
    client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://{upstream};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_read_timeout 1h;
        }}
    }}
}}
"#
    );
    let cfg = dir.0.join("nginx.conf");
    std::fs::write(&cfg, conf).map_err(|e| e.to_string())?;
    let child = pinned(0, &exe)
        .arg("-p")
        .arg(&dir.0)
        .arg("-c")
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start nginx: {e}"))?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let server = Server {
        name: "nginx",
        child,
        addr,
        _config: Some(dir),
    };
    for _ in 0..100 {
        if std::net::TcpStream::connect(addr).is_ok() {
            return Ok(server);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!("nginx did not listen on {addr}"))
}

/// SIGTERM, then wait: every server under test exits normally on it, so callgrind writes its data.
pub fn stop_gracefully(mut s: Server) -> Result<(), String> {
    let pid = pid(&s).to_string();
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    for _ in 0..600 {
        if let Ok(Some(_)) = s.child.try_wait() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(format!("{} did not exit within 60 s of SIGTERM", s.name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231() {
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        assert_eq!(
            hex(&hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(token().split('.').count(), 3);
    }
}
