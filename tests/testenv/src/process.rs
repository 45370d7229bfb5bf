//! Child processes that cannot outlive the test binary.
//!
//! Three exits have to be covered: a normal drop (killed in `Drop`), a normal process exit
//! with a control plane still held in a `static` (statics are never dropped: an `atexit`
//! hook kills what is left and removes its directory), and the test binary being killed
//! outright (the child asked the kernel for `SIGKILL` when its parent dies). The kernel
//! ties that last signal to the *thread* that forked, so every child is spawned from one
//! thread that lives as long as the process, never from a short-lived test thread.

use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};

type SpawnReply = mpsc::Sender<std::io::Result<Child>>;

fn spawner() -> &'static Mutex<mpsc::Sender<(Command, SpawnReply)>> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<(Command, SpawnReply)>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<(Command, SpawnReply)>();
        std::thread::Builder::new()
            .name("testenv-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(spawn_with_parent_death_signal(&mut cmd));
                }
            })
            .expect("spawning the testenv spawner thread");
        register_atexit();
        Mutex::new(tx)
    })
}

#[allow(unsafe_code)]
fn spawn_with_parent_death_signal(cmd: &mut Command) -> std::io::Result<Child> {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe and touches only the forked child's own state.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn()
}

/// What the `atexit` hook cleans: live child pids and directories to remove.
#[derive(Default)]
struct Leftovers {
    pids: Vec<u32>,
    dirs: Vec<PathBuf>,
}

fn leftovers() -> &'static Mutex<Leftovers> {
    static LEFTOVERS: OnceLock<Mutex<Leftovers>> = OnceLock::new();
    LEFTOVERS.get_or_init(Mutex::default)
}

#[allow(unsafe_code)]
fn register_atexit() {
    extern "C" fn cleanup() {
        // try_lock: another thread may have died holding it; better a leftover than a hang.
        if let Ok(mut l) = leftovers().try_lock() {
            for pid in l.pids.drain(..) {
                // SAFETY: kill(2) and waitpid(2) on a child this process spawned and has not
                // reaped; reaping here keeps it from lingering as a zombie under an init that
                // does not reap (as in many containers).
                unsafe {
                    libc::kill(pid as libc::pid_t, libc::SIGKILL);
                    libc::waitpid(pid as libc::pid_t, std::ptr::null_mut(), 0);
                }
            }
            for dir in l.dirs.drain(..) {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }
    // SAFETY: registers a plain extern "C" function with no captured state.
    unsafe { libc::atexit(cleanup) };
}

/// Removes `dir` at process exit unless [`forget_dir`] is called first.
pub(crate) fn remove_dir_at_exit(dir: PathBuf) {
    if let Ok(mut l) = leftovers().lock() {
        l.dirs.push(dir);
    }
}

pub(crate) fn forget_dir(dir: &std::path::Path) {
    if let Ok(mut l) = leftovers().lock() {
        l.dirs.retain(|d| d != dir);
    }
}

/// A child process killed (and reaped) when dropped.
pub(crate) struct Supervised {
    pub(crate) name: &'static str,
    child: Child,
    pub(crate) log: PathBuf,
}

impl Supervised {
    pub(crate) fn spawn(name: &'static str, cmd: Command, log: PathBuf) -> std::io::Result<Self> {
        let (reply_tx, reply_rx) = mpsc::channel();
        spawner()
            .lock()
            .map_err(|_| std::io::Error::other("spawner lock poisoned"))?
            .send((cmd, reply_tx))
            .map_err(|_| std::io::Error::other("spawner thread is gone"))?;
        let child = reply_rx
            .recv()
            .map_err(|_| std::io::Error::other("spawner thread is gone"))??;
        if let Ok(mut l) = leftovers().lock() {
            l.pids.push(child.id());
        }
        Ok(Supervised { name, child, log })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `Some(status)` when the process has already exited.
    pub(crate) fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// The last lines of the process's log, for error messages.
    pub(crate) fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Supervised {
    /// Kills and reaps the process; a no-op when it is already gone.
    pub(crate) fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let pid = self.child.id();
        if let Ok(mut l) = leftovers().lock() {
            l.pids.retain(|p| *p != pid);
        }
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A loopback port nobody listens on right now. Another process may take it before the child
/// binds it; callers retry start-up on failure.
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// User + system CPU seconds process `pid` has used so far (0 when it cannot be read): how the
/// benches measure the processes they start.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let ticks: f64 = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse::<f64>().ok())
        .sum();
    // SAFETY: sysconf has no preconditions.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}
