//! Running keel-agent as a Windows service: the service control manager starts
//! `keel-agent.exe service run --config ...`; STOP stops the agent, PRESHUTDOWN (sent before the
//! system shuts down, for up to the preshutdown timeout) fires `node_shutdown` so the agent drains
//! first. While stopping, STOP_PENDING is reported with a rising checkpoint so the SCM does not
//! think the service hung. `install` creates the service with recovery actions and an explicit
//! preshutdown timeout (Windows' default is short and version dependent).
//!
//! Wine runs a service's start/stop/status but never sends PRESHUTDOWN: that path needs a real
//! Windows host.

use std::ffi::OsString;
use std::path::PathBuf;
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
    service_dispatcher::start(SERVICE_NAME, ffi_service_main).map_err(|e| {
        anyhow::anyhow!("starting the service dispatcher (not started by the SCM?): {e}")
    })
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
                t.cancel.cancel();
                let _ = stop_tx.send(());
                ServiceControlHandlerResult::NoError
            }
            ServiceControl::Preshutdown => {
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
            tracing::error!(error = %format!("{e:#}"), "agent stopped with an error");
            1
        }
    };
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
    let svc = mgr.create_service(&info, ServiceAccess::CHANGE_CONFIG | ServiceAccess::START)?;
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
    svc.set_failure_actions_on_non_crash_failures(true)?;
    svc.set_preshutdown_timeout(preshutdown_timeout)?;
    Ok(())
}
