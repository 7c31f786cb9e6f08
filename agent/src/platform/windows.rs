//! Windows: memory (GlobalMemoryStatusEx), disks (GetDiskFreeSpaceExW, GetVolumeInformationW),
//! process counts (GetPerformanceInfo) and service states (the service control manager).

use std::ffi::OsStr;
use std::io;
use std::os::windows::ffi::OsStrExt;
use std::path::Path;

use windows_sys::Win32::Foundation::{CloseHandle, STILL_ACTIVE};
use windows_sys::Win32::Storage::FileSystem::{
    GetDiskFreeSpaceExW, GetVolumeInformationW, GetVolumePathNameW,
};
use windows_sys::Win32::System::ProcessStatus::{K32GetPerformanceInfo, PERFORMANCE_INFORMATION};
use windows_sys::Win32::System::SystemInformation::{GlobalMemoryStatusEx, MEMORYSTATUSEX};
use windows_sys::Win32::System::Threading::{
    GetExitCodeProcess, OpenProcess, PROCESS_QUERY_LIMITED_INFORMATION,
};

use super::{Disk, Memory, Pids, ServiceState};

/// `FILE_READ_ONLY_VOLUME` (winnt.h); kept here rather than enabling a whole windows-sys feature.
const FILE_READ_ONLY_VOLUME: u32 = 0x0008_0000;

fn wide(s: &OsStr) -> Vec<u16> {
    s.encode_wide().chain(std::iter::once(0)).collect()
}

pub fn memory() -> io::Result<Memory> {
    let mut m = MEMORYSTATUSEX {
        dwLength: std::mem::size_of::<MEMORYSTATUSEX>() as u32,
        ..Default::default()
    };
    // SAFETY: `m` is a properly sized MEMORYSTATUSEX with dwLength set, as the API requires.
    if unsafe { GlobalMemoryStatusEx(&mut m) } == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Memory {
        total: m.ullTotalPhys,
        available: m.ullAvailPhys,
    })
}

pub fn disk(path: &Path) -> io::Result<Disk> {
    let p = wide(path.as_os_str());
    let (mut avail, mut total, mut free) = (0u64, 0u64, 0u64);
    // SAFETY: `p` is NUL-terminated UTF-16; the out pointers are valid u64s.
    if unsafe { GetDiskFreeSpaceExW(p.as_ptr(), &mut avail, &mut total, &mut free) } == 0 {
        return Err(io::Error::last_os_error());
    }
    let mut root = [0u16; 261];
    let mut flags = 0u32;
    // SAFETY: buffers are valid for the lengths passed; null name buffers are allowed.
    let readonly = unsafe {
        GetVolumePathNameW(p.as_ptr(), root.as_mut_ptr(), root.len() as u32) != 0
            && GetVolumeInformationW(
                root.as_ptr(),
                std::ptr::null_mut(),
                0,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                &mut flags,
                std::ptr::null_mut(),
                0,
            ) != 0
            && flags & FILE_READ_ONLY_VOLUME != 0
    };
    Ok(Disk {
        total,
        available: avail,
        inodes_total: None,
        inodes_free: None,
        readonly,
    })
}

/// Processes in use. Windows has no pid_max; the limit reported is the handle-table bound on
/// process ids (2^24 / 4 usable ids), so the check is mostly a value for metrics.
pub fn pids(cgroup: Option<&Path>) -> io::Result<Pids> {
    if cgroup.is_some() {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "pids cgroups exist only on Linux",
        ));
    }
    let mut pi = PERFORMANCE_INFORMATION {
        cb: std::mem::size_of::<PERFORMANCE_INFORMATION>() as u32,
        ..Default::default()
    };
    // SAFETY: `pi` is a properly sized PERFORMANCE_INFORMATION with cb set.
    if unsafe { K32GetPerformanceInfo(&mut pi, pi.cb) } == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Pids {
        used: pi.ProcessCount as u64,
        limit: 1 << 22,
    })
}

pub fn process_alive(pid: u32) -> bool {
    // SAFETY: OpenProcess with a query-only right; the handle is closed below.
    unsafe {
        let h = OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION, 0, pid);
        if h.is_null() {
            return false;
        }
        let mut code = 0u32;
        let ok = GetExitCodeProcess(h, &mut code) != 0;
        CloseHandle(h);
        ok && code == STILL_ACTIVE as u32
    }
}

/// A service's state from the service control manager.
pub fn service_state(name: &str) -> io::Result<ServiceState> {
    use windows_service::service::{ServiceAccess, ServiceState as S};
    use windows_service::service_manager::{ServiceManager, ServiceManagerAccess};
    let mgr = ServiceManager::local_computer(None::<&str>, ServiceManagerAccess::CONNECT)
        .map_err(|e| io::Error::other(format!("service manager: {e}")))?;
    let svc = match mgr.open_service(name, ServiceAccess::QUERY_STATUS) {
        Ok(s) => s,
        // ERROR_SERVICE_DOES_NOT_EXIST
        Err(windows_service::Error::Winapi(e)) if e.raw_os_error() == Some(1060) => {
            return Ok(ServiceState::Missing)
        }
        Err(e) => return Err(io::Error::other(format!("open service {name}: {e}"))),
    };
    let st = svc
        .query_status()
        .map_err(|e| io::Error::other(format!("query service {name}: {e}")))?;
    Ok(match st.current_state {
        S::Running => ServiceState::Running,
        other => ServiceState::NotRunning(format!("{other:?}")),
    })
}
