# Installs or upgrades keel-agent as a Windows service on a node, sig-windows-tools style: binaries
# in C:\k. The service is created by the agent itself (`keel-agent service install`) through the
# service control manager API, which sets what sc.exe cannot: the preshutdown timeout (time to drain
# before Windows shuts down; Windows' default is short), failure recovery (restart after 5 s, 10 s,
# 30 s) and the dependency on containerd. sc.exe re-applies the recovery actions as a belt-and-braces.
#
# Image builds run it without -Start: the service is installed (automatic start) but not started, so
# the image never joins a cluster or writes a node identity; the node starts it on first boot. A
# node provisioned in place passes -Start.
#
# ACLs: C:\ grants Authenticated Users modify rights on what is created below it, so by default any
# user could replace keel-agent.exe (run as SYSTEM) or read the node's key and bootstrap token. The
# install dir and the state dir get protected ACLs (inheritance removed): SYSTEM and Administrators
# full control; Users may read and run what is in C:\k, and nothing in the state dir.
#Requires -RunAsAdministrator
param(
    [string]$Source = ".",
    [string]$Config = "C:\k\keel-agent.yaml",
    [string]$StateDir = "C:\ProgramData\keel",
    [int]$PreshutdownTimeoutSeconds = 300,
    [switch]$Start
)
$ErrorActionPreference = "Stop"
$dir = "C:\k"
# SIDs, not names: names are localised (S-1-5-18 SYSTEM, S-1-5-32-544 Administrators, S-1-5-32-545 Users).
function Protect-Dir([string]$Path, [bool]$UsersRead) {
    New-Item -ItemType Directory -Force -Path $Path | Out-Null
    $grants = @("*S-1-5-18:(OI)(CI)F", "*S-1-5-32-544:(OI)(CI)F")
    if ($UsersRead) { $grants += "*S-1-5-32-545:(OI)(CI)RX" }
    & icacls.exe $Path /inheritance:r /grant:r @grants /T /C /Q | Out-Null
    if ($LASTEXITCODE -ne 0) { throw "icacls $Path failed ($LASTEXITCODE)" }
}
Protect-Dir $dir $true
Protect-Dir $StateDir $false
# The config may hold the bootstrap token inline: SYSTEM and Administrators only.
if (Test-Path $Config) {
    & icacls.exe $Config /inheritance:r /grant:r "*S-1-5-18:F" "*S-1-5-32-544:F" /C /Q | Out-Null
    if ($LASTEXITCODE -ne 0) { throw "icacls $Config failed ($LASTEXITCODE)" }
}

# Check the new binary against the config before anything is replaced or stopped.
$new = Join-Path $Source "keel-agent.exe"
if (-not (Test-Path $Config)) { throw "config $Config is missing" }
& $new check --config $Config
if ($LASTEXITCODE -ne 0) { throw "config $Config does not validate with $new" }

# Upgrade: stop the running service first (its drain runs), so the binary is not replaced under it.
$svc = Get-Service -Name keel-agent -ErrorAction SilentlyContinue
if ($svc) {
    if ($svc.Status -ne "Stopped") {
        Stop-Service -Name keel-agent -Force
        $svc.WaitForStatus("Stopped", [TimeSpan]::FromSeconds($PreshutdownTimeoutSeconds + 30))
    }
    & sc.exe delete keel-agent | Out-Null
    Start-Sleep -Seconds 2
}
Copy-Item -Force $new (Join-Path $dir "keel-agent.exe")
& "$dir\keel-agent.exe" service install --config $Config --preshutdown-timeout "$($PreshutdownTimeoutSeconds)s"
if ($LASTEXITCODE -ne 0) { throw "keel-agent service install failed" }
& sc.exe failure keel-agent reset= 86400 actions= restart/5000/restart/10000/restart/30000 | Out-Null
& sc.exe failureflag keel-agent 1 | Out-Null
if ($Start) {
    Start-Service -Name keel-agent
}
Get-Service -Name keel-agent
