//! Runs the operator's notify command on state changes, one at a time and in order, on a thread of
//! its own so a slow or hung script never delays an advertisement; each run is killed after its
//! timeout.

use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub struct Job {
    pub argv: Vec<String>,
    pub timeout: Duration,
}

pub struct Notifier {
    tx: mpsc::Sender<Job>,
}

impl Notifier {
    pub fn spawn() -> std::io::Result<Notifier> {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("keel-vrrp-notify".into())
            .spawn(move || {
                while let Ok(job) = rx.recv() {
                    run(&job);
                }
            })?;
        Ok(Notifier { tx })
    }

    pub fn notify(&self, job: Job) {
        // The worker only stops when we are dropped; a send error then is of no consequence.
        let _ = self.tx.send(job);
    }
}

fn run(job: &Job) {
    let Some((cmd, args)) = job.argv.split_first() else {
        return;
    };
    let mut child = match Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(command = %cmd, error = %e, "vrrp notify command did not start");
            return;
        }
    };
    let deadline = Instant::now() + job.timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                if !status.success() {
                    tracing::warn!(command = %cmd, %status, "vrrp notify command failed");
                }
                return;
            }
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                tracing::warn!(command = %cmd, timeout = ?job.timeout, "vrrp notify command killed after its timeout");
                return;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => {
                tracing::warn!(command = %cmd, error = %e, "vrrp notify command lost");
                return;
            }
        }
    }
}
