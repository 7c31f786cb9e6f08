# Installs keel-agent as a Windows service on a node, sig-windows-tools style: binaries in C:\k.
# The service is created by the agent itself (`keel-agent service install`) through the service
# control manager API, which sets what sc.exe cannot: the preshutdown timeout (time to drain before
# Windows shuts down; Windows' default is short), failure recovery (restart after 5 s, 10 s, 30 s)
# and the dependency on containerd. sc.exe re-applies the recovery actions as a belt-and-braces.
#Requires -RunAsAdministrator
param(
    [string]$Source = ".",
    [string]$Config = "C:\k\keel-agent.yaml",
    [int]$PreshutdownTimeoutSeconds = 300
)
$ErrorActionPreference = "Stop"
$dir = "C:\k"
New-Item -ItemType Directory -Force -Path $dir | Out-Null
New-Item -ItemType Directory -Force -Path "C:\ProgramData\keel" | Out-Null
Copy-Item -Force (Join-Path $Source "keel-agent.exe") (Join-Path $dir "keel-agent.exe")
if (-not (Test-Path $Config)) { throw "config $Config is missing" }
& "$dir\keel-agent.exe" check --config $Config
if ($LASTEXITCODE -ne 0) { throw "config $Config does not validate" }

if (Get-Service -Name keel-agent -ErrorAction SilentlyContinue) {
    Stop-Service -Name keel-agent -Force -ErrorAction SilentlyContinue
    & sc.exe delete keel-agent | Out-Null
    Start-Sleep -Seconds 2
}
& "$dir\keel-agent.exe" service install --config $Config --preshutdown-timeout "$($PreshutdownTimeoutSeconds)s"
if ($LASTEXITCODE -ne 0) { throw "keel-agent service install failed" }
& sc.exe failure keel-agent reset= 86400 actions= restart/5000/restart/10000/restart/30000 | Out-Null
& sc.exe failureflag keel-agent 1 | Out-Null
Start-Service -Name keel-agent
Get-Service -Name keel-agent
