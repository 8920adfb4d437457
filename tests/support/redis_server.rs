//! A `redis-server` of a test's (or bench's) own, on a free port, killed
//! on drop. Debian's `redis-server` must be installed.
#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `redis-server` of this test's own, killed on drop.
pub struct Redis {
    child: Child,
    pub port: u16,
    /// Where its snapshots go (removed on drop).
    dir: Option<std::path::PathBuf>,
}

impl Redis {
    pub fn start() -> Self {
        let port = free_port();
        Self::start_on(port)
    }

    pub fn start_on(port: u16) -> Self {
        Self::start_with(port, &[])
    }

    /// A server that can be rolled back: [`snapshot`](Self::snapshot)
    /// saves its data (in a directory of its own), and
    /// [`roll_back`](Self::roll_back) makes it load that again, as a
    /// Redis restarted from an RDB or AOF behind does (or a failover to a
    /// replica that lagged).
    pub fn start_rollbackable() -> Self {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("tup-redis-{port}"));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.to_str().unwrap().to_owned();
        let mut args = vec!["--dir", path.as_str()];
        // Redis 7 takes DEBUG only when enabled (6 always does, and knows
        // no such option).
        if major_version() >= 7 {
            args.extend(["--enable-debug-command", "local"]);
        }
        let mut redis = Self::start_with(port, &args);
        redis.dir = Some(dir);
        redis
    }

    fn start_with(port: u16, extra: &[&str]) -> Self {
        let port_arg = port.to_string();
        let mut args = vec![
            "--port",
            port_arg.as_str(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ];
        args.extend_from_slice(extra);
        let child = Command::new("redis-server")
            .args(&args)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (apt-get install -y redis-server)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not open port {port}"
            );
            std::thread::yield_now();
        }
        Self {
            child,
            port,
            dir: None,
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// How many `EVALSHA` calls (the store's script) the server ran.
    #[cfg(feature = "redis")]
    pub async fn script_calls(&self) -> u64 {
        let mut connection = self.connection().await;
        let stats: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut connection)
            .await
            .unwrap();
        stats
            .lines()
            .find_map(|line| line.strip_prefix("cmdstat_evalsha:calls="))
            .and_then(|rest| rest.split(',').next())
            .map_or(0, |calls| calls.parse().unwrap())
    }

    /// Stops the server's process (SIGSTOP): it takes connections and
    /// commands and answers none until [`resume`](Self::resume), as a
    /// Redis stalled by a fork, a slow disk or a busy host does.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Lets a [`pause`](Self::pause)d server run again (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    /// Saves the data now (see [`start_rollbackable`](Self::start_rollbackable)).
    #[cfg(feature = "redis")]
    pub async fn snapshot(&self) {
        self.command(&redis::cmd("SAVE")).await;
    }

    /// Loads the data of the last [`snapshot`](Self::snapshot), dropping
    /// everything written since (clients stay connected; with `restart`,
    /// every client's connection drops in the same step, as a restart
    /// drops them: no call runs on the old data before, and a call in
    /// flight is lost, its answer with it).
    #[cfg(feature = "redis")]
    pub async fn roll_back(&self, restart: bool) {
        let mut step = redis::pipe();
        step.atomic().cmd("DEBUG").arg("RELOAD").arg("NOSAVE");
        if restart {
            step.cmd("CLIENT").arg("KILL").arg("TYPE").arg("normal");
        }
        let _: redis::Value = step
            .query_async(&mut self.connection().await)
            .await
            .unwrap();
    }

    #[cfg(feature = "redis")]
    async fn command(&self, command: &redis::Cmd) {
        let mut connection = self.connection().await;
        let _: redis::Value = command.query_async(&mut connection).await.unwrap();
    }

    /// A connection of its own to the server.
    #[cfg(feature = "redis")]
    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill {signal} redis-server");
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// The installed `redis-server`'s major version.
fn major_version() -> u32 {
    let output = Command::new("redis-server")
        .arg("--version")
        .output()
        .expect("redis-server must be installed (apt-get install -y redis-server)");
    let text = String::from_utf8_lossy(&output.stdout);
    text.split_whitespace()
        .find_map(|word| word.strip_prefix("v="))
        .and_then(|version| version.split('.').next()?.parse().ok())
        .unwrap_or(0)
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A relay between a client and a Redis that, when told, passes a command
/// on and drops the client's connection instead of its answer: a call
/// Redis applied whose answer the client never got (its connection died on
/// the way back).
#[cfg(feature = "redis")]
pub struct AnswerCutter {
    addr: std::net::SocketAddr,
    /// The command whose answer to cut: the next one holding these bytes.
    cut: std::sync::Arc<std::sync::Mutex<Option<Vec<u8>>>>,
}

#[cfg(feature = "redis")]
impl AnswerCutter {
    /// A relay to `redis`, relaying every connection made to it.
    pub async fn start(redis: &Redis) -> Self {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{Arc, Mutex};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut: Arc<Mutex<Option<Vec<u8>>>> = Arc::default();
        let (port, cutting) = (redis.port, cut.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
                    continue;
                };
                let (mut client_in, mut client_out) = client.into_split();
                let (mut server_in, mut server_out) = server.into_split();
                // This connection's next answer is to be cut.
                let cut_here = Arc::new(AtomicBool::new(false));
                let (cutting, marked) = (cutting.clone(), cut_here.clone());
                let commands = tokio::spawn(async move {
                    let mut buffer = vec![0; 64 * 1024];
                    while let Ok(n @ 1..) = client_in.read(&mut buffer).await {
                        let command = &buffer[..n];
                        {
                            let mut cut = cutting.lock().unwrap();
                            let holds = |needle: &Vec<u8>| {
                                command
                                    .windows(needle.len())
                                    .any(|w| w == needle.as_slice())
                            };
                            if cut.as_ref().is_some_and(holds) {
                                *cut = None;
                                marked.store(true, Ordering::SeqCst);
                            }
                        }
                        if server_out.write_all(command).await.is_err() {
                            break;
                        }
                    }
                });
                tokio::spawn(async move {
                    let mut buffer = vec![0; 64 * 1024];
                    while let Ok(n @ 1..) = server_in.read(&mut buffer).await {
                        if cut_here.swap(false, Ordering::SeqCst) {
                            break;
                        }
                        if client_out.write_all(&buffer[..n]).await.is_err() {
                            break;
                        }
                    }
                    // Both directions end: the client's connection closes.
                    commands.abort();
                });
            }
        });
        Self { addr, cut }
    }

    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// The answer to the next command holding `bytes` (on any connection)
    /// is dropped, with its connection.
    pub fn cut_the_answer_to(&self, bytes: &str) {
        *self.cut.lock().unwrap() = Some(bytes.as_bytes().to_vec());
    }
}
