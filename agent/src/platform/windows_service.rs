//! Running keel-agent as a Windows service: the service control manager starts
//! `keel-agent.exe service run --config ...`; STOP stops the agent, PRESHUTDOWN (sent before the
//! system shuts down, for up to the preshutdown timeout) fires `node_shutdown` so the agent drains
//! first. While stopping, STOP_PENDING is reported with a rising checkpoint so the SCM does not
//! think the service hung. `install` creates the service with recovery actions and an explicit
//! preshutdown timeout (Windows' default is short and version dependent).
//!
//! A service has no console: its stderr (where the agent logs) goes nowhere, so `run` points
//! stderr at `keel-agent.log` beside the executable (C:\k on a node) when none is attached.
//!
//! Wine runs a service's start/stop/status but never sends PRESHUTDOWN and lacks the
//! "failure actions on non-crash failures" flag (tests/windows-service.sh); PRESHUTDOWN needs a
//! real Windows host.

use std::ffi::{c_void, OsString};
use std::fs::{File, OpenOptions};
use std::os::windows::io::IntoRawHandle;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use windows_service::service::{
    ServiceAccess, ServiceAction, ServiceActionType, ServiceControl, ServiceControlAccept,
    ServiceDependency, ServiceErrorControl, ServiceExitCode, ServiceFailureActions,
    ServiceFailureResetPeriod, ServiceInfo, ServiceStartType, ServiceState, ServiceStatus,
    ServiceType,
};
use windows_service::service_control_handler::{self, ServiceControlHandlerResult};
use windows_service::service_manager::{ServiceManager, ServiceManagerAccess};
use windows_service::{define_windows_service, service_dispatcher};

pub const SERVICE_NAME: &str = "keel-agent";

/// What the service's body gets: `cancel` on STOP, `node_shutdown` on PRESHUTDOWN.
#[derive(Clone)]
pub struct Tokens {
    pub cancel: CancellationToken,
    pub node_shutdown: CancellationToken,
}

/// The agent's body: blocks until the agent has stopped (it builds its own runtime).
pub type Body = Box<dyn Fn(Tokens) -> anyhow::Result<()> + Send + Sync>;

static BODY: OnceLock<Body> = OnceLock::new();

define_windows_service!(ffi_service_main, service_main);

/// Hands the process to the service control manager; returns when the service has stopped.
/// Call from `main` for `keel-agent service run`.
pub fn run(body: Body) -> anyhow::Result<()> {
    if BODY.set(body).is_err() {
        anyhow::bail!("the service is already running in this process");
    }
    log_to_file_without_stderr();
    service_dispatcher::start(SERVICE_NAME, ffi_service_main).map_err(|e| {
        anyhow::anyhow!("starting the service dispatcher (not started by the SCM?): {e}")
    })
}

const STD_ERROR_HANDLE: u32 = -12i32 as u32;
const LOG_ROTATE_BYTES: u64 = 10 << 20;

#[link(name = "kernel32")]
extern "system" {
    fn GetStdHandle(which: u32) -> *mut c_void;
    fn SetStdHandle(which: u32, handle: *mut c_void) -> i32;
}

/// The SCM starts services without std handles, and Rust's stderr silently drops writes to a
/// missing handle: give the process `keel-agent.log` beside the executable as its stderr (the
/// tracing writer looks the handle up on every write). One old file is kept at 10 MiB.
fn log_to_file_without_stderr() {
    // SAFETY: plain Win32 call without pointers.
    let current = unsafe { GetStdHandle(STD_ERROR_HANDLE) };
    if !current.is_null() && current as isize != -1 {
        return; // run by hand from a console: keep logging there.
    }
    let Some(path) = std::env::current_exe()
        .ok()
        .map(|exe| exe.with_file_name("keel-agent.log"))
    else {
        return;
    };
    let Ok(file) = open_log(&path) else { return };
    // The handle is leaked on purpose: stderr lives as long as the process.
    // SAFETY: a valid, owned file handle handed over for good.
    unsafe { SetStdHandle(STD_ERROR_HANDLE, file.into_raw_handle()) };
}

fn open_log(path: &Path) -> std::io::Result<File> {
    if std::fs::metadata(path).is_ok_and(|m| m.len() > LOG_ROTATE_BYTES) {
        let _ = std::fs::rename(path, path.with_extension("log.1"));
    }
    OpenOptions::new().create(true).append(true).open(path)
}

fn status(
    state: ServiceState,
    accept: ServiceControlAccept,
    checkpoint: u32,
    hint: Duration,
    exit: u32,
) -> ServiceStatus {
    ServiceStatus {
        service_type: ServiceType::OWN_PROCESS,
        current_state: state,
        controls_accepted: accept,
        exit_code: ServiceExitCode::Win32(exit),
        checkpoint,
        wait_hint: hint,
        process_id: None,
    }
}

