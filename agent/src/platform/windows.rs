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

/// The state dir's DACL: protected (nothing inherited from `C:\`, which lets Authenticated Users
/// modify what is created below it), full control for SYSTEM and Administrators, inherited by every
/// file in it (the node key, the bootstrap token).
pub const PRIVATE_DIR_SDDL: &str = "D:P(A;OICI;FA;;;SY)(A;OICI;FA;;;BA)";

/// Sets [`PRIVATE_DIR_SDDL`] on `dir` and reads it back: the DACL as the system reports it, in SDDL.
pub fn protect_dir(dir: &Path) -> io::Result<String> {
    use windows_sys::Win32::Foundation::{LocalFree, ERROR_SUCCESS};
    use windows_sys::Win32::Security::Authorization::{
        ConvertStringSecurityDescriptorToSecurityDescriptorW, SetNamedSecurityInfoW,
        SDDL_REVISION_1, SE_FILE_OBJECT,
    };
    use windows_sys::Win32::Security::{
        GetSecurityDescriptorDacl, ACL, DACL_SECURITY_INFORMATION,
        PROTECTED_DACL_SECURITY_INFORMATION, PSECURITY_DESCRIPTOR,
    };
    let sddl = wide(OsStr::new(PRIVATE_DIR_SDDL));
    let path = wide(dir.as_os_str());
    let mut sd: PSECURITY_DESCRIPTOR = std::ptr::null_mut();
    // SAFETY: `sddl` is NUL-terminated; on success `sd` is a LocalAlloc'd descriptor freed below.
    let ok = unsafe {
        ConvertStringSecurityDescriptorToSecurityDescriptorW(
            sddl.as_ptr(),
            SDDL_REVISION_1,
            &mut sd,
            std::ptr::null_mut(),
        )
    };
    if ok == 0 {
        return Err(io::Error::last_os_error());
    }
    let mut present = 0;
    let mut defaulted = 0;
    let mut dacl: *mut ACL = std::ptr::null_mut();
    // SAFETY: `sd` is the valid descriptor made above; the out-pointers are valid locals.
    let got = unsafe { GetSecurityDescriptorDacl(sd, &mut present, &mut dacl, &mut defaulted) };
    let result = if got == 0 || present == 0 {
        Err(io::Error::last_os_error())
    } else {
        // SAFETY: `path` is NUL-terminated; `dacl` points into `sd`, alive until LocalFree below.
        let rc = unsafe {
            SetNamedSecurityInfoW(
                path.as_ptr(),
                SE_FILE_OBJECT,
                DACL_SECURITY_INFORMATION | PROTECTED_DACL_SECURITY_INFORMATION,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                dacl,
                std::ptr::null(),
            )
        };
        if rc == ERROR_SUCCESS {
            Ok(())
        } else {
            Err(io::Error::from_raw_os_error(rc as i32))
        }
    };
    // SAFETY: `sd` came from ConvertStringSecurityDescriptorToSecurityDescriptorW (LocalAlloc).
    unsafe { LocalFree(sd) };
    result?;
    read_dacl(&path)
}

/// The DACL of the NUL-terminated wide `path`, in SDDL.
fn read_dacl(path: &[u16]) -> io::Result<String> {
    use windows_sys::Win32::Foundation::{LocalFree, ERROR_SUCCESS};
    use windows_sys::Win32::Security::Authorization::{
        ConvertSecurityDescriptorToStringSecurityDescriptorW, GetNamedSecurityInfoW,
        SDDL_REVISION_1, SE_FILE_OBJECT,
    };
    use windows_sys::Win32::Security::{DACL_SECURITY_INFORMATION, PSECURITY_DESCRIPTOR};
    let mut sd: PSECURITY_DESCRIPTOR = std::ptr::null_mut();
    // SAFETY: `path` is NUL-terminated; only the descriptor is asked for, freed below.
    let rc = unsafe {
        GetNamedSecurityInfoW(
            path.as_ptr(),
            SE_FILE_OBJECT,
            DACL_SECURITY_INFORMATION,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            &mut sd,
        )
    };
    if rc != ERROR_SUCCESS {
        return Err(io::Error::from_raw_os_error(rc as i32));
    }
    let mut text: *mut u16 = std::ptr::null_mut();
    let mut len = 0u32;
    // SAFETY: `sd` is the descriptor returned above; `text` is LocalAlloc'd on success.
    let ok = unsafe {
        ConvertSecurityDescriptorToStringSecurityDescriptorW(
            sd,
            SDDL_REVISION_1,
            DACL_SECURITY_INFORMATION,
            &mut text,
            &mut len,
        )
    };
    let out = if ok == 0 || text.is_null() {
        Err(io::Error::last_os_error())
    } else {
        // SAFETY: `text` holds `len` UTF-16 units (NUL included) per the API's contract.
        let units = unsafe { std::slice::from_raw_parts(text, len as usize) };
        let end = units.iter().position(|&u| u == 0).unwrap_or(units.len());
        Ok(String::from_utf16_lossy(&units[..end]))
    };
    // SAFETY: both were allocated by the system with LocalAlloc.
    unsafe {
        if !text.is_null() {
            LocalFree(text.cast());
        }
        LocalFree(sd);
    }
    out
}