fn service_main(_args: Vec<OsString>) {
    let Some(body) = BODY.get() else { return };
    let tokens = Tokens {
        cancel: CancellationToken::new(),
        node_shutdown: CancellationToken::new(),
    };
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let t = tokens.clone();
    let handler = move |control| -> ServiceControlHandlerResult {
        match control {
            ServiceControl::Stop => {
                tracing::info!(
                    service = SERVICE_NAME,
                    "service control STOP: stopping the agent"
                );
                t.cancel.cancel();
                let _ = stop_tx.send(());
                ServiceControlHandlerResult::NoError
            }
            ServiceControl::Preshutdown => {
                tracing::info!(
                    service = SERVICE_NAME,
                    "service control PRESHUTDOWN: draining first"
                );
                t.node_shutdown.cancel();
                let _ = stop_tx.send(());
                ServiceControlHandlerResult::NoError
            }
            ServiceControl::Interrogate => ServiceControlHandlerResult::NoError,
            _ => ServiceControlHandlerResult::NotImplemented,
        }
    };
    let handle = match service_control_handler::register(SERVICE_NAME, handler) {
        Ok(h) => h,
        Err(e) => {
            tracing::error!(error = %e, "cannot register the service control handler");
            return;
        }
    };
    let accept = ServiceControlAccept::STOP | ServiceControlAccept::PRESHUTDOWN;
    tracing::info!(
        service = SERVICE_NAME,
        pid = std::process::id(),
        "service running"
    );
    let _ = handle.set_service_status(status(ServiceState::Running, accept, 0, Duration::ZERO, 0));
    // Once a stop is asked for, report STOP_PENDING progress until the body returns.
    let done = Arc::new(AtomicBool::new(false));
    let progress = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut stopping = false;
            let mut checkpoint = 1;
            while !done.load(Ordering::Relaxed) {
                match stop_rx.recv_timeout(Duration::from_secs(1)) {
                    Ok(()) => stopping = true,
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    Err(mpsc::RecvTimeoutError::Disconnected) => return,
                }
                if stopping && !done.load(Ordering::Relaxed) {
                    let _ = handle.set_service_status(status(
                        ServiceState::StopPending,
                        ServiceControlAccept::empty(),
                        checkpoint,
                        Duration::from_secs(10),
                        0,
                    ));
                    checkpoint += 1;
                }
            }
        })
    };
    let result = body(tokens.clone());
    done.store(true, Ordering::Relaxed);
    let _ = progress.join();
    let exit = match &result {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!(error = %keel_common::error::one_line(e.as_ref()), "agent stopped with an error");
            1
        }
    };
    tracing::info!(service = SERVICE_NAME, exit_code = exit, "service stopped");
    let _ = handle.set_service_status(status(
        ServiceState::Stopped,
        ServiceControlAccept::empty(),
        0,
        Duration::ZERO,
        exit,
    ));
}

/// Creates the service (auto start, after containerd), with recovery actions (restart after 5 s,
/// 10 s, then 30 s; reset after a day) and an explicit preshutdown timeout long enough to drain.
pub fn install(exe: PathBuf, config: PathBuf, preshutdown_timeout: Duration) -> anyhow::Result<()> {
    let mgr = ServiceManager::local_computer(
        None::<&str>,
        ServiceManagerAccess::CONNECT | ServiceManagerAccess::CREATE_SERVICE,
    )?;
    let info = ServiceInfo {
        name: SERVICE_NAME.into(),
        display_name: "Keel node agent".into(),
        service_type: ServiceType::OWN_PROCESS,
        start_type: ServiceStartType::AutoStart,
        error_control: ServiceErrorControl::Normal,
        executable_path: exe,
        launch_arguments: vec![
            "service".into(),
            "run".into(),
            "--config".into(),
            config.into(),
        ],
        dependencies: vec![ServiceDependency::Service("containerd".into())],
        account_name: None,
        account_password: None,
    };
    let svc = mgr.create_service(
        &info,
        ServiceAccess::CHANGE_CONFIG | ServiceAccess::START | ServiceAccess::DELETE,
    )?;
    // All or nothing: a service created without its recovery or preshutdown settings would run
    // without them unnoticed.
    if let Err(e) = configure(&svc, preshutdown_timeout) {
        let _ = svc.delete();
        return Err(e.context("configuring the keel-agent service (it was removed again)"));
    }
    Ok(())
}

/// ERROR_INVALID_LEVEL: the service manager does not know this configuration level (Wine).
const ERROR_INVALID_LEVEL: i32 = 124;

fn configure(
    svc: &windows_service::service::Service,
    preshutdown_timeout: Duration,
) -> anyhow::Result<()> {
    svc.set_description("Keel: joins this node, reports its health, drains it before shutdown")?;
    svc.update_failure_actions(ServiceFailureActions {
        reset_period: ServiceFailureResetPeriod::After(Duration::from_secs(86_400)),
        reboot_msg: None,
        command: None,
        actions: Some(vec![
            ServiceAction {
                action_type: ServiceActionType::Restart,
                delay: Duration::from_secs(5),
            },
            ServiceAction {
                action_type: ServiceActionType::Restart,
                delay: Duration::from_secs(10),
            },
            ServiceAction {
                action_type: ServiceActionType::Restart,
                delay: Duration::from_secs(30),
            },
        ]),
    })?;
    // Restart also when the agent exits with an error, not only on a crash. Wine lacks this
    // level; without it the actions still apply to crashes, so warn and go on.
    match svc.set_failure_actions_on_non_crash_failures(true) {
        Err(windows_service::Error::Winapi(e)) if e.raw_os_error() == Some(ERROR_INVALID_LEVEL) => {
            eprintln!(
                "keel-agent: warning: this service manager cannot restart the service after an \
                 error exit (only after a crash): {e}"
            );
        }
        r => r?,
    }
    svc.set_preshutdown_timeout(preshutdown_timeout)?;
    Ok(())
}
